//! `bitnet-cli inference`: generate a continuation of a prompt, streaming it
//! to stdout, with llama.cpp's flag names and defaults; timings on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bitnet::backend::cpu::{CpuBackend, OutputTable, TernaryKernels};
use bitnet::backend::kernels::SimdLevel;
use bitnet::backend::{Backend, KvType};
use bitnet::{DeviceChoice, Engine, GenerationConfig, GenerationStats, SamplingStrategy};

use super::device::{backend, check_cpu_options, AnyBackend};
use crate::{with_any, ModelSource};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model (default: the bundled model).
    #[arg(short = 'm', long = "model", env = "BITNET_MODEL")]
    model: Option<PathBuf>,
    /// Prompt text.
    #[arg(short = 'p', long, conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Do not print the prompt before the output.
    #[arg(long)]
    no_display_prompt: bool,
    /// Print one JSON object at the end (text, generated token ids, counts,
    /// timings) instead of streaming the text: for scripts and tests.
    #[arg(long)]
    json: bool,
}

/// Sampling and run flags shared by `inference` and `chat` (llama.cpp's names
/// and defaults).
#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Tokens to generate (-1 = until end of text or a full context).
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    pub n_predict: i64,
    /// Temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: i32,
    /// Top-p (1.0 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the penalties look back over (0 = off, -1 = whole context).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    pub repeat_last_n: i32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed (-1 = random, printed).
    #[arg(short = 's', long, default_value_t = -1, allow_negative_numbers = true)]
    pub seed: i64,
    /// Stop when the output reaches this text (repeatable).
    #[arg(short = 'r', long = "reverse-prompt")]
    pub stop: Vec<String>,
    /// Context size (0 = the model's).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx_size: usize,
    /// KV cache storage for keys: f32 or f16 (llama.cpp's -ctk).
    #[arg(long = "cache-type-k", default_value = "f32")]
    pub cache_type_k: KvType,
    /// KV cache storage for values: must equal --cache-type-k.
    #[arg(long = "cache-type-v", default_value = "f32")]
    pub cache_type_v: KvType,
    /// Where the model runs: auto (a hardware GPU through wgpu if there is
    /// one, else the CPU), cpu, wgpu (the best wgpu adapter, software ones
    /// included) or wgpu:N (adapter N of `bitnet-cli devices`).
    #[arg(long, default_value = "auto", env = "BITNET_DEVICE")]
    pub device: DeviceChoice,
    /// CPU kernel level: scalar, sse, avx2, avx512, avx512vnni (x86-64) or
    /// neon (aarch64) (default: the best this CPU runs; also
    /// BITNET_SIMD_LEVEL).
    #[arg(long)]
    pub simd_level: Option<SimdLevel>,
    /// LM head table: `file` (as stored), `int8` or `int6` (a compact copy
    /// made at load: fewer bytes read per token, logits change slightly).
    #[arg(long, default_value = "file")]
    pub output_table: OutputTable,
    /// Ternary kernels on the CPU: `i2s` (the packed kernels on the file's
    /// layout), `tq2` (TQ1_0 weights widened to 2 bits at load: faster,
    /// 22 % more memory for them) or `tl1` / `tl2` (lookup tables on
    /// weights repacked at load). All give the same results.
    #[arg(long, default_value = "i2s")]
    pub quantization: TernaryKernels,
    /// Read the model into memory instead of mapping it.
    #[arg(long)]
    pub no_mmap: bool,
    /// CPU threads (default: all cores; also RAYON_NUM_THREADS).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
}

impl SamplingArgs {
    pub fn config(&self) -> GenerationConfig {
        GenerationConfig {
            sampling_strategy: if self.temp <= 0.0 {
                SamplingStrategy::Greedy
            } else {
                SamplingStrategy::TopP
            },
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: u64::try_from(self.seed).ok(),
            max_tokens: usize::try_from(self.n_predict).ok(),
            stop: self.stop.clone(),
            token_timeout: None,
        }
    }
}

/// A model with its tokenizer, on whichever backend `--device` chose (one
/// value per run: the size difference does not matter).
#[allow(clippy::large_enum_variant)]
pub enum AnyEngine {
    Cpu(Engine<CpuBackend>),
    #[cfg(feature = "wgpu")]
    Wgpu(Engine<bitnet::WgpuBackend>),
}

/// Loads the model the flags name (or the bundled one) on the device
/// `--device` names.
pub fn load_engine(
    model: Option<PathBuf>,
    args: &SamplingArgs,
) -> anyhow::Result<(AnyEngine, ModelSource)> {
    if args.cache_type_k != args.cache_type_v {
        anyhow::bail!("--cache-type-k and --cache-type-v must be the same type (one KV cache type per session)");
    }
    let source = ModelSource::from_option(model);
    let file = Arc::new(source.open_with(args.no_mmap)?);
    let b = backend(args.device, || {
        Ok(match args.simd_level {
            Some(level) => CpuBackend::with_level(level)?,
            None => CpuBackend::new(),
        }
        .with_ternary_kernels(args.quantization)
        .with_output_table(args.output_table))
    })?;
    check_cpu_options(&b, args.simd_level, args.quantization).map_err(anyhow::Error::msg)?;
    let mut engine = match b {
        AnyBackend::Cpu(b) => AnyEngine::Cpu(load(&file, b, &source)?),
        #[cfg(feature = "wgpu")]
        AnyBackend::Wgpu(b) => AnyEngine::Wgpu(load(&file, b, &source)?),
    };
    with_any!(AnyEngine, &mut engine, e => {
        e.ctx_size = args.ctx_size;
        e.kv_type = args.cache_type_k;
    });
    if matches!(source, ModelSource::Bundled) {
        eprintln!("model: {}", source.display());
    }
    Ok((engine, source))
}

fn load<B: Backend>(
    file: &Arc<bitnet::GgufFile>,
    b: B,
    source: &ModelSource,
) -> anyhow::Result<Engine<B>> {
    Engine::load(file.clone(), b).with_context(|| source.display())
}

pub fn print_stats(stats: &GenerationStats, cfg: &GenerationConfig) {
    if cfg.seed.is_none() && cfg.sampling_strategy != SamplingStrategy::Greedy {
        eprintln!("seed: {}", stats.seed);
    }
    eprintln!(
        "prompt: {} tokens ({} cached) in {:.1} ms ({:.2} tokens/s) | generation: {} tokens in {:.1} ms ({:.2} tokens/s) | time to first token: {:.1} ms | stop: {:?}",
        stats.prompt_tokens,
        stats.cached_prompt_tokens,
        stats.prompt_time.as_secs_f64() * 1e3,
        stats.prompt_tokens_per_second(),
        stats.generated_tokens,
        stats.generation_time.as_secs_f64() * 1e3,
        stats.generation_tokens_per_second(),
        stats.time_to_first_token.as_secs_f64() * 1e3,
        stats.stop_reason,
    );
}

pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting up the thread pool")?;
    }
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    set_threads(a.sampling.threads)?;
    let prompt = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => String::new(),
    };
    let (engine, _) = load_engine(a.model, &a.sampling)?;
    if a.json {
        return with_any!(AnyEngine, engine, e => generate_json(&e, &prompt, &a.sampling));
    }
    with_any!(AnyEngine, engine, e => generate(&e, &prompt, &a.sampling, a.no_display_prompt))
}

fn generate_json<B: Backend>(
    engine: &Engine<B>,
    prompt: &str,
    sampling: &SamplingArgs,
) -> anyhow::Result<()> {
    let cfg = sampling.config();
    let mut text = String::new();
    let s = engine.generate(prompt, &cfg, |t| {
        text.push_str(t);
        true
    })?;
    let out = serde_json::json!({
        "prompt": prompt,
        "text": text,
        "tokens": s.tokens,
        "prompt_tokens": s.prompt_tokens,
        "generated_tokens": s.generated_tokens,
        "stop_reason": format!("{:?}", s.stop_reason),
        "seed": s.seed,
        "prompt_ms": s.prompt_time.as_secs_f64() * 1e3,
        "generation_ms": s.generation_time.as_secs_f64() * 1e3,
        "backend": engine.model.backend().name(),
    });
    println!("{out}");
    Ok(())
}

fn generate<B: Backend>(
    engine: &Engine<B>,
    prompt: &str,
    sampling: &SamplingArgs,
    no_display_prompt: bool,
) -> anyhow::Result<()> {
    let cfg = sampling.config();
    let mut out = std::io::stdout().lock();
    if !no_display_prompt {
        let _ = write!(out, "{prompt}");
        let _ = out.flush();
    }
    let stats = engine.generate(prompt, &cfg, |text| {
        // A closed stdout (`| head`) cancels generation quietly.
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    })?;
    let _ = writeln!(out);
    print_stats(&stats, &cfg);
    Ok(())
}

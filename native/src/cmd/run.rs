//! `bitnet-cli inference`: generate a continuation of a prompt, streaming it
//! to stdout, with llama.cpp's flag names and defaults; timings on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bitnet::backend::cpu::CpuBackend;
use bitnet::{Engine, GenerationConfig, SamplingStrategy};

use crate::ModelSource;

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
    /// Tokens to generate (-1 = until end of text or a full context).
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    n_predict: i64,
    /// Temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: i32,
    /// Top-p (1.0 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens the penalties look back over (0 = off, -1 = whole context).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    repeat_last_n: i32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Random seed (-1 = random, printed).
    #[arg(short = 's', long, default_value_t = -1, allow_negative_numbers = true)]
    seed: i64,
    /// Stop when the output reaches this text (repeatable).
    #[arg(short = 'r', long = "reverse-prompt")]
    stop: Vec<String>,
    /// Context size (0 = the model's).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    ctx_size: usize,
    /// CPU threads (default: all cores; also RAYON_NUM_THREADS).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Do not print the prompt before the output.
    #[arg(long)]
    no_display_prompt: bool,
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
    set_threads(a.threads)?;
    let prompt = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => String::new(),
    };
    let source = ModelSource::from_option(a.model.clone());
    let file = Arc::new(source.open()?);
    let engine = Engine::load(file, CpuBackend).with_context(|| source.display())?;
    if matches!(source, ModelSource::Bundled) {
        eprintln!(
            "model: {} (random weights: expect noise, not English)",
            source.display()
        );
    }
    let cfg = GenerationConfig {
        sampling_strategy: if a.temp <= 0.0 {
            SamplingStrategy::Greedy
        } else {
            SamplingStrategy::TopP
        },
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        seed: u64::try_from(a.seed).ok(),
        max_tokens: usize::try_from(a.n_predict).ok(),
        stop: a.stop.clone(),
    };
    let mut out = std::io::stdout().lock();
    if !a.no_display_prompt {
        let _ = write!(out, "{prompt}");
        let _ = out.flush();
    }
    let stats = engine.generate(&prompt, &cfg, a.ctx_size, |text| {
        // A closed stdout (`| head`) cancels generation quietly.
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    })?;
    let _ = writeln!(out);
    if cfg.seed.is_none() && cfg.sampling_strategy != SamplingStrategy::Greedy {
        eprintln!("seed: {}", stats.seed);
    }
    eprintln!(
        "prompt: {} tokens in {:.1} ms ({:.2} tokens/s) | generation: {} tokens in {:.1} ms ({:.2} tokens/s) | time to first token: {:.1} ms | stop: {:?}",
        stats.prompt_tokens,
        stats.prompt_time.as_secs_f64() * 1e3,
        stats.prompt_tokens_per_second(),
        stats.generated_tokens,
        stats.generation_time.as_secs_f64() * 1e3,
        stats.generation_tokens_per_second(),
        stats.time_to_first_token.as_secs_f64() * 1e3,
        stats.stop_reason,
    );
    Ok(())
}

//! `bitnet-cli benchmark`: llama-bench's tests and output on any GGUF.
//!
//! `pp N`: N prompt tokens processed as one batch in a fresh session.
//! `tg N`: N tokens decoded one at a time after a BOS token (llama-bench's
//! definition). Each test runs `--warmup` times unmeasured, then
//! `-r/--repetitions` times; tokens/s is reported as mean ± sample standard
//! deviation over the repetitions, for every combination of the comma lists
//! `--threads` and `--simd-level`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bitnet::backend::cpu::{CpuBackend, OutputTable};
use bitnet::backend::kernels::SimdLevel;
use bitnet::backend::KvType;
use bitnet::model::BitNet;

use crate::ModelSource;

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model (default: the bundled model).
    #[arg(short = 'm', long = "model", env = "BITNET_MODEL")]
    model: Option<PathBuf>,
    /// Prompt-processing tests: tokens per prompt (comma list; 0 = none).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generation tests: tokens generated (comma list; 0 = none).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Measured repetitions of each test.
    #[arg(
        short = 'r',
        long = "repetitions",
        visible_alias = "iterations",
        default_value_t = 5
    )]
    repetitions: usize,
    /// Unmeasured runs before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Thread counts to test (comma list; default: all cores).
    #[arg(short = 't', long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// CPU kernel levels to test (comma list: scalar, sse, avx2; default: the best).
    #[arg(long, value_delimiter = ',')]
    simd_level: Vec<SimdLevel>,
    /// LM head tables to test (comma list: file, int8).
    #[arg(long, value_delimiter = ',', default_value = "file")]
    output_table: Vec<OutputTable>,
    /// Output format: md (llama-bench's table) or json.
    #[arg(short = 'o', long = "output", default_value = "md")]
    output: String,
    /// Also measure memory read bandwidth (a 1 GiB buffer summed with every
    /// thread) and the decode floor it implies for this model.
    #[arg(long)]
    bandwidth: bool,
    /// Also write the output to this file.
    #[arg(long = "output-file")]
    output_file: Option<PathBuf>,
}

struct Row {
    level: SimdLevel,
    output: OutputTable,
    threads: usize,
    n_prompt: usize,
    n_gen: usize,
    samples_ns: Vec<u128>,
}

impl Row {
    fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen
    }

    fn samples_ts(&self) -> Vec<f64> {
        self.samples_ns
            .iter()
            .map(|&ns| self.tokens() as f64 / (ns as f64 * 1e-9))
            .collect()
    }

    fn test_name(&self) -> String {
        if self.n_gen == 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        }
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// One run of a test; returns its wall time in nanoseconds.
fn run_once(
    model: &BitNet<CpuBackend>,
    bos: u32,
    n_prompt: usize,
    n_gen: usize,
) -> anyhow::Result<u128> {
    let vocab = model.cfg.n_vocab as u32;
    let ctx = (n_prompt + n_gen + 1).max(2);
    let mut session = model.new_session(ctx, KvType::F32);
    let start = Instant::now();
    if n_gen == 0 {
        // Deterministic pseudo-random prompt ids (llama-bench uses random ids).
        let prompt: Vec<u32> = (0..n_prompt as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % vocab)
            .collect();
        model.forward(&mut session, &prompt, false)?;
    } else {
        let mut logits = model.forward(&mut session, &[bos], false)?;
        let gen_start = Instant::now();
        for _ in 0..n_gen {
            let next = bitnet::sampler::argmax(&logits);
            logits = model.forward(&mut session, &[next], false)?;
        }
        return Ok(gen_start.elapsed().as_nanos());
    }
    Ok(start.elapsed().as_nanos())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.repetitions == 0 {
        anyhow::bail!("--repetitions must be at least 1");
    }
    if !matches!(a.output.as_str(), "md" | "json") {
        anyhow::bail!("--output {} is not supported (md, json)", a.output);
    }
    let source = ModelSource::from_option(a.model.clone());
    let file = Arc::new(source.open()?);
    let file_size = file.file_len();
    let levels = if a.simd_level.is_empty() {
        vec![SimdLevel::detect()]
    } else {
        a.simd_level.clone()
    };
    let threads = if a.threads.is_empty() {
        vec![std::thread::available_parallelism().map_or(1, |n| n.get())]
    } else {
        a.threads.clone()
    };
    let mut tests: Vec<(usize, usize)> = Vec::new();
    tests.extend(a.n_prompt.iter().filter(|&&n| n > 0).map(|&n| (n, 0)));
    tests.extend(a.n_gen.iter().filter(|&&n| n > 0).map(|&n| (0, n)));

    let mut rows = Vec::new();
    let mut desc = String::new();
    let mut n_params = 0u64;
    for (level, output) in levels
        .iter()
        .flat_map(|&l| a.output_table.iter().map(move |&o| (l, o)))
    {
        let backend = CpuBackend::with_level(level)?.with_output_table(output);
        let model = BitNet::load(file.clone(), backend).with_context(|| source.display())?;
        n_params = file.tensor_infos().iter().map(|t| t.n_elements).sum();
        desc = format!(
            "{} {} {}",
            model.cfg.architecture,
            human_params(n_params),
            model.cfg.weight_type
        );
        let bos = file
            .metadata()
            .get_u64("tokenizer.ggml.bos_token_id")
            .map_or(0, |b| b as u32);
        for &t in &threads {
            if t == 0 {
                anyhow::bail!("--threads must be at least 1");
            }
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
            for &(np, ng) in &tests {
                let samples = pool.install(|| -> anyhow::Result<Vec<u128>> {
                    for _ in 0..a.warmup {
                        run_once(&model, bos, np, ng)?;
                    }
                    (0..a.repetitions)
                        .map(|_| run_once(&model, bos, np, ng))
                        .collect()
                })?;
                let row = Row {
                    level,
                    output,
                    threads: t,
                    n_prompt: np,
                    n_gen: ng,
                    samples_ns: samples,
                };
                let (m, s) = mean_std(&row.samples_ts());
                eprintln!(
                    "{} {} t={t}: {m:.2} ± {s:.2} tokens/s",
                    level,
                    row.test_name()
                );
                rows.push(row);
            }
        }
    }

    if a.bandwidth {
        let t = *threads.iter().max().unwrap_or(&1);
        let bw = read_bandwidth(t)?;
        // Per decoded token every weight is read once: the ternary
        // projections and the LM head (the whole table); the file is that
        // plus one embedding row per token.
        let floor = file_size as f64 / bw;
        eprintln!(
            "memory read bandwidth ({t} threads): {:.2} GB/s; decode floor for this model: {:.1} ms/token ({:.1} tokens/s)",
            bw / 1e9,
            floor * 1e3,
            1.0 / floor
        );
    }
    let out = if a.output == "json" {
        json(&rows, &desc, file_size, n_params)
    } else {
        markdown(&rows, &desc, file_size, n_params)
    };
    print!("{out}");
    if let Some(path) = &a.output_file {
        std::fs::write(path, &out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn head_name(o: OutputTable) -> &'static str {
    match o {
        OutputTable::File => "file",
        OutputTable::Int8 => "int8",
    }
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2}B", n as f64 / 1e9)
    } else {
        format!("{:.2}M", n as f64 / 1e6)
    }
}

fn human_size(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.2} MiB")
    }
}

/// llama-bench's markdown table (backend column says the CPU kernel level).
fn markdown(rows: &[Row], desc: &str, size: u64, params: u64) -> String {
    let mut s = String::from(
        "| model | size | params | backend | threads | test | t/s |\n| --- | ---: | ---: | --- | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let (m, sd) = mean_std(&r.samples_ts());
        s += &format!(
            "| {desc} | {} | {} | CPU ({}{}) | {} | {} | {m:.2} ± {sd:.2} |\n",
            human_size(size),
            human_params(params),
            r.level,
            if r.output == OutputTable::Int8 {
                ", int8 head"
            } else {
                ""
            },
            r.threads,
            r.test_name()
        );
    }
    s
}

/// llama-bench's JSON fields (a subset: those that mean something here).
fn json(rows: &[Row], desc: &str, size: u64, params: u64) -> String {
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let ts = r.samples_ts();
            let (avg_ts, stddev_ts) = mean_std(&ts);
            let ns: Vec<f64> = r.samples_ns.iter().map(|&v| v as f64).collect();
            let (avg_ns, stddev_ns) = mean_std(&ns);
            serde_json::json!({
                "build_commit": env!("CARGO_PKG_VERSION"),
                "backends": "CPU",
                "simd_level": r.level.name(),
                "output_table": head_name(r.output),
                "model_type": desc,
                "model_size": size,
                "model_n_params": params,
                "n_threads": r.threads,
                "n_prompt": r.n_prompt,
                "n_gen": r.n_gen,
                "test_time": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                "avg_ns": avg_ns as u64,
                "stddev_ns": stddev_ns as u64,
                "avg_ts": avg_ts,
                "stddev_ts": stddev_ts,
                "samples_ns": r.samples_ns,
                "samples_ts": ts,
            })
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&list).unwrap_or_default();
    s.push('\n');
    s
}

/// Read bandwidth in bytes/s: a 1 GiB buffer (touched first, so it is
/// resident) summed by `threads` threads, eight independent accumulators
/// each so that the sum is not latency-bound; best of five passes.
fn read_bandwidth(threads: usize) -> anyhow::Result<f64> {
    use rayon::prelude::*;
    let words = 1usize << 27; // 1 GiB of u64
    let buf: Vec<u64> = (0..words as u64).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let mut best = f64::INFINITY;
    let mut check = 0u64;
    for _ in 0..5 {
        let start = Instant::now();
        let sum = pool.install(|| {
            buf.par_chunks(1 << 20)
                .map(|c| {
                    let mut acc = [0u64; 8];
                    for w in c.chunks_exact(8) {
                        for (a, v) in acc.iter_mut().zip(w) {
                            *a = a.wrapping_add(*v);
                        }
                    }
                    acc.iter().fold(0u64, |x, y| x.wrapping_add(*y))
                })
                .reduce(|| 0, u64::wrapping_add)
        });
        best = best.min(start.elapsed().as_secs_f64());
        check = check.wrapping_add(sum);
    }
    // Keeps the sums observable so the loop is not optimised away.
    if check == 1 {
        eprintln!("(checksum {check})");
    }
    Ok((words * 8) as f64 / best)
}

//! `bitnet-cli benchmark`: llama-bench's tests and output on any GGUF.
//!
//! Tests: `pp N` (N pseudo-random prompt tokens processed in a fresh
//! session, in batches of `--batch-sizes` tokens, default all at once),
//! `tg N` (N tokens decoded one at a time after a BOS token, llama-bench's
//! definition) and, with `--prompts FILE`, the file's prompts (one per line,
//! tokenized as a user's would be) processed one after another. Each test
//! runs `--warmup` times unmeasured, then `-r/--repetitions` times;
//! tokens/s is the mean ± sample standard deviation over repetitions.
//!
//! Configurations: the product of the comma lists `--threads`,
//! `--simd-level`, `--quantization`, `--output-table`, `--batch-sizes`, or
//! one per TOML file given to `--configs` (keys: name, threads, simd_level,
//! quantization, output_table, kv_cache_type, batch_size). `--compare` adds a table of every test's
//! tokens/s per configuration with the ratio to the first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bitnet::backend::cpu::{CpuBackend, OutputTable, TernaryKernels};
use bitnet::backend::kernels::{Kernels, SimdLevel};
use bitnet::backend::{Backend, KvType};
use bitnet::model::{BitNet, Session};
use bitnet::tokenizer::Tokenizer;
use bitnet::DeviceChoice;

use super::device::{backend, check_cpu_options, AnyBackend};
use crate::{with_any, ModelSource};

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
    /// Tokens already in the context before each test (comma list;
    /// llama-bench's `-d`): processed first, untimed, so that a test shows
    /// the speed at that depth (attention reads the whole cache).
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    n_depth: Vec<usize>,
    /// A file of prompts (one per line) to process as a further test.
    #[arg(long)]
    prompts: Option<PathBuf>,
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
    /// Thread counts to test (comma list; default: all cores, or
    /// RAYON_NUM_THREADS).
    #[arg(short = 't', long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Devices to test (comma list: auto, cpu, wgpu, wgpu:N).
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    device: Vec<DeviceChoice>,
    /// CPU kernel levels to test (comma list: scalar, sse, avx2, avx512,
    /// avx512vnni, neon; default: the best).
    #[arg(long, value_delimiter = ',')]
    simd_level: Vec<SimdLevel>,
    /// Ternary kernel families to test (comma list: i2s = the packed
    /// kernels on the file's layout, tq2 = TQ1_0 widened to 2 bits at load,
    /// tl1, tl2 = lookup tables on weights repacked at load).
    #[arg(long, value_delimiter = ',', default_value = "i2s")]
    quantization: Vec<TernaryKernels>,
    /// LM head tables to test (comma list: file, int8, int6).
    #[arg(long, value_delimiter = ',', default_value = "file")]
    output_table: Vec<OutputTable>,
    /// Prompt batch sizes to test (comma list; 0 = the whole prompt at once).
    #[arg(
        short = 'b',
        long = "batch-sizes",
        value_delimiter = ',',
        default_value = "0"
    )]
    batch_sizes: Vec<usize>,
    /// Configurations from TOML files instead of the lists above.
    #[arg(long, value_delimiter = ',')]
    configs: Vec<PathBuf>,
    /// Also print every test's tokens/s side by side, with ratios to the
    /// first configuration.
    #[arg(long)]
    compare: bool,
    /// Output format: md (llama-bench's table) or json.
    #[arg(short = 'o', long = "output-format", default_value = "md")]
    format: String,
    /// Also write the results to this file (format from -o, or from a
    /// `.json` / `.md` extension).
    #[arg(long = "output", visible_alias = "output-file")]
    output: Option<PathBuf>,
    /// Read the model into memory instead of mapping it (llama-bench's
    /// `-mmp 0`).
    #[arg(long)]
    no_mmap: bool,
    /// Also measure memory read bandwidth (a buffer of MIB mebibytes,
    /// default 1024, summed with every thread) and the decode floor it
    /// implies for this model.
    #[arg(long, value_name = "MIB", num_args = 0..=1, default_missing_value = "1024")]
    bandwidth: Option<usize>,
}

/// One configuration under test.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "parse")]
    device: DeviceChoice,
    #[serde(default = "all_cores")]
    threads: usize,
    /// None: the best this CPU runs.
    #[serde(default, deserialize_with = "parse_some")]
    simd_level: Option<SimdLevel>,
    #[serde(default, deserialize_with = "parse")]
    quantization: TernaryKernels,
    #[serde(default, deserialize_with = "parse")]
    output_table: OutputTable,
    #[serde(default, deserialize_with = "parse")]
    kv_cache_type: KvType,
    /// Prompt tokens per forward pass (0 = all at once).
    #[serde(default)]
    batch_size: usize,
}

/// The default thread count: `RAYON_NUM_THREADS` if set, else every core
/// (the size of rayon's global pool).
fn all_cores() -> usize {
    rayon::current_num_threads()
}

fn parse_some<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    parse(d).map(Some)
}

fn parse<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    let s = <String as serde::Deserialize>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl Config {
    /// The CPU kernel level: the one asked for, else the process-wide
    /// choice (`BITNET_SIMD_LEVEL` if set and runnable, else the best).
    fn level(&self) -> SimdLevel {
        self.simd_level.unwrap_or_else(|| Kernels::global().level)
    }

    fn label(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        let mut s = match self.device {
            DeviceChoice::Cpu | DeviceChoice::Auto => {
                format!("{} t={}", self.level(), self.threads)
            }
            d => d.to_string(),
        };
        if self.quantization != TernaryKernels::File {
            s += &format!(" {}", self.quantization.name());
        }
        if self.output_table != OutputTable::File {
            s += &format!(" {}-head", head_name(self.output_table));
        }
        if self.kv_cache_type == KvType::F16 {
            s += " kv-f16";
        }
        if self.batch_size > 0 {
            s += &format!(" b={}", self.batch_size);
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Test {
    /// `n` prompt tokens after `depth` in the context.
    Prompt { n: usize, depth: usize },
    /// `n` generated tokens after `depth` in the context.
    Gen { n: usize, depth: usize },
    /// The prompts of `--prompts`, as token ids.
    File(Vec<Vec<u32>>),
}

impl Test {
    /// llama-bench's names: `pp512`, `tg128`, `tg128 @ d4096`.
    fn name(&self) -> String {
        let at = |depth: usize| match depth {
            0 => String::new(),
            d => format!(" @ d{d}"),
        };
        match self {
            Test::Prompt { n, depth } => format!("pp{n}{}", at(*depth)),
            Test::Gen { n, depth } => format!("tg{n}{}", at(*depth)),
            Test::File(p) => format!("prompts({})", p.len()),
        }
    }

    /// Tokens in the context before the test.
    fn depth(&self) -> usize {
        match self {
            Test::Prompt { depth, .. } | Test::Gen { depth, .. } => *depth,
            Test::File(_) => 0,
        }
    }

    /// Positions of the context a run fills (the longest prompt of a file).
    fn positions(&self) -> usize {
        match self {
            Test::Prompt { n, depth } => depth + n,
            Test::Gen { n, depth } => depth + n + 1,
            Test::File(p) => p.iter().map(Vec::len).max().unwrap_or(0),
        }
    }

    /// Tokens processed per run, and llama-bench's n_prompt / n_gen.
    fn counts(&self) -> (usize, usize, usize) {
        match self {
            Test::Prompt { n, .. } => (*n, *n, 0),
            Test::Gen { n, .. } => (*n, 0, *n),
            Test::File(p) => {
                let n = p.iter().map(Vec::len).sum();
                (n, n, 0)
            }
        }
    }
}

struct Row {
    config: usize,
    test: usize,
    samples_ns: Vec<u128>,
    /// When the test started (RFC 3339, UTC).
    time: String,
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

fn samples_ts(test: &Test, ns: &[u128]) -> Vec<f64> {
    let tokens = test.counts().0 as f64;
    ns.iter().map(|&v| tokens / (v as f64 * 1e-9)).collect()
}

/// Processes `prompt` in batches of `batch` tokens (0 = one batch) in
/// `session`.
fn prefill<B: Backend>(
    model: &BitNet<B>,
    session: &mut Session<B>,
    prompt: &[u32],
    batch: usize,
) -> anyhow::Result<()> {
    let step = if batch == 0 {
        prompt.len().max(1)
    } else {
        batch
    };
    for part in prompt.chunks(step) {
        model.forward(session, part, false)?;
    }
    Ok(())
}

/// `n` deterministic pseudo-random ids from `seed` (llama-bench uses
/// random ids).
fn token_ids(n: usize, seed: u32, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 7) % vocab)
        .collect()
}

/// One run of a test; returns its wall time in nanoseconds.
fn run_once<B: Backend>(
    model: &BitNet<B>,
    bos: u32,
    test: &Test,
    cfg: &Config,
) -> anyhow::Result<u128> {
    let vocab = model.cfg.n_vocab as u32;
    let (batch, kv) = (cfg.batch_size, cfg.kv_cache_type);
    let depth = test.depth();
    // The context before the test, untimed.
    let session_with_depth = |room: usize| -> anyhow::Result<Session<B>> {
        let mut session = model.new_session(depth + room, kv);
        if depth > 0 {
            prefill(
                model,
                &mut session,
                &token_ids(depth, 1 << 20, vocab),
                batch,
            )?;
        }
        Ok(session)
    };
    match test {
        Test::Prompt { n, .. } => {
            let prompt = token_ids(*n, 0, vocab);
            let mut session = session_with_depth((*n).max(1))?;
            let start = Instant::now();
            prefill(model, &mut session, &prompt, batch)?;
            Ok(start.elapsed().as_nanos())
        }
        Test::File(prompts) => {
            let start = Instant::now();
            for p in prompts {
                let mut session = model.new_session(p.len().max(1), kv);
                prefill(model, &mut session, p, batch)?;
            }
            Ok(start.elapsed().as_nanos())
        }
        Test::Gen { n, .. } => {
            let mut session = session_with_depth(n + 1)?;
            let mut logits = model.forward(&mut session, &[bos], false)?;
            let start = Instant::now();
            for _ in 0..*n {
                let next = bitnet::sampler::argmax(&logits);
                logits = model.forward(&mut session, &[next], false)?;
            }
            Ok(start.elapsed().as_nanos())
        }
    }
}

/// Runs every test on one configuration, appending a row per test.
#[allow(clippy::too_many_arguments)]
fn bench_config<B: Backend>(
    model: &BitNet<B>,
    bos: u32,
    tests: &[Test],
    cfg: &Config,
    ci: usize,
    warmup: usize,
    repetitions: usize,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    log::debug!("{}: {}", cfg.label(), model.backend().name());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .build()?;
    for (ti, test) in tests.iter().enumerate() {
        let (n, ctx) = (test.positions(), model.cfg.n_ctx as usize);
        anyhow::ensure!(
            n <= ctx,
            "test {} needs {n} positions; the model's context is {ctx}",
            test.name()
        );
        let time = rfc3339(std::time::SystemTime::now());
        let samples = pool.install(|| -> anyhow::Result<Vec<u128>> {
            for _ in 0..warmup {
                run_once(model, bos, test, cfg)?;
            }
            (0..repetitions)
                .map(|_| run_once(model, bos, test, cfg))
                .collect()
        })?;
        let (m, s) = mean_std(&samples_ts(test, &samples));
        eprintln!("{} {}: {m:.2} ± {s:.2} tokens/s", cfg.label(), test.name());
        rows.push(Row {
            config: ci,
            test: ti,
            samples_ns: samples,
            time,
        });
    }
    Ok(())
}

fn configs(a: &Args) -> anyhow::Result<Vec<Config>> {
    if !a.configs.is_empty() {
        return a
            .configs
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                let mut c: Config =
                    toml::from_str(&text).with_context(|| format!("{}", p.display()))?;
                if c.name.is_empty() {
                    c.name = p
                        .file_stem()
                        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                }
                Ok(c)
            })
            .collect();
    }
    let levels: Vec<Option<SimdLevel>> = if a.simd_level.is_empty() {
        vec![None]
    } else {
        a.simd_level.iter().copied().map(Some).collect()
    };
    let threads = if a.threads.is_empty() {
        vec![all_cores()]
    } else {
        a.threads.clone()
    };
    let mut out = Vec::new();
    for &device in &a.device {
        for &simd_level in &levels {
            for &quantization in &a.quantization {
                for &output_table in &a.output_table {
                    for &threads in &threads {
                        for &batch_size in &a.batch_sizes {
                            out.push(Config {
                                name: String::new(),
                                device,
                                threads,
                                simd_level,
                                quantization,
                                output_table,
                                kv_cache_type: KvType::F32,
                                batch_size,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn read_prompts(path: &Path, tok: &Tokenizer) -> anyhow::Result<Vec<Vec<u32>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let prompts: Vec<Vec<u32>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| tok.encode(l, true))
        .collect();
    if prompts.is_empty() {
        anyhow::bail!("{} holds no prompts", path.display());
    }
    Ok(prompts)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.repetitions == 0 {
        anyhow::bail!("--repetitions must be at least 1");
    }
    let format = match (a.format.as_str(), &a.output) {
        ("md", Some(p)) if p.extension().is_some_and(|e| e == "json") => "json",
        ("md" | "json", _) => a.format.as_str(),
        (f, _) => anyhow::bail!("-o {f} is not supported (md, json)"),
    };
    let configs = configs(&a)?;
    if let Some(c) = configs.iter().find(|c| c.threads == 0) {
        anyhow::bail!("{}: threads must be at least 1", c.label());
    }
    let source = ModelSource::from_option(a.model.clone());
    let file = Arc::new(source.open_with(a.no_mmap)?);
    let file_size = file.file_len();
    let n_params: u64 = file.tensor_infos().iter().map(|t| t.n_elements).sum();
    let bos = file
        .metadata()
        .get_u64("tokenizer.ggml.bos_token_id")
        .map_or(0, |b| b as u32);

    let mut tests: Vec<Test> = Vec::new();
    for &depth in &a.n_depth {
        let prompt = a.n_prompt.iter().filter(|&&n| n > 0);
        tests.extend(prompt.map(|&n| Test::Prompt { n, depth }));
        let gen = a.n_gen.iter().filter(|&&n| n > 0);
        tests.extend(gen.map(|&n| Test::Gen { n, depth }));
    }
    if let Some(path) = &a.prompts {
        let tok = Tokenizer::from_metadata(file.metadata())?;
        tests.push(Test::File(read_prompts(path, &tok)?));
    }

    let mut rows = Vec::new();
    let mut desc = String::new();
    // Per configuration, the backend that ran it (`Backend::name`).
    let mut backends = Vec::new();
    for (ci, cfg) in configs.iter().enumerate() {
        let b = backend(cfg.device, || {
            Ok(CpuBackend::with_level(cfg.level())?
                .with_ternary_kernels(cfg.quantization)
                .with_output_table(cfg.output_table))
        })?;
        check_cpu_options(&b, cfg.simd_level, cfg.quantization)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.label()))?;
        with_any!(AnyBackend, b, b => {
            let model = BitNet::load(file.clone(), b).with_context(|| source.display())?;
            desc = format!(
                "{} {} {}",
                model.cfg.architecture,
                human_params(n_params),
                model.cfg.weight_type
            );
            backends.push(model.backend().name().to_owned());
            bench_config(&model, bos, &tests, cfg, ci, a.warmup, a.repetitions, &mut rows)?;
        });
    }

    if let Some(mib) = a.bandwidth {
        let t = configs.iter().map(|c| c.threads).max().unwrap_or(1);
        let bw = read_bandwidth(mib, t)?;
        eprintln!("memory read bandwidth ({t} threads): {:.2} GB/s", bw / 1e9);
        // Per decoded token every weight is read once: the ternary
        // projections and the LM head (the whole table); the file is that
        // plus one embedding row per token. A compact head replaces the
        // file's table by its copy.
        let head = ["output.weight", "token_embd.weight"]
            .iter()
            .find_map(|n| file.tensor_infos().iter().find(|t| t.name == *n));
        let mut tables: Vec<OutputTable> = Vec::new();
        for c in &configs {
            if !tables.contains(&c.output_table) {
                tables.push(c.output_table);
            }
        }
        for o in tables {
            let bytes = match (o, head) {
                (OutputTable::File, _) | (_, None) => file_size,
                (o, Some(h)) => {
                    let compact = o.compact_bytes(h.n_rows(), h.row_len()).unwrap_or(h.size);
                    file_size - h.size + compact
                }
            };
            let floor = bytes as f64 / bw;
            eprintln!(
                "decode floor with the {} head: {:.0} MB per token, {:.1} ms/token ({:.1} tokens/s)",
                head_name(o),
                bytes as f64 / 1e6,
                floor * 1e3,
                1.0 / floor
            );
        }
    }
    let ctx = Report {
        backends: &backends,
        rows: &rows,
        configs: &configs,
        tests: &tests,
        desc: &desc,
        size: file_size,
        params: n_params,
        model_filename: source.file_name(),
        // The bundled model is in the binary: never mapped.
        use_mmap: !a.no_mmap && matches!(source, ModelSource::Path(_)),
        cpu_info: cpu_info(),
    };
    let mut out = if format == "json" {
        ctx.json()
    } else {
        ctx.markdown()
    };
    // The comparison table follows a markdown report; a JSON report stays
    // valid JSON (the table then goes to stdout only).
    let comparison = if a.compare {
        ctx.comparison()
    } else {
        String::new()
    };
    if format == "md" {
        out += &comparison;
    }
    print!("{out}");
    if format == "json" {
        print!("{comparison}");
    }
    if let Some(path) = &a.output {
        std::fs::write(path, &out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `t` in RFC 3339 at UTC, whole seconds (`2026-11-29T01:02:03Z`):
/// llama-bench's `test_time`.
fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // The civil date of a day count, through 400-year eras (146 097 days)
    // of years that start on March 1st, so that leap days come last.
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The CPU's model name (llama-bench's `cpu_info`): /proc/cpuinfo's where
/// there is one, else the architecture.
fn cpu_info() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_owned())
        })
    });
    name.unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

fn head_name(o: OutputTable) -> &'static str {
    match o {
        OutputTable::File => "file",
        OutputTable::Int8 => "int8",
        OutputTable::Int6 => "int6",
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

struct Report<'a> {
    backends: &'a [String],
    rows: &'a [Row],
    configs: &'a [Config],
    tests: &'a [Test],
    desc: &'a str,
    size: u64,
    params: u64,
    model_filename: String,
    use_mmap: bool,
    cpu_info: String,
}

impl Report<'_> {
    fn ts(&self, r: &Row) -> (f64, f64) {
        mean_std(&samples_ts(&self.tests[r.test], &r.samples_ns))
    }

    /// llama-bench's markdown table (the backend column names the CPU
    /// kernel level and any non-default setting).
    fn markdown(&self) -> String {
        let mut s = String::from(
            "| model | size | params | backend | threads | test | t/s |\n| --- | ---: | ---: | --- | ---: | ---: | ---: |\n",
        );
        for r in self.rows {
            let c = &self.configs[r.config];
            let (m, sd) = self.ts(r);
            let mut extras = Vec::new();
            let head = format!("{} head", head_name(c.output_table));
            if c.quantization != TernaryKernels::File {
                extras.push(c.quantization.name());
            }
            if c.output_table != OutputTable::File {
                extras.push(head.as_str());
            }
            if c.kv_cache_type == KvType::F16 {
                extras.push("f16 KV");
            }
            let name = &self.backends[r.config];
            let backend = if !name.starts_with("wgpu") {
                extras.insert(0, c.level().name());
                format!("CPU ({})", extras.join(", "))
            } else if extras.is_empty() {
                name.clone()
            } else {
                format!("{name} + {}", extras.join(", "))
            };
            let mut test = self.tests[r.test].name();
            if c.batch_size > 0 && !matches!(self.tests[r.test], Test::Gen { .. }) {
                test += &format!(" b{}", c.batch_size);
            }
            s += &format!(
                "| {} | {} | {} | {backend} | {} | {test} | {m:.2} ± {sd:.2} |\n",
                self.desc,
                human_size(self.size),
                human_params(self.params),
                c.threads,
            );
        }
        s
    }

    /// llama-bench's JSON fields (those that mean something here), plus ours.
    fn json(&self) -> String {
        let list: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                let c = &self.configs[r.config];
                let test = &self.tests[r.test];
                let ts = samples_ts(test, &r.samples_ns);
                let (avg_ts, stddev_ts) = mean_std(&ts);
                let ns: Vec<f64> = r.samples_ns.iter().map(|&v| v as f64).collect();
                let (avg_ns, stddev_ns) = mean_std(&ns);
                let (_, n_prompt, n_gen) = test.counts();
                let gpu = self.backends[r.config].starts_with("wgpu");
                let kv = if c.kv_cache_type == KvType::F16 {
                    "f16"
                } else {
                    "f32"
                };
                serde_json::json!({
                    "build_commit": env!("BITNET_BUILD_COMMIT"),
                    "build_number": env!("BITNET_BUILD_NUMBER").parse::<u64>().unwrap_or(0),
                    "bitnet_version": env!("CARGO_PKG_VERSION"),
                    "cpu_info": self.cpu_info,
                    "gpu_info": if gpu { self.backends[r.config].as_str() } else { "" },
                    "backends": if gpu { "wgpu" } else { "CPU" },
                    "device": self.backends[r.config],
                    "config": c.label(),
                    "simd_level": if gpu { "" } else { c.level().name() },
                    "quantization": c.quantization.name(),
                    "output_table": head_name(c.output_table),
                    "type_k": kv,
                    "type_v": kv,
                    "use_mmap": self.use_mmap,
                    "model_filename": self.model_filename,
                    "model_type": self.desc,
                    "model_size": self.size,
                    "model_n_params": self.params,
                    "n_batch": c.batch_size,
                    "n_ubatch": c.batch_size,
                    "n_threads": c.threads,
                    "test": test.name(),
                    "n_prompt": n_prompt,
                    "n_gen": n_gen,
                    "n_depth": test.depth(),
                    "test_time": r.time,
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

    /// Every test's tokens/s per configuration, and the ratio to the first.
    fn comparison(&self) -> String {
        let mut s = String::from("\n| test |");
        for c in self.configs {
            s += &format!(" {} |", c.label());
        }
        s += "\n| --- |";
        s += &" ---: |".repeat(self.configs.len());
        s += "\n";
        for (ti, test) in self.tests.iter().enumerate() {
            s += &format!("| {} |", test.name());
            let base = self
                .rows
                .iter()
                .find(|r| r.test == ti && r.config == 0)
                .map(|r| self.ts(r).0);
            for ci in 0..self.configs.len() {
                match self.rows.iter().find(|r| r.test == ti && r.config == ci) {
                    Some(r) => {
                        let m = self.ts(r).0;
                        let ratio = base.map_or(1.0, |b| m / b.max(1e-12));
                        s += &format!(" {m:.2} ({ratio:.2}x) |");
                    }
                    None => s += " — |",
                }
            }
            s += "\n";
        }
        s
    }
}

/// Read bandwidth in bytes/s: a buffer of `mib` MiB (touched first, so it
/// is resident; far larger than the caches for a true figure) summed by
/// `threads` threads, eight independent accumulators each so that the sum
/// is not latency-bound; best of five passes.
fn read_bandwidth(mib: usize, threads: usize) -> anyhow::Result<f64> {
    use rayon::prelude::*;
    let words = mib
        .checked_mul(1 << 17) // u64s per MiB
        .filter(|&w| w > 0)
        .with_context(|| {
            format!("--bandwidth {mib}: give 1 MiB or more, within the address space")
        })?;
    let mut buf: Vec<u64> = Vec::new();
    buf.try_reserve_exact(words)
        .map_err(|_| anyhow::anyhow!("--bandwidth {mib}: cannot allocate {mib} MiB"))?;
    buf.extend(0..words as u64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// Against dates computed independently (Python's datetime): the epoch,
    /// leap days of a century leap year and an ordinary one, year ends.
    #[test]
    fn test_time_is_rfc3339_utc() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (951_868_799, "2000-02-29T23:59:59Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (1_798_506_061, "2026-12-29T01:01:01Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
        ] {
            assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(secs)), want);
        }
    }
}

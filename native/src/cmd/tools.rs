//! Developer tools: `dump` (a tensor as f32) and `gen-fixture` (a
//! BitNet-shaped GGUF with random ternary weights).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use bitnet::fixture::FixtureConfig;
use bitnet::GgmlType;

use crate::ModelSource;

/// Writes to stdout; a closed pipe (`| head`) ends the command quietly.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[derive(clap::Args)]
pub struct DumpArgs {
    /// GGUF file (default: the bundled model).
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Tensor name, as `info` lists it.
    #[arg(long)]
    tensor: String,
    /// Output file of little-endian f32 values, in ggml order.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

pub fn dump(args: DumpArgs) -> anyhow::Result<()> {
    let source = ModelSource::from_option(args.model);
    let file = source.open()?;
    let t = file
        .tensor(&args.tensor)
        .ok_or_else(|| anyhow!("{}: no tensor named {:?}", source.display(), args.tensor))?;
    let n = usize::try_from(t.info.n_elements)?;
    let values = bitnet::quant::dequantize(t.info.ty, t.data, n)
        .with_context(|| format!("tensor {:?}", args.tensor))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args.output, bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    Ok(())
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Preset {
    /// 2 layers, 256 wide, 512 tokens: for tests.
    Tiny,
    /// The microsoft/bitnet-b1.58-2B-4T shape (about 1.2 GB in I2_S).
    #[value(name = "2b4t")]
    B2b4t,
}

#[derive(clap::Args)]
pub struct FixtureArgs {
    /// Output GGUF path.
    #[arg(short = 'o', long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Ternary weight type: i2_s, tq1_0 or tq2_0.
    #[arg(long = "type", default_value = "i2_s")]
    ternary_type: String,
    /// Embedding table type: f16, f32, bf16 or q8_0.
    #[arg(long, default_value = "f16")]
    embedding_type: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// general.architecture (bitnet-b1.58, bitnet-25, bitnet).
    #[arg(long)]
    arch: Option<String>,
    #[arg(long)]
    layers: Option<u64>,
    #[arg(long)]
    embd: Option<u64>,
    #[arg(long)]
    ff: Option<u64>,
    #[arg(long)]
    heads: Option<u64>,
    #[arg(long)]
    heads_kv: Option<u64>,
    #[arg(long)]
    vocab: Option<u64>,
    #[arg(long)]
    ctx: Option<u64>,
    #[arg(long)]
    alignment: Option<u64>,
}

fn parse_type(name: &str) -> anyhow::Result<GgmlType> {
    GgmlType::from_name(name).ok_or_else(|| anyhow!("unknown tensor type {name:?}"))
}

pub fn gen_fixture(a: FixtureArgs) -> anyhow::Result<()> {
    let ty = parse_type(&a.ternary_type)?;
    if !ty.is_ternary() {
        bail!("--type must be i2_s, tq1_0 or tq2_0, not {ty}");
    }
    let mut cfg = match a.preset {
        Preset::Tiny => FixtureConfig::tiny(ty),
        Preset::B2b4t => FixtureConfig::bitnet_2b4t(ty),
    };
    cfg.embedding_type = parse_type(&a.embedding_type)?;
    cfg.seed = a.seed;
    let set = |field: &mut u64, v: Option<u64>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(&mut cfg.n_layers, a.layers);
    set(&mut cfg.n_embd, a.embd);
    set(&mut cfg.n_ff, a.ff);
    set(&mut cfg.n_head, a.heads);
    set(&mut cfg.n_head_kv, a.heads_kv);
    set(&mut cfg.n_vocab, a.vocab);
    set(&mut cfg.n_ctx, a.ctx);
    set(&mut cfg.alignment, a.alignment);
    if let Some(arch) = a.arch {
        cfg.architecture = arch;
    }
    let bytes = cfg
        .write_file(&a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!("wrote {} ({bytes} bytes)", a.output.display());
    Ok(())
}

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Hugging Face checkpoint folder (config.json, model.safetensors,
    /// tokenizer.json, tokenizer_config.json), microsoft/bitnet-b1.58-2B-4T layout.
    #[arg(value_name = "HF_DIR")]
    input: PathBuf,
    /// Output GGUF path.
    #[arg(short = 'o', long)]
    output: PathBuf,
    /// Ternary weight type: i2_s (bitnet.cpp), tq2_0 or tq1_0 (llama.cpp).
    #[arg(long, default_value = "i2_s")]
    outtype: String,
    /// Embedding type (f16, bf16, f32, q8_0); default: the checkpoint's.
    #[arg(long)]
    embedding_type: Option<String>,
}

pub fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let opts = bitnet::convert::ConvertOptions {
        weight_type: parse_type(&a.outtype)?,
        embedding_type: a.embedding_type.as_deref().map(parse_type).transpose()?,
        name: None,
    };
    let bytes = bitnet::convert::convert_hf(&a.input, &a.output, &opts)
        .with_context(|| format!("converting {}", a.input.display()))?;
    eprintln!("wrote {} ({bytes} bytes)", a.output.display());
    Ok(())
}

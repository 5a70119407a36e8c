//! `bitnet-cli`: the command-line front end of BitNet Rust.
//!
//! Today it generates text (`inference`, `chat`; on the CPU or, with
//! `--device`, a GPU through wgpu), lists devices (`devices`), inspects
//! models (`info`), dumps tensors (`dump`) and writes BitNet-shaped fixture
//! files (`gen-fixture`), converts Hugging Face checkpoints (`convert`) and
//! measures speed (`benchmark`). Profile and the server arrive with the
//! issues that build them; until then they are not listed rather than
//! pretending.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The bundled model's file name (in `models/`), for the constants below.
macro_rules! bundled_file {
    () => {
        "tiny-bitnet-trained-i2s.gguf"
    };
}

/// The small model compiled into the binary, used when no `-m` is given: a
/// 4.2 M-parameter BitNet b1.58 model (2B4T block structure, I2_S) trained
/// on public-domain and freely licensed English (docs/models/tiny-bitnet-trained.md).
/// It writes English-looking text and knows nothing.
pub const BUNDLED_MODEL: &[u8] = include_bytes!(concat!("../../models/", bundled_file!()));
/// Its file name (in `models/`).
pub const BUNDLED_MODEL_FILE: &str = bundled_file!();
pub const BUNDLED_MODEL_NAME: &str = concat!(
    bundled_file!(),
    " (bundled 4.2M-parameter demo model, see docs/models/tiny-bitnet-trained.md)"
);

#[derive(Parser)]
#[command(name = "bitnet-cli", version, about = "BitNet b1.58 inference runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (streams to stdout; timings on stderr).
    Inference(cmd::run::Args),
    /// Chat with the model (built-in BitNet format or the file's template).
    Chat(cmd::chat::Args),
    /// Measure prompt processing and generation speed (llama-bench's tests).
    Benchmark(cmd::bench::Args),
    /// List the devices a model can run on: the CPU and every wgpu adapter
    /// (name, backend, type, memory limits, features).
    Devices,
    /// Show a GGUF file's header: version, metadata, tensor table, sizes.
    Info(cmd::info::Args),
    /// Convert a Hugging Face BitNet checkpoint to GGUF.
    Convert(cmd::tools::ConvertArgs),
    /// Write one tensor, dequantized to little-endian f32, to a file.
    Dump(cmd::tools::DumpArgs),
    /// Write a BitNet-shaped GGUF fixture with random ternary weights.
    GenFixture(cmd::tools::FixtureArgs),
}

/// A model given on the command line, or the bundled one.
pub enum ModelSource {
    Path(PathBuf),
    Bundled,
}

impl ModelSource {
    pub fn from_option(path: Option<PathBuf>) -> Self {
        path.map_or(ModelSource::Bundled, ModelSource::Path)
    }

    pub fn open(&self) -> anyhow::Result<bitnet::GgufFile> {
        self.open_with(false)
    }

    /// With `no_mmap`, the file is read into memory instead of mapped
    /// (llama.cpp's `--no-mmap`): no page faults while generating.
    pub fn open_with(&self, no_mmap: bool) -> anyhow::Result<bitnet::GgufFile> {
        let file = match self {
            ModelSource::Path(p) if no_mmap => match std::fs::read(p) {
                Ok(bytes) => bitnet::GgufFile::from_vec(bytes).map_err(|e| e.to_string()),
                Err(e) => Err(format!("cannot read {}: {e}", p.display())),
            },
            ModelSource::Path(p) => bitnet::GgufFile::open(p).map_err(|e| e.to_string()),
            ModelSource::Bundled => {
                bitnet::GgufFile::from_static(BUNDLED_MODEL).map_err(|e| e.to_string())
            }
        };
        file.map_err(|e| anyhow::anyhow!("{}: {e}", self.display()))
    }

    pub fn display(&self) -> String {
        match self {
            ModelSource::Path(p) => p.display().to_string(),
            ModelSource::Bundled => BUNDLED_MODEL_NAME.to_owned(),
        }
    }

    /// The model's file: its path, or the bundled model's file name.
    pub fn file_name(&self) -> String {
        match self {
            ModelSource::Path(p) => p.display().to_string(),
            ModelSource::Bundled => BUNDLED_MODEL_FILE.to_owned(),
        }
    }
}

fn main() -> ExitCode {
    // RUST_LOG=debug shows, among others, which device, kernels and shader
    // variants were chosen. wgpu-hal's probe failures (an EGL display that
    // is not there) are noise unless asked for.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal=off"),
    )
    .format_timestamp(None)
    .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inference(args) => cmd::run::run(args),
        Command::Chat(args) => cmd::chat::run(args),
        Command::Info(args) => cmd::info::run(args),
        Command::Devices => cmd::device::list(),
        Command::Benchmark(args) => cmd::bench::run(args),
        Command::Convert(args) => cmd::tools::convert(args),
        Command::Dump(args) => cmd::tools::dump(args),
        Command::GenFixture(args) => cmd::tools::gen_fixture(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, joined.
            eprintln!("bitnet-cli: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

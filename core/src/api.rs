//! The library's front door, in the names of the performance tuning guide:
//! [`BitNetModel`] loaded with a [`ModelConfig`], run under an
//! [`InferenceConfig`], generating with a
//! [`GenerationConfig`](crate::GenerationConfig) and streaming with a
//! [`StreamingConfig`](crate::StreamingConfig).
//!
//! ```no_run
//! use bitnet::{BitNetModel, GenerationConfig, ModelConfig};
//!
//! let model = BitNetModel::load("model.gguf", &ModelConfig::default())?;
//! let cfg = GenerationConfig { max_tokens: Some(32), ..GenerationConfig::greedy() };
//! // Token by token, as an iterator:
//! for chunk in model.stream("The capital of France is", &cfg)? {
//!     print!("{}", chunk?.text);
//! }
//! // Or all at once (also `async fn generate`, `generate_batch`):
//! let out = model.generate_blocking("Hello", &cfg)?;
//! println!("{} ({:.1} tokens/s)", out.text, out.stats.generation_tokens_per_second());
//! # Ok::<(), bitnet::EngineError>(())
//! ```
//!
//! Where the draft guide names a setting that has no meaning for this
//! runtime, it is left out rather than accepted and ignored; see
//! docs/performance-tuning.md for the list and the reasons.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::backend::cpu::{CpuBackend, OutputTable};
#[cfg(feature = "wgpu")]
use crate::backend::wgpu::WgpuBackend;
use crate::backend::{Backend, KvType};
use crate::engine::{CancelToken, Chunk, Engine, EngineError, GenerationStats, TokenStream};
use crate::gguf::GgufFile;
use crate::model::BitNetConfig;
use crate::sampler::GenerationConfig;
use crate::StreamingConfig;

/// Where the model runs. CUDA adds its variant when it lands (no variant
/// that would fail at run time is offered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// A GPU through wgpu (feature `wgpu`): `Wgpu(None)` is the best
    /// adapter, `Wgpu(Some(n))` adapter n of `bitnet-cli devices`.
    #[cfg(feature = "wgpu")]
    Wgpu(Option<usize>),
}

/// The engine on whichever backend the model was loaded on.
#[derive(Clone)]
enum Engines {
    Cpu(Arc<Engine<CpuBackend>>),
    #[cfg(feature = "wgpu")]
    Wgpu(Arc<Engine<WgpuBackend>>),
}

/// A token stream on whichever backend.
enum Streams<'a> {
    Cpu(TokenStream<'a, CpuBackend>),
    #[cfg(feature = "wgpu")]
    Wgpu(TokenStream<'a, WgpuBackend>),
}

/// `$body` with `$x` bound to what the `Cpu` or `Wgpu` variant of `$value`
/// holds; `$ty` is the enum ([`Engines`] or [`Streams`]).
macro_rules! either {
    ($ty:ident, $value:expr, $x:ident => $body:expr) => {
        match $value {
            $ty::Cpu($x) => $body,
            #[cfg(feature = "wgpu")]
            $ty::Wgpu($x) => $body,
        }
    };
}

/// How the weights reach memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadingStrategy {
    /// Map the file: pages are read on first use and shared with the page
    /// cache (the lowest memory use; the guide's "lazy" loading is this).
    #[default]
    MemoryMap,
    /// Read the whole file into memory at load (no page faults later; costs
    /// the file's size in RAM).
    Preload,
}

/// How a model is loaded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelConfig {
    pub device: Device,
    pub loading_strategy: LoadingStrategy,
    /// Context positions of each sequence (0 = the model's context length).
    /// The KV cache is allocated lazily, but this bounds it.
    pub max_seq_len: usize,
    /// KV cache storage: f32, or f16 for half the memory.
    pub kv_cache_type: KvType,
    /// What the LM head reads: the file's table, or a compact int8 copy
    /// made at load time (fewer bytes per token; logits change slightly).
    pub output_table: OutputTable,
}

/// How generation runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferenceConfig {
    /// Threads of this model's own pool (`None`: rayon's global pool, which
    /// `RAYON_NUM_THREADS` sizes).
    pub threads: Option<usize>,
    /// The most prompts one [`BitNetModel::generate_batch`] call accepts.
    pub max_batch_size: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            threads: None,
            max_batch_size: 16,
        }
    }
}

/// The device for `Device::Wgpu(n)`.
#[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
fn wgpu_backend(n: Option<usize>) -> Result<WgpuBackend, EngineError> {
    WgpuBackend::new(crate::DeviceChoice::Wgpu(n))
        .map_err(|e| EngineError::Config(format!("wgpu: {e}")))
}

/// Nothing may block in the browser: the wasm package makes the device
/// asynchronously and drives an [`Engine`] itself.
#[cfg(all(feature = "wgpu", target_arch = "wasm32"))]
fn wgpu_backend(_: Option<usize>) -> Result<WgpuBackend, EngineError> {
    Err(EngineError::Config(
        "BitNetModel cannot start WebGPU synchronously in the browser; use the bitnet-rt-wasm package".into(),
    ))
}

/// The result of a generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub stats: GenerationStats,
}

/// A BitNet model ready to generate text. Cheap to clone (shared weights);
/// generations on clones may run concurrently, each with its own session.
#[derive(Clone)]
pub struct BitNetModel {
    engine: Engines,
    pool: Option<Arc<rayon::ThreadPool>>,
    inference: InferenceConfig,
}

impl BitNetModel {
    /// Loads a GGUF file.
    pub fn load(path: impl AsRef<Path>, config: &ModelConfig) -> Result<Self, EngineError> {
        let path = path.as_ref();
        let file = match config.loading_strategy {
            #[cfg(not(target_arch = "wasm32"))]
            LoadingStrategy::MemoryMap => GgufFile::open(path)?,
            // No files to map in the browser; `from_bytes` is the way there.
            #[cfg(target_arch = "wasm32")]
            LoadingStrategy::MemoryMap => {
                return Err(EngineError::Config(format!(
                    "{}: no file system in the browser; load the bytes with from_bytes",
                    path.display()
                )))
            }
            LoadingStrategy::Preload => {
                let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                GgufFile::from_vec(bytes)?
            }
        };
        Self::from_file(file, config)
    }

    /// Loads with the default configuration: `path` is a `.gguf` file or a
    /// directory holding exactly one.
    pub fn from_pretrained(path: impl AsRef<Path>) -> Result<Self, EngineError> {
        let path = path.as_ref();
        let file = if path.is_dir() {
            find_gguf(path)?
        } else {
            path.to_path_buf()
        };
        Self::load(file, &ModelConfig::default())
    }

    /// A model from GGUF bytes already in memory (the browser's path).
    pub fn from_bytes(bytes: Vec<u8>, config: &ModelConfig) -> Result<Self, EngineError> {
        Self::from_file(GgufFile::from_vec(bytes)?, config)
    }

    fn from_file(file: GgufFile, config: &ModelConfig) -> Result<Self, EngineError> {
        fn setup<B: Backend>(
            file: GgufFile,
            backend: B,
            config: &ModelConfig,
        ) -> Result<Arc<Engine<B>>, EngineError> {
            let mut engine = Engine::load(Arc::new(file), backend)?;
            engine.ctx_size = config.max_seq_len;
            engine.kv_type = config.kv_cache_type;
            Ok(Arc::new(engine))
        }
        let engine = match config.device {
            Device::Cpu => Engines::Cpu(setup(
                file,
                CpuBackend::new().with_output_table(config.output_table),
                config,
            )?),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(n) => {
                if config.output_table != OutputTable::File {
                    return Err(EngineError::Config(
                        "the compact output tables (int8, int6) are a CPU option; the wgpu backend reads the file's table".into(),
                    ));
                }
                let backend = wgpu_backend(n)?;
                Engines::Wgpu(setup(file, backend, config)?)
            }
        };
        Ok(BitNetModel {
            engine,
            pool: None,
            inference: InferenceConfig::default(),
        })
    }

    /// Applies `config` (building a thread pool when it asks for one).
    pub fn with_inference_config(mut self, config: InferenceConfig) -> Result<Self, EngineError> {
        self.pool = match config.threads {
            None => None,
            Some(0) => return Err(EngineError::Config("threads must be at least 1".into())),
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| EngineError::Config(format!("thread pool: {e}")))?,
            )),
        };
        self.inference = config;
        Ok(self)
    }

    /// The engine underneath (model, tokenizer, sessions) when the model
    /// runs on the CPU.
    pub fn cpu_engine(&self) -> Option<&Engine<CpuBackend>> {
        match &self.engine {
            Engines::Cpu(e) => Some(e),
            #[cfg(feature = "wgpu")]
            Engines::Wgpu(_) => None,
        }
    }

    /// The engine underneath when the model runs on wgpu.
    #[cfg(feature = "wgpu")]
    pub fn wgpu_engine(&self) -> Option<&Engine<WgpuBackend>> {
        match &self.engine {
            Engines::Wgpu(e) => Some(e),
            Engines::Cpu(_) => None,
        }
    }

    /// The name of the backend the model runs on.
    pub fn backend_name(&self) -> &str {
        either!(Engines, &self.engine, e => e.model.backend().name())
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &crate::tokenizer::Tokenizer {
        either!(Engines, &self.engine, e => &e.tokenizer)
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &BitNetConfig {
        either!(Engines, &self.engine, e => &e.model.cfg)
    }

    fn install<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    /// Streams a continuation of `prompt` token by token (one token per
    /// chunk; see [`ModelStream::with_streaming`] to group them). Nothing is
    /// computed until the first `next()`; dropping the stream stops it.
    pub fn stream(
        &self,
        prompt: &str,
        cfg: &GenerationConfig,
    ) -> Result<ModelStream<'_>, EngineError> {
        let ids = self.tokenizer().encode(prompt, true);
        let inner = match &self.engine {
            Engines::Cpu(e) => Streams::Cpu(e.stream(e.new_session(), &ids, cfg)?),
            #[cfg(feature = "wgpu")]
            Engines::Wgpu(e) => Streams::Wgpu(e.stream(e.new_session(), &ids, cfg)?),
        };
        Ok(ModelStream { model: self, inner })
    }

    /// Generates on the calling thread, until a stop condition.
    pub fn generate_blocking(
        &self,
        prompt: &str,
        cfg: &GenerationConfig,
    ) -> Result<Generation, EngineError> {
        collect(self.stream(prompt, cfg)?)
    }

    /// Generates on a worker thread; the caller's executor is never blocked.
    /// Dropping the future cancels the generation at its next token.
    pub fn generate(
        &self,
        prompt: &str,
        cfg: &GenerationConfig,
    ) -> impl Future<Output = Result<Generation, EngineError>> + Send + 'static {
        let (model, prompt, cfg) = (self.clone(), prompt.to_owned(), cfg.clone());
        Offload::spawn(move |cancel| collect(model.stream(&prompt, &cfg)?.with_cancel(cancel)))
    }

    /// Generates a continuation of each prompt, in order, with the same
    /// settings; the result for each prompt is what [`generate`](Self::generate)
    /// gives for it alone. The prompts run one after another (each sequence
    /// already uses every thread); decoding several sequences in one pass
    /// is future work.
    pub fn generate_batch(
        &self,
        prompts: &[&str],
        cfg: &GenerationConfig,
    ) -> impl Future<Output = Result<Vec<Generation>, EngineError>> + Send + 'static {
        let (model, cfg) = (self.clone(), cfg.clone());
        let prompts: Vec<String> = prompts.iter().map(|p| p.to_string()).collect();
        Offload::spawn(move |cancel| {
            if prompts.len() > model.inference.max_batch_size {
                return Err(EngineError::Config(format!(
                    "{} prompts in one batch; InferenceConfig::max_batch_size is {}",
                    prompts.len(),
                    model.inference.max_batch_size
                )));
            }
            prompts
                .iter()
                .map(|p| collect(model.stream(p, &cfg)?.with_cancel(cancel.clone())))
                .collect()
        })
    }
}

fn collect(stream: ModelStream<'_>) -> Result<Generation, EngineError> {
    let mut stream = stream;
    let mut text = String::new();
    for chunk in stream.by_ref() {
        text.push_str(&chunk?.text);
    }
    Ok(Generation {
        text,
        stats: stream.stats(),
    })
}

fn find_gguf(dir: &Path) -> Result<PathBuf, EngineError> {
    let io = |source| EngineError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(EngineError::Config(format!(
            "{} holds no .gguf file",
            dir.display()
        ))),
        _ => Err(EngineError::Config(format!(
            "{} holds several .gguf files ({}); name one",
            dir.display(),
            found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A [`TokenStream`] of a [`BitNetModel`], run in the model's thread pool.
pub struct ModelStream<'a> {
    model: &'a BitNetModel,
    inner: Streams<'a>,
}

impl ModelStream<'_> {
    /// Groups tokens into chunks and sets the per-token timeout.
    pub fn with_streaming(mut self, cfg: &StreamingConfig) -> Self {
        self.inner = match self.inner {
            Streams::Cpu(s) => Streams::Cpu(s.with_streaming(cfg)),
            #[cfg(feature = "wgpu")]
            Streams::Wgpu(s) => Streams::Wgpu(s.with_streaming(cfg)),
        };
        self
    }

    fn with_cancel(mut self, cancel: CancelToken) -> Self {
        self.inner = match self.inner {
            Streams::Cpu(s) => Streams::Cpu(s.with_cancel(cancel)),
            #[cfg(feature = "wgpu")]
            Streams::Wgpu(s) => Streams::Wgpu(s.with_cancel(cancel)),
        };
        self
    }

    /// A handle that stops this stream from elsewhere.
    pub fn cancel_token(&self) -> CancelToken {
        either!(Streams, &self.inner, s => s.cancel_token())
    }

    /// Counts and timings so far (final once the stream has ended).
    pub fn stats(&self) -> GenerationStats {
        either!(Streams, &self.inner, s => s.stats())
    }
}

impl Iterator for ModelStream<'_> {
    type Item = Result<Chunk, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let inner = &mut self.inner;
        self.model
            .install(|| either!(Streams, inner, s => s.next()))
    }
}

/// A future whose work runs on its own thread. Runtime-agnostic: no async
/// runtime is required or assumed. Dropping it cancels the work.
struct Offload<T> {
    shared: Arc<Mutex<(Option<T>, Option<Waker>)>>,
    cancel: CancelToken,
}

impl<T: Send + 'static> Offload<T> {
    fn spawn(work: impl FnOnce(CancelToken) -> T + Send + 'static) -> Self {
        let shared = Arc::new(Mutex::new((None, None::<Waker>)));
        let cancel = CancelToken::new();
        let (s, c) = (shared.clone(), cancel.clone());
        std::thread::spawn(move || {
            let out = work(c);
            let waker = {
                let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                g.0 = Some(out);
                g.1.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        });
        Offload { shared, cancel }
    }
}

impl<T> Future for Offload<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match g.0.take() {
            Some(out) => Poll::Ready(out),
            None => {
                g.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Offload<T> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

//! BitNet Rust in the browser: the core's own model, tokenizer, chat
//! templates and sampler behind a small JavaScript API. Nothing of the
//! model is reimplemented here; this crate only moves bytes in, awaits the
//! GPU instead of blocking, and hands tokens out.
//!
//! ```js
//! import init, { Engine } from "./pkg/bitnet_rt_wasm.js";
//! await init();
//! const engine = await Engine.load("model.gguf", {        // URL, File, ArrayBuffer
//!   device: "auto",                                       // "webgpu" | "cpu"
//!   onProgress: ({ phase, loaded, total }) => {},         // download | load | upload
//! });
//! const out = await engine.chat([{ role: "user", content: "Hi" }], {
//!   maxTokens: 64, temperature: 0.8, signal,              // an AbortSignal
//!   onToken: ({ text, tokens }) => {},
//! });
//! ```
//!
//! On WebGPU the wgpu backend runs the same WGSL as native (neither f16 nor
//! subgroups needed). Without WebGPU, `device: "auto"` runs the CPU backend
//! compiled to wasm (simd128) and says so in `engine.info().note`.
#![cfg(target_arch = "wasm32")]

mod js;
mod source;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bitnet::backend::cpu::CpuBackend;
use bitnet::backend::wgpu::{WgpuError, WgpuOptions};
use bitnet::backend::Backend;
use bitnet::chat::{ChatMessage, ChatTemplate};
use bitnet::model::Session;
use bitnet::{
    DeviceChoice, Engine as Core, GenerationConfig, GgufFile, KvType, StopReason, WgpuBackend,
};
use js_sys::{Function, Uint32Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::future_to_promise;

use js::{err, object, Progress};

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// A model on one backend, with the session its conversation lives in
/// (taken while a generation runs: one at a time).
struct Model<B: Backend> {
    engine: Core<B>,
    session: RefCell<Option<Session<B>>>,
}

impl<B: Backend> Model<B> {
    fn new(engine: Core<B>) -> Self {
        let session = RefCell::new(Some(engine.new_session()));
        Model { engine, session }
    }
}

enum Loaded {
    Cpu(Model<CpuBackend>),
    Gpu(Model<WgpuBackend>),
}

/// `$body` with `$m` bound to the model, whichever backend it is on.
macro_rules! with_model {
    ($loaded:expr, $m:ident => $body:expr) => {
        match $loaded {
            Loaded::Cpu($m) => $body,
            Loaded::Gpu($m) => $body,
        }
    };
}

struct Inner {
    model: Loaded,
    template: ChatTemplate,
    info: JsValue,
}

/// A loaded model, ready to generate.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Inner>,
}

fn to_js(e: impl std::fmt::Display) -> JsValue {
    err(&e.to_string())
}

/// An error about the file's bytes themselves (size, hash, not a valid
/// GGUF): named `BitNetFileError`, so a cache knows to drop its copy.
fn file_err(msg: &str) -> JsValue {
    let e = js_sys::Error::new(msg);
    e.set_name("BitNetFileError");
    e.into()
}

#[wasm_bindgen]
impl Engine {
    /// Loads a GGUF from a URL (streamed), a File/Blob, an ArrayBuffer or
    /// a Uint8Array. Options: `device` ("auto", "webgpu", "cpu"),
    /// `onProgress({phase, loaded, total})`, `onChunk(bytes, offset)` (each
    /// downloaded chunk, e.g. for a cache), `size` and `sha256` (checked;
    /// a mismatch is an error), `ctxSize` (0: the model's), `kvType`
    /// ("f32", "f16").
    pub async fn load(source: JsValue, options: JsValue) -> Result<Engine, JsValue> {
        let progress = Progress(js::function(&options, "onProgress")?);
        let device = js::string(&options, "device")?.unwrap_or_else(|| "auto".into());
        if !["auto", "webgpu", "cpu"].contains(&device.as_str()) {
            return Err(err(&format!(
                "device {device:?} is not one of auto, webgpu, cpu"
            )));
        }
        let ctx = js::count(&options, "ctxSize")?.unwrap_or(0) as usize;
        let kv: KvType = js::string(&options, "kvType")?
            .map(|s| s.parse().map_err(|e: String| err(&e)))
            .transpose()?
            .unwrap_or_default();
        let want_size = js::count(&options, "size")?;
        let want_sha = js::string(&options, "sha256")?;

        // The device first: no point reading a large file for a device
        // that is not there.
        let mut note = None;
        let gpu = if device == "cpu" {
            None
        } else {
            match WgpuBackend::new_async(DeviceChoice::Wgpu(None), WgpuOptions::default()).await {
                Ok(b) => Some(b),
                Err(e) => {
                    let why = match e {
                        WgpuError::NoAdapter => "the browser offers no WebGPU adapter".into(),
                        other => other.to_string(),
                    };
                    if device != "auto" {
                        return Err(err(&format!("WebGPU: {why}")));
                    }
                    note = Some(format!(
                        "WebGPU is not available here ({why}); running on the CPU (WebAssembly), which is slower."
                    ));
                    None
                }
            }
        };

        let loaded = source::read(&source, &progress, js::function(&options, "onChunk")?).await?;
        let size = loaded.bytes.len() as u64;
        if want_size.is_some_and(|n| n != size) {
            return Err(file_err(&format!(
                "the model is {size} bytes, expected {}",
                want_size.unwrap_or(0)
            )));
        }
        if let Some(sha) = want_sha.filter(|s| !s.eq_ignore_ascii_case(&loaded.sha256)) {
            return Err(file_err(&format!(
                "the model's SHA-256 is {}, expected {sha}",
                loaded.sha256
            )));
        }
        let file =
            Arc::new(GgufFile::from_vec(loaded.bytes).map_err(|e| file_err(&e.to_string()))?);
        let md = file.metadata();
        let arch = md.architecture().unwrap_or_default().to_owned();
        let template = ChatTemplate::for_model(&arch, md.get_str("tokenizer.chat_template"));

        let on_cpu = |file| -> Result<Loaded, JsValue> {
            let mut engine = Core::load(file, CpuBackend::new()).map_err(to_js)?;
            engine.ctx_size = ctx;
            engine.kv_type = kv;
            Ok(Loaded::Cpu(Model::new(engine)))
        };
        let model = match gpu {
            Some(b) => {
                let mut report =
                    |d: u64, t: u64| progress.report("upload", d as f64, Some(t as f64));
                match Core::load_with_progress(file.clone(), b, &mut report) {
                    Ok(mut engine) => {
                        engine.ctx_size = ctx;
                        engine.kv_type = kv;
                        Loaded::Gpu(Model::new(engine))
                    }
                    // A model the GPU path cannot take (a table type it
                    // lacks, too large a tensor): auto runs it on the CPU.
                    Err(e) if device == "auto" => {
                        note = Some(format!(
                            "this model cannot run on WebGPU here ({e}); running on the CPU (WebAssembly), which is slower."
                        ));
                        on_cpu(file)?
                    }
                    Err(e) => return Err(to_js(e)),
                }
            }
            None => on_cpu(file)?,
        };
        let info = with_model!(&model, m => {
            let c = &m.engine.model.cfg;
            object(&[
                ("backend", m.engine.model.backend().name().into()),
                ("device", if matches!(model, Loaded::Gpu(_)) { "webgpu" } else { "cpu" }.into()),
                ("note", note.clone().map_or(JsValue::NULL, JsValue::from)),
                ("architecture", c.architecture.as_str().into()),
                ("weightType", c.weight_type.to_string().into()),
                ("layers", (c.n_layers as f64).into()),
                ("embedding", (c.n_embd as f64).into()),
                ("vocab", (c.n_vocab as f64).into()),
                ("contextLength", (m.engine.model.cfg.n_ctx as f64).into()),
                ("ctxSize", (m.session.borrow().as_ref().map_or(0, |s| s.capacity()) as f64).into()),
                ("bytes", (size as f64).into()),
                ("sha256", loaded.sha256.as_str().into()),
            ])
        });
        progress.report("ready", size as f64, Some(size as f64));
        Ok(Engine {
            inner: Rc::new(Inner {
                model,
                template,
                info: info.into(),
            }),
        })
    }

    /// What was loaded and where it runs: `{backend, device, note,
    /// architecture, weightType, layers, embedding, vocab, contextLength,
    /// ctxSize, bytes, sha256}`.
    pub fn info(&self) -> JsValue {
        self.inner.info.clone()
    }

    /// Continues `prompt` (BOS added as the model asks). Options: the
    /// sampling settings (`temperature` (0 = greedy), `topK`, `topP`,
    /// `minP`, `repeatPenalty`, `repeatLastN`, `presencePenalty`,
    /// `frequencyPenalty`, `seed`), `maxTokens` (default 256), `stop`,
    /// `onToken({text, tokens})` (return `false` to stop) and `signal` (an
    /// AbortSignal). Resolves to the text and statistics.
    pub fn generate(&self, prompt: String, options: JsValue) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let ids = with_model!(&inner.model, m => m.engine.tokenizer.encode(&prompt, true));
            inner.run(ids, &options).await
        })
    }

    /// Answers a conversation (`[{role, content}]`, roles system, user,
    /// assistant) in the model's chat format. Options as `generate`. The
    /// conversation's earlier turns stay in the KV cache: send the whole
    /// conversation each time and only the new part is computed.
    pub fn chat(&self, messages: JsValue, options: JsValue) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let messages = parse_messages(&messages)?;
            let ids = with_model!(&inner.model, m => inner
                .template
                .encode(&m.engine.tokenizer, &messages)
                .map_err(to_js)?);
            inner.run(ids, &options).await
        })
    }

    /// Token ids of `text` (`addSpecial`: BOS as the model asks).
    pub fn tokenize(&self, text: &str, add_special: bool) -> Uint32Array {
        let ids = with_model!(&self.inner.model, m => m.engine.tokenizer.encode(text, add_special));
        Uint32Array::from(&ids[..])
    }

    /// The text of token ids.
    pub fn detokenize(&self, ids: &[u32]) -> String {
        with_model!(&self.inner.model, m => m.engine.tokenizer.decode(ids))
    }

    /// Forgets the conversation (its KV cache). An error while a
    /// generation runs.
    pub fn reset(&self) -> Result<(), JsValue> {
        with_model!(&self.inner.model, m => match m.session.borrow_mut().as_mut() {
            Some(s) => {
                s.reset();
                Ok(())
            }
            None => Err(err("a generation is running; stop it first")),
        })
    }
}

impl Inner {
    async fn run(&self, ids: Vec<u32>, options: &JsValue) -> Result<JsValue, JsValue> {
        let cfg = js::generation_config(options)?;
        let on_token = js::function(options, "onToken")?;
        let signal = js::get(options, "signal");
        let signal = if signal.is_undefined() || signal.is_null() {
            None
        } else {
            Some(
                signal
                    .dyn_into::<web_sys::AbortSignal>()
                    .map_err(|_| err("option signal must be an AbortSignal"))?,
            )
        };
        with_model!(&self.model, m => generate(m, &ids, &cfg, on_token, signal).await)
    }
}

/// Runs one generation in the model's session, streaming chunks to
/// `on_token`, giving the event loop a turn after each (so an abort or a
/// message gets through).
async fn generate<B: Backend>(
    m: &Model<B>,
    ids: &[u32],
    cfg: &GenerationConfig,
    on_token: Option<Function>,
    signal: Option<web_sys::AbortSignal>,
) -> Result<JsValue, JsValue> {
    let Some(mut session) = m.session.borrow_mut().take() else {
        return Err(err(
            "a generation is already running on this engine; await it or abort it first",
        ));
    };
    let out = stream(m, &mut session, ids, cfg, on_token, signal).await;
    if out.is_err() {
        // In the browser a device error can surface a read late: trust
        // nothing the cache holds.
        session.reset();
    }
    *m.session.borrow_mut() = Some(session);
    out
}

async fn stream<B: Backend>(
    m: &Model<B>,
    session: &mut Session<B>,
    ids: &[u32],
    cfg: &GenerationConfig,
    on_token: Option<Function>,
    signal: Option<web_sys::AbortSignal>,
) -> Result<JsValue, JsValue> {
    let mut stream = m.engine.stream(session, ids, cfg).map_err(to_js)?;
    let mut text = String::new();
    loop {
        if signal.as_ref().is_some_and(|s| s.aborted()) {
            stream.cancel_token().cancel();
        }
        let Some(chunk) = stream.next_async().await else {
            break;
        };
        let chunk = chunk.map_err(to_js)?;
        text.push_str(&chunk.text);
        if let Some(f) = &on_token {
            let event = object(&[
                ("text", chunk.text.as_str().into()),
                ("tokens", Uint32Array::from(&chunk.tokens[..]).into()),
            ]);
            if f.call1(&JsValue::NULL, &event)? == JsValue::FALSE {
                stream.cancel_token().cancel();
            }
        }
        js::yield_now().await?;
    }
    let s = stream.stats();
    let (stop, finish) = match s.stop_reason {
        StopReason::EndOfText => ("eos", "stop"),
        StopReason::StopString => ("stop_string", "stop"),
        StopReason::MaxTokens => ("max_tokens", "length"),
        StopReason::ContextFull => ("context_full", "length"),
        StopReason::Cancelled => ("aborted", "abort"),
        StopReason::Timeout => ("timeout", "abort"),
    };
    let ms = |d: std::time::Duration| JsValue::from_f64(d.as_secs_f64() * 1e3);
    Ok(object(&[
        ("text", text.into()),
        ("tokens", Uint32Array::from(&s.tokens[..]).into()),
        ("promptTokens", (s.prompt_tokens as f64).into()),
        ("cachedTokens", (s.cached_prompt_tokens as f64).into()),
        ("generatedTokens", (s.generated_tokens as f64).into()),
        ("stopReason", stop.into()),
        ("finishReason", finish.into()),
        ("promptMs", ms(s.prompt_time)),
        ("generationMs", ms(s.generation_time)),
        ("timeToFirstTokenMs", ms(s.time_to_first_token)),
        ("promptTokensPerSecond", s.prompt_tokens_per_second().into()),
        ("tokensPerSecond", s.generation_tokens_per_second().into()),
        ("seed", js_sys::BigInt::from(s.seed).into()),
    ])
    .into())
}

/// `[{role, content}]` as chat messages.
fn parse_messages(v: &JsValue) -> Result<Vec<ChatMessage>, JsValue> {
    if !js_sys::Array::is_array(v) {
        return Err(err("messages must be an array of {role, content}"));
    }
    js_sys::Array::from(v)
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |k: &str| {
                js::get(&m, k)
                    .as_string()
                    .ok_or_else(|| err(&format!("messages[{i}].{k} must be a string")))
            };
            let role = field("role")?;
            if !["system", "user", "assistant"].contains(&role.as_str()) {
                return Err(err(&format!(
                    "messages[{i}].role {role:?} is not system, user or assistant"
                )));
            }
            Ok(ChatMessage::new(&role, &field("content")?))
        })
        .collect()
}

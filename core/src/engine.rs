//! Text in, text out: a model, its tokenizer and a sampler, generating token
//! by token with streaming, cancellation and stop strings.

use std::borrow::BorrowMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use web_time::Instant;

use crate::backend::{Backend, KvType};
use crate::gguf::GgufFile;
use crate::model::{BitNet, ModelError, Session};
use crate::sampler::{GenerationConfig, Sampler};
use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("the prompt is {prompt} tokens but the context holds {ctx} (use a shorter prompt or a larger --ctx-size)")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model emitted an end-of-generation token (EOS or `<|eot_id|>`).
    EndOfText,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The text reached one of the stop strings.
    StopString,
    /// The context is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
    /// One token took longer than `token_timeout`.
    Timeout,
}

/// Timings and counts of one generation, as llama.cpp reports them.
#[derive(Clone, Debug)]
pub struct GenerationStats {
    /// Tokens of the prompt, cached ones included.
    pub prompt_tokens: usize,
    /// Prompt tokens found in the session's KV cache (not recomputed).
    pub cached_prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_time: Duration,
    pub generation_time: Duration,
    pub time_to_first_token: Duration,
    pub stop_reason: StopReason,
    pub seed: u64,
    /// Generated token ids (the stop token excluded).
    pub tokens: Vec<u32>,
}

impl GenerationStats {
    /// Prompt tokens actually computed per second.
    pub fn prompt_tokens_per_second(&self) -> f64 {
        let computed = self.prompt_tokens - self.cached_prompt_tokens;
        computed as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    pub fn generation_tokens_per_second(&self) -> f64 {
        // The first token comes from the prompt pass; the rest are decode steps.
        let steps = self.generated_tokens.saturating_sub(1);
        steps as f64 / self.generation_time.as_secs_f64().max(1e-9)
    }
}

/// Stops a [`TokenStream`] from another thread (or from a callback): the
/// stream ends with [`StopReason::Cancelled`] before its next token.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a [`TokenStream`] yields: generated tokens and the text they made
/// visible. Text can lag its tokens (a character split across tokens, or
/// text that may begin a stop string is held back), so the last chunk of a
/// stream may carry text and no token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    pub tokens: Vec<u32>,
    pub text: String,
}

/// How a [`TokenStream`] groups tokens into chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamingConfig {
    /// Tokens per chunk (1 = every token as soon as it is sampled).
    pub buffer_size: usize,
    /// A chunk is handed out once it is this old, even if not full.
    pub flush_interval_ms: u64,
    /// Stop ([`StopReason::Timeout`]) when one token takes longer than this;
    /// overrides [`GenerationConfig::token_timeout`].
    pub token_timeout_ms: Option<u64>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            buffer_size: 1,
            flush_interval_ms: 50,
            token_timeout_ms: None,
        }
    }
}

/// A model with its tokenizer, ready to generate.
pub struct Engine<B: Backend> {
    pub model: BitNet<B>,
    pub tokenizer: Tokenizer,
    /// Positions of a new session's context (0 = the model's context length).
    pub ctx_size: usize,
    /// Storage of a new session's KV cache.
    pub kv_type: KvType,
}

impl<B: Backend> Engine<B> {
    pub fn load(file: Arc<GgufFile>, backend: B) -> Result<Self, EngineError> {
        Self::load_with_progress(file, backend, &mut |_, _| {})
    }

    /// [`Engine::load`] with [`BitNet::load_with_progress`]'s reports.
    pub fn load_with_progress(
        file: Arc<GgufFile>,
        backend: B,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, EngineError> {
        let tokenizer = Tokenizer::from_metadata(file.metadata())?;
        let model = BitNet::load_with_progress(file, backend, progress)?;
        Ok(Engine {
            model,
            tokenizer,
            ctx_size: 0,
            kv_type: KvType::F32,
        })
    }

    /// An empty sequence with this engine's context size and KV type.
    pub fn new_session(&self) -> Session<B> {
        self.model.new_session(self.ctx_size, self.kv_type)
    }

    /// Starts generating a continuation of `prompt` (token ids, BOS
    /// included where wanted) in `session`. Whatever prefix of `prompt` the
    /// session already holds is reused from its KV cache (a chat's earlier
    /// turns); the rest is computed as one batch on the first `next()`.
    /// `session` is a `Session` (owned) or a `&mut Session` (kept by the
    /// caller for the next turn).
    pub fn stream<S: BorrowMut<Session<B>>>(
        &self,
        mut session: S,
        prompt: &[u32],
        cfg: &GenerationConfig,
    ) -> Result<TokenStream<'_, B, S>, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let s = session.borrow_mut();
        let ctx = s.capacity();
        if prompt.len() > ctx {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                ctx,
            });
        }
        // Keep the cached prefix, but always recompute at least the last
        // prompt token: its logits are where sampling starts.
        let cached = s.common_prefix(prompt).min(prompt.len() - 1);
        s.truncate(cached);
        let mut sampler = Sampler::new(cfg.clone());
        for &t in prompt {
            sampler.accept(t);
        }
        Ok(TokenStream {
            engine: self,
            session,
            token_timeout: cfg.token_timeout,
            max_tokens: cfg.max_tokens,
            stops: StopMatcher::new(&cfg.stop),
            sampler,
            decoder: StreamDecoder::new(),
            prefill: prompt[cached..].to_vec(),
            prompt_tokens: prompt.len(),
            cached,
            logits: Vec::new(),
            tokens: Vec::new(),
            buffer_size: 1,
            flush_interval: Duration::from_millis(50),
            cancel: CancelToken::new(),
            start: Instant::now(),
            prompt_time: Duration::ZERO,
            gen_start: None,
            ttft: None,
            stop: None,
            tail_sent: false,
        })
    }

    /// Generates a continuation of `prompt` (encoded with BOS as the model
    /// asks) in a fresh session. `on_text` receives each piece of text as
    /// soon as it is valid UTF-8 and cannot be part of a stop string;
    /// returning `false` cancels.
    pub fn generate(
        &self,
        prompt: &str,
        cfg: &GenerationConfig,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats, EngineError> {
        let ids = self.tokenizer.encode(prompt, true);
        self.generate_ids(&mut self.new_session(), &ids, cfg, on_text)
    }

    /// As [`Engine::generate`], from token ids, in `session` (reusing the
    /// part of its cache that matches `prompt`).
    pub fn generate_ids(
        &self,
        session: &mut Session<B>,
        prompt: &[u32],
        cfg: &GenerationConfig,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats, EngineError> {
        let mut stream = self.stream(session, prompt, cfg)?;
        while let Some(chunk) = stream.next() {
            let chunk = chunk?;
            if !chunk.text.is_empty() && !on_text(&chunk.text) {
                stream.cancel_token().cancel();
            }
        }
        Ok(stream.stats())
    }
}

/// Generation as an iterator: each `next()` computes one token (the first
/// also runs the prompt) and yields it with the text it completes. Dropping
/// the stream stops generation; so does a [`CancelToken`].
pub struct TokenStream<'a, B: Backend, S: BorrowMut<Session<B>> = Session<B>> {
    engine: &'a Engine<B>,
    session: S,
    sampler: Sampler,
    stops: StopMatcher,
    decoder: StreamDecoder,
    token_timeout: Option<Duration>,
    max_tokens: Option<usize>,
    /// Prompt tokens still to run (all of them before the first token).
    prefill: Vec<u32>,
    prompt_tokens: usize,
    cached: usize,
    logits: Vec<f32>,
    tokens: Vec<u32>,
    buffer_size: usize,
    flush_interval: Duration,
    cancel: CancelToken,
    start: Instant,
    prompt_time: Duration,
    gen_start: Option<Instant>,
    ttft: Option<Duration>,
    stop: Option<StopReason>,
    tail_sent: bool,
}

impl<B: Backend, S: BorrowMut<Session<B>>> TokenStream<'_, B, S> {
    /// Groups tokens into chunks and sets the per-token timeout.
    pub fn with_streaming(mut self, cfg: &StreamingConfig) -> Self {
        self.buffer_size = cfg.buffer_size.max(1);
        self.flush_interval = Duration::from_millis(cfg.flush_interval_ms);
        if let Some(ms) = cfg.token_timeout_ms {
            self.token_timeout = Some(Duration::from_millis(ms));
        }
        self
    }

    /// A handle that stops this stream from elsewhere.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Makes `cancel` (shared with other streams or threads) stop this one.
    pub fn with_cancel(mut self, cancel: CancelToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Why the stream ended (`None` while it runs).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// The session, holding the prompt and the generated tokens.
    pub fn session(&self) -> &Session<B> {
        self.session.borrow()
    }

    /// Counts and timings so far (final once the stream has ended).
    pub fn stats(&self) -> GenerationStats {
        GenerationStats {
            prompt_tokens: self.prompt_tokens,
            cached_prompt_tokens: self.cached,
            generated_tokens: self.tokens.len(),
            prompt_time: self.prompt_time,
            generation_time: self.gen_start.map(|t| t.elapsed()).unwrap_or_default(),
            time_to_first_token: self.ttft.unwrap_or_default(),
            stop_reason: self.stop.unwrap_or(StopReason::Cancelled),
            seed: self.sampler.seed,
            tokens: self.tokens.clone(),
        }
    }

    /// Computes one token: `Ok(Some(id))`, or `Ok(None)` once stopped.
    fn step(&mut self) -> Result<Option<u32>, EngineError> {
        let Some(run) = self.begin_step() else {
            return Ok(None);
        };
        let begun = Instant::now();
        self.logits = self
            .engine
            .model
            .forward(self.session.borrow_mut(), run.tokens(), false)?;
        Ok(self.end_step(run, begun))
    }

    /// [`TokenStream::step`], awaiting the logits.
    async fn step_async(&mut self) -> Result<Option<u32>, EngineError> {
        let Some(run) = self.begin_step() else {
            return Ok(None);
        };
        let begun = Instant::now();
        self.logits = self
            .engine
            .model
            .forward_async(self.session.borrow_mut(), run.tokens(), false)
            .await?;
        Ok(self.end_step(run, begun))
    }

    /// What the next token needs computed, or `None` (and why, in
    /// `self.stop`) when the stream is over.
    fn begin_step(&mut self) -> Option<Run> {
        if self.stop.is_some() {
            return None;
        }
        if self.cancel.is_cancelled() {
            self.stop = Some(StopReason::Cancelled);
            return None;
        }
        if self.max_tokens.is_some_and(|n| self.tokens.len() >= n) {
            self.stop = Some(StopReason::MaxTokens);
            return None;
        }
        if !self.prefill.is_empty() {
            self.start = Instant::now();
            return Some(Run::Prompt(std::mem::take(&mut self.prefill)));
        }
        let Some(&last) = self.tokens.last() else {
            // Not reached: the prompt runs first, and a stream that sampled
            // nothing has stopped.
            self.stop = Some(StopReason::Cancelled);
            return None;
        };
        if self.session.borrow().len() >= self.session.borrow().capacity() {
            self.stop = Some(StopReason::ContextFull);
            return None;
        }
        Some(Run::Token([last]))
    }

    /// Samples from the logits `run` produced (the run began at `begun`).
    fn end_step(&mut self, run: Run, begun: Instant) -> Option<u32> {
        match run {
            Run::Prompt(_) => {
                self.prompt_time = self.start.elapsed();
                self.gen_start = Some(Instant::now());
            }
            Run::Token(_) => {
                if self.token_timeout.is_some_and(|t| begun.elapsed() > t) {
                    self.stop = Some(StopReason::Timeout);
                    return None;
                }
            }
        }
        let next = self.sampler.sample(&mut self.logits);
        self.ttft.get_or_insert_with(|| self.start.elapsed());
        if self.engine.tokenizer.is_stop(next) {
            self.stop = Some(StopReason::EndOfText);
            return None;
        }
        self.sampler.accept(next);
        self.tokens.push(next);
        Some(next)
    }

    /// Whether `chunk` (begun at `begun`) takes another token.
    fn wants_more(&self, chunk: &Chunk, begun: Instant) -> bool {
        self.stop.is_none()
            && chunk.tokens.len() < self.buffer_size
            && (chunk.tokens.is_empty() || begun.elapsed() < self.flush_interval)
    }

    /// Adds token `id` and the text it makes visible to `chunk`.
    fn emit(&mut self, chunk: &mut Chunk, id: u32) {
        chunk.tokens.push(id);
        let piece = self.decoder.push(&self.engine.tokenizer, id);
        let (text, hit) = self.stops.push(&piece);
        chunk.text.push_str(&text);
        if hit {
            self.stop = Some(StopReason::StopString);
        }
    }

    /// The chunk to hand out, with the held-back text once the stream is
    /// over (`None`: nothing is left).
    fn close(&mut self, mut chunk: Chunk) -> Option<Chunk> {
        if let Some(reason) = self.stop {
            // Held-back text belongs to the output unless a stop string or
            // the caller ended it.
            if !self.tail_sent {
                self.tail_sent = true;
                if !matches!(reason, StopReason::StopString | StopReason::Cancelled) {
                    chunk
                        .text
                        .push_str(&self.stops.finish(&self.decoder.finish()));
                }
            }
            if chunk.tokens.is_empty() && chunk.text.is_empty() {
                return None;
            }
        }
        Some(chunk)
    }

    /// The next chunk, as [`Iterator::next`] gives it, without blocking on
    /// the device: the way to generate in the browser.
    pub async fn next_async(&mut self) -> Option<Result<Chunk, EngineError>> {
        let mut chunk = Chunk::default();
        let begun = Instant::now();
        while self.wants_more(&chunk, begun) {
            match self.step_async().await {
                Ok(Some(id)) => self.emit(&mut chunk, id),
                Ok(None) => break,
                Err(e) => {
                    self.stop = Some(StopReason::Cancelled);
                    return Some(Err(e));
                }
            }
        }
        self.close(chunk).map(Ok)
    }
}

/// The tokens one step runs: the prompt (the part not cached), or the
/// last generated token.
enum Run {
    Prompt(Vec<u32>),
    Token([u32; 1]),
}

impl Run {
    fn tokens(&self) -> &[u32] {
        match self {
            Run::Prompt(t) => t,
            Run::Token(t) => t,
        }
    }
}

impl<B: Backend, S: BorrowMut<Session<B>>> Iterator for TokenStream<'_, B, S> {
    type Item = Result<Chunk, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut chunk = Chunk::default();
        let begun = Instant::now();
        while self.wants_more(&chunk, begun) {
            match self.step() {
                Ok(Some(id)) => self.emit(&mut chunk, id),
                Ok(None) => break,
                Err(e) => {
                    self.stop = Some(StopReason::Cancelled);
                    return Some(Err(e));
                }
            }
        }
        self.close(chunk).map(Ok)
    }
}

/// Holds back text that may be the start of a stop string.
struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds text; returns what can be shown now and whether a stop string was
    /// reached (the stop string and anything after it are dropped).
    fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_owned();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of a stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let suffix = &self.pending[i..];
                if s.starts_with(suffix) {
                    keep = keep.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        (out, false)
    }

    fn finish(&mut self, tail: &str) -> String {
        self.pending.push_str(tail);
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_hold_back_partial_matches() {
        let mut m = StopMatcher::new(&["User:".into()]);
        assert_eq!(m.push("Hello U"), ("Hello ".into(), false));
        assert_eq!(m.push("se"), (String::new(), false));
        assert_eq!(m.push("r: hi"), (String::new(), true));
        let mut m = StopMatcher::new(&["User:".into()]);
        assert_eq!(m.push("Us"), (String::new(), false));
        assert_eq!(m.push("e it"), ("Use it".into(), false));
        assert_eq!(m.finish(""), "");
    }
}

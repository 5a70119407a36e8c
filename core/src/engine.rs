//! Text in, text out: a model, its tokenizer and a sampler, generating token
//! by token with streaming, cancellation and stop strings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::Backend;
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
    pub prompt_tokens: usize,
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
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    pub fn generation_tokens_per_second(&self) -> f64 {
        // The first token comes from the prompt pass; the rest are decode steps.
        let steps = self.generated_tokens.saturating_sub(1);
        steps as f64 / self.generation_time.as_secs_f64().max(1e-9)
    }
}

/// A model with its tokenizer, ready to generate.
pub struct Engine<B: Backend> {
    pub model: BitNet<B>,
    pub tokenizer: Tokenizer,
}

impl<B: Backend> Engine<B> {
    pub fn load(file: Arc<GgufFile>, backend: B) -> Result<Self, EngineError> {
        let tokenizer = Tokenizer::from_metadata(file.metadata())?;
        let model = BitNet::load(file, backend)?;
        Ok(Engine { model, tokenizer })
    }

    /// Generates a continuation of `prompt` (encoded with BOS as the model
    /// asks) in a fresh session of `ctx_size` positions (0 = the model's).
    /// `on_text` receives each piece of text as soon as it is valid UTF-8 and
    /// cannot be part of a stop string; returning `false` cancels.
    pub fn generate(
        &self,
        prompt: &str,
        cfg: &GenerationConfig,
        ctx_size: usize,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats, EngineError> {
        let ids = self.tokenizer.encode(prompt, true);
        self.generate_ids(&ids, cfg, ctx_size, on_text)
    }

    /// As [`Engine::generate`], from token ids.
    pub fn generate_ids(
        &self,
        prompt: &[u32],
        cfg: &GenerationConfig,
        ctx_size: usize,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let mut session: Session<B> = self.model.new_session(ctx_size);
        let ctx = session.capacity();
        if prompt.len() > ctx {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                ctx,
            });
        }
        let mut sampler = Sampler::new(cfg.clone());
        for &t in prompt {
            sampler.accept(t);
        }
        let mut stops = StopMatcher::new(&cfg.stop);
        let mut decoder = StreamDecoder::new();
        let mut tokens = Vec::new();

        let start = Instant::now();
        let mut logits = self.model.forward(&mut session, prompt, false)?;
        let prompt_time = start.elapsed();
        let gen_start = Instant::now();
        let mut ttft = None;

        let reason = loop {
            if cfg.max_tokens.is_some_and(|n| tokens.len() >= n) {
                break StopReason::MaxTokens;
            }
            let next = sampler.sample(&mut logits);
            ttft.get_or_insert_with(|| start.elapsed());
            if self.tokenizer.is_stop(next) {
                break StopReason::EndOfText;
            }
            sampler.accept(next);
            tokens.push(next);
            let (text, hit) = stops.push(&decoder.push(&self.tokenizer, next));
            if !text.is_empty() && !on_text(&text) {
                break StopReason::Cancelled;
            }
            if hit {
                break StopReason::StopString;
            }
            if session.len() >= ctx {
                break StopReason::ContextFull;
            }
            let step = Instant::now();
            logits = self.model.forward(&mut session, &[next], false)?;
            if cfg.token_timeout.is_some_and(|t| step.elapsed() > t) {
                break StopReason::Timeout;
            }
        };
        if !matches!(reason, StopReason::StopString | StopReason::Cancelled) {
            let tail = stops.finish(&decoder.finish());
            if !tail.is_empty() {
                on_text(&tail);
            }
        }
        Ok(GenerationStats {
            prompt_tokens: prompt.len(),
            generated_tokens: tokens.len(),
            prompt_time,
            generation_time: gen_start.elapsed(),
            time_to_first_token: ttft.unwrap_or_default(),
            stop_reason: reason,
            seed: sampler.seed,
            tokens,
        })
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

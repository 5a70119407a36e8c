//! The BitNet b1.58 forward pass, in one place, generic over a [`Backend`].
//!
//! Reads like the paper (and llama2.c's `run.c`): for each layer,
//!
//! ```text
//! h = RMSNorm(x) · attn_norm
//! q, k, v = BitLinear(h)                 per-token int8 × ternary, exact i32 sums
//! q, k = RoPE(q, k)                      NEOX pairing (i, i + rope_dim/2);
//!                                        `llama` files: pairs (2i, 2i + 1)
//! a = causal GQA attention(q, K, V)      scale 1/sqrt(head_dim)
//! a = RMSNorm(a) · attn_sub_norm         BitNet architectures only
//! x = x + BitLinear_o(a)
//! h = RMSNorm(x) · ffn_norm
//! m = act(BitLinear_gate(h)) · BitLinear_up(h)     act = ReLU² (2B4T) or SiLU
//! m = RMSNorm(m) · ffn_sub_norm          BitNet architectures only
//! x = x + BitLinear_down(m)
//! ```
//!
//! then logits = (RMSNorm(x) · output_norm) × token_embd (tied) or output.
//! See `shared/docs/formats.md` section 2.

use std::sync::Arc;

use super::config::{BitNetConfig, ModelError};
use crate::backend::{Backend, KvType};
use crate::gguf::GgufFile;

struct Layer<B: Backend> {
    attn_norm: B::Vector,
    attn_sub_norm: Option<B::Vector>,
    ffn_norm: B::Vector,
    ffn_sub_norm: Option<B::Vector>,
    wq: B::Linear,
    wk: B::Linear,
    wv: B::Linear,
    wo: B::Linear,
    gate: B::Linear,
    up: B::Linear,
    down: B::Linear,
}

/// A loaded model: configuration plus the backend's handles to its weights.
pub struct BitNet<B: Backend> {
    pub cfg: BitNetConfig,
    backend: B,
    embedding: B::Table,
    output: Option<B::Table>,
    output_norm: B::Vector,
    layers: Vec<Layer<B>>,
}

/// One sequence being generated: its KV cache and the tokens in it.
pub struct Session<B: Backend> {
    cache: B::KvCache,
    pos: usize,
    max_seq: usize,
    /// The token at each cached position.
    tokens: Vec<u32>,
}

impl<B: Backend> Session<B> {
    /// Positions used so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    pub fn capacity(&self) -> usize {
        self.max_seq
    }

    /// Forgets everything; the cache is reused.
    pub fn reset(&mut self) {
        self.truncate(0);
    }

    /// The tokens whose keys and values the cache holds.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// How many leading tokens of `ids` the cache already holds.
    pub fn common_prefix(&self, ids: &[u32]) -> usize {
        self.tokens
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Keeps the first `n` positions (later ones are overwritten as the
    /// sequence continues).
    pub fn truncate(&mut self, n: usize) {
        self.pos = self.pos.min(n);
        self.tokens.truncate(self.pos);
    }
}

impl<B: Backend> BitNet<B> {
    /// Checks the file's configuration and hands every weight to `backend`.
    pub fn load(file: Arc<GgufFile>, backend: B) -> Result<Self, ModelError> {
        Self::load_with_progress(file, backend, &mut |_, _| {})
    }

    /// [`BitNet::load`], calling `progress(done, total)` (in layers, the
    /// tables last) as the weights reach the backend: a GPU upload of a
    /// large model takes a while.
    pub fn load_with_progress(
        file: Arc<GgufFile>,
        backend: B,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, ModelError> {
        let cfg = BitNetConfig::from_gguf(&file)?;
        let total = cfg.n_layers + 1;
        let b = &backend;
        let mut layers = Vec::with_capacity(cfg.n_layers as usize);
        for i in 0..cfg.n_layers {
            let n = |t: &str| format!("blk.{i}.{t}.weight");
            let sub = |t: &str| -> Result<Option<B::Vector>, ModelError> {
                Ok(if cfg.sub_norms {
                    Some(b.load_vector(&file, &n(t))?)
                } else {
                    None
                })
            };
            layers.push(Layer {
                attn_norm: b.load_vector(&file, &n("attn_norm"))?,
                attn_sub_norm: sub("attn_sub_norm")?,
                ffn_norm: b.load_vector(&file, &n("ffn_norm"))?,
                ffn_sub_norm: sub("ffn_sub_norm")?,
                wq: b.load_linear(&file, &n("attn_q"))?,
                wk: b.load_linear(&file, &n("attn_k"))?,
                wv: b.load_linear(&file, &n("attn_v"))?,
                wo: b.load_linear(&file, &n("attn_output"))?,
                gate: b.load_linear(&file, &n("ffn_gate"))?,
                up: b.load_linear(&file, &n("ffn_up"))?,
                down: b.load_linear(&file, &n("ffn_down"))?,
            });
            progress(i + 1, total);
        }
        let mut embedding = b.load_table(&file, "token_embd.weight")?;
        let output = if cfg.tied_embeddings {
            b.prepare_output(&mut embedding)?;
            None
        } else {
            let mut t = b.load_table(&file, "output.weight")?;
            b.prepare_output(&mut t)?;
            Some(t)
        };
        progress(total, total);
        Ok(BitNet {
            embedding,
            output_norm: b.load_vector(&file, "output_norm.weight")?,
            output,
            layers,
            cfg,
            backend,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A new sequence with room for `max_seq` positions (0 = the model's
    /// context length), its KV cache stored as `kv`.
    pub fn new_session(&self, max_seq: usize, kv: KvType) -> Session<B> {
        let max_seq = if max_seq == 0 {
            self.cfg.n_ctx as usize
        } else {
            max_seq
        };
        Session {
            cache: self.backend.new_kv_cache(&self.cfg, max_seq, kv),
            pos: 0,
            max_seq,
            tokens: Vec::new(),
        }
    }

    /// Runs `tokens` (a whole prompt as one batch, or one new token) at the
    /// session's next positions. Returns the logits of the last token, or of
    /// every token when `all_logits` (row-major, `tokens.len()` × vocab).
    pub fn forward(
        &self,
        s: &mut Session<B>,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<Vec<f32>, ModelError> {
        let pos0 = s.pos;
        match self.record(s, tokens, all_logits)? {
            Some(logits) => self.backend.read(&logits).map_err(|e| {
                // The cache may not hold these positions: forget them.
                s.truncate(pos0);
                e.into()
            }),
            None => Ok(Vec::new()),
        }
    }

    /// [`BitNet::forward`] without blocking: the logits are awaited (the
    /// browser's way; natively the same as `forward`).
    pub async fn forward_async(
        &self,
        s: &mut Session<B>,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<Vec<f32>, ModelError> {
        let pos0 = s.pos;
        match self.record(s, tokens, all_logits)? {
            Some(logits) => match self.backend.read_async(&logits).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    s.truncate(pos0);
                    Err(e.into())
                }
            },
            None => Ok(Vec::new()),
        }
    }

    /// The forward pass up to its logits, not read yet (`None`: no tokens).
    fn record(
        &self,
        s: &mut Session<B>,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<Option<B::Tensor>, ModelError> {
        let needed = s.pos + tokens.len();
        if needed > s.max_seq {
            return Err(ModelError::ContextOverflow {
                needed,
                max: s.max_seq,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&t| u64::from(t) >= self.cfg.n_vocab) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab: self.cfg.n_vocab,
            });
        }
        if tokens.is_empty() {
            return Ok(None);
        }
        let (b, c) = (&self.backend, &self.cfg);
        let pos0 = s.pos;

        let logits = b.pass(|| {
            let mut x = b.embed(&self.embedding, tokens);
            for (i, l) in self.layers.iter().enumerate() {
                // Attention block.
                let eps = c.rms_eps;
                let norm = Some((&l.attn_norm, eps));
                let [mut q, mut k, v] = b.bitlinear_many(&x, norm, [&l.wq, &l.wk, &l.wv]);
                let a = b.rope_attention(&mut q, &mut k, &v, &mut s.cache, i, pos0, c);
                let sub = l.attn_sub_norm.as_ref().map(|w| (w, eps));
                b.bitlinear_add(&mut x, &a, sub, &l.wo);

                // Feed-forward block.
                let norm = Some((&l.ffn_norm, eps));
                let m = b.bitlinear_glu(&x, norm, &l.gate, &l.up, c.activation);
                let sub = l.ffn_sub_norm.as_ref().map(|w| (w, eps));
                b.bitlinear_add(&mut x, &m, sub, &l.down);
            }

            let x = b.rms_norm(&x, &self.output_norm, c.rms_eps);
            let head = self.output.as_ref().unwrap_or(&self.embedding);
            b.logits(&x, head, !all_logits)
        });
        s.pos = needed;
        s.tokens.extend_from_slice(tokens);
        Ok(Some(logits))
    }
}

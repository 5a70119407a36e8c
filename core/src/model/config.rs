//! Model hyperparameters from GGUF metadata, with the model-level checks of
//! `shared/docs/reliability.md` section 3 (items 15 and 16): required tensors
//! present with the expected shapes and allowed types, consistent head
//! counts, sane norms and RoPE, and tokenizer metadata that refers only to
//! tokens that exist.
//!
//! Families (`shared/docs/formats.md` section 2):
//! - `bitnet-b1.58`, `bitnet-25` (BitNet b1.58 2B4T): sub-norms, ReLU² FFN;
//! - `bitnet` (1bitLLM and llama.cpp conversions): sub-norms, SiLU unless
//!   `bitnet.hidden_activation` says otherwise;
//! - `llama` with ternary weights (Llama3-8B-1.58, Falcon3-1.58bit): no
//!   sub-norms, SiLU.

use std::collections::HashSet;

use crate::gguf::{Array, GgmlType, GgufFile, Metadata, TensorInfo, Value};

/// Architectures we can run.
pub const SUPPORTED_ARCHITECTURES: [&str; 4] = ["bitnet-b1.58", "bitnet-25", "bitnet", "llama"];
/// Caps from reliability.md: more layers than this is not a real model.
pub const MAX_LAYERS: u64 = 1024;
/// Longest chat template we accept (the official ones are a few KiB).
pub const MAX_CHAT_TEMPLATE: usize = 256 * 1024;

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension i with i + rope_dim/2 (GPT-NeoX; the BitNet architectures).
    Neox,
    /// Dimension 2i with 2i + 1 (llama.cpp's `llama` architecture, whose
    /// converters permute the Q and K rows of Hugging Face checkpoints so
    /// that this equals NEOX on the original weights).
    Norm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// relu(x)², BitNet b1.58 2B4T.
    Relu2,
    /// silu(x), Llama-style models and the older BitNet models.
    Silu,
}

/// The hyperparameters of a BitNet-style model, validated against its tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct BitNetConfig {
    pub architecture: String,
    pub n_vocab: u64,
    pub n_ctx: u64,
    pub n_embd: u64,
    pub n_layers: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub rope_dim: u64,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    pub activation: Activation,
    /// `attn_sub_norm` / `ffn_sub_norm` present (BitNet architectures).
    pub sub_norms: bool,
    /// No `output.weight`: the LM head is the embedding table.
    pub tied_embeddings: bool,
    /// Type of the ternary projection weights.
    pub weight_type: GgmlType,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("unknown architecture {found:?}; supported: {}", SUPPORTED_ARCHITECTURES.join(", "))]
    UnknownArchitecture { found: String },
    #[error("missing metadata key {key}")]
    MissingKey { key: String },
    #[error("metadata key {key} is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("metadata key {key}: {reason}")]
    BadValue { key: String, reason: String },
    #[error("missing tensor {name}")]
    MissingTensor { name: String },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor {name} is {found}, expected one of {allowed}")]
    TensorType {
        name: String,
        found: GgmlType,
        allowed: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error("the prompt and output need {needed} positions but the context holds {max}")]
    ContextOverflow { needed: usize, max: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: u64 },
}

type Result<T> = std::result::Result<T, ModelError>;

const EMBEDDING_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q6_K,
];
const NORM_TYPES: &[GgmlType] = &[GgmlType::F32, GgmlType::F16];
const TERNARY_TYPES: &[GgmlType] = &[GgmlType::I2_S, GgmlType::TQ1_0, GgmlType::TQ2_0];

struct Keys<'a> {
    md: &'a Metadata,
    arch: &'a str,
}

impl Keys<'_> {
    fn full(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn opt_u64(&self, k: &str) -> Result<Option<u64>> {
        let key = self.full(k);
        match self.md.get(&key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| ModelError::WrongType {
                key,
                expected: "a non-negative integer",
                found: v.value_type().name(),
            }),
        }
    }

    fn u64(&self, k: &str) -> Result<u64> {
        self.opt_u64(k)?
            .ok_or_else(|| ModelError::MissingKey { key: self.full(k) })
    }

    fn opt_f32(&self, k: &str) -> Result<Option<f32>> {
        let key = self.full(k);
        match self.md.get(&key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(Value::F64(x)) => Ok(Some(*x as f32)),
            Some(v) => Err(ModelError::WrongType {
                key,
                expected: "FLOAT32",
                found: v.value_type().name(),
            }),
        }
    }
}

fn bad(key: String, reason: impl Into<String>) -> ModelError {
    ModelError::BadValue {
        key,
        reason: reason.into(),
    }
}

impl BitNetConfig {
    /// Reads and checks the configuration of the model in `file`.
    pub fn from_gguf(file: &GgufFile) -> Result<BitNetConfig> {
        let md = file.metadata();
        let arch = match md.get("general.architecture") {
            None => {
                return Err(ModelError::MissingKey {
                    key: "general.architecture".into(),
                })
            }
            Some(Value::String(s)) => s.as_str(),
            Some(v) => {
                return Err(ModelError::WrongType {
                    key: "general.architecture".into(),
                    expected: "STRING",
                    found: v.value_type().name(),
                })
            }
        };
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(ModelError::UnknownArchitecture { found: arch.into() });
        }
        let k = Keys { md, arch };

        let n_embd = k.u64("embedding_length")?;
        let n_layers = k.u64("block_count")?;
        let n_ff = k.u64("feed_forward_length")?;
        let n_head = k.u64("attention.head_count")?;
        let n_head_kv = k.opt_u64("attention.head_count_kv")?.unwrap_or(n_head);
        let n_ctx = k.u64("context_length")?;
        let rms_eps = k
            .opt_f32("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| ModelError::MissingKey {
                key: k.full("attention.layer_norm_rms_epsilon"),
            })?;
        let rope_theta = k.opt_f32("rope.freq_base")?.unwrap_or(10_000.0);

        if n_layers == 0 || n_layers > MAX_LAYERS {
            return Err(bad(
                k.full("block_count"),
                format!("{n_layers} is not in 1..={MAX_LAYERS}"),
            ));
        }
        for (key, v) in [
            ("embedding_length", n_embd),
            ("feed_forward_length", n_ff),
            ("context_length", n_ctx),
        ] {
            if v == 0 {
                return Err(bad(k.full(key), "must be non-zero"));
            }
        }
        if n_head == 0 || n_embd % n_head != 0 {
            return Err(bad(
                k.full("attention.head_count"),
                format!("{n_head} does not divide embedding_length {n_embd}"),
            ));
        }
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(bad(
                k.full("attention.head_count_kv"),
                format!("{n_head_kv} does not divide head_count {n_head}"),
            ));
        }
        let head_dim = n_embd / n_head;
        for key in ["attention.key_length", "attention.value_length"] {
            if let Some(v) = k.opt_u64(key)? {
                if v != head_dim {
                    return Err(bad(
                        k.full(key),
                        format!("{v} differs from embedding_length / head_count = {head_dim}, which is not supported"),
                    ));
                }
            }
        }
        check_rope_scaling(&k, file)?;
        let rope_dim = k.opt_u64("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(bad(
                k.full("rope.dimension_count"),
                format!("{rope_dim} must be even and at most the head size {head_dim}"),
            ));
        }
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return Err(bad(
                k.full("attention.layer_norm_rms_epsilon"),
                format!("{rms_eps} must be finite and > 0"),
            ));
        }
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(bad(
                k.full("rope.freq_base"),
                format!("{rope_theta} must be finite and > 0"),
            ));
        }

        let n_vocab = vocab_size(&k)?;
        let activation = activation(&k)?;
        let sub_norms = arch != "llama";
        let rope_style = if arch == "llama" {
            RopeStyle::Norm
        } else {
            RopeStyle::Neox
        };

        let mut cfg = BitNetConfig {
            architecture: arch.into(),
            n_vocab,
            n_ctx,
            n_embd,
            n_layers,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            rope_dim,
            rope_theta,
            rope_style,
            rms_eps,
            activation,
            sub_norms,
            tied_embeddings: file.tensor("output.weight").is_none(),
            weight_type: GgmlType::I2_S,
        };
        cfg.weight_type = cfg.check_tensors(file)?;
        check_tokenizer(md, n_vocab)?;
        Ok(cfg)
    }

    /// Checks every tensor the forward pass reads; returns the ternary type.
    fn check_tensors(&self, file: &GgufFile) -> Result<GgmlType> {
        let (e, f, v) = (self.n_embd, self.n_ff, self.n_vocab);
        let kv = self.n_head_kv * self.head_dim;
        expect(file, "token_embd.weight", &[e, v], EMBEDDING_TYPES)?;
        expect(file, "output_norm.weight", &[e], NORM_TYPES)?;
        if !self.tied_embeddings {
            expect(file, "output.weight", &[e, v], EMBEDDING_TYPES)?;
        }
        let mut weight_type = None;
        for i in 0..self.n_layers {
            let name = |t: &str| format!("blk.{i}.{t}.weight");
            let mut norms = vec![("attn_norm", e), ("ffn_norm", e)];
            if self.sub_norms {
                norms.extend([("attn_sub_norm", e), ("ffn_sub_norm", f)]);
            }
            for (t, n) in norms {
                expect(file, &name(t), &[n], NORM_TYPES)?;
            }
            for (t, k, m) in [
                ("attn_q", e, e),
                ("attn_k", e, kv),
                ("attn_v", e, kv),
                ("attn_output", e, e),
                ("ffn_gate", e, f),
                ("ffn_up", e, f),
                ("ffn_down", f, e),
            ] {
                let ty = expect(file, &name(t), &[k, m], TERNARY_TYPES)?;
                // One ternary type per model: kernels are chosen once.
                match weight_type {
                    None => weight_type = Some(ty),
                    Some(w) if w != ty => {
                        return Err(ModelError::TensorType {
                            name: name(t),
                            found: ty,
                            allowed: format!("{w}, like the model's other projections"),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(weight_type.unwrap_or(GgmlType::I2_S))
    }
}

fn expect(file: &GgufFile, name: &str, shape: &[u64], allowed: &[GgmlType]) -> Result<GgmlType> {
    let t: &TensorInfo = file
        .tensor(name)
        .map(|v| v.info)
        .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
    if t.dims != shape {
        return Err(ModelError::TensorShape {
            name: name.into(),
            expected: shape.to_vec(),
            found: t.dims.clone(),
        });
    }
    if !allowed.contains(&t.ty) {
        return Err(ModelError::TensorType {
            name: name.into(),
            found: t.ty,
            allowed: allowed
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(t.ty)
}

/// `{arch}.vocab_size`, or the tokenizer's token count when absent (as
/// llama.cpp does); both must agree when both exist.
fn vocab_size(k: &Keys) -> Result<u64> {
    let tokens =
        k.md.get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(|a| a.len() as u64);
    match (k.opt_u64("vocab_size")?, tokens) {
        (Some(v), Some(t)) if v != t => Err(bad(
            k.full("vocab_size"),
            format!("{v} differs from the {t} entries of tokenizer.ggml.tokens"),
        )),
        (Some(v), _) | (None, Some(v)) => Ok(v),
        (None, None) => Err(ModelError::MissingKey {
            key: "tokenizer.ggml.tokens".into(),
        }),
    }
}

/// Context-extension schemes (linear, YaRN, Llama 3.1's `rope_freqs`) change
/// every RoPE angle; we do not implement them, so refuse rather than run a
/// model with wrong positions.
fn check_rope_scaling(k: &Keys, file: &GgufFile) -> Result<()> {
    let key = k.full("rope.scaling.type");
    match k.md.get(&key) {
        None => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(Value::String(s)) => {
            return Err(bad(key, format!("RoPE scaling {s:?} is not supported")));
        }
        Some(v) => {
            return Err(ModelError::WrongType {
                key,
                expected: "STRING",
                found: v.value_type().name(),
            })
        }
    }
    if let Some(f) = k.opt_f32("rope.scaling.factor")? {
        if f != 1.0 && f != 0.0 {
            return Err(bad(
                k.full("rope.scaling.factor"),
                format!("RoPE scaling by {f} is not supported"),
            ));
        }
    }
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(ModelError::Unsupported(
            "tensor rope_freqs.weight (per-frequency RoPE factors, as Llama 3.1 uses) is not supported".into(),
        ));
    }
    Ok(())
}

fn activation(k: &Keys) -> Result<Activation> {
    let key = k.full("hidden_activation");
    match k.md.get(&key) {
        None => Ok(match k.arch {
            "bitnet-b1.58" | "bitnet-25" => Activation::Relu2,
            _ => Activation::Silu,
        }),
        Some(Value::String(s)) => match s.as_str() {
            "relu2" | "relu_sqr" | "relu_squared" | "squared_relu" => Ok(Activation::Relu2),
            "silu" | "swiglu" => Ok(Activation::Silu),
            other => Err(bad(
                key,
                format!("unknown activation {other:?} (known: relu2, silu)"),
            )),
        },
        Some(v) => Err(ModelError::WrongType {
            key,
            expected: "STRING",
            found: v.value_type().name(),
        }),
    }
}

/// Tokenizer metadata: every id in range, every token type valid, every merge
/// made of two tokens that exist (reliability.md section 3, item 16).
fn check_tokenizer(md: &Metadata, n_vocab: u64) -> Result<()> {
    let err = |m: String| Err(ModelError::Tokenizer(m));
    match md.get_str("tokenizer.ggml.model") {
        Some("gpt2" | "llama") => {}
        Some(other) => {
            return err(format!(
                "tokenizer.ggml.model {other:?} is not supported (gpt2, llama)"
            ))
        }
        None => return err("missing tokenizer.ggml.model".into()),
    }
    let Some(Array::String(tokens)) = md.get("tokenizer.ggml.tokens").and_then(Value::as_array)
    else {
        return err("tokenizer.ggml.tokens must be an array of strings".into());
    };
    if tokens.len() as u64 != n_vocab {
        return err(format!(
            "{} tokens for a vocabulary of {n_vocab}",
            tokens.len()
        ));
    }
    if let Some(types) = md.get("tokenizer.ggml.token_type") {
        let Some(Array::I32(types)) = types.as_array() else {
            return err("tokenizer.ggml.token_type must be an INT32 array".into());
        };
        if types.len() != tokens.len() {
            return err(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            ));
        }
        if let Some((i, t)) = types
            .iter()
            .enumerate()
            .find(|(_, t)| !(1..=6).contains(*t))
        {
            return err(format!("token {i} has type {t}, expected 1..=6"));
        }
    }
    if let Some(merges) = md.get("tokenizer.ggml.merges") {
        let Some(Array::String(merges)) = merges.as_array() else {
            return err("tokenizer.ggml.merges must be an array of strings".into());
        };
        let vocab: HashSet<&str> = tokens.iter().collect();
        for (i, m) in merges.iter().enumerate() {
            let ok = m.split_once(' ').is_some_and(|(a, b)| {
                !a.is_empty() && !b.is_empty() && vocab.contains(a) && vocab.contains(b)
            });
            if !ok {
                return err(format!(
                    "merge {i} ({m:?}) is not two tokens of the vocabulary"
                ));
            }
        }
    }
    // SentencePiece merges by score: one finite FLOAT32 score per token.
    if md.get_str("tokenizer.ggml.model") == Some("llama") {
        let Some(Array::F32(scores)) = md.get("tokenizer.ggml.scores").and_then(Value::as_array)
        else {
            return err(
                "tokenizer.ggml.scores must be a FLOAT32 array (required for llama)".into(),
            );
        };
        if scores.len() != tokens.len() {
            return err(format!(
                "{} token scores for {} tokens",
                scores.len(),
                tokens.len()
            ));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return err(format!(
                "token {i} has score {}, not a finite number",
                scores[i]
            ));
        }
    }
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        if let Some(v) = md.get(key) {
            match v.as_u64() {
                Some(id) if id < n_vocab => {}
                _ => return err(format!("{key} = {v} is not a token id below {n_vocab}")),
            }
        }
    }
    if let Some(t) = md.get("tokenizer.chat_template") {
        match t.as_str() {
            Some(s) if s.len() <= MAX_CHAT_TEMPLATE => {}
            Some(s) => {
                return err(format!(
                    "chat template is {} bytes (limit {MAX_CHAT_TEMPLATE})",
                    s.len()
                ))
            }
            None => return err("tokenizer.chat_template must be a string".into()),
        }
    }
    Ok(())
}

/// llama.cpp's `general.file_type` for a model whose projections are `ty`
/// (bitnet.cpp's 40 for I2_S); `None` for non-ternary types.
pub fn ternary_file_type(ty: GgmlType) -> Option<u32> {
    match ty {
        GgmlType::I2_S => Some(40),
        GgmlType::TQ1_0 => Some(36),
        GgmlType::TQ2_0 => Some(37),
        _ => None,
    }
}

/// The `general.*` and `{arch}.*` keys every BitNet GGUF we write carries
/// (the fixture generator and the converter share this).
pub struct HParams<'a> {
    pub architecture: &'a str,
    pub name: String,
    pub weight_type: GgmlType,
    pub n_vocab: u64,
    pub n_ctx: u64,
    pub n_embd: u64,
    pub n_layers: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub rms_eps: f32,
    pub rope_theta: f32,
}

impl HParams<'_> {
    pub fn write(
        &self,
        w: &mut crate::gguf::GgufWriter,
    ) -> std::result::Result<(), crate::gguf::WriteError> {
        let arch = self.architecture;
        let key = |k: &str| format!("{arch}.{k}");
        let u32v = |v: u64| Value::U32(v as u32);
        w.add_metadata("general.architecture", Value::String(arch.into()))?;
        w.add_metadata("general.name", Value::String(self.name.clone()))?;
        if let Some(ft) = ternary_file_type(self.weight_type) {
            w.add_metadata("general.file_type", Value::U32(ft))?;
        }
        w.add_metadata("general.quantization_version", Value::U32(2))?;
        w.add_metadata(&key("vocab_size"), u32v(self.n_vocab))?;
        w.add_metadata(&key("context_length"), u32v(self.n_ctx))?;
        w.add_metadata(&key("embedding_length"), u32v(self.n_embd))?;
        w.add_metadata(&key("block_count"), u32v(self.n_layers))?;
        w.add_metadata(&key("feed_forward_length"), u32v(self.n_ff))?;
        w.add_metadata(
            &key("rope.dimension_count"),
            u32v(self.n_embd / self.n_head.max(1)),
        )?;
        w.add_metadata(&key("attention.head_count"), u32v(self.n_head))?;
        w.add_metadata(&key("attention.head_count_kv"), u32v(self.n_head_kv))?;
        w.add_metadata(
            &key("attention.layer_norm_rms_epsilon"),
            Value::F32(self.rms_eps),
        )?;
        w.add_metadata(&key("rope.freq_base"), Value::F32(self.rope_theta))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::FixtureConfig;
    use crate::gguf::{GgufWriter, StringArray};

    fn tiny(ty: GgmlType) -> GgufFile {
        GgufFile::from_vec(FixtureConfig::tiny(ty).to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn fixtures_pass() {
        for ty in [GgmlType::I2_S, GgmlType::TQ1_0, GgmlType::TQ2_0] {
            let cfg = BitNetConfig::from_gguf(&tiny(ty)).unwrap();
            assert_eq!(cfg.weight_type, ty);
            assert_eq!(cfg.activation, Activation::Relu2);
            assert_eq!((cfg.n_layers, cfg.n_embd, cfg.n_ff), (2, 256, 512));
            assert_eq!((cfg.n_head, cfg.n_head_kv, cfg.head_dim), (4, 2, 64));
            assert!(cfg.tied_embeddings && cfg.sub_norms);
        }
    }

    /// Rewrites the tiny fixture with one metadata key replaced (or removed)
    /// and one tensor dropped, and returns the model error.
    fn broken(key: &str, value: Option<Value>, drop_tensor: Option<&str>) -> ModelError {
        let src = tiny(GgmlType::TQ2_0);
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata().iter() {
            if k == key {
                if let Some(v) = &value {
                    w.add_metadata(k, v.clone()).unwrap();
                }
            } else {
                w.add_metadata(k, v.clone()).unwrap();
            }
        }
        if !src.metadata().iter().any(|(k, _)| k == key) {
            if let Some(v) = value {
                w.add_metadata(key, v).unwrap();
            }
        }
        for t in src.tensors() {
            if Some(t.info.name.as_str()) != drop_tensor {
                w.add_tensor(&t.info.name, &t.info.dims, t.info.ty, t.data.to_vec())
                    .unwrap();
            }
        }
        let file = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
        BitNetConfig::from_gguf(&file).unwrap_err()
    }

    #[test]
    fn each_problem_is_named() {
        let a = "bitnet-b1.58";
        let e = broken(
            "general.architecture",
            Some(Value::String("gpt9".into())),
            None,
        );
        assert!(
            e.to_string()
                .contains("bitnet-b1.58, bitnet-25, bitnet, llama"),
            "{e}"
        );
        let e = broken(&format!("{a}.block_count"), None, None);
        assert_eq!(
            e,
            ModelError::MissingKey {
                key: format!("{a}.block_count")
            }
        );
        let e = broken(
            &format!("{a}.attention.head_count_kv"),
            Some(Value::U32(3)),
            None,
        );
        assert!(
            matches!(e, ModelError::BadValue { ref key, .. } if key.ends_with("head_count_kv")),
            "{e}"
        );
        let e = broken(
            &format!("{a}.attention.layer_norm_rms_epsilon"),
            Some(Value::F32(f32::NAN)),
            None,
        );
        assert!(matches!(e, ModelError::BadValue { .. }), "{e}");
        let e = broken(&format!("{a}.block_count"), Some(Value::U32(5000)), None);
        assert!(matches!(e, ModelError::BadValue { .. }), "{e}");
        let e = broken(
            &format!("{a}.embedding_length"),
            Some(Value::String("x".into())),
            None,
        );
        assert!(matches!(e, ModelError::WrongType { .. }), "{e}");
        let e = broken("x", None, Some("blk.1.ffn_sub_norm.weight"));
        assert_eq!(
            e,
            ModelError::MissingTensor {
                name: "blk.1.ffn_sub_norm.weight".into()
            }
        );
        let e = broken(
            &format!("{a}.feed_forward_length"),
            Some(Value::U32(256)),
            None,
        );
        assert!(matches!(e, ModelError::TensorShape { .. }), "{e}");
        let e = broken(&format!("{a}.vocab_size"), Some(Value::U32(600)), None);
        assert!(matches!(e, ModelError::BadValue { .. }), "{e}");
        let e = broken("tokenizer.ggml.eos_token_id", Some(Value::U32(512)), None);
        assert!(matches!(e, ModelError::Tokenizer(_)), "{e}");
        let e = broken(
            "tokenizer.ggml.merges",
            Some(Value::Array(Array::String(
                ["a zzzz"].into_iter().collect::<StringArray>(),
            ))),
            None,
        );
        assert!(e.to_string().contains("merge 0"), "{e}");
        let e = broken(
            "tokenizer.ggml.token_type",
            Some(Value::Array(Array::I32(vec![7; 512]))),
            None,
        );
        assert!(e.to_string().contains("type 7"), "{e}");
        let e = broken(
            &format!("{a}.hidden_activation"),
            Some(Value::String("gelu".into())),
            None,
        );
        assert!(matches!(e, ModelError::BadValue { .. }), "{e}");
    }
}

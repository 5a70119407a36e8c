//! BitNet-shaped GGUF fixtures: small files for tests, and a full
//! 2B4T-shaped file for benchmarks, from a fixed seed.
//!
//! A fixture has the 2B4T architecture keys and tensor names
//! (`shared/docs/formats.md` section 2), random ternary weights in I2_S, TQ1_0
//! or TQ2_0, random norms and embeddings, and a synthetic byte-level BPE
//! vocabulary (256 byte tokens, random merges, Llama-3 special tokens at the
//! end). The ternary values of a tensor depend only on the seed and the
//! tensor's name, never on the format, so the I2_S and TQ2_0 fixtures of one
//! seed hold the same weights, and every scale is exactly representable in
//! f16 so that TQ formats store it without rounding.
//!
//! Tensor data is produced while the file is written, one tensor at a time,
//! so the 1.2 GB 2B4T-shaped file never sits in memory.

use std::collections::HashSet;
use std::path::Path;

use half::{bf16, f16};

use crate::gguf::{Array, GgmlType, GgufWriter, StringArray, Value, WriteError};
use crate::model::config::HParams;
use crate::quant;

/// The shape and types of a fixture model.
#[derive(Clone, Debug, PartialEq)]
pub struct FixtureConfig {
    pub architecture: String,
    pub n_layers: u64,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub n_vocab: u64,
    pub n_ctx: u64,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// I2_S, TQ1_0 or TQ2_0.
    pub ternary_type: GgmlType,
    /// F16 (as the official file), F32, BF16 or Q8_0.
    pub embedding_type: GgmlType,
    pub seed: u64,
    pub alignment: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("invalid fixture shape: {0}")]
    Shape(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl FixtureConfig {
    /// A tiny model (2 layers, 256 wide) that every ternary type can hold.
    pub fn tiny(ternary_type: GgmlType) -> Self {
        FixtureConfig {
            architecture: "bitnet-b1.58".into(),
            n_layers: 2,
            n_embd: 256,
            n_ff: 512,
            n_head: 4,
            n_head_kv: 2,
            n_vocab: 512,
            n_ctx: 256,
            rope_theta: 500_000.0,
            rms_eps: 1e-5,
            ternary_type,
            embedding_type: GgmlType::F16,
            seed: 42,
            alignment: 32,
        }
    }

    /// The shape of microsoft/bitnet-b1.58-2B-4T: 30 layers, 2560 wide,
    /// FFN 6912, 20 query / 5 KV heads, 128256 tokens, context 4096.
    pub fn bitnet_2b4t(ternary_type: GgmlType) -> Self {
        FixtureConfig {
            n_layers: 30,
            n_embd: 2560,
            n_ff: 6912,
            n_head: 20,
            n_head_kv: 5,
            n_vocab: 128_256,
            n_ctx: 4096,
            ..Self::tiny(ternary_type)
        }
    }

    pub fn head_dim(&self) -> u64 {
        self.n_embd / self.n_head.max(1)
    }

    /// Checks the shape is one a BitNet model and the chosen types can have.
    pub fn validate(&self) -> Result<(), FixtureError> {
        let bad = |m: String| Err(FixtureError::Shape(m));
        if !self.ternary_type.is_ternary() {
            return bad(format!("{} is not a ternary type", self.ternary_type));
        }
        if !matches!(
            self.embedding_type,
            GgmlType::F16 | GgmlType::F32 | GgmlType::BF16 | GgmlType::Q8_0
        ) {
            return bad(format!(
                "embedding type {} is not one of F16, F32, BF16, Q8_0",
                self.embedding_type
            ));
        }
        if self.n_layers == 0 || self.n_embd == 0 || self.n_ff == 0 || self.n_ctx == 0 {
            return bad("layers, widths and context must be non-zero".into());
        }
        if self.n_head == 0 || self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(format!(
                "head_count_kv {} must divide head_count {}",
                self.n_head_kv, self.n_head
            ));
        }
        if !self.n_embd.is_multiple_of(self.n_head) || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_count {} must divide embedding_length {} into an even head size",
                self.n_head, self.n_embd
            ));
        }
        let block = self.ternary_type.block_size();
        for (what, k) in [
            ("embedding_length", self.n_embd),
            ("feed_forward_length", self.n_ff),
        ] {
            if k % block != 0 {
                return bad(format!(
                    "{what} {k} must be a multiple of {}'s block of {block}",
                    self.ternary_type
                ));
            }
        }
        if !self.n_embd.is_multiple_of(self.embedding_type.block_size()) {
            return bad(format!(
                "embedding_length must be a multiple of {}",
                self.embedding_type.block_size()
            ));
        }
        if self.n_vocab < 256 + N_SPECIAL_SMALL {
            return bad(format!(
                "vocab_size must be at least {}",
                256 + N_SPECIAL_SMALL
            ));
        }
        Ok(())
    }

    /// The GGUF writer holding this fixture (data is produced when written).
    pub fn writer(&self) -> Result<GgufWriter, FixtureError> {
        self.validate()?;
        let mut w = GgufWriter::new();
        w.set_alignment(self.alignment)?;
        self.add_metadata(&mut w)?;
        self.add_tensors(&mut w)?;
        Ok(w)
    }

    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<u64, FixtureError> {
        Ok(self.writer()?.write_file(path)?)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, FixtureError> {
        Ok(self.writer()?.to_bytes()?)
    }

    fn add_metadata(&self, w: &mut GgufWriter) -> Result<(), WriteError> {
        HParams {
            architecture: &self.architecture,
            name: format!("bitnet-fixture-{}-seed{}", self.ternary_type, self.seed),
            weight_type: self.ternary_type,
            n_vocab: self.n_vocab,
            n_ctx: self.n_ctx,
            n_embd: self.n_embd,
            n_layers: self.n_layers,
            n_ff: self.n_ff,
            n_head: self.n_head,
            n_head_kv: self.n_head_kv,
            rms_eps: self.rms_eps,
            rope_theta: self.rope_theta,
        }
        .write(w)?;

        let vocab = Vocab::synthetic(self.n_vocab as usize, self.seed);
        w.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()))?;
        w.add_metadata(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vocab.tokens)),
        )?;
        w.add_metadata(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vocab.types)),
        )?;
        w.add_metadata(
            "tokenizer.ggml.merges",
            Value::Array(Array::String(vocab.merges)),
        )?;
        w.add_metadata("tokenizer.ggml.bos_token_id", Value::U32(vocab.bos))?;
        w.add_metadata("tokenizer.ggml.eos_token_id", Value::U32(vocab.eos))?;
        w.add_metadata("tokenizer.ggml.eot_token_id", Value::U32(vocab.eot))?;
        w.add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(true))?;
        Ok(())
    }

    fn add_tensors(&self, w: &mut GgufWriter) -> Result<(), WriteError> {
        let (e, f, v) = (self.n_embd, self.n_ff, self.n_vocab);
        let kv = self.n_head_kv * self.head_dim();
        let seed = self.seed;

        let emb_ty = self.embedding_type;
        w.add_tensor_with("token_embd.weight", &[e, v], emb_ty, move |out| {
            let mut rng = Rng::for_tensor(seed, "token_embd.weight");
            // One row at a time: the 2B4T table is 328M values.
            for _ in 0..v {
                let row: Vec<f32> = (0..e).map(|_| rng.uniform() * 0.5).collect();
                out.write_all(&encode_floats(emb_ty, &row))?;
            }
            Ok(())
        })?;
        add_norm(w, seed, "output_norm.weight", e)?;

        for i in 0..self.n_layers {
            let t = |name: &str| format!("blk.{i}.{name}.weight");
            for (name, k, m) in [
                ("attn_q", e, e),
                ("attn_k", e, kv),
                ("attn_v", e, kv),
                ("attn_output", e, e),
            ] {
                add_ternary(w, seed, &t(name), k, m, self.ternary_type)?;
            }
            add_norm(w, seed, &t("attn_norm"), e)?;
            add_norm(w, seed, &t("attn_sub_norm"), e)?;
            for (name, k, m) in [("ffn_gate", e, f), ("ffn_up", e, f), ("ffn_down", f, e)] {
                add_ternary(w, seed, &t(name), k, m, self.ternary_type)?;
            }
            add_norm(w, seed, &t("ffn_norm"), e)?;
            add_norm(w, seed, &t("ffn_sub_norm"), f)?;
        }
        Ok(())
    }
}

/// The ternary values and scale of a fixture tensor: a function of the seed
/// and the name only, whatever format they are then stored in.
pub fn ternary_weights(seed: u64, name: &str, n: usize) -> (Vec<i8>, f32) {
    let mut rng = Rng::for_tensor(seed, name);
    // A scale in [0.5, 2) that f16 holds exactly.
    let scale = f16::from_f32(0.5 + 1.5 * (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32);
    let mut w = Vec::with_capacity(n);
    while w.len() < n {
        // 40 base-3 digits from one 64-bit draw (3^40 < 2^64).
        let mut r = rng.next_u64();
        for _ in 0..40.min(n - w.len()) {
            w.push((r % 3) as i8 - 1);
            r /= 3;
        }
    }
    (w, scale.to_f32())
}

fn add_ternary(
    w: &mut GgufWriter,
    seed: u64,
    name: &str,
    k: u64,
    m: u64,
    ty: GgmlType,
) -> Result<(), WriteError> {
    let owned = name.to_owned();
    w.add_tensor_with(name, &[k, m], ty, move |out| {
        let (weights, scale) = ternary_weights(seed, &owned, (k * m) as usize);
        let bytes = quant::encode_ternary(ty, &weights, scale)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        out.write_all(&bytes)
    })
}

fn add_norm(w: &mut GgufWriter, seed: u64, name: &str, n: u64) -> Result<(), WriteError> {
    let mut rng = Rng::for_tensor(seed, name);
    let values: Vec<f32> = (0..n).map(|_| 1.0 + 0.1 * rng.uniform()).collect();
    w.add_tensor(
        name,
        &[n],
        GgmlType::F32,
        encode_floats(GgmlType::F32, &values),
    )
}

fn encode_floats(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F16 => x
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => x
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => quant::float::q8_0_quantize(x),
        _ => x.iter().flat_map(|&v| v.to_le_bytes()).collect(),
    }
}

// ---------------------------------------------------------------------------
// Synthetic byte-level BPE vocabulary
// ---------------------------------------------------------------------------

const N_SPECIAL_SMALL: u64 = 16;
const LLAMA3_SPECIALS: [&str; 11] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
];

/// GGUF token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;

struct Vocab {
    tokens: StringArray,
    types: Vec<i32>,
    merges: StringArray,
    bos: u32,
    eos: u32,
    eot: u32,
}

/// GPT-2's byte-to-character map: printable bytes stand for themselves, the
/// rest are shifted to U+0100 and up, so every token is visible text.
pub fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let shift = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + shift).unwrap_or('?')
}

impl Vocab {
    /// 256 byte tokens, random merges up to `n - n_special`, then the Llama-3
    /// special tokens (256 of them for a full-size vocabulary, as in 2B4T).
    fn synthetic(n: usize, seed: u64) -> Vocab {
        let n_special = if n >= 4096 {
            256
        } else {
            N_SPECIAL_SMALL as usize
        };
        let n_normal = n - n_special;
        let mut rng = Rng::for_tensor(seed, "tokenizer");
        let mut list: Vec<String> = (0..=255u8).map(|b| byte_to_char(b).to_string()).collect();
        let mut seen: HashSet<String> = list.iter().cloned().collect();
        let mut merges = StringArray::new();
        while list.len() < n_normal {
            let a = &list[rng.below(list.len())];
            let b = &list[rng.below(list.len().min(1024))];
            if a.chars().count() + b.chars().count() > 12 {
                continue;
            }
            let joined = format!("{a}{b}");
            if seen.insert(joined.clone()) {
                merges.push(&format!("{a} {b}"));
                list.push(joined);
            }
        }
        let mut types = vec![TOKEN_NORMAL; n_normal];
        for i in 0..n_special {
            list.push(match LLAMA3_SPECIALS.get(i) {
                Some(s) => (*s).to_owned(),
                None => format!("<|reserved_special_token_{}|>", i - 8),
            });
            types.push(TOKEN_CONTROL);
        }
        let first = n_normal as u32;
        Vocab {
            tokens: list.iter().collect(),
            types,
            merges,
            bos: first,
            eos: first + 1,
            eot: first + 9,
        }
    }
}

// ---------------------------------------------------------------------------
// Deterministic random numbers (SplitMix64)
// ---------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    /// A generator for one tensor: seed mixed with an FNV-1a hash of the name.
    fn for_tensor(seed: u64, name: &str) -> Rng {
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Rng(seed ^ h)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn tiny_fixtures_read_back_with_the_same_weights() {
        let mut decoded = Vec::new();
        for ty in [GgmlType::I2_S, GgmlType::TQ1_0, GgmlType::TQ2_0] {
            let cfg = FixtureConfig::tiny(ty);
            let file = GgufFile::from_vec(cfg.to_bytes().unwrap()).unwrap();
            assert_eq!(file.tensor_infos().len(), 2 + 11 * 2);
            assert_eq!(file.metadata().architecture(), Some("bitnet-b1.58"));
            let t = file.tensor("blk.1.ffn_down.weight").unwrap();
            assert_eq!(t.info.dims, vec![512, 256]);
            assert_eq!(t.info.ty, ty);
            decoded.push(quant::dequantize(ty, t.data, 512 * 256).unwrap());
            let tokens = file.metadata().get("tokenizer.ggml.tokens").unwrap();
            assert_eq!(tokens.as_array().unwrap().len(), 512);
        }
        assert_eq!(decoded[0], decoded[1]);
        assert_eq!(decoded[0], decoded[2]);
    }

    #[test]
    fn fixtures_are_deterministic() {
        let cfg = FixtureConfig::tiny(GgmlType::TQ2_0);
        assert_eq!(cfg.to_bytes().unwrap(), cfg.to_bytes().unwrap());
        let other = FixtureConfig {
            seed: 7,
            ..cfg.clone()
        };
        assert_ne!(cfg.to_bytes().unwrap(), other.to_bytes().unwrap());
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut cfg = FixtureConfig::tiny(GgmlType::TQ2_0);
        cfg.n_embd = 384; // not a multiple of 256
        assert!(matches!(cfg.validate(), Err(FixtureError::Shape(_))));
        let mut cfg = FixtureConfig::tiny(GgmlType::I2_S);
        cfg.n_head_kv = 3;
        assert!(matches!(cfg.validate(), Err(FixtureError::Shape(_))));
    }

    #[test]
    fn byte_map_is_a_bijection() {
        let chars: HashSet<char> = (0..=255u8).map(byte_to_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_to_char(b' '), '\u{120}');
        assert_eq!(byte_to_char(b'a'), 'a');
    }
}

//! The tokenizer stored in a GGUF file, in pure Rust (the same code runs on
//! wasm32: no threads, no file access).
//!
//! One [`Tokenizer`] type covers both vocabularies GGUF files carry:
//!
//! - byte-level BPE (`tokenizer.ggml.model = "gpt2"`, module `bpe`) as GPT-2
//!   and Llama 3 define it: each stretch of text is split by the pre-tokenizer
//!   regex (Llama 3's by default, which is what the BitNet architectures use
//!   when `tokenizer.ggml.pre` is absent), each piece's bytes are mapped to
//!   GPT-2's byte characters and merged by rank;
//! - SentencePiece BPE (`"llama"`, module `spm`) as LLaMA-1/2 and the
//!   1bitLLM BitNet models use it: spaces become `▁` (with one added in front
//!   when `tokenizer.ggml.add_space_prefix`), characters are merged by piece
//!   score, and characters outside the vocabulary fall back to `<0xXX>` byte
//!   tokens.
//!
//! Both share the vocabulary handling here: before either model runs, control
//! and user-defined token texts found in the input become their ids (the
//! earliest match first, the longest at a tie), like llama.cpp does.
//!
//! Display of token ids ([`Tokenizer::token_bytes`], [`Tokenizer::decode`],
//! [`StreamDecoder`]): control and user-defined tokens show their text in the
//! BPE path; in the SentencePiece path control and unknown tokens show their
//! text (`<s>`, `</s>`, `<unk>`), normal and user-defined pieces their text
//! with `▁` turned back into a space, byte tokens their byte.

mod bpe;
mod spm;

use std::collections::HashMap;

use crate::gguf::{Array, Metadata, Value};

pub(crate) const TOKEN_NORMAL: i32 = 1;
pub(crate) const TOKEN_UNKNOWN: i32 = 2;
pub(crate) const TOKEN_CONTROL: i32 = 3;
pub(crate) const TOKEN_USER_DEFINED: i32 = 4;
pub(crate) const TOKEN_UNUSED: i32 = 5;
pub(crate) const TOKEN_BYTE: i32 = 6;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenizerError {
    #[error("tokenizer.ggml.model {0:?} is not supported yet (supported: gpt2, llama)")]
    UnsupportedModel(String),
    #[error("tokenizer.ggml.pre {0:?} is not a pre-tokenizer we know (known: llama-bpe, llama3, gpt2, default)")]
    UnknownPreTokenizer(String),
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
    #[error("token {token:?} holds a character that is not a GPT-2 byte")]
    NotByteLevel { token: String },
}

pub(crate) fn meta_err(m: impl Into<String>) -> TokenizerError {
    TokenizerError::Metadata(m.into())
}

/// The vocabulary both models share: token texts, their ids and types, and
/// the special tokens that are matched in the raw text.
pub(crate) struct Vocab {
    pub(crate) tokens: Vec<String>,
    /// Text → id (the last one for a text listed twice).
    pub(crate) ids: HashMap<String, u32>,
    /// GGUF token types, one per token (1 normal … 6 byte).
    pub(crate) types: Vec<i32>,
    /// Control and user-defined tokens, longest first, matched before the model.
    specials: Vec<(String, u32)>,
    pub(crate) is_special: Vec<bool>,
}

impl Vocab {
    fn new(tokens: Vec<String>, types: &[i32]) -> Result<Vocab, TokenizerError> {
        if types.len() != tokens.len() {
            return Err(meta_err(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(meta_err("more than 2^32 tokens"));
        }
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut specials: Vec<(String, u32)> = Vec::new();
        let mut is_special = vec![false; tokens.len()];
        for (i, &ty) in types.iter().enumerate() {
            if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
                specials.push((tokens[i].clone(), i as u32));
                is_special[i] = true;
            }
        }
        specials.retain(|(s, _)| !s.is_empty());
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Vocab {
            tokens,
            ids,
            types: types.to_vec(),
            specials,
            is_special,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// The model that turns a stretch of text without special tokens into ids.
enum Model {
    Bpe(Box<bpe::Bpe>),
    Spm(spm::Spm),
}

/// A tokenizer: byte-level BPE or SentencePiece, from GGUF metadata.
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub add_bos: bool,
}

/// A token id under `key`: `None` when absent, an error when it is not an
/// integer below the vocabulary size.
fn opt_id(md: &Metadata, key: &str, n_vocab: usize) -> Result<Option<u32>, TokenizerError> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    match v.as_u64() {
        Some(id) if id < n_vocab as u64 => Ok(Some(id as u32)),
        _ => Err(meta_err(format!(
            "{key} = {v} is not a token id below {n_vocab}"
        ))),
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.model`
    /// `gpt2` or `llama`). For `gpt2` the pre-tokenizer comes from
    /// `tokenizer.ggml.pre` (absent: Llama 3's, as the BitNet models need).
    pub fn from_metadata(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let kind = match md.get_str("tokenizer.ggml.model") {
            Some(k @ ("gpt2" | "llama")) => k,
            Some(other) => return Err(TokenizerError::UnsupportedModel(other.into())),
            None => return Err(meta_err("missing tokenizer.ggml.model")),
        };
        let Some(Array::String(list)) = md.get("tokenizer.ggml.tokens").and_then(Value::as_array)
        else {
            return Err(meta_err(
                "tokenizer.ggml.tokens must be an array of strings",
            ));
        };
        let tokens: Vec<String> = list.iter().map(str::to_owned).collect();
        let types: Vec<i32> = match md
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(Array::I32(t)) if t.len() == tokens.len() => t.clone(),
            Some(_) => {
                return Err(meta_err(
                    "tokenizer.ggml.token_type must be INT32, one per token",
                ))
            }
            None => vec![TOKEN_NORMAL; tokens.len()],
        };
        let vocab = Vocab::new(tokens, &types)?;
        let n = vocab.len();
        let bos = opt_id(md, "tokenizer.ggml.bos_token_id", n)?;
        let eos = opt_id(md, "tokenizer.ggml.eos_token_id", n)?;
        let eot = opt_id(md, "tokenizer.ggml.eot_token_id", n)?;
        let (model, bos, eos) = if kind == "gpt2" {
            (
                Model::Bpe(Box::new(bpe::Bpe::from_metadata(md, &vocab)?)),
                bos,
                eos,
            )
        } else {
            let mut spm = spm::Spm::from_metadata(md, &vocab)?;
            if let Some(unk) = opt_id(md, "tokenizer.ggml.unknown_token_id", n)? {
                spm.unk = Some(unk);
            }
            spm.check_fallback()?;
            // llama.cpp's defaults for SentencePiece vocabularies (<s> = 1,
            // </s> = 2), used only when the keys are absent.
            let default = |id: u32| ((id as usize) < n).then_some(id);
            (
                Model::Spm(spm),
                bos.or_else(|| default(1)),
                eos.or_else(|| default(2)),
            )
        };
        let mut t = Tokenizer::with_model(vocab, model);
        t.bos = bos;
        t.eos = eos;
        t.eot = eot.or_else(|| t.id("<|eot_id|>"));
        t.add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(t.bos.is_some());
        Ok(t)
    }

    /// Builds a byte-level BPE tokenizer from its parts (`merges` as
    /// "left right"; `types` one per token).
    pub fn new(
        tokens: Vec<String>,
        types: &[i32],
        merges: &[String],
        pattern: &str,
        ignore_merges: bool,
    ) -> Result<Tokenizer, TokenizerError> {
        let vocab = Vocab::new(tokens, types)?;
        let bpe = bpe::Bpe::new(&vocab, merges, pattern, ignore_merges)?;
        Ok(Tokenizer::with_model(vocab, Model::Bpe(Box::new(bpe))))
    }

    /// Builds a SentencePiece BPE tokenizer from its parts (`scores` and
    /// `types` one per token). The unknown token is the first of type 2.
    pub fn new_spm(
        tokens: Vec<String>,
        scores: &[f32],
        types: &[i32],
        add_space_prefix: bool,
    ) -> Result<Tokenizer, TokenizerError> {
        let vocab = Vocab::new(tokens, types)?;
        let spm = spm::Spm::new(&vocab, scores, add_space_prefix)?;
        spm.check_fallback()?;
        Ok(Tokenizer::with_model(vocab, Model::Spm(spm)))
    }

    fn with_model(vocab: Vocab, model: Model) -> Tokenizer {
        Tokenizer {
            vocab,
            model,
            bos: None,
            eos: None,
            eot: None,
            add_bos: false,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.vocab.ids.get(token).copied()
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(String::as_str)
    }

    /// True for end-of-generation tokens: EOS and `<|eot_id|>`.
    pub fn is_stop(&self, id: u32) -> bool {
        Some(id) == self.eos || Some(id) == self.eot
    }

    /// Encodes `text`; special-token texts in it become their ids. Adds BOS
    /// when the model asks for it and `add_special` is set.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        // Where each special token next occurs at or after `pos` (`None`:
        // nowhere). A position is looked up again only once `pos` has passed
        // it, so many special tokens in a long text cost linear time.
        let specials = &self.vocab.specials;
        let mut next_at: Vec<Option<usize>> = specials
            .iter()
            .map(|(s, _)| text.find(s.as_str()))
            .collect();
        let mut pos = 0;
        // Whether the next stretch of text starts the input or follows a
        // special token (SentencePiece then adds its space prefix).
        let mut fresh = true;
        while pos < text.len() {
            for (at, (s, _)) in next_at.iter_mut().zip(specials) {
                if at.is_some_and(|a| a < pos) {
                    *at = text[pos..].find(s.as_str()).map(|a| pos + a);
                }
            }
            // The earliest special token in what is left (longest at a tie).
            let next = next_at
                .iter()
                .zip(specials)
                .filter_map(|(at, (s, id))| at.map(|at| (at, s.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match next {
                Some((at, len, id)) => {
                    self.encode_ordinary(&text[pos..at], fresh, &mut out);
                    out.push(id);
                    fresh = true;
                    pos = at + len;
                }
                None => {
                    self.encode_ordinary(&text[pos..], fresh, &mut out);
                    pos = text.len();
                }
            }
        }
        out
    }

    fn encode_ordinary(&self, text: &str, fresh: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        match &self.model {
            Model::Bpe(m) => m.encode(&self.vocab, text, out),
            Model::Spm(m) => m.encode(&self.vocab, text, fresh, out),
        }
    }

    /// The bytes a token stands for (see the module notes for special
    /// tokens); nothing for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(tok) = self.vocab.tokens.get(id as usize) else {
            return Vec::new();
        };
        match &self.model {
            Model::Bpe(m) => {
                if self.vocab.is_special[id as usize] {
                    tok.as_bytes().to_vec()
                } else {
                    m.token_bytes(tok)
                }
            }
            Model::Spm(m) => m.token_bytes(&self.vocab, id),
        }
    }

    /// Decodes ids to text (invalid UTF-8 becomes U+FFFD). SentencePiece:
    /// the space that encoding puts in front of the text (and after each
    /// special token) is removed again, as sentencepiece's decoder does.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = match &self.model {
            Model::Bpe(_) => ids.iter().flat_map(|&id| self.token_bytes(id)).collect(),
            Model::Spm(m) => m.decode(&self.vocab, ids),
        };
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token ids into text pieces that are always valid UTF-8,
/// holding back the bytes of a character split across tokens. Unlike
/// [`Tokenizer::decode`] it keeps every space (a SentencePiece continuation
/// such as `▁cat` after a prompt must come out as " cat").
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The text that `id` completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend(tok.token_bytes(id));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Valid prefix is UTF-8 by construction.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: wait for more.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never be valid: replace them.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + n);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fixture::FixtureConfig;
    use crate::gguf::GgufFile;
    use crate::GgmlType;

    /// The tokenizer of the tiny fixture model (a synthetic byte-level BPE).
    pub(crate) fn fixture_tokenizer() -> Tokenizer {
        let f =
            GgufFile::from_vec(FixtureConfig::tiny(GgmlType::I2_S).to_bytes().unwrap()).unwrap();
        Tokenizer::from_metadata(f.metadata()).unwrap()
    }

    #[test]
    fn stream_decoder_holds_split_characters() {
        let t = fixture_tokenizer();
        let ids = t.encode("é🙂", false);
        let mut d = StreamDecoder::new();
        let text: String = ids.iter().map(|&id| d.push(&t, id)).collect::<String>() + &d.finish();
        assert_eq!(text, "é🙂");
        // Bytes never valid give U+FFFD, not a stall.
        let mut d = StreamDecoder::new();
        let ff = t.id(&bpe::byte_to_char(0xFF).to_string()).unwrap();
        assert_eq!(d.push(&t, ff), "\u{FFFD}");
    }

    #[test]
    fn refuses_unknown_models_and_bad_ids() {
        use crate::gguf::{GgufWriter, StringArray};
        let build = |model: &str, bos: Value| {
            let mut w = GgufWriter::new();
            w.add_metadata("tokenizer.ggml.model", Value::String(model.into()))
                .unwrap();
            let toks: StringArray = ["a", "b"].into_iter().collect();
            w.add_metadata("tokenizer.ggml.tokens", Value::Array(Array::String(toks)))
                .unwrap();
            w.add_metadata(
                "tokenizer.ggml.scores",
                Value::Array(Array::F32(vec![0.0; 2])),
            )
            .unwrap();
            w.add_metadata("tokenizer.ggml.bos_token_id", bos).unwrap();
            let f = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
            Tokenizer::from_metadata(f.metadata()).err()
        };
        assert_eq!(
            build("t5", Value::U32(0)),
            Some(TokenizerError::UnsupportedModel("t5".into()))
        );
        assert!(matches!(
            build("llama", Value::U32(2)),
            Some(TokenizerError::Metadata(m)) if m.contains("bos_token_id")
        ));
        assert!(matches!(
            build("llama", Value::I32(-1)),
            Some(TokenizerError::Metadata(_))
        ));
    }
}

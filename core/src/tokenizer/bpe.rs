//! Byte-level BPE from GGUF metadata.

use std::collections::HashMap;

use fancy_regex::Regex;

use crate::gguf::{Array, Metadata, Value};

/// Llama 3's pre-tokenizer split (tiktoken's cl100k pattern with 1-3 digit
/// numbers). `\s+(?!\S)` needs look-ahead, hence fancy-regex.
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's original split.
pub const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenizerError {
    #[error("tokenizer.ggml.model {0:?} is not supported yet (supported: gpt2)")]
    UnsupportedModel(String),
    #[error("tokenizer.ggml.pre {0:?} is not a pre-tokenizer we know (known: llama-bpe, llama3, gpt2, default)")]
    UnknownPreTokenizer(String),
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
    #[error("token {token:?} holds a character that is not a GPT-2 byte")]
    NotByteLevel { token: String },
}

/// A byte-level BPE tokenizer.
pub struct Tokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// (left, right) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Control and user-defined tokens, longest first, matched before BPE.
    specials: Vec<(String, u32)>,
    is_special: Vec<bool>,
    split: Regex,
    /// Llama 3 takes a piece that is a whole vocabulary entry as is.
    ignore_merges: bool,
    byte_ids: [u32; 256],
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub add_bos: bool,
}

/// GPT-2's byte → character map (printable bytes map to themselves).
pub fn byte_to_char(b: u8) -> char {
    crate::fixture::byte_to_char(b)
}

fn char_to_byte_table() -> HashMap<char, u8> {
    (0..=255u8).map(|b| (byte_to_char(b), b)).collect()
}

fn meta_err(m: impl Into<String>) -> TokenizerError {
    TokenizerError::Metadata(m.into())
}

fn opt_id(md: &Metadata, key: &str) -> Option<u32> {
    md.get_u64(key).and_then(|v| u32::try_from(v).ok())
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes. `architecture` picks the
    /// pre-tokenizer when `tokenizer.ggml.pre` is absent (BitNet → Llama 3).
    pub fn from_metadata(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
        match md.get_str("tokenizer.ggml.model") {
            Some("gpt2") => {}
            Some(other) => return Err(TokenizerError::UnsupportedModel(other.into())),
            None => return Err(meta_err("missing tokenizer.ggml.model")),
        }
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
            None => vec![1; tokens.len()],
        };
        let merges: Vec<String> = match md.get("tokenizer.ggml.merges").and_then(Value::as_array) {
            Some(Array::String(m)) => m.iter().map(str::to_owned).collect(),
            Some(_) => {
                return Err(meta_err(
                    "tokenizer.ggml.merges must be an array of strings",
                ))
            }
            None => Vec::new(),
        };
        let pre = md.get_str("tokenizer.ggml.pre");
        let (pattern, ignore_merges) = match pre {
            None | Some("llama-bpe" | "llama3" | "llama-v3" | "default") => (LLAMA3_SPLIT, true),
            Some("gpt2" | "gpt-2") => (GPT2_SPLIT, false),
            Some(other) => return Err(TokenizerError::UnknownPreTokenizer(other.into())),
        };
        let mut t = Tokenizer::new(tokens, &types, &merges, pattern, ignore_merges)?;
        t.bos = opt_id(md, "tokenizer.ggml.bos_token_id");
        t.eos = opt_id(md, "tokenizer.ggml.eos_token_id");
        t.eot = opt_id(md, "tokenizer.ggml.eot_token_id").or_else(|| t.id("<|eot_id|>"));
        t.add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(t.bos.is_some());
        Ok(t)
    }

    /// Builds a tokenizer from its parts (`merges` as "left right").
    pub fn new(
        tokens: Vec<String>,
        types: &[i32],
        merges: &[String],
        pattern: &str,
        ignore_merges: bool,
    ) -> Result<Tokenizer, TokenizerError> {
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| meta_err(format!("merge {rank} ({m:?}) has no space")))?;
            let (Some(&ia), Some(&ib), Some(&ic)) =
                (ids.get(a), ids.get(b), ids.get(&format!("{a}{b}")))
            else {
                return Err(meta_err(format!(
                    "merge {rank} ({m:?}) names a token that is not in the vocabulary"
                )));
            };
            merge_map.entry((ia, ib)).or_insert((rank as u32, ic));
        }
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            byte_ids[b as usize] = *ids
                .get(&byte_to_char(b).to_string())
                .ok_or_else(|| meta_err(format!("byte token for 0x{b:02x} is missing")))?;
        }
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
        let split =
            Regex::new(pattern).map_err(|e| meta_err(format!("pre-tokenizer regex: {e}")))?;
        Ok(Tokenizer {
            tokens,
            ids,
            merges: merge_map,
            specials,
            is_special,
            split,
            ignore_merges,
            byte_ids,
            bos: None,
            eos: None,
            eot: None,
            add_bos: false,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
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
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token in what is left (longest at a tie).
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match next {
                Some((at, len, id)) => {
                    self.encode_ordinary(&rest[..at], &mut out);
                    out.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_ordinary(rest, &mut out);
                    rest = "";
                }
            }
        }
        out
    }

    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) {
        let mut start = 0;
        // fancy-regex only fails on pathological backtracking; the split
        // patterns above have none, but never drop text if it happens.
        for m in self.split.find_iter(text) {
            let Ok(m) = m else { break };
            self.bpe(&text[m.start()..m.end()], out);
            start = m.end();
        }
        if start < text.len() {
            self.bpe(&text[start..], out);
        }
    }

    fn bpe(&self, piece: &str, out: &mut Vec<u32>) {
        if piece.is_empty() {
            return;
        }
        if self.ignore_merges {
            let mapped: String = piece.bytes().map(byte_to_char).collect();
            if let Some(&id) = self.ids.get(&mapped) {
                out.push(id);
                return;
            }
        }
        let mut syms: Vec<u32> = piece.bytes().map(|b| self.byte_ids[b as usize]).collect();
        loop {
            let best = syms
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(rank, id)| (rank, i, id))
                })
                .min();
            let Some((_, i, id)) = best else { break };
            syms[i] = id;
            syms.remove(i + 1);
        }
        out.extend(syms);
    }

    /// The bytes a token stands for (special tokens: their text).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(tok) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if self.is_special[id as usize] {
            return tok.as_bytes().to_vec();
        }
        thread_local! {
            static MAP: HashMap<char, u8> = char_to_byte_table();
        }
        MAP.with(|map| {
            let mut bytes = Vec::with_capacity(tok.len());
            for c in tok.chars() {
                match map.get(&c) {
                    Some(&b) => bytes.push(b),
                    // Not a byte-level character: keep its UTF-8.
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            bytes
        })
    }

    /// Decodes ids to text (invalid UTF-8 becomes U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token ids into text pieces that are always valid UTF-8,
/// holding back the bytes of a character split across tokens.
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
mod tests {
    use super::*;
    use crate::fixture::FixtureConfig;
    use crate::gguf::GgufFile;
    use crate::GgmlType;

    fn fixture_tokenizer() -> Tokenizer {
        let f =
            GgufFile::from_vec(FixtureConfig::tiny(GgmlType::I2_S).to_bytes().unwrap()).unwrap();
        Tokenizer::from_metadata(f.metadata()).unwrap()
    }

    #[test]
    fn round_trips_any_text() {
        let t = fixture_tokenizer();
        for s in [
            "",
            "Hello, world!",
            "  spaces\n\n\ttabs",
            "日本語 🙂 émoji",
            "I'm 12345 they'll",
        ] {
            let ids = t.encode(s, false);
            assert_eq!(t.decode(&ids), s);
        }
    }

    #[test]
    fn bos_and_specials() {
        let t = fixture_tokenizer();
        let ids = t.encode("a<|eot_id|>b", true);
        assert_eq!(ids[0], t.bos.unwrap());
        assert!(ids.contains(&t.eot.unwrap()));
        assert!(t.is_stop(t.eot.unwrap()) && t.is_stop(t.eos.unwrap()));
        assert_eq!(t.decode(&ids[1..]), "a<|eot_id|>b");
    }

    #[test]
    fn llama3_split() {
        let re = Regex::new(LLAMA3_SPLIT).unwrap();
        let pieces: Vec<&str> = re
            .find_iter("Hello world's 1234  x\n\n  y!!")
            .map(|m| m.unwrap().as_str())
            .collect();
        assert_eq!(
            pieces,
            ["Hello", " world", "'s", " ", "123", "4", " ", " x", "\n\n", " ", " y", "!!"]
        );
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
        assert_eq!(d.push(&t, t.byte_ids[0xFF]), "\u{FFFD}");
    }
}

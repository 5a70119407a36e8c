//! Byte-level BPE from GGUF metadata.

use std::collections::HashMap;

use fancy_regex::Regex;

use super::{meta_err, TokenizerError, Vocab};
use crate::gguf::{Array, Metadata, Value};

/// Llama 3's pre-tokenizer split (tiktoken's cl100k pattern with 1-3 digit
/// numbers). `\s+(?!\S)` needs look-ahead, hence fancy-regex.
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's original split.
pub const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The byte-level BPE model: merges by rank over GPT-2 byte characters.
pub(crate) struct Bpe {
    /// (left, right) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    split: Regex,
    /// Llama 3 takes a piece that is a whole vocabulary entry as is.
    ignore_merges: bool,
    byte_ids: [u32; 256],
    /// GPT-2 byte character → byte.
    char_bytes: HashMap<char, u8>,
}

/// GPT-2's byte → character map (printable bytes map to themselves).
pub fn byte_to_char(b: u8) -> char {
    crate::fixture::byte_to_char(b)
}

impl Bpe {
    /// The merges and pre-tokenizer of a `gpt2` vocabulary.
    pub(crate) fn from_metadata(md: &Metadata, vocab: &Vocab) -> Result<Bpe, TokenizerError> {
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
        Bpe::new(vocab, &merges, pattern, ignore_merges)
    }

    /// `merges` as "left right".
    pub(crate) fn new(
        vocab: &Vocab,
        merges: &[String],
        pattern: &str,
        ignore_merges: bool,
    ) -> Result<Bpe, TokenizerError> {
        let ids = &vocab.ids;
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
        let split =
            Regex::new(pattern).map_err(|e| meta_err(format!("pre-tokenizer regex: {e}")))?;
        Ok(Bpe {
            merges: merge_map,
            split,
            ignore_merges,
            byte_ids,
            char_bytes: (0..=255u8).map(|b| (byte_to_char(b), b)).collect(),
        })
    }

    /// Encodes a stretch of text that holds no special token.
    pub(crate) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut start = 0;
        // fancy-regex only fails on pathological backtracking; the split
        // patterns above have none, but never drop text if it happens.
        for m in self.split.find_iter(text) {
            let Ok(m) = m else { break };
            self.bpe(vocab, &text[m.start()..m.end()], out);
            start = m.end();
        }
        if start < text.len() {
            self.bpe(vocab, &text[start..], out);
        }
    }

    fn bpe(&self, vocab: &Vocab, piece: &str, out: &mut Vec<u32>) {
        if piece.is_empty() {
            return;
        }
        if self.ignore_merges {
            let mapped: String = piece.bytes().map(byte_to_char).collect();
            if let Some(&id) = vocab.ids.get(&mapped) {
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

    /// The bytes of a regular (not special) token.
    pub(crate) fn token_bytes(&self, tok: &str) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(tok.len());
        for c in tok.chars() {
            match self.char_bytes.get(&c) {
                Some(&b) => bytes.push(b),
                // Not a byte-level character: keep its UTF-8.
                None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tests::fixture_tokenizer;

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
}

//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`), as LLaMA-1/2 and
//! the 1bitLLM BitNet models use it.
//!
//! A stretch of text (no special tokens in it) is encoded so:
//! 1. with `add_space_prefix`, a space is put in front when the stretch starts
//!    the input or follows a special token; every ' ' becomes `▁` (U+2581);
//! 2. each character is a symbol; repeatedly, the adjacent pair whose
//!    concatenation is a normal or user-defined piece with the highest score
//!    is merged (the leftmost pair at a tie). A priority queue of candidate
//!    pairs over a linked list of symbols makes this O(n log n); a queued
//!    pair whose symbols have changed since is skipped when it comes up;
//! 3. each final symbol that is a vocabulary entry gives its id; a character
//!    that is not gives its UTF-8 bytes as `<0xXX>` byte tokens when the
//!    vocabulary has them (byte fallback), else the unknown token.
//!
//! Unused pieces (type 5) are never merged into (sentencepiece merges and then
//! splits them again; vocabularies with them are not supported exactly).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::{
    meta_err, TokenizerError, Vocab, TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN,
    TOKEN_UNUSED, TOKEN_USER_DEFINED,
};
use crate::gguf::{Array, Metadata, Value};

/// SentencePiece's meta symbol for a space.
const SPACE: char = '\u{2581}';
const NONE: usize = usize::MAX;

/// The SentencePiece BPE model.
pub(crate) struct Spm {
    /// Pieces a pair may merge into (normal and user-defined): text → (score, id).
    pieces: HashMap<String, (f32, u32)>,
    /// The longest of those pieces, in bytes (longer pairs are not looked up).
    max_piece_len: usize,
    /// `<0xXX>` token for each byte, when the vocabulary has it.
    byte_ids: Vec<Option<u32>>,
    /// The byte each byte token (type 6) stands for.
    byte_values: HashMap<u32, u8>,
    pub(crate) unk: Option<u32>,
    add_space_prefix: bool,
}

/// One symbol of the text being merged: a byte range of the normalized text
/// and its neighbours (`NONE` at the ends). A merged-away symbol has `len` 0.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

/// A candidate merge, highest first: (score, left symbol — the leftmost wins
/// a tie —, right symbol, merged length in bytes). The score is mapped to a
/// `u32` with the same order (scores are finite).
type Candidate = (u32, Reverse<usize>, usize, usize);

/// An order-preserving map of finite `f32` to `u32` (-0.0 and 0.0 equal).
fn score_key(score: f32) -> u32 {
    let bits = (score + 0.0).to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    }
}

/// The byte of a `<0xXX>` token text.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Spm {
    /// The scores and options of a `llama` vocabulary.
    pub(crate) fn from_metadata(md: &Metadata, vocab: &Vocab) -> Result<Spm, TokenizerError> {
        let scores = match md.get("tokenizer.ggml.scores") {
            None => {
                return Err(meta_err(
                    "tokenizer.ggml.scores is required for a llama (SentencePiece) vocabulary",
                ))
            }
            Some(Value::Array(Array::F32(s))) => s,
            Some(v) => {
                return Err(meta_err(format!(
                    "tokenizer.ggml.scores must be a FLOAT32 array, found {}",
                    match v {
                        Value::Array(a) => format!("an array of {}", a.element_type().name()),
                        other => other.value_type().name().to_string(),
                    }
                )))
            }
        };
        let add_space_prefix = match md.get("tokenizer.ggml.add_space_prefix") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(meta_err(format!(
                    "tokenizer.ggml.add_space_prefix must be a BOOL, found {}",
                    v.value_type().name()
                )))
            }
        };
        Spm::new(vocab, scores, add_space_prefix)
    }

    /// The unknown token is the first of type 2 (set `unk` to override).
    pub(crate) fn new(
        vocab: &Vocab,
        scores: &[f32],
        add_space_prefix: bool,
    ) -> Result<Spm, TokenizerError> {
        let n = vocab.len();
        if n == 0 {
            return Err(meta_err("tokenizer.ggml.tokens is empty"));
        }
        if scores.len() != n {
            return Err(meta_err(format!(
                "{} tokenizer.ggml.scores for {n} tokens",
                scores.len()
            )));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(meta_err(format!(
                "token {i} has score {}, expected a finite number",
                scores[i]
            )));
        }
        let mut pieces = HashMap::new();
        let mut max_piece_len = 0;
        let mut byte_ids = vec![None; 256];
        let mut byte_values = HashMap::new();
        let mut unk = None;
        for (i, (text, &ty)) in vocab.tokens.iter().zip(&vocab.types).enumerate() {
            let id = i as u32;
            match ty {
                TOKEN_NORMAL | TOKEN_USER_DEFINED => {
                    if !text.is_empty() {
                        pieces.insert(text.clone(), (scores[i], id));
                        max_piece_len = max_piece_len.max(text.len());
                    }
                }
                TOKEN_BYTE => {
                    let b = parse_byte_token(text).ok_or_else(|| {
                        meta_err(format!("byte token {i} is {text:?}, expected <0xXX>"))
                    })?;
                    byte_values.insert(id, b);
                    byte_ids[b as usize].get_or_insert(id);
                }
                TOKEN_UNKNOWN => {
                    unk.get_or_insert(id);
                }
                TOKEN_CONTROL | TOKEN_UNUSED => {}
                other => {
                    return Err(meta_err(format!(
                        "token {i} has type {other}, expected 1..=6"
                    )))
                }
            }
        }
        Ok(Spm {
            pieces,
            max_piece_len,
            byte_ids,
            byte_values,
            unk,
            add_space_prefix,
        })
    }

    /// Every character must be encodable: a vocabulary needs an unknown
    /// token or all 256 byte tokens.
    pub(crate) fn check_fallback(&self) -> Result<(), TokenizerError> {
        if self.unk.is_none() && self.byte_ids.iter().any(Option::is_none) {
            return Err(meta_err(
                "a llama vocabulary needs an unknown token or all 256 <0xXX> byte tokens",
            ));
        }
        Ok(())
    }

    /// Encodes a stretch of text that holds no special token; `fresh` when
    /// it starts the input or follows a special token.
    pub(crate) fn encode(&self, vocab: &Vocab, text: &str, fresh: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut norm = String::with_capacity(text.len() + text.len() / 4 + 3);
        if self.add_space_prefix && fresh {
            norm.push(SPACE);
        }
        norm.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));

        let mut syms: Vec<Symbol> = Vec::with_capacity(norm.len());
        for (start, c) in norm.char_indices() {
            let i = syms.len();
            syms.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: if i == 0 { NONE } else { i - 1 },
                next: i + 1,
            });
        }
        if let Some(last) = syms.last_mut() {
            last.next = NONE;
        }

        let mut queue: BinaryHeap<Candidate> = BinaryHeap::with_capacity(syms.len());
        for left in 1..syms.len() {
            self.push_candidate(&norm, &syms, left - 1, &mut queue);
        }
        while let Some((_, Reverse(left), right, len)) = queue.pop() {
            let l = syms[left];
            // Stale: the left symbol was merged away, or either side grew.
            // (Symbols only grow to the right, so a live left symbol whose
            // neighbour is still `right` and whose total length is unchanged
            // has exactly the two pieces this candidate was made of.)
            if l.len == 0 || l.next != right || l.len + syms[right].len != len {
                continue;
            }
            let r = syms[right];
            syms[left].len = len;
            syms[left].next = r.next;
            syms[right].len = 0;
            if r.next != NONE {
                syms[r.next].prev = left;
            }
            if l.prev != NONE {
                self.push_candidate(&norm, &syms, l.prev, &mut queue);
            }
            self.push_candidate(&norm, &syms, left, &mut queue);
        }

        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            let s = syms[i];
            let piece = &norm[s.start..s.start + s.len];
            match self
                .pieces
                .get(piece)
                .map(|&(_, id)| id)
                .or_else(|| vocab.ids.get(piece).copied())
            {
                Some(id) => out.push(id),
                None => self.fallback(piece, out),
            }
            i = s.next;
        }
    }

    /// Queues the merge of `left` with its right neighbour when the two make
    /// a piece.
    fn push_candidate(
        &self,
        norm: &str,
        syms: &[Symbol],
        left: usize,
        queue: &mut BinaryHeap<Candidate>,
    ) {
        let l = syms[left];
        if l.next == NONE {
            return;
        }
        let len = l.len + syms[l.next].len;
        if len > self.max_piece_len {
            return;
        }
        if let Some(&(score, _)) = self.pieces.get(&norm[l.start..l.start + len]) {
            queue.push((score_key(score), Reverse(left), l.next, len));
        }
    }

    /// Characters that are not pieces: their UTF-8 bytes as byte tokens when
    /// the vocabulary has them all, else the unknown token.
    fn fallback(&self, piece: &str, out: &mut Vec<u32>) {
        for c in piece.chars() {
            let mut buf = [0; 4];
            let bytes = c.encode_utf8(&mut buf).as_bytes();
            if bytes.iter().all(|&b| self.byte_ids[b as usize].is_some()) {
                out.extend(bytes.iter().filter_map(|&b| self.byte_ids[b as usize]));
            } else {
                // `check_fallback` made sure there is an unknown token here.
                out.extend(self.unk);
            }
        }
    }

    /// The bytes token `id` stands for (`id` is in the vocabulary).
    pub(crate) fn token_bytes(&self, vocab: &Vocab, id: u32) -> Vec<u8> {
        let text = &vocab.tokens[id as usize];
        match vocab.types[id as usize] {
            TOKEN_BYTE => self
                .byte_values
                .get(&id)
                .map(|&b| vec![b])
                .unwrap_or_default(),
            TOKEN_CONTROL | TOKEN_UNKNOWN => text.as_bytes().to_vec(),
            _ => text.replace(SPACE, " ").into_bytes(),
        }
    }

    /// Decodes ids to bytes, removing the space that encoding puts in front
    /// of the input and after each special token.
    pub(crate) fn decode(&self, vocab: &Vocab, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        // Whether the next piece may start with the added space.
        let mut fresh = self.add_space_prefix;
        for &id in ids {
            let Some(&ty) = vocab.types.get(id as usize) else {
                continue;
            };
            let bytes = self.token_bytes(vocab, id);
            if vocab.is_special[id as usize] {
                out.extend_from_slice(&bytes);
                fresh = self.add_space_prefix;
                continue;
            }
            let piece = !matches!(ty, TOKEN_BYTE | TOKEN_CONTROL | TOKEN_UNKNOWN);
            if fresh && piece && bytes.first() == Some(&b' ') {
                out.extend_from_slice(&bytes[1..]);
                fresh = false;
            } else {
                out.extend_from_slice(&bytes);
                fresh &= bytes.is_empty();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::{Array, GgufFile, GgufWriter, StringArray, Value};
    use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

    /// A small LLaMA-like vocabulary: <unk> <s> </s>, then `bytes` byte
    /// tokens, then pieces with scores (higher merges first).
    fn vocab(bytes: bool) -> (Vec<String>, Vec<f32>, Vec<i32>) {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        let mut types = vec![2, 3, 3];
        if bytes {
            for b in 0..=255u8 {
                tokens.push(format!("<0x{b:02X}>"));
                types.push(6);
            }
        }
        let mut scores = vec![0.0; tokens.len()];
        let pieces = [
            ("▁t", -1.0),
            ("he", -2.0),
            ("▁the", -3.0),
            ("▁c", -4.0),
            ("at", -5.0),
            ("▁cat", -6.0),
            ("▁▁", -7.0),
            ("▁", -10.0),
            ("t", -11.0),
            ("h", -12.0),
            ("e", -13.0),
            ("c", -14.0),
            ("a", -15.0),
            ("\n", -16.0),
        ];
        for (p, s) in pieces {
            tokens.push(p.into());
            scores.push(s);
            types.push(1);
        }
        (tokens, scores, types)
    }

    fn tokenizer(bytes: bool) -> Tokenizer {
        let (tokens, scores, types) = vocab(bytes);
        let mut t = Tokenizer::new_spm(tokens, &scores, &types, true).unwrap();
        t.bos = Some(1);
        t.eos = Some(2);
        t.add_bos = true;
        t
    }

    fn ids(t: &Tokenizer, pieces: &[&str]) -> Vec<u32> {
        pieces.iter().map(|p| t.id(p).unwrap()).collect()
    }

    #[test]
    fn merges_by_score() {
        let t = tokenizer(true);
        assert_eq!(t.encode("the cat", false), ids(&t, &["▁the", "▁cat"]));
        // Two spaces: "▁▁" (-7) loses to "▁c" (-4), then "▁" + "▁cat".
        assert_eq!(t.encode("the  cat", false), ids(&t, &["▁the", "▁", "▁cat"]));
        assert_eq!(t.encode("cat", true), ids(&t, &["<s>", "▁cat"]));
        assert_eq!(t.decode(&t.encode("the  cat", false)), "the  cat");
        // Special tokens in the text; a space prefix after each.
        assert_eq!(
            t.encode("cat</s>the", false),
            ids(&t, &["▁cat", "</s>", "▁the"])
        );
        assert_eq!(t.decode(&t.encode("cat</s>the", false)), "cat</s>the");
    }

    #[test]
    fn byte_fallback() {
        let t = tokenizer(true);
        // 'é' is not a piece: C3 A9; '\n' is.
        let got = t.encode("é\n", false);
        assert_eq!(got, ids(&t, &["▁", "<0xC3>", "<0xA9>", "\n"]));
        assert_eq!(t.decode(&got), "é\n");
        assert_eq!(t.token_bytes(t.id("<0xC3>").unwrap()), [0xC3]);
    }

    #[test]
    fn unknown_without_byte_tokens() {
        let t = tokenizer(false);
        assert_eq!(t.encode("cé", false), ids(&t, &["▁c", "<unk>"]));
        assert_eq!(t.decode(&ids(&t, &["▁c", "<unk>"])), "c<unk>");
    }

    #[test]
    fn empty_text() {
        let t = tokenizer(true);
        assert!(t.encode("", false).is_empty());
        assert_eq!(t.encode("", true), [1]);
        assert_eq!(t.decode(&[]), "");
        // A special token alone gets no space piece after it.
        assert_eq!(t.encode("</s>", false), [2]);
    }

    #[test]
    fn stream_keeps_the_leading_space() {
        let t = tokenizer(true);
        let ids = t.encode(" cat é", false);
        let mut d = StreamDecoder::new();
        let text: String = ids.iter().map(|&id| d.push(&t, id)).collect::<String>() + &d.finish();
        assert_eq!(text, "  cat é");
        assert_eq!(t.decode(&ids), " cat é");
    }

    #[test]
    fn long_text_is_not_quadratic() {
        // 100 KB: merging pops each queued pair once (O(n log n)); a
        // quadratic scan would take minutes in a debug build.
        let t = tokenizer(true);
        let text = "the cat  sat\nthe hat é ".repeat(100_000 / 24);
        let ids = t.encode(&text, false);
        assert_eq!(t.decode(&ids), text);
        let spaces = " ".repeat(100_000);
        let ids = t.encode(&spaces, false);
        assert_eq!(ids.len(), 50_001);
        assert_eq!(t.decode(&ids), spaces);
        // Many special tokens: each is looked for once per occurrence.
        let text = "the cat</s>".repeat(10_000);
        let ids = t.encode(&text, false);
        assert_eq!(ids.len(), 30_000);
        assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 10_000);
        assert_eq!(t.decode(&ids), text);
    }

    fn from_md(
        scores: Option<Value>,
        extra: Option<(&str, Value)>,
    ) -> Result<Tokenizer, TokenizerError> {
        let (tokens, _, types) = vocab(true);
        let mut w = GgufWriter::new();
        w.add_metadata("tokenizer.ggml.model", Value::String("llama".into()))
            .unwrap();
        let list: StringArray = tokens.iter().collect();
        w.add_metadata("tokenizer.ggml.tokens", Value::Array(Array::String(list)))
            .unwrap();
        w.add_metadata("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
            .unwrap();
        if let Some(s) = scores {
            w.add_metadata("tokenizer.ggml.scores", s).unwrap();
        }
        if let Some((k, v)) = extra {
            w.add_metadata(k, v).unwrap();
        }
        let f = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
        Tokenizer::from_metadata(f.metadata())
    }

    #[test]
    fn from_metadata_defaults() {
        let n = vocab(true).0.len();
        let t = from_md(Some(Value::Array(Array::F32(vocab(true).1))), None).unwrap();
        assert_eq!((t.bos, t.eos, t.add_bos), (Some(1), Some(2), true));
        assert_eq!(t.vocab_size(), n);
        assert!(t.is_stop(2));
        assert_eq!(t.encode("the", true), ids(&t, &["<s>", "▁the"]));
        let t = from_md(
            Some(Value::Array(Array::F32(vocab(true).1))),
            Some(("tokenizer.ggml.add_space_prefix", Value::Bool(false))),
        )
        .unwrap();
        assert_eq!(t.encode("the", false), ids(&t, &["t", "he"]));
        assert_eq!(t.decode(&ids(&t, &["▁the"])), " the");
    }

    #[test]
    fn malformed_metadata_is_an_error() {
        let n = vocab(true).0.len();
        let bad = |scores: Option<Value>, extra: Option<(&str, Value)>| match from_md(scores, extra)
        {
            Err(TokenizerError::Metadata(m)) => m,
            Err(e) => panic!("wrong error {e:?}"),
            Ok(_) => panic!("accepted"),
        };
        assert!(bad(None, None).contains("scores is required"));
        assert!(bad(Some(Value::Array(Array::F32(vec![0.0; n - 1]))), None).contains("scores for"));
        assert!(bad(Some(Value::Array(Array::I32(vec![0; n]))), None).contains("FLOAT32"));
        assert!(bad(Some(Value::F32(0.0)), None).contains("FLOAT32"));
        let mut nan = vec![0.0; n];
        nan[7] = f32::NAN;
        assert!(bad(Some(Value::Array(Array::F32(nan))), None).contains("finite"));
        let ok = || Some(Value::Array(Array::F32(vec![0.0; n])));
        assert!(bad(
            ok(),
            Some(("tokenizer.ggml.add_space_prefix", Value::U8(1)))
        )
        .contains("BOOL"));
        assert!(bad(
            ok(),
            Some(("tokenizer.ggml.unknown_token_id", Value::U32(n as u32)))
        )
        .contains("unknown_token_id"));
        // A byte token that is not <0xXX>, a type out of range.
        let (tokens, scores, mut types) = vocab(true);
        types[20] = 7;
        assert!(Tokenizer::new_spm(tokens.clone(), &scores, &types, true).is_err());
        let mut tokens2 = tokens.clone();
        tokens2[3] = "<0xZZ>".into();
        assert!(Tokenizer::new_spm(tokens2, &scores, &vocab(true).2, true).is_err());
        // Neither byte tokens nor an unknown token.
        let (tokens, scores, mut types) = vocab(false);
        types[0] = 3;
        assert!(Tokenizer::new_spm(tokens, &scores, &types, true).is_err());
    }
}

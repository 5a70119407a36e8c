//! The tokenizer stored in a GGUF file, in pure Rust (the same code runs on
//! wasm32).
//!
//! Today: byte-level BPE (`tokenizer.ggml.model = "gpt2"`) as GPT-2 and
//! Llama 3 define it: the text is split at special tokens, each remaining
//! stretch is split by the pre-tokenizer regex (Llama 3's by default, which is
//! what the BitNet architectures use when `tokenizer.ggml.pre` is absent), each
//! piece's bytes are mapped to GPT-2's byte characters and merged by rank.
//! SentencePiece (`llama`) vocabularies are refused with a clear error for now.

mod bpe;

pub use bpe::{StreamDecoder, Tokenizer, TokenizerError};

//! BitNet Rust core: the pieces every device shares.
//!
//! Today this crate holds the foundation: a validating GGUF reader
//! ([`gguf::GgufFile`]) and writer ([`gguf::GgufWriter`]), the tensor types
//! BitNet files use with scalar reference codecs ([`quant`]), and a generator
//! of BitNet-shaped GGUF fixtures ([`fixture`]), and the model configuration
//! with its checks ([`model::BitNetConfig`]). The forward pass, tokenizer and
//! backends are built on top of these by later work; nothing here pretends to
//! run a model yet.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod backend;
pub mod chat;
pub mod convert;
pub mod engine;
pub mod fixture;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod sampler;
pub mod tokenizer;

pub use engine::{Engine, EngineError, GenerationStats, StopReason};
pub use gguf::{GgmlType, GgufError, GgufFile};
pub use model::{BitNet, BitNetConfig, ModelError};
pub use sampler::{GenerationConfig, SamplingStrategy};

//! The BitNet model. Today: its configuration, read from GGUF metadata and
//! checked against the tensors ([`config`]). The forward pass lands here next.

pub mod config;

pub use config::{Activation, BitNetConfig, ModelError};

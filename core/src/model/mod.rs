//! The BitNet model: its configuration, read from GGUF metadata and checked
//! against the tensors ([`config`]), and the forward pass ([`bitnet`]).

pub mod bitnet;
pub mod config;

pub use bitnet::{BitNet, Session};
pub use config::{Activation, BitNetConfig, ModelError, RopeStyle};

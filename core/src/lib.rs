//! BitNet Rust core: the pieces every device shares.
//!
//! - [`BitNetModel`] ([`api`]): load a GGUF, generate (iterator, callback,
//!   async, batch), with [`ModelConfig`], [`InferenceConfig`],
//!   [`GenerationConfig`] and [`StreamingConfig`].
//! - [`Engine`] ([`engine`]): model + tokenizer + sampler, token streams,
//!   sessions whose KV cache is reused across chat turns.
//! - [`model`]: configuration from GGUF metadata and the forward pass,
//!   generic over a [`backend::Backend`] (the CPU reference in
//!   [`backend::cpu`]).
//! - [`gguf`]: validating reader and writer; [`quant`]: the tensor formats;
//!   [`tokenizer`], [`chat`], [`sampler`]; [`convert`]: Hugging Face →
//!   GGUF; [`fixture`]: BitNet-shaped test models.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
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

pub use api::{
    BitNetModel, Device, Generation, InferenceConfig, LoadingStrategy, ModelConfig, ModelStream,
};
pub use backend::cpu::OutputTable;
#[cfg(feature = "wgpu")]
pub use backend::wgpu::WgpuBackend;
pub use backend::DeviceChoice;
pub use backend::KvType;
pub use engine::{
    CancelToken, Chunk, Engine, EngineError, GenerationStats, StopReason, StreamingConfig,
    TokenStream,
};
pub use gguf::{GgmlType, GgufError, GgufFile};
pub use model::{BitNet, BitNetConfig, ModelError};
pub use sampler::{GenerationConfig, SamplingStrategy};
/// The wgpu this crate is built with, so a host application uses the same
/// major version (two majors' types do not mix).
#[cfg(feature = "wgpu")]
pub use wgpu;

/// The Rust examples of docs/performance-tuning.md, compiled as doctests so
/// that the guide stays true.
#[cfg(doctest)]
#[doc = include_str!("../../docs/performance-tuning.md")]
pub struct PerformanceTuningGuide;

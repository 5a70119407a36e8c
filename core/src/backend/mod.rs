//! The compute backends and the small trait the forward pass is written
//! against. A backend owns its buffers; the model only holds handles.
//!
//! About a dozen ops, not forty: everything BitNet's forward pass needs and
//! nothing else. Activations are f32 everywhere (ReLU² overflows f16).

pub mod cpu;
pub mod kernels;
pub mod lut;
mod team;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use std::sync::Arc;

use crate::gguf::{GgufFile, TensorInfo};
use crate::model::config::{Activation, BitNetConfig};

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BackendError {
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("{0}")]
    Unsupported(String),
    /// The device failed (validation, out of memory, lost); GPU backends
    /// report the first error of a batch of work when it is read back.
    #[error("device error: {0}")]
    Device(String),
}

/// The tensor `name` of `file`, or [`BackendError::MissingTensor`].
pub(crate) fn find<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, BackendError> {
    file.tensor(name)
        .map(|t| t.info)
        .ok_or_else(|| BackendError::MissingTensor(name.into()))
}

/// A [`BackendError::Tensor`] about tensor `name`.
pub(crate) fn bad(name: &str, reason: impl Into<String>) -> BackendError {
    BackendError::Tensor {
        name: name.into(),
        reason: reason.into(),
    }
}

/// Storage type of the KV cache. Attention always computes in f32; F16
/// halves the cache's memory at a small cost in precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    #[default]
    F32,
    F16,
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            other => Err(format!(
                "KV cache type {other:?} is not supported (f32, f16)"
            )),
        }
    }
}

/// Which device runs the model (`--device`). Only `Cpu` exists without
/// the `wgpu` feature; `Auto` then means the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A discrete or integrated GPU if there is one, else the CPU backend.
    /// Never a software adapter (lavapipe, SwiftShader): the CPU kernels
    /// are faster than a GPU emulated on the same cores.
    #[default]
    Auto,
    Cpu,
    /// The best wgpu adapter (software ones included), or adapter N of
    /// `bitnet-cli devices`.
    Wgpu(Option<usize>),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu(None)),
            _ => match s.strip_prefix("wgpu:") {
                Some(n) => n
                    .parse()
                    .map(|n| DeviceChoice::Wgpu(Some(n)))
                    .map_err(|_| format!("--device {s}: expected wgpu:N with N an adapter number")),
                None => Err(format!(
                    "device {s:?} is not supported (auto, cpu, wgpu, wgpu:N)"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Wgpu(None) => f.write_str("wgpu"),
            DeviceChoice::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
        }
    }
}

/// What a backend must provide to run the BitNet forward pass.
pub trait Backend: Send + Sync {
    /// Activations: `rows` tokens × `cols` features, f32.
    type Tensor;
    /// A ternary projection, kept in its GGUF layout.
    type Linear: Send + Sync;
    /// A norm weight vector.
    type Vector: Send + Sync;
    /// An embedding / output table.
    type Table: Send + Sync;
    /// Keys and values of every layer, for up to `max_seq` positions.
    type KvCache: Send;

    fn name(&self) -> &str;

    /// Runs `f`, the ops of one forward pass. A backend may keep state for
    /// the pass (the CPU backend keeps its threads at hand between the
    /// pass's many short parallel loops).
    fn pass<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }

    fn load_linear(&self, file: &Arc<GgufFile>, name: &str) -> Result<Self::Linear, BackendError>;
    fn load_vector(&self, file: &Arc<GgufFile>, name: &str) -> Result<Self::Vector, BackendError>;
    fn load_table(&self, file: &Arc<GgufFile>, name: &str) -> Result<Self::Table, BackendError>;
    fn new_kv_cache(&self, cfg: &BitNetConfig, max_seq: usize, ty: KvType) -> Self::KvCache;
    /// Called once on the table the LM head reads (the embedding when tied),
    /// so a backend can make a copy in the layout its kernels want.
    fn prepare_output(&self, _table: &mut Self::Table) -> Result<(), BackendError> {
        Ok(())
    }

    /// Rows of `table` for `tokens`.
    fn embed(&self, table: &Self::Table, tokens: &[u32]) -> Self::Tensor;
    /// RMSNorm of each row times `weight`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Vector, eps: f32) -> Self::Tensor;
    /// BitLinear: per-token int8 activations × ternary weights, exact i32
    /// sums, then the float rescale.
    fn bitlinear(&self, x: &Self::Tensor, w: &Self::Linear) -> Self::Tensor;
    /// Rotary embedding in place, in the model's pairing (`cfg.rope_style`),
    /// on every head of width `cfg.head_dim`; row r is at position `pos0 + r`.
    fn rope(&self, x: &mut Self::Tensor, pos0: usize, cfg: &BitNetConfig);
    /// RoPE on the queries and the keys of one layer (a backend may do
    /// both in one step); the same as two `rope` calls.
    fn rope_qk(&self, q: &mut Self::Tensor, k: &mut Self::Tensor, pos0: usize, cfg: &BitNetConfig) {
        self.rope(q, pos0, cfg);
        self.rope(k, pos0, cfg);
    }
    /// Stores k, v at positions `pos0..` of `layer` and returns causal GQA
    /// attention of `q` over positions `0..pos0 + rows`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        cache: &mut Self::KvCache,
        layer: usize,
        pos0: usize,
        cfg: &BitNetConfig,
    ) -> Self::Tensor;
    /// `rope_qk` then `attention`: a backend may rotate the keys and store
    /// them in one step, and may leave `q` and `k` as they were (rotating
    /// them only where it reads them).
    #[allow(clippy::too_many_arguments)]
    fn rope_attention(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        cache: &mut Self::KvCache,
        layer: usize,
        pos0: usize,
        cfg: &BitNetConfig,
    ) -> Self::Tensor {
        self.rope_qk(q, k, pos0, cfg);
        self.attention(q, k, v, cache, layer, pos0, cfg)
    }
    /// act(gate) · up, elementwise.
    fn glu(&self, gate: &Self::Tensor, up: &Self::Tensor, act: Activation) -> Self::Tensor;
    /// x += y.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor);

    /// BitLinear of the same activations through several projections (q,
    /// k and v; gate and up), after RMSNorm where `norm` (weight, eps)
    /// says. A backend may normalise and quantize `x` once and run them
    /// together; the results must equal `rms_norm` then separate
    /// `bitlinear` calls.
    fn bitlinear_many<const N: usize>(
        &self,
        x: &Self::Tensor,
        norm: Option<(&Self::Vector, f32)>,
        ws: [&Self::Linear; N],
    ) -> [Self::Tensor; N] {
        let mut h = None;
        let x = normed(self, x, norm, &mut h);
        ws.map(|w| self.bitlinear(x, w))
    }

    /// x += BitLinear(a, w), `a` first normalised where `norm` says: a
    /// projection and the residual add after it. A backend may fuse them
    /// (the GPU ones do: one dispatch, not three); the result must equal
    /// the unfused ops'.
    fn bitlinear_add(
        &self,
        x: &mut Self::Tensor,
        a: &Self::Tensor,
        norm: Option<(&Self::Vector, f32)>,
        w: &Self::Linear,
    ) {
        let mut h = None;
        let a = normed(self, a, norm, &mut h);
        let y = self.bitlinear(a, w);
        self.add(x, &y);
    }
    /// act(BitLinear(h, gate)) · BitLinear(h, up), `h` first normalised
    /// where `norm` says: the feed-forward's first half. A backend may fuse
    /// it; the result must equal the unfused ops'.
    fn bitlinear_glu(
        &self,
        h: &Self::Tensor,
        norm: Option<(&Self::Vector, f32)>,
        gate: &Self::Linear,
        up: &Self::Linear,
        act: Activation,
    ) -> Self::Tensor {
        let [g, u] = self.bitlinear_many(h, norm, [gate, up]);
        self.glu(&g, &u, act)
    }
    /// Logits of the last row only (`last_only`) or of every row.
    fn logits(&self, x: &Self::Tensor, table: &Self::Table, last_only: bool) -> Self::Tensor;
    /// Copies a tensor to the host. GPU backends run the queued work here
    /// and report any device error it met.
    fn read(&self, x: &Self::Tensor) -> Result<Vec<f32>, BackendError>;
    /// [`Backend::read`] without blocking the caller's thread: the way in
    /// the browser, where nothing may wait for the GPU. The default reads
    /// at once.
    fn read_async<'a>(
        &'a self,
        x: &'a Self::Tensor,
    ) -> impl std::future::Future<Output = Result<Vec<f32>, BackendError>> + 'a {
        std::future::ready(self.read(x))
    }
}

/// `x`, or where `norm` (weight, eps) says its RMSNorm, kept in `h`: the
/// unfused first step of the `bitlinear_*` ops.
pub fn normed<'a, B: Backend + ?Sized>(
    b: &B,
    x: &'a B::Tensor,
    norm: Option<(&B::Vector, f32)>,
    h: &'a mut Option<B::Tensor>,
) -> &'a B::Tensor {
    match norm {
        Some((w, eps)) => h.insert(b.rms_norm(x, w, eps)),
        None => x,
    }
}

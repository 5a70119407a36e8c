//! Helpers of the GPU-vs-CPU parity tests, shared by the native wgpu
//! tests (core/tests/wgpu.rs) and the browser's (wasm/tests/web.rs).
#![allow(dead_code)]

use std::sync::Arc;

use bitnet::backend::cpu::CpuTensor;
use bitnet::gguf::{GgufFile, GgufWriter, Value};
use bitnet::quant::ternary::{i2s_encode, BlockTQ1_0, BlockTQ2_0};
use bitnet::GgmlType;
use half::f16;

/// A small deterministic generator (xorshift), so failures reproduce.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    pub fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

pub fn nmse(want: &[f32], got: &[f32]) -> f64 {
    assert_eq!(want.len(), got.len());
    assert!(got.iter().all(|v| v.is_finite()), "NaN or inf from the GPU");
    let err: f64 = want
        .iter()
        .zip(got)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|a| f64::from(*a).powi(2)).sum();
    err / norm.max(1e-30)
}

pub fn cpu_tensor(rows: usize, cols: usize, data: &[f32]) -> CpuTensor {
    CpuTensor {
        data: data.to_vec(),
        rows,
        cols,
    }
}

/// A GGUF holding the given tensors (and nothing else).
pub fn file(tensors: Vec<(&str, Vec<u64>, GgmlType, Vec<u8>)>) -> Arc<GgufFile> {
    let mut w = GgufWriter::new();
    // The architecture tells which producer's type ids 36-39 are (I2_S).
    w.add_metadata("general.architecture", Value::String("bitnet-b1.58".into()))
        .unwrap();
    for (name, dims, ty, data) in tensors {
        w.add_tensor(name, &dims, ty, data).unwrap();
    }
    Arc::new(GgufFile::from_vec(w.to_bytes().unwrap()).unwrap())
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Ternary weights `m` × `k` in the backend's kinds: 0 I2_S; 1, 2 TQ2_0
/// with one scale / a scale per block; 3, 4 the same in TQ1_0.
pub fn ternary(kind: usize, k: usize, m: usize, scale: f32, rng: &mut Rng) -> (GgmlType, Vec<u8>) {
    let w: Vec<i8> = (0..k * m).map(|_| rng.below(3) as i8 - 1).collect();
    if kind == 0 {
        return (GgmlType::I2_S, i2s_encode(&w, scale));
    }
    let mut out = Vec::new();
    for (b, block) in w.chunks_exact(256).enumerate() {
        let d = if kind % 2 == 1 {
            scale
        } else {
            scale * (1.0 + (b % 5) as f32 / 8.0)
        };
        let (block, d) = (block.try_into().unwrap(), f16::from_f32(d));
        if kind <= 2 {
            out.extend_from_slice(&BlockTQ2_0::pack(block, d).to_bytes());
        } else {
            out.extend_from_slice(&BlockTQ1_0::pack(block, d).to_bytes());
        }
    }
    (
        if kind <= 2 {
            GgmlType::TQ2_0
        } else {
            GgmlType::TQ1_0
        },
        out,
    )
}

pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let range = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / range
}

//! Helpers of the GPU-vs-CPU parity tests, shared by the native wgpu
//! tests (core/tests/wgpu.rs) and the browser's (wasm/tests/web.rs).
#![allow(dead_code)]

use std::sync::Arc;

use bitnet::backend::cpu::{CpuBackend, CpuTensor};
use bitnet::backend::{Backend, KvType};
use bitnet::fixture::FixtureConfig;
use bitnet::gguf::{GgufFile, GgufWriter, Value};
use bitnet::model::config::{Activation, BitNetConfig, RopeStyle};
use bitnet::quant::ternary::{i2s_encode, BlockTQ1_0, BlockTQ2_0};
use bitnet::{GgmlType, WgpuBackend};
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

/// `rows` × `k` integer activations with absmax 127 (so the int8 codes are
/// the values themselves): products of them are exact integer sums.
pub fn int_activations(rows: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    (0..rows * k)
        .map(|i| {
            if i % k == 3 {
                127.0
            } else {
                rng.below(255) as f32 - 127.0
            }
        })
        .collect()
}

pub fn tiny_cfg() -> BitNetConfig {
    let f = GgufFile::from_vec(FixtureConfig::tiny(GgmlType::I2_S).to_bytes().unwrap()).unwrap();
    BitNetConfig::from_gguf(&f).unwrap()
}

/// A GPU tensor on the host, awaited (in the browser nothing may block;
/// natively the future is ready at once).
pub async fn read(g: &WgpuBackend, t: &<WgpuBackend as Backend>::Tensor) -> Vec<f32> {
    g.read_async(t).await.expect("reading a GPU tensor")
}

/// RMSNorm, GLU (ReLU², SiLU) and RoPE (both pairings) within 1e-7 NMSE of
/// the CPU's, add identical, on shapes that are not multiples of the tiles.
pub async fn check_norm_rope_glu_add(g: &WgpuBackend) {
    let cpu = CpuBackend::new();
    let mut rng = Rng(3);
    for (rows, cols) in [(1, 256), (3, 300), (5, 2560)] {
        let x = rng.vec(rows * cols, 4.0);
        let w = rng.vec(cols, 1.5);
        let f = file(vec![("n", vec![cols as u64], GgmlType::F32, f32_bytes(&w))]);
        let want = cpu.rms_norm(
            &cpu_tensor(rows, cols, &x),
            &cpu.load_vector(&f, "n").unwrap(),
            1e-5,
        );
        let got = g.rms_norm(
            &g.upload_tensor(rows, cols, &x),
            &g.load_vector(&f, "n").unwrap(),
            1e-5,
        );
        let e = nmse(&want.data, &read(g, &got).await);
        assert!(e <= 1e-7, "rms_norm {rows}x{cols}: {e}");

        let y = rng.vec(rows * cols, 4.0);
        for act in [Activation::Relu2, Activation::Silu] {
            let want = cpu.glu(
                &cpu_tensor(rows, cols, &x),
                &cpu_tensor(rows, cols, &y),
                act,
            );
            let got = g.glu(
                &g.upload_tensor(rows, cols, &x),
                &g.upload_tensor(rows, cols, &y),
                act,
            );
            let e = nmse(&want.data, &read(g, &got).await);
            assert!(e <= 1e-7, "glu {act:?}: {e}");
        }
        let mut want = cpu_tensor(rows, cols, &x);
        cpu.add(&mut want, &cpu_tensor(rows, cols, &y));
        let mut got = g.upload_tensor(rows, cols, &x);
        g.add(&mut got, &g.upload_tensor(rows, cols, &y));
        assert_eq!(want.data, read(g, &got).await, "add");
    }
    let mut cfg = tiny_cfg();
    // Both pairings, and NEOX also with an odd half and a partial rotation
    // (rope_qk takes other paths for those).
    for (style, rope_dim) in [
        (RopeStyle::Neox, 64),
        (RopeStyle::Norm, 64),
        (RopeStyle::Neox, 62),
        (RopeStyle::Neox, 32),
        (RopeStyle::Norm, 48),
    ] {
        cfg.rope_style = style;
        cfg.rope_dim = rope_dim;
        for (rows, heads, pos0) in [(1, 4, 0), (7, 2, 3), (3, 4, 200)] {
            let cols = heads * cfg.head_dim as usize;
            let x = rng.vec(rows * cols, 2.0);
            let mut want = cpu_tensor(rows, cols, &x);
            cpu.rope(&mut want, pos0, &cfg);
            let mut got = g.upload_tensor(rows, cols, &x);
            g.rope(&mut got, pos0, &cfg);
            let e = nmse(&want.data, &read(g, &got).await);
            assert!(
                e <= 1e-7,
                "rope {style:?} {rope_dim} rows={rows} pos0={pos0}: {e}"
            );
        }
        // Queries and keys (fewer heads) in one step.
        for (rows, heads, kv_heads, pos0) in [(1, 4, 1, 9), (5, 6, 2, 30)] {
            let hd = cfg.head_dim as usize;
            let (xq, xk) = (
                rng.vec(rows * heads * hd, 2.0),
                rng.vec(rows * kv_heads * hd, 2.0),
            );
            let (mut wq, mut wk) = (
                cpu_tensor(rows, heads * hd, &xq),
                cpu_tensor(rows, kv_heads * hd, &xk),
            );
            cpu.rope_qk(&mut wq, &mut wk, pos0, &cfg);
            let mut gq = g.upload_tensor(rows, heads * hd, &xq);
            let mut gk = g.upload_tensor(rows, kv_heads * hd, &xk);
            g.rope_qk(&mut gq, &mut gk, pos0, &cfg);
            let (eq, ek) = (
                nmse(&wq.data, &read(g, &gq).await),
                nmse(&wk.data, &read(g, &gk).await),
            );
            assert!(
                eq <= 1e-7 && ek <= 1e-7,
                "rope_qk {style:?} {rope_dim} rows={rows}: {eq} {ek}"
            );
        }
    }
}

/// Causal GQA attention, f32 and f16 caches, within 1e-10 NMSE (f32) and
/// 1e-8 (f16; see below): the plain op (a prefill longer than one tile,
/// decode steps and a second batch), then RoPE and attention in one step,
/// in each way rope.wgsl takes the keys (both pairings; NEOX with a partial
/// rotation, and with an odd half, which rotates the keys apart from the
/// store) and attention.wgsl rotates one new token.
pub async fn check_attention(g: &WgpuBackend) {
    let cpu = CpuBackend::new();
    let mut rng = Rng(21);
    let cases = [
        (false, RopeStyle::Neox, 64),
        (true, RopeStyle::Neox, 64),
        (true, RopeStyle::Norm, 64),
        (true, RopeStyle::Neox, 32),
        (true, RopeStyle::Neox, 62),
    ];
    for (fused, style, rope_dim) in cases {
        let mut cfg = tiny_cfg(); // 4 heads, 2 KV heads (GQA), head_dim 64
        cfg.rope_style = style;
        cfg.rope_dim = rope_dim;
        let (qd, kvd) = (
            (cfg.n_head * cfg.head_dim) as usize,
            (cfg.n_head_kv * cfg.head_dim) as usize,
        );
        // Fused: a prefill, one-token steps (attention.wgsl's NEW_TOKEN),
        // a second batch, and one more step after it.
        let batches: &[usize] = if fused {
            &[7, 1, 1, 3, 1]
        } else {
            &[300, 1, 1, 5, 1]
        };
        for kv in [KvType::F32, KvType::F16] {
            let mut cc = cpu.new_kv_cache(&cfg, 400, kv);
            let mut gc = g.new_kv_cache(&cfg, 400, kv);
            let mut pos = 0;
            for &rows in batches {
                let label = format!("{kv:?} {style:?} {rope_dim} rows={rows} pos0={pos}");
                let (q, k, v) = (
                    rng.vec(rows * qd, 2.0),
                    rng.vec(rows * kvd, 2.0),
                    rng.vec(rows * kvd, 2.0),
                );
                let (mut cq, mut ck, cv) = (
                    cpu_tensor(rows, qd, &q),
                    cpu_tensor(rows, kvd, &k),
                    cpu_tensor(rows, kvd, &v),
                );
                let (mut gq, mut gk, gv) = (
                    g.upload_tensor(rows, qd, &q),
                    g.upload_tensor(rows, kvd, &k),
                    g.upload_tensor(rows, kvd, &v),
                );
                let (want, got) = if fused {
                    (
                        cpu.rope_attention(&mut cq, &mut ck, &cv, &mut cc, 1, pos, &cfg),
                        g.rope_attention(&mut gq, &mut gk, &gv, &mut gc, 1, pos, &cfg),
                    )
                } else {
                    (
                        cpu.attention(&cq, &ck, &cv, &mut cc, 1, pos, &cfg),
                        g.attention(&gq, &gk, &gv, &mut gc, 1, pos, &cfg),
                    )
                };
                let e = nmse(&want.data, &read(g, &got).await);
                // A GPU may fuse RoPE's a * cos - b * sin into one FMA, so
                // a rotated key can be an f32 ulp off the CPU's; rounded to
                // f16 for the cache that is, rarely, an f16 ulp (an H100
                // gave 9.6e-10 for one batch).
                let tol = if kv == KvType::F16 { 1e-8 } else { 1e-10 };
                assert!(e <= tol, "{label}: NMSE {e}");
                pos += rows;
            }
        }
    }
}

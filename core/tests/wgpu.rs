//! The wgpu backend against the CPU reference: op by op on random shapes
//! (sizes that are not multiples of the workgroup tiles, edge values), then
//! end to end on the bundled model, the random fixtures and the reference
//! checkpoints. Runs on whatever adapter wgpu finds (lavapipe in CI, also
//! with WGPU_BACKEND=gl). Without one each test says so and passes, unless
//! REQUIRE_GPU=1, which makes that a failure.
//!
//! Exactness rules (from the issue): int8 activations, their scales and the
//! integer sums are identical; float ops NMSE <= 1e-7; matmul-like float ops
//! (logits, attention, rescaled ternary products) NMSE <= 5e-4.
#![cfg(feature = "wgpu")]

mod common;
use common::ids;
#[path = "common/parity.rs"]
mod parity;
use parity::{
    check_attention, check_norm_rope_glu_add, cpu_tensor, f32_bytes, file, int_activations, nmse,
    rel_diff, ternary, Rng,
};

use std::path::Path;
use std::sync::Arc;

use bitnet::backend::cpu::CpuBackend;
use bitnet::backend::wgpu::{Dot4, GpuTensor, Halves, WgpuOptions};
use bitnet::backend::{Backend, BackendError, KvType};
use bitnet::convert::{convert_hf, ConvertOptions};
use bitnet::fixture::FixtureConfig;
use bitnet::gguf::GgufFile;
use bitnet::model::config::Activation;
use bitnet::model::BitNet;
use bitnet::quant::act::quantize_row;
use bitnet::{DeviceChoice, Engine, GenerationConfig, GgmlType, ModelError, WgpuBackend};
use half::f16;

/// The backend, or None (with a message) when there is no adapter.
fn gpu_with(dot4: Option<Dot4>) -> Option<WgpuBackend> {
    gpu_opts(WgpuOptions {
        dot4,
        ..Default::default()
    })
}

fn gpu_opts(opts: WgpuOptions) -> Option<WgpuBackend> {
    match WgpuBackend::new_with(DeviceChoice::Wgpu(None), opts) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("REQUIRE_GPU").as_deref() != Ok("1") => {
            eprintln!("skipped: no wgpu device ({e}); REQUIRE_GPU=1 makes this a failure");
            None
        }
        Err(e) => panic!("REQUIRE_GPU=1 but no wgpu device: {e}"),
    }
}

fn gpu() -> Option<WgpuBackend> {
    gpu_with(None)
}

/// A backend with the device's own f16 conversion (the builtin where it has
/// one), and one with the integer conversion every device has; none
/// without an adapter.
fn gpus_each_f16_conversion() -> Vec<WgpuBackend> {
    [None, Some(Halves::Portable)]
        .into_iter()
        .map_while(|halves| {
            gpu_opts(WgpuOptions {
                halves,
                ..Default::default()
            })
        })
        .collect()
}

#[test]
fn activation_quantization_is_identical() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(7);
    let mut rows: Vec<Vec<f32>> = Vec::new();
    let k = 384;
    // Many magnitudes: every row's scale is one correctly rounded division.
    for _ in 0..600 {
        let e = rng.below(60) as i32 - 30;
        rows.push(rng.vec(k, 2f32.powi(e)));
    }
    // Edge rows: zeros, ties at .5 after scaling, a negative absmax, tiny
    // values (absmax below 1e-5), subnormals, large values.
    rows.push(vec![0.0; k]);
    rows.push(
        (0..k)
            .map(|i| if i == 0 { 127.0 } else { (i % 9) as f32 - 4.5 })
            .collect(),
    );
    rows.push(
        (0..k)
            .map(|i| if i == 5 { -254.0 } else { (i % 7) as f32 - 3.0 })
            .collect(),
    );
    rows.push(rng.vec(k, 3e-6));
    rows.push(rng.vec(k, 1e-39));
    rows.push(rng.vec(k, 1e30));
    let data: Vec<f32> = rows.concat();
    let x = g.upload_tensor(rows.len(), k, &data);
    assert_quantized("", &data, k, g.quantize_to_host(&x).unwrap());
    // Rows of more than 64 chunks: the shader gathers their sums in groups.
    let k = 8960;
    let data = rng.vec(2 * k, 5.0);
    let got = g.quantize_to_host(&g.upload_tensor(2, k, &data)).unwrap();
    assert_quantized("wide ", &data, k, got);
}

/// The GPU's codes, chunk sums and scales of rows `k` wide equal the CPU
/// rule (`quantize_row`) applied to `data`.
fn assert_quantized(
    what: &str,
    data: &[f32],
    k: usize,
    (q, qsum, scale): (Vec<i8>, Vec<i32>, Vec<f32>),
) {
    for (r, row) in data.chunks_exact(k).enumerate() {
        let mut want = vec![0i8; k];
        let s = quantize_row(row, &mut want);
        assert_eq!(scale[r].to_bits(), s.to_bits(), "{what}row {r}: scale");
        assert_eq!(&q[r * k..(r + 1) * k], &want[..], "{what}row {r}: codes");
        for c in 0..k / 128 {
            let sum: i32 = want[c * 128..(c + 1) * 128]
                .iter()
                .map(|&v| i32::from(v))
                .sum();
            assert_eq!(qsum[r * k / 128 + c], sum, "{what}row {r} chunk {c}: sum");
        }
    }
}

/// The three products the forward pass asks for, on the CPU and the GPU:
/// `bitlinear`, `bitlinear_add` onto `base` and `bitlinear_glu` (second
/// matrix of the same shape), each as (CPU, GPU).
type Pair = (Vec<f32>, Vec<f32>);
#[allow(clippy::too_many_arguments)]
fn products(
    kind: usize,
    (k, m, rows): (usize, usize, usize),
    x: &[f32],
    base: &[f32],
    scale: f32,
    act: Activation,
    rng: &mut Rng,
    g: &WgpuBackend,
) -> [Pair; 3] {
    let (ty, w1) = ternary(kind, k, m, scale, rng);
    let (_, w2) = ternary(kind, k, m, scale * 0.5, rng);
    let dims = vec![k as u64, m as u64];
    let f = file(vec![("w", dims.clone(), ty, w1), ("w2", dims, ty, w2)]);
    let cpu = CpuBackend::new();
    let (cw, cw2) = (
        cpu.load_linear(&f, "w").unwrap(),
        cpu.load_linear(&f, "w2").unwrap(),
    );
    let (gw, gw2) = (
        g.load_linear(&f, "w").unwrap(),
        g.load_linear(&f, "w2").unwrap(),
    );
    let (cx, gx) = (cpu_tensor(rows, k, x), g.upload_tensor(rows, k, x));
    let plain = (
        cpu.bitlinear(&cx, &cw).into_data(),
        g.read(&g.bitlinear(&gx, &gw)).unwrap(),
    );
    let mut cb = cpu_tensor(rows, m, base);
    cpu.bitlinear_add(&mut cb, &cx, None, &cw);
    let mut gb = g.upload_tensor(rows, m, base);
    g.bitlinear_add(&mut gb, &gx, None, &gw);
    let added = (cb.into_data(), g.read(&gb).unwrap());
    let glu = (
        cpu.bitlinear_glu(&cx, None, &cw, &cw2, act).into_data(),
        g.read(&g.bitlinear_glu(&gx, None, &gw, &gw2, act)).unwrap(),
    );
    [plain, added, glu]
}

/// RMSNorm quantizes its output in the same pass (rows a multiple of 128
/// wide): the codes, chunk sums and scale must be the CPU rule applied to
/// the normalised values the GPU wrote.
#[test]
fn rms_norm_quantizes_its_own_output() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(17);
    // 8960 = 70 chunks: more than the shader gathers at once.
    for (rows, k) in [(1, 2560), (3, 6912), (2, 8960)] {
        let x = rng.vec(rows * k, 3.0);
        let w = rng.vec(k, 1.2);
        let f = file(vec![("n", vec![k as u64], GgmlType::F32, f32_bytes(&w))]);
        let y = g.rms_norm(
            &g.upload_tensor(rows, k, &x),
            &g.load_vector(&f, "n").unwrap(),
            1e-5,
        );
        let got = g.quantize_to_host(&y).unwrap();
        let y = g.read(&y).unwrap();
        assert_quantized(&format!("{rows}x{k} "), &y, k, got);
    }
}

#[test]
fn ternary_integer_sums_are_identical() {
    for dot4 in Dot4::ALL {
        let Some(g) = gpu_with(Some(dot4)) else {
            return;
        };
        let mut rng = Rng(11);
        // Integer activations with absmax 127: scale 1, codes = values, and
        // with weight scale 1 each product is its exact integer sum; the
        // fused add and ReLU² GLU then apply the same float ops to the same
        // values, so all three are identical.
        for shape @ (k, m, rows) in [
            (256, 1, 1),
            (512, 7, 3),
            (768, 13, 5),
            (2560, 37, 9),
            (256, 100, 1),
            // One token (the decode kernel): rows of 20 and 54 chunks
            // (10 and 27 blocks), fewer than their power-of-two threads.
            (2560, 37, 1),
            (6912, 21, 1),
        ] {
            for kind in [0, 1, 3] {
                if kind > 0 && k % 256 != 0 {
                    continue;
                }
                let x = int_activations(rows, k, &mut rng);
                let base: Vec<f32> = (0..rows * m).map(|i| i as f32 - 7.0).collect();
                let all = products(kind, shape, &x, &base, 1.0, Activation::Relu2, &mut rng, &g);
                for (op, (want, got)) in ["bitlinear", "bitlinear_add", "bitlinear_glu"]
                    .iter()
                    .zip(all)
                {
                    assert_eq!(
                        want, got,
                        "{op} {dot4:?} kind {kind} k={k} m={m} rows={rows}"
                    );
                }
            }
        }
    }
}

#[test]
fn ternary_products_match() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(5);
    for shape @ (k, m, rows) in [
        (128, 3, 2),
        (256, 9, 1),
        (640, 17, 6),
        (1280, 33, 4),
        (1280, 33, 1),
        (2560, 70, 11),
        (6912, 19, 1),
    ] {
        for kind in 0..5 {
            if kind > 0 && k % 256 != 0 {
                continue;
            }
            for act in [Activation::Relu2, Activation::Silu] {
                let x = rng.vec(rows * k, 3.0);
                let base = rng.vec(rows * m, 3.0);
                let all = products(kind, shape, &x, &base, 0.37, act, &mut rng, &g);
                for (op, (want, got)) in ["bitlinear", "bitlinear_add", "bitlinear_glu"]
                    .iter()
                    .zip(all)
                {
                    let e = nmse(&want, &got);
                    assert!(
                        e <= 5e-4,
                        "{op} kind {kind} k={k} m={m} rows={rows}: NMSE {e}"
                    );
                    if kind % 2 == 1 || kind == 0 {
                        // One rescale of identical integers: rounding apart.
                        assert!(e <= 1e-12, "{op} kind {kind} k={k} m={m}: NMSE {e}");
                    }
                }
            }
        }
    }
}

/// The products that start with an RMSNorm (`norm` given): one token
/// (rows up to 8192 wide) normalises and quantizes inside the one-token
/// kernels; several tokens, or wider rows, take `rms_norm` first. Either
/// way the result must be bit for bit the GPU's own unfused ops
/// (`rms_norm`, then the product without a norm), and close to the CPU's.
#[test]
fn normalised_products_equal_the_unfused_ops() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(29);
    let cpu = CpuBackend::new();
    for (k, m, rows) in [
        (2560, 37, 1),
        (6912, 21, 1),
        (256, 9, 1),
        (512, 13, 3),
        (8960, 5, 1),
    ] {
        for kind in [0, 1, 2] {
            if kind > 0 && k % 256 != 0 {
                continue;
            }
            let mut tensors = Vec::new();
            for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
                let (ty, w) = ternary(kind, k, m, 0.3 + 0.2 * i as f32, &mut rng);
                tensors.push((name, vec![k as u64, m as u64], ty, w));
            }
            let nw = rng.vec(k, 1.2);
            tensors.push(("n", vec![k as u64], GgmlType::F32, f32_bytes(&nw)));
            let f = file(tensors);
            let cw: Vec<_> = ["a", "b", "c"]
                .map(|n| cpu.load_linear(&f, n).unwrap())
                .into();
            let gw: Vec<_> = ["a", "b", "c"]
                .map(|n| g.load_linear(&f, n).unwrap())
                .into();
            let (cn, gn) = (
                cpu.load_vector(&f, "n").unwrap(),
                g.load_vector(&f, "n").unwrap(),
            );
            let (cnorm, gnorm) = (Some((&cn, 1e-5)), Some((&gn, 1e-5)));
            let x = rng.vec(rows * k, 3.0);
            let base = rng.vec(rows * m, 3.0);
            let (cx, gx) = (cpu_tensor(rows, k, &x), g.upload_tensor(rows, k, &x));
            let gh = g.rms_norm(&gx, &gn, 1e-5);
            let read = |t: &GpuTensor| g.read(t).unwrap();
            // (op, fused, unfused, CPU)
            let mut all = Vec::new();
            let fused = g.bitlinear_many(&gx, gnorm, [&gw[0], &gw[1], &gw[2]]);
            let unfused = g.bitlinear_many(&gh, None, [&gw[0], &gw[1], &gw[2]]);
            let want = cpu.bitlinear_many(&cx, cnorm, [&cw[0], &cw[1], &cw[2]]);
            for i in 0..3 {
                let (f, u) = (read(&fused[i]), read(&unfused[i]));
                all.push((format!("many(3) #{i}"), f, u, want[i].data.clone()));
            }
            let fused = g.bitlinear_many(&gx, gnorm, [&gw[1], &gw[2]]);
            let unfused = g.bitlinear_many(&gh, None, [&gw[1], &gw[2]]);
            let want = cpu.bitlinear_many(&cx, cnorm, [&cw[1], &cw[2]]);
            for i in 0..2 {
                let (f, u) = (read(&fused[i]), read(&unfused[i]));
                all.push((format!("many(2) #{i}"), f, u, want[i].data.clone()));
            }
            let mut f = g.upload_tensor(rows, m, &base);
            g.bitlinear_add(&mut f, &gx, gnorm, &gw[0]);
            let mut u = g.upload_tensor(rows, m, &base);
            g.bitlinear_add(&mut u, &gh, None, &gw[0]);
            let mut c = cpu_tensor(rows, m, &base);
            cpu.bitlinear_add(&mut c, &cx, cnorm, &cw[0]);
            all.push(("add".into(), read(&f), read(&u), c.into_data()));
            for act in [Activation::Relu2, Activation::Silu] {
                let f = g.bitlinear_glu(&gx, gnorm, &gw[0], &gw[1], act);
                let u = g.bitlinear_glu(&gh, None, &gw[0], &gw[1], act);
                let c = cpu.bitlinear_glu(&cx, cnorm, &cw[0], &cw[1], act);
                all.push((format!("glu {act:?}"), read(&f), read(&u), c.into_data()));
            }
            for (op, fused, unfused, want) in all {
                let what = format!("{op} kind {kind} k={k} m={m} rows={rows}");
                assert_eq!(fused, unfused, "{what}: fused and unfused differ");
                let e = nmse(&want, &fused);
                assert!(e <= 5e-4, "{what}: NMSE {e} against the CPU");
            }
        }
    }
}

/// q, k and v of one token in one step (`bitlinear_many` with three
/// matrices: one `matvec3` dispatch where the device allows it) equal the
/// CPU's three products; with several tokens, the unfused path.
#[test]
fn three_projections_at_once_match() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(23);
    let cpu = CpuBackend::new();
    for (k, rows) in [(2560, 1), (256, 1), (512, 3)] {
        for kind in [0, 1, 2] {
            if kind > 0 && k % 256 != 0 {
                continue;
            }
            let ms = [70, 19, 33];
            let mut tensors = Vec::new();
            for (i, &m) in ms.iter().enumerate() {
                let (ty, w) = ternary(kind, k, m, 0.3 + 0.2 * i as f32, &mut rng);
                tensors.push((["q", "k", "v"][i], vec![k as u64, m as u64], ty, w));
            }
            let f = file(tensors);
            let load = |n: &str| {
                (
                    cpu.load_linear(&f, n).unwrap(),
                    g.load_linear(&f, n).unwrap(),
                )
            };
            let (q, kk, v) = (load("q"), load("k"), load("v"));
            let x = rng.vec(rows * k, 3.0);
            let want = cpu.bitlinear_many(&cpu_tensor(rows, k, &x), None, [&q.0, &kk.0, &v.0]);
            let got = g.bitlinear_many(&g.upload_tensor(rows, k, &x), None, [&q.1, &kk.1, &v.1]);
            for (i, (w, t)) in want.iter().zip(&got).enumerate() {
                let e = nmse(&w.data, &g.read(t).unwrap());
                let tol = if kind == 2 { 5e-4 } else { 1e-12 };
                assert!(
                    e <= tol,
                    "matrix {i} kind {kind} k={k} rows={rows}: NMSE {e}"
                );
            }
        }
    }
}

#[test]
fn norm_rope_glu_add_match() {
    let Some(g) = gpu() else { return };
    pollster::block_on(check_norm_rope_glu_add(&g));
}

/// A 1000 x 130 table in F16, BF16 and F32: embedding rows identical to the
/// CPU's, logits of `ns` rows (last row only, and every row) within 1e-10
/// NMSE (well inside the 5e-4 the issue allows for matmul-like ops).
fn check_tables(g: &WgpuBackend, tokens: &[u32], ns: &[usize], seed: u64) {
    let cpu = CpuBackend::new();
    let mut rng = Rng(seed);
    let (rows, cols) = (1000, 130);
    let table = rng.vec(rows * cols, 1.0);
    let half = |f: fn(f32) -> [u8; 2]| -> Vec<u8> { table.iter().flat_map(|&v| f(v)).collect() };
    let f16s = half(|v| f16::from_f32(v).to_le_bytes());
    let bf16s = half(|v| half::bf16::from_f32(v).to_le_bytes());
    for (ty, bytes) in [
        (GgmlType::F16, f16s),
        (GgmlType::BF16, bf16s),
        (GgmlType::F32, f32_bytes(&table)),
    ] {
        let f = file(vec![("t", vec![cols as u64, rows as u64], ty, bytes)]);
        let (ct, gt) = (
            cpu.load_table(&f, "t").unwrap(),
            g.load_table(&f, "t").unwrap(),
        );
        let want = cpu.embed(&ct, tokens);
        assert_eq!(
            want.data,
            g.read(&g.embed(&gt, tokens)).unwrap(),
            "{ty} embed"
        );
        for &n in ns {
            let x = rng.vec(n * cols, 2.0);
            for last in [true, false] {
                let want = cpu.logits(&cpu_tensor(n, cols, &x), &ct, last);
                let got = g
                    .read(&g.logits(&g.upload_tensor(n, cols, &x), &gt, last))
                    .unwrap();
                let e = nmse(&want.data, &got);
                assert!(e <= 1e-10, "{ty} logits n={n} last={last}: {e}");
            }
        }
    }
}

#[test]
fn embedding_and_logits_match() {
    for g in gpus_each_f16_conversion() {
        check_tables(&g, &[0, 999, 5, 5, 512], &[1, 6], 9);
    }
}

/// A table larger than one binding is split into parts of whole rows; the
/// lookups and logits are the same as from one part. Here a binding is made
/// 64 KiB, so the table needs 4 (16-bit) or 8 (F32) parts, and every-row
/// logits of 20 rows (80 KB) are made group by group.
#[test]
fn tables_split_across_bindings_give_the_same_results() {
    let Some(g) = gpu_opts(WgpuOptions {
        max_binding: Some(64 << 10),
        ..Default::default()
    }) else {
        return;
    };
    check_tables(&g, &[0, 999, 251, 252, 503, 504, 750], &[1, 6, 20], 17);
}

#[test]
fn attention_matches_prefill_and_decode() {
    for g in gpus_each_f16_conversion() {
        pollster::block_on(check_attention(&g));
    }
}

fn fixture(ty: GgmlType) -> Arc<GgufFile> {
    Arc::new(GgufFile::from_vec(FixtureConfig::tiny(ty).to_bytes().unwrap()).unwrap())
}

#[test]
fn fixture_models_match_the_cpu() {
    // Submitting every 7 dispatches (not once per forward pass) must not
    // change anything.
    for max_dispatches in [None, Some(7)] {
        let Some(g) = gpu_opts(WgpuOptions {
            max_dispatches,
            ..Default::default()
        }) else {
            return;
        };
        fixtures_match(&g);
    }
}

fn fixtures_match(g: &WgpuBackend) {
    let prompt = [496u32, 10, 200, 3, 77, 300, 5];
    for ty in [GgmlType::I2_S, GgmlType::TQ2_0, GgmlType::TQ1_0] {
        let f = fixture(ty);
        let cpu = BitNet::load(f.clone(), CpuBackend::new()).unwrap();
        let gm = BitNet::load(f, g.clone()).unwrap();
        for kv in [KvType::F32, KvType::F16] {
            let want = cpu
                .forward(&mut cpu.new_session(64, kv), &prompt, true)
                .unwrap();
            let mut s = gm.new_session(64, kv);
            let got = gm.forward(&mut s, &prompt, true).unwrap();
            assert!(
                rel_diff(&want, &got) < 1e-5,
                "{ty} {kv:?}: {}",
                rel_diff(&want, &got)
            );
            // Decoding on from the cached prefix.
            let mut cs = cpu.new_session(64, kv);
            cpu.forward(&mut cs, &prompt, false).unwrap();
            let want = cpu.forward(&mut cs, &[42], false).unwrap();
            let got = gm.forward(&mut s, &[42], false).unwrap();
            assert!(rel_diff(&want, &got) < 1e-5, "{ty} {kv:?} decode");
        }
    }
}

fn greedy<B: Backend>(e: &Engine<B>, prompt: &str, n: usize) -> Vec<u32> {
    let ids = e.tokenizer.encode(prompt, true);
    let mut cfg = GenerationConfig::greedy();
    cfg.max_tokens = Some(n);
    let mut s = e.new_session();
    e.generate_ids(&mut s, &ids, &cfg, |_| true).unwrap();
    s.tokens()[ids.len()..].to_vec()
}

#[test]
fn bundled_model_generates_the_same_tokens() {
    let Some(g) = gpu() else { return };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-bitnet-trained-i2s.gguf");
    let f = Arc::new(GgufFile::open(&path).unwrap());
    let cpu = Engine::load(f.clone(), CpuBackend::new()).unwrap();
    let gpu = Engine::load(f, g).unwrap();
    for prompt in [
        "The",
        "In the beginning God created",
        "A cynic is a man who",
        "Love is",
    ] {
        let want = greedy(&cpu, prompt, 40);
        assert!(want.len() >= 8, "{prompt:?}: {want:?}");
        assert_eq!(greedy(&gpu, prompt, 40), want, "{prompt:?}");
    }
}

/// The reference checkpoints (transformers goldens), converted to I2_S and
/// TQ2_0: greedy tokens identical to the CPU backend and the last logits
/// within the model tests' tolerance (1e-5 of the range; 2e-2 where one
/// int8 activation rounds the other way, as the CPU-vs-transformers test
/// allows).
#[test]
fn reference_checkpoints_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("golden.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 5);
    let (mut tight, mut total) = (0, 0);
    for dir in dirs {
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap())
                .unwrap();
        for ty in [GgmlType::I2_S, GgmlType::TQ2_0, GgmlType::TQ1_0] {
            // TQ formats keep an f16 scale, which the Llama-layout
            // checkpoints' scales are not (see golden_hf.rs): I2_S only.
            if ty != GgmlType::I2_S && golden["config"]["model_type"] == "llama" {
                continue;
            }
            let out = std::env::temp_dir().join(format!(
                "bitnet-wgpu-{}-{}-{ty}.gguf",
                std::process::id(),
                dir.file_name().unwrap().to_string_lossy()
            ));
            let opts = ConvertOptions {
                weight_type: ty,
                ..Default::default()
            };
            convert_hf(&dir, &out, &opts).unwrap();
            let f = Arc::new(GgufFile::from_vec(std::fs::read(&out).unwrap()).unwrap());
            std::fs::remove_file(&out).unwrap();
            let cpu = Engine::load(f.clone(), CpuBackend::new()).unwrap();
            let gpu = Engine::load(f, g.clone()).unwrap();
            for p in golden["prompts"].as_array().unwrap() {
                let input = ids(&p["input_ids"]);
                let label = format!("{} {ty} {:?}", dir.display(), p["label"]);
                let want = cpu
                    .model
                    .forward(&mut cpu.new_session(), &input, false)
                    .unwrap();
                let got = gpu
                    .model
                    .forward(&mut gpu.new_session(), &input, false)
                    .unwrap();
                let d = rel_diff(&want, &got);
                assert!(d <= 2e-2, "{label}: last logits {d}");
                total += 1;
                tight += usize::from(d <= 1e-5);
                let text = p["text"].as_str().unwrap();
                assert_eq!(
                    greedy(&gpu, text, 16),
                    greedy(&cpu, text, 16),
                    "{label}: greedy tokens"
                );
            }
        }
    }
    assert!(
        tight * 10 >= total * 9,
        "only {tight} of {total} prompts within 1e-5"
    );
    eprintln!("{tight} of {total} prompts within 1e-5 of the CPU");
}

#[test]
fn unsupported_and_oversized_inputs_are_errors() {
    let Some(g) = gpu() else { return };
    // Q8_0 tables are a CPU-only format: a clear error at load.
    let q8 = FixtureConfig {
        embedding_type: GgmlType::Q8_0,
        ..FixtureConfig::tiny(GgmlType::I2_S)
    };
    let q8 = Arc::new(GgufFile::from_vec(q8.to_bytes().unwrap()).unwrap());
    let err = BitNet::load(q8, g.clone()).err().unwrap();
    assert!(err.to_string().contains("Q8_0"), "{err}");
    // A context whose KV cache cannot be one binding: an error at the first
    // forward pass, not a panic.
    let m = BitNet::load(fixture(GgmlType::I2_S), g).unwrap();
    let mut s = m.new_session(1 << 30, KvType::F32);
    match m.forward(&mut s, &[1, 2, 3], false) {
        Err(ModelError::Backend(BackendError::Unsupported(_) | BackendError::Device(_))) => {}
        other => panic!("expected a backend error, got {:?}", other.map(|v| v.len())),
    }
    // The failed pass left nothing in the session for a later turn to reuse.
    assert_eq!((s.len(), s.tokens().len()), (0, 0));
    // The backend still works afterwards.
    let mut s = m.new_session(16, KvType::F32);
    assert_eq!(m.forward(&mut s, &[1, 2, 3], false).unwrap().len(), 512);
}

/// Asking the wgpu backend for the CPU is an error naming the choice, not a
/// silent pick of some adapter (this needs no adapter).
#[test]
fn cpu_choice_is_not_a_gpu() {
    match WgpuBackend::new(DeviceChoice::Cpu) {
        Err(e) => assert_eq!(
            e,
            bitnet::backend::wgpu::WgpuError::NotAGpu(DeviceChoice::Cpu)
        ),
        Ok(_) => panic!("DeviceChoice::Cpu gave a wgpu backend"),
    }
}

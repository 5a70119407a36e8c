//! The wgpu backend inside a real browser (headless Chromium, WebGPU on
//! SwiftShader) against the CPU reference compiled to the same wasm: op by
//! op, the fixture models, and the bundled model's greedy tokens. The same
//! exactness rules as the native tests (core/tests/wgpu.rs): integer sums
//! identical, float ops NMSE <= 1e-7, matmul-like ops far inside 5e-4.
//!
//! Run: `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
//! cargo test --target wasm32-unknown-unknown -p bitnet-rt-wasm --test web`
//! (chromedriver on PATH, webdriver.json beside Cargo.toml). Without a
//! WebGPU adapter each test says so and passes, unless the test was built
//! with REQUIRE_GPU=1.
#![cfg(target_arch = "wasm32")]

#[path = "../../core/tests/common/parity.rs"]
mod parity;

use std::sync::Arc;

use bitnet::backend::cpu::CpuBackend;
use bitnet::backend::wgpu::{Dot4, WgpuOptions};
use bitnet::backend::{Backend, KvType};
use bitnet::fixture::FixtureConfig;
use bitnet::model::config::{Activation, BitNetConfig, RopeStyle};
use bitnet::model::BitNet;
use bitnet::{DeviceChoice, Engine, GenerationConfig, GgmlType, GgufFile, WgpuBackend};
use half::f16;
use parity::{cpu_tensor, f32_bytes, file, nmse, rel_diff, ternary, Rng};
use wasm_bindgen_test::*;

// In a worker: the page's thread stays free for the test driver's polls
// (a test busy on the main thread for over 5 s makes chromedriver give up).
wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// The WebGPU backend, or None (with a message) when the browser has none.
async fn gpu(dot4: Option<Dot4>) -> Option<WgpuBackend> {
    let opts = WgpuOptions {
        dot4,
        ..Default::default()
    };
    match WgpuBackend::new_async(DeviceChoice::Wgpu(None), opts).await {
        Ok(b) => Some(b),
        Err(e) if option_env!("REQUIRE_GPU") != Some("1") => {
            console_log!("skipped: no WebGPU adapter ({e}); build with REQUIRE_GPU=1 to fail");
            None
        }
        Err(e) => panic!("REQUIRE_GPU=1 but no WebGPU adapter: {e}"),
    }
}

async fn read(g: &WgpuBackend, t: &<WgpuBackend as Backend>::Tensor) -> Vec<f32> {
    g.read_async(t).await.expect("reading a GPU tensor")
}

#[wasm_bindgen_test]
async fn adapter_is_webgpu_without_f16_or_subgroups_needed() {
    let Some(g) = gpu(None).await else { return };
    console_log!("{}", g.name());
    assert_eq!(
        g.adapter_info().backend,
        bitnet::wgpu::Backend::BrowserWebGpu
    );
    assert!(WgpuBackend::required_features().is_empty());
}

#[wasm_bindgen_test]
async fn ternary_products_match_in_every_format() {
    for dot4 in Dot4::ALL {
        let Some(g) = gpu(Some(dot4)).await else {
            return;
        };
        let cpu = CpuBackend::new();
        let mut rng = Rng(11);
        for (k, m, rows) in [(256, 1, 1), (512, 7, 3), (768, 13, 5), (2560, 37, 2)] {
            // 0: I2_S; 1, 2: TQ2_0 one scale / per-block scales; 3: TQ1_0.
            for kind in [0, 1, 2, 3] {
                let (ty, w1) = ternary(kind, k, m, 1.0, &mut rng);
                let (_, w2) = ternary(kind, k, m, 0.5, &mut rng);
                let dims = vec![k as u64, m as u64];
                let f = file(vec![("w", dims.clone(), ty, w1), ("w2", dims, ty, w2)]);
                let (cw, cw2) = (
                    cpu.load_linear(&f, "w").unwrap(),
                    cpu.load_linear(&f, "w2").unwrap(),
                );
                let (gw, gw2) = (
                    g.load_linear(&f, "w").unwrap(),
                    g.load_linear(&f, "w2").unwrap(),
                );
                // Integer activations with absmax 127 (int8 codes = values):
                // the integer sums, hence the outputs, must be identical.
                let ints: Vec<f32> = (0..rows * k)
                    .map(|i| {
                        if i % k == 3 {
                            127.0
                        } else {
                            rng.below(255) as f32 - 127.0
                        }
                    })
                    .collect();
                let floats = rng.vec(rows * k, 3.0);
                for (x, exact) in [(ints, true), (floats, false)] {
                    let (cx, gx) = (cpu_tensor(rows, k, &x), g.upload_tensor(rows, k, &x));
                    let base = rng.vec(rows * m, 3.0);
                    let want = [
                        cpu.bitlinear(&cx, &cw).data,
                        {
                            let mut b = cpu_tensor(rows, m, &base);
                            cpu.bitlinear_add(&mut b, &cx, &cw);
                            b.data
                        },
                        cpu.bitlinear_glu(&cx, &cw, &cw2, Activation::Relu2).data,
                    ];
                    let got = [
                        read(&g, &g.bitlinear(&gx, &gw)).await,
                        {
                            let mut b = g.upload_tensor(rows, m, &base);
                            g.bitlinear_add(&mut b, &gx, &gw);
                            read(&g, &b).await
                        },
                        read(&g, &g.bitlinear_glu(&gx, &gw, &gw2, Activation::Relu2)).await,
                    ];
                    for (op, (want, got)) in ["bitlinear", "bitlinear_add", "bitlinear_glu"]
                        .iter()
                        .zip(want.iter().zip(&got))
                    {
                        let what =
                            format!("{op} {dot4:?} {ty} kind {kind} k={k} m={m} rows={rows}");
                        if exact && kind != 2 {
                            assert_eq!(want, got, "{what}");
                        } else {
                            let e = nmse(want, got);
                            let limit = if kind == 2 { 5e-4 } else { 1e-12 };
                            assert!(e <= limit, "{what}: NMSE {e}");
                        }
                    }
                }
            }
        }
    }
}

fn tiny_cfg() -> BitNetConfig {
    let f = GgufFile::from_vec(FixtureConfig::tiny(GgmlType::I2_S).to_bytes().unwrap()).unwrap();
    BitNetConfig::from_gguf(&f).unwrap()
}

#[wasm_bindgen_test]
async fn norm_rope_glu_add_embedding_logits_match() {
    let Some(g) = gpu(None).await else { return };
    let cpu = CpuBackend::new();
    let mut rng = Rng(3);
    for (rows, cols) in [(1, 256), (3, 300), (5, 2560)] {
        let x = rng.vec(rows * cols, 4.0);
        let y = rng.vec(rows * cols, 4.0);
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
        let e = nmse(&want.data, &read(&g, &got).await);
        assert!(e <= 1e-7, "rms_norm {rows}x{cols}: {e}");
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
            let e = nmse(&want.data, &read(&g, &got).await);
            assert!(e <= 1e-7, "glu {act:?}: {e}");
        }
        let mut want = cpu_tensor(rows, cols, &x);
        cpu.add(&mut want, &cpu_tensor(rows, cols, &y));
        let mut got = g.upload_tensor(rows, cols, &x);
        g.add(&mut got, &g.upload_tensor(rows, cols, &y));
        assert_eq!(want.data, read(&g, &got).await, "add");
    }
    let mut cfg = tiny_cfg();
    for style in [RopeStyle::Neox, RopeStyle::Norm] {
        cfg.rope_style = style;
        for (rows, heads, pos0) in [(1, 4, 0), (7, 2, 3), (3, 4, 200)] {
            let cols = heads * cfg.head_dim as usize;
            let x = rng.vec(rows * cols, 2.0);
            let mut want = cpu_tensor(rows, cols, &x);
            cpu.rope(&mut want, pos0, &cfg);
            let mut got = g.upload_tensor(rows, cols, &x);
            g.rope(&mut got, pos0, &cfg);
            let e = nmse(&want.data, &read(&g, &got).await);
            assert!(e <= 1e-7, "rope {style:?} rows={rows} pos0={pos0}: {e}");
        }
    }
    // An F16 table: embedding rows identical, logits far inside 5e-4.
    let (rows, cols) = (1000, 130);
    let table = rng.vec(rows * cols, 1.0);
    let bytes = table
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    let f = file(vec![(
        "t",
        vec![cols as u64, rows as u64],
        GgmlType::F16,
        bytes,
    )]);
    let (ct, gt) = (
        cpu.load_table(&f, "t").unwrap(),
        g.load_table(&f, "t").unwrap(),
    );
    let tokens = [0, 999, 5, 5, 512];
    assert_eq!(
        cpu.embed(&ct, &tokens).data,
        read(&g, &g.embed(&gt, &tokens)).await,
        "embed"
    );
    for (n, last) in [(1, true), (6, true), (6, false)] {
        let x = rng.vec(n * cols, 2.0);
        let want = cpu.logits(&cpu_tensor(n, cols, &x), &ct, last);
        let got = read(&g, &g.logits(&g.upload_tensor(n, cols, &x), &gt, last)).await;
        let e = nmse(&want.data, &got);
        assert!(e <= 1e-10, "logits n={n} last={last}: {e}");
    }
}

/// Tables larger than one binding are split by rows (here a binding is made
/// 64 KiB, so the 260 KB F16 table needs 4 parts): lookups and logits the
/// same as the CPU's.
#[wasm_bindgen_test]
async fn tables_split_across_bindings_give_the_same_results() {
    let opts = WgpuOptions {
        max_binding: Some(64 << 10),
        ..Default::default()
    };
    let g = match WgpuBackend::new_async(DeviceChoice::Wgpu(None), opts).await {
        Ok(g) => g,
        Err(e) => {
            assert!(
                option_env!("REQUIRE_GPU") != Some("1"),
                "no WebGPU adapter: {e}"
            );
            return;
        }
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng(17);
    let (rows, cols) = (1000, 130);
    let table = rng.vec(rows * cols, 1.0);
    let bytes = table
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    let f = file(vec![(
        "t",
        vec![cols as u64, rows as u64],
        GgmlType::F16,
        bytes,
    )]);
    let (ct, gt) = (
        cpu.load_table(&f, "t").unwrap(),
        g.load_table(&f, "t").unwrap(),
    );
    let tokens = [0, 999, 251, 252, 503, 504, 750];
    assert_eq!(
        cpu.embed(&ct, &tokens).data,
        read(&g, &g.embed(&gt, &tokens)).await
    );
    for n in [1, 6] {
        let x = rng.vec(n * cols, 2.0);
        let want = cpu.logits(&cpu_tensor(n, cols, &x), &ct, true);
        let got = read(&g, &g.logits(&g.upload_tensor(n, cols, &x), &gt, true)).await;
        let e = nmse(&want.data, &got);
        assert!(e <= 1e-10, "logits n={n}: {e}");
    }
}

#[wasm_bindgen_test]
async fn attention_matches_prefill_and_decode() {
    let Some(g) = gpu(None).await else { return };
    let cpu = CpuBackend::new();
    let cfg = tiny_cfg(); // 4 heads, 2 KV heads (GQA), head_dim 64
    let mut rng = Rng(21);
    let (qd, kvd) = (
        (cfg.n_head * cfg.head_dim) as usize,
        (cfg.n_head_kv * cfg.head_dim) as usize,
    );
    for kv in [KvType::F32, KvType::F16] {
        let mut cc = cpu.new_kv_cache(&cfg, 200, kv);
        let mut gc = g.new_kv_cache(&cfg, 200, kv);
        let mut pos = 0;
        // Longer than one 64-position tile, then decode steps and a batch.
        for rows in [130, 1, 1, 5] {
            let (q, k, v) = (
                rng.vec(rows * qd, 2.0),
                rng.vec(rows * kvd, 2.0),
                rng.vec(rows * kvd, 2.0),
            );
            let want = cpu.attention(
                &cpu_tensor(rows, qd, &q),
                &cpu_tensor(rows, kvd, &k),
                &cpu_tensor(rows, kvd, &v),
                &mut cc,
                1,
                pos,
                &cfg,
            );
            let got = g.attention(
                &g.upload_tensor(rows, qd, &q),
                &g.upload_tensor(rows, kvd, &k),
                &g.upload_tensor(rows, kvd, &v),
                &mut gc,
                1,
                pos,
                &cfg,
            );
            let e = nmse(&want.data, &read(&g, &got).await);
            assert!(e <= 1e-10, "{kv:?} rows={rows} pos0={pos}: NMSE {e}");
            pos += rows;
        }
    }
}

#[wasm_bindgen_test]
async fn fixture_models_match_the_cpu() {
    let Some(g) = gpu(None).await else { return };
    let prompt = [496u32, 10, 200, 3, 77, 300, 5];
    for ty in [GgmlType::I2_S, GgmlType::TQ2_0, GgmlType::TQ1_0] {
        let f = Arc::new(GgufFile::from_vec(FixtureConfig::tiny(ty).to_bytes().unwrap()).unwrap());
        let cpu = BitNet::load(f.clone(), CpuBackend::new()).unwrap();
        let gm = BitNet::load(f, g.clone()).unwrap();
        let mut cs = cpu.new_session(64, KvType::F32);
        let mut gs = gm.new_session(64, KvType::F32);
        let want = cpu.forward(&mut cs, &prompt, true).unwrap();
        let got = gm.forward_async(&mut gs, &prompt, true).await.unwrap();
        assert!(
            rel_diff(&want, &got) < 1e-5,
            "{ty}: {}",
            rel_diff(&want, &got)
        );
        // Decoding on from the cached prefix.
        let want = cpu.forward(&mut cs, &[42], false).unwrap();
        let got = gm.forward_async(&mut gs, &[42], false).await.unwrap();
        assert!(rel_diff(&want, &got) < 1e-5, "{ty} decode");
    }
}

/// Greedy tokens of `prompt`, generated with the async stream.
async fn greedy<B: Backend>(e: &Engine<B>, prompt: &str, n: usize) -> Vec<u32> {
    let ids = e.tokenizer.encode(prompt, true);
    let mut cfg = GenerationConfig::greedy();
    cfg.max_tokens = Some(n);
    let mut stream = e.stream(e.new_session(), &ids, &cfg).unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next_async().await {
        out.extend(chunk.unwrap().tokens);
    }
    out
}

#[wasm_bindgen_test]
async fn bundled_model_generates_the_same_tokens_on_webgpu_and_the_wasm_cpu() {
    let Some(g) = gpu(None).await else { return };
    let bytes = include_bytes!("../../models/tiny-bitnet-trained-i2s.gguf");
    let f = Arc::new(GgufFile::from_vec(bytes.to_vec()).unwrap());
    let cpu = Engine::load(f.clone(), CpuBackend::new()).unwrap();
    let gpu = Engine::load(f, g).unwrap();
    for prompt in ["The", "Love is"] {
        let want = greedy(&cpu, prompt, 24).await;
        assert!(want.len() >= 16, "{prompt:?}: {want:?}");
        assert_eq!(greedy(&gpu, prompt, 24).await, want, "{prompt:?}");
    }
}

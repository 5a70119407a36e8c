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
use bitnet::model::config::Activation;
use bitnet::model::BitNet;
use bitnet::{DeviceChoice, Engine, GenerationConfig, GgmlType, GgufFile, WgpuBackend};
use half::f16;
use parity::{
    check_attention, check_norm_rope_glu_add, cpu_tensor, file, int_activations, nmse, read,
    rel_diff, ternary, Rng,
};
use wasm_bindgen_test::*;

// In a worker: the page's thread stays free for the test driver's polls
// (a test busy on the main thread for over 5 s makes chromedriver give up).
wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// The WebGPU backend, or None (with a message) when the browser has none.
async fn gpu_opts(opts: WgpuOptions) -> Option<WgpuBackend> {
    match WgpuBackend::new_async(DeviceChoice::Wgpu(None), opts).await {
        Ok(b) => Some(b),
        Err(e) if option_env!("REQUIRE_GPU") != Some("1") => {
            console_log!("skipped: no WebGPU adapter ({e}); build with REQUIRE_GPU=1 to fail");
            None
        }
        Err(e) => panic!("REQUIRE_GPU=1 but no WebGPU adapter: {e}"),
    }
}

async fn gpu(dot4: Option<Dot4>) -> Option<WgpuBackend> {
    gpu_opts(WgpuOptions {
        dot4,
        ..Default::default()
    })
    .await
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
                let ints = int_activations(rows, k, &mut rng);
                let floats = rng.vec(rows * k, 3.0);
                for (x, exact) in [(ints, true), (floats, false)] {
                    let (cx, gx) = (cpu_tensor(rows, k, &x), g.upload_tensor(rows, k, &x));
                    let base = rng.vec(rows * m, 3.0);
                    let want = [
                        cpu.bitlinear(&cx, &cw).into_data(),
                        {
                            let mut b = cpu_tensor(rows, m, &base);
                            cpu.bitlinear_add(&mut b, &cx, None, &cw);
                            b.into_data()
                        },
                        cpu.bitlinear_glu(&cx, None, &cw, &cw2, Activation::Relu2)
                            .into_data(),
                    ];
                    let got = [
                        read(&g, &g.bitlinear(&gx, &gw)).await,
                        {
                            let mut b = g.upload_tensor(rows, m, &base);
                            g.bitlinear_add(&mut b, &gx, None, &gw);
                            read(&g, &b).await
                        },
                        read(
                            &g,
                            &g.bitlinear_glu(&gx, None, &gw, &gw2, Activation::Relu2),
                        )
                        .await,
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

#[wasm_bindgen_test]
async fn norm_rope_glu_add_match() {
    let Some(g) = gpu(None).await else { return };
    check_norm_rope_glu_add(&g).await;
}

#[wasm_bindgen_test]
async fn attention_matches_prefill_and_decode() {
    let Some(g) = gpu(None).await else { return };
    check_attention(&g).await;
}

/// A 1000 × 130 F16 table: embedding rows identical to the CPU's, logits
/// (last row, and every row) within 1e-10 NMSE (far inside the 5e-4 allowed).
async fn check_f16_table(g: &WgpuBackend, tokens: &[u32], seed: u64) {
    let cpu = CpuBackend::new();
    let mut rng = Rng(seed);
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
    assert_eq!(
        cpu.embed(&ct, tokens).data,
        read(g, &g.embed(&gt, tokens)).await,
        "embed"
    );
    for (n, last) in [(1, true), (6, true), (6, false)] {
        let x = rng.vec(n * cols, 2.0);
        let want = cpu.logits(&cpu_tensor(n, cols, &x), &ct, last);
        let got = read(g, &g.logits(&g.upload_tensor(n, cols, &x), &gt, last)).await;
        let e = nmse(&want.data, &got);
        assert!(e <= 1e-10, "logits n={n} last={last}: {e}");
    }
}

#[wasm_bindgen_test]
async fn embedding_and_logits_match() {
    let Some(g) = gpu(None).await else { return };
    check_f16_table(&g, &[0, 999, 5, 5, 512], 9).await;
}

/// Tables larger than one binding are split by rows (here a binding is made
/// 64 KiB, so the 260 KB F16 table needs 4 parts): the same results.
#[wasm_bindgen_test]
async fn tables_split_across_bindings_give_the_same_results() {
    let opts = WgpuOptions {
        max_binding: Some(64 << 10),
        ..Default::default()
    };
    let Some(g) = gpu_opts(opts).await else {
        return;
    };
    check_f16_table(&g, &[0, 999, 251, 252, 503, 504, 750], 17).await;
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

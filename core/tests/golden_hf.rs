//! Our converter and forward pass against Hugging Face transformers' BitNet
//! implementation (the independent reference). `tests/reference/goldens/*/`
//! hold tiny random checkpoints in the microsoft/bitnet-b1.58-2B-4T layout and
//! what transformers computed for them (`tests/reference/make_goldens.py`).
//!
//! For each checkpoint and each ternary output type we convert it with
//! `bitnet::convert`, then require, for every prompt:
//! - the argmax at every prompt position equal to transformers';
//! - the 16-token greedy continuation identical;
//! - the last-position logits close, measured as max |ours − theirs| /
//!   max |theirs|: at most TIGHT (1e-5) for at least 90 % of all prompts, and
//!   at most FLIP (2e-2) for every prompt.
//!
//! Why two tiers. Both implementations compute the integer part (int8
//! activations × ternary codes) exactly, and their float parts (norms,
//! attention, LM head) differ only in summation order: we measure ≤ 1e-6
//! relative, so TIGHT = 1e-5 catches any systematic error (a wrong eps, RoPE
//! base or pairing, a missing sub-norm, a scale divided instead of multiplied
//! moves every prompt by far more). But BitNet's activation quantization is
//! discontinuous: an activation within about one ulp of k + 0.5 can round
//! differently in two correct f32 implementations, and on these random tiny
//! models one such flip moves the final logits by about 1 %. The goldens were
//! chosen so that every argmax survives 1e-6 relative jitter of every
//! BitLinear input (see golden.json "robustness"), which is why tokens must
//! still match exactly; FLIP bounds the size of a flip's effect (a wrong op
//! moves logits by tens of percent). Measured on 2026-11-27: 14 of 15 prompts
//! within 8e-7; tiny_c "long" at 1.0e-2, the same prompt where the generator's
//! own independent forward pass also differs from transformers (by 3.4).

mod common;
use common::ids;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet::backend::cpu::CpuBackend;
use bitnet::backend::KvType;
use bitnet::convert::{convert_hf, ConvertOptions};
use bitnet::gguf::GgufFile;
use bitnet::{Engine, GenerationConfig, GgmlType};
use serde_json::Value;

const TIGHT: f32 = 1e-5;
const FLIP: f32 = 2e-2;

fn golden_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("golden.json").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 5,
        "expected at least 5 golden checkpoints (3 bitnet, 2 llama) in {}",
        root.display()
    );
    dirs
}

fn convert(dir: &Path, ty: GgmlType) -> Engine<CpuBackend> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let out = std::env::temp_dir().join(format!(
        "bitnet-golden-{}-{}-{}-{}.gguf",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        dir.file_name().unwrap().to_string_lossy(),
        ty
    ));
    let opts = ConvertOptions {
        weight_type: ty,
        ..Default::default()
    };
    convert_hf(dir, &out, &opts).unwrap();
    let file = GgufFile::from_vec(std::fs::read(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).unwrap();
    Engine::load(Arc::new(file), CpuBackend::new()).unwrap()
}

fn check(ty: GgmlType) {
    let mut rel_diffs = Vec::new();
    for dir in golden_dirs() {
        let golden: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap())
                .unwrap();
        // TQ1_0/TQ2_0 store each block's scale as f16. The Llama-layout
        // checkpoints' scales (1 / weight_scale, or mean |W| computed on
        // the fly) are not f16 values, so those files carry a 2^-11 relative
        // weight error that the goldens (robust to 1e-6) were not chosen to
        // absorb: that is the format's precision, not ours. The I2_S check
        // (f32 scale) covers them; the bitnet-layout goldens have bf16
        // scales, exact in f16, and are checked in every format.
        if ty != GgmlType::I2_S && golden["config"]["model_type"] == "llama" {
            eprintln!(
                "{ty}: {} skipped (scale not representable in f16)",
                dir.display()
            );
            continue;
        }
        let engine = convert(&dir, ty);
        let vocab = engine.model.cfg.n_vocab as usize;
        for p in golden["prompts"].as_array().unwrap() {
            let label = format!("{} {:?} {ty}", dir.display(), p["label"]);
            let input = ids(&p["input_ids"]);
            assert_eq!(
                engine.tokenizer.encode(p["text"].as_str().unwrap(), true),
                input,
                "{label}: tokenizer"
            );

            let mut s = engine.model.new_session(0, KvType::F32);
            let logits = engine.model.forward(&mut s, &input, true).unwrap();
            let argmax: Vec<u32> = logits
                .chunks_exact(vocab)
                .map(bitnet::sampler::argmax)
                .collect();
            assert_eq!(
                argmax,
                ids(&p["prefill_logits_argmax"]),
                "{label}: prefill argmax"
            );

            let theirs: Vec<f32> = p["last_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let ours = &logits[logits.len() - vocab..];
            let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = ours
                .iter()
                .zip(&theirs)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            rel_diffs.push(diff / scale);
            assert!(
                diff <= FLIP * scale,
                "{label}: max logit diff {diff} (max |logit| {scale})"
            );

            let cfg = GenerationConfig {
                max_tokens: Some(p["greedy_ids"].as_array().unwrap().len()),
                ..GenerationConfig::greedy()
            };
            // transformers' greedy run ignores EOS; so do we, by comparing
            // token ids through a run that only stops on max_tokens.
            let greedy = greedy_ids(&engine, &input, cfg.max_tokens.unwrap(), KvType::F32);
            assert_eq!(
                greedy,
                ids(&p["greedy_ids"]),
                "{label}: greedy continuation"
            );
        }
    }
    let tight = rel_diffs.iter().filter(|&&d| d <= TIGHT).count();
    eprintln!("{ty}: relative last-logit differences {rel_diffs:?}");
    assert!(
        tight * 10 >= rel_diffs.len() * 9,
        "{ty}: only {tight} of {} prompts within {TIGHT:e}: {rel_diffs:?}",
        rel_diffs.len()
    );
}

/// Greedy decoding that does not stop at end-of-text tokens.
fn greedy_ids(engine: &Engine<CpuBackend>, prompt: &[u32], n: usize, kv: KvType) -> Vec<u32> {
    let m = &engine.model;
    let mut s = m.new_session(0, kv);
    let mut logits = m.forward(&mut s, prompt, false).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = bitnet::sampler::argmax(&logits);
        out.push(next);
        logits = m.forward(&mut s, &[next], false).unwrap();
    }
    out
}

#[test]
fn i2s_matches_transformers() {
    check(GgmlType::I2_S);
}

#[test]
fn tq2_0_matches_transformers() {
    check(GgmlType::TQ2_0);
}

#[test]
fn tq1_0_matches_transformers() {
    check(GgmlType::TQ1_0);
}

/// An f16 KV cache only rounds keys and values (relative 2^-11, about 500
/// times the 1e-6 jitter the goldens are robust to, so near-ties may go the
/// other way, and each activation-rounding flip it causes moves logits by
/// about 1 %; that is the precision traded, not an error: the cache itself
/// is checked exactly in `backend::cpu` tests). Required: the last-position
/// logits within F16_KV (5e-2; measured 2026-11-27: 3.3e-2 worst, most
/// prompts far below) of their range for every prompt, and at least 95 %
/// of all prompt-position argmaxes unchanged (measured 387 of 395); how
/// many greedy continuations stay identical is reported (20 of 25).
#[test]
fn f16_kv_cache_stays_close_to_transformers() {
    let (mut worst, mut same, mut total) = (0f32, 0, 0);
    let (mut argmax_same, mut positions) = (0, 0);
    for dir in golden_dirs() {
        let golden: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap())
                .unwrap();
        let engine = convert(&dir, GgmlType::I2_S);
        let m = &engine.model;
        let vocab = m.cfg.n_vocab as usize;
        for p in golden["prompts"].as_array().unwrap() {
            let input = ids(&p["input_ids"]);
            let a = m
                .forward(&mut m.new_session(0, KvType::F32), &input, true)
                .unwrap();
            let b = m
                .forward(&mut m.new_session(0, KvType::F16), &input, true)
                .unwrap();
            let argmax = b.chunks_exact(vocab).map(bitnet::sampler::argmax);
            let want = ids(&p["prefill_logits_argmax"]);
            argmax_same += argmax.zip(&want).filter(|(x, y)| x == *y).count();
            positions += want.len();
            let (a, b) = (&a[a.len() - vocab..], &b[b.len() - vocab..]);
            let scale = a.iter().fold(0f32, |x, v| x.max(v.abs()));
            let diff = a.iter().zip(b).fold(0f32, |x, (p, q)| x.max((p - q).abs()));
            worst = worst.max(diff / scale);
            let want = ids(&p["greedy_ids"]);
            total += 1;
            same += usize::from(greedy_ids(&engine, &input, want.len(), KvType::F16) == want);
        }
    }
    eprintln!(
        "f16 KV: worst relative last-logit change {worst:e}; prefill argmax {argmax_same}/{positions} unchanged; {same} of {total} greedy runs identical"
    );
    const F16_KV: f32 = 5e-2;
    assert!(
        worst <= F16_KV,
        "f16 KV cache moved logits by {worst:e} of their range"
    );
    assert!(
        argmax_same * 20 >= positions * 19,
        "{argmax_same}/{positions}"
    );
}

/// An opt-in compact output table against the file's table, on every
/// reference model and every prompt position: the mean and worst KL
/// divergence of the next-token distributions, and top-1 agreement out of
/// how many positions (recorded in docs/perf.md).
fn compact_table_closeness(table: bitnet::OutputTable) -> (f64, f64, usize, usize) {
    let mut c = common::Closeness::default();
    for dir in golden_dirs() {
        let golden: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap())
                .unwrap();
        let file_engine = convert(&dir, GgmlType::I2_S);
        let bytes = {
            // The same converted file, loaded a second time with the int8 table.
            let out = std::env::temp_dir().join(format!(
                "bitnet-{table:?}-{}-{}.gguf",
                std::process::id(),
                dir.file_name().unwrap().to_string_lossy()
            ));
            convert_hf(&dir, &out, &ConvertOptions::default()).unwrap();
            let b = std::fs::read(&out).unwrap();
            std::fs::remove_file(&out).unwrap();
            b
        };
        let backend = CpuBackend::new().with_output_table(table);
        let compact_engine =
            Engine::load(Arc::new(GgufFile::from_vec(bytes).unwrap()), backend).unwrap();
        let vocab = file_engine.model.cfg.n_vocab as usize;
        for p in golden["prompts"].as_array().unwrap() {
            let input = ids(&p["input_ids"]);
            let run = |e: &Engine<CpuBackend>| {
                e.model
                    .forward(&mut e.model.new_session(0, KvType::F32), &input, true)
                    .unwrap()
            };
            let (a, b) = (run(&file_engine), run(&compact_engine));
            c.add(&a, &b, vocab);
        }
    }
    let (mean_kl, worst_kl, agree, n) = (c.mean_kl(), c.worst_kl, c.agree, c.n);
    eprintln!(
        "{table:?} output table: mean KL {mean_kl:.3e} nats (worst {worst_kl:.3e}), top-1 agreement {agree}/{n}"
    );
    (mean_kl, worst_kl, agree, n)
}

#[test]
fn int8_output_table_stays_close() {
    let (mean_kl, _, agree, n) = compact_table_closeness(bitnet::OutputTable::Int8);
    assert!(mean_kl <= 1e-2, "mean KL {mean_kl}");
    assert!(agree * 100 >= n * 98, "top-1 agreement {agree}/{n}");
}

#[test]
fn int6_output_table_stays_close() {
    // Four times int8's step: about 16 times its KL on these random models,
    // whose logits spread about 100 (measured 5.0e-2, 386/395).
    let (mean_kl, _, agree, n) = compact_table_closeness(bitnet::OutputTable::Int6);
    assert!(mean_kl <= 0.1, "mean KL {mean_kl}");
    assert!(agree * 100 >= n * 96, "top-1 agreement {agree}/{n}");
}

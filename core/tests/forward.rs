//! The forward pass on fixtures: the same weights in I2_S, TQ1_0 and TQ2_0
//! give identical logits; a prompt processed as one batch gives the same
//! logits as token by token; bad input is refused with a clear error.

use std::sync::Arc;

mod common;

use bitnet::backend::cpu::CpuBackend;
use bitnet::backend::KvType;
use bitnet::fixture::FixtureConfig;
use bitnet::gguf::GgufFile;
use bitnet::model::{BitNet, ModelError};
use bitnet::GgmlType;

fn model(ty: GgmlType) -> BitNet<CpuBackend> {
    let file = GgufFile::from_vec(FixtureConfig::tiny(ty).to_bytes().unwrap()).unwrap();
    BitNet::load(Arc::new(file), CpuBackend::new()).unwrap()
}

const PROMPT: [u32; 7] = [496, 10, 200, 3, 77, 300, 5];

#[test]
fn every_ternary_format_gives_the_same_logits() {
    let mut all = Vec::new();
    for ty in [GgmlType::I2_S, GgmlType::TQ1_0, GgmlType::TQ2_0] {
        let m = model(ty);
        let mut s = m.new_session(64, KvType::F32);
        let logits = m.forward(&mut s, &PROMPT, true).unwrap();
        assert_eq!(logits.len(), PROMPT.len() * 512);
        assert!(logits.iter().all(|v| v.is_finite()));
        all.push(logits);
    }
    assert_eq!(all[0], all[1]);
    assert_eq!(all[0], all[2]);
}

#[test]
fn batched_prefill_equals_token_by_token() {
    let m = model(GgmlType::I2_S);
    let mut batch = m.new_session(64, KvType::F32);
    let all = m.forward(&mut batch, &PROMPT, true).unwrap();
    let mut step = m.new_session(64, KvType::F32);
    for (i, &t) in PROMPT.iter().enumerate() {
        let logits = m.forward(&mut step, &[t], false).unwrap();
        assert_eq!(logits, all[i * 512..(i + 1) * 512], "position {i}");
    }
    assert_eq!(step.len(), PROMPT.len());
}

#[test]
fn bad_input_is_refused() {
    let m = model(GgmlType::TQ2_0);
    let mut s = m.new_session(4, KvType::F32);
    let err = m.forward(&mut s, &PROMPT, false).unwrap_err();
    assert_eq!(err, ModelError::ContextOverflow { needed: 7, max: 4 });
    assert!(s.is_empty());
    let err = m.forward(&mut s, &[512], false).unwrap_err();
    assert_eq!(
        err,
        ModelError::TokenOutOfRange {
            id: 512,
            vocab: 512
        }
    );
}

fn tiny_engine(ctx: usize) -> bitnet::Engine<CpuBackend> {
    let file = GgufFile::from_vec(FixtureConfig::tiny(GgmlType::I2_S).to_bytes().unwrap()).unwrap();
    let mut engine = bitnet::Engine::load(Arc::new(file), CpuBackend::new()).unwrap();
    engine.ctx_size = ctx;
    engine
}

#[test]
fn generation_stops_and_cancels() {
    use bitnet::{GenerationConfig, StopReason};
    let mut engine = tiny_engine(0);
    let cfg = GenerationConfig {
        max_tokens: Some(5),
        ..GenerationConfig::greedy()
    };
    let mut text = String::new();
    let stats = engine
        .generate("Hello", &cfg, |t| {
            text.push_str(t);
            true
        })
        .unwrap();
    assert_eq!(stats.stop_reason, StopReason::MaxTokens);
    assert_eq!(stats.generated_tokens, 5);
    assert_eq!(text, engine.tokenizer.decode(&stats.tokens));
    // Same settings, same tokens.
    let again = engine.generate("Hello", &cfg, |_| true).unwrap();
    assert_eq!(again.tokens, stats.tokens);
    // Cancel at the first piece of text.
    let cancel = engine.generate("Hello", &cfg, |_| false).unwrap();
    assert_eq!(cancel.stop_reason, StopReason::Cancelled);
    // A context smaller than the prompt: a clear error, nothing generated.
    engine.ctx_size = 4;
    let err = engine
        .generate("Hello there, a longer prompt", &cfg, |_| true)
        .unwrap_err();
    assert!(err.to_string().contains("but the context holds 4"), "{err}");
    // Context full: stops cleanly.
    engine.ctx_size = 10;
    let full = GenerationConfig {
        max_tokens: None,
        ..cfg
    };
    let stats = engine.generate("Hello", &full, |_| true).unwrap();
    assert!(matches!(
        stats.stop_reason,
        StopReason::ContextFull | StopReason::EndOfText
    ));
    // The last token is sampled from the last position's logits and needs no
    // slot of its own.
    assert!(stats.prompt_tokens + stats.generated_tokens <= 11);
}

#[test]
fn iterator_stream_equals_callback_and_chunks_as_asked() {
    use bitnet::engine::{StreamingConfig, TokenStream};
    use bitnet::GenerationConfig;
    let engine = tiny_engine(0);
    let cfg = GenerationConfig {
        max_tokens: Some(9),
        ..GenerationConfig::greedy()
    };
    let mut text = String::new();
    let stats = engine
        .generate("Hello", &cfg, |t| {
            text.push_str(t);
            true
        })
        .unwrap();
    let ids = engine.tokenizer.encode("Hello", true);
    // One token per chunk by default.
    let stream = engine.stream(engine.new_session(), &ids, &cfg).unwrap();
    let chunks: Vec<_> = stream.map(Result::unwrap).collect();
    let tokens: Vec<u32> = chunks.iter().flat_map(|c| c.tokens.clone()).collect();
    assert_eq!(tokens, stats.tokens);
    assert!(chunks.iter().all(|c| c.tokens.len() <= 1));
    assert_eq!(
        chunks.iter().map(|c| c.text.as_str()).collect::<String>(),
        text
    );
    // Four tokens per chunk (with a long flush interval): 9 tokens → 4, 4, 1.
    let streaming = StreamingConfig {
        buffer_size: 4,
        flush_interval_ms: 60_000,
        token_timeout_ms: None,
    };
    let mut stream: TokenStream<'_, CpuBackend> = engine
        .stream(engine.new_session(), &ids, &cfg)
        .unwrap()
        .with_streaming(&streaming);
    let sizes: Vec<usize> = stream
        .by_ref()
        .map(|c| c.unwrap().tokens.len())
        .filter(|&n| n > 0)
        .collect();
    assert_eq!(sizes, [4, 4, 1]);
    assert_eq!(stream.stats().tokens, stats.tokens);
    // The session holds the prompt and every generated token but the last.
    assert_eq!(stream.session().len(), ids.len() + 8);
}

#[test]
fn cancel_token_stops_a_stream_between_tokens() {
    use bitnet::{GenerationConfig, StopReason};
    let engine = tiny_engine(0);
    let ids = engine.tokenizer.encode("Hello", true);
    let mut stream = engine
        .stream(engine.new_session(), &ids, &GenerationConfig::greedy())
        .unwrap();
    let cancel = stream.cancel_token();
    assert_eq!(stream.next().unwrap().unwrap().tokens.len(), 1);
    cancel.cancel();
    assert!(stream.next().is_none());
    assert_eq!(stream.stop_reason(), Some(StopReason::Cancelled));
    assert_eq!(stream.stats().generated_tokens, 1);
}

/// A chat keeps one session: the second turn reuses the cached prefix and
/// must produce exactly what a fresh session produces.
#[test]
fn reused_session_equals_fresh_session() {
    use bitnet::GenerationConfig;
    let engine = tiny_engine(0);
    let cfg = GenerationConfig {
        max_tokens: Some(6),
        ..GenerationConfig::greedy()
    };
    let mut session = engine.new_session();
    let turn1 = engine.tokenizer.encode("User: hello there", true);
    let first = engine
        .generate_ids(&mut session, &turn1, &cfg, |_| true)
        .unwrap();
    assert_eq!(first.cached_prompt_tokens, 0);
    let mut turn2 = turn1.clone();
    turn2.extend(&first.tokens);
    turn2.extend(engine.tokenizer.encode(" and again", false));
    let reused = engine
        .generate_ids(&mut session, &turn2, &cfg, |_| true)
        .unwrap();
    // Everything of turn 1 that went through the model is reused.
    assert_eq!(
        reused.cached_prompt_tokens,
        turn1.len() + first.tokens.len() - 1
    );
    let fresh = engine
        .generate_ids(&mut engine.new_session(), &turn2, &cfg, |_| true)
        .unwrap();
    assert_eq!(reused.tokens, fresh.tokens);
    // The same prompt again: all but its last token come from the cache.
    let same = engine
        .generate_ids(&mut session, &turn2, &cfg, |_| true)
        .unwrap();
    assert_eq!(same.cached_prompt_tokens, turn2.len() - 1);
    assert_eq!(same.tokens, fresh.tokens);
}

/// Prompt logits and greedy tokens of a model file at one SIMD level.
fn run_at_level(
    bytes: &[u8],
    level: bitnet::backend::kernels::SimdLevel,
    prompt: &str,
    max_tokens: usize,
) -> (Vec<f32>, Vec<u32>) {
    use bitnet::{Engine, GenerationConfig};
    let cfg = GenerationConfig {
        max_tokens: Some(max_tokens),
        ..GenerationConfig::greedy()
    };
    let file = Arc::new(GgufFile::from_vec(bytes.to_vec()).unwrap());
    let engine = Engine::load(file, CpuBackend::with_level(level).unwrap()).unwrap();
    let ids = engine.tokenizer.encode(prompt, true);
    let m = &engine.model;
    let logits = m
        .forward(&mut m.new_session(256, KvType::F32), &ids, true)
        .unwrap();
    let tokens = engine.generate(prompt, &cfg, |_| true).unwrap().tokens;
    (logits, tokens)
}

/// `bytes` at every SIMD level this CPU runs gives the scalar reference's
/// results: the logits to the rounding of the F16 head's dot product (every
/// other operation is bit-identical across levels: integer kernels exact,
/// attention, RMSNorm, RoPE and quantization in the reference's order) and
/// the same greedy tokens.
fn assert_levels_match_scalar(name: &str, bytes: &[u8], prompts: &[&str], max_tokens: usize) {
    use bitnet::backend::kernels::SimdLevel;
    for prompt in prompts {
        let (want_logits, want_tokens) = run_at_level(bytes, SimdLevel::Scalar, prompt, max_tokens);
        // (A model may stop early at its end-of-text token: the levels
        // must then stop at the same place.)
        assert!(!want_tokens.is_empty(), "{name} {prompt:?}: no tokens");
        for level in SimdLevel::ALL {
            if !level.supported() {
                eprintln!("{level}: not supported on this CPU, skipped");
                continue;
            }
            let (logits, tokens) = run_at_level(bytes, level, prompt, max_tokens);
            let scale = want_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = logits
                .iter()
                .zip(&want_logits)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-5 * scale,
                "{name} {level}: logits differ by {diff}"
            );
            assert_eq!(
                tokens, want_tokens,
                "{name} {level} {prompt:?}: greedy tokens"
            );
        }
    }
}

/// Every level against the scalar reference on the generated fixture, in
/// every ternary format.
#[test]
fn every_simd_level_matches_scalar() {
    for ty in [GgmlType::I2_S, GgmlType::TQ2_0, GgmlType::TQ1_0] {
        let bytes = FixtureConfig::tiny(ty).to_bytes().unwrap();
        assert_levels_match_scalar(&ty.to_string(), &bytes, &["Hello there, general"], 6);
    }
}

/// The same on the reference tiny models shipped in `models/`: the random
/// fixture and the trained model (whose greedy continuations are checked
/// against transformers in `trained.rs`), 16 greedy tokens of two prompts
/// each.
#[test]
fn every_simd_level_matches_scalar_on_the_reference_models() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    for name in ["tiny-bitnet-i2s.gguf", "tiny-bitnet-trained-i2s.gguf"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert_levels_match_scalar(name, &bytes, &["Once upon a time", "1, 2, 3,"], 16);
    }
}

/// The lookup-table kernels (TL1, TL2: weights repacked at load) and TQ1_0
/// widened to TQ2_0 (`tq2`) compute the same exact integer sums as the
/// packed ones on the file's layout, so the logits of a prompt and the
/// greedy tokens are identical, bit for bit, for every ternary format, at
/// the scalar level and the best one this CPU runs.
#[test]
fn lookup_table_kernels_equal_the_packed_ones() {
    use bitnet::backend::cpu::TernaryKernels;
    use bitnet::backend::kernels::SimdLevel;
    use bitnet::{Engine, GenerationConfig};
    let cfg = GenerationConfig {
        max_tokens: Some(6),
        ..GenerationConfig::greedy()
    };
    for ty in [GgmlType::I2_S, GgmlType::TQ2_0, GgmlType::TQ1_0] {
        let bytes = FixtureConfig::tiny(ty).to_bytes().unwrap();
        for level in [SimdLevel::Scalar, SimdLevel::detect()] {
            let run = |kernels: &str| {
                let file = Arc::new(GgufFile::from_vec(bytes.clone()).unwrap());
                let backend = CpuBackend::with_level(level)
                    .unwrap()
                    .with_ternary_kernels(kernels.parse::<TernaryKernels>().unwrap());
                let engine = Engine::load(file, backend).unwrap();
                let prompt = engine.tokenizer.encode("Hello there, general", true);
                let m = &engine.model;
                let logits = m
                    .forward(&mut m.new_session(64, KvType::F32), &prompt, true)
                    .unwrap();
                let tokens = engine
                    .generate("Hello there, general", &cfg, |_| true)
                    .unwrap()
                    .tokens;
                (logits, tokens)
            };
            let want = run("i2s");
            for kernels in ["tq2", "tl1", "tl2"] {
                assert_eq!(run(kernels), want, "{ty} {level} {kernels}");
            }
        }
    }
}

/// Kernels that read their own copy of some weights (TQ1_0 widened to
/// TQ2_0, the lookup tables, a compact head) give the file's pages of those
/// tensors back once the copy is made: after load the map holds a small
/// part of what was copied, and the model still reads the file's other
/// tensors (and a tied table's embedding rows) as before.
#[cfg(target_os = "linux")]
#[test]
fn weights_copied_at_load_leave_the_resident_set() {
    use bitnet::backend::cpu::TernaryKernels;
    use bitnet::OutputTable;
    let mut cfg = FixtureConfig::tiny(GgmlType::TQ1_0);
    // Tensors of many pages each: a page fault maps up to 64 KiB around it
    // (Linux's fault-around), which may take back a few pages at the ends
    // of a tensor already released.
    (cfg.n_embd, cfg.n_ff, cfg.n_head, cfg.n_vocab) = (1024, 4096, 8, 1024);
    let dir = std::env::temp_dir().join(format!("bitnet-rt-copied-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tq1.gguf");
    cfg.write_file(&path).unwrap();
    let in_memory = Arc::new(GgufFile::from_vec(std::fs::read(&path).unwrap()).unwrap());
    let backend = |kernels: &str, output| {
        CpuBackend::new()
            .with_ternary_kernels(kernels.parse::<TernaryKernels>().unwrap())
            .with_output_table(output)
    };
    // A model loaded from a fresh map, and how much of that map is resident.
    let load = |kernels: &str, output| {
        let file = Arc::new(GgufFile::open(&path).unwrap());
        let m = BitNet::load(file.clone(), backend(kernels, output)).unwrap();
        let first = file.tensor_data(&file.tensor_infos()[0]).as_ptr();
        (m, common::resident_bytes_of_mapping(first), file)
    };
    // The file's kernels read every TQ1_0 block's scale at load (so those
    // pages are resident), and one row of the embedding table.
    let (_, plain, file) = load("i2s", OutputTable::File);
    for (kernels, output) in [
        ("tq2", OutputTable::File),
        ("tl1", OutputTable::File),
        ("i2s", OutputTable::Int8),
        ("i2s", OutputTable::Int6),
    ] {
        let (m, resident, _) = load(kernels, output);
        // Without the release: `plain`, plus the whole table for the head.
        let head = output != OutputTable::File;
        let copied: u64 = (file.tensor_infos().iter())
            .filter(|t| {
                if head {
                    t.name == "token_embd.weight"
                } else {
                    t.ty.is_ternary()
                }
            })
            .map(|t| t.size)
            .sum();
        let kept = plain + if head { copied } else { 0 };
        assert!(
            resident + copied / 2 < kept,
            "{kernels} {output:?}: {resident} bytes resident after copying {copied} \
             (the file's kernels: {plain})"
        );
        let logits = m
            .forward(&mut m.new_session(16, KvType::F32), &PROMPT, true)
            .unwrap();
        let want = BitNet::load(in_memory.clone(), backend(kernels, output)).unwrap();
        let want = want
            .forward(&mut want.new_session(16, KvType::F32), &PROMPT, true)
            .unwrap();
        assert_eq!(logits, want, "{kernels} {output:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

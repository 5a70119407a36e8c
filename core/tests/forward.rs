//! The forward pass on fixtures: the same weights in I2_S, TQ1_0 and TQ2_0
//! give identical logits; a prompt processed as one batch gives the same
//! logits as token by token; bad input is refused with a clear error.

use std::sync::Arc;

use bitnet::backend::cpu::CpuBackend;
use bitnet::fixture::FixtureConfig;
use bitnet::gguf::GgufFile;
use bitnet::model::{BitNet, ModelError};
use bitnet::GgmlType;

fn model(ty: GgmlType) -> BitNet<CpuBackend> {
    let file = GgufFile::from_vec(FixtureConfig::tiny(ty).to_bytes().unwrap()).unwrap();
    BitNet::load(Arc::new(file), CpuBackend).unwrap()
}

const PROMPT: [u32; 7] = [496, 10, 200, 3, 77, 300, 5];

#[test]
fn every_ternary_format_gives_the_same_logits() {
    let mut all = Vec::new();
    for ty in [GgmlType::I2_S, GgmlType::TQ1_0, GgmlType::TQ2_0] {
        let m = model(ty);
        let mut s = m.new_session(64);
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
    let mut batch = m.new_session(64);
    let all = m.forward(&mut batch, &PROMPT, true).unwrap();
    let mut step = m.new_session(64);
    for (i, &t) in PROMPT.iter().enumerate() {
        let logits = m.forward(&mut step, &[t], false).unwrap();
        assert_eq!(logits, all[i * 512..(i + 1) * 512], "position {i}");
    }
    assert_eq!(step.len(), PROMPT.len());
}

#[test]
fn bad_input_is_refused() {
    let m = model(GgmlType::TQ2_0);
    let mut s = m.new_session(4);
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

#[test]
fn generation_stops_and_cancels() {
    use bitnet::{Engine, GenerationConfig, StopReason};
    let file = GgufFile::from_vec(FixtureConfig::tiny(GgmlType::I2_S).to_bytes().unwrap()).unwrap();
    let engine = Engine::load(Arc::new(file), CpuBackend).unwrap();
    let cfg = GenerationConfig {
        max_tokens: Some(5),
        ..GenerationConfig::greedy()
    };
    let mut text = String::new();
    let stats = engine
        .generate("Hello", &cfg, 0, |t| {
            text.push_str(t);
            true
        })
        .unwrap();
    assert_eq!(stats.stop_reason, StopReason::MaxTokens);
    assert_eq!(stats.generated_tokens, 5);
    assert_eq!(text, engine.tokenizer.decode(&stats.tokens));
    // Same settings, same tokens.
    let again = engine.generate("Hello", &cfg, 0, |_| true).unwrap();
    assert_eq!(again.tokens, stats.tokens);
    // Cancel at the first piece of text.
    let cancel = engine.generate("Hello", &cfg, 0, |_| false).unwrap();
    assert_eq!(cancel.stop_reason, StopReason::Cancelled);
    // A context smaller than the prompt: a clear error, nothing generated.
    let err = engine
        .generate("Hello there, a longer prompt", &cfg, 4, |_| true)
        .unwrap_err();
    assert!(err.to_string().contains("but the context holds 4"), "{err}");
    // Context full: stops cleanly.
    let full = GenerationConfig {
        max_tokens: None,
        ..cfg
    };
    let stats = engine.generate("Hello", &full, 10, |_| true).unwrap();
    assert!(matches!(
        stats.stop_reason,
        StopReason::ContextFull | StopReason::EndOfText
    ));
    // The last token is sampled from the last position's logits and needs no
    // slot of its own.
    assert!(stats.prompt_tokens + stats.generated_tokens <= 11);
}

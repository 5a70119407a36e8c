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

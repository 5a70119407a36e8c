//! Our SentencePiece tokenizer against Google's `sentencepiece` library (the
//! independent reference): `tests/reference/spm_goldens.json` holds a
//! 1,000-piece SentencePiece BPE vocabulary (byte fallback, LLaMA's
//! <unk>/<s>/</s> at 0/1/2) and over 1,000 varied strings with the ids
//! `sentencepiece` gives (no BOS) and its decoded text. We write the
//! vocabulary as GGUF tokenizer metadata, exactly as llama.cpp's converter
//! stores a LLaMA tokenizer, and read it back through `GgufFile`.

mod common;
use common::ids;

use std::path::Path;

use bitnet::gguf::{Array, GgufFile, GgufWriter, StringArray, Value};
use bitnet::tokenizer::{StreamDecoder, Tokenizer};
use serde_json::Value as Json;

fn golden() -> Json {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/spm_goldens.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The golden vocabulary as GGUF tokenizer metadata.
fn add_tokenizer(w: &mut GgufWriter, g: &Json) {
    let pieces: StringArray = g["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let scores: Vec<f32> = g["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap() as f32)
        .collect();
    let types: Vec<i32> = g["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap() as i32)
        .collect();
    let id = |k: &str| Value::U32(g[k].as_u64().unwrap() as u32);
    let mut add = |k: &str, v: Value| w.add_metadata(k, v).unwrap();
    add("tokenizer.ggml.model", Value::String("llama".into()));
    add("tokenizer.ggml.tokens", Value::Array(Array::String(pieces)));
    add("tokenizer.ggml.scores", Value::Array(Array::F32(scores)));
    add("tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
    add("tokenizer.ggml.bos_token_id", id("bos_id"));
    add("tokenizer.ggml.eos_token_id", id("eos_id"));
    add("tokenizer.ggml.unknown_token_id", id("unk_id"));
    add(
        "tokenizer.ggml.add_space_prefix",
        Value::Bool(g["add_space_prefix"].as_bool().unwrap()),
    );
    add("tokenizer.ggml.add_bos_token", Value::Bool(true));
}

/// The golden vocabulary as a GGUF file with tokenizer keys only.
fn load(g: &Json) -> Tokenizer {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()))
        .unwrap();
    add_tokenizer(&mut w, g);
    let file = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
    Tokenizer::from_metadata(file.metadata()).unwrap()
}

/// A 1bitLLM-style model (architecture `bitnet`: sub-norms, SiLU) with this
/// SentencePiece vocabulary runs end to end: prompt in, text out.
#[test]
fn bitnet_model_with_sentencepiece_vocabulary_generates() {
    use std::sync::Arc;

    use bitnet::backend::cpu::CpuBackend;
    use bitnet::fixture::FixtureConfig;
    use bitnet::{Engine, GenerationConfig, GgmlType, StopReason};

    let g = golden();
    let n_vocab = g["pieces"].as_array().unwrap().len() as u64;
    let fixture = FixtureConfig {
        architecture: "bitnet".into(),
        n_vocab,
        ..FixtureConfig::tiny(GgmlType::TQ2_0)
    };
    // The fixture's tensors and model keys, with our tokenizer instead of its.
    let src = GgufFile::from_vec(fixture.to_bytes().unwrap()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata().iter() {
        if !k.starts_with("tokenizer.") {
            w.add_metadata(k, v.clone()).unwrap();
        }
    }
    add_tokenizer(&mut w, &g);
    for t in src.tensors() {
        w.add_tensor(&t.info.name, &t.info.dims, t.info.ty, t.data.to_vec())
            .unwrap();
    }
    let file = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
    let engine = Engine::load(Arc::new(file), CpuBackend::new()).unwrap();
    assert_eq!(engine.model.cfg.architecture, "bitnet");
    let cfg = GenerationConfig {
        max_tokens: Some(8),
        ..GenerationConfig::greedy()
    };
    let mut text = String::new();
    let stats = engine
        .generate("The cat sat", &cfg, |t| {
            text.push_str(t);
            true
        })
        .unwrap();
    let prompt = engine.tokenizer.encode("The cat sat", true);
    assert_eq!(prompt[0], 1, "BOS first");
    assert_eq!(stats.prompt_tokens, prompt.len());
    if stats.stop_reason == StopReason::MaxTokens {
        assert_eq!(stats.generated_tokens, 8);
    }
    // Streamed text is the generated ids decoded, spaces as spaces.
    let mut dec = StreamDecoder::new();
    let streamed: String = stats
        .tokens
        .iter()
        .map(|&t| dec.push(&engine.tokenizer, t))
        .collect::<String>()
        + &dec.finish();
    assert_eq!(text, streamed);
    assert!(!text.contains('\u{2581}'), "{text:?}");
}

#[test]
fn ids_and_text_match_sentencepiece() {
    let g = golden();
    let tok = load(&g);
    assert_eq!(tok.vocab_size(), g["pieces"].as_array().unwrap().len());
    let entries = g["entries"].as_array().unwrap();
    assert!(entries.len() >= 1000);
    let (mut id_fail, mut text_fail) = (Vec::new(), Vec::new());
    for e in entries {
        let text = e["text"].as_str().unwrap();
        let expect = ids(&e["ids"]);
        let got = tok.encode(text, false);
        if got != expect {
            id_fail.push(format!("{text:?}: ours {got:?}, sentencepiece {expect:?}"));
        }
        let decoded = tok.decode(&expect);
        if decoded != e["decoded"].as_str().unwrap() {
            text_fail.push(format!(
                "{text:?}: ours {decoded:?}, sentencepiece {}",
                e["decoded"]
            ));
        }
    }
    let n = entries.len();
    eprintln!(
        "{} of {n} strings give sentencepiece's ids, {} its decoded text",
        n - id_fail.len(),
        n - text_fail.len()
    );
    assert!(
        id_fail.is_empty() && text_fail.is_empty(),
        "{} of {n} encodings and {} decodings differ:\n{}",
        id_fail.len(),
        text_fail.len(),
        id_fail
            .iter()
            .chain(&text_fail)
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn bos_is_added_with_add_special() {
    let g = golden();
    let tok = load(&g);
    let bos = g["bos_id"].as_u64().unwrap() as u32;
    assert_eq!(tok.bos, Some(bos));
    assert!(tok.is_stop(g["eos_id"].as_u64().unwrap() as u32));
    for e in g["entries"].as_array().unwrap().iter().step_by(7) {
        let text = e["text"].as_str().unwrap();
        let mut expect = vec![bos];
        expect.extend(ids(&e["ids"]));
        assert_eq!(tok.encode(text, true), expect, "{text:?}");
    }
}

#[test]
fn streaming_keeps_the_leading_space() {
    let g = golden();
    let tok = load(&g);
    let mut n_checked = 0;
    for e in g["entries"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let got = ids(&e["ids"]);
        let decoded = e["decoded"].as_str().unwrap();
        if got.is_empty() {
            continue;
        }
        let mut d = StreamDecoder::new();
        let mut streamed: String = got.iter().map(|&id| d.push(&tok, id)).collect();
        streamed += &d.finish();
        // Everything sentencepiece decodes, with the space the encoder put in
        // front of the text kept.
        assert_eq!(streamed, format!(" {decoded}"), "{text:?}");
        n_checked += 1;
    }
    assert!(n_checked >= 1000);
    // A continuation after a prompt keeps its space.
    let prompt = tok.encode("The cat", true);
    let full = tok.encode("The cat sat on the mat", true);
    assert_eq!(full[..prompt.len()], prompt[..]);
    let mut d = StreamDecoder::new();
    let rest: String = full[prompt.len()..]
        .iter()
        .map(|&id| d.push(&tok, id))
        .collect();
    assert_eq!(rest + &d.finish(), " sat on the mat");
}

/// The model configuration check refuses SentencePiece vocabularies whose
/// scores the tokenizer could not use.
#[test]
fn model_check_validates_scores() {
    use bitnet::fixture::FixtureConfig;
    use bitnet::{BitNetConfig, GgmlType, ModelError};

    let src = GgufFile::from_vec(FixtureConfig::tiny(GgmlType::I2_S).to_bytes().unwrap()).unwrap();
    let n = src
        .metadata()
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    let with_scores = |scores: Option<Value>| {
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata().iter() {
            match k {
                "tokenizer.ggml.model" => w.add_metadata(k, Value::String("llama".into())),
                "tokenizer.ggml.merges" | "tokenizer.ggml.scores" => Ok(()),
                _ => w.add_metadata(k, v.clone()),
            }
            .unwrap();
        }
        if let Some(s) = scores {
            w.add_metadata("tokenizer.ggml.scores", s).unwrap();
        }
        for t in src.tensors() {
            w.add_tensor(&t.info.name, &t.info.dims, t.info.ty, t.data.to_vec())
                .unwrap();
        }
        BitNetConfig::from_gguf(&GgufFile::from_vec(w.to_bytes().unwrap()).unwrap())
    };
    assert!(with_scores(Some(Value::Array(Array::F32(vec![-1.0; n])))).is_ok());
    let mut inf = vec![0.0; n];
    inf[5] = f32::INFINITY;
    for bad in [
        None,
        Some(Value::Array(Array::F32(vec![0.0; n + 1]))),
        Some(Value::Array(Array::F64(vec![0.0; n]))),
        Some(Value::Array(Array::F32(inf))),
    ] {
        match with_scores(bad.clone()) {
            Err(ModelError::Tokenizer(m)) => assert!(m.contains("score"), "{m}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

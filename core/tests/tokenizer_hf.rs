//! Our tokenizer against the `tokenizers` library (the independent
//! reference): `tests/reference/tokenizer_goldens.json` holds over 1,000
//! varied strings (emoji, CJK, whitespace runs, numbers, code, contractions,
//! embedded special tokens) with the ids `tokenizers` gives for the shared
//! `tokenizer.json`, and its decoded text. We read that tokenizer through our
//! converter into GGUF metadata, exactly as a converted model carries it.

mod common;
use common::ids;

use std::path::Path;

use bitnet::chat::{ChatMessage, ChatTemplate};
use bitnet::convert::{convert_hf, ConvertOptions};
use bitnet::gguf::GgufFile;
use bitnet::tokenizer::Tokenizer;
use serde_json::Value;

fn load(tag: &str) -> (Tokenizer, GgufFile, Value) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference");
    let out = std::env::temp_dir().join(format!("bitnet-tok-{}-{tag}.gguf", std::process::id()));
    convert_hf(
        &root.join("goldens/tiny_a"),
        &out,
        &ConvertOptions::default(),
    )
    .unwrap();
    let file = GgufFile::from_vec(std::fs::read(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tokenizer_goldens.json")).unwrap(),
    )
    .unwrap();
    (tok, file, golden)
}

#[test]
fn ids_and_text_match_the_tokenizers_library() {
    let (tok, _, golden) = load("ids");
    let entries = golden["entries"].as_array().unwrap();
    assert!(entries.len() >= 1000);
    let mut failures = Vec::new();
    for e in entries {
        let text = e["text"].as_str().unwrap();
        let expect = ids(&e["ids"]);
        let got = tok.encode(text, false);
        if got != expect {
            failures.push(format!("{text:?}: ours {got:?}, tokenizers {expect:?}"));
            continue;
        }
        if let Some(with) = e.get("ids_add_special") {
            assert_eq!(tok.encode(text, true), ids(with), "{text:?} with BOS");
        }
        assert_eq!(
            tok.decode(&got),
            e["decoded"].as_str().unwrap(),
            "{text:?}: decode"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} strings differ:\n{}",
        failures.len(),
        entries.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

#[test]
fn chat_template_renders_like_transformers() {
    let (tok, file, golden) = load("chat");
    let ex = &golden["chat_example"];
    let messages: Vec<ChatMessage> = ex["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    let template = file
        .metadata()
        .get_str("tokenizer.chat_template")
        .unwrap()
        .to_owned();
    let bos = tok.token(tok.bos.unwrap()).unwrap().to_owned();
    let eos = tok.token(tok.eos.unwrap()).unwrap().to_owned();
    let text = ChatTemplate::Jinja(template)
        .render(&messages, &bos, &eos)
        .unwrap();
    assert_eq!(text, ex["text"].as_str().unwrap());
    assert_eq!(tok.encode(&text, false), ids(&ex["ids"]));
}

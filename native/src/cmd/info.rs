//! `bitnet-cli info`: what a GGUF file holds, for people (`text`) and
//! scripts (`--json`, with every metadata value in full).

use std::fmt::Write as _;
use std::path::PathBuf;

use bitnet::gguf::{Array, GgufFile, Producer, Value};
use bitnet::model::{Activation, BitNetConfig};
use serde_json::{json, Value as Json};

use crate::ModelSource;

#[derive(clap::Args)]
pub struct Args {
    /// GGUF file to inspect (default: the bundled model).
    #[arg(value_name = "MODEL")]
    path: Option<PathBuf>,
    /// Same as the positional MODEL, llama.cpp style.
    #[arg(short = 'm', long = "model", conflicts_with = "path")]
    model: Option<PathBuf>,
    /// Print JSON (full metadata arrays) instead of text.
    #[arg(long)]
    json: bool,
    /// Also read every tensor: no NaN/Inf in float data or scales, no unused
    /// ternary codes. Exits non-zero on the first bad tensor.
    #[arg(long)]
    check_tensors: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let source = ModelSource::from_option(args.path.or(args.model));
    let started = std::time::Instant::now();
    let file = source.open()?;
    let open_time = started.elapsed();
    if args.check_tensors {
        check_tensors(&file)?;
    }
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&to_json(&file, &source.display()))?;
        s.push('\n');
        s
    } else {
        to_text(&file, &source.display(), open_time)
    };
    crate::cmd::tools::write_stdout(out.as_bytes())
}

fn check_tensors(file: &GgufFile) -> anyhow::Result<()> {
    for t in file.tensors() {
        let n = usize::try_from(t.info.n_elements)?;
        bitnet::quant::check_values(t.info.ty, t.data, n)
            .map_err(|e| anyhow::anyhow!("tensor {:?} ({}): {e}", t.info.name, t.info.ty))?;
    }
    Ok(())
}

struct Totals {
    params: u64,
    bytes: u64,
    ternary_params: u64,
    ternary_bytes: u64,
}

fn totals(file: &GgufFile) -> Totals {
    let mut t = Totals {
        params: 0,
        bytes: 0,
        ternary_params: 0,
        ternary_bytes: 0,
    };
    for info in file.tensor_infos() {
        t.params += info.n_elements;
        t.bytes += info.size;
        if info.ty.is_ternary() {
            t.ternary_params += info.n_elements;
            t.ternary_bytes += info.size;
        }
    }
    t
}

fn bpw(bytes: u64, params: u64) -> f64 {
    if params == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / params as f64
    }
}

fn producer_name(p: Producer) -> &'static str {
    match p {
        Producer::BitnetCpp => "bitnet.cpp",
        Producer::Upstream => "ggml/llama.cpp",
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.2} K", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2} M", n as f64 / 1e6),
        _ => format!("{:.2} B", n as f64 / 1e9),
    }
}

fn to_text(file: &GgufFile, name: &str, open_time: std::time::Duration) -> String {
    let h = file.header();
    let t = totals(file);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "file:          {name} ({})",
        human_bytes(file.file_len())
    );
    let _ = writeln!(s, "GGUF version:  {}", h.version);
    let _ = writeln!(
        s,
        "architecture:  {}",
        h.metadata.architecture().unwrap_or("(none)")
    );
    let _ = writeln!(s, "type ids:      {}", producer_name(h.producer));
    let _ = writeln!(s, "alignment:     {}", h.alignment);
    let _ = writeln!(
        s,
        "tensors:       {} ({} of data from offset {})",
        h.tensors.len(),
        human_bytes(t.bytes),
        h.data_start
    );
    let _ = writeln!(
        s,
        "parameters:    {} ({}), {:.4} bits per weight",
        human_count(t.params),
        t.params,
        bpw(t.bytes, t.params)
    );
    if t.ternary_params > 0 {
        let _ = writeln!(
            s,
            "ternary:       {} ({}), {:.4} bits per weight",
            human_count(t.ternary_params),
            t.ternary_params,
            bpw(t.ternary_bytes, t.ternary_params)
        );
    }
    let _ = writeln!(s, "model check:   {}", model_check_text(file));
    let _ = writeln!(s, "opened in:     {:.3} ms", open_time.as_secs_f64() * 1e3);

    let _ = writeln!(s, "\nmetadata ({} keys):", h.metadata.len());
    let width = h.metadata.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in h.metadata.iter() {
        let mut shown = value.to_string();
        if shown.chars().count() > 160 {
            shown = shown.chars().take(157).collect::<String>() + "...";
        }
        let _ = writeln!(
            s,
            "  {key:width$}  {:7}  {shown}",
            value.value_type().name()
        );
    }

    let _ = writeln!(s, "\ntensors ({}):", h.tensors.len());
    let name_w = h
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        s,
        "  {:>5}  {:name_w$}  {:7}  {:>18}  {:>12}  {:>12}",
        "#", "name", "type", "shape", "bytes", "offset"
    );
    for (i, info) in h.tensors.iter().enumerate() {
        let shape = info
            .dims
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" x ");
        let _ = writeln!(
            s,
            "  {i:>5}  {:name_w$}  {:7}  {shape:>18}  {:>12}  {:>12}",
            info.name,
            info.ty.name(),
            info.size,
            info.offset
        );
    }
    s
}

fn model_check_text(file: &GgufFile) -> String {
    match BitNetConfig::from_gguf(file) {
        Ok(c) => format!(
            "ok: {} layers, width {}, FFN {} ({}), {}/{} heads, {} weights, {} LM head",
            c.n_layers,
            c.n_embd,
            c.n_ff,
            match c.activation {
                Activation::Relu2 => "ReLU²",
                Activation::Silu => "SiLU",
            },
            c.n_head,
            c.n_head_kv,
            c.weight_type,
            if c.tied_embeddings {
                "tied"
            } else {
                "separate"
            }
        ),
        Err(e) => format!("not runnable: {e}"),
    }
}

fn model_check_json(file: &GgufFile) -> Json {
    match BitNetConfig::from_gguf(file) {
        Ok(c) => json!({
            "ok": true,
            "n_vocab": c.n_vocab,
            "n_ctx": c.n_ctx,
            "n_embd": c.n_embd,
            "n_layers": c.n_layers,
            "n_ff": c.n_ff,
            "n_head": c.n_head,
            "n_head_kv": c.n_head_kv,
            "head_dim": c.head_dim,
            "rope_dim": c.rope_dim,
            "rope_theta": c.rope_theta,
            "rms_eps": c.rms_eps,
            "activation": format!("{:?}", c.activation),
            "sub_norms": c.sub_norms,
            "tied_embeddings": c.tied_embeddings,
            "weight_type": c.weight_type.name(),
        }),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    }
}

fn to_json(file: &GgufFile, name: &str) -> Json {
    let h = file.header();
    let t = totals(file);
    let metadata: Vec<Json> = h
        .metadata
        .iter()
        .map(|(k, v)| {
            let mut entry =
                json!({ "key": k, "type": v.value_type().name(), "value": value_json(v) });
            if let Value::Array(a) = v {
                entry["element_type"] = json!(a.element_type().name());
            }
            entry
        })
        .collect();
    let tensors: Vec<Json> = h
        .tensors
        .iter()
        .map(|info| {
            json!({
                "name": info.name,
                "type": info.ty.name(),
                "type_id": info.ty.id(),
                "shape": info.dims,
                "n_elements": info.n_elements,
                "bytes": info.size,
                "offset": info.offset,
                "file_offset": h.data_start + info.offset,
            })
        })
        .collect();
    json!({
        "file": name,
        "file_size": file.file_len(),
        "version": h.version,
        "architecture": h.metadata.architecture(),
        "type_ids": producer_name(h.producer),
        "alignment": h.alignment,
        "data_offset": h.data_start,
        "n_tensors": h.tensors.len(),
        "n_params": t.params,
        "bits_per_weight": bpw(t.bytes, t.params),
        "n_ternary_params": t.ternary_params,
        "ternary_bits_per_weight": bpw(t.ternary_bytes, t.ternary_params),
        "model_check": model_check_json(file),
        "metadata": metadata,
        "tensors": tensors,
    })
}

fn float_json(v: f64) -> Json {
    // JSON has no NaN/Inf; scripts get them as strings rather than a silent null.
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => float_json(f64::from(*x)),
        Value::F64(x) => float_json(*x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(a) => array_json(a),
    }
}

fn array_json(a: &Array) -> Json {
    match a {
        Array::U8(v) => json!(v),
        Array::I8(v) => json!(v),
        Array::U16(v) => json!(v),
        Array::I16(v) => json!(v),
        Array::U32(v) => json!(v),
        Array::I32(v) => json!(v),
        Array::U64(v) => json!(v),
        Array::I64(v) => json!(v),
        Array::F32(v) => Json::Array(v.iter().map(|&x| float_json(f64::from(x))).collect()),
        Array::F64(v) => Json::Array(v.iter().map(|&x| float_json(x)).collect()),
        Array::Bool(v) => json!(v),
        Array::String(v) => Json::Array(v.iter().map(|s| json!(s)).collect()),
        Array::Array(v) => Json::Array(v.iter().map(array_json).collect()),
    }
}

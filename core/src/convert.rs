//! Hugging Face checkpoint → GGUF, for BitNet b1.58 models saved in the
//! `microsoft/bitnet-b1.58-2B-4T` layout (`model_type: bitnet` → GGUF
//! architecture `bitnet-b1.58`, with sub-norms) and for Llama-architecture
//! ternary models (`model_type: llama` with a BitNet `quantization_config`,
//! as HF1BitLLM/Llama3-8B-1.58 and Falcon3-1.58bit → GGUF `llama`, no
//! sub-norms, SiLU, Q/K rows reordered for llama.cpp's RoPE pairing).
//!
//! Inputs: `config.json`, `model.safetensors` (or a sharded index),
//! `tokenizer.json` and `tokenizer_config.json`. Ternary projections arrive
//! packed (uint8 `[M/4, K]`: byte `[i, k]` holds rows i, i+M/4, i+2M/4,
//! i+3M/4 in bit pairs 1-0, 3-2, 5-4, 7-6, code − 1 = weight) with one
//! `weight_scale` each, multiplied by (`linear_class: autobitlinear`, 2B4T)
//! or divided by (the legacy default `bitlinear`) as `quantization_config`
//! says; float checkpoints without a stored scale are ternarised with
//! absmean (scale = mean |W|), as transformers' online mode does. Norms and the
//! embedding keep their values (embedding type chosen by the caller).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::Value as Json;

use crate::gguf::{Array, GgmlType, GgufWriter, StringArray, Value, WriteError};
use crate::model::config::{ternary_file_type, HParams};
use crate::quant;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {reason}")]
    Format { file: String, reason: String },
    #[error("config.json: {0}")]
    Config(String),
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_json(path: &Path) -> Result<Json, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| ConvertError::Format {
        file: path.display().to_string(),
        reason: e.to_string(),
    })
}

// ---------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------

struct StTensor {
    dtype: String,
    shape: Vec<usize>,
    file: usize,
    start: usize,
    end: usize,
}

/// The tensors of one checkpoint, across its shard files (read fully: the
/// checkpoints we convert are small; the 2B4T one is 1.2 GB).
struct SafeTensors {
    files: Vec<Vec<u8>>,
    tensors: HashMap<String, StTensor>,
}

/// A JSON array of non-negative integers (anything else is dropped).
fn usizes(v: &Json) -> Vec<usize> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64().map(|v| v as usize))
                .collect()
        })
        .unwrap_or_default()
}

impl SafeTensors {
    fn open(dir: &Path) -> Result<SafeTensors, ConvertError> {
        let single = dir.join("model.safetensors");
        let shards: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else {
            let index = dir.join("model.safetensors.index.json");
            let json = read_json(&index)?;
            let mut names: Vec<String> = json["weight_map"]
                .as_object()
                .ok_or_else(|| ConvertError::Format {
                    file: index.display().to_string(),
                    reason: "no weight_map".into(),
                })?
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        };
        let mut st = SafeTensors {
            files: Vec::new(),
            tensors: HashMap::new(),
        };
        for path in shards {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            st.add_file(&path, bytes)?;
        }
        Ok(st)
    }

    fn add_file(&mut self, path: &Path, bytes: Vec<u8>) -> Result<(), ConvertError> {
        let bad = |reason: String| ConvertError::Format {
            file: path.display().to_string(),
            reason,
        };
        let n = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .ok_or_else(|| bad("shorter than 8 bytes".into()))?;
        let header_end = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_add(8))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| bad(format!("header length {n} exceeds the file")))?;
        let header: Json =
            serde_json::from_slice(&bytes[8..header_end]).map_err(|e| bad(e.to_string()))?;
        let data_len = bytes.len() - header_end;
        let file = self.files.len();
        for (name, info) in header
            .as_object()
            .ok_or_else(|| bad("header is not an object".into()))?
        {
            if name == "__metadata__" {
                continue;
            }
            let dtype = info["dtype"].as_str().unwrap_or_default().to_owned();
            let shape = usizes(&info["shape"]);
            let offs = usizes(&info["data_offsets"]);
            let [start, end] = offs[..] else {
                return Err(bad(format!("{name}: bad data_offsets")));
            };
            if start > end || end > data_len {
                return Err(bad(format!(
                    "{name}: data_offsets {start}..{end} outside {data_len} bytes"
                )));
            }
            self.tensors.insert(
                name.clone(),
                StTensor {
                    dtype,
                    shape,
                    file,
                    start: header_end + start,
                    end: header_end + end,
                },
            );
        }
        self.files.push(bytes);
        Ok(())
    }

    fn get(&self, name: &str) -> Result<&StTensor, ConvertError> {
        self.tensors.get(name).ok_or_else(|| ConvertError::Tensor {
            name: name.into(),
            reason: "missing from the checkpoint".into(),
        })
    }

    fn bytes(&self, t: &StTensor) -> &[u8] {
        &self.files[t.file][t.start..t.end]
    }

    /// Any float tensor as f32.
    fn f32s(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), ConvertError> {
        let t = self.get(name)?;
        let b = self.bytes(t);
        let v: Vec<f32> = match t.dtype.as_str() {
            "F32" => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "F16" => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "BF16" => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ConvertError::Tensor {
                    name: name.into(),
                    reason: format!("dtype {other} is not a float type"),
                })
            }
        };
        Ok((v, t.shape.clone()))
    }
}

// ---------------------------------------------------------------------------
// Conversion
// ---------------------------------------------------------------------------

/// What to write.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// I2_S (default, bitnet.cpp's layout), TQ2_0 or TQ1_0.
    pub weight_type: GgmlType,
    /// Embedding type; `None` keeps the checkpoint's (F32, F16 or BF16).
    pub embedding_type: Option<GgmlType>,
    pub name: Option<String>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            weight_type: GgmlType::I2_S,
            embedding_type: None,
            name: None,
        }
    }
}

/// How a packed checkpoint's `weight_scale` turns ternary codes back into
/// weights (formats.md section 1): transformers' `AutoBitLinear` (2B4T,
/// `linear_class: autobitlinear`) multiplies by it; the legacy `BitLinear`
/// (the default class: Llama3-8B-1.58, Falcon3-1.58bit) divides by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScaleRule {
    Multiply,
    Divide,
}

struct Cfg {
    /// GGUF architecture: `bitnet-b1.58` (sub-norms) or `llama` (none).
    arch: &'static str,
    n_vocab: u64,
    n_embd: u64,
    n_ff: u64,
    n_layers: u64,
    n_head: u64,
    n_head_kv: u64,
    n_ctx: u64,
    eps: f32,
    theta: f32,
    tied: bool,
    act: String,
    /// `None`: no quantization_config, float weights ternarised here.
    scale_rule: Option<ScaleRule>,
}

fn read_config(dir: &Path) -> Result<Cfg, ConvertError> {
    let c = read_json(&dir.join("config.json"))?;
    let cfg_err = |m: String| ConvertError::Config(m);
    let model_type = c["model_type"].as_str().unwrap_or_default();
    // transformers' defaults per model type.
    let (arch, default_act, default_eps) = match model_type {
        "bitnet" => ("bitnet-b1.58", "relu2", 1e-5),
        "llama" => ("llama", "silu", 1e-6),
        other => {
            return Err(cfg_err(format!(
                "model_type {other:?} is not supported (supported: bitnet, llama)"
            )))
        }
    };
    let int = |k: &str| {
        c[k].as_u64()
            .ok_or_else(|| cfg_err(format!("missing integer {k}")))
    };
    let n_head = int("num_attention_heads")?;
    let n_embd = int("hidden_size")?;
    if n_head == 0 || n_embd % n_head != 0 {
        return Err(cfg_err(format!(
            "num_attention_heads {n_head} does not divide hidden_size {n_embd}"
        )));
    }
    if let Some(hd) = c["head_dim"].as_u64() {
        if hd != n_embd / n_head {
            return Err(cfg_err(format!(
                "head_dim {hd} differs from hidden_size / num_attention_heads = {} (not supported)",
                n_embd / n_head
            )));
        }
    }
    for k in ["attention_bias", "mlp_bias"] {
        if c[k].as_bool() == Some(true) {
            return Err(cfg_err(format!("{k} = true is not supported")));
        }
    }
    // transformers 5 keeps RoPE settings in rope_parameters, older files at
    // the top level; any scaling (linear, dynamic, yarn, llama3) is refused.
    let rope = c.get("rope_parameters").filter(|v| v.is_object());
    let theta = rope
        .and_then(|r| r["rope_theta"].as_f64())
        .or_else(|| c["rope_theta"].as_f64())
        .unwrap_or(10_000.0) as f32;
    let rope_type = rope
        .and_then(|r| r["rope_type"].as_str())
        .unwrap_or("default");
    if rope_type != "default" || !c["rope_scaling"].is_null() {
        return Err(cfg_err(format!(
            "RoPE scaling ({}) is not supported",
            if rope_type != "default" {
                rope_type.to_owned()
            } else {
                c["rope_scaling"].to_string()
            }
        )));
    }
    Ok(Cfg {
        arch,
        n_vocab: int("vocab_size")?,
        n_embd,
        n_ff: int("intermediate_size")?,
        n_layers: int("num_hidden_layers")?,
        n_head,
        n_head_kv: c["num_key_value_heads"].as_u64().unwrap_or(n_head),
        n_ctx: int("max_position_embeddings")?,
        eps: c["rms_norm_eps"].as_f64().unwrap_or(default_eps) as f32,
        theta,
        // transformers' default for both model types.
        tied: c["tie_word_embeddings"].as_bool().unwrap_or(false),
        act: c["hidden_act"].as_str().unwrap_or(default_act).to_owned(),
        scale_rule: scale_rule(&c["quantization_config"])?,
    })
}

/// The weight_scale rule of `quantization_config`, as transformers applies it.
fn scale_rule(q: &Json) -> Result<Option<ScaleRule>, ConvertError> {
    if q.is_null() {
        return Ok(None);
    }
    let field = |k: &str| q[k].as_str();
    let err = |m: String| Err(ConvertError::Config(format!("quantization_config: {m}")));
    match field("quant_method") {
        Some("bitnet") => {}
        other => return err(format!("quant_method {other:?} is not supported (bitnet)")),
    }
    if q["use_rms_norm"].as_bool() == Some(true) {
        return err("use_rms_norm = true (a norm inside every linear) is not supported".into());
    }
    match (
        field("linear_class").unwrap_or("bitlinear"),
        field("quantization_mode").unwrap_or("offline"),
    ) {
        ("bitlinear", _) => Ok(Some(ScaleRule::Divide)),
        ("autobitlinear", "offline") => Ok(Some(ScaleRule::Multiply)),
        // Online: float weights, quantized with absmean on the fly.
        ("autobitlinear", "online") => Ok(None),
        (class, mode) => err(format!(
            "linear_class {class:?} with quantization_mode {mode:?} is not supported"
        )),
    }
}

/// Ternary weights of a projection as `[m][k]` codes (-1, 0, 1) and the
/// per-tensor scale to multiply by.
fn ternary(
    st: &SafeTensors,
    base: &str,
    k: usize,
    m: usize,
    rule: Option<ScaleRule>,
) -> Result<(Vec<i8>, f32), ConvertError> {
    let name = format!("{base}.weight");
    let t = st.get(&name)?;
    let bad = |reason: String| ConvertError::Tensor {
        name: name.clone(),
        reason,
    };
    let Some(rule) = rule else {
        // No stored scale: absmean ternarisation as transformers' online
        // AutoBitLinear does it (codes = round(W / mean|W|), clamped).
        if t.dtype == "U8" {
            return Err(bad(
                "packed ternary weights, but config.json has no quantization_config saying how to apply weight_scale".into(),
            ));
        }
        let (v, shape) = st.f32s(&name)?;
        if shape != [m, k] {
            return Err(bad(format!("shape {shape:?}, expected [{m}, {k}]")));
        }
        let mean = v.iter().map(|x| x.abs() as f64).sum::<f64>() / v.len().max(1) as f64;
        let inv = 1.0 / (mean as f32).max(1e-5);
        let w = v
            .iter()
            .map(|x| (x * inv).round_ties_even().clamp(-1.0, 1.0) as i8)
            .collect();
        return Ok((w, 1.0 / inv));
    };
    let w = if t.dtype == "U8" {
        if t.shape != [m / 4, k] || !m.is_multiple_of(4) {
            return Err(bad(format!(
                "packed shape {:?}, expected [{}, {k}]",
                t.shape,
                m / 4
            )));
        }
        let packed = st.bytes(t);
        let mut w = vec![0i8; m * k];
        let q = m / 4;
        for i in 0..q {
            for kk in 0..k {
                let b = packed[i * k + kk];
                for j in 0..4 {
                    let code = (b >> (2 * j)) & 3;
                    if code == 3 {
                        return Err(bad(format!("unused code 3 at [{i}, {kk}]")));
                    }
                    w[(i + j * q) * k + kk] = code as i8 - 1;
                }
            }
        }
        w
    } else {
        // Already ternary values stored as floats.
        let (v, shape) = st.f32s(&name)?;
        if shape != [m, k] {
            return Err(bad(format!("shape {shape:?}, expected [{m}, {k}]")));
        }
        if let Some(x) = v.iter().find(|x| !matches!(**x, -1.0 | 0.0 | 1.0)) {
            return Err(bad(format!(
                "quantization_config says offline-quantized, but the weights hold {x}, not only -1, 0, 1"
            )));
        }
        v.iter().map(|&x| x as i8).collect()
    };
    let (s, _) = st.f32s(&format!("{base}.weight_scale"))?;
    let ws = *s.first().ok_or_else(|| bad("empty weight_scale".into()))?;
    if !(ws.is_finite() && ws > 0.0) {
        return Err(bad(format!("weight_scale {ws} must be finite and > 0")));
    }
    let scale = match rule {
        ScaleRule::Multiply => ws,
        ScaleRule::Divide => 1.0 / ws,
    };
    Ok((w, scale))
}

/// llama.cpp's `llama` architecture applies RoPE to adjacent pairs, so its
/// converters reorder each head's Q/K rows: row `i` of the first half and
/// row `i` of the second half become rows `2i` and `2i + 1`. We do the same
/// so our `llama` files match the ones in the wild.
fn interleave_heads(w: &[i8], k: usize, n_head: usize) -> Vec<i8> {
    let rows = w.len() / k;
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0i8; w.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let from = h * hd + j * half + i;
                let to = h * hd + 2 * i + j;
                out[to * k..(to + 1) * k].copy_from_slice(&w[from * k..(from + 1) * k]);
            }
        }
    }
    out
}

fn float_bytes(ty: GgmlType, v: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F16 => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
        GgmlType::BF16 => v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => quant::float::q8_0_quantize(v),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Converts the checkpoint in `dir` and writes the GGUF to `out`.
pub fn convert_hf(dir: &Path, out: &Path, opts: &ConvertOptions) -> Result<u64, ConvertError> {
    let c = read_config(dir)?;
    let st = SafeTensors::open(dir)?;
    let arch = c.arch;
    let bitnet = arch != "llama";
    let mut w = GgufWriter::new();
    let name = opts.name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bitnet".into())
    });
    if ternary_file_type(opts.weight_type).is_none() {
        return Err(ConvertError::Config(format!(
            "--outtype {} is not a ternary type",
            opts.weight_type
        )));
    }
    HParams {
        architecture: arch,
        name,
        weight_type: opts.weight_type,
        n_vocab: c.n_vocab,
        n_ctx: c.n_ctx,
        n_embd: c.n_embd,
        n_layers: c.n_layers,
        n_ff: c.n_ff,
        n_head: c.n_head,
        n_head_kv: c.n_head_kv,
        rms_eps: c.eps,
        rope_theta: c.theta,
    }
    .write(&mut w)?;
    let key = |k: &str| format!("{arch}.{k}");
    match (bitnet, c.act.as_str()) {
        // llama.cpp's BitNet graph reads the activation from this key.
        (true, act @ ("relu2" | "silu")) => {
            w.add_metadata(&key("hidden_activation"), Value::String(act.into()))?
        }
        // The llama architecture is SiLU by definition.
        (false, "silu") => {}
        (_, other) => {
            return Err(ConvertError::Config(format!(
                "hidden_act {other:?} is not supported for model_type {} (supported: {})",
                if bitnet { "bitnet" } else { "llama" },
                if bitnet { "relu2, silu" } else { "silu" }
            )))
        }
    }
    add_tokenizer(&mut w, dir, c.n_vocab)?;

    // Tensors.
    let (emb, shape) = st.f32s("model.embed_tokens.weight")?;
    if shape != [c.n_vocab as usize, c.n_embd as usize] {
        return Err(ConvertError::Tensor {
            name: "model.embed_tokens.weight".into(),
            reason: format!("shape {shape:?}, expected [{}, {}]", c.n_vocab, c.n_embd),
        });
    }
    let emb_ty =
        opts.embedding_type
            .unwrap_or(match st.get("model.embed_tokens.weight")?.dtype.as_str() {
                "F16" => GgmlType::F16,
                "BF16" => GgmlType::BF16,
                _ => GgmlType::F32,
            });
    w.add_tensor(
        "token_embd.weight",
        &[c.n_embd, c.n_vocab],
        emb_ty,
        float_bytes(emb_ty, &emb),
    )?;
    let norm = |w: &mut GgufWriter, from: &str, to: &str, n: u64| -> Result<(), ConvertError> {
        let (v, shape) = st.f32s(from)?;
        if shape != [n as usize] {
            return Err(ConvertError::Tensor {
                name: from.into(),
                reason: format!("shape {shape:?}, expected [{n}]"),
            });
        }
        w.add_tensor(to, &[n], GgmlType::F32, float_bytes(GgmlType::F32, &v))?;
        Ok(())
    };
    norm(&mut w, "model.norm.weight", "output_norm.weight", c.n_embd)?;
    if !c.tied {
        let (v, shape) = st.f32s("lm_head.weight").map_err(|_| {
            ConvertError::Config(
                "tie_word_embeddings is false (transformers' default) but the checkpoint has no lm_head.weight".into(),
            )
        })?;
        if shape != [c.n_vocab as usize, c.n_embd as usize] {
            return Err(ConvertError::Tensor {
                name: "lm_head.weight".into(),
                reason: format!("shape {shape:?}, expected [{}, {}]", c.n_vocab, c.n_embd),
            });
        }
        w.add_tensor(
            "output.weight",
            &[c.n_embd, c.n_vocab],
            emb_ty,
            float_bytes(emb_ty, &v),
        )?;
    }
    let (e, f) = (c.n_embd, c.n_ff);
    let kv = c.n_head_kv * (c.n_embd / c.n_head);
    for i in 0..c.n_layers {
        let hf = |s: &str| format!("model.layers.{i}.{s}");
        let gg = |s: &str| format!("blk.{i}.{s}.weight");
        for (from, to, k, m) in [
            ("self_attn.q_proj", "attn_q", e, e),
            ("self_attn.k_proj", "attn_k", e, kv),
            ("self_attn.v_proj", "attn_v", e, kv),
            ("self_attn.o_proj", "attn_output", e, e),
            ("mlp.gate_proj", "ffn_gate", e, f),
            ("mlp.up_proj", "ffn_up", e, f),
            ("mlp.down_proj", "ffn_down", f, e),
        ] {
            let (mut codes, scale) = ternary(&st, &hf(from), k as usize, m as usize, c.scale_rule)?;
            if !bitnet && (to == "attn_q" || to == "attn_k") {
                let heads = if to == "attn_q" {
                    c.n_head
                } else {
                    c.n_head_kv
                };
                codes = interleave_heads(&codes, k as usize, heads as usize);
            }
            let bytes = quant::encode_ternary(opts.weight_type, &codes, scale).map_err(|err| {
                ConvertError::Tensor {
                    name: hf(from),
                    reason: err.to_string(),
                }
            })?;
            w.add_tensor(&gg(to), &[k, m], opts.weight_type, bytes)?;
        }
        norm(&mut w, &hf("input_layernorm.weight"), &gg("attn_norm"), e)?;
        if bitnet {
            norm(
                &mut w,
                &hf("self_attn.attn_sub_norm.weight"),
                &gg("attn_sub_norm"),
                e,
            )?;
            norm(
                &mut w,
                &hf("mlp.ffn_sub_norm.weight"),
                &gg("ffn_sub_norm"),
                f,
            )?;
        }
        norm(
            &mut w,
            &hf("post_attention_layernorm.weight"),
            &gg("ffn_norm"),
            e,
        )?;
    }
    Ok(w.write_file(out)?)
}

/// The Llama 3 split pattern as tokenizer.json stores it.
fn is_llama3_pattern(p: &str) -> bool {
    p.contains(r"\p{N}{1,3}") && p.contains(r"\s+(?!\S)")
}

fn add_tokenizer(w: &mut GgufWriter, dir: &Path, n_vocab: u64) -> Result<(), ConvertError> {
    let tj = read_json(&dir.join("tokenizer.json"))?;
    let terr = |m: String| ConvertError::Tokenizer(m);
    let model = &tj["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(terr(format!(
            "model type {} is not supported (BPE)",
            model["type"]
        )));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab as usize];
    let mut types = vec![1i32; n_vocab as usize];
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| terr("model.vocab missing".into()))?;
    let mut place = |tok: &str, id: u64| -> Result<(), ConvertError> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            terr(format!(
                "token {tok:?} has id {id}, beyond vocab_size {n_vocab}"
            ))
        })?;
        *slot = Some(tok.to_owned());
        Ok(())
    };
    for (tok, id) in vocab {
        place(tok, id.as_u64().unwrap_or(u64::MAX))?;
    }
    for added in tj["added_tokens"].as_array().into_iter().flatten() {
        let (Some(content), Some(id)) = (added["content"].as_str(), added["id"].as_u64()) else {
            continue;
        };
        place(content, id)?;
        types[id as usize] = if added["special"].as_bool().unwrap_or(false) {
            3
        } else {
            4
        };
    }
    // Ids the tokenizer does not use (padding up to vocab_size).
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5; // unused
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges: StringArray = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
            _ => None,
        })
        .collect();
    let pre = serde_json::to_string(&tj["pre_tokenizer"]).unwrap_or_default();
    let pre_name = if is_llama3_pattern(&pre.replace("\\\\", "\\")) {
        "llama-bpe"
    } else {
        "gpt2"
    };

    let id_of = |name: &str| tokens.iter().position(|t| t == name).map(|i| i as u32);
    let tc = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Json::Null);
    let special = |k: &str| -> Option<String> {
        match &tc[k] {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
            _ => None,
        }
    };
    w.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()))?;
    w.add_metadata("tokenizer.ggml.pre", Value::String(pre_name.into()))?;
    w.add_metadata(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(tokens.iter().collect())),
    )?;
    w.add_metadata("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))?;
    w.add_metadata("tokenizer.ggml.merges", Value::Array(Array::String(merges)))?;
    let bos = special("bos_token")
        .and_then(|t| id_of(&t))
        .or_else(|| id_of("<|begin_of_text|>"));
    let eos = special("eos_token")
        .and_then(|t| id_of(&t))
        .or_else(|| id_of("<|end_of_text|>"));
    if let Some(b) = bos {
        w.add_metadata("tokenizer.ggml.bos_token_id", Value::U32(b))?;
    }
    if let Some(e) = eos {
        w.add_metadata("tokenizer.ggml.eos_token_id", Value::U32(e))?;
    }
    if let Some(e) = id_of("<|eot_id|>") {
        w.add_metadata("tokenizer.ggml.eot_token_id", Value::U32(e))?;
    }
    let add_bos = tc["add_bos_token"].as_bool().unwrap_or_else(|| {
        serde_json::to_string(&tj["post_processor"])
            .is_ok_and(|p| bos.is_some() && p.contains("<|begin_of_text|>"))
    });
    w.add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(add_bos))?;
    if let Some(t) = tc["chat_template"].as_str() {
        w.add_metadata("tokenizer.chat_template", Value::String(t.into()))?;
    }
    Ok(())
}

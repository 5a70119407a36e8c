//! Small bridges to JavaScript: errors, option objects, progress reports,
//! and giving the event loop a turn.

use bitnet::{GenerationConfig, SamplingStrategy};
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// A JavaScript `Error` with `msg`.
pub fn err(msg: &str) -> JsValue {
    js_sys::Error::new(msg).into()
}

/// The text of a thrown value.
pub fn message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// `obj[key]` (undefined when absent or when `obj` is not an object).
pub fn get(obj: &JsValue, key: &str) -> JsValue {
    if !obj.is_object() {
        return JsValue::UNDEFINED;
    }
    Reflect::get(obj, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

/// A number option; present but not a number is an error.
pub fn num(obj: &JsValue, key: &str) -> Result<Option<f64>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_f64()
        .filter(|x| x.is_finite())
        .map(Some)
        .ok_or_else(|| err(&format!("option {key} must be a finite number")))
}

/// A whole, non-negative number option.
pub fn count(obj: &JsValue, key: &str) -> Result<Option<u64>, JsValue> {
    match num(obj, key)? {
        Some(x) if x >= 0.0 && x.fract() == 0.0 && x <= 2f64.powi(53) => Ok(Some(x as u64)),
        Some(_) => Err(err(&format!(
            "option {key} must be a whole number, 0 or more"
        ))),
        None => Ok(None),
    }
}

pub fn string(obj: &JsValue, key: &str) -> Result<Option<String>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_string()
        .map(Some)
        .ok_or_else(|| err(&format!("option {key} must be a string")))
}

pub fn function(obj: &JsValue, key: &str) -> Result<Option<Function>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.dyn_into()
        .map(Some)
        .map_err(|_| err(&format!("option {key} must be a function")))
}

/// A plain object from key/value pairs.
pub fn object(pairs: &[(&str, JsValue)]) -> Object {
    let o = Object::new();
    for (k, v) in pairs {
        // Setting a property on a fresh plain object cannot fail.
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o
}

/// The sampling settings of a generate/chat call, with llama.cpp's names
/// in camelCase and its defaults; `temperature: 0` is greedy.
pub fn generation_config(opts: &JsValue) -> Result<GenerationConfig, JsValue> {
    let mut c = GenerationConfig::default();
    if let Some(t) = num(opts, "temperature")? {
        if t < 0.0 {
            return Err(err("option temperature must be 0 or more"));
        }
        c.temperature = t as f32;
    }
    c.sampling_strategy = if c.temperature <= 0.0 {
        SamplingStrategy::Greedy
    } else {
        SamplingStrategy::TopP
    };
    if let Some(k) = count(opts, "topK")? {
        c.top_k = i32::try_from(k).unwrap_or(i32::MAX);
    }
    if let Some(p) = num(opts, "topP")? {
        c.top_p = p as f32;
    }
    if let Some(p) = num(opts, "minP")? {
        c.min_p = p as f32;
    }
    if let Some(p) = num(opts, "repeatPenalty")? {
        c.repetition_penalty = p as f32;
    }
    if let Some(n) = count(opts, "repeatLastN")? {
        c.repeat_last_n = i32::try_from(n).unwrap_or(i32::MAX);
    }
    if let Some(p) = num(opts, "presencePenalty")? {
        c.presence_penalty = p as f32;
    }
    if let Some(p) = num(opts, "frequencyPenalty")? {
        c.frequency_penalty = p as f32;
    }
    c.seed = count(opts, "seed")?;
    c.max_tokens = Some(count(opts, "maxTokens")?.unwrap_or(256) as usize);
    let stop = get(opts, "stop");
    if let Some(s) = stop.as_string() {
        c.stop = vec![s];
    } else if js_sys::Array::is_array(&stop) {
        c.stop = js_sys::Array::from(&stop)
            .iter()
            .map(|v| {
                v.as_string()
                    .ok_or_else(|| err("option stop holds strings"))
            })
            .collect::<Result<_, _>>()?;
    } else if !stop.is_undefined() && !stop.is_null() {
        return Err(err("option stop is a string or an array of strings"));
    }
    Ok(c)
}

/// Calls `onProgress({phase, loaded, total})` where the caller gave one.
pub struct Progress(pub Option<Function>);

impl Progress {
    pub fn report(&self, phase: &str, loaded: f64, total: Option<f64>) {
        if let Some(f) = &self.0 {
            let total = total.map_or(JsValue::UNDEFINED, JsValue::from_f64);
            let event = object(&[
                ("phase", phase.into()),
                ("loaded", loaded.into()),
                ("total", total),
            ]);
            // A failing progress callback must not stop the load.
            let _ = f.call1(&JsValue::NULL, &event);
        }
    }
}

/// Lets the event loop run (messages such as "stop" reach a worker this
/// way) and resumes at once: a message to ourselves, which, unlike
/// `setTimeout`, is not clamped to 4 ms.
pub async fn yield_now() -> Result<(), JsValue> {
    let channel = web_sys::MessageChannel::new()?;
    let port = channel.port1();
    let done = js_sys::Promise::new(&mut |resolve, _| port.set_onmessage(Some(&resolve)));
    channel.port2().post_message(&JsValue::NULL)?;
    JsFuture::from(done).await?;
    channel.port1().close();
    Ok(())
}

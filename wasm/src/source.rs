//! Where a GGUF comes from: an ArrayBuffer (or typed array), a Blob/File,
//! or a URL. Files and downloads are read chunk by chunk straight into one
//! buffer of the final size (its length is known up front when the server
//! sends Content-Length), so the file is never held twice; the SHA-256 is
//! computed on the way.

use js_sys::{Function, Object, Reflect, Uint8Array};
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::js::{err, get, Progress};

/// Bytes read per step from a Blob.
const BLOB_CHUNK: f64 = (16 << 20) as f64;

/// The file's bytes and their SHA-256 (lowercase hex).
pub struct Loaded {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// Reads `source` (a URL string, a Blob/File, an ArrayBuffer or a typed
/// array). `on_chunk(chunk, offset)`, if given, sees every chunk of a
/// download (the demo writes them to its cache as they arrive).
pub async fn read(
    source: &JsValue,
    progress: &Progress,
    on_chunk: Option<Function>,
) -> Result<Loaded, JsValue> {
    let mut sink = Sink::default();
    if let Some(url) = source.as_string() {
        download(&url, &mut sink, progress, on_chunk.as_ref()).await?;
    } else if let Some(blob) = source.dyn_ref::<web_sys::Blob>() {
        let total = blob.size();
        sink.reserve(total)?;
        let mut at = 0.0;
        progress.report("load", 0.0, Some(total));
        while at < total {
            let end = (at + BLOB_CHUNK).min(total);
            let part = blob.slice_with_f64_and_f64(at, end)?;
            let buf = JsFuture::from(part.array_buffer()).await?;
            sink.push(&Uint8Array::new(&buf))?;
            at = end;
            progress.report("load", at, Some(total));
        }
    } else if source.is_instance_of::<js_sys::ArrayBuffer>() || js_sys::ArrayBuffer::is_view(source)
    {
        let view = if source.is_instance_of::<js_sys::ArrayBuffer>() {
            Uint8Array::new(source)
        } else {
            let v: &Object = source.unchecked_ref();
            let buffer = get(v, "buffer");
            let offset = get(v, "byteOffset").as_f64().unwrap_or(0.0);
            let len = get(v, "byteLength").as_f64().unwrap_or(0.0);
            Uint8Array::new_with_byte_offset_and_length(&buffer, offset as u32, len as u32)
        };
        let total = f64::from(view.length());
        sink.reserve(total)?;
        progress.report("load", 0.0, Some(total));
        sink.push(&view)?;
        progress.report("load", total, Some(total));
    } else {
        return Err(err(
            "a model source is a URL string, a File/Blob, an ArrayBuffer or a Uint8Array",
        ));
    }
    Ok(sink.finish())
}

/// Streams `url` into `sink`, reporting "download" progress.
async fn download(
    url: &str,
    sink: &mut Sink,
    progress: &Progress,
    on_chunk: Option<&Function>,
) -> Result<(), JsValue> {
    let global = js_sys::global();
    let fetch: Function = Reflect::get(&global, &"fetch".into())?
        .dyn_into()
        .map_err(|_| err("this context has no fetch()"))?;
    let response: web_sys::Response = JsFuture::from(js_sys::Promise::from(
        fetch.call1(&global, &JsValue::from_str(url))?,
    ))
    .await
    .map_err(|e| err(&format!("downloading {url}: {}", crate::js::message(&e))))?
    .dyn_into()?;
    if !response.ok() {
        return Err(err(&format!(
            "downloading {url}: HTTP {} {}",
            response.status(),
            response.status_text()
        )));
    }
    let headers = response.headers();
    // With a content encoding (gzip, br), Content-Length counts the
    // compressed bytes: only a hint for the buffer, not the file's size.
    let encoded = headers
        .get("content-encoding")?
        .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
    let announced = headers
        .get("content-length")?
        .and_then(|v| v.parse::<f64>().ok());
    if let Some(t) = announced {
        sink.reserve(t)?;
    }
    let total = announced.filter(|_| !encoded);
    let body = response
        .body()
        .ok_or_else(|| err(&format!("downloading {url}: the response has no body")))?;
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().dyn_into()?;
    progress.report("download", 0.0, total);
    loop {
        let step: Object = JsFuture::from(reader.read()).await?.dyn_into()?;
        if get(&step, "done").as_bool().unwrap_or(false) {
            break;
        }
        let chunk: Uint8Array = get(&step, "value").dyn_into()?;
        if let Some(f) = on_chunk {
            f.call2(&JsValue::NULL, &chunk, &JsValue::from_f64(sink.len()))?;
        }
        sink.push(&chunk)?;
        progress.report("download", sink.len(), total);
    }
    if let Some(t) = total {
        if sink.len() != t {
            return Err(err(&format!(
                "downloading {url}: got {} bytes, the server announced {t}",
                sink.len()
            )));
        }
    }
    Ok(())
}

/// The growing file and its running hash.
#[derive(Default)]
struct Sink {
    bytes: Vec<u8>,
    hash: Sha256,
}

impl Sink {
    fn len(&self) -> f64 {
        self.bytes.len() as f64
    }

    /// Room for the whole file at once: one allocation, no doubling copies.
    fn reserve(&mut self, total: f64) -> Result<(), JsValue> {
        // wasm32 addresses 4 GiB at most.
        if !(0.0..4.0 * (1u64 << 30) as f64).contains(&total) {
            return Err(err(&format!(
                "the model is {total} bytes; the browser's wasm memory holds at most 4 GiB"
            )));
        }
        self.bytes
            .try_reserve_exact(total as usize)
            .map_err(|_| err(&format!("cannot allocate {total} bytes for the model")))
    }

    /// Appends a chunk; running out of memory is an error, not a trap.
    fn push(&mut self, chunk: &Uint8Array) -> Result<(), JsValue> {
        let start = self.bytes.len();
        let n = chunk.length() as usize;
        if self.bytes.capacity() - start < n {
            // Unknown size: grow by doubling, within wasm32's 4 GiB.
            let want = (start + n)
                .max(2 * self.bytes.capacity())
                .min(u32::MAX as usize);
            if want < start + n || self.bytes.try_reserve_exact(want - start).is_err() {
                return Err(err(&format!(
                    "out of memory after {start} bytes of the model (wasm memory holds at most 4 GiB)"
                )));
            }
        }
        self.bytes.resize(start + n, 0);
        chunk.copy_to(&mut self.bytes[start..]);
        self.hash.update(&self.bytes[start..]);
        Ok(())
    }

    fn finish(self) -> Loaded {
        let digest = self.hash.finalize();
        Loaded {
            bytes: self.bytes,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

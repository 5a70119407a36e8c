//! The wgpu backend: the whole forward pass in WGSL compute shaders
//! (`shaders/wgsl`), on Vulkan, Metal, DX12, GL, and WebGPU in the browser.
//!
//! Weights are uploaded once, in their GGUF layout (I2_S, TQ2_0 and TQ1_0 ternary
//! matrices byte for byte; F16/F32 tables split into parts that fit one
//! storage binding). A forward pass is recorded and submitted once; only
//! the logits are read back. See [`gpu`] for how.
//!
//! Two ways in: [`WgpuBackend::new`] picks an adapter and makes its own
//! device; [`WgpuBackend::from_wgpu`] takes a host application's `Device`
//! and `Queue`, checks them, and never asks for a device of its own.
//!
//! Exactness against the CPU reference: activation quantization (int8
//! codes and scale) and the integer sums are identical; float ops (norm,
//! attention, logits) agree to rounding, because sums run in another order.

pub mod device;
mod gpu;
mod profile;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use bitnet_shaders::{Dot4, Halves};
pub use device::{DeviceChoice, WgpuError};
use gpu::{Gpu, GpuBuf, Op};

use super::cpu::{rope_sin_cos, uniform_block_scale};
use super::{bad, find, normed, Backend, BackendError, KvType};
use crate::gguf::{GgmlType, GgufFile};
use crate::model::config::{Activation, BitNetConfig, RopeStyle};
use crate::quant::{self, ternary};

/// A fresh value for [`GpuTensor::gen`]: a new tensor, or one changed in
/// place, never matches an older quantization.
static GENERATION: AtomicU64 = AtomicU64::new(1);

fn next_gen() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// Row-major f32 activations on the device.
pub struct GpuTensor {
    buf: GpuBuf,
    /// Results already read back (all-rows logits larger than a binding).
    host: Option<Vec<f32>>,
    pub rows: usize,
    pub cols: usize,
    gen: u64,
    gpu: Arc<Gpu>,
}

impl GpuTensor {
    fn buf(&self) -> &GpuBuf {
        &self.buf
    }
}

impl Drop for GpuTensor {
    fn drop(&mut self) {
        self.gpu.recycle(&self.buf);
    }
}

/// A ternary matrix, as in the file.
pub struct GpuLinear {
    w: GpuBuf,
    k: usize,
    m: usize,
    /// 0: I2_S; 1, 2: TQ2_0 with one scale / a scale per block; 3, 4: the
    /// same for TQ1_0 (see ternary.wgsl).
    kind: u32,
    scale: f32,
}

pub struct GpuVector {
    buf: GpuBuf,
}

/// A float table in parts of whole rows, each within one binding.
pub struct GpuTable {
    parts: Vec<(GpuBuf, usize, usize)>,
    rows: usize,
    cols: usize,
    /// 0: F32, 1: F16, 2: BF16 (as table.wgsl reads them).
    ty: u32,
}

/// Per layer, the keys and values of `max_seq` positions.
pub struct GpuKvCache {
    k: Vec<GpuBuf>,
    v: Vec<GpuBuf>,
    kv_dim: usize,
    f16: bool,
    /// Why the cache could not be made (reported at the next read).
    error: Option<String>,
}

struct Quantized {
    gen: u64,
    k: usize,
    q: GpuBuf,
    qsum: GpuBuf,
    qscale: GpuBuf,
}

/// The wgpu backend. Cloning shares the device, its pipelines and buffers
/// (models loaded on clones share one queue).
#[derive(Clone)]
pub struct WgpuBackend {
    gpu: Arc<Gpu>,
    name: Arc<str>,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    /// cos/sin tables by (rope_theta bits, rope_dim): the buffer and how
    /// many positions it covers.
    rope: Mutex<HashMap<(u32, u64), (GpuBuf, usize)>>,
    /// The last quantized activations: q, k and v (gate and up) share one.
    quantized: Mutex<Option<Quantized>>,
    tokens: Mutex<Option<GpuBuf>>,
}

/// rope.wgsl's flags: rotate the keys; store keys and values into the
/// cache; the cache holds f16.
const ROTATE: u32 = 1;
const STORE: u32 = 2;
const F16: u32 = 4;

/// Whether rope.wgsl's second part can take the keys: a thread owns two
/// elements (one f16 word) and, in the NEOX pairing, their partners.
fn kv_part_works(cfg: &BitNetConfig) -> bool {
    cfg.head_dim.is_multiple_of(2)
        && (cfg.rope_style == RopeStyle::Norm || cfg.rope_dim.is_multiple_of(4))
}

/// The pairing as rope.wgsl and attention.wgsl take it: 0 NEOX, 1 llama.
fn rope_style(cfg: &BitNetConfig) -> u32 {
    match cfg.rope_style {
        RopeStyle::Neox => 0,
        RopeStyle::Norm => 1,
    }
}

/// The widest row the one-token kernels take: they quantize it into
/// workgroup memory (ternary.wgsl's `qs`, 8 KiB).
const MATVEC_MAX_K: usize = 8192;

/// The norm flag, eps and weight buffer of a one-token kernel (without a
/// norm the weight binding gets `x`, never read).
fn norm_args<'a>(x: &'a GpuTensor, norm: Option<(&'a GpuVector, f32)>) -> (u32, f32, &'a GpuBuf) {
    match norm {
        Some((v, eps)) => (1, eps, &v.buf),
        None => (0, 0.0, x.buf()),
    }
}

/// Workgroups for `n` of them, spread over y past the per-dimension limit
/// (the shaders index `x + y * num_workgroups.x`).
fn grid(n: usize) -> [u32; 3] {
    const MAX: usize = 65535;
    if n <= MAX {
        [n as u32, 1, 1]
    } else {
        [MAX as u32, n.div_ceil(MAX) as u32, 1]
    }
}

/// Choices a caller can make about the shaders.
#[derive(Clone, Copy, Debug, Default)]
pub struct WgpuOptions {
    /// Force one int8 dot product (default: `Packed` where the device
    /// compiles it; the `BITNET_WGPU_DOT4=portable` variable also forces
    /// the portable one).
    pub dot4: Option<bitnet_shaders::Dot4>,
    /// Force one f16-to-f32 conversion in attention and the LM head
    /// (default: the builtin where the device compiles it).
    pub halves: Option<bitnet_shaders::Halves>,
    /// Use at most this many bytes per storage binding even where the
    /// device allows more (tests use it to split small tables).
    pub max_binding: Option<u64>,
    /// Submit after at most this many recorded dispatches (default 64, or
    /// `BITNET_WGPU_SUBMIT_EVERY`; at most 4096; tests use a small number
    /// to check early submits).
    pub max_dispatches: Option<usize>,
}

impl WgpuBackend {
    /// Picks an adapter as `--device` says and creates a device on it.
    /// `DeviceChoice::Auto` with no hardware GPU is an error here; the
    /// caller decides to use the CPU backend instead (see [`device::pick`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(choice: DeviceChoice) -> Result<Self, WgpuError> {
        Self::new_with(choice, WgpuOptions::default())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_with(choice: DeviceChoice, opts: WgpuOptions) -> Result<Self, WgpuError> {
        pollster::block_on(Self::new_async(choice, opts))
    }

    /// [`WgpuBackend::new_with`] as a future: the way to start in the
    /// browser, where nothing may block.
    pub async fn new_async(choice: DeviceChoice, opts: WgpuOptions) -> Result<Self, WgpuError> {
        let adapter = device::pick_async(choice)
            .await?
            .ok_or(WgpuError::NotAGpu(choice))?;
        let (device, queue) = device::request_device_async(&adapter).await?;
        Self::make(device, queue, adapter.get_info(), opts)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self, WgpuError> {
        let (device, queue) = device::request_device(adapter)?;
        Self::from_wgpu(device, queue, adapter.get_info())
    }

    /// Runs on a host application's device. Checks its limits against
    /// [`WgpuBackend::required_limits`] and returns the shortfall as an
    /// error; never requests a device and never waits on the host's queue
    /// (the work it submits is its own, waited for by `read` on the thread
    /// that generates).
    pub fn from_wgpu(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> Result<Self, WgpuError> {
        Self::make(device, queue, info, WgpuOptions::default())
    }

    fn make(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        opts: WgpuOptions,
    ) -> Result<Self, WgpuError> {
        let gpu = Gpu::new(device, queue, info, &opts)?;
        // Browsers do not name their adapter.
        let adapter = match gpu.info.name.as_str() {
            "" => "unnamed adapter",
            n => n,
        };
        let name = format!(
            "wgpu ({adapter}, {:?}, {:?}, int8 dot: {:?})",
            gpu.info.backend, gpu.info.device_type, gpu.dot4
        );
        Ok(WgpuBackend {
            gpu: Arc::new(gpu),
            name: name.into(),
            state: Arc::default(),
        })
    }

    /// What a host's device must allow (ask for at least this).
    pub fn required_limits() -> wgpu::Limits {
        device::required_limits()
    }

    /// Optional features the backend needs: none.
    pub fn required_features() -> wgpu::Features {
        wgpu::Features::empty()
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.gpu.info
    }

    /// Which int8 dot product the shaders use.
    pub fn dot4(&self) -> bitnet_shaders::Dot4 {
        self.gpu.dot4
    }

    /// A device tensor holding `data` (`rows` × `cols`, row-major).
    pub fn upload_tensor(&self, rows: usize, cols: usize, data: &[f32]) -> GpuTensor {
        assert_eq!(data.len(), rows * cols, "upload_tensor: wrong length");
        let t = self.tensor(rows, cols);
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.gpu.write(&t.buf, &bytes);
        t
    }

    /// Runs the activation quantizer alone and reads back its outputs: the
    /// int8 codes, the sum of every 128-code chunk, and each row's scale
    /// (what the tests compare with `quant::act::quantize_row`).
    #[allow(clippy::type_complexity)]
    pub fn quantize_to_host(
        &self,
        x: &GpuTensor,
    ) -> Result<(Vec<i8>, Vec<i32>, Vec<f32>), BackendError> {
        let (q, qsum, qscale) = self.quantize(x);
        let n = x.rows * x.cols;
        let q = self.gpu.read(&q, n as u64)?;
        let qsum = self.gpu.read(&qsum, (n / 128 * 4) as u64)?;
        let qscale = self.gpu.read(&qscale, (x.rows * 4) as u64)?;
        let word = |b: &[u8]| [b[0], b[1], b[2], b[3]];
        Ok((
            q[..n].iter().map(|&b| b as i8).collect(),
            qsum.chunks_exact(4)
                .map(|b| i32::from_le_bytes(word(b)))
                .collect(),
            qscale
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(word(b)))
                .collect(),
        ))
    }

    fn tensor(&self, rows: usize, cols: usize) -> GpuTensor {
        GpuTensor {
            buf: self.gpu.scratch((rows * cols * 4) as u64),
            host: None,
            rows,
            cols,
            gen: next_gen(),
            gpu: self.gpu.clone(),
        }
    }

    /// The cos/sin table for `cfg`, covering at least `positions`.
    fn rope_table(&self, cfg: &BitNetConfig, positions: usize) -> Result<GpuBuf, BackendError> {
        let key = (cfg.rope_theta.to_bits(), cfg.rope_dim);
        let mut tables = self.state.rope.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((buf, n)) = tables.get(&key) {
            if *n >= positions {
                return Ok(buf.clone());
            }
        }
        // Grown in powers of two, so sessions of similar sizes share one.
        let positions = positions.next_power_of_two();
        let half = cfg.rope_dim as usize / 2;
        if (positions * half * 8) as u64 > self.gpu.max_binding() {
            return Err(BackendError::Unsupported(format!(
                "a RoPE table for {positions} positions is larger than a storage binding"
            )));
        }
        let mut bytes = Vec::with_capacity(positions * half * 8);
        for pos in 0..positions {
            for i in 0..half {
                let (sin, cos) = rope_sin_cos(cfg, pos, i);
                bytes.extend_from_slice(&cos.to_le_bytes());
                bytes.extend_from_slice(&sin.to_le_bytes());
            }
        }
        let buf = self.gpu.upload("bitnet:rope", &bytes)?;
        tables.insert(key, (buf.clone(), positions));
        Ok(buf)
    }

    /// Records `out (mode) x × w`, `x` first normalised where `norm` says
    /// (ternary.wgsl's modes: 0 write, 1 add, 2/3 GLU with `w2`).
    fn product(
        &self,
        x: &GpuTensor,
        norm: Option<(&GpuVector, f32)>,
        w: &GpuLinear,
        w2: Option<&GpuLinear>,
        mode: u32,
        out: &GpuTensor,
    ) {
        debug_assert_eq!(x.cols, w.k);
        let second = w2.unwrap_or(w);
        let seg = self.matvec_seg(w.k);
        let groups = w.m.div_ceil(256 / seg);
        if self.one_token(x, &[w, second]) && groups <= 65535 {
            // `matvec` normalises and quantizes the row itself.
            let (flag, eps, nw) = norm_args(x, norm);
            self.gpu.dispatch(
                Op::Matvec,
                &[
                    w.k as u32,
                    w.m as u32,
                    1,
                    w.kind,
                    w.scale.to_bits(),
                    mode,
                    second.kind,
                    second.scale.to_bits(),
                    seg as u32,
                    0,
                    0,
                    0,
                    0,
                    flag,
                    eps.to_bits(),
                ],
                &[&w.w, x.buf(), nw, out.buf(), &second.w],
                [groups as u32, 1, 1],
            );
            return;
        }
        let mut h = None;
        let x = normed(self, x, norm, &mut h);
        let (q, qsum, qscale) = self.quantize(x);
        self.gpu.dispatch(
            Op::Matmul,
            &[
                w.k as u32,
                w.m as u32,
                x.rows as u32,
                w.kind,
                w.scale.to_bits(),
                mode,
                second.kind,
                second.scale.to_bits(),
            ],
            &[&w.w, &q, &qsum, &qscale, out.buf(), &second.w],
            [w.m.div_ceil(8) as u32, x.rows.div_ceil(4) as u32, 1],
        );
    }

    /// Whether `x` goes through the one-token kernels with `ws`: one row
    /// of at most [`MATVEC_MAX_K`], packed weights (I2_S, TQ2_0; TQ1_0
    /// always takes `matmul`).
    fn one_token(&self, x: &GpuTensor, ws: &[&GpuLinear]) -> bool {
        x.rows == 1
            && x.cols.is_multiple_of(128)
            && x.cols <= MATVEC_MAX_K
            && ws.iter().all(|w| w.kind < 3 && w.k == x.cols)
    }

    /// The rope kernel (rope.wgsl): rotates `x` in place, and in the same
    /// dispatch takes the keys `k` (same rows): rotated in place with
    /// [`ROTATE`], stored with the values into layer `layer` of `cache`
    /// where `store` gives them. The caller marks what changed.
    #[allow(clippy::too_many_arguments)]
    fn rope_dispatch(
        &self,
        x: Option<&GpuTensor>,
        k: Option<&GpuTensor>,
        rotate: bool,
        store: Option<(&GpuTensor, &GpuKvCache, usize)>,
        pos0: usize,
        cfg: &BitNetConfig,
    ) {
        let rows = x.or(k).map_or(0, |t| t.rows);
        let table = match self.rope_table(cfg, pos0 + rows) {
            Ok(t) => t,
            Err(e) => return self.gpu.fail(e.to_string()),
        };
        let (hd, half) = (cfg.head_dim as usize, cfg.rope_dim as usize / 2);
        let (cols, kv_cols) = (x.map_or(0, |t| t.cols), k.map_or(0, |t| t.cols));
        debug_assert!(k.is_none() || !rotate || kv_part_works(cfg));
        let n = rows * (cols / hd * half + kv_cols / 2);
        let unused = &self.gpu.unused;
        let mut flags = if rotate { ROTATE } else { 0 };
        let (mut v, mut kc, mut vc) = (&unused[2], &unused[3], &unused[4]);
        if let Some((vt, cache, layer)) = store {
            flags |= STORE | if cache.f16 { F16 } else { 0 };
            (v, kc, vc) = (vt.buf(), &cache.k[layer], &cache.v[layer]);
        }
        self.gpu.dispatch(
            Op::Rope,
            &[
                rows as u32,
                cols as u32,
                hd as u32,
                half as u32,
                pos0 as u32,
                rope_style(cfg),
                kv_cols as u32,
                flags,
            ],
            &[
                x.map_or(&unused[0], |t| t.buf()),
                &table,
                k.map_or(&unused[1], |t| t.buf()),
                v,
                kc,
                vc,
            ],
            grid(n.div_ceil(64)),
        );
    }

    /// Attention of `q` over the cache, whose positions up to pos0 +
    /// q.rows are stored; or with `new` (k, v and the cos/sin table, one
    /// token), RoPE of `q` and `k` and the store of `k` and `v` as well
    /// (attention.wgsl's NEW_TOKEN).
    fn attend(
        &self,
        q: &GpuTensor,
        new: Option<(&GpuTensor, &GpuTensor, &GpuBuf)>,
        cache: &GpuKvCache,
        layer: usize,
        pos0: usize,
        cfg: &BitNetConfig,
    ) -> GpuTensor {
        let out = self.tensor(q.rows, q.cols);
        let hd = cfg.head_dim as usize;
        let params = [
            q.rows as u32,
            cfg.n_head as u32,
            hd as u32,
            (cfg.n_head / cfg.n_head_kv) as u32,
            cache.kv_dim as u32,
            pos0 as u32,
            cache.f16 as u32,
            (1.0 / (hd as f32).sqrt()).to_bits(),
            cfg.rope_dim as u32 / 2,
            rope_style(cfg),
        ];
        let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
        let groups = [cfg.n_head as u32, q.rows as u32, 1];
        match new {
            Some((k, v, table)) => self.gpu.dispatch(
                Op::AttendOne,
                &params,
                &[kc, vc, q.buf(), out.buf(), k.buf(), v.buf(), table],
                groups,
            ),
            None => self
                .gpu
                .dispatch(Op::Attend, &params, &[kc, vc, q.buf(), out.buf()], groups),
        }
        out
    }

    /// `matvec`'s threads per row for rows of `k` weights: about 32
    /// packed words (512 weights) each, a power of two up to 256. Every
    /// workgroup quantizes the token itself, so fewer, fuller workgroups
    /// pay for that less often (on an H100, 2B4T decode: 208 tokens/s with
    /// 32 words, 197 with 16, 182 with 8, 174 with 64).
    fn matvec_seg(&self, k: usize) -> usize {
        (k / 16)
            .div_ceil(self.gpu.matvec_words)
            .next_power_of_two()
            .min(256)
    }

    /// Quantizes `x` (or finds it already quantized).
    fn quantize(&self, x: &GpuTensor) -> (GpuBuf, GpuBuf, GpuBuf) {
        let mut cache = self
            .state
            .quantized
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref().filter(|c| c.gen == x.gen && c.k == x.cols) {
            return (c.q.clone(), c.qsum.clone(), c.qscale.clone());
        }
        let (q, qsum, qscale) = self.quantize_into(x, None);
        Self::remember(&mut cache, x, &q, &qsum, &qscale);
        drop(cache);
        (q, qsum, qscale)
    }

    /// Records the quantization of `x`, or with `norm` (weight, eps, out)
    /// of its RMSNorm, written to `out` (quant.wgsl does both in one pass).
    fn quantize_into(
        &self,
        x: &GpuTensor,
        norm: Option<(&GpuVector, f32, &GpuTensor)>,
    ) -> (GpuBuf, GpuBuf, GpuBuf) {
        let (rows, k) = (x.rows, x.cols);
        let q = self.gpu.scratch((rows * k) as u64);
        let qsum = self.gpu.scratch((rows * k / 128 * 4) as u64);
        let qscale = self.gpu.scratch((rows * 4) as u64);
        let (flag, eps, weight, out) = match norm {
            Some((w, eps, out)) => (1, eps, &w.buf, out.buf()),
            // Bound but never touched.
            None => (0, 0.0, x.buf(), &self.gpu.unused[0]),
        };
        self.gpu.dispatch(
            Op::Quantize,
            &[k as u32, rows as u32, flag, eps.to_bits()],
            &[x.buf(), &q, &qsum, &qscale, weight, out],
            grid(rows),
        );
        (q, qsum, qscale)
    }

    /// Keeps `x`'s quantization for the next BitLinear on it.
    fn remember(
        cache: &mut Option<Quantized>,
        x: &GpuTensor,
        q: &GpuBuf,
        qsum: &GpuBuf,
        qscale: &GpuBuf,
    ) {
        let (q, qsum, qscale) = (q.clone(), qsum.clone(), qscale.clone());
        let old = cache.replace(Quantized {
            gen: x.gen,
            k: x.cols,
            q,
            qsum,
            qscale,
        });
        if let Some(o) = old {
            for b in [&o.q, &o.qsum, &o.qscale] {
                x.gpu.recycle(b);
            }
        }
    }
}

impl Backend for WgpuBackend {
    type Tensor = GpuTensor;
    type Linear = GpuLinear;
    type Vector = GpuVector;
    type Table = GpuTable;
    type KvCache = GpuKvCache;

    fn name(&self) -> &str {
        &self.name
    }

    fn load_linear(&self, file: &Arc<GgufFile>, name: &str) -> Result<GpuLinear, BackendError> {
        let info = find(file, name)?;
        if info.dims.len() != 2 {
            return Err(bad(
                name,
                format!("expected a 2-D tensor, found {:?}", info.dims),
            ));
        }
        let (k, m) = (info.dims[0] as usize, info.dims[1] as usize);
        let data = file.tensor_data(info);
        let (kind, scale) = match info.ty {
            GgmlType::I2_S if k % 128 == 0 => {
                let s = ternary::i2s_scale(data, k * m)
                    .ok_or_else(|| bad(name, "I2_S scale missing"))?;
                (0, s)
            }
            GgmlType::TQ2_0 if k % 256 == 0 => {
                match uniform_block_scale::<ternary::BlockTQ2_0>(data) {
                    Some(s) => (1, s),
                    None => (2, 1.0),
                }
            }
            GgmlType::TQ1_0 if k % 256 == 0 => {
                match uniform_block_scale::<ternary::BlockTQ1_0>(data) {
                    Some(s) => (3, s),
                    None => (4, 1.0),
                }
            }
            ty => {
                return Err(bad(
                    name,
                    format!(
                        "{ty} {:?} is not a ternary matrix the wgpu backend runs",
                        info.dims
                    ),
                ))
            }
        };
        if !scale.is_finite() {
            return Err(bad(name, format!("scale is {scale}")));
        }
        Ok(GpuLinear {
            w: self.gpu.upload(&format!("bitnet:{name}"), data)?,
            k,
            m,
            kind,
            scale,
        })
    }

    fn load_vector(&self, file: &Arc<GgufFile>, name: &str) -> Result<GpuVector, BackendError> {
        let t = file
            .tensor(name)
            .ok_or_else(|| BackendError::MissingTensor(name.into()))?;
        let v = quant::dequantize(t.info.ty, t.data, t.info.n_elements as usize)
            .map_err(|e| bad(name, e.to_string()))?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Ok(GpuVector {
            buf: self.gpu.upload(&format!("bitnet:{name}"), &bytes)?,
        })
    }

    fn load_table(&self, file: &Arc<GgufFile>, name: &str) -> Result<GpuTable, BackendError> {
        let info = find(file, name)?;
        if info.dims.len() != 2 {
            return Err(bad(name, "expected a 2-D table"));
        }
        let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
        let (ty, width) = match info.ty {
            GgmlType::F32 => (0, 4),
            GgmlType::F16 if cols % 2 == 0 => (1, 2),
            GgmlType::BF16 if cols % 2 == 0 => (2, 2),
            ty => {
                return Err(BackendError::Unsupported(format!(
                    "{name}: {ty} tables with {cols} columns are not supported by the wgpu backend (F32; F16 or BF16 with an even width); use --device cpu"
                )))
            }
        };
        let row_bytes = cols * width;
        // Whole rows per binding (upload adds up to 8 bytes of padding), and
        // at most what one dispatch dimension of `logits` covers.
        let per_part =
            ((self.gpu.max_binding() as usize).saturating_sub(8) / row_bytes).min(65535 * 8);
        if per_part == 0 {
            return Err(bad(name, "one row is larger than a storage binding"));
        }
        let data = file.tensor_data(info);
        let mut parts = Vec::new();
        for row0 in (0..rows).step_by(per_part) {
            let n = per_part.min(rows - row0);
            let bytes = &data[row0 * row_bytes..(row0 + n) * row_bytes];
            let buf = self
                .gpu
                .upload(&format!("bitnet:{name}[{row0}..]"), bytes)?;
            parts.push((buf, row0, n));
        }
        log::debug!(
            "{name}: {rows} x {cols} {}, {} part(s)",
            info.ty,
            parts.len()
        );
        Ok(GpuTable {
            parts,
            rows,
            cols,
            ty,
        })
    }

    fn new_kv_cache(&self, cfg: &BitNetConfig, max_seq: usize, ty: KvType) -> GpuKvCache {
        let kv_dim = (cfg.n_head_kv * cfg.head_dim) as usize;
        let f16 = ty == KvType::F16;
        let mut cache = GpuKvCache {
            k: Vec::new(),
            v: Vec::new(),
            kv_dim,
            f16,
            error: None,
        };
        let bytes = (max_seq * kv_dim * if f16 { 2 } else { 4 }) as u64;
        let made = (|| -> Result<(), BackendError> {
            if cfg.head_dim > 256 || !cfg.head_dim.is_multiple_of(8) {
                return Err(BackendError::Unsupported(format!(
                    "head_dim {} (the wgpu attention kernel takes multiples of 8 up to 256)",
                    cfg.head_dim
                )));
            }
            for l in 0..cfg.n_layers {
                cache
                    .k
                    .push(self.gpu.zeroed(&format!("bitnet:k{l}"), bytes)?);
                cache
                    .v
                    .push(self.gpu.zeroed(&format!("bitnet:v{l}"), bytes)?);
            }
            self.rope_table(cfg, max_seq)?;
            Ok(())
        })();
        if let Err(e) = made {
            cache.error = Some(format!("KV cache of {max_seq} positions: {e}"));
        }
        cache
    }

    fn embed(&self, table: &GpuTable, tokens: &[u32]) -> GpuTensor {
        let out = self.tensor(tokens.len(), table.cols);
        let bytes: Vec<u8> = tokens
            .iter()
            .flat_map(|&t| t.min(table.rows as u32 - 1).to_le_bytes())
            .collect();
        // Held until the lookups are recorded: another thread's tokens must
        // not land in the buffer before they run (its `write` submits them
        // first).
        let mut slot = self.state.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let tok = match slot.as_ref() {
            Some(b) if b.size >= bytes.len() as u64 => b.clone(),
            _ => match self
                .gpu
                .zeroed("bitnet:tokens", (bytes.len() as u64).next_power_of_two())
            {
                Ok(b) => slot.insert(b).clone(),
                Err(e) => {
                    self.gpu.fail(e.to_string());
                    return out;
                }
            },
        };
        self.gpu.write(&tok, &bytes);
        let n = tokens.len() * table.cols;
        for (part, row0, nrows) in &table.parts {
            self.gpu.dispatch(
                Op::Embed,
                &[
                    table.cols as u32,
                    tokens.len() as u32,
                    *row0 as u32,
                    *nrows as u32,
                    table.ty,
                    0,
                    0,
                ],
                &[part, &tok, out.buf()],
                grid(n.div_ceil(64)),
            );
        }
        drop(slot);
        out
    }

    fn rms_norm(&self, x: &GpuTensor, weight: &GpuVector, eps: f32) -> GpuTensor {
        let out = self.tensor(x.rows, x.cols);
        if x.cols.is_multiple_of(128) {
            // Quantized in the same pass: the BitLinear that follows every
            // RMSNorm of a layer finds it done.
            let mut cache = self
                .state
                .quantized
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let (q, qsum, qscale) = self.quantize_into(x, Some((weight, eps, &out)));
            Self::remember(&mut cache, &out, &q, &qsum, &qscale);
            return out;
        }
        self.gpu.dispatch(
            Op::RmsNorm,
            &[x.cols as u32, x.rows as u32, eps.to_bits()],
            &[x.buf(), &weight.buf, out.buf()],
            grid(x.rows),
        );
        out
    }

    fn bitlinear(&self, x: &GpuTensor, w: &GpuLinear) -> GpuTensor {
        let out = self.tensor(x.rows, w.m);
        self.product(x, None, w, None, 0, &out);
        out
    }

    fn bitlinear_many<const N: usize>(
        &self,
        x: &GpuTensor,
        norm: Option<(&GpuVector, f32)>,
        ws: [&GpuLinear; N],
    ) -> [GpuTensor; N] {
        let one = self.one_token(x, &ws);
        // Three matrices and one token (q, k and v while decoding): one
        // `matvec3` dispatch where the device has the bindings for it.
        let seg = self.matvec_seg(x.cols);
        let groups = ws.iter().map(|w| w.m).sum::<usize>().div_ceil(256 / seg);
        if N == 3 && one && self.gpu.has(Op::Matvec3) && groups <= 65535 {
            let outs = ws.map(|w| self.tensor(1, w.m));
            let (a, b, c) = (ws[0], ws[1], ws[2]);
            let (flag, eps, nw) = norm_args(x, norm);
            self.gpu.dispatch(
                Op::Matvec3,
                &[
                    a.k as u32,
                    a.m as u32,
                    1,
                    a.kind,
                    a.scale.to_bits(),
                    0,
                    b.kind,
                    b.scale.to_bits(),
                    seg as u32,
                    b.m as u32,
                    c.m as u32,
                    c.kind,
                    c.scale.to_bits(),
                    flag,
                    eps.to_bits(),
                ],
                &[
                    &a.w,
                    x.buf(),
                    nw,
                    outs[0].buf(),
                    &b.w,
                    &c.w,
                    outs[1].buf(),
                    outs[2].buf(),
                ],
                [groups as u32, 1, 1],
            );
            return outs;
        }
        // One token: each product normalises and quantizes the row itself.
        // Several: normalised (and quantized) once for all.
        let mut h = None;
        let (x, norm) = if one {
            (x, norm)
        } else {
            (normed(self, x, norm, &mut h), None)
        };
        ws.map(|w| {
            let out = self.tensor(x.rows, w.m);
            self.product(x, norm, w, None, 0, &out);
            out
        })
    }

    fn bitlinear_add(
        &self,
        x: &mut GpuTensor,
        a: &GpuTensor,
        norm: Option<(&GpuVector, f32)>,
        w: &GpuLinear,
    ) {
        debug_assert_eq!((x.rows, x.cols), (a.rows, w.m));
        self.product(a, norm, w, None, 1, x);
        x.gen = next_gen();
    }

    fn bitlinear_glu(
        &self,
        h: &GpuTensor,
        norm: Option<(&GpuVector, f32)>,
        gate: &GpuLinear,
        up: &GpuLinear,
        act: Activation,
    ) -> GpuTensor {
        debug_assert_eq!((gate.k, gate.m), (up.k, up.m));
        let out = self.tensor(h.rows, gate.m);
        let mode = match act {
            Activation::Relu2 => 2,
            Activation::Silu => 3,
        };
        self.product(h, norm, gate, Some(up), mode, &out);
        out
    }

    fn rope(&self, x: &mut GpuTensor, pos0: usize, cfg: &BitNetConfig) {
        self.rope_dispatch(Some(x), None, false, None, pos0, cfg);
        x.gen = next_gen();
    }

    fn rope_qk(&self, q: &mut GpuTensor, k: &mut GpuTensor, pos0: usize, cfg: &BitNetConfig) {
        if kv_part_works(cfg) {
            self.rope_dispatch(Some(q), Some(k), true, None, pos0, cfg);
            q.gen = next_gen();
            k.gen = next_gen();
        } else {
            self.rope(q, pos0, cfg);
            self.rope(k, pos0, cfg);
        }
    }

    fn attention(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        cache: &mut GpuKvCache,
        layer: usize,
        pos0: usize,
        cfg: &BitNetConfig,
    ) -> GpuTensor {
        if let Some(e) = &cache.error {
            self.gpu.fail(e.clone());
            return self.tensor(q.rows, q.cols);
        }
        self.rope_dispatch(None, Some(k), false, Some((v, cache, layer)), pos0, cfg);
        self.attend(q, None, cache, layer, pos0, cfg)
    }

    /// One token: one dispatch (attention rotates and stores the new key
    /// itself; `q` and `k` stay as they were). Several: one dispatch
    /// rotates the queries and the keys and stores keys and values, then
    /// attention reads the cache only.
    fn rope_attention(
        &self,
        q: &mut GpuTensor,
        k: &mut GpuTensor,
        v: &GpuTensor,
        cache: &mut GpuKvCache,
        layer: usize,
        pos0: usize,
        cfg: &BitNetConfig,
    ) -> GpuTensor {
        if cache.error.is_none() && q.rows == 1 && self.gpu.has(Op::AttendOne) {
            let table = match self.rope_table(cfg, pos0 + 1) {
                Ok(t) => t,
                Err(e) => {
                    self.gpu.fail(e.to_string());
                    return self.tensor(q.rows, q.cols);
                }
            };
            return self.attend(q, Some((k, v, &table)), cache, layer, pos0, cfg);
        }
        if cache.error.is_some() || !kv_part_works(cfg) {
            self.rope_qk(q, k, pos0, cfg);
            return self.attention(q, k, v, cache, layer, pos0, cfg);
        }
        self.rope_dispatch(Some(q), Some(k), true, Some((v, cache, layer)), pos0, cfg);
        q.gen = next_gen();
        k.gen = next_gen();
        self.attend(q, None, cache, layer, pos0, cfg)
    }

    fn glu(&self, gate: &GpuTensor, up: &GpuTensor, act: Activation) -> GpuTensor {
        let out = self.tensor(gate.rows, gate.cols);
        let n = gate.rows * gate.cols;
        let act = match act {
            Activation::Relu2 => 0,
            Activation::Silu => 1,
        };
        self.gpu.dispatch(
            Op::Glu,
            &[n as u32, act],
            &[gate.buf(), up.buf(), out.buf()],
            grid(n.div_ceil(64)),
        );
        out
    }

    fn add(&self, x: &mut GpuTensor, y: &GpuTensor) {
        let n = x.rows * x.cols;
        self.gpu.dispatch(
            Op::Add,
            &[n as u32, 0],
            &[y.buf(), x.buf()],
            grid(n.div_ceil(64)),
        );
        x.gen = next_gen();
    }

    fn logits(&self, x: &GpuTensor, table: &GpuTable, last_only: bool) -> GpuTensor {
        let first = if last_only {
            x.rows.saturating_sub(1)
        } else {
            0
        };
        let n = x.rows - first;
        let vocab = table.rows;
        // Rows of logits per output buffer: all of them unless that is more
        // than one binding holds (every-row logits of a long prompt); then
        // group by group, each read back as it is done.
        let per = ((self.gpu.max_binding() as usize) / (vocab * 4)).max(1);
        let run = |row0: usize, rows: usize| -> GpuTensor {
            let out = self.tensor(rows, vocab);
            for (part, r0, nrows) in &table.parts {
                self.gpu.dispatch(
                    Op::Logits,
                    &[
                        table.cols as u32,
                        rows as u32,
                        *r0 as u32,
                        *nrows as u32,
                        table.ty,
                        vocab as u32,
                        row0 as u32,
                    ],
                    &[part, x.buf(), out.buf()],
                    [nrows.div_ceil(8) as u32, rows.div_ceil(4) as u32, 1],
                );
            }
            out
        };
        if n <= per {
            return run(first, n);
        }
        let mut host = Vec::with_capacity(n * vocab);
        for g in (first..x.rows).step_by(per) {
            let part = run(g, per.min(x.rows - g));
            match self.read(&part) {
                Ok(v) => host.extend(v),
                Err(e) => {
                    self.gpu.fail(match e {
                        BackendError::Device(m) => m,
                        other => other.to_string(),
                    });
                    break;
                }
            }
        }
        host.resize(n * vocab, f32::NAN);
        GpuTensor {
            buf: self.gpu.scratch(4),
            host: Some(host),
            rows: n,
            cols: vocab,
            gen: next_gen(),
            gpu: self.gpu.clone(),
        }
    }

    fn read(&self, x: &GpuTensor) -> Result<Vec<f32>, BackendError> {
        if let Some(h) = &x.host {
            // Any error of the groups was recorded; report it.
            self.gpu.flush_errors()?;
            return Ok(h.clone());
        }
        let bytes = self.gpu.read(x.buf(), (x.rows * x.cols * 4) as u64)?;
        Ok(floats(&bytes))
    }

    async fn read_async(&self, x: &GpuTensor) -> Result<Vec<f32>, BackendError> {
        if let Some(h) = &x.host {
            self.gpu.flush_errors()?;
            return Ok(h.clone());
        }
        let bytes = self
            .gpu
            .read_async(x.buf(), (x.rows * x.cols * 4) as u64)
            .await?;
        Ok(floats(&bytes))
    }
}

/// Little-endian f32s.
fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

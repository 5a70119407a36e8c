//! The CPU reference backend: scalar code, rayon across output rows.
//!
//! Weights stay in their GGUF layout inside the memory map; each ternary row
//! is unpacked to i8 codes when it is used. Every fast kernel (SIMD, WGSL,
//! CUDA) is tested against this file.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use half::f16;
use rayon::prelude::*;

use super::kernels::{self, Kernels, Packing, SimdLevel};
use super::lut::{self, Lut, LutMatrix};
use super::{bad, find, normed, team, Backend, BackendError, KvType};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::model::config::{Activation, BitNetConfig, RopeStyle};
use crate::quant::{self, act, ternary};

/// Buffers kept between tokens, so that decoding allocates nothing once
/// warm: activations ([`CpuTensor`]) and quantized rows take their buffer
/// here and give it back when dropped. Only buffers up to [`Pool::MAX_BYTES`]
/// are kept (every buffer of a decoded token; a long prompt's larger ones
/// go back to the allocator), at most [`Pool::MAX_KEPT`] of each type.
struct Pool<T>(Mutex<Vec<Vec<T>>>);

static F32S: Pool<f32> = Pool::new();
static I8S: Pool<Line> = Pool::new();
static I32S: Pool<i32> = Pool::new();
static U8S: Pool<u8> = Pool::new();

impl<T: Copy + bytemuck::Zeroable> Pool<T> {
    const MAX_BYTES: usize = 1 << 20;
    const MAX_KEPT: usize = 64;

    const fn new() -> Self {
        Pool(Mutex::new(Vec::new()))
    }

    /// `len` zeros, in the smallest kept buffer that holds them.
    fn take(&self, len: usize) -> Vec<T> {
        let found = {
            let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let best = (0..kept.len())
                .filter(|&i| kept[i].capacity() >= len)
                .min_by_key(|&i| kept[i].capacity());
            best.map(|i| kept.swap_remove(i))
        };
        let Some(mut v) = found else {
            // A new buffer comes zeroed from the allocator (fresh pages for a
            // long prompt's large ones: no pass over them here, and their
            // first touch happens in the parallel loop that fills them).
            return bytemuck::zeroed_vec(len);
        };
        v.clear();
        v.resize(len, T::zeroed());
        v
    }

    fn put(&self, v: Vec<T>) {
        if v.capacity() == 0 || v.capacity() * std::mem::size_of::<T>() > Self::MAX_BYTES {
            return;
        }
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < Self::MAX_KEPT {
            kept.push(v);
        }
    }
}

/// 64 int8 values on one cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Line([i8; 64]);

/// int8 activations starting on a cache line, so that the kernels' 32-
/// and 64-byte loads of a row (a multiple of 64 long in every BitNet
/// shape) never straddle two lines: a split load costs about two, and
/// the allocator's 16-byte alignment split every 64-byte load (pp128 at
/// `avx512vnni` 25 % faster aligned on a Zen 4, at `avx2` 12 %;
/// docs/perf.md, 2026-11-29 (Zen 4)).
#[derive(Default)]
struct Int8Buf {
    lines: Vec<Line>,
    len: usize,
}

impl Int8Buf {
    /// `len` zeros from the pool.
    fn take(len: usize) -> Self {
        Int8Buf {
            lines: I8S.take(len.div_ceil(64)),
            len,
        }
    }

    fn put(self) {
        I8S.put(self.lines);
    }
}

impl std::ops::Deref for Int8Buf {
    type Target = [i8];
    fn deref(&self) -> &[i8] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl std::ops::DerefMut for Int8Buf {
    fn deref_mut(&mut self) -> &mut [i8] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

/// Per-thread working buffers of the backend's loops, grown on first use
/// and kept (no allocation per token).
#[derive(Default)]
struct Scratch {
    /// One TQ1_0 block's unpacked codes.
    codes256: Vec<u8>,
    /// Unpacked TQ1_0 codes of a few rows (prefill).
    codes: Vec<u8>,
    /// Per-token integer sums and float accumulators of one row.
    sums: Vec<i32>,
    acc: Vec<f32>,
    /// One row of a table in f32.
    row: Vec<f32>,
    /// A position's RoPE tables: each dimension's cos and signed sin
    /// ([`kernels::rope_scalar`]).
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// Attention scores of one (token, heads) item.
    scores: Vec<f32>,
    /// One head's keys and values widened to f32 (an F16 cache).
    keys: Vec<f32>,
    values: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with_borrow_mut(f)
}

/// Row-major f32 activations.
#[derive(Debug, PartialEq)]
pub struct CpuTensor {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Clone for CpuTensor {
    fn clone(&self) -> Self {
        let mut t = CpuTensor::zeros(self.rows, self.cols);
        t.data.copy_from_slice(&self.data);
        t
    }
}

impl Drop for CpuTensor {
    fn drop(&mut self) {
        F32S.put(std::mem::take(&mut self.data));
    }
}

impl CpuTensor {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        CpuTensor {
            data: F32S.take(rows * cols),
            rows,
            cols,
        }
    }

    /// `rows` × `cols[i]` tensors, computed a block of output columns at a
    /// time, all in one parallel loop: `f(i, c0, out)` writes the
    /// `rows` values of columns c0, c0 + 1, ... of tensor i one column
    /// after another to `out` (how the row-parallel matrix kernels produce
    /// results: one weight row read once for every token), then a
    /// transpose (several tokens).
    fn par_columns<const N: usize>(
        rows: usize,
        cols: [usize; N],
        f: impl Fn(usize, usize, &mut [f32]) + Sync,
    ) -> [Self; N] {
        let rows = rows.max(1);
        let mut by_col = cols.map(|c| CpuTensor::zeros(c, rows));
        // About 16 blocks of columns per thread (a late thread then leaves
        // little undone), at least 32 columns each: a column can be a few
        // hundred bytes of work, less than handing out a block.
        let total: usize = cols.iter().sum();
        // Whole 32-row tiles for the lookup-table kernels.
        let per = total
            .div_ceil(16 * team::threads())
            .max(32)
            .next_multiple_of(lut::ROWS);
        team::for_each_chunk_mut_of(
            by_col.each_mut().map(|t| t.data.as_mut_slice()),
            [per * rows; N],
            |i, b, block| f(i, b * per, block),
        );
        by_col.map(|mut by_col| {
            if rows == 1 {
                // One token: the columns are the row.
                std::mem::swap(&mut by_col.rows, &mut by_col.cols);
                return by_col;
            }
            // Sixteen tokens at a time: each column's values for them are
            // one cache line of `by_col`, read once (a row at a time would
            // read a line per value, thousands of lines apart). The lines
            // are `rows` values apart, too far for the hardware prefetcher
            // to follow across pages: ask for them eight columns ahead.
            let cols = by_col.rows;
            let mut out = CpuTensor::zeros(rows, cols);
            team::for_each_chunk_mut(&mut out.data, 16 * cols, |b, block| {
                let r0 = 16 * b;
                for (c, col) in by_col.data.chunks_exact(rows).enumerate() {
                    kernels::prefetch(col.as_ptr().wrapping_add(8 * rows + r0));
                    let col = &col[r0..r0 + block.len() / cols];
                    for (o, &x) in block[c..].iter_mut().step_by(cols).zip(col) {
                        *o = x;
                    }
                }
            });
            out
        })
    }

    /// The values, row-major (the buffer leaves the backend's pool).
    pub fn into_data(mut self) -> Vec<f32> {
        std::mem::take(&mut self.data)
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// How a ternary tensor's scale is stored.
#[derive(Clone, Debug)]
enum Scale {
    /// One scale for the whole tensor (I2_S; TQ files whose non-zero blocks
    /// all share one d, as every BitNet conversion has).
    Tensor(f32),
    /// One f16 d per 256-weight block (a TQ file quantized block by block):
    /// integer sums are exact per block, then scaled and added in f32.
    Block,
}

/// A ternary projection: `m` output rows of `k` weights, in the file.
pub struct CpuLinear {
    file: Arc<GgufFile>,
    info: TensorInfo,
    k: usize,
    m: usize,
    scale: Scale,
    /// The weights repacked for a lookup-table kernel, when the backend
    /// uses one ([`TernaryKernels`]).
    lut: Option<LutMatrix>,
    /// TQ1_0 weights widened to TQ2_0 blocks ([`TernaryKernels::Tq2`]).
    tq2: Option<Vec<u8>>,
}

impl CpuLinear {
    /// The layout the kernels read: the file's, or TQ2_0 when widened.
    fn ty(&self) -> GgmlType {
        if self.tq2.is_some() {
            GgmlType::TQ2_0
        } else {
            self.info.ty
        }
    }

    fn data(&self) -> &[u8] {
        match &self.tq2 {
            Some(d) => d,
            None => self.file.tensor_data(&self.info),
        }
    }
}

/// A float (or 8-bit) table of `rows` rows of `cols` values, in the file,
/// plus, for the LM head when asked, a compact copy.
pub struct CpuTable {
    file: Arc<GgufFile>,
    info: TensorInfo,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    compact: Option<Compact>,
}

/// A compact output table, made at load time from the file's table and
/// multiplied with activations quantized to int8 in 32-wide blocks.
enum Compact {
    /// int8 values in 32-wide blocks with an f32 scale each (absmax / 127),
    /// `cols.div_ceil(32)` scales per row.
    Int8 { q: Vec<i8>, scales: Vec<f32> },
    /// 6-bit values in 52-byte groups of 64 ([`kernels::quantize_q6_row`]).
    Int6 { data: Vec<u8>, row_bytes: usize },
}

impl CpuTable {
    fn row_into(&self, r: usize, out: &mut Vec<f32>) {
        let data = self.file.tensor_data(&self.info);
        let bytes = &data[r * self.row_bytes..(r + 1) * self.row_bytes];
        // The size was checked at load, so this cannot fail.
        let _ = quant::dequantize_into(self.info.ty, bytes, self.cols, out);
    }

    /// Runs `convert` over the rows a block at a time (about 16 MB of the
    /// file's table each), the pages of each block given back once it is
    /// converted: a compact copy is made without the whole file table
    /// resident. The copy replaces the file's table for the head; a tied
    /// table's embedding lookups still read a row of it per token, paged in
    /// again as needed.
    fn convert_in_blocks(&self, mut convert: impl FnMut(std::ops::Range<usize>)) {
        let block = ((16 << 20) / self.row_bytes.max(1)).max(1);
        for start in (0..self.rows).step_by(block) {
            let end = (start + block).min(self.rows);
            convert(start..end);
            // From the start each time: the pages a block shares with the
            // next one are whole only then.
            self.file
                .release(&self.info, 0..(end * self.row_bytes) as u64);
        }
    }
}

/// Keys and values: `[layer][key/value head][position][head_dim]` (a head's
/// keys one after another, read as one stream), f32 or f16 (stored as its
/// bits so that the zeroed allocation stays lazily resident).
pub struct CpuKvCache {
    store: KvStore,
    kv_dim: usize,
    max_seq: usize,
}

enum KvStore {
    F32 { k: Vec<Vec<f32>>, v: Vec<Vec<f32>> },
    F16 { k: Vec<Vec<u16>>, v: Vec<Vec<u16>> },
}

/// An element type the KV cache can hold.
trait KvElem: Copy + Send + Sync {
    fn store(x: f32) -> Self;
    /// `n` rows of `hd` values, `stride` apart from the start of `cache`,
    /// as f32 rows and their stride: the cache itself, or widened into
    /// `buf`.
    fn rows<'a>(
        cache: &'a [Self],
        n: usize,
        hd: usize,
        stride: usize,
        buf: &'a mut Vec<f32>,
    ) -> (&'a [f32], usize);
}

impl KvElem for f32 {
    fn store(x: f32) -> Self {
        x
    }
    fn rows<'a>(
        cache: &'a [f32],
        n: usize,
        hd: usize,
        stride: usize,
        _: &'a mut Vec<f32>,
    ) -> (&'a [f32], usize) {
        (&cache[..(n - 1) * stride + hd], stride)
    }
}

impl KvElem for u16 {
    fn store(x: f32) -> Self {
        f16::from_f32(x).to_bits()
    }
    fn rows<'a>(
        cache: &'a [u16],
        n: usize,
        hd: usize,
        stride: usize,
        buf: &'a mut Vec<f32>,
    ) -> (&'a [f32], usize) {
        buf.clear();
        // Room for every row the cache can hold, not growing with the context.
        buf.reserve(cache.len().div_ceil(stride) * hd);
        for p in 0..n {
            let row = &cache[p * stride..p * stride + hd];
            buf.extend(row.iter().map(|&h| f16::from_bits(h).to_f32()));
        }
        (buf, hd)
    }
}

/// The CPU backend: weights stay in the file's map; the kernels (scalar or
/// SIMD, see [`kernels`](super::kernels)) are chosen when it is made.
#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    kernels: Kernels,
    output: OutputTable,
    ternary: TernaryKernels,
}

/// Which kernels multiply the ternary weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TernaryKernels {
    /// The packed kernels, on the weights as the file stores them (I2_S,
    /// TQ2_0 or TQ1_0; `i2s` on the command line, after bitnet.cpp).
    #[default]
    File,
    /// A lookup-table kernel on the weights repacked at load time
    /// ([`super::lut`]); needs one scale per tensor.
    Lut(Lut),
    /// The packed 2-bit kernels, with TQ1_0 weights widened at load time
    /// to TQ2_0 blocks (same weights and scales, 2.0625 bits per weight
    /// instead of 1.6875: 22 % more memory for them, multiplied by the
    /// packed kernels instead of through the slower base-3 decoder). I2_S
    /// and TQ2_0 are read as the file stores them, as with `File`.
    Tq2,
}

impl TernaryKernels {
    pub fn name(self) -> &'static str {
        match self {
            TernaryKernels::File => "i2s",
            TernaryKernels::Tq2 => "tq2",
            TernaryKernels::Lut(Lut::Tl1) => "tl1",
            TernaryKernels::Lut(Lut::Tl2) => "tl2",
        }
    }
}

impl std::str::FromStr for TernaryKernels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "i2s" | "i2_s" | "file" | "packed" => Ok(TernaryKernels::File),
            "tl1" => Ok(TernaryKernels::Lut(Lut::Tl1)),
            "tl2" => Ok(TernaryKernels::Lut(Lut::Tl2)),
            "tq2" | "tq2_0" => Ok(TernaryKernels::Tq2),
            other => Err(format!(
                "ternary kernels {other:?} are not supported (i2s: the file's packing, \
                 tq2: TQ1_0 widened to 2 bits, tl1, tl2)"
            )),
        }
    }
}

/// What the CPU backend reads for the LM head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputTable {
    /// The file's table as it is (F16 for 2B4T: 656 MB read per token).
    #[default]
    File,
    /// An int8 copy made at load time (32-wide blocks, f32 scales: 1.125
    /// bytes per weight, 369 MB for 2B4T), multiplied with int8-quantized
    /// activations. Fewer bytes per token, slightly different logits (see
    /// docs/perf.md for the measured change).
    Int8,
    /// A 6-bit copy (32-wide blocks, f16 scales: 0.8125 bytes per weight,
    /// 267 MB for 2B4T), the same product. Needs rows whose width is a
    /// multiple of 64.
    Int6,
}

impl OutputTable {
    /// Bytes of the compact copy of a `rows` × `cols` table (None: the
    /// file's own table is read).
    pub fn compact_bytes(self, rows: u64, cols: u64) -> Option<u64> {
        match self {
            OutputTable::File => None,
            OutputTable::Int8 => Some(rows * (cols + 4 * cols.div_ceil(32))),
            OutputTable::Int6 => Some(rows * cols / 64 * kernels::Q6_GROUP_BYTES as u64),
        }
    }
}

impl std::str::FromStr for OutputTable {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "file" => Ok(OutputTable::File),
            "int8" | "q8" => Ok(OutputTable::Int8),
            "int6" | "q6" => Ok(OutputTable::Int6),
            other => Err(format!(
                "output table {other:?} is not supported (file, int8, int6)"
            )),
        }
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The process-wide kernel choice (best level, or `BITNET_SIMD_LEVEL`).
    pub fn new() -> Self {
        CpuBackend {
            kernels: *Kernels::global(),
            output: OutputTable::File,
            ternary: TernaryKernels::File,
        }
    }

    /// Kernels of one level (an error if this CPU cannot run them).
    pub fn with_level(level: SimdLevel) -> Result<Self, BackendError> {
        Ok(CpuBackend {
            kernels: Kernels::for_level(level).map_err(BackendError::Unsupported)?,
            output: OutputTable::File,
            ternary: TernaryKernels::File,
        })
    }

    /// Chooses what the LM head reads (see [`OutputTable`]).
    pub fn with_output_table(mut self, output: OutputTable) -> Self {
        self.output = output;
        self
    }

    /// Chooses the ternary kernels (see [`TernaryKernels`]); applies to
    /// the projections loaded after it.
    pub fn with_ternary_kernels(mut self, ternary: TernaryKernels) -> Self {
        self.ternary = ternary;
        self
    }

    pub fn simd_level(&self) -> SimdLevel {
        self.kernels.level
    }

    /// The kernels this backend runs (see [`Kernels::describe`]).
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }
}

/// (sin, cos) of the rotary angle of pair `i` at position `pos`: every
/// backend takes its angles from here (the GPU ones as a table), so they
/// agree to the bit.
pub fn rope_sin_cos(cfg: &BitNetConfig, pos: usize, i: usize) -> (f32, f32) {
    let freq = cfg.rope_theta.powf(-2.0 * i as f32 / cfg.rope_dim as f32);
    (pos as f32 * freq).sin_cos()
}

/// The single scale shared by every non-zero block of a TQ tensor, if any.
pub(crate) fn uniform_block_scale<B: ternary::TernaryBlock>(data: &[u8]) -> Option<f32> {
    let mut scale = None;
    for chunk in data.chunks_exact(B::BYTES) {
        let d = B::read(chunk).scale();
        if d == f16::ZERO {
            continue;
        }
        match scale {
            None => scale = Some(d),
            Some(s) if s != d => return None,
            Some(_) => {}
        }
    }
    Some(scale.unwrap_or(f16::ZERO).to_f32())
}

/// Stores k, v at positions `pos0..` of one layer's cache and returns causal
/// GQA attention of `q` over positions `0..pos0 + rows` (f32 arithmetic).
#[allow(clippy::too_many_arguments)]
fn attend<T: KvElem>(
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    kc: &mut [T],
    vc: &mut [T],
    kv_dim: usize,
    pos0: usize,
    cfg: &BitNetConfig,
    kernels: &Kernels,
) -> CpuTensor {
    let hd = cfg.head_dim as usize;
    let max_seq = kc.len() / kv_dim.max(1);
    let head_len = max_seq * hd;
    for r in 0..k.rows {
        let at = (pos0 + r) * hd;
        for (g, (kr, vr)) in k
            .row(r)
            .chunks_exact(hd)
            .zip(v.row(r).chunks_exact(hd))
            .enumerate()
        {
            let at = g * head_len + at;
            for (dst, &x) in kc[at..at + hd].iter_mut().zip(kr) {
                *dst = T::store(x);
            }
            for (dst, &x) in vc[at..at + hd].iter_mut().zip(vr) {
                *dst = T::store(x);
            }
        }
    }
    let (kc, vc) = (&*kc, &*vc);
    let group = (cfg.n_head / cfg.n_head_kv) as usize;
    let scale = 1.0 / (hd as f32).sqrt();
    let n_head = q.cols / hd;
    if q.rows == 1 && pos0 + 1 > SCORE_BLOCK {
        let mut out = CpuTensor::zeros(1, q.cols);
        let ctx = TokenContext {
            n: pos0 + 1,
            kv_dim,
            hd,
            group,
            scale,
        };
        attend_token(&ctx, q.row(0), kc, vc, kernels, &mut out.data);
        return out;
    }
    // A prompt: the `group` query heads that share a key/value head in one
    // item, so each key and value is read once for all of them. One token
    // (a short context): a head per item, so that its few key/value heads
    // leave no thread idle.
    let m = if q.rows > 1 { group } else { 1 };
    let items_per_token = n_head / m;
    let mut out = CpuTensor::zeros(q.rows, q.cols);
    team::for_each_chunk_mut(&mut out.data, m * hd, |i, oh| {
        let (r, h) = (i / items_per_token, (i % items_per_token) * m);
        let n = pos0 + r + 1; // causal: positions 0..=pos0+r
        let qh = &q.row(r)[h * hd..(h + m) * hd];
        let head = (h / group) * head_len..(h / group + 1) * head_len;
        with_scratch(|scratch| {
            let Scratch {
                scores,
                keys,
                values,
                ..
            } = scratch;
            // Room for the whole cache at once, not growing with the context.
            scores.clear();
            scores.reserve(m * max_seq);
            scores.resize(m * n, 0.0);
            let (ks, stride) = T::rows(&kc[head.clone()], n, hd, hd, keys);
            (kernels.scores)(qh, hd, ks, stride, scores);
            for s in scores.chunks_exact_mut(n) {
                softmax_scaled(s, scale);
            }
            let (vs, stride) = T::rows(&vc[head], n, hd, hd, values);
            (kernels.weighted_sum)(scores, vs, stride, hd, oh);
        })
    });
    out
}

/// One head's scores times `scale`, turned into softmax weights, in one
/// fixed order (both attention paths use it, so they agree bit for bit).
fn softmax_scaled(s: &mut [f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for x in s.iter_mut() {
        *x *= scale;
        max = max.max(*x);
    }
    let mut total = 0.0;
    for x in s.iter_mut() {
        *x = (*x - max).exp();
        total += *x;
    }
    for x in s.iter_mut() {
        *x /= total;
    }
}

/// Positions per work item of one token's scores ([`attend_token`]); a
/// token with at most this many positions in its context goes a head per
/// item instead.
const SCORE_BLOCK: usize = 64;
/// Most dimensions per work item of one token's weighted sum of values
/// (64: 256 bytes of each f32 value row, a run the hardware prefetcher
/// follows; 32 measured about 15 % slower at depth 1024).
const VALUE_SLICE: usize = 64;

/// The shape of one token's attention.
struct TokenContext {
    /// Positions attended (the token's own included).
    n: usize,
    kv_dim: usize,
    hd: usize,
    group: usize,
    scale: f32,
}

thread_local! {
    /// One token's scores, weights and outputs, kept by the thread that
    /// runs [`attend_token`] for its next call.
    static TOKEN_ATTENTION: RefCell<[Vec<f32>; 3]> = RefCell::default();
}

/// One token's attention over a long context, in three loops: scores by
/// (key/value head, block of positions), each block's keys read once for
/// the `group` query heads that share them; softmax by query head; weighted
/// sums by (key/value head, slice of dimensions), each value read once.
/// A head per item would read each key and value `group` times and, with
/// few heads, leave threads idle at the end. The operations and their
/// order are the per-head path's, so the result is the same, bit for bit.
fn attend_token<T: KvElem>(
    c: &TokenContext,
    q: &[f32],
    kc: &[T],
    vc: &[T],
    kernels: &Kernels,
    out: &mut [f32],
) {
    let TokenContext {
        n,
        kv_dim,
        hd,
        group,
        scale,
    } = *c;
    let n_kv = kv_dim / hd;
    let blocks = n.div_ceil(SCORE_BLOCK);
    // At least two slices per head (10 items for 2B4T's five key/value
    // heads).
    let slice = if hd % 16 == 0 {
        (hd / 2).min(VALUE_SLICE)
    } else {
        hd
    };
    let slices = hd / slice;
    let max_seq = kc.len() / kv_dim;
    let head_len = max_seq * hd;
    // Taken out, not borrowed across the parallel loops: outside a pass a
    // waiting rayon thread may run another sequence's attention.
    let mut buffers = TOKEN_ATTENTION.with_borrow_mut(std::mem::take);
    {
        let [scores, weights, sums] = &mut buffers;
        // Room for the whole cache at once, not growing with the context.
        let size = |v: &mut Vec<f32>, len: usize, most: usize| {
            v.clear();
            v.reserve(most);
            v.resize(len, 0.0);
        };
        let block_len = group * SCORE_BLOCK;
        let most_blocks = max_seq.div_ceil(SCORE_BLOCK);
        size(
            scores,
            n_kv * blocks * block_len,
            n_kv * most_blocks * block_len,
        );
        size(weights, n_kv * group * n, n_kv * group * max_seq);
        size(sums, n_kv * group * hd, n_kv * group * hd);
        // Item (g, b): the group's scores against positions
        // b·SCORE_BLOCK.., query j's at j·len.
        team::for_each_chunk_mut(scores, block_len, |i, s| {
            let (g, p0) = (i / blocks, (i % blocks) * SCORE_BLOCK);
            let len = SCORE_BLOCK.min(n - p0);
            with_scratch(|scratch| {
                let at = g * head_len + p0 * hd;
                let keys = &kc[at..at + len * hd];
                let (ks, stride) = T::rows(keys, len, hd, hd, &mut scratch.keys);
                let qg = &q[g * group * hd..(g + 1) * group * hd];
                (kernels.scores)(qg, hd, ks, stride, &mut s[..group * len]);
            })
        });
        let scores = &*scores;
        team::for_each_chunk_mut(weights, n, |h, w| {
            let (g, j) = (h / group, h % group);
            for (b, w) in w.chunks_mut(SCORE_BLOCK).enumerate() {
                let len = w.len();
                let s = &scores[(g * blocks + b) * block_len..];
                w.copy_from_slice(&s[j * len..(j + 1) * len]);
            }
            softmax_scaled(w, scale);
        });
        // Item (g, c): the group's outputs in dimensions c·slice.., query
        // j's at j·slice.
        let weights = &*weights;
        team::for_each_chunk_mut(sums, group * slice, |i, o| {
            let (g, d0) = (i / slices, (i % slices) * slice);
            o.fill(0.0);
            with_scratch(|scratch| {
                let vg = &vc[g * head_len + d0..(g + 1) * head_len];
                let (vs, stride) = T::rows(vg, n, slice, hd, &mut scratch.values);
                let wg = &weights[g * group * n..(g + 1) * group * n];
                (kernels.weighted_sum)(wg, vs, stride, slice, o);
            })
        });
        for (i, o) in sums.chunks_exact(slice).enumerate() {
            let (item, j) = (i / group, i % group);
            let (g, c) = (item / slices, item % slices);
            out[(g * group + j) * hd + c * slice..][..slice].copy_from_slice(o);
        }
    }
    TOKEN_ATTENTION.with_borrow_mut(|kept| *kept = buffers);
}

/// One token's activations as the ternary kernels take them.
struct Quantized {
    /// t × k int8 activations, row-major.
    q: Int8Buf,
    /// 127 / absmax of each token.
    scales: Vec<f32>,
    /// Σ q per 256-wide block of each token (t × blocks), and per token:
    /// the packed kernels sum code·q with code = weight + 1, so
    /// Σ weight·q = Σ code·q − Σ q.
    block_sums: Vec<i32>,
    row_sums: Vec<i32>,
    /// Per token, the lookup tables of a TL1/TL2 product (empty unless
    /// [`Quantized::build_tables`] ran), [`Lut::table_bytes`] apart.
    tables: Vec<u8>,
    t: usize,
    k: usize,
}

impl Quantized {
    /// `x` quantized per token ([`crate::quant::act`]) with the level's
    /// kernels.
    fn new(x: &CpuTensor, kernels: &Kernels) -> Self {
        let (t, k) = (x.rows, x.cols);
        let blocks = k.div_ceil(256);
        // Token by token in parallel (a prompt's rows; one token inline).
        let mut scales = F32S.take(t);
        team::for_each_chunk_mut(&mut scales, 1, |r, s| {
            s[0] = act::scale_for((kernels.absmax)(x.row(r)))
        });
        let mut q = Int8Buf::take(t * k);
        team::for_each_chunk_mut(&mut q, k, |r, qr| {
            (kernels.quantize)(x.row(r), scales[r], qr)
        });
        let mut block_sums = I32S.take(t * blocks);
        team::for_each_chunk_mut(&mut block_sums, blocks, |r, sums| {
            for (s, c) in sums.iter_mut().zip(q[r * k..(r + 1) * k].chunks(256)) {
                *s = c.iter().map(|&v| i32::from(v)).sum();
            }
        });
        let mut row_sums = I32S.take(t);
        for (s, b) in row_sums
            .iter_mut()
            .zip(block_sums.chunks_exact(blocks.max(1)))
        {
            *s = b.iter().sum();
        }
        Quantized {
            q,
            scales,
            block_sums,
            row_sums,
            tables: Vec::new(),
            t,
            k,
        }
    }

    /// Every token's tables for `lut`.
    fn build_tables(&mut self, lut: Lut) {
        let k = self.k;
        let bytes = Lut::table_bytes(lut.groups(k));
        let mut tables = U8S.take(self.t * bytes);
        let q = &self.q;
        team::for_each_chunk_mut(&mut tables, bytes, |r, t| {
            lut.build_tables(&q[r * k..(r + 1) * k], t)
        });
        self.tables = tables;
    }
}

impl Drop for Quantized {
    fn drop(&mut self) {
        std::mem::take(&mut self.q).put();
        F32S.put(std::mem::take(&mut self.scales));
        I32S.put(std::mem::take(&mut self.block_sums));
        I32S.put(std::mem::take(&mut self.row_sums));
        U8S.put(std::mem::take(&mut self.tables));
    }
}

impl Quantized {
    /// Output of token r from Σ code·q of one row: (Σ code·q − Σ q) is
    /// Σ weight·q, times the weight scale `s`, over the token's scale.
    fn output(&self, r: usize, dot: i32, s: f32) -> f32 {
        self.scaled(r, dot - self.row_sums[r], s)
    }

    /// Output of token r from Σ weight·q of one row.
    fn scaled(&self, r: usize, sum: i32, s: f32) -> f32 {
        sum as f32 * s / self.scales[r]
    }

    /// Outputs of `rows` for every token (`outs`: `t` values per row),
    /// four tokens at a time against every row, so those four tokens'
    /// activations stay in L1 while the rows (tens of KB) come from L2,
    /// instead of streaming every token's activations once per row.
    /// `dot(row, q, dots)` gives Σ code·q of one row for the `dots.len()`
    /// tokens whose activations start at `q` (k apart).
    fn by_fours<R>(
        &self,
        rows: impl Iterator<Item = R> + Clone,
        outs: &mut [f32],
        s: f32,
        dot: impl Fn(R, &[i8], &mut [i32]),
    ) {
        let (t, k) = (self.t, self.k);
        let mut dots = [0i32; 4];
        for g in (0..t).step_by(4) {
            let n = (t - g).min(4);
            for (row, out) in rows.clone().zip(outs.chunks_exact_mut(t)) {
                dot(row, &self.q[g * k..], &mut dots[..n]);
                for (r, (o, &d)) in (g..).zip(out[g..g + n].iter_mut().zip(&dots)) {
                    *o = self.output(r, d, s);
                }
            }
        }
    }
}

impl CpuBackend {
    /// Output rows `row0..` of BitLinear(a, w), as many as `block` holds
    /// (`a.t` values per row, one row after another).
    fn linear_block(
        &self,
        a: &Quantized,
        w: &CpuLinear,
        scratch: &mut Scratch,
        row0: usize,
        block: &mut [f32],
    ) {
        debug_assert_eq!(a.k, w.k);
        let (t, k) = (a.t, a.k);
        let (q, scales, block_sums) = (&a.q, &a.scales, &a.block_sums);
        let blocks = k.div_ceil(256);
        let Scratch {
            codes256,
            codes,
            sums,
            acc,
            ..
        } = scratch;
        let dot_multi = self.kernels.dot_codes_multi;
        let dot_u8 = self.kernels.dot_u8_multi;
        let unpack_tq1 = self.kernels.unpack_tq1;
        if let (Some(m), &Scale::Tensor(s)) = (&w.lut, &w.scale) {
            // Lookup tables: a 32-row tile against each token's tables
            // (`row0` is a whole number of tiles: `par_columns`).
            debug_assert_eq!(row0 % lut::ROWS, 0);
            let mut dots = [0i32; lut::ROWS];
            for (i, outs) in block.chunks_mut(lut::ROWS * t).enumerate() {
                let tile = m.tile(row0 / lut::ROWS + i);
                for (r, tables) in a
                    .tables
                    .chunks_exact(Lut::table_bytes(m.groups))
                    .enumerate()
                {
                    (self.kernels.lut_tile)(m.lut, tile, m.groups, tables, &mut dots);
                    for (out, &d) in outs.chunks_exact_mut(t).zip(&dots) {
                        out[r] = a.scaled(r, d, s);
                    }
                }
            }
            return;
        }
        let data = w.data();
        let n_rows = block.len() / t;
        // The one-scale packed layouts: I2_S, and TQ2_0 whose blocks
        // share one scale (every BitNet conversion), a whole row per
        // kernel call.
        let packed = match (w.ty(), &w.scale) {
            (GgmlType::I2_S, Scale::Tensor(s)) => Some((k / 4, Packing::I2S, *s)),
            (GgmlType::TQ2_0, Scale::Tensor(s)) => Some((k / 256 * 66, Packing::Tq2Row, *s)),
            _ => None,
        };
        if let Some((row_bytes, packing, s)) = packed {
            let bytes = &data[row0 * row_bytes..(row0 + n_rows) * row_bytes];
            if t == 1 {
                let mut dots = [0i32; 64];
                for (c, out) in bytes.chunks(64 * row_bytes).zip(block.chunks_mut(64)) {
                    let dots = &mut dots[..out.len()];
                    (self.kernels.dot_rows)(c, row_bytes, q, packing, dots);
                    for (o, &d) in out.iter_mut().zip(dots.iter()) {
                        *o = a.output(0, d, s);
                    }
                }
                return;
            }
            let rows = bytes.chunks_exact(row_bytes);
            a.by_fours(rows, block, s, |row, qg, dots| {
                dot_multi(row, qg, k, packing, dots)
            });
            return;
        }
        if let (GgmlType::TQ1_0, &Scale::Tensor(s)) = (w.ty(), &w.scale) {
            let row_bytes = k / 256 * 54;
            let bytes = &data[row0 * row_bytes..(row0 + n_rows) * row_bytes];
            // One token: the codes decoded in registers, a whole row per
            // call.
            if t == 1 {
                for (row, o) in bytes.chunks_exact(row_bytes).zip(block.iter_mut()) {
                    *o = a.output(0, (self.kernels.dot_tq1)(row, q), s);
                }
                return;
            }
            // Several tokens: 16 rows unpacked to one code per byte, then
            // four tokens at a time against them.
            const ROWS: usize = 16;
            codes.resize(ROWS * k, 0);
            for (sub, outs) in bytes
                .chunks(ROWS * row_bytes)
                .zip(block.chunks_mut(ROWS * t))
            {
                for (row, c) in sub.chunks_exact(row_bytes).zip(codes.chunks_exact_mut(k)) {
                    for (blk, c) in row.chunks_exact(54).zip(c.chunks_exact_mut(256)) {
                        unpack_tq1(blk, c);
                    }
                }
                a.by_fours(codes.chunks_exact(k), outs, s, |c, qg, dots| {
                    dot_u8(c, qg, k, dots)
                });
            }
            return;
        }
        // TQ files quantized block by block (an f16 scale per 256 weights,
        // not all equal): integer sums per block, then scaled and added in
        // f32. TQ2_0 (66 bytes: 64 of 2-bit codes, f16 d) through the
        // packed kernel; TQ1_0 (54 bytes: 52 of base-3 codes, f16 d)
        // unpacked first.
        let size = match (w.ty(), &w.scale) {
            (GgmlType::TQ2_0, Scale::Block) => 66,
            (GgmlType::TQ1_0, Scale::Block) => 54,
            // Load accepts I2_S with a tensor scale and the TQ types only,
            // and every tensor-scale layout returned above.
            (ty, _) => unreachable!("bitlinear on {ty}"),
        };
        let per_row = k / 256;
        codes256.resize(256, 0);
        sums.resize(t, 0);
        acc.resize(t, 0.0);
        for (j, out) in block.chunks_exact_mut(t).enumerate() {
            let row = row0 + j;
            let bytes = &data[row * per_row * size..(row + 1) * per_row * size];
            acc.fill(0.0);
            for (b, blk) in bytes.chunks_exact(size).enumerate() {
                let qb = &q[b * 256..];
                if size == 66 {
                    dot_multi(&blk[..64], qb, k, Packing::Tq2, sums);
                } else {
                    unpack_tq1(blk, codes256);
                    dot_u8(codes256, qb, k, sums);
                }
                let dd = f16::from_le_bytes([blk[size - 2], blk[size - 1]]).to_f32();
                for r in 0..t {
                    acc[r] += (sums[r] - block_sums[r * blocks + b]) as f32 * dd;
                }
            }
            for (r, o) in out.iter_mut().enumerate() {
                *o = acc[r] / scales[r];
            }
        }
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Linear = CpuLinear;
    type Vector = Vec<f32>;
    type Table = CpuTable;
    type KvCache = CpuKvCache;

    fn pass<R>(&self, f: impl FnOnce() -> R) -> R {
        team::with_team(f)
    }

    fn name(&self) -> &str {
        "cpu (scalar reference)"
    }

    fn load_linear(&self, file: &Arc<GgufFile>, name: &str) -> Result<CpuLinear, BackendError> {
        let info = find(file, name)?.clone();
        if !info.ty.is_ternary() || info.dims.len() != 2 {
            return Err(bad(
                name,
                format!(
                    "expected a 2-D ternary tensor, found {} {:?}",
                    info.ty, info.dims
                ),
            ));
        }
        let (k, m) = (info.dims[0] as usize, info.dims[1] as usize);
        let data = file.tensor_data(&info);
        let scale =
            match info.ty {
                GgmlType::I2_S => {
                    let s = ternary::i2s_scale(data, k * m)
                        .ok_or_else(|| bad(name, "I2_S scale missing"))?;
                    Scale::Tensor(s)
                }
                GgmlType::TQ2_0 => uniform_block_scale::<ternary::BlockTQ2_0>(data)
                    .map_or(Scale::Block, Scale::Tensor),
                _ => uniform_block_scale::<ternary::BlockTQ1_0>(data)
                    .map_or(Scale::Block, Scale::Tensor),
            };
        if let Scale::Tensor(s) = scale {
            if !s.is_finite() {
                return Err(bad(name, format!("scale is {s}")));
            }
        }
        let lut = match (self.ternary, &scale) {
            (TernaryKernels::File | TernaryKernels::Tq2, _) => None,
            (TernaryKernels::Lut(l), Scale::Tensor(_)) => {
                let w = quant::decode_ternary(info.ty, data, k * m)
                    .map_err(|e| bad(name, e.to_string()))?;
                Some(LutMatrix::new(l, &w, m, k))
            }
            (TernaryKernels::Lut(_), Scale::Block) => {
                return Err(BackendError::Unsupported(format!(
                    "{name}: the {} kernels need one scale per tensor, and this {} tensor \
                     has a different scale per block (use the file's kernels: i2s)",
                    self.ternary.name(),
                    info.ty
                )))
            }
        };
        let tq2 = (self.ternary == TernaryKernels::Tq2 && info.ty == GgmlType::TQ1_0).then(|| {
            let mut out = vec![0u8; data.len() / 54 * 66];
            out.par_chunks_exact_mut(66)
                .zip(data.par_chunks_exact(54))
                .for_each(|(o, b)| o.copy_from_slice(&ternary::tq1_to_tq2(b)));
            out
        });
        if lut.is_some() || tq2.is_some() {
            // The kernels read only the copy from now on.
            file.release(&info, 0..info.size);
        }
        Ok(CpuLinear {
            file: file.clone(),
            info,
            k,
            m,
            scale,
            lut,
            tq2,
        })
    }

    fn load_vector(&self, file: &Arc<GgufFile>, name: &str) -> Result<Vec<f32>, BackendError> {
        let t = file
            .tensor(name)
            .ok_or_else(|| BackendError::MissingTensor(name.into()))?;
        quant::dequantize(t.info.ty, t.data, t.info.n_elements as usize)
            .map_err(|e| bad(name, e.to_string()))
    }

    fn load_table(&self, file: &Arc<GgufFile>, name: &str) -> Result<CpuTable, BackendError> {
        let info = find(file, name)?.clone();
        if info.dims.len() != 2 {
            return Err(bad(name, "expected a 2-D table"));
        }
        let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
        let row_bytes = info
            .ty
            .byte_size(cols as u64)
            .filter(|_| !info.ty.is_ternary())
            .ok_or_else(|| {
                bad(
                    name,
                    format!("{} rows cannot be read one at a time", info.ty),
                )
            })? as usize;
        // Refuse types without a codec now rather than at the first token.
        quant::dequantize(info.ty, &file.tensor_data(&info)[..row_bytes], cols)
            .map_err(|e| bad(name, e.to_string()))?;
        Ok(CpuTable {
            file: file.clone(),
            info,
            rows,
            cols,
            row_bytes,
            compact: None,
        })
    }

    fn prepare_output(&self, table: &mut CpuTable) -> Result<(), BackendError> {
        if table.compact.is_some() {
            return Ok(());
        }
        let (rows, cols) = (table.rows, table.cols);
        let compact = match self.output {
            OutputTable::File => return Ok(()),
            OutputTable::Int8 => {
                let blocks = cols.div_ceil(32);
                let mut q = vec![0i8; rows * cols];
                let mut scales = vec![0f32; rows * blocks];
                table.convert_in_blocks(|rs| {
                    q[rs.start * cols..rs.end * cols]
                        .par_chunks_mut(cols)
                        .zip(scales[rs.start * blocks..rs.end * blocks].par_chunks_mut(blocks))
                        .enumerate()
                        .for_each_init(Vec::new, |row, (i, (qr, sr))| {
                            table.row_into(rs.start + i, row);
                            kernels::quantize_q8_blocks(row, qr, sr);
                        });
                });
                Compact::Int8 { q, scales }
            }
            OutputTable::Int6 => {
                if cols % 64 != 0 {
                    return Err(bad(
                        &table.info.name,
                        format!("the int6 output table needs rows a multiple of 64 wide; these are {cols}"),
                    ));
                }
                let row_bytes = cols / 64 * kernels::Q6_GROUP_BYTES;
                let mut data = vec![0u8; rows * row_bytes];
                table.convert_in_blocks(|rs| {
                    data[rs.start * row_bytes..rs.end * row_bytes]
                        .par_chunks_mut(row_bytes)
                        .enumerate()
                        .for_each_init(Vec::new, |row, (i, out)| {
                            table.row_into(rs.start + i, row);
                            kernels::quantize_q6_row(row, out);
                        });
                });
                Compact::Int6 { data, row_bytes }
            }
        };
        let bytes = self
            .output
            .compact_bytes(rows as u64, cols as u64)
            .unwrap_or(0);
        log::debug!(
            "{:?} output table: {rows} x {cols}, {} MB",
            self.output,
            bytes / 1_000_000
        );
        table.compact = Some(compact);
        Ok(())
    }

    fn new_kv_cache(&self, cfg: &BitNetConfig, max_seq: usize, ty: KvType) -> CpuKvCache {
        let kv_dim = (cfg.n_head_kv * cfg.head_dim) as usize;
        let layers = cfg.n_layers as usize;
        // One zeroed allocation per layer (not clones of one), so pages are
        // only resident once positions are written.
        let n = max_seq * kv_dim;
        let store = match ty {
            KvType::F32 => KvStore::F32 {
                k: (0..layers).map(|_| vec![0.0; n]).collect(),
                v: (0..layers).map(|_| vec![0.0; n]).collect(),
            },
            KvType::F16 => KvStore::F16 {
                k: (0..layers).map(|_| vec![0; n]).collect(),
                v: (0..layers).map(|_| vec![0; n]).collect(),
            },
        };
        CpuKvCache {
            store,
            kv_dim,
            max_seq,
        }
    }

    fn embed(&self, table: &CpuTable, tokens: &[u32]) -> CpuTensor {
        let mut out = CpuTensor::zeros(tokens.len(), table.cols);
        with_scratch(|Scratch { row, .. }| {
            for (i, &t) in tokens.iter().enumerate() {
                // Token ids are checked against the vocabulary before this.
                table.row_into((t as usize).min(table.rows - 1), row);
                out.row_mut(i).copy_from_slice(row);
            }
        });
        out
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &Vec<f32>, eps: f32) -> CpuTensor {
        let mut out = x.clone();
        let norm = self.kernels.rms_norm;
        team::for_each_chunk_mut(&mut out.data, x.cols, |_, row| norm(row, weight, eps));
        out
    }

    fn bitlinear(&self, x: &CpuTensor, w: &CpuLinear) -> CpuTensor {
        let [y] = self.bitlinear_many(x, None, [w]);
        y
    }

    fn bitlinear_many<const N: usize>(
        &self,
        x: &CpuTensor,
        norm: Option<(&Vec<f32>, f32)>,
        ws: [&CpuLinear; N],
    ) -> [CpuTensor; N] {
        let mut h = None;
        let mut a = Quantized::new(normed(self, x, norm, &mut h), &self.kernels);
        // Projections of one call share their input and the backend's
        // kernels, so one set of tables serves them all.
        if let Some(m) = ws.iter().find_map(|w| w.lut.as_ref()) {
            a.build_tables(m.lut);
        }
        let t = a.t;
        // Blocks of output rows of every W in one parallel loop; each row
        // is read once and dotted with every token (the packed kernels take
        // all tokens in one pass over the row; one token takes a block of
        // rows per call).
        CpuTensor::par_columns(t, ws.map(|w| w.m), |i, row0, block| {
            with_scratch(|scratch| self.linear_block(&a, ws[i], scratch, row0, block))
        })
    }

    fn rope(&self, x: &mut CpuTensor, pos0: usize, cfg: &BitNetConfig) {
        let (head_dim, rope_dim) = (cfg.head_dim as usize, cfg.rope_dim as usize);
        let half = rope_dim / 2;
        let rope = self.kernels.rope;
        with_scratch(
            |Scratch {
                 rope_cos: c,
                 rope_sin: s,
                 ..
             }| {
                c.resize(2 * half, 0.0);
                s.resize(2 * half, 0.0);
                for r in 0..x.rows {
                    // The tables of this position, once for all heads: pair i
                    // is dimensions (i, i + half) or (2i, 2i + 1).
                    for i in 0..half {
                        let (sin, cos) = rope_sin_cos(cfg, pos0 + r, i);
                        let (a, b) = match cfg.rope_style {
                            RopeStyle::Neox => (i, i + half),
                            RopeStyle::Norm => (2 * i, 2 * i + 1),
                        };
                        (c[a], c[b], s[a], s[b]) = (cos, cos, -sin, sin);
                    }
                    for head in x.row_mut(r).chunks_exact_mut(head_dim) {
                        rope(head, c, s, cfg.rope_style);
                    }
                }
            },
        )
    }

    fn attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        cache: &mut CpuKvCache,
        layer: usize,
        pos0: usize,
        cfg: &BitNetConfig,
    ) -> CpuTensor {
        debug_assert!(pos0 + q.rows <= cache.max_seq);
        let kv_dim = cache.kv_dim;
        match &mut cache.store {
            KvStore::F32 { k: kc, v: vc } => attend(
                q,
                k,
                v,
                &mut kc[layer],
                &mut vc[layer],
                kv_dim,
                pos0,
                cfg,
                &self.kernels,
            ),
            KvStore::F16 { k: kc, v: vc } => attend(
                q,
                k,
                v,
                &mut kc[layer],
                &mut vc[layer],
                kv_dim,
                pos0,
                cfg,
                &self.kernels,
            ),
        }
    }

    fn glu(&self, gate: &CpuTensor, up: &CpuTensor, act: Activation) -> CpuTensor {
        let mut out = gate.clone();
        team::for_each_chunk_mut(&mut out.data, gate.cols, |r, row| {
            for (g, u) in row.iter_mut().zip(up.row(r)) {
                let a = match act {
                    Activation::Relu2 => {
                        let r = g.max(0.0);
                        r * r
                    }
                    Activation::Silu => *g / (1.0 + (-*g).exp()),
                };
                *g = a * u;
            }
        });
        out
    }

    fn add(&self, x: &mut CpuTensor, y: &CpuTensor) {
        let cols = x.cols;
        team::for_each_chunk_mut(&mut x.data, cols, |r, row| {
            for (a, b) in row.iter_mut().zip(y.row(r)) {
                *a += b;
            }
        });
    }

    fn logits(&self, x: &CpuTensor, table: &CpuTable, last_only: bool) -> CpuTensor {
        let first = if last_only {
            x.rows.saturating_sub(1)
        } else {
            0
        };
        let n = x.rows - first;
        if let Some(compact) = &table.compact {
            // Each token's activations to int8 once (32-wide blocks), then
            // the compact table's integer product.
            let (cols, blocks) = (table.cols, table.cols.div_ceil(32));
            let mut xq = Int8Buf::take(n * cols);
            let mut xs = F32S.take(n * blocks);
            for (j, r) in (first..x.rows).enumerate() {
                kernels::quantize_q8_blocks(
                    x.row(r),
                    &mut xq[j * cols..(j + 1) * cols],
                    &mut xs[j * blocks..(j + 1) * blocks],
                );
            }
            let (dot_q8, dot_q6) = (self.kernels.dot_q8, self.kernels.dot_q6);
            let token = |j: usize| {
                (
                    &xq[j * cols..(j + 1) * cols],
                    &xs[j * blocks..(j + 1) * blocks],
                )
            };
            let [y] = CpuTensor::par_columns(n, [table.rows], |_, v0, block| {
                for (v, out) in (v0..).zip(block.chunks_exact_mut(n)) {
                    for (j, o) in out.iter_mut().enumerate() {
                        let (x, x_scale) = token(j);
                        *o = match compact {
                            Compact::Int8 { q, scales } => dot_q8(
                                &q[v * cols..(v + 1) * cols],
                                &scales[v * blocks..(v + 1) * blocks],
                                x,
                                x_scale,
                            ),
                            Compact::Int6 { data, row_bytes } => {
                                dot_q6(&data[v * row_bytes..(v + 1) * row_bytes], x, x_scale)
                            }
                        };
                    }
                }
            });
            xq.put();
            F32S.put(xs);
            return y;
        }
        let dot_f16 = self.kernels.dot_f16;
        let data = table.file.tensor_data(&table.info);
        let [y] = CpuTensor::par_columns(n, [table.rows], |_, v0, block| {
            with_scratch(|Scratch { row, .. }| {
                for (v, out) in (v0..).zip(block.chunks_exact_mut(n)) {
                    if table.info.ty == GgmlType::F16 {
                        // The largest read per token (656 MB for 2B4T):
                        // straight from the map, no f32 copy.
                        let bytes = &data[v * table.row_bytes..(v + 1) * table.row_bytes];
                        for (o, r) in out.iter_mut().zip(first..x.rows) {
                            *o = dot_f16(bytes, x.row(r));
                        }
                        continue;
                    }
                    table.row_into(v, row);
                    for (o, r) in out.iter_mut().zip(first..x.rows) {
                        *o = x.row(r).iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                    }
                }
            })
        });
        y
    }

    fn read(&self, x: &CpuTensor) -> Result<Vec<f32>, BackendError> {
        Ok(x.data.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::FixtureConfig;
    use crate::gguf::GgmlType;

    fn tensor(rows: usize, cols: usize, seed: u32) -> CpuTensor {
        let mut t = CpuTensor::zeros(rows, cols);
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        for v in t.data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *v = (x % 2001) as f32 / 250.0 - 4.0;
        }
        t
    }

    /// A prompt's attention (its query heads grouped per key/value head)
    /// equals the same tokens' attention one at a time (a head per item),
    /// bit for bit, at every level this CPU runs, for both cache types.
    #[test]
    fn prompt_attention_equals_token_by_token() {
        let file =
            GgufFile::from_vec(FixtureConfig::tiny(GgmlType::I2_S).to_bytes().unwrap()).unwrap();
        let cfg = BitNetConfig::from_gguf(&file).unwrap();
        assert!(cfg.n_head > cfg.n_head_kv, "the fixture groups query heads");
        let (q_cols, kv_cols) = (
            (cfg.n_head * cfg.head_dim) as usize,
            (cfg.n_head_kv * cfg.head_dim) as usize,
        );
        // More than one 32-position block of values, and past SCORE_BLOCK
        // (one token's attention split by position blocks).
        let rows = 150;
        let (q, k, v) = (
            tensor(rows, q_cols, 7),
            tensor(rows, kv_cols, 8),
            tensor(rows, kv_cols, 9),
        );
        let row = |t: &CpuTensor, r: usize| CpuTensor {
            data: t.row(r).to_vec(),
            rows: 1,
            cols: t.cols,
        };
        let mut want = None;
        for level in SimdLevel::ALL.into_iter().filter(|l| l.supported()) {
            let b = CpuBackend::with_level(level).unwrap();
            for ty in [KvType::F32, KvType::F16] {
                // Two tokens already cached, then the prompt's rest.
                let mut c = b.new_kv_cache(&cfg, 160, ty);
                let head = |t: &CpuTensor| CpuTensor {
                    data: t.data[..2 * t.cols].to_vec(),
                    rows: 2,
                    cols: t.cols,
                };
                let tail = |t: &CpuTensor| CpuTensor {
                    data: t.data[2 * t.cols..].to_vec(),
                    rows: rows - 2,
                    cols: t.cols,
                };
                let mut prompt = b.attention(&head(&q), &head(&k), &head(&v), &mut c, 0, 0, &cfg);
                let rest = b.attention(&tail(&q), &tail(&k), &tail(&v), &mut c, 0, 2, &cfg);
                prompt.data.extend_from_slice(&rest.data);
                let mut c = b.new_kv_cache(&cfg, 160, ty);
                for r in 0..rows {
                    let one =
                        b.attention(&row(&q, r), &row(&k, r), &row(&v, r), &mut c, 0, r, &cfg);
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(one.row(0)),
                        bits(prompt.row(r)),
                        "{level} {ty:?} token {r}"
                    );
                }
                // Every level gives the same values.
                if ty == KvType::F32 {
                    let want = want.get_or_insert_with(|| prompt.data.clone());
                    assert_eq!(want, &prompt.data, "{level}");
                }
            }
        }
    }

    /// The f16 cache is exactly the f32 cache fed with f16-rounded keys and
    /// values: attention arithmetic is f32 either way.
    #[test]
    fn f16_kv_cache_equals_f32_on_rounded_inputs() {
        let file =
            GgufFile::from_vec(FixtureConfig::tiny(GgmlType::I2_S).to_bytes().unwrap()).unwrap();
        let cfg = BitNetConfig::from_gguf(&file).unwrap();
        let (q_cols, kv_cols) = (
            (cfg.n_head * cfg.head_dim) as usize,
            (cfg.n_head_kv * cfg.head_dim) as usize,
        );
        let b = CpuBackend::new();
        let mut c32 = b.new_kv_cache(&cfg, 16, KvType::F32);
        let mut c16 = b.new_kv_cache(&cfg, 16, KvType::F16);
        let round = |t: &CpuTensor| CpuTensor {
            data: t.data.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
            ..*t
        };
        // A 5-token prefill, then two single-token steps, on layer 1.
        let mut pos = 0;
        for (step, rows) in [5, 1, 1].into_iter().enumerate() {
            let seed = step as u32 * 3;
            let (q, k, v) = (
                tensor(rows, q_cols, seed + 1),
                tensor(rows, kv_cols, seed + 2),
                tensor(rows, kv_cols, seed + 3),
            );
            let a = b.attention(&q, &round(&k), &round(&v), &mut c32, 1, pos, &cfg);
            let h = b.attention(&q, &k, &v, &mut c16, 1, pos, &cfg);
            assert_eq!(a.data, h.data, "step {step}");
            // And the rounding is real: unrounded inputs give other values.
            let mut c = b.new_kv_cache(&cfg, 16, KvType::F32);
            if step == 0 {
                let exact = b.attention(&q, &k, &v, &mut c, 1, 0, &cfg);
                assert_ne!(exact.data, h.data);
            }
            pos += rows;
        }
    }
}

#[cfg(test)]
mod bitlinear_tests {
    use super::*;
    use crate::gguf::GgufWriter;

    /// TQ files whose blocks have different scales go block by block: each
    /// block's exact integer sum times its own d, added in block order.
    #[test]
    fn per_block_scales_match_direct_computation_at_every_level() {
        let mut seed = 999u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (ty, size) in [(GgmlType::TQ2_0, 66), (GgmlType::TQ1_0, 54)] {
            let (k, m, t) = (768, 40, 5);
            let w: Vec<i8> = (0..k * m).map(|_| (next() % 3) as i8 - 1).collect();
            let mut bytes = quant::encode_ternary(ty, &w, 1.0).unwrap();
            // Block b of every row gets d = 0.5 + b/4 (exact in f16).
            let d = |b: usize| 0.5 + b as f32 / 4.0;
            for (i, blk) in bytes.chunks_exact_mut(size).enumerate() {
                blk[size - 2..].copy_from_slice(&f16::from_f32(d(i % (k / 256))).to_le_bytes());
            }
            let mut gw = GgufWriter::new();
            gw.add_tensor("w", &[k as u64, m as u64], ty, bytes)
                .unwrap();
            let file = Arc::new(GgufFile::from_vec(gw.to_bytes().unwrap()).unwrap());
            let mut x = CpuTensor::zeros(t, k);
            for v in x.data.iter_mut() {
                *v = (next() % 2001) as f32 / 100.0 - 10.0;
            }
            let mut want = vec![0f32; t * m];
            for r in 0..t {
                let mut q = vec![0i8; k];
                let s = act::quantize_row(x.row(r), &mut q);
                for o in 0..m {
                    let mut acc = 0f32;
                    for b in 0..k / 256 {
                        let dot: i32 = (b * 256..(b + 1) * 256)
                            .map(|j| i32::from(w[o * k + j]) * i32::from(q[j]))
                            .sum();
                        acc += dot as f32 * d(b);
                    }
                    want[r * m + o] = acc / s;
                }
            }
            for level in SimdLevel::ALL.into_iter().filter(|l| l.supported()) {
                let b = CpuBackend::with_level(level).unwrap();
                let lin = b.load_linear(&file, "w").unwrap();
                assert!(matches!(lin.scale, Scale::Block), "{ty}");
                // The lookup-table kernels take one scale per tensor and
                // say so, rather than dropping the block scales.
                let tl1 = b.with_ternary_kernels("tl1".parse().unwrap());
                let err = tl1.load_linear(&file, "w").err().unwrap().to_string();
                assert!(err.contains("one scale per tensor"), "{err}");
                // TQ1_0 widened to TQ2_0 keeps every block's scale.
                let tq2 = b.with_ternary_kernels(TernaryKernels::Tq2);
                let wide = tq2.load_linear(&file, "w").unwrap();
                assert_eq!(wide.tq2.is_some(), ty == GgmlType::TQ1_0);
                for rows in [1, t] {
                    let xr = CpuTensor {
                        data: x.data[..rows * k].to_vec(),
                        rows,
                        cols: k,
                    };
                    let got = b.bitlinear(&xr, &lin);
                    assert_eq!(got.data, want[..rows * m], "{ty} t {rows} at {level}");
                    let got = tq2.bitlinear(&xr, &wide);
                    assert_eq!(got.data, want[..rows * m], "{ty} tq2 t {rows} at {level}");
                }
            }
        }
    }

    /// BitLinear at every kernel level against a direct computation from the
    /// ternary weights, on shapes whose K is not a multiple of 256 (I2_S) and
    /// with several tokens, all-zero and saturated activations.
    #[test]
    fn bitlinear_matches_direct_computation_at_every_level() {
        let mut seed = 12345u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (ty, k, m) in [
            (GgmlType::I2_S, 384, 7),
            (GgmlType::I2_S, 128, 3),
            // Several blocks of rows per parallel loop.
            (GgmlType::I2_S, 256, 150),
            (GgmlType::TQ2_0, 512, 5),
            (GgmlType::TQ2_0, 256, 99),
            (GgmlType::TQ1_0, 256, 4),
            (GgmlType::TQ1_0, 512, 70),
        ] {
            let w: Vec<i8> = (0..k * m).map(|_| (next() % 3) as i8 - 1).collect();
            let scale = 0.37f32;
            let mut gw = GgufWriter::new();
            // Type id 36 means I2_S only in bitnet.cpp's architectures.
            gw.add_metadata(
                "general.architecture",
                crate::gguf::Value::String("bitnet-b1.58".into()),
            )
            .unwrap();
            let bytes = quant::encode_ternary(ty, &w, scale).unwrap();
            gw.add_tensor("w", &[k as u64, m as u64], ty, bytes)
                .unwrap();
            let file = Arc::new(GgufFile::from_vec(gw.to_bytes().unwrap()).unwrap());
            // One token (the row-block decode kernels), one group of four,
            // groups of four and a remainder.
            for t in [1, 4, 7] {
                let mut x = CpuTensor::zeros(t, k);
                for (i, v) in x.data.iter_mut().enumerate() {
                    *v = match i / k {
                        0 => 0.0,                                   // all zero
                        1 if i % 5 == 0 => 1e6,                     // saturated
                        _ => (next() % 2001) as f32 / 100.0 - 10.0, // random
                    };
                }
                // Direct: q = int8(x), Σ w·q exactly, × scale / act_scale.
                let scale_f = match ty {
                    GgmlType::I2_S => scale,
                    _ => f16::from_f32(scale).to_f32(),
                };
                let mut want = vec![0f32; t * m];
                for r in 0..t {
                    let mut q = vec![0i8; k];
                    let s = act::quantize_row(x.row(r), &mut q);
                    for o in 0..m {
                        let dot: i32 = (0..k)
                            .map(|j| i32::from(w[o * k + j]) * i32::from(q[j]))
                            .sum();
                        want[r * m + o] = dot as f32 * scale_f / s;
                    }
                }
                for level in SimdLevel::ALL.into_iter().filter(|l| l.supported()) {
                    for kernels in ["i2s", "tq2", "tl1", "tl2"] {
                        let b = CpuBackend::with_level(level)
                            .unwrap()
                            .with_ternary_kernels(kernels.parse().unwrap());
                        let lin = b.load_linear(&file, "w").unwrap();
                        assert_eq!(lin.lut.is_some(), kernels.starts_with("tl"));
                        let widened = kernels == "tq2" && ty == GgmlType::TQ1_0;
                        assert_eq!(lin.tq2.is_some(), widened);
                        let got = b.bitlinear(&x, &lin);
                        assert_eq!(
                            got.data, want,
                            "{ty} k {k} m {m} t {t} at {level} {kernels}"
                        );
                    }
                }
            }
        }
    }
}

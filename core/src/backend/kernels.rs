//! CPU kernels behind one table chosen once at start-up: a scalar reference
//! for every op and SIMD versions where the CPU has them. Every SIMD kernel
//! is checked against the scalar one in the tests below, at every level
//! this CPU runs: bit for bit, except the float products of the LM heads
//! (F16, int8, int6 tables), which may differ in rounding. Attention,
//! RMSNorm, RoPE and activation quantization keep the reference's order of
//! float operations, so the level never changes a quantized activation.
//!
//! The ternary kernel works on the packed 2-bit codes as the file stores
//! them (code = weight + 1, so 0, 1 or 2): it returns Σ code·q over int8
//! activations q, and the caller subtracts Σ q to get Σ weight·q exactly.
//! I2_S and TQ2_0 share the layout of a 32-byte chunk: byte p holds the
//! weights p, 32 + p, 64 + p and 96 + p of a 128-weight group, at the bit
//! positions [`Packing::shifts`] gives (I2_S from the top bits down, TQ2_0
//! from the bottom up).
//!
//! Levels: scalar, SSE (SSSE3 integer kernels, SSE2 float ones), AVX2 (with FMA and F16C for
//! the float kernels, and a TQ1_0 kernel that decodes base-3 codes in
//! registers), AVX-512 (F and BW: 512-bit I2_S / TQ2_0 products, the rest
//! AVX2's), AVX-512 VNNI (the same with `vpdpbusd`), NEON on aarch64.

use std::sync::OnceLock;

use half::f16;

use super::lut::{self, LutTile};
use crate::model::config::RopeStyle;
use crate::quant::act::{self, round_small};
use crate::quant::ternary::tq1_unpack_codes;

/// How 2-bit codes sit in a byte, and where the 32-byte chunks are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// bitnet.cpp's I2_S: weight 32·l + p at bits 6 − 2l; chunks contiguous.
    I2S,
    /// llama.cpp's TQ2_0 codes: weight 32·l + p at bits 2l; chunks
    /// contiguous (the 64 code bytes of one block, or several).
    Tq2,
    /// A whole TQ2_0 row: 66-byte blocks of two chunks and an f16 scale
    /// (the scales are skipped; for rows whose blocks share one scale).
    Tq2Row,
}

impl Packing {
    pub const fn shifts(self) -> [u32; 4] {
        match self {
            Packing::I2S => [6, 4, 2, 0],
            Packing::Tq2 | Packing::Tq2Row => [0, 2, 4, 6],
        }
    }

    /// How many 32-byte chunks (128 weights each) `len` bytes hold.
    pub const fn chunks(self, len: usize) -> usize {
        match self {
            Packing::I2S | Packing::Tq2 => len / 32,
            Packing::Tq2Row => len / 66 * 2,
        }
    }

    /// Byte offset of chunk `c`.
    pub const fn chunk_at(self, c: usize) -> usize {
        match self {
            Packing::I2S | Packing::Tq2 => 32 * c,
            Packing::Tq2Row => c / 2 * 66 + c % 2 * 32,
        }
    }
}

/// An instruction-set level with a full set of kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Scalar,
    /// SSSE3 (128-bit integer kernels; SSE2 scores, RMSNorm, RoPE and
    /// quantization; the F16 and 6-bit heads and the weighted sum stay
    /// scalar).
    Sse,
    Avx2,
    /// AVX-512 F and BW (with AVX2, FMA and F16C for the kernels it
    /// shares with AVX2).
    Avx512,
    /// AVX-512 with VNNI: the integer products by `vpdpbusd`.
    Avx512Vnni,
    /// aarch64's Advanced SIMD (128-bit integer kernels, scores, RMSNorm,
    /// RoPE and quantization; the F16 and 6-bit heads, the weighted sum and
    /// TL1/TL2 stay scalar).
    Neon,
}

impl SimdLevel {
    /// Every level, lowest first (per architecture; the others are not
    /// `supported()` there).
    pub const ALL: [SimdLevel; 6] = [
        SimdLevel::Scalar,
        SimdLevel::Sse,
        SimdLevel::Avx2,
        SimdLevel::Avx512,
        SimdLevel::Avx512Vnni,
        SimdLevel::Neon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Sse => "sse",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Avx512Vnni => "avx512vnni",
            SimdLevel::Neon => "neon",
        }
    }

    /// Whether this CPU can run the level's kernels.
    pub fn supported(self) -> bool {
        match self {
            SimdLevel::Scalar => true,
            SimdLevel::Sse => ssse3_available(),
            SimdLevel::Avx2 => avx2_available(),
            SimdLevel::Avx512 => avx512_available(false),
            SimdLevel::Avx512Vnni => avx512_available(true),
            SimdLevel::Neon => neon_available(),
        }
    }

    /// The highest supported level.
    pub fn detect() -> SimdLevel {
        *SimdLevel::ALL
            .iter()
            .rev()
            .find(|l| l.supported())
            .unwrap_or(&SimdLevel::Scalar)
    }
}

impl std::str::FromStr for SimdLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "scalar" | "none" => Ok(SimdLevel::Scalar),
            "sse" | "ssse3" | "sse4" => Ok(SimdLevel::Sse),
            "avx2" => Ok(SimdLevel::Avx2),
            "avx512" | "avx512bw" => Ok(SimdLevel::Avx512),
            "avx512vnni" | "avx512_vnni" | "vnni" => Ok(SimdLevel::Avx512Vnni),
            "neon" => Ok(SimdLevel::Neon),
            "avx" => Err(format!(
                "SIMD level {s:?} has no kernels (available: scalar, sse, avx2, avx512, \
                 avx512vnni, neon)"
            )),
            _ => Err(format!(
                "unknown SIMD level {s:?} (scalar, sse, avx2, avx512, avx512vnni, neon)"
            )),
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How far ahead of their reads, in bytes, the x86 kernels that stream
/// weights from memory (ternary, TQ1_0, F16, int8, 6-bit and lookup-table
/// products) ask for them. The hardware prefetcher alone keeps too few
/// lines in flight while the core is busy with arithmetic: on the 2-core
/// Zen 3 VM the decode kernel read 7.2-8.5 GB/s from DRAM with one thread
/// and 12.8-16.0 with two, and 9.2-10.5 and 15.8-17.4 with a prefetch
/// 2 KiB ahead (docs/perf.md).
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 2048;

/// Asks for the cache line `PREFETCH_AHEAD` bytes past `p`. A hint only:
/// it never faults, so `p` may point anywhere (the address is formed with
/// `wrapping_add` and never dereferenced).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_ahead(p: *const u8) {
    prefetch(p.wrapping_add(PREFETCH_AHEAD));
}

/// Asks for the cache line at `p` (a hint, as [`prefetch_ahead`]; nothing
/// off x86-64).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetching is a hint that never faults, whatever the
        // address; SSE is part of the x86-64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

/// AVX-512 F and BW (and VNNI when asked) on top of the AVX2 level's
/// features.
#[cfg(target_arch = "x86_64")]
fn avx512_available(vnni: bool) -> bool {
    avx2_available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && (!vnni || is_x86_feature_detected!("avx512vnni"))
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_available(_vnni: bool) -> bool {
    false
}

#[cfg(target_arch = "aarch64")]
fn neon_available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

#[cfg(not(target_arch = "aarch64"))]
fn neon_available() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn ssse3_available() -> bool {
    is_x86_feature_detected!("ssse3")
}

#[cfg(not(target_arch = "x86_64"))]
fn ssse3_available() -> bool {
    false
}

/// `(weights, weight block scales, activations, activation block scales)`.
pub type DotQ8 = fn(&[i8], &[f32], &[i8], &[f32]) -> f32;
pub type DotRows = fn(packed: &[u8], row_bytes: usize, q: &[i8], packing: Packing, out: &mut [i32]);

/// The kernels of one level.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    pub level: SimdLevel,
    /// Σ code·q of one token against `out.len()` packed rows of
    /// `row_bytes` each, one after another in `packed` (the decode kernel:
    /// a block of rows per call).
    pub dot_rows: DotRows,
    /// The same for several tokens at once (`out.len()` of them, token j's
    /// activations at `q[j * stride..]`): the weights are unpacked once for
    /// all of them (the prefill kernel).
    pub dot_codes_multi:
        fn(packed: &[u8], q: &[i8], stride: usize, packing: Packing, out: &mut [i32]),
    /// Σ codes[i]·q[i] for unpacked codes (0..=3, one per byte), for
    /// several tokens (`out.len()`, token j at `q[j * stride..]`): TQ1_0's
    /// path, whose base-3 codes are unpacked through a table first.
    pub dot_u8_multi: fn(codes: &[u8], q: &[i8], stride: usize, out: &mut [i32]),
    /// Unpacks one TQ1_0 block's 52 code bytes into 256 codes (0..=2).
    pub unpack_tq1: fn(bytes: &[u8], out: &mut [u8]),
    /// Σ code·q of one token over the whole 54-byte TQ1_0 blocks of
    /// `blocks` (their scales ignored: for rows whose blocks share one),
    /// the codes decoded in registers (the decode kernel for TQ1_0).
    pub dot_tq1: fn(blocks: &[u8], q: &[i8]) -> i32,
    /// Σ f16(row[i]) · x[i], in f32.
    pub dot_f16: fn(row: &[u8], x: &[f32]) -> f32,
    /// Attention scores: q_j · k_p for every query vector of `q` and key
    /// of `k` ([`Scores`]), each summed in [`dot_f32_scalar`]'s order at
    /// every level (eight lanes, no fused multiply-add), so that attention
    /// is bit-identical whichever level runs: BitNet quantizes what
    /// attention produces, and a last-bit difference could round an
    /// activation the other way.
    pub scores: Scores,
    /// Attention's weighted sum of values ([`WeightedSum`]), in the same
    /// order at every level for the same reason.
    pub weighted_sum: WeightedSum,
    /// max |x| of one token's activations, NaN ignored
    /// ([`act::absmax`]; exact at every level: max does not round).
    pub absmax: fn(x: &[f32]) -> f32,
    /// q = round(x · scale) clamped to [-128, 127], ties to even, NaN to 0
    /// ([`act::quantize_with`]; element-wise, exact at every level).
    pub quantize: fn(x: &[f32], scale: f32, q: &mut [i8]),
    /// RMSNorm of one row in place ([`rms_norm_scalar`]): the sum of
    /// squares in [`dot_f32_scalar`]'s order at every level, bit-identical
    /// for the same reason as `scores`.
    pub rms_norm: fn(x: &mut [f32], weight: &[f32], eps: f32),
    /// Rotary embedding of one head in place ([`rope_scalar`]).
    pub rope: fn(x: &mut [f32], c: &[f32], s: &[f32], style: RopeStyle),
    /// Σ over 32-wide blocks b of w_scale[b] · x_scale[b] · Σ w[i]·x[i]
    /// (int8 weights and activations, exact integer block sums): the
    /// compact output table's product.
    pub dot_q8: DotQ8,
    /// The same for a row of the 6-bit output table ([`quantize_q6_row`]'s
    /// 52-byte groups) and 32-wide int8 activation blocks.
    pub dot_q6: DotQ6,
    /// Σ weight·q of one 32-row tile of a TL1/TL2 matrix against one
    /// token's tables ([`super::lut`]).
    pub lut_tile: LutTile,
}

/// `(6-bit row, activations, activation block scales)`.
pub type DotQ6 = fn(&[u8], &[i8], &[f32]) -> f32;

/// `scores(q, hd, k, stride, out)`: for the m = `q.len() / hd` query
/// vectors q_j = `q[j * hd..][..hd]` and the n = `out.len() / m` keys
/// k_p = `k[p * stride..][..hd]`, `out[j * n + p]` = [`dot_f32_scalar`]
/// (q_j, k_p). Several query heads share one head of keys (grouped-query
/// attention): each key is read once for all of them.
pub type Scores = fn(q: &[f32], hd: usize, k: &[f32], stride: usize, out: &mut [f32]);

/// `weighted_sum(w, v, stride, hd, out)`: for the m = `out.len() / hd`
/// outputs and n = `w.len() / m` values v_p = `v[p * stride..][..hd]`,
/// `out[j * hd + d] += w[j * n + p] · v_p[d]` for p = 0, 1, ... in turn,
/// each a multiply then an add.
pub type WeightedSum = fn(w: &[f32], v: &[f32], stride: usize, hd: usize, out: &mut [f32]);

impl Kernels {
    /// The kernels of `level`, or an error naming why it cannot run here.
    pub fn for_level(level: SimdLevel) -> Result<Kernels, String> {
        if !level.supported() {
            return Err(format!("this CPU cannot run the {level} kernels"));
        }
        Ok(match level {
            SimdLevel::Scalar => SCALAR,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => Kernels {
                level,
                dot_rows: avx2::dot_rows,
                dot_codes_multi: avx2::dot_codes_multi,
                dot_u8_multi: avx2::dot_u8_multi,
                unpack_tq1: avx2::unpack_tq1,
                dot_tq1: avx2::dot_tq1,
                dot_f16: avx2::dot_f16,
                scores: avx2::scores,
                weighted_sum: avx2::weighted_sum,
                absmax: avx2::absmax,
                quantize: avx2::quantize,
                rms_norm: avx2::rms_norm,
                rope: avx2::rope,
                dot_q8: avx2::dot_q8,
                dot_q6: avx2::dot_q6,
                lut_tile: lut::avx2::dot_tile,
            },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 | SimdLevel::Avx512Vnni => {
                let vnni = level == SimdLevel::Avx512Vnni;
                Kernels {
                    level,
                    dot_rows: [avx512::bw::dot_rows, avx512::vnni::dot_rows][vnni as usize],
                    dot_codes_multi: [avx512::bw::dot_codes_multi, avx512::vnni::dot_codes_multi]
                        [vnni as usize],
                    dot_u8_multi: avx2::dot_u8_multi,
                    unpack_tq1: avx2::unpack_tq1,
                    dot_tq1: avx2::dot_tq1,
                    dot_f16: avx2::dot_f16,
                    scores: avx2::scores,
                    weighted_sum: avx2::weighted_sum,
                    absmax: avx2::absmax,
                    quantize: avx2::quantize,
                    rms_norm: avx2::rms_norm,
                    rope: avx2::rope,
                    dot_q8: avx2::dot_q8,
                    dot_q6: avx2::dot_q6,
                    lut_tile: lut::avx2::dot_tile,
                }
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Sse => Kernels {
                level,
                dot_rows: sse::dot_rows,
                dot_codes_multi: sse::dot_codes_multi,
                dot_u8_multi: sse::dot_u8_multi,
                unpack_tq1: tq1_unpack_codes,
                dot_tq1: sse::dot_tq1,
                dot_f16: dot_f16_scalar,
                scores: sse::scores,
                weighted_sum: weighted_sum_scalar,
                absmax: sse::absmax,
                quantize: sse::quantize,
                rms_norm: sse::rms_norm,
                rope: sse::rope,
                dot_q8: sse::dot_q8,
                dot_q6: dot_q6_scalar,
                lut_tile: lut::dot_tile_scalar,
            },
            #[cfg(not(target_arch = "x86_64"))]
            SimdLevel::Sse | SimdLevel::Avx2 | SimdLevel::Avx512 | SimdLevel::Avx512Vnni => {
                unreachable!("supported() is false off x86_64")
            }
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => Kernels {
                level,
                dot_rows: neon::dot_rows,
                dot_codes_multi: neon::dot_codes_multi,
                dot_u8_multi: neon::dot_u8_multi,
                unpack_tq1: tq1_unpack_codes,
                dot_tq1: neon::dot_tq1,
                dot_f16: dot_f16_scalar,
                scores: neon::scores,
                weighted_sum: weighted_sum_scalar,
                absmax: neon::absmax,
                quantize: neon::quantize,
                rms_norm: neon::rms_norm,
                rope: neon::rope,
                dot_q8: neon::dot_q8,
                dot_q6: dot_q6_scalar,
                lut_tile: lut::dot_tile_scalar,
            },
            #[cfg(not(target_arch = "aarch64"))]
            SimdLevel::Neon => unreachable!("supported() is false off aarch64"),
        })
    }

    /// What each operation runs at this level, as (operation, kernel):
    /// what `kernel_selection` and the `RUST_LOG=debug` line print. Kept
    /// beside [`Kernels::for_level`]; a test checks that the two agree on
    /// which operations fall back to the scalar reference.
    pub fn describe(&self) -> [(&'static str, &'static str); 13] {
        use SimdLevel::*;
        let level = self.level;
        // (scalar, sse, avx2, avx512, avx512vnni, neon)
        let by = |k: [&'static str; 6]| match level {
            Scalar => k[0],
            Sse => k[1],
            Avx2 => k[2],
            Avx512 => k[3],
            Avx512Vnni => k[4],
            Neon => k[5],
        };
        let int = ["scalar", "sse", "avx2", "avx512bw", "avx512vnni", "neon"];
        let tq1 = "scalar unpack, sse dot";
        let tq1_neon = "scalar unpack, neon dot";
        // The level's own kernel, AVX2's at the AVX-512 levels.
        let up_to_avx2 = ["scalar", "sse", "avx2", "avx2", "avx2", "neon"];
        let avx2_or_scalar = ["scalar", "scalar", "avx2", "avx2", "avx2", "scalar"];
        [
            ("I2_S / TQ2_0 x int8, one token", by(int)),
            ("I2_S / TQ2_0 x int8, several tokens", by(int)),
            (
                "TQ1_0 x int8, one token",
                by([
                    "scalar",
                    tq1,
                    "avx2 (decoded in registers)",
                    "avx2 (decoded in registers)",
                    "avx2 (decoded in registers)",
                    tq1_neon,
                ]),
            ),
            (
                "TQ1_0 x int8, several tokens",
                by([
                    "scalar",
                    tq1,
                    "avx2 unpack, avx2 dot",
                    "avx2 unpack, avx2 dot",
                    "avx2 unpack, avx2 dot",
                    tq1_neon,
                ]),
            ),
            ("TL1 / TL2 tiles", by(avx2_or_scalar)),
            (
                "F16 embedding / LM head",
                by([
                    "scalar",
                    "scalar",
                    "avx2 + f16c",
                    "avx2 + f16c",
                    "avx2 + f16c",
                    "scalar",
                ]),
            ),
            ("int8 output table", by(up_to_avx2)),
            ("int6 output table", by(avx2_or_scalar)),
            ("attention scores", by(up_to_avx2)),
            ("attention weighted sum", by(avx2_or_scalar)),
            ("RMSNorm", by(up_to_avx2)),
            ("RoPE", by(up_to_avx2)),
            ("activation quantization", by(up_to_avx2)),
        ]
    }

    /// The process-wide choice: `BITNET_SIMD_LEVEL` if set, else the best
    /// level this CPU supports. Chosen once, on first use.
    pub fn global() -> &'static Kernels {
        static CHOSEN: OnceLock<Kernels> = OnceLock::new();
        CHOSEN.get_or_init(|| {
            let forced = std::env::var("BITNET_SIMD_LEVEL").ok();
            let level = forced
                .as_deref()
                .and_then(|s| s.parse::<SimdLevel>().ok())
                .filter(|l| l.supported())
                .unwrap_or_else(SimdLevel::detect);
            if let Some(f) = forced.filter(|f| f.parse::<SimdLevel>().ok() != Some(level)) {
                log::warn!("BITNET_SIMD_LEVEL={f} cannot be used here; using {level}");
            }
            // `for_level` cannot fail for a supported level.
            Kernels::for_level(level).unwrap_or(SCALAR)
        })
    }
}

const SCALAR: Kernels = Kernels {
    level: SimdLevel::Scalar,
    dot_rows: dot_rows_scalar,
    dot_codes_multi: dot_codes_multi_scalar,
    dot_u8_multi: dot_u8_multi_scalar,
    unpack_tq1: tq1_unpack_codes,
    dot_tq1: dot_tq1_scalar,
    dot_f16: dot_f16_scalar,
    scores: scores_scalar,
    weighted_sum: weighted_sum_scalar,
    absmax: act::absmax,
    quantize: act::quantize_with,
    rms_norm: rms_norm_scalar,
    rope: rope_scalar,
    dot_q8: dot_q8_scalar,
    dot_q6: dot_q6_scalar,
    lut_tile: lut::dot_tile_scalar,
};

/// The reference order of [`Kernels::dot_f32`]: lane i % 8 accumulates
/// a[i]·b[i] over the full groups of eight; lanes are reduced as
/// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)); the tail is added in order.
pub fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / 8 * 8;
    let mut l = [0f32; 8];
    for (ca, cb) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
        for i in 0..8 {
            l[i] += ca[i] * cb[i];
        }
    }
    let mut s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    for i in full..n {
        s += a[i] * b[i];
    }
    s
}

/// Scalar reference of [`Kernels::scores`].
pub fn scores_scalar(q: &[f32], hd: usize, k: &[f32], stride: usize, out: &mut [f32]) {
    scores_by(q, hd, k, stride, out, dot_f32_scalar);
}

/// [`Kernels::scores`] one pair at a time through `dot` (a level's
/// `dot_f32`).
fn scores_by(
    q: &[f32],
    hd: usize,
    k: &[f32],
    stride: usize,
    out: &mut [f32],
    dot: fn(&[f32], &[f32]) -> f32,
) {
    let Some((m, n)) = attention_shape(q.len(), hd, out.len()) else {
        return;
    };
    for (qj, oj) in q.chunks_exact(hd).take(m).zip(out.chunks_exact_mut(n)) {
        for (p, o) in oj.iter_mut().enumerate() {
            *o = dot(qj, &k[p * stride..p * stride + hd]);
        }
    }
}

/// (m, n) of a [`Scores`] or [`WeightedSum`] call: m vectors of `hd`
/// in `per_dim`'s slice, n positions in the `per_pos` one (m × n long);
/// `None` when there is nothing to do.
fn attention_shape(per_dim: usize, hd: usize, per_pos: usize) -> Option<(usize, usize)> {
    let m = per_dim.checked_div(hd)?;
    let n = per_pos.checked_div(m)?;
    (n > 0).then_some((m, n))
}

/// Scalar reference of [`Kernels::weighted_sum`]: each output element is
/// independent, so a SIMD version that multiplies then adds, positions in
/// order, matches it bit for bit.
pub fn weighted_sum_scalar(w: &[f32], v: &[f32], stride: usize, hd: usize, out: &mut [f32]) {
    let Some((_, n)) = attention_shape(out.len(), hd, w.len()) else {
        return;
    };
    for (wj, oj) in w.chunks_exact(n).zip(out.chunks_exact_mut(hd)) {
        for (p, &x) in wj.iter().enumerate() {
            for (o, &y) in oj.iter_mut().zip(&v[p * stride..p * stride + hd]) {
                *o += x * y;
            }
        }
    }
}

/// Scalar reference of [`Kernels::rms_norm`]: x[i] = (x[i] · r) · w[i]
/// with r = 1 / √(Σ x² / n + eps), Σ x² in [`dot_f32_scalar`]'s order.
pub fn rms_norm_scalar(x: &mut [f32], weight: &[f32], eps: f32) {
    let r = rms_inv(x, eps, dot_f32_scalar);
    scale_by(x, weight, r);
}

/// 1 / √(Σ x² / n + eps), Σ x² through a level's `dot_f32`.
fn rms_inv(x: &[f32], eps: f32, dot: fn(&[f32], &[f32]) -> f32) -> f32 {
    1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt()
}

/// x[i] = (x[i] · r) · w[i]: each element on its own, so a SIMD version
/// (multiply, multiply) matches it bit for bit.
fn scale_by(x: &mut [f32], weight: &[f32], r: f32) {
    assert!(
        weight.len() >= x.len(),
        "RMSNorm weight shorter than the row"
    );
    for (v, w) in x.iter_mut().zip(weight) {
        *v = *v * r * w;
    }
}

/// Scalar reference of [`Kernels::rope`]: rotates the pairs of the first
/// `c.len()` dimensions of one head, a pair (a, b) (dimensions (j, j + 1)
/// for [`RopeStyle::Norm`], (j, j + n/2) for [`RopeStyle::Neox`]) becoming
/// (a·c[ja] + b·s[ja], b·c[jb] + a·s[jb]). The tables hold each
/// dimension's cos and signed sin (−sin at a's place, +sin at b's), so
/// this is a·cos − b·sin and a·sin + b·cos exactly, every element one
/// multiply-multiply-add that a SIMD version does in the same order.
pub fn rope_scalar(x: &mut [f32], c: &[f32], s: &[f32], style: RopeStyle) {
    rope_from(x, c, s, style, 0);
}

/// [`rope_scalar`] from pair `from` on (a SIMD version's tail).
fn rope_from(x: &mut [f32], c: &[f32], s: &[f32], style: RopeStyle, from: usize) {
    let half = c.len() / 2;
    assert!(
        s.len() == c.len() && x.len() >= 2 * half,
        "RoPE tables of unequal lengths or longer than the head"
    );
    for i in from..half {
        let (ja, jb) = match style {
            RopeStyle::Norm => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        let (a, b) = (x[ja], x[jb]);
        x[ja] = a * c[ja] + b * s[ja];
        x[jb] = b * c[jb] + a * s[jb];
    }
}

/// Scalar reference of [`Kernels::dot_q8`].
pub fn dot_q8_scalar(w: &[i8], w_scale: &[f32], x: &[i8], x_scale: &[f32]) -> f32 {
    w.chunks(32)
        .zip(x.chunks(32))
        .zip(w_scale.iter().zip(x_scale))
        .map(|((wb, xb), (sw, sx))| {
            let dot: i32 = wb
                .iter()
                .zip(xb)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
            dot as f32 * (sw * sx)
        })
        .sum()
}

/// Bytes of one group of the 6-bit output table: 64 values (two 32-wide
/// blocks) as 6-bit codes u = value + 32, value in -31..=31:
/// - bytes 0..32: byte i holds block 0's u of value i in bits 0-5 and
///   bits 4-5 of block 1's u of value i in bits 6-7;
/// - bytes 32..48: the low four bits of block 1's u, value i in the low
///   nibble of byte 32 + i and value 16 + i in its high nibble;
/// - bytes 48..52: each block's scale, f16.
///
/// So block 0 is one mask away, and block 1 (as 16 + 16 values, one per
/// 128-bit half) a shift, a per-half shift, two masks and an or.
pub const Q6_GROUP_BYTES: usize = 52;

/// Quantizes `x` (a multiple of 64 long) into 6-bit groups (see
/// [`Q6_GROUP_BYTES`]), rounding ties to even.
pub fn quantize_q6_row(x: &[f32], out: &mut [u8]) {
    debug_assert!(x.len().is_multiple_of(64) && out.len() == x.len() / 64 * Q6_GROUP_BYTES);
    for (xg, g) in x.chunks_exact(64).zip(out.chunks_exact_mut(Q6_GROUP_BYTES)) {
        g.fill(0);
        for (b, xb) in xg.chunks_exact(32).enumerate() {
            let d = f16::from_f32(q6_scale(xb).min(f16::MAX.to_f32()));
            g[48 + 2 * b..50 + 2 * b].copy_from_slice(&d.to_le_bytes());
            let inv = if d.to_f32() > 0.0 {
                1.0 / d.to_f32()
            } else {
                0.0
            };
            for (i, v) in xb.iter().enumerate() {
                let u = (round_small(v * inv).clamp(-31.0, 31.0) as i32 + 32) as u8;
                if b == 0 {
                    g[i] |= u;
                } else {
                    g[i] |= (u >> 4) << 6;
                    g[32 + i % 16] |= (u & 15) << (4 * (i / 16));
                }
            }
        }
    }
}

/// The scale of one 32-wide block of the 6-bit table: of the grids
/// absmax / (31 + k/4), k = -4..=8, the one whose least-squares scale
/// d = Σ x·v / Σ v² (v: the values the grid rounds to) leaves the smallest
/// squared error, Σ x² − (Σ x·v)² / Σ v²; absmax / 31 alone wastes levels
/// on the one largest value.
fn q6_scale(x: &[f32]) -> f32 {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 || !max.is_finite() {
        return max / 31.0;
    }
    let mut best = (0f32, max / 31.0);
    for k in -4..=8 {
        let inv = (31.0 + k as f32 / 4.0) / max;
        let (mut xv, mut vv) = (0f32, 0f32);
        for &v in x {
            let q = round_small(v * inv).clamp(-31.0, 31.0);
            xv += v * q;
            vv += q * q;
        }
        // Maximising (Σ x·v)² / Σ v² minimises the error.
        let gain = xv * xv / vv;
        if gain > best.0 {
            best = (gain, xv / vv);
        }
    }
    best.1
}

/// Value `e` (0..64) of a 6-bit group, and its block's scale.
pub fn q6_value(g: &[u8], e: usize) -> (i8, f32) {
    let (b, i) = (e / 32, e % 32);
    let u = if b == 0 {
        g[i] & 63
    } else {
        (g[i] >> 6) << 4 | (g[32 + i % 16] >> (4 * (i / 16))) & 15
    };
    let d = f16::from_le_bytes([g[48 + 2 * b], g[49 + 2 * b]]).to_f32();
    (u as i8 - 32, d)
}

/// Scalar reference of [`Kernels::dot_q6`]: per 32-wide block, the exact
/// integer Σ value·x times (block scale · activation scale), added in order.
pub fn dot_q6_scalar(row: &[u8], x: &[i8], x_scale: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (g, grp) in row.chunks_exact(Q6_GROUP_BYTES).enumerate() {
        for b in 0..2 {
            let (mut dot, mut d) = (0i32, 0f32);
            for i in 0..32 {
                let (v, s) = q6_value(grp, 32 * b + i);
                dot += i32::from(v) * i32::from(x[64 * g + 32 * b + i]);
                d = s;
            }
            sum += dot as f32 * (d * x_scale[2 * g + b]);
        }
    }
    sum
}

/// Quantizes `x` to int8 in 32-wide blocks (scale = absmax / 127, rounding
/// ties to even, as the BitLinear activations); the last block may be short.
pub fn quantize_q8_blocks(x: &[f32], q: &mut [i8], scales: &mut [f32]) {
    for ((xb, qb), s) in x.chunks(32).zip(q.chunks_mut(32)).zip(scales.iter_mut()) {
        let max = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        *s = max / 127.0;
        let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        for (o, v) in qb.iter_mut().zip(xb) {
            *o = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
}

/// Scalar reference: Σ code·q for each token.
pub fn dot_codes_multi_scalar(
    packed: &[u8],
    q: &[i8],
    stride: usize,
    packing: Packing,
    out: &mut [i32],
) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_codes_scalar(packed, &q[j * stride..], packing);
    }
}

/// The multi-token kernels' bounds check: `tokens` rows of `span`
/// activations, `stride` apart, lie inside `q`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn assert_tokens_fit(q: &[i8], stride: usize, tokens: usize, span: usize) {
    if let Some(last) = tokens.checked_sub(1) {
        assert!(q.len() >= last * stride + span);
    }
}

/// The SIMD `dot_u8_multi`s: `head(codes, q_j, full)` takes the first
/// `full` bytes (a multiple of `width`), the scalar code the tail.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn dot_u8_multi_with(
    codes: &[u8],
    q: &[i8],
    stride: usize,
    out: &mut [i32],
    width: usize,
    head: impl Fn(&[u8], &[i8], usize) -> i32,
) {
    let n = codes.len();
    assert_tokens_fit(q, stride, out.len(), n);
    let full = n / width * width;
    for (j, o) in out.iter_mut().enumerate() {
        let qj = &q[j * stride..j * stride + n];
        *o = head(codes, qj, full)
            + codes[full..]
                .iter()
                .zip(&qj[full..])
                .map(|(&c, &v)| i32::from(c) * i32::from(v))
                .sum::<i32>();
    }
}

/// The SIMD `dot_q8`s: `head(.., blocks)` takes the first `blocks` full
/// 32-wide blocks, the scalar code a short last block.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn dot_q8_with(
    w: &[i8],
    w_scale: &[f32],
    x: &[i8],
    x_scale: &[f32],
    head: impl Fn(&[i8], &[f32], &[i8], &[f32], usize) -> f32,
) -> f32 {
    let n = w.len().min(x.len());
    let full = (n / 32).min(w_scale.len()).min(x_scale.len());
    head(w, w_scale, x, x_scale, full)
        + dot_q8_scalar(
            &w[full * 32..n],
            &w_scale[full.min(w_scale.len())..],
            &x[full * 32..n],
            &x_scale[full.min(x_scale.len())..],
        )
}

/// The SIMD `dot_f32`s: `head(a, b, full)` over the full groups of eight,
/// then the tail in order, as [`dot_f32_scalar`].
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn dot_f32_with(a: &[f32], b: &[f32], head: impl Fn(&[f32], &[f32], usize) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let full = n / 8 * 8;
    let mut s = head(a, b, full);
    for i in full..n {
        s += a[i] * b[i];
    }
    s
}

/// Scalar reference of [`Kernels::dot_u8_multi`].
pub fn dot_u8_multi_scalar(codes: &[u8], q: &[i8], stride: usize, out: &mut [i32]) {
    for (j, o) in out.iter_mut().enumerate() {
        let qj = &q[j * stride..j * stride + codes.len()];
        *o = codes
            .iter()
            .zip(qj)
            .map(|(&c, &v)| i32::from(c) * i32::from(v))
            .sum();
    }
}

/// Scalar reference of [`Kernels::dot_tq1`].
pub fn dot_tq1_scalar(blocks: &[u8], q: &[i8]) -> i32 {
    dot_tq1_unpacked(blocks, q, dot_u8_multi_scalar)
}

/// `dot_tq1` as the table's unpacking then a level's `dot_u8_multi`, block
/// by block (the levels without a fused TQ1_0 kernel).
fn dot_tq1_unpacked(blocks: &[u8], q: &[i8], dot_u8: fn(&[u8], &[i8], usize, &mut [i32])) -> i32 {
    let mut codes = [0u8; 256];
    let mut sum = 0;
    for (blk, qb) in blocks.chunks_exact(54).zip(q.chunks(256)) {
        tq1_unpack_codes(blk, &mut codes);
        let mut s = [0];
        dot_u8(&codes[..qb.len()], qb, 0, &mut s);
        sum += s[0];
    }
    sum
}

/// Scalar reference of [`Kernels::dot_rows`].
pub fn dot_rows_scalar(
    packed: &[u8],
    row_bytes: usize,
    q: &[i8],
    packing: Packing,
    out: &mut [i32],
) {
    dot_rows_by_row(dot_codes_multi_scalar, packed, row_bytes, q, packing, out);
}

/// `dot_rows` as one `dot_codes_multi` call per row.
fn dot_rows_by_row(
    multi: fn(&[u8], &[i8], usize, Packing, &mut [i32]),
    packed: &[u8],
    row_bytes: usize,
    q: &[i8],
    packing: Packing,
    out: &mut [i32],
) {
    for (row, o) in packed.chunks_exact(row_bytes.max(1)).zip(out) {
        multi(row, q, 0, packing, std::slice::from_mut(o));
    }
}

/// Scalar reference: Σ code·q.
pub fn dot_codes_scalar(packed: &[u8], q: &[i8], packing: Packing) -> i32 {
    let shifts = packing.shifts();
    let mut sum = 0i32;
    for (c, qg) in (0..packing.chunks(packed.len())).zip(q.chunks_exact(128)) {
        let chunk = &packed[packing.chunk_at(c)..packing.chunk_at(c) + 32];
        for (p, &b) in chunk.iter().enumerate() {
            for (l, s) in shifts.iter().enumerate() {
                let code = i32::from((b >> s) & 3);
                sum += code * i32::from(qg[32 * l + p]);
            }
        }
    }
    sum
}

/// Scalar reference: Σ f16(row) · x.
pub fn dot_f16_scalar(row: &[u8], x: &[f32]) -> f32 {
    row.chunks_exact(2)
        .zip(x)
        .map(|(b, &v)| f16::from_le_bytes([b[0], b[1]]).to_f32() * v)
        .sum()
}

/// `rms_norm` and `rope` of a SIMD module, from its f32 vector operations
/// (`W` lanes; `swap` exchanges lanes 2i and 2i + 1) and its `dot_f32`:
/// element-wise multiply and add in the scalar references' order, the
/// tails through the references themselves.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! norm_and_rope {
    (feature = $feature:literal, W = $w:literal, load = $load:ident, store = $store:ident,
     mul = $mul:ident, add = $add:ident, splat = $splat:ident, swap = $swap:expr) => {
        pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
            let r = super::rms_inv(x, eps, dot_f32);
            assert!(
                weight.len() >= x.len(),
                "RMSNorm weight shorter than the row"
            );
            let full = x.len() / $w * $w;
            // SAFETY: the level's features were detected at run time;
            // full ≤ x.len() ≤ weight.len().
            unsafe { scale_simd(x, weight, r, full) };
            super::scale_by(&mut x[full..], &weight[full..], r);
        }

        #[target_feature(enable = $feature)]
        unsafe fn scale_simd(x: &mut [f32], w: &[f32], r: f32, full: usize) {
            let rv = $splat(r);
            for i in (0..full).step_by($w) {
                // SAFETY: i + W ≤ full ≤ both lengths.
                unsafe {
                    let p = x.as_mut_ptr().add(i);
                    $store(p, $mul($mul($load(p), rv), $load(w.as_ptr().add(i))));
                }
            }
        }

        pub fn rope(x: &mut [f32], c: &[f32], s: &[f32], style: $crate::model::config::RopeStyle) {
            use $crate::model::config::RopeStyle;
            let half = c.len() / 2;
            assert!(
                s.len() == c.len() && x.len() >= 2 * half,
                "RoPE tables of unequal lengths or longer than the head"
            );
            // Whole vectors: W / 2 pairs (Norm) or W pairs (Neox) each.
            let pairs = match style {
                RopeStyle::Norm => half / ($w / 2) * ($w / 2),
                RopeStyle::Neox => half / $w * $w,
            };
            // SAFETY: the level's features were detected at run time;
            // pairs ≤ half and 2 · half ≤ every length (asserted).
            unsafe { rope_simd(x, c, s, style, pairs) };
            super::rope_from(x, c, s, style, pairs);
        }

        #[target_feature(enable = $feature)]
        unsafe fn rope_simd(
            x: &mut [f32],
            c: &[f32],
            s: &[f32],
            style: $crate::model::config::RopeStyle,
            pairs: usize,
        ) {
            use $crate::model::config::RopeStyle;
            let half = c.len() / 2;
            let (xp, cp, sp) = (x.as_mut_ptr(), c.as_ptr(), s.as_ptr());
            match style {
                RopeStyle::Norm => {
                    for j in (0..2 * pairs).step_by($w) {
                        // SAFETY: j + W ≤ 2 · pairs ≤ every length.
                        unsafe {
                            let v = $load(xp.add(j));
                            let out =
                                $add($mul(v, $load(cp.add(j))), $mul($swap(v), $load(sp.add(j))));
                            $store(xp.add(j), out);
                        }
                    }
                }
                RopeStyle::Neox => {
                    for i in (0..pairs).step_by($w) {
                        let h = i + half;
                        // SAFETY: h + W ≤ half + pairs ≤ 2 · half ≤ every
                        // length.
                        unsafe {
                            let (a, b) = ($load(xp.add(i)), $load(xp.add(h)));
                            let ra = $add($mul(a, $load(cp.add(i))), $mul(b, $load(sp.add(i))));
                            let rb = $add($mul(b, $load(cp.add(h))), $mul(a, $load(sp.add(h))));
                            $store(xp.add(i), ra);
                            $store(xp.add(h), rb);
                        }
                    }
                }
            }
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use norm_and_rope;

/// `dot_rows` and `dot_codes_multi` of a SIMD module whose
/// `unsafe fn dot_n::<N>(packed, q, stride, packing) -> [i32; N]` takes up
/// to four tokens per pass over a row (AVX2, NEON): tokens go in groups of
/// four, the last group smaller.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! dot_codes_by_fours {
    () => {
        pub fn dot_rows(
            packed: &[u8],
            row_bytes: usize,
            q: &[i8],
            packing: Packing,
            out: &mut [i32],
        ) {
            assert!(packed.len() >= out.len() * row_bytes);
            assert!(q.len() >= packing.chunks(row_bytes) * 128);
            for (r, o) in out.iter_mut().enumerate() {
                let row = &packed[r * row_bytes..(r + 1) * row_bytes];
                // SAFETY: reachable only through `Kernels::for_level` of
                // this module's level, which checks the CPU feature at run
                // time; the asserts keep every load in bounds.
                *o = unsafe { dot_n::<1>(row, q, 0, packing) }[0];
            }
        }

        pub fn dot_codes_multi(
            packed: &[u8],
            q: &[i8],
            stride: usize,
            packing: Packing,
            out: &mut [i32],
        ) {
            $crate::backend::kernels::assert_tokens_fit(
                q,
                stride,
                out.len(),
                packing.chunks(packed.len()) * 128,
            );
            for (g, o) in out.chunks_mut(4).enumerate() {
                let q = &q[g * 4 * stride..];
                // SAFETY: reachable only through `Kernels::for_level` of
                // this module's level, which checks the CPU feature at run
                // time; the assert above keeps every load of every token
                // row in bounds, and `Packing` only names chunks inside
                // `packed`.
                unsafe {
                    match o.len() {
                        1 => o.copy_from_slice(&dot_n::<1>(packed, q, stride, packing)),
                        2 => o.copy_from_slice(&dot_n::<2>(packed, q, stride, packing)),
                        3 => o.copy_from_slice(&dot_n::<3>(packed, q, stride, packing)),
                        _ => o.copy_from_slice(&dot_n::<4>(packed, q, stride, packing)),
                    }
                }
            }
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use dot_codes_by_fours;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{act, Packing};

    super::dot_codes_by_fours!();

    /// N tokens against one packed row, the packing fixed at compile time
    /// (`P`: 0 = I2_S, 1 = TQ2_0 codes, 2 = a whole TQ2_0 row), so the
    /// shifts are immediates and the chunk addresses plain arithmetic.
    unsafe fn dot_n<const N: usize>(
        packed: &[u8],
        q: &[i8],
        stride: usize,
        packing: Packing,
    ) -> [i32; N] {
        // SAFETY: the caller's contract, unchanged.
        unsafe {
            match packing {
                Packing::I2S => dot_p::<N, 0>(packed, q, stride),
                Packing::Tq2 => dot_p::<N, 1>(packed, q, stride),
                Packing::Tq2Row => dot_p::<N, 2>(packed, q, stride),
            }
        }
    }

    /// Each 32-byte chunk is unpacked once into four vectors and multiplied
    /// with every token. One shift serves two fields: with t = v >> 4,
    /// `v & 3` and `t & 3` are codes, `v & 12` and `t & 12` four times
    /// codes, so a chunk costs one shift and four ands. Per token the plain
    /// products go into one i16 accumulator and the fourfold ones into
    /// another (two per token, so four tokens' fit in the 16 registers with
    /// the fields); every 4 chunks they are widened to i32 as
    /// 4·plain + fourfold, and the total divided by 4 (exact) at the end.
    /// Bounds, even for the unused code 3 and x = -128: a maddubs of codes
    /// is at most 3·128·2 = 768, of fourfold codes 3,072, so 4 chunks put
    /// at most 6,144 in the plain accumulator and 24,576 in the other,
    /// within i16.
    #[target_feature(enable = "avx2")]
    unsafe fn dot_p<const N: usize, const P: u8>(
        packed: &[u8],
        q: &[i8],
        stride: usize,
    ) -> [i32; N] {
        let packing = [Packing::I2S, Packing::Tq2, Packing::Tq2Row][P as usize];
        let (mask, mask4) = (_mm256_set1_epi8(3), _mm256_set1_epi8(12));
        let (ones, fours) = (_mm256_set1_epi16(1), _mm256_set1_epi16(4));
        let chunks = packing.chunks(packed.len());
        assert!(chunks == 0 || packing.chunk_at(chunks - 1) + 32 <= packed.len());
        // The field at bits 2l holds weight 32·f(l) + p: I2_S puts weight
        // 32·l + p at bits 6 − 2l, TQ2_0 at bits 2l.
        let at = |l: usize| if P == 0 { 32 * (3 - l) } else { 32 * l };
        let mut acc32 = [_mm256_setzero_si256(); N];
        let mut c = 0;
        while c < chunks {
            let end = (c + 4).min(chunks);
            let mut acc16 = [[_mm256_setzero_si256(); 2]; N];
            while c < end {
                // SAFETY: chunk c lies inside `packed` (asserted above);
                // unaligned load.
                let v =
                    unsafe { _mm256_loadu_si256(packed.as_ptr().add(packing.chunk_at(c)).cast()) };
                if c % 2 == 0 {
                    super::prefetch_ahead(packed.as_ptr().wrapping_add(packing.chunk_at(c)));
                }
                let t = _mm256_srli_epi16::<4>(v);
                // Bits 0-1 and 4-5 as codes, bits 2-3 and 6-7 as 4·code.
                let (f0, f2) = (_mm256_and_si256(v, mask), _mm256_and_si256(t, mask));
                let (f1, f3) = (_mm256_and_si256(v, mask4), _mm256_and_si256(t, mask4));
                for (j, a) in acc16.iter_mut().enumerate() {
                    // SAFETY: token j's 128 activations of chunk c are in
                    // bounds (asserted by the caller).
                    let x = |l: usize| unsafe {
                        _mm256_loadu_si256(q.as_ptr().add(j * stride + c * 128 + at(l)).cast())
                    };
                    let plain = _mm256_add_epi16(
                        _mm256_maddubs_epi16(f0, x(0)),
                        _mm256_maddubs_epi16(f2, x(2)),
                    );
                    let fourfold = _mm256_add_epi16(
                        _mm256_maddubs_epi16(f1, x(1)),
                        _mm256_maddubs_epi16(f3, x(3)),
                    );
                    a[0] = _mm256_add_epi16(a[0], plain);
                    a[1] = _mm256_add_epi16(a[1], fourfold);
                }
                c += 1;
            }
            for (a32, [plain, fourfold]) in acc32.iter_mut().zip(acc16) {
                let wide = _mm256_add_epi32(
                    _mm256_madd_epi16(plain, fours),
                    _mm256_madd_epi16(fourfold, ones),
                );
                *a32 = _mm256_add_epi32(*a32, wide);
            }
        }
        acc32.map(|a| hsum_i32(a) >> 2)
    }

    #[target_feature(enable = "avx2")]
    fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    pub fn unpack_tq1(bytes: &[u8], out: &mut [u8]) {
        assert!(bytes.len() >= 52 && out.len() >= 256);
        // SAFETY: reachable only when AVX2 was detected; the assert keeps
        // every load and store in bounds.
        unsafe { unpack_tq1_avx2(bytes, out) };
        // The last 16 weights (4 bytes × 4 trits) through the table.
        crate::quant::ternary::tq1_unpack_tail(bytes, out);
    }

    #[target_feature(enable = "avx2")]
    unsafe fn unpack_tq1_avx2(bytes: &[u8], out: &mut [u8]) {
        let flip = _mm256_set1_epi8(-128);
        // SAFETY: bytes holds ≥ 52 bytes (asserted by the caller).
        let mut x = _mm256_xor_si256(unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }, flip);
        for n in 0..5 {
            // Weights n·32 + p for p in 0..32.
            // SAFETY: 32·n + 32 ≤ 160 ≤ out.len() (≥ 256, asserted).
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(32 * n).cast(), top_trit(x)) };
            x = times3(x);
        }
        // Bytes 32..48: weights 160 + n·16 + p for p in 0..16.
        // SAFETY: 32 + 16 ≤ 52 ≤ bytes.len().
        let y = unsafe { _mm_loadu_si128(bytes.as_ptr().add(32).cast()) };
        let mut y = _mm256_xor_si256(_mm256_castsi128_si256(y), flip);
        for n in 0..5 {
            let t = _mm256_castsi256_si128(top_trit(y));
            // SAFETY: 160 + 16·n + 16 ≤ 240 ≤ out.len().
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(160 + 16 * n).cast(), t) };
            y = times3(y);
        }
    }

    pub fn dot_tq1(blocks: &[u8], q: &[i8]) -> i32 {
        // SAFETY: reachable only when AVX2 was detected (the kernel
        // asserts the lengths it reads).
        unsafe { dot_tq1_avx2(blocks, q, blocks.len() / 54) }
    }

    /// x · 3 in each byte, mod 256: two byte additions. The result is
    /// hidden from the optimiser (an empty `asm!`), which otherwise folds
    /// a chain of them into a multiply by 9, 27 or 81 and emulates that
    /// byte multiply with 16-bit multiplies, shifts and masks (five
    /// operations instead of two; seen in the disassembly).
    #[target_feature(enable = "avx2")]
    fn times3(x: __m256i) -> __m256i {
        let mut y = _mm256_add_epi8(x, _mm256_add_epi8(x, x));
        // SAFETY: an empty instruction template: it reads and writes only
        // this register, touches no memory, stack or flags.
        unsafe {
            std::arch::asm!("/* {0} */", inout(ymm_reg) y, options(pure, nomem, nostack, preserves_flags))
        };
        y
    }

    /// The trit ⌊3y / 256⌋ of each byte y = b · 3ⁿ mod 256, given as
    /// y' = y ^ 0x80 (y − 128 as a signed byte): the trit is
    /// [y ≥ 86] + [y ≥ 171], two signed comparisons (each −1 where true),
    /// negated. The ×3 steps can stay in that form: 3 · 128 ≡ 128 (mod 256),
    /// so 3y' ≡ (3y) ^ 0x80. Checked against the table for every byte in
    /// the tests.
    #[target_feature(enable = "avx2")]
    fn top_trit(y: __m256i) -> __m256i {
        let ge86 = _mm256_cmpgt_epi8(y, _mm256_set1_epi8(-43));
        let ge171 = _mm256_cmpgt_epi8(y, _mm256_set1_epi8(42));
        _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), ge86), ge171)
    }

    /// TQ1_0 blocks against one token, the codes decoded in registers,
    /// two blocks at a time (one at the end of an odd count). Each pass
    /// adds at most 8 products of at most 2 · 2 · 128 = 512 to each of two
    /// i16 accumulators per pair of blocks: widened every 8 blocks
    /// (≤ 16,384).
    #[target_feature(enable = "avx2")]
    unsafe fn dot_tq1_avx2(blocks: &[u8], q: &[i8], nb: usize) -> i32 {
        assert!(blocks.len() >= nb * 54 && q.len() >= nb * 256);
        let ones = _mm256_set1_epi16(1);
        let mut acc32 = _mm256_setzero_si256();
        let mut b = 0;
        while b < nb {
            let end = (b + 8).min(nb);
            let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            while b < end {
                let blk = blocks.as_ptr().wrapping_add(b * 54);
                super::prefetch_ahead(blk);
                super::prefetch_ahead(blk.wrapping_add(64));
                // SAFETY: blocks b (and b + 1 for a pair) lie inside
                // `blocks`, their 256 (512) activations inside `q`
                // (asserted above).
                let [p0, p1] = unsafe {
                    let qp = q.as_ptr().add(b * 256);
                    if b + 2 <= end {
                        b += 2;
                        tq1_pair(blk, qp)
                    } else {
                        b += 1;
                        tq1_one(blk, qp)
                    }
                };
                a0 = _mm256_add_epi16(a0, p0);
                a1 = _mm256_add_epi16(a1, p1);
            }
            acc32 = _mm256_add_epi32(acc32, _mm256_madd_epi16(a0, ones));
            acc32 = _mm256_add_epi32(acc32, _mm256_madd_epi16(a1, ones));
        }
        hsum_i32(acc32)
    }

    /// Trits times activations for 32 weights: i16 sums of pairs.
    #[target_feature(enable = "avx2")]
    fn trit_products(y: __m256i, x: __m256i) -> __m256i {
        _mm256_maddubs_epi16(top_trit(y), x)
    }

    /// 32 activations at `p`.
    ///
    /// # Safety
    /// The bytes read must lie inside one allocation.
    #[target_feature(enable = "avx2")]
    unsafe fn load32(p: *const i8) -> __m256i {
        // SAFETY: the caller's.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    /// 16 activations at `p`, then 16 at `p2`.
    ///
    /// # Safety
    /// As [`load32`], for both halves.
    #[target_feature(enable = "avx2")]
    unsafe fn load16x2(p: *const i8, p2: *const i8) -> __m256i {
        // SAFETY: the caller's.
        unsafe {
            _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(p.cast())),
                _mm_loadu_si128(p2.cast()),
            )
        }
    }

    /// The five planes x · 3ⁿ of the first 32 bytes of a block, in
    /// [`top_trit`]'s form, against weights 32n + p.
    ///
    /// # Safety
    /// 32 bytes at `blk` and 160 activations at `q` readable.
    #[target_feature(enable = "avx2")]
    unsafe fn tq1_head(blk: *const u8, q: *const i8) -> [__m256i; 5] {
        let flip = _mm256_set1_epi8(-128);
        // SAFETY: the caller's.
        let x0 = _mm256_xor_si256(unsafe { _mm256_loadu_si256(blk.cast()) }, flip);
        let x1 = times3(x0);
        let x2 = times3(x1);
        let x3 = times3(x2);
        let x4 = times3(x3);
        // SAFETY: the caller's (activations 0..160).
        let x = |n: usize| unsafe { load32(q.add(32 * n)) };
        [
            trit_products(x0, x(0)),
            trit_products(x1, x(1)),
            trit_products(x2, x(2)),
            trit_products(x3, x(3)),
            trit_products(x4, x(4)),
        ]
    }

    /// qh's four bytes as four dwords in each 128-bit half, dword n times
    /// 3ⁿ: weights 240 + 4n + p of the block in that half.
    #[target_feature(enable = "avx2")]
    fn qh_planes(h: __m256i) -> __m256i {
        let h = _mm256_xor_si256(h, _mm256_set1_epi8(-128));
        let h3 = times3(h);
        let h9 = times3(h3);
        _mm256_blend_epi32::<0b1000_1000>(
            _mm256_blend_epi32::<0b0100_0100>(_mm256_blend_epi32::<0b0010_0010>(h, h3), h9),
            times3(h9),
        )
    }

    /// Blocks at `blk` and `blk + 54` against 512 activations at `q`: two
    /// i16 partial sums. Each block's first 32 bytes make five full planes;
    /// their bytes 32..48 (weights 160 + 16n + p) share one vector, a
    /// block per half, and so do their qh bytes: both as full vectors
    /// against activations loaded 16 at a time.
    ///
    /// # Safety
    /// 108 bytes at `blk` and 512 activations at `q` readable.
    #[target_feature(enable = "avx2")]
    unsafe fn tq1_pair(blk: *const u8, q: *const i8) -> [__m256i; 2] {
        // SAFETY: the caller's, for everything read below.
        unsafe {
            let [a0, a1, a2, a3, a4] = tq1_head(blk, q);
            let [b0, b1, b2, b3, b4] = tq1_head(blk.add(54), q.add(256));
            let y0 = _mm256_xor_si256(
                load16x2(blk.add(32).cast(), blk.add(54 + 32).cast()),
                _mm256_set1_epi8(-128),
            );
            let y1 = times3(y0);
            let y2 = times3(y1);
            let y3 = times3(y2);
            let y4 = times3(y3);
            let x = |o: usize| load16x2(q.add(o), q.add(256 + o));
            let qh = |p: *const u8| (p.add(48).cast::<u32>()).read_unaligned() as i32;
            let h = _mm256_inserti128_si256::<1>(
                _mm256_set1_epi32(qh(blk)),
                _mm_set1_epi32(qh(blk.add(54))),
            );
            let s0 = _mm256_add_epi16(
                _mm256_add_epi16(_mm256_add_epi16(a0, a1), _mm256_add_epi16(a2, a3)),
                _mm256_add_epi16(
                    _mm256_add_epi16(a4, trit_products(y0, x(160))),
                    _mm256_add_epi16(trit_products(y1, x(176)), trit_products(y2, x(192))),
                ),
            );
            let s1 = _mm256_add_epi16(
                _mm256_add_epi16(_mm256_add_epi16(b0, b1), _mm256_add_epi16(b2, b3)),
                _mm256_add_epi16(
                    _mm256_add_epi16(b4, trit_products(y3, x(208))),
                    _mm256_add_epi16(
                        trit_products(y4, x(224)),
                        trit_products(qh_planes(h), x(240)),
                    ),
                ),
            );
            [s0, s1]
        }
    }

    /// One block against its 256 activations at `q`: bytes 32..48 two
    /// powers per vector, qh's bytes in the upper half of the last.
    ///
    /// # Safety
    /// 54 bytes at `blk` and 256 activations at `q` readable.
    #[target_feature(enable = "avx2")]
    unsafe fn tq1_one(blk: *const u8, q: *const i8) -> [__m256i; 2] {
        // SAFETY: the caller's, for everything read below.
        unsafe {
            let [a0, a1, a2, a3, a4] = tq1_head(blk, q);
            let lo = _mm_loadu_si128(blk.add(32).cast());
            let y = _mm256_xor_si256(_mm256_broadcastsi128_si256(lo), _mm256_set1_epi8(-128));
            let y3 = times3(y);
            let y9 = times3(y3);
            let y27 = times3(y9);
            let h = _mm256_set1_epi32((blk.add(48).cast::<u32>()).read_unaligned() as i32);
            let tail = [
                _mm256_blend_epi32::<0b1111_0000>(y, y3),
                _mm256_blend_epi32::<0b1111_0000>(y9, y27),
                _mm256_blend_epi32::<0b1111_0000>(times3(y27), qh_planes(h)),
            ];
            let s0 = _mm256_add_epi16(
                _mm256_add_epi16(a0, a1),
                _mm256_add_epi16(a2, trit_products(tail[0], load32(q.add(160)))),
            );
            let s1 = _mm256_add_epi16(
                _mm256_add_epi16(a3, a4),
                _mm256_add_epi16(
                    trit_products(tail[1], load32(q.add(192))),
                    trit_products(tail[2], load32(q.add(224))),
                ),
            );
            [s0, s1]
        }
    }

    pub fn dot_u8_multi(codes: &[u8], q: &[i8], stride: usize, out: &mut [i32]) {
        super::dot_u8_multi_with(codes, q, stride, out, 32, |c, x, full| {
            // SAFETY: reachable only when AVX2 was detected; `full` ≤ the
            // length of both slices.
            unsafe { dot_u8(c, x, full) }
        });
    }

    /// u8 codes (≤ 3) × i8 over `full` bytes (a multiple of 32); i16 sums
    /// widened every 32 vectors (32 × 768 ≤ 24,576).
    #[target_feature(enable = "avx2")]
    unsafe fn dot_u8(codes: &[u8], q: &[i8], full: usize) -> i32 {
        let ones = _mm256_set1_epi16(1);
        let (mut acc32, mut acc16) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for i in 0..full / 32 {
            // SAFETY: 32 bytes at 32·i < full ≤ len of both slices.
            let (c, x) = unsafe {
                (
                    _mm256_loadu_si256(codes.as_ptr().add(32 * i).cast()),
                    _mm256_loadu_si256(q.as_ptr().add(32 * i).cast()),
                )
            };
            acc16 = _mm256_add_epi16(acc16, _mm256_maddubs_epi16(c, x));
            if i % 32 == 31 {
                acc32 = _mm256_add_epi32(acc32, _mm256_madd_epi16(acc16, ones));
                acc16 = _mm256_setzero_si256();
            }
        }
        hsum_i32(_mm256_add_epi32(acc32, _mm256_madd_epi16(acc16, ones)))
    }

    pub fn dot_q8(w: &[i8], w_scale: &[f32], x: &[i8], x_scale: &[f32]) -> f32 {
        super::dot_q8_with(w, w_scale, x, x_scale, |w, ws, x, xs, blocks| {
            // SAFETY: reachable only when AVX2 and FMA were detected; only
            // the first `blocks` full blocks are loaded.
            unsafe { dot_q8_avx2(w, ws, x, xs, blocks) }
        })
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_q8_avx2(w: &[i8], ws: &[f32], x: &[i8], xs: &[f32], blocks: usize) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            if b % 2 == 0 {
                super::prefetch_ahead(w.as_ptr().wrapping_add(32 * b).cast());
            }
            // SAFETY: b < blocks ≤ len / 32 of both slices.
            let (wv, xv) = unsafe {
                (
                    _mm256_loadu_si256(w.as_ptr().add(32 * b).cast()),
                    _mm256_loadu_si256(x.as_ptr().add(32 * b).cast()),
                )
            };
            // i8 × i8 through maddubs (u8 × i8): |w| and x with w's sign.
            // Pair sums ≤ 2·127·127, within i16.
            let prod = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
            let scale = _mm256_set1_ps(ws[b] * xs[b]);
            acc = _mm256_fmadd_ps(sums, scale, acc);
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    pub fn dot_q6(row: &[u8], x: &[i8], x_scale: &[f32]) -> f32 {
        let groups = row.len() / super::Q6_GROUP_BYTES;
        assert!(x.len() >= groups * 64 && x_scale.len() >= groups * 2);
        // SAFETY: reachable only when AVX2, FMA and F16C were detected; the
        // assert keeps every load in bounds.
        unsafe { dot_q6_avx2(row, x, x_scale, groups) }
    }

    /// Each group's two blocks unpacked to their unsigned codes u in
    /// registers, multiplied with the activations as u8 × i8 (pair sums
    /// ≤ 2·63·127, within i16), less 32·(x₀ + x₁) per pair (the codes'
    /// offset, one more maddubs), so each i32 lane holds the exact
    /// Σ value·x of four values; then scaled per block as `dot_q8`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q6_avx2(row: &[u8], x: &[i8], xs: &[f32], groups: usize) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let (six, low, high, off) = (
            _mm256_set1_epi8(0x3f),
            _mm256_set1_epi8(0x0f),
            _mm256_set1_epi8(0x30),
            _mm256_set1_epi8(32),
        );
        // Block 1's low bits: values 0..16 (lane 0) in the low nibbles,
        // 16..32 (lane 1) in the high ones.
        let nibble = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
        let mut acc = _mm256_setzero_ps();
        for g in 0..groups {
            super::prefetch_ahead(row.as_ptr().wrapping_add(super::Q6_GROUP_BYTES * g));
            // SAFETY: group g's 52 bytes are in `row`, its 64 activations
            // and 2 scales in `x` and `xs` (g < groups, asserted by the
            // caller).
            let (a, b, d, s, xv) = unsafe {
                let p = row.as_ptr().add(super::Q6_GROUP_BYTES * g);
                let px = x.as_ptr().add(64 * g);
                (
                    _mm256_loadu_si256(p.cast()),
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(32).cast())),
                    _mm_cvtph_ps(_mm_cvtsi32_si128(p.add(48).cast::<i32>().read_unaligned())),
                    _mm_castpd_ps(_mm_load_sd(xs.as_ptr().add(2 * g).cast())),
                    [
                        _mm256_loadu_si256(px.cast()),
                        _mm256_loadu_si256(px.add(32).cast()),
                    ],
                )
            };
            let u0 = _mm256_and_si256(a, six);
            let u1 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<2>(a), high),
                _mm256_and_si256(_mm256_srlv_epi32(b, nibble), low),
            );
            let scale = _mm_mul_ps(d, s);
            let scales = [
                _mm256_broadcastss_ps(scale),
                _mm256_broadcastss_ps(_mm_movehdup_ps(scale)),
            ];
            for (b, u) in [u0, u1].into_iter().enumerate() {
                let prod = _mm256_sub_epi16(
                    _mm256_maddubs_epi16(u, xv[b]),
                    _mm256_maddubs_epi16(off, xv[b]),
                );
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
                acc = _mm256_fmadd_ps(sums, scales[b], acc);
            }
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    pub fn absmax(x: &[f32]) -> f32 {
        let full = x.len() / 8 * 8;
        // SAFETY: AVX2 is checked at run time; loads stay below `full`.
        let m = unsafe { absmax_avx2(x, full) };
        act::absmax(&x[full..]).max(m)
    }

    #[target_feature(enable = "avx2")]
    unsafe fn absmax_avx2(x: &[f32], full: usize) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ full ≤ x.len().
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
            // maxps returns its second operand when either is NaN: a NaN
            // |x| leaves the running maximum as it was, as `f32::max` does.
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
    }

    pub fn quantize(x: &[f32], scale: f32, q: &mut [i8]) {
        assert_eq!(x.len(), q.len());
        let full = x.len() / 32 * 32;
        // SAFETY: AVX2 is checked at run time; loads and stores stay below
        // `full` ≤ both lengths.
        unsafe { quantize_avx2(x, scale, q, full) };
        act::quantize_with(&x[full..], scale, &mut q[full..]);
    }

    #[target_feature(enable = "avx2")]
    unsafe fn quantize_avx2(x: &[f32], scale: f32, q: &mut [i8], full: usize) {
        let (sv, magic) = (_mm256_set1_ps(scale), _mm256_set1_ps(act::ROUND_MAGIC));
        let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
        // packs works within 128-bit halves: dwords 0, 4, 1, 5, ... put the
        // 32 bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for i in (0..full).step_by(32) {
            let ints: [__m256i; 4] = std::array::from_fn(|j| {
                // SAFETY: i + 32 ≤ full ≤ x.len().
                let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(i + 8 * j)) }, sv);
                // NaN becomes 0 (as `as i8` makes it); then the reference's
                // rounding (add, subtract 1.5 · 2²³), clamp, exact convert.
                let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
                let v = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
                _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(v, hi), lo))
            });
            let w = _mm256_packs_epi16(
                _mm256_packs_epi32(ints[0], ints[1]),
                _mm256_packs_epi32(ints[2], ints[3]),
            );
            let w = _mm256_permutevar8x32_epi32(w, order);
            // SAFETY: i + 32 ≤ full ≤ q.len().
            unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(i).cast(), w) };
        }
    }

    super::norm_and_rope!(
        feature = "avx2",
        W = 8,
        load = _mm256_loadu_ps,
        store = _mm256_storeu_ps,
        mul = _mm256_mul_ps,
        add = _mm256_add_ps,
        splat = _mm256_set1_ps,
        swap = _mm256_permute_ps::<0b1011_0001>
    );

    fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: AVX2 is checked at run time; loads stay below `full`.
        super::dot_f32_with(a, b, |a, b, full| unsafe { dot_f32_avx2(a, b, full) })
    }

    #[target_feature(enable = "avx2")]
    unsafe fn dot_f32_avx2(a: &[f32], b: &[f32], full: usize) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ full ≤ both lengths.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                )
            };
            acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
        }
        lanes_in_order(acc)
    }

    pub fn scores(q: &[f32], hd: usize, k: &[f32], stride: usize, out: &mut [f32]) {
        let Some((m, n)) = super::attention_shape(q.len(), hd, out.len()) else {
            return;
        };
        assert!(m * n <= out.len() && (n - 1) * stride + hd <= k.len());
        // Four query vectors at a time: four independent sums per key.
        let mut j = 0;
        while j < m {
            let count = (m - j).min(4);
            // SAFETY: reachable only when AVX2 was detected; the query
            // vectors j..j + count lie in `q` (m · hd ≤ q.len()), keys and
            // outputs are inside their slices (asserted above).
            unsafe {
                match count {
                    4 => scores_of::<4>(q, hd, k, stride, n, j, out),
                    3 => scores_of::<3>(q, hd, k, stride, n, j, out),
                    2 => scores_of::<2>(q, hd, k, stride, n, j, out),
                    _ => scores_of::<1>(q, hd, k, stride, n, j, out),
                }
            }
            j += count;
        }
    }

    /// Scores of query vectors j0..j0 + J against all n keys.
    #[target_feature(enable = "avx2")]
    unsafe fn scores_of<const J: usize>(
        q: &[f32],
        hd: usize,
        k: &[f32],
        stride: usize,
        n: usize,
        j0: usize,
        out: &mut [f32],
    ) {
        let full = hd / 8 * 8;
        let qj = |j: usize| &q[(j0 + j) * hd..(j0 + j + 1) * hd];
        for p in 0..n {
            let kp = &k[p * stride..p * stride + hd];
            let mut acc = [_mm256_setzero_ps(); J];
            for i in (0..full).step_by(8) {
                // SAFETY: i + 8 ≤ full ≤ hd, the length of `kp` and of
                // every `qj`.
                let kv = unsafe { _mm256_loadu_ps(kp.as_ptr().add(i)) };
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: as for `kv`.
                    let qv = unsafe { _mm256_loadu_ps(qj(j).as_ptr().add(i)) };
                    // Multiply then add (no FMA): the reference's rounding.
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(qv, kv));
                }
            }
            for (j, a) in acc.into_iter().enumerate() {
                let mut s = lanes_in_order(a);
                for (x, y) in qj(j)[full..].iter().zip(&kp[full..]) {
                    s += x * y;
                }
                out[(j0 + j) * n + p] = s;
            }
        }
    }

    /// The eight lanes summed as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)),
    /// [`super::dot_f32_scalar`]'s order.
    #[target_feature(enable = "avx2")]
    fn lanes_in_order(acc: __m256) -> f32 {
        // [l0+l4, l1+l5, l2+l6, l3+l7]
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        // [(l0+l4)+(l2+l6), (l1+l5)+(l3+l7), ..]
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01)))
    }

    pub fn weighted_sum(w: &[f32], v: &[f32], stride: usize, hd: usize, out: &mut [f32]) {
        let Some((m, n)) = super::attention_shape(out.len(), hd, w.len()) else {
            return;
        };
        assert!(m * n <= w.len() && (n - 1) * stride + hd <= v.len());
        // 32 positions at a time (16 KB of values at hd = 128): they stay
        // in L1 while the outputs pass over them 16 dimensions at a time.
        // Each output still adds its positions in order.
        for p0 in (0..n).step_by(32) {
            let p1 = (p0 + 32).min(n);
            let mut j = 0;
            while j < m {
                let count = (m - j).min(4);
                // SAFETY: reachable only when AVX2 was detected; outputs
                // j..j + count lie in `out` (m · hd ≤ out.len()), weights
                // and values inside their slices (asserted above).
                unsafe {
                    match count {
                        4 => weighted_sum_of::<4>(w, n, v, stride, hd, (p0, p1), j, out),
                        3 => weighted_sum_of::<3>(w, n, v, stride, hd, (p0, p1), j, out),
                        2 => weighted_sum_of::<2>(w, n, v, stride, hd, (p0, p1), j, out),
                        _ => weighted_sum_of::<1>(w, n, v, stride, hd, (p0, p1), j, out),
                    }
                }
                j += count;
            }
        }
    }

    /// Outputs j0..j0 + J plus the weighted values of positions p0..p1.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    unsafe fn weighted_sum_of<const J: usize>(
        w: &[f32],
        n: usize,
        v: &[f32],
        stride: usize,
        hd: usize,
        (p0, p1): (usize, usize),
        j0: usize,
        out: &mut [f32],
    ) {
        let wj = |j: usize, p: usize| w[(j0 + j) * n + p];
        let at = |j: usize, d: usize| (j0 + j) * hd + d;
        let mut d = 0;
        // 16 dimensions (two registers) of J outputs, then 8, then one.
        while d + 16 <= hd {
            let mut acc = [[_mm256_setzero_ps(); 2]; J];
            for (j, a) in acc.iter_mut().enumerate() {
                let o = &out[at(j, d)..at(j, d) + 16];
                // SAFETY: `o` holds 16 values.
                *a = unsafe {
                    [
                        _mm256_loadu_ps(o.as_ptr()),
                        _mm256_loadu_ps(o.as_ptr().add(8)),
                    ]
                };
            }
            for p in p0..p1 {
                // The same line of the row 32 positions on (the next
                // block): these loops walk a block's rows one line at a
                // time, a row apart, which the hardware prefetchers follow
                // poorly (deep in a context the values come from memory).
                super::prefetch(v.as_ptr().wrapping_add((p + 32) * stride + d));
                let vp = &v[p * stride + d..p * stride + d + 16];
                // SAFETY: `vp` holds 16 values.
                let (v0, v1) = unsafe {
                    (
                        _mm256_loadu_ps(vp.as_ptr()),
                        _mm256_loadu_ps(vp.as_ptr().add(8)),
                    )
                };
                for (j, a) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(wj(j, p));
                    a[0] = _mm256_add_ps(a[0], _mm256_mul_ps(x, v0));
                    a[1] = _mm256_add_ps(a[1], _mm256_mul_ps(x, v1));
                }
            }
            for (j, a) in acc.iter().enumerate() {
                let o = &mut out[at(j, d)..at(j, d) + 16];
                // SAFETY: `o` holds 16 values.
                unsafe {
                    _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
                    _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
                }
            }
            d += 16;
        }
        if d + 8 <= hd {
            let mut acc = [_mm256_setzero_ps(); J];
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: d + 8 ≤ hd: inside output j.
                *a = unsafe { _mm256_loadu_ps(out[at(j, d)..at(j, d) + 8].as_ptr()) };
            }
            for p in p0..p1 {
                // SAFETY: d + 8 ≤ hd: inside value row p.
                let vp = unsafe { _mm256_loadu_ps(v[p * stride + d..][..8].as_ptr()) };
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(_mm256_set1_ps(wj(j, p)), vp));
                }
            }
            for (j, a) in acc.iter().enumerate() {
                // SAFETY: as for the load.
                unsafe { _mm256_storeu_ps(out[at(j, d)..at(j, d) + 8].as_mut_ptr(), *a) };
            }
            d += 8;
        }
        for j in 0..J {
            for p in p0..p1 {
                let x = wj(j, p);
                for (o, &y) in out[at(j, d)..at(j + 1, 0)]
                    .iter_mut()
                    .zip(&v[p * stride + d..p * stride + hd])
                {
                    *o += x * y;
                }
            }
        }
    }

    pub fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
        let n = (row.len() / 2).min(x.len());
        // SAFETY: reachable only when AVX2, FMA and F16C were detected
        // (`Kernels::for_level`); loads stay below `n` elements.
        unsafe { dot_f16_avx2(row, x, n) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16_avx2(row: &[u8], x: &[f32], n: usize) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            // 64 bytes of the row per step: one line.
            super::prefetch_ahead(row.as_ptr().wrapping_add(2 * i));
            for (j, a) in acc.iter_mut().enumerate() {
                let at = i + 8 * j;
                // SAFETY: at + 8 ≤ n elements of both slices.
                let (h, v) = unsafe {
                    (
                        _mm_loadu_si128(row.as_ptr().add(2 * at).cast()),
                        _mm256_loadu_ps(x.as_ptr().add(at)),
                    )
                };
                *a = _mm256_fmadd_ps(_mm256_cvtph_ps(h), v, *a);
            }
            i += 32;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        let mut sum = _mm_cvtss_f32(s);
        sum += super::dot_f16_scalar(&row[2 * i..2 * n], &x[i..n]);
        sum
    }
}

/// AVX-512 F and BW, with VNNI's `vpdpbusd` where `V` (the `avx512vnni`
/// level): the I2_S / TQ2_0 ternary products, one token and several. The
/// levels' other kernels are AVX2's (every AVX-512 CPU has AVX2): 512-bit
/// versions of the F16 head, the int8 table, the unpacked-code product and
/// TQ1_0's in-register decoder were slower than AVX2's on the one AVX-512
/// CPU we could time (Zen 4, which runs 512-bit operations as two halves;
/// docs/perf.md, 2026-11-29 (Zen 4)) and were removed (git history: c7257d9).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Packing;

    /// A level's `dot_rows` and `dot_codes_multi` in a module of their own,
    /// with `dot_n` fixed to VNNI or not.
    macro_rules! level {
        ($(#[$doc:meta])* $name:ident, $vnni:literal) => {
            $(#[$doc])*
            pub mod $name {
                use super::Packing;

                crate::backend::kernels::dot_codes_by_fours!();

                unsafe fn dot_n<const N: usize>(
                    packed: &[u8],
                    q: &[i8],
                    stride: usize,
                    packing: Packing,
                ) -> [i32; N] {
                    // SAFETY: the caller's contract (the level's features,
                    // AVX-512 F and BW, and VNNI for `vnni`, detected).
                    unsafe { super::dot_n::<N, $vnni>(packed, q, stride, packing) }
                }
            }
        };
    }
    level!(
        /// The entry points of the level without VNNI.
        bw,
        false
    );
    level!(
        /// The entry points of the level with VNNI.
        vnni,
        true
    );

    /// The packing as a constant (`P`: 0 = I2_S, 1 = TQ2_0 codes, 2 = a
    /// whole TQ2_0 row), and the function compiled with the features `V`
    /// asks for.
    unsafe fn dot_n<const N: usize, const V: bool>(
        packed: &[u8],
        q: &[i8],
        stride: usize,
        packing: Packing,
    ) -> [i32; N] {
        // SAFETY: the caller's contract, unchanged.
        unsafe {
            match (packing, V) {
                (Packing::I2S, false) => dot_p_bw::<N, 0>(packed, q, stride),
                (Packing::Tq2, false) => dot_p_bw::<N, 1>(packed, q, stride),
                (Packing::Tq2Row, false) => dot_p_bw::<N, 2>(packed, q, stride),
                (Packing::I2S, true) => dot_p_vnni::<N, 0>(packed, q, stride),
                (Packing::Tq2, true) => dot_p_vnni::<N, 1>(packed, q, stride),
                (Packing::Tq2Row, true) => dot_p_vnni::<N, 2>(packed, q, stride),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn dot_p_bw<const N: usize, const P: u8>(
        packed: &[u8],
        q: &[i8],
        stride: usize,
    ) -> [i32; N] {
        // SAFETY: the caller's contract; the body is inlined here.
        unsafe { dot_p::<N, P, false>(packed, q, stride) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot_p_vnni<const N: usize, const P: u8>(
        packed: &[u8],
        q: &[i8],
        stride: usize,
    ) -> [i32; N] {
        // SAFETY: the caller's contract; the body is inlined here.
        unsafe { dot_p::<N, P, true>(packed, q, stride) }
    }

    /// A 32-byte chunk (128 weights, weight 32·l + p in byte p) becomes
    /// two 64-byte code vectors: weights 0..64 and 64..128 in order, so
    /// each meets one plain 64-byte load of activations. The chunk goes
    /// in the low half and itself shifted by two bits in the high half,
    /// so fields l and l + 1 sit at the same bits of the two halves.
    ///
    /// With VNNI each product is one `vpdpbusd` into i32 lanes, which
    /// never saturate, so the fields are only masked, not shifted down:
    /// a field at bits 2b holds 4^b · code. Each vector has its own
    /// accumulator, scaled back per lane at the end (exact: every lane
    /// is a multiple of its scale). With one or two tokens each chunk's
    /// product starts from zero and is added after, which keeps the
    /// `vpdpbusd` latency off the chain from chunk to chunk. Bound: a lane gains at most
    /// 4 · 192 · 128 per chunk, so i32 holds rows of over a million
    /// weights.
    ///
    /// Without VNNI, `vpmaddubsw` saturates at i16, so one more shift of
    /// the whole brings the codes to bits 0-1 of each half; the products
    /// go into i16 lanes widened every 16 chunks (two accumulators of
    /// 16 · 768, ≤ 24,576 together).
    #[inline(always)]
    unsafe fn dot_p<const N: usize, const P: u8, const V: bool>(
        packed: &[u8],
        q: &[i8],
        stride: usize,
    ) -> [i32; N] {
        let packing = [Packing::I2S, Packing::Tq2, Packing::Tq2Row][P as usize];
        let chunks = packing.chunks(packed.len());
        assert!(chunks == 0 || packing.chunk_at(chunks - 1) + 32 <= packed.len());
        // SAFETY: inlined only into `dot_p_bw`/`dot_p_vnni`, whose callers
        // checked the features; every load is in bounds: chunk c inside
        // `packed` (asserted above), token j's 128 activations of chunk c
        // inside `q` (asserted by the caller).
        unsafe {
            let mask = _mm512_set1_epi8(3);
            let ones = _mm512_set1_epi16(1);
            let zero = _mm512_setzero_si512();
            // VNNI: the two fields' masks and their scales as shifts
            // (4^b = 1 << 2b). I2_S: l = 0 and 1 at bits 6-7, l = 2 and 3
            // at bits 2-3; TQ2_0: at bits 0-1 and 4-5.
            let (masks, shifts) = if P == 0 {
                ([0xc0u8 as i8, 0x0c], [6, 2])
            } else {
                ([0x03, 0x30], [0, 4])
            };
            // Written out, not `.map(|m| ..)`: a closure does not inherit
            // the target features (see the epilogue).
            let masks = [_mm512_set1_epi8(masks[0]), _mm512_set1_epi8(masks[1])];
            let mut acc32 = [[_mm512_setzero_si512(); 2]; N];
            let mut c = 0;
            while c < chunks {
                let end = if V { chunks } else { (c + 16).min(chunks) };
                let mut acc16 = [[_mm512_setzero_si512(); 2]; N];
                while c < end {
                    if c % 2 == 0 {
                        super::prefetch_ahead(packed.as_ptr().wrapping_add(packing.chunk_at(c)));
                    }
                    let v = _mm256_loadu_si256(packed.as_ptr().add(packing.chunk_at(c)).cast());
                    let codes = if V {
                        let high = if P == 0 {
                            _mm256_slli_epi16::<2>(v)
                        } else {
                            _mm256_srli_epi16::<2>(v)
                        };
                        let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v), high);
                        [_mm512_and_si512(w, masks[0]), _mm512_and_si512(w, masks[1])]
                    } else if P == 0 {
                        // I2_S: l = 0 at bits 6-7 of the low half, l = 1
                        // (bits 4-5) at 6-7 of the high half; then 2-3.
                        let w = _mm512_inserti64x4::<1>(
                            _mm512_castsi256_si512(v),
                            _mm256_slli_epi16::<2>(v),
                        );
                        [
                            _mm512_and_si512(_mm512_srli_epi16::<6>(w), mask),
                            _mm512_and_si512(_mm512_srli_epi16::<2>(w), mask),
                        ]
                    } else {
                        // TQ2_0: l = 0 at bits 0-1 of the low half, l = 1
                        // (bits 2-3) at 0-1 of the high half; then 4-5.
                        let w = _mm512_inserti64x4::<1>(
                            _mm512_castsi256_si512(v),
                            _mm256_srli_epi16::<2>(v),
                        );
                        [
                            _mm512_and_si512(w, mask),
                            _mm512_and_si512(_mm512_srli_epi16::<4>(w), mask),
                        ]
                    };
                    for j in 0..N {
                        let x = q.as_ptr().add(j * stride + c * 128);
                        for h in 0..2 {
                            let xv = _mm512_loadu_si512(x.add(64 * h).cast());
                            if V && N <= 2 {
                                // Few tokens: each chunk's products start
                                // from zero and are added after, so the
                                // chain from chunk to chunk is one add, not
                                // a `vpdpbusd` (decode was latency-bound:
                                // 0.8x AVX2's on a Zen 4).
                                let p = _mm512_dpbusd_epi32(zero, codes[h], xv);
                                acc32[j][h] = _mm512_add_epi32(acc32[j][h], p);
                            } else if V {
                                acc32[j][h] = _mm512_dpbusd_epi32(acc32[j][h], codes[h], xv);
                            } else {
                                let p = _mm512_maddubs_epi16(codes[h], xv);
                                acc16[j][h] = _mm512_add_epi16(acc16[j][h], p);
                            }
                        }
                    }
                    c += 1;
                }
                if !V {
                    for (a32, a16) in acc32.iter_mut().zip(acc16) {
                        let sum = _mm512_add_epi16(a16[0], a16[1]);
                        a32[0] = _mm512_add_epi32(a32[0], _mm512_madd_epi16(sum, ones));
                    }
                }
            }
            // A loop, not `acc32.map`: a closure does not inherit the
            // function's target features, so the intrinsics in it were
            // called out of line, through memory, for every row (the VNNI
            // level's prefill ran at 0.6x the BW level's on a Zen 4).
            let mut out = [0; N];
            for (o, [a, b]) in out.iter_mut().zip(acc32) {
                let sum = if V {
                    // Each accumulator over its fields' scale.
                    _mm512_add_epi32(
                        _mm512_srav_epi32(a, _mm512_set1_epi32(shifts[0])),
                        _mm512_srav_epi32(b, _mm512_set1_epi32(shifts[1])),
                    )
                } else {
                    _mm512_add_epi32(a, b)
                };
                *o = _mm512_reduce_add_epi32(sum);
            }
            out
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod sse {
    use std::arch::x86_64::*;

    use super::{act, Packing};

    pub fn dot_rows(packed: &[u8], row_bytes: usize, q: &[i8], packing: Packing, out: &mut [i32]) {
        super::dot_rows_by_row(dot_codes_multi, packed, row_bytes, q, packing, out);
    }

    pub fn dot_tq1(blocks: &[u8], q: &[i8]) -> i32 {
        super::dot_tq1_unpacked(blocks, q, dot_u8_multi)
    }

    pub fn dot_codes_multi(
        packed: &[u8],
        q: &[i8],
        stride: usize,
        packing: Packing,
        out: &mut [i32],
    ) {
        super::assert_tokens_fit(q, stride, out.len(), packing.chunks(packed.len()) * 128);
        for (j, o) in out.iter_mut().enumerate() {
            // SAFETY: reachable only through `Kernels::for_level(Sse)`,
            // which checks SSSE3 at run time; the assert above keeps every
            // token row's loads in bounds.
            *o = unsafe { dot_one(packed, &q[j * stride..], packing) };
        }
    }

    /// One token: each 32-byte chunk is two 16-byte halves; half h holds
    /// weights 32·l + 16·h + i. Eight maddubs per chunk land in the same i16
    /// lanes, so they are widened every 4 chunks (32 × 768 ≤ 24,576).
    #[target_feature(enable = "ssse3")]
    unsafe fn dot_one(packed: &[u8], q: &[i8], packing: Packing) -> i32 {
        let mask = _mm_set1_epi8(3);
        let ones = _mm_set1_epi16(1);
        let s = packing.shifts();
        let sh = [
            _mm_cvtsi32_si128(s[0] as i32),
            _mm_cvtsi32_si128(s[1] as i32),
            _mm_cvtsi32_si128(s[2] as i32),
            _mm_cvtsi32_si128(s[3] as i32),
        ];
        let (mut acc32, mut acc16) = (_mm_setzero_si128(), _mm_setzero_si128());
        for c in 0..packing.chunks(packed.len()) {
            let chunk = &packed[packing.chunk_at(c)..packing.chunk_at(c) + 32];
            for h in 0..2 {
                // SAFETY: 16 bytes at 16·h of a 32-byte chunk; q holds 128
                // activations from c·128 (asserted by the caller).
                let (v, qp) = unsafe {
                    (
                        _mm_loadu_si128(chunk.as_ptr().add(16 * h).cast()),
                        q.as_ptr().add(c * 128 + 16 * h),
                    )
                };
                for (l, s) in sh.iter().enumerate() {
                    let codes = _mm_and_si128(_mm_srl_epi16(v, *s), mask);
                    // SAFETY: as above.
                    let x = unsafe { _mm_loadu_si128(qp.add(32 * l).cast()) };
                    acc16 = _mm_add_epi16(acc16, _mm_maddubs_epi16(codes, x));
                }
            }
            if c % 4 == 3 {
                acc32 = _mm_add_epi32(acc32, _mm_madd_epi16(acc16, ones));
                acc16 = _mm_setzero_si128();
            }
        }
        hsum(_mm_add_epi32(acc32, _mm_madd_epi16(acc16, ones)))
    }

    #[target_feature(enable = "ssse3")]
    fn hsum(v: __m128i) -> i32 {
        let s = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    pub fn dot_u8_multi(codes: &[u8], q: &[i8], stride: usize, out: &mut [i32]) {
        super::dot_u8_multi_with(codes, q, stride, out, 16, |c, x, full| {
            // SAFETY: reachable only when SSSE3 was detected; `full` ≤ the
            // length of both slices.
            unsafe { dot_u8(c, x, full) }
        });
    }

    #[target_feature(enable = "ssse3")]
    unsafe fn dot_u8(codes: &[u8], q: &[i8], full: usize) -> i32 {
        let ones = _mm_set1_epi16(1);
        let (mut acc32, mut acc16) = (_mm_setzero_si128(), _mm_setzero_si128());
        for i in 0..full / 16 {
            // SAFETY: 16 bytes at 16·i < full ≤ len of both slices.
            let (c, x) = unsafe {
                (
                    _mm_loadu_si128(codes.as_ptr().add(16 * i).cast()),
                    _mm_loadu_si128(q.as_ptr().add(16 * i).cast()),
                )
            };
            acc16 = _mm_add_epi16(acc16, _mm_maddubs_epi16(c, x));
            if i % 32 == 31 {
                acc32 = _mm_add_epi32(acc32, _mm_madd_epi16(acc16, ones));
                acc16 = _mm_setzero_si128();
            }
        }
        hsum(_mm_add_epi32(acc32, _mm_madd_epi16(acc16, ones)))
    }

    pub fn absmax(x: &[f32]) -> f32 {
        let full = x.len() / 4 * 4;
        // SAFETY: SSE2 is part of x86_64; loads stay below `full`.
        let m = unsafe { absmax_sse(x, full) };
        act::absmax(&x[full..]).max(m)
    }

    #[target_feature(enable = "sse2")]
    unsafe fn absmax_sse(x: &[f32], full: usize) -> f32 {
        let sign = _mm_set1_ps(-0.0);
        let mut m = _mm_setzero_ps();
        for i in (0..full).step_by(4) {
            // SAFETY: i + 4 ≤ full ≤ x.len().
            let v = unsafe { _mm_loadu_ps(x.as_ptr().add(i)) };
            // A NaN |x| leaves the maximum as it was (see AVX2's).
            m = _mm_max_ps(_mm_andnot_ps(sign, v), m);
        }
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m)))
    }

    pub fn quantize(x: &[f32], scale: f32, q: &mut [i8]) {
        assert_eq!(x.len(), q.len());
        let full = x.len() / 16 * 16;
        // SAFETY: SSE2 is part of x86_64; loads and stores stay below
        // `full` ≤ both lengths.
        unsafe { quantize_sse(x, scale, q, full) };
        act::quantize_with(&x[full..], scale, &mut q[full..]);
    }

    #[target_feature(enable = "sse2")]
    unsafe fn quantize_sse(x: &[f32], scale: f32, q: &mut [i8], full: usize) {
        let (sv, magic) = (_mm_set1_ps(scale), _mm_set1_ps(act::ROUND_MAGIC));
        let (lo, hi) = (_mm_set1_ps(-128.0), _mm_set1_ps(127.0));
        for i in (0..full).step_by(16) {
            let ints: [__m128i; 4] = std::array::from_fn(|j| {
                // SAFETY: i + 16 ≤ full ≤ x.len().
                let v = _mm_mul_ps(unsafe { _mm_loadu_ps(x.as_ptr().add(i + 4 * j)) }, sv);
                // As AVX2's: NaN to 0, round, clamp, exact convert.
                let v = _mm_and_ps(v, _mm_cmpord_ps(v, v));
                let v = _mm_sub_ps(_mm_add_ps(v, magic), magic);
                _mm_cvttps_epi32(_mm_max_ps(_mm_min_ps(v, hi), lo))
            });
            let w = _mm_packs_epi16(
                _mm_packs_epi32(ints[0], ints[1]),
                _mm_packs_epi32(ints[2], ints[3]),
            );
            // SAFETY: i + 16 ≤ full ≤ q.len().
            unsafe { _mm_storeu_si128(q.as_mut_ptr().add(i).cast(), w) };
        }
    }

    super::norm_and_rope!(
        feature = "sse2",
        W = 4,
        load = _mm_loadu_ps,
        store = _mm_storeu_ps,
        mul = _mm_mul_ps,
        add = _mm_add_ps,
        splat = _mm_set1_ps,
        swap = swap_pairs
    );

    /// Lanes [1, 0, 3, 2].
    #[inline]
    #[target_feature(enable = "sse2")]
    fn swap_pairs(v: __m128) -> __m128 {
        _mm_shuffle_ps::<0b1011_0001>(v, v)
    }

    pub fn scores(q: &[f32], hd: usize, k: &[f32], stride: usize, out: &mut [f32]) {
        super::scores_by(q, hd, k, stride, out, dot_f32);
    }

    fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        super::dot_f32_with(a, b, |a, b, full| {
            // SAFETY: SSE2 is part of x86_64; loads stay below `full`.
            unsafe { dot_f32_sse(a, b, full) }
        })
    }

    /// Lanes 0..4 and 4..8 in two registers: the same order as AVX2's.
    #[target_feature(enable = "sse2")]
    unsafe fn dot_f32_sse(a: &[f32], b: &[f32], full: usize) -> f32 {
        let (mut lo, mut hi) = (_mm_setzero_ps(), _mm_setzero_ps());
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ full.
            unsafe {
                lo = _mm_add_ps(
                    lo,
                    _mm_mul_ps(
                        _mm_loadu_ps(a.as_ptr().add(i)),
                        _mm_loadu_ps(b.as_ptr().add(i)),
                    ),
                );
                hi = _mm_add_ps(
                    hi,
                    _mm_mul_ps(
                        _mm_loadu_ps(a.as_ptr().add(i + 4)),
                        _mm_loadu_ps(b.as_ptr().add(i + 4)),
                    ),
                );
            }
        }
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01)))
    }

    pub fn dot_q8(w: &[i8], w_scale: &[f32], x: &[i8], x_scale: &[f32]) -> f32 {
        super::dot_q8_with(w, w_scale, x, x_scale, |w, ws, x, xs, blocks| {
            // SAFETY: reachable only when SSSE3 was detected; only the first
            // `blocks` full blocks are loaded.
            unsafe { dot_q8_ssse3(w, ws, x, xs, blocks) }
        })
    }

    #[target_feature(enable = "ssse3")]
    unsafe fn dot_q8_ssse3(w: &[i8], ws: &[f32], x: &[i8], xs: &[f32], blocks: usize) -> f32 {
        let ones = _mm_set1_epi16(1);
        let mut acc = _mm_setzero_ps();
        for b in 0..blocks {
            let mut sums = _mm_setzero_si128();
            for h in 0..2 {
                // SAFETY: b < blocks ≤ len / 32 of both slices.
                let (wv, xv) = unsafe {
                    (
                        _mm_loadu_si128(w.as_ptr().add(32 * b + 16 * h).cast()),
                        _mm_loadu_si128(x.as_ptr().add(32 * b + 16 * h).cast()),
                    )
                };
                let prod = _mm_maddubs_epi16(_mm_sign_epi8(wv, wv), _mm_sign_epi8(xv, wv));
                sums = _mm_add_epi32(sums, _mm_madd_epi16(prod, ones));
            }
            let scale = _mm_set1_ps(ws[b] * xs[b]);
            acc = _mm_add_ps(acc, _mm_mul_ps(_mm_cvtepi32_ps(sums), scale));
        }
        let s = _mm_add_ps(acc, _mm_movehl_ps(acc, acc));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
        _mm_cvtss_f32(s)
    }
}

/// aarch64 Advanced SIMD. Integer products widen i8×i8 to i16 (`vmull`) and
/// accumulate pairwise into i32 (`vpadal`): exact, so equal to the scalar
/// reference bit for bit. `dot_f32` keeps the reference's eight-lane order
/// (two 4-lane halves, no fused multiply-add).
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{act, Packing};

    super::dot_codes_by_fours!();

    /// Σ a·b of 16 small codes (0..=3) and 16 int8 activations, added
    /// pairwise into four i32 lanes.
    #[inline]
    #[target_feature(enable = "neon")]
    fn mac16(acc: int32x4_t, codes: int8x16_t, x: int8x16_t) -> int32x4_t {
        let lo = vmull_s8(vget_low_s8(codes), vget_low_s8(x));
        let hi = vmull_high_s8(codes, x);
        // |3 · 128| · 2 fits i16.
        vpadalq_s16(acc, vaddq_s16(lo, hi))
    }

    /// Σ a·b of any 16 int8 pairs (-128 · -128 twice would not fit i16, so
    /// each product vector is widened on its own).
    #[inline]
    #[target_feature(enable = "neon")]
    fn mac16_i8(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
        vpadalq_s16(acc, vmull_high_s8(a, b))
    }

    /// N tokens against one packed row: each 32-byte chunk is unpacked
    /// once into four groups of 32 codes, multiplied with every token.
    #[target_feature(enable = "neon")]
    unsafe fn dot_n<const N: usize>(
        packed: &[u8],
        q: &[i8],
        stride: usize,
        packing: Packing,
    ) -> [i32; N] {
        let mask = vdupq_n_u8(3);
        let shifts = packing.shifts();
        let mut acc = [vdupq_n_s32(0); N];
        for c in 0..packing.chunks(packed.len()) {
            let at = packing.chunk_at(c);
            let chunk = &packed[at..at + 32];
            // SAFETY: `chunk` is 32 bytes: two 16-byte loads.
            let (v0, v1) = unsafe { (vld1q_u8(chunk.as_ptr()), vld1q_u8(chunk.as_ptr().add(16))) };
            for (l, &s) in shifts.iter().enumerate() {
                let sh = vdupq_n_s8(-(s as i8));
                let c0 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v0, sh), mask));
                let c1 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v1, sh), mask));
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: token j's activations 32·l.. of chunk c are in
                    // bounds (asserted by the caller).
                    let (x0, x1) = unsafe {
                        let p = q.as_ptr().add(j * stride + c * 128 + 32 * l);
                        (vld1q_s8(p), vld1q_s8(p.add(16)))
                    };
                    *a = mac16(mac16(*a, c0, x0), c1, x1);
                }
            }
        }
        acc.map(|a| vaddvq_s32(a))
    }

    pub fn dot_tq1(blocks: &[u8], q: &[i8]) -> i32 {
        super::dot_tq1_unpacked(blocks, q, dot_u8_multi)
    }

    pub fn dot_u8_multi(codes: &[u8], q: &[i8], stride: usize, out: &mut [i32]) {
        // SAFETY: NEON is checked at run time; `full` ≤ both lengths.
        super::dot_u8_multi_with(codes, q, stride, out, 16, |c, x, full| unsafe {
            dot_u8(c, x, full)
        });
    }

    #[target_feature(enable = "neon")]
    unsafe fn dot_u8(codes: &[u8], q: &[i8], full: usize) -> i32 {
        let mut acc = vdupq_n_s32(0);
        let mut i = 0;
        while i < full {
            // SAFETY: i + 16 ≤ full ≤ both lengths.
            let (c, x) = unsafe { (vld1q_u8(codes.as_ptr().add(i)), vld1q_s8(q.as_ptr().add(i))) };
            acc = mac16(acc, vreinterpretq_s8_u8(c), x);
            i += 16;
        }
        vaddvq_s32(acc)
    }

    pub fn absmax(x: &[f32]) -> f32 {
        let full = x.len() / 4 * 4;
        // SAFETY: NEON is checked at run time; loads stay below `full`.
        let m = unsafe { absmax_neon(x, full) };
        act::absmax(&x[full..]).max(m)
    }

    #[target_feature(enable = "neon")]
    unsafe fn absmax_neon(x: &[f32], full: usize) -> f32 {
        let mut m = vdupq_n_f32(0.0);
        for i in (0..full).step_by(4) {
            // SAFETY: i + 4 ≤ full ≤ x.len().
            let v = unsafe { vld1q_f32(x.as_ptr().add(i)) };
            // maxnm returns the number when one operand is NaN.
            m = vmaxnmq_f32(m, vabsq_f32(v));
        }
        vmaxnmvq_f32(m)
    }

    pub fn quantize(x: &[f32], scale: f32, q: &mut [i8]) {
        assert_eq!(x.len(), q.len());
        let full = x.len() / 8 * 8;
        // SAFETY: NEON is checked at run time; loads and stores stay below
        // `full` ≤ both lengths.
        unsafe { quantize_neon(x, scale, q, full) };
        act::quantize_with(&x[full..], scale, &mut q[full..]);
    }

    #[target_feature(enable = "neon")]
    unsafe fn quantize_neon(x: &[f32], scale: f32, q: &mut [i8], full: usize) {
        let magic = vdupq_n_f32(act::ROUND_MAGIC);
        let (lo, hi) = (vdupq_n_f32(-128.0), vdupq_n_f32(127.0));
        for i in (0..full).step_by(8) {
            let ints: [int32x4_t; 2] = std::array::from_fn(|j| {
                // SAFETY: i + 8 ≤ full ≤ x.len().
                let v = vmulq_n_f32(unsafe { vld1q_f32(x.as_ptr().add(i + 4 * j)) }, scale);
                // As AVX2's: NaN to 0, round, clamp, exact convert.
                let ord = vceqq_f32(v, v);
                let v = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), ord));
                let v = vsubq_f32(vaddq_f32(v, magic), magic);
                vcvtq_s32_f32(vmaxq_f32(vminq_f32(v, hi), lo))
            });
            let w = vcombine_s16(vqmovn_s32(ints[0]), vqmovn_s32(ints[1]));
            // SAFETY: i + 8 ≤ full ≤ q.len().
            unsafe { vst1_s8(q.as_mut_ptr().add(i), vqmovn_s16(w)) };
        }
    }

    super::norm_and_rope!(
        feature = "neon",
        W = 4,
        load = vld1q_f32,
        store = vst1q_f32,
        mul = vmulq_f32,
        add = vaddq_f32,
        splat = vdupq_n_f32,
        swap = vrev64q_f32
    );

    pub fn scores(q: &[f32], hd: usize, k: &[f32], stride: usize, out: &mut [f32]) {
        super::scores_by(q, hd, k, stride, out, dot_f32);
    }

    fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: NEON is checked at run time; `full` ≤ both lengths.
        super::dot_f32_with(a, b, |a, b, full| unsafe { dot_f32_neon(a, b, full) })
    }

    #[target_feature(enable = "neon")]
    unsafe fn dot_f32_neon(a: &[f32], b: &[f32], full: usize) -> f32 {
        // Lanes 0..4 and 4..8 of the reference's eight.
        let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
        let mut i = 0;
        while i < full {
            // SAFETY: i + 8 ≤ full ≤ both lengths.
            let (a0, a1, b0, b1) = unsafe {
                (
                    vld1q_f32(a.as_ptr().add(i)),
                    vld1q_f32(a.as_ptr().add(i + 4)),
                    vld1q_f32(b.as_ptr().add(i)),
                    vld1q_f32(b.as_ptr().add(i + 4)),
                )
            };
            lo = vaddq_f32(lo, vmulq_f32(a0, b0));
            hi = vaddq_f32(hi, vmulq_f32(a1, b1));
            i += 8;
        }
        // [l0+l4, l1+l5, l2+l6, l3+l7], then (s0 + s2) + (s1 + s3).
        let s = vaddq_f32(lo, hi);
        (vgetq_lane_f32(s, 0) + vgetq_lane_f32(s, 2))
            + (vgetq_lane_f32(s, 1) + vgetq_lane_f32(s, 3))
    }

    pub fn dot_q8(w: &[i8], w_scale: &[f32], x: &[i8], x_scale: &[f32]) -> f32 {
        super::dot_q8_with(w, w_scale, x, x_scale, |w, ws, x, xs, blocks| {
            let mut sum = 0f32;
            for b in 0..blocks {
                // SAFETY: NEON is checked at run time; block b's 32 values
                // are in bounds of both (blocks ≤ len / 32).
                let dot = unsafe {
                    let (pw, px) = (w.as_ptr().add(32 * b), x.as_ptr().add(32 * b));
                    let acc = mac16_i8(vdupq_n_s32(0), vld1q_s8(pw), vld1q_s8(px));
                    vaddvq_s32(mac16_i8(acc, vld1q_s8(pw.add(16)), vld1q_s8(px.add(16))))
                };
                sum += dot as f32 * (ws[b] * xs[b]);
            }
            sum
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn levels() -> Vec<Kernels> {
        SimdLevel::ALL
            .iter()
            .filter(|l| {
                let ok = l.supported();
                if !ok {
                    eprintln!("{l}: not supported on this CPU, skipped");
                }
                ok
            })
            .map(|&l| Kernels::for_level(l).unwrap())
            .collect()
    }

    /// Integer kernels equal the scalar reference exactly, on random and
    /// edge-valued activations (all -128, all 127, zeros), every code
    /// pattern including the unused code 3, several lengths.
    #[test]
    fn dot_codes_equals_scalar_bit_for_bit() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for chunks in [1, 2, 3, 7, 20, 40] {
            for case in 0..12 {
                let packed: Vec<u8> = (0..chunks * 32).map(|_| rng.next() as u8).collect();
                let q: Vec<i8> = (0..chunks * 128)
                    .map(|_| match case {
                        0 => -128,
                        1 => 127,
                        2 => 0,
                        _ => rng.next() as i8,
                    })
                    .collect();
                for packing in [Packing::I2S, Packing::Tq2] {
                    let want = dot_codes_scalar(&packed, &q, packing);
                    for k in levels() {
                        let mut got = [0];
                        (k.dot_rows)(&packed, packed.len(), &q, packing, &mut got);
                        assert_eq!(
                            got[0], want,
                            "{} {packing:?} chunks {chunks} case {case}",
                            k.level
                        );
                    }
                }
            }
        }
    }

    /// The multi-token kernel equals one call per token, for 1..=9 tokens
    /// (groups of four and every remainder), with a stride larger than the
    /// row (activations of other columns in between).
    #[test]
    fn dot_codes_multi_equals_single() {
        let mut rng = Rng(0xdead_beef);
        for chunks in [1, 8, 9, 20] {
            let span = chunks * 128;
            let stride = span + 64;
            let packed: Vec<u8> = (0..chunks * 32).map(|_| rng.next() as u8).collect();
            for n in 1..=9 {
                let q: Vec<i8> = (0..n * stride).map(|_| rng.next() as i8).collect();
                for packing in [Packing::I2S, Packing::Tq2] {
                    let want: Vec<i32> = (0..n)
                        .map(|j| {
                            dot_codes_scalar(&packed, &q[j * stride..j * stride + span], packing)
                        })
                        .collect();
                    for k in levels() {
                        let mut got = vec![0; n];
                        (k.dot_codes_multi)(&packed, &q, stride, packing, &mut got);
                        assert_eq!(got, want, "{} chunks {chunks} n {n}", k.level);
                    }
                }
            }
        }
        // Unpacked codes at the extreme: all 3 × -128 over 10,000 bytes.
        let codes = vec![3u8; 10_000];
        let q = vec![-128i8; 10_000];
        for k in levels() {
            let mut got = [0];
            (k.dot_u8_multi)(&codes, &q, 0, &mut got);
            assert_eq!(got[0], 3 * -128 * 10_000, "{}", k.level);
        }
        // Extremes: every code 3 (unused, but must not overflow) with all
        // activations -128, over many chunks.
        let packed = vec![0xffu8; 64 * 32];
        let q = vec![-128i8; 64 * 128 * 3];
        for k in levels() {
            let mut got = vec![0; 3];
            (k.dot_codes_multi)(&packed, &q, 64 * 128, Packing::I2S, &mut got);
            assert_eq!(got, vec![3 * -128 * 64 * 128; 3], "{}", k.level);
        }
    }

    /// The TQ1_0 unpacking equals the table's, for random blocks and for
    /// every byte value at every position.
    #[test]
    fn unpack_tq1_equals_table() {
        let mut rng = Rng(77);
        let mut blocks: Vec<Vec<u8>> = (0..300)
            .map(|_| (0..54).map(|_| rng.next() as u8).collect())
            .collect();
        for b in 0..=255u8 {
            blocks.push(vec![b; 54]);
        }
        for bytes in &blocks {
            let mut want = [0u8; 256];
            tq1_unpack_codes(bytes, &mut want);
            for k in levels() {
                let mut got = [0u8; 256];
                (k.unpack_tq1)(bytes, &mut got);
                assert_eq!(got, want, "{}", k.level);
            }
        }
    }

    /// The fused TQ1_0 kernel equals the table-driven reference: blocks of
    /// every byte value (each trit position sees all 256), random blocks,
    /// extreme and random activations, 1 to 9 blocks.
    #[test]
    fn dot_tq1_equals_scalar() {
        let mut rng = Rng(4242);
        let mut blocks: Vec<u8> = (0..=255u8).flat_map(|b| [b; 54]).collect();
        blocks.extend((0..54 * 64).map(|_| rng.next() as u8));
        let total = blocks.len() / 54;
        for case in 0..4 {
            let q: Vec<i8> = (0..total * 256)
                .map(|_| match case {
                    0 => -128,
                    1 => 127,
                    _ => rng.next() as i8,
                })
                .collect();
            for start in 0..total {
                let nb = 1 + start % 9;
                if start + nb > total {
                    break;
                }
                let (bl, qs) = (
                    &blocks[start * 54..(start + nb) * 54],
                    &q[start * 256..(start + nb) * 256],
                );
                let want = dot_tq1_scalar(bl, qs);
                for k in levels() {
                    assert_eq!(
                        (k.dot_tq1)(bl, qs),
                        want,
                        "{} block {start} case {case}",
                        k.level
                    );
                }
            }
        }
        // The largest sums the i16 accumulators see: every trit 2 (bytes
        // 0xFF) against saturated activations, rows of 1 to 72 blocks
        // (well past any widening interval: an i16 lane gaining 512 a
        // block would overflow after 64).
        let blocks = [0xFFu8; 54 * 72];
        for x in [-128i8, 127] {
            let q = [x; 256 * 72];
            for nb in 1..=72 {
                let (bl, qs) = (&blocks[..nb * 54], &q[..nb * 256]);
                assert_eq!(dot_tq1_scalar(bl, qs), 2 * x as i32 * 256 * nb as i32);
                for k in levels() {
                    assert_eq!(
                        (k.dot_tq1)(bl, qs),
                        2 * x as i32 * 256 * nb as i32,
                        "{} {nb}",
                        k.level
                    );
                }
            }
        }
    }

    /// The scalar kernel agrees with the codecs' own unpacking.
    #[test]
    fn scalar_dot_codes_matches_the_formats() {
        use crate::quant::ternary::{BlockI2S, BlockTQ2_0, TernaryBlock};
        let mut rng = Rng(7);
        let w: Vec<i8> = (0..256).map(|_| (rng.next() % 3) as i8 - 1).collect();
        let q: Vec<i8> = (0..256).map(|_| rng.next() as i8).collect();
        let exact: i32 = w
            .iter()
            .zip(&q)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        let qsum: i32 = q.iter().map(|&v| i32::from(v)).sum();
        let mut packed = Vec::new();
        for g in w.chunks_exact(128) {
            packed.extend_from_slice(&BlockI2S::pack(g.try_into().unwrap()).qs);
        }
        assert_eq!(dot_codes_scalar(&packed, &q, Packing::I2S) - qsum, exact);
        let block = BlockTQ2_0::pack(w.as_slice().try_into().unwrap(), f16::ONE);
        let mut bytes = Vec::new();
        block.write(&mut bytes);
        assert_eq!(
            dot_codes_scalar(&bytes[..64], &q, Packing::Tq2) - qsum,
            exact
        );
    }

    /// Float kernels agree with the scalar one to rounding (different
    /// summation order), on lengths with every tail size.
    #[test]
    fn dot_f16_close_to_scalar() {
        let mut rng = Rng(99);
        for n in [1, 7, 8, 31, 32, 33, 100, 256, 2560, 2561] {
            let row: Vec<u8> = (0..n)
                .flat_map(|_| f16::from_f32((rng.next() % 2001) as f32 / 500.0 - 2.0).to_le_bytes())
                .collect();
            let x: Vec<f32> = (0..n)
                .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let want = dot_f16_scalar(&row, &x);
            let mag: f32 = row
                .chunks_exact(2)
                .zip(&x)
                .map(|(b, v)| (f16::from_le_bytes([b[0], b[1]]).to_f32() * v).abs())
                .sum();
            for k in levels() {
                let got = (k.dot_f16)(&row, &x);
                assert!(
                    (got - want).abs() <= 1e-5 * mag.max(1.0),
                    "{} n {n}: {got} vs {want}",
                    k.level
                );
            }
        }
    }

    /// The int8 table product agrees with the scalar one to rounding, for
    /// widths with and without a short last block, and -127/127 extremes.
    #[test]
    fn dot_q8_close_to_scalar() {
        let mut rng = Rng(4242);
        for n in [32usize, 64, 96, 2560, 40, 2570] {
            let nb = n.div_ceil(32);
            let w: Vec<i8> = (0..n)
                .map(|i| {
                    if i % 7 == 0 {
                        -127
                    } else {
                        rng.next() as i8 / 2
                    }
                })
                .collect();
            let x: Vec<i8> = (0..n)
                .map(|i| {
                    if i % 5 == 0 {
                        127
                    } else {
                        rng.next() as i8 / 2
                    }
                })
                .collect();
            let ws: Vec<f32> = (0..nb).map(|_| (rng.next() % 1000) as f32 / 1e5).collect();
            let xs: Vec<f32> = (0..nb).map(|_| (rng.next() % 1000) as f32 / 1e4).collect();
            let want = dot_q8_scalar(&w, &ws, &x, &xs);
            let mag: f32 = w
                .chunks(32)
                .zip(x.chunks(32))
                .zip(ws.iter().zip(&xs))
                .map(|((a, b), (p, q))| {
                    a.iter()
                        .zip(b)
                        .map(|(&u, &v)| (i32::from(u) * i32::from(v)).abs())
                        .sum::<i32>() as f32
                        * p
                        * q
                })
                .sum();
            for k in levels() {
                let got = (k.dot_q8)(&w, &ws, &x, &xs);
                assert!(
                    (got - want).abs() <= 1e-5 * mag.max(1e-6),
                    "{} n {n}: {got} vs {want}",
                    k.level
                );
            }
        }
    }

    /// The 6-bit table: every level's product agrees with the scalar one
    /// to rounding (integer block sums exact), on random rows with
    /// extreme codes and saturated activations; and quantizing a row then
    /// reading it back is within half a step of each value (or clamped).
    #[test]
    fn dot_q6_close_to_scalar_and_round_trips() {
        let mut rng = Rng(0x6b17);
        for n in [64usize, 128, 2560, 192] {
            let row_f: Vec<f32> = (0..n)
                .map(|i| match i % 11 {
                    0 => 0.0,
                    1 => -3.5,
                    _ => (rng.next() % 2001) as f32 / 1000.0 - 1.0,
                })
                .collect();
            let mut row = vec![0u8; n / 64 * Q6_GROUP_BYTES];
            quantize_q6_row(&row_f, &mut row);
            for (e, &v) in row_f.iter().enumerate() {
                let (q, d) = q6_value(&row[e / 64 * Q6_GROUP_BYTES..], e % 64);
                // Within half a step, or clamped at the grid's end.
                assert!((-31..=31).contains(&q));
                let err = (f32::from(q) * d - v).abs();
                let ok = err <= 0.5 * d + 1e-6 || (q.abs() == 31 && v.abs() >= 30.5 * d);
                assert!(ok, "{e}: {v} vs {q}·{d}");
            }
            let x: Vec<i8> = (0..n)
                .map(|i| match i % 5 {
                    0 => 127,
                    1 => -127,
                    // Activations are quantized to -127..=127.
                    _ => (rng.next() as i8).max(-127),
                })
                .collect();
            let xs: Vec<f32> = (0..n / 32)
                .map(|_| (rng.next() % 1000) as f32 / 1e4)
                .collect();
            let want = dot_q6_scalar(&row, &x, &xs);
            let mag: f32 = (0..n)
                .map(|e| {
                    let (q, d) = q6_value(&row[e / 64 * Q6_GROUP_BYTES..], e % 64);
                    (f32::from(q) * f32::from(x[e])).abs() * d * xs[e / 32]
                })
                .sum();
            for k in levels() {
                let got = (k.dot_q6)(&row, &x, &xs);
                assert!(
                    (got - want).abs() <= 1e-5 * mag.max(1e-6),
                    "{} n {n}: {got} vs {want}",
                    k.level
                );
            }
        }
    }

    #[test]
    fn q8_block_quantization_round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..70).map(|i| (i as f32 - 35.0) * 0.37).collect();
        let mut q = vec![0i8; 70];
        let mut s = vec![0f32; 3];
        quantize_q8_blocks(&x, &mut q, &mut s);
        for (i, v) in x.iter().enumerate() {
            let back = f32::from(q[i]) * s[i / 32];
            assert!(
                (back - v).abs() <= s[i / 32] * 0.5 + 1e-6,
                "{i}: {v} vs {back}"
            );
        }
        let zeros = [0f32; 32];
        quantize_q8_blocks(&zeros, &mut q[..32], &mut s[..1]);
        assert!(q[..32].iter().all(|&v| v == 0) && s[0] == 0.0);
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;
        use super::levels;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Random shapes, tokens and misaligned starts (the packed row
            /// and the activations begin at arbitrary byte offsets of their
            /// buffers): every level equals the scalar reference exactly.
            #[test]
            fn multi_token_kernel_equals_scalar(
                chunks in 1usize..24,
                tokens in 1usize..7,
                pad in 0usize..40,
                w_off in 0usize..31,
                q_off in 0usize..31,
                seed in any::<u64>(),
                edge in 0u8..4,
            ) {
                let mut x = seed | 1;
                let mut next = move || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
                let span = chunks * 128;
                let stride = span + pad;
                let wbuf: Vec<u8> = (0..w_off + chunks * 32).map(|_| next() as u8).collect();
                let qbuf: Vec<i8> = (0..q_off + tokens * stride)
                    .map(|_| match edge { 0 => -128, 1 => 127, 2 => 0, _ => next() as i8 })
                    .collect();
                let (packed, q) = (&wbuf[w_off..], &qbuf[q_off..]);
                for packing in [Packing::I2S, Packing::Tq2, Packing::Tq2Row] {
                    let mut want = vec![0; tokens];
                    dot_codes_multi_scalar(packed, q, stride, packing, &mut want);
                    for k in levels() {
                        let mut got = vec![0; tokens];
                        (k.dot_codes_multi)(packed, q, stride, packing, &mut got);
                        prop_assert_eq!(&got, &want);
                    }
                }
                // The same rows as a block of rows for one token (chunks
                // of 32 bytes: whole rows of one chunk each).
                let rows = chunks;
                for packing in [Packing::I2S, Packing::Tq2] {
                    let mut want = vec![0; rows];
                    dot_rows_scalar(packed, 32, q, packing, &mut want);
                    for (r, w) in want.iter().enumerate() {
                        prop_assert_eq!(*w, dot_codes_scalar(&packed[32 * r..32 * r + 32], q, packing));
                    }
                    for k in levels() {
                        let mut got = vec![0; rows];
                        (k.dot_rows)(packed, 32, q, packing, &mut got);
                        prop_assert_eq!(&got, &want);
                    }
                }
                // Unpacked codes (0..=3), any length (tails), same offsets.
                let codes: Vec<u8> = wbuf.iter().map(|b| b & 3).collect();
                let codes = &codes[w_off..];
                let cut = (seed as usize % 31).min(codes.len() - 1);
                let codes = &codes[..codes.len() - cut];
                let mut want = vec![0; tokens];
                dot_u8_multi_scalar(codes, q, stride, &mut want);
                for k in levels() {
                    let mut got = vec![0; tokens];
                    (k.dot_u8_multi)(codes, q, stride, &mut got);
                    prop_assert_eq!(&got, &want);
                }
            }

            /// TQ1_0 rows of random bytes (every base-3 code, including
            /// the bytes past 242 that no encoder writes) at misaligned
            /// starts: each level's fused dot and its unpacking equal the
            /// scalar reference exactly, also on all-0xFF blocks and
            /// saturated activations.
            #[test]
            fn tq1_kernels_equal_scalar(
                blocks in 1usize..40,
                w_off in 0usize..53,
                q_off in 0usize..31,
                seed in any::<u64>(),
                edge in 0u8..5,
            ) {
                let mut x = seed | 1;
                let mut next = move || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
                let wbuf: Vec<u8> = (0..w_off + blocks * 54)
                    .map(|_| if edge == 4 { 0xFF } else { next() as u8 })
                    .collect();
                let qbuf: Vec<i8> = (0..q_off + blocks * 256)
                    .map(|_| match edge { 0 => -128, 1 => 127, 2 => 0, _ => next() as i8 })
                    .collect();
                let (bl, q) = (&wbuf[w_off..], &qbuf[q_off..]);
                let want = dot_tq1_scalar(bl, q);
                let mut want_codes = vec![0u8; 256];
                tq1_unpack_codes(&bl[..52], &mut want_codes);
                for k in levels() {
                    prop_assert_eq!((k.dot_tq1)(bl, q), want, "{}", k.level);
                    let mut codes = vec![9u8; 256];
                    (k.unpack_tq1)(&bl[..52], &mut codes);
                    prop_assert_eq!(&codes, &want_codes, "{}", k.level);
                }
            }
        }
    }

    /// Values from 2^-30 to 2^30, both signs: magnitudes that far apart
    /// make any change of order show in the last bits, and no sum
    /// overflows (an infinity or NaN would hide a difference).
    fn wide_f32(rng: &mut Rng) -> f32 {
        let r = rng.next();
        f32::from_bits(((r % 60) as u32 + 97) << 23 | (r as u32 & 0x7fffff))
            * if r & 1 == 0 { 1.0 } else { -1.0 }
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        assert!(b.iter().all(|x| x.is_finite()));
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// The scores are each `dot_f32_scalar` of their pair, bit for bit at
    /// every level (the order is part of the contract): every tail length,
    /// one to nine query vectors, keys `stride` apart at an odd offset.
    #[test]
    fn scores_bit_identical_across_levels() {
        let mut rng = Rng(31337);
        for hd in (1..40).chain([64, 127, 128, 129, 256]) {
            for (m, n) in [(1, 1), (1, 7), (4, 33), (5, 3), (9, 2)] {
                let stride = hd + 3;
                let q: Vec<f32> = (0..m * hd).map(|_| wide_f32(&mut rng)).collect();
                let k: Vec<f32> = (0..1 + n * stride).map(|_| wide_f32(&mut rng)).collect();
                let keys = &k[1..];
                let mut want = vec![0.0; m * n];
                for (j, w) in want.chunks_exact_mut(n).enumerate() {
                    for (p, w) in w.iter_mut().enumerate() {
                        let kp = &keys[p * stride..p * stride + hd];
                        *w = dot_f32_scalar(&q[j * hd..(j + 1) * hd], kp);
                    }
                }
                for kern in levels() {
                    let mut got = vec![f32::NAN; m * n];
                    (kern.scores)(&q, hd, keys, stride, &mut got);
                    assert!(same_bits(&got, &want), "{} hd {hd} m {m} n {n}", kern.level);
                }
            }
        }
    }

    /// The weighted sum equals the scalar reference bit for bit at every
    /// level: dimensions by 16, 8 and one, one to nine outputs, positions
    /// across the 32-position blocks, values `stride` apart.
    #[test]
    fn weighted_sum_bit_identical_across_levels() {
        let mut rng = Rng(4242);
        for hd in (1..40).chain([64, 127, 128, 129]) {
            for (m, n) in [(1, 1), (1, 70), (4, 33), (5, 64), (9, 2)] {
                let stride = hd + 5;
                let w: Vec<f32> = (0..m * n).map(|_| wide_f32(&mut rng)).collect();
                let v: Vec<f32> = (0..n * stride).map(|_| wide_f32(&mut rng)).collect();
                let start: Vec<f32> = (0..m * hd).map(|_| wide_f32(&mut rng)).collect();
                let mut want = start.clone();
                weighted_sum_scalar(&w, &v, stride, hd, &mut want);
                // The reference itself: output (j, d) adds its positions in
                // order, each a product then a sum.
                let (j, d) = (m - 1, hd / 2);
                let mut o = start[j * hd + d];
                for p in 0..n {
                    o += w[j * n + p] * v[p * stride + d];
                }
                assert_eq!(o.to_bits(), want[j * hd + d].to_bits());
                for kern in levels() {
                    let mut got = start.clone();
                    (kern.weighted_sum)(&w, &v, stride, hd, &mut got);
                    assert!(same_bits(&got, &want), "{} hd {hd} m {m} n {n}", kern.level);
                }
            }
        }
    }

    /// Activation quantization equals the reference exactly at every
    /// level: every tail length, rows off a vector boundary, ties of the
    /// rounding (x · scale = k + 0.5), values beyond the clamp, zeros of
    /// both signs, infinities and NaN (ignored by absmax, quantized to 0).
    #[test]
    fn quantization_equals_reference_at_every_level() {
        let mut rng = Rng(2024);
        for n in (0..70).chain([127, 128, 2560, 6912]) {
            for case in 0..6 {
                let buf: Vec<f32> = (0..n + 3)
                    .map(|i| {
                        let r = rng.next();
                        match (case, r % 16) {
                            (0, _) => wide_f32(&mut rng),
                            (1, _) => (r % 255) as f32 - 127.0 + 0.5,
                            (_, 0) if case >= 3 => f32::NAN,
                            (_, 1) if case >= 4 => f32::INFINITY,
                            (_, 2) if case >= 4 => f32::NEG_INFINITY,
                            (_, 3) => -0.0,
                            (_, 4) => 0.0,
                            _ if case == 5 && i % 7 == 0 => 1e30,
                            _ => ((r >> 8) % 20_001) as f32 * 0.01 - 100.0,
                        }
                    })
                    .collect();
                let x = &buf[3..];
                let m = act::absmax(x);
                // Scale 1 makes case 1's halves ties; the row's own scale
                // (finite rows) and a huge one reach past the clamp.
                for scale in [1.0, act::scale_for(m), 3e5] {
                    let mut want = vec![0i8; n];
                    act::quantize_with(x, scale, &mut want);
                    for k in levels() {
                        assert_eq!((k.absmax)(x).to_bits(), m.to_bits(), "{} n {n}", k.level);
                        let mut got = vec![7i8; n];
                        (k.quantize)(x, scale, &mut got);
                        assert_eq!(got, want, "{} n {n} case {case} scale {scale}", k.level);
                    }
                }
            }
        }
    }

    /// RMSNorm equals the scalar reference bit for bit at every level
    /// (every tail length, rows starting off a vector boundary), and the
    /// reference is RMSNorm (against an f64 evaluation).
    #[test]
    fn rms_norm_bit_identical_across_levels() {
        let mut rng = Rng(777);
        for n in (1..40).chain([64, 127, 128, 2560]) {
            let buf: Vec<f32> = (0..n + 1).map(|_| wide_f32(&mut rng)).collect();
            let w: Vec<f32> = (0..n).map(|_| wide_f32(&mut rng)).collect();
            let eps = 1e-5;
            let mut want = buf[1..].to_vec();
            rms_norm_scalar(&mut want, &w, eps);
            let ms = buf[1..].iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n as f64;
            for ((&x, &w), &got) in buf[1..].iter().zip(&w).zip(&want) {
                let exact = f64::from(x) * f64::from(w) / (ms + f64::from(eps)).sqrt();
                assert!(
                    (f64::from(got) - exact).abs() <= 1e-5 * exact.abs(),
                    "n {n}"
                );
            }
            for kern in levels() {
                let mut got = buf.clone();
                (kern.rms_norm)(&mut got[1..], &w, eps);
                assert!(same_bits(&got[1..], &want), "{} n {n}", kern.level);
                assert_eq!(got[0].to_bits(), buf[0].to_bits());
            }
        }
    }

    /// RoPE equals the scalar reference bit for bit at every level, both
    /// pairings, every rotated width (whole vectors and tails), heads
    /// wider than the rotated part (left alone) and off a vector boundary;
    /// the reference is a·cos − b·sin, a·sin + b·cos to the bit.
    #[test]
    fn rope_bit_identical_across_levels() {
        let mut rng = Rng(99);
        for style in [RopeStyle::Norm, RopeStyle::Neox] {
            for dim in (2..=40).step_by(2).chain([64, 126, 128]) {
                for extra in [0, 3] {
                    let half = dim / 2;
                    let angle = |rng: &mut Rng| (rng.next() % 10_000) as f32 * 0.001;
                    let (mut c, mut s) = (vec![0.0; dim], vec![0.0; dim]);
                    let pair = |i: usize| match style {
                        RopeStyle::Norm => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    for i in 0..half {
                        let (sin, cos) = angle(&mut rng).sin_cos();
                        let (a, b) = pair(i);
                        (c[a], c[b], s[a], s[b]) = (cos, cos, -sin, sin);
                    }
                    let buf: Vec<f32> = (0..1 + dim + extra).map(|_| wide_f32(&mut rng)).collect();
                    let mut want = buf[1..].to_vec();
                    rope_scalar(&mut want, &c, &s, style);
                    for i in 0..half {
                        let (ja, jb) = pair(i);
                        let (a, b) = (buf[1 + ja], buf[1 + jb]);
                        let (cos, sin) = (c[ja], s[jb]);
                        assert_eq!(want[ja].to_bits(), (a * cos - b * sin).to_bits());
                        assert_eq!(want[jb].to_bits(), (a * sin + b * cos).to_bits());
                    }
                    assert_eq!(want[dim..], buf[1 + dim..]);
                    for kern in levels() {
                        let mut got = buf.clone();
                        (kern.rope)(&mut got[1..], &c, &s, style);
                        assert!(
                            same_bits(&got, &[&buf[..1], &want[..]].concat()),
                            "{} {style:?} dim {dim} extra {extra}",
                            kern.level
                        );
                    }
                }
            }
        }
    }

    /// `describe` names the scalar reference exactly where `for_level`
    /// chose it (and a SIMD kernel everywhere else).
    #[test]
    fn describe_agrees_with_the_table() {
        for k in levels() {
            let d = k.describe();
            let fns: [(usize, usize); 13] = [
                (k.dot_rows as usize, dot_rows_scalar as *const () as usize),
                (
                    k.dot_codes_multi as usize,
                    dot_codes_multi_scalar as *const () as usize,
                ),
                (k.dot_tq1 as usize, dot_tq1_scalar as *const () as usize),
                (
                    k.dot_u8_multi as usize,
                    dot_u8_multi_scalar as *const () as usize,
                ),
                (
                    k.lut_tile as usize,
                    lut::dot_tile_scalar as *const () as usize,
                ),
                (k.dot_f16 as usize, dot_f16_scalar as *const () as usize),
                (k.dot_q8 as usize, dot_q8_scalar as *const () as usize),
                (k.dot_q6 as usize, dot_q6_scalar as *const () as usize),
                (k.scores as usize, scores_scalar as *const () as usize),
                (
                    k.weighted_sum as usize,
                    weighted_sum_scalar as *const () as usize,
                ),
                (k.rms_norm as usize, rms_norm_scalar as *const () as usize),
                (k.rope as usize, rope_scalar as *const () as usize),
                (
                    k.quantize as usize,
                    act::quantize_with as *const () as usize,
                ),
            ];
            for ((op, kernel), (chosen, scalar)) in d.into_iter().zip(fns) {
                assert_eq!(kernel == "scalar", chosen == scalar, "{}: {op}", k.level);
            }
            // Quantization's absmax, and the several-token TQ1_0 path's
            // unpacking.
            assert_eq!(
                d[12].1 == "scalar",
                k.absmax as usize == act::absmax as *const () as usize
            );
            let scalar_unpack = d[3].1 == "scalar" || d[3].1.starts_with("scalar unpack");
            assert_eq!(
                scalar_unpack,
                k.unpack_tq1 as usize == tq1_unpack_codes as *const () as usize,
                "{}",
                k.level
            );
        }
    }

    #[test]
    fn levels_parse_and_refuse_clearly() {
        assert_eq!("AVX2".parse::<SimdLevel>(), Ok(SimdLevel::Avx2));
        assert_eq!("sse".parse::<SimdLevel>(), Ok(SimdLevel::Sse));
        assert_eq!("scalar".parse::<SimdLevel>(), Ok(SimdLevel::Scalar));
        assert_eq!("avx512".parse::<SimdLevel>(), Ok(SimdLevel::Avx512));
        assert_eq!("AVX512VNNI".parse::<SimdLevel>(), Ok(SimdLevel::Avx512Vnni));
        assert!("avx"
            .parse::<SimdLevel>()
            .unwrap_err()
            .contains("no kernels"));
        for level in SimdLevel::ALL {
            assert_eq!(level.name().parse::<SimdLevel>(), Ok(level));
        }
        // A level this CPU lacks is refused by name, not silently replaced.
        for level in SimdLevel::ALL.into_iter().filter(|l| !l.supported()) {
            let err = Kernels::for_level(level).unwrap_err();
            assert!(err.contains(level.name()), "{err}");
        }
        assert!("mmx".parse::<SimdLevel>().unwrap_err().contains("unknown"));
        assert!(SimdLevel::detect().supported());
    }
}

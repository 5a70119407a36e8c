//! Per-token int8 activation quantization, exactly as BitNet b1.58 defines
//! it: scale = 127 / max(|x|, 1e-5), q = round(x · scale) clamped to
//! [-128, 127]. Rounding is ties-to-even, the one rule every backend uses
//! (`f32::round_ties_even`, WGSL `round`, CUDA `rintf`).

/// Smallest absmax used for the scale, so an all-zero row gives q = 0.
pub const ACT_EPS: f32 = 1e-5;

/// Quantizes one row of activations into `q`; returns the scale (127/absmax)
/// to divide the integer dot product by.
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    let scale = row_scale(x);
    quantize_with(x, scale, q);
    scale
}

/// The scale of a row: 127 / max(|x|, [`ACT_EPS`]).
pub fn row_scale(x: &[f32]) -> f32 {
    scale_for(absmax(x))
}

/// The scale of a row whose max |x| is `absmax`.
pub fn scale_for(absmax: f32) -> f32 {
    127.0 / absmax.max(ACT_EPS)
}

/// q = round(x · scale) clamped to [-128, 127], ties to even.
pub fn quantize_with(x: &[f32], scale: f32, q: &mut [i8]) {
    debug_assert_eq!(x.len(), q.len());
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round_small(v * scale).clamp(-128.0, 127.0) as i8;
    }
}

/// max |x| (NaN ignored, as `f32::max` does), in eight independent lanes
/// so the compiler can keep them in one vector register.
pub fn absmax(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    let tail = chunks.remainder().iter().fold(0f32, |m, v| m.max(v.abs()));
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// `x.round_ties_even()` for the values quantization meets, without a
/// library call where the target lacks a rounding instruction (x86-64
/// before SSE4.1): adding and removing 1.5·2²³ leaves no fraction bits, and
/// the FPU rounds that addition to nearest, ties to even. Exact for
/// |x| < 2²²; larger values (never met: |v · scale| ≤ 127) stay beyond the
/// clamp's range with their sign, so the clamped result is the same.
#[inline]
pub(crate) fn round_small(x: f32) -> f32 {
    (x + ROUND_MAGIC) - ROUND_MAGIC
}

/// 1.5 · 2²³: [`round_small`]'s constant (the SIMD kernels use it too).
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_with_ties_to_even() {
        let x = [127.0, 0.5 * 1.0, 1.5, 2.5, -2.5, -127.0, 0.0];
        let mut q = [0i8; 7];
        let s = quantize_row(&x, &mut q);
        assert_eq!(s, 1.0);
        assert_eq!(q, [127, 0, 2, 2, -2, -127, 0]);
    }

    /// The rounding trick equals `round_ties_even` wherever it matters:
    /// every tie and its neighbours in the int8 range, dense samples, and
    /// far-out and special values after the clamp.
    #[test]
    fn round_small_is_round_ties_even() {
        let reference = |x: f32| x.round_ties_even().clamp(-128.0, 127.0) as i8;
        let ours = |x: f32| round_small(x).clamp(-128.0, 127.0) as i8;
        let mut xs = vec![
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
        ];
        for i in -300..=300 {
            let tie = i as f32 + 0.5;
            xs.extend([tie, tie.next_up(), tie.next_down(), i as f32]);
        }
        xs.extend((0..200_000).map(|i| (i as f32 - 100_000.0) * 0.001_37));
        xs.extend([
            4_194_303.5,
            4_194_304.0,
            8_388_609.0,
            1e9,
            -1e9,
            1e30,
            -1e30,
        ]);
        for x in xs {
            assert_eq!(ours(x), reference(x), "x = {x}");
        }
    }

    #[test]
    fn absmax_ignores_nan_and_sees_every_lane() {
        for n in 0..40 {
            for at in 0..n {
                let mut x = vec![0.5f32; n];
                x[at] = -3.0;
                if n > 1 {
                    x[(at + 1) % n] = f32::NAN;
                }
                assert_eq!(absmax(&x), 3.0, "n = {n}, at = {at}");
            }
        }
        assert_eq!(absmax(&[]), 0.0);
    }

    #[test]
    fn zero_row_gives_zeros_not_nan() {
        let mut q = [1i8; 4];
        let s = quantize_row(&[0.0; 4], &mut q);
        assert!(s.is_finite());
        assert_eq!(q, [0; 4]);
    }
}

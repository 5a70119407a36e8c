//! Per-token int8 activation quantization, exactly as BitNet b1.58 defines
//! it: scale = 127 / max(|x|, 1e-5), q = round(x · scale) clamped to
//! [-128, 127]. Rounding is ties-to-even, the one rule every backend uses
//! (`f32::round_ties_even`, WGSL `round`, CUDA `rintf`).

/// Smallest absmax used for the scale, so an all-zero row gives q = 0.
pub const ACT_EPS: f32 = 1e-5;

/// Quantizes one row of activations into `q`; returns the scale (127/absmax)
/// to divide the integer dot product by.
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), q.len());
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = 127.0 / absmax.max(ACT_EPS);
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * scale).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    scale
}

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

    #[test]
    fn zero_row_gives_zeros_not_nan() {
        let mut q = [1i8; 4];
        let s = quantize_row(&[0.0; 4], &mut q);
        assert!(s.is_finite());
        assert_eq!(q, [0; 4]);
    }
}

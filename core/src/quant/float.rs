//! The float and 8-bit types real BitNet files use for embeddings, norms and
//! output tables, dequantized to f32 (scalar reference code).
//!
//! Layouts (ggml `src/ggml-common.h`):
//! - Q8_0: 32 weights in 34 bytes: f16 d, then 32 × i8; w = d · q.
//! - Q6_K: 256 weights in 210 bytes: ql[128] (low 4 bits), qh[64] (high 2
//!   bits), scales[16] (i8, one per 16 weights), f16 d; w = d · scale · (q - 32).

use half::{bf16, f16};

/// One Q8_0 block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// One Q6_K block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

pub fn f32_dequantize(data: &[u8], out: &mut Vec<f32>) {
    out.extend(
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
}

pub fn f16_dequantize(data: &[u8], out: &mut Vec<f32>) {
    out.extend(
        data.chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
    );
}

pub fn bf16_dequantize(data: &[u8], out: &mut Vec<f32>) {
    out.extend(
        data.chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
    );
}

pub fn q8_0_dequantize(data: &[u8], out: &mut Vec<f32>) {
    for b in data.chunks_exact(34) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        out.extend(b[2..].iter().map(|&q| d * f32::from(q as i8)));
    }
}

/// Quantizes f32 values (a multiple of 32) to Q8_0 the way ggml does:
/// d = absmax / 127, q = round(x / d).
pub fn q8_0_quantize(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

pub fn q6_k_dequantize(data: &[u8], out: &mut Vec<f32>) {
    for b in data.chunks_exact(210) {
        let (ql, rest) = b.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let (scales, d) = rest.split_at(16);
        let d = f16::from_le_bytes([d[0], d[1]]).to_f32();
        let mut y = [0f32; 256];
        for (i, y) in y.iter_mut().enumerate() {
            let (half, e) = (i / 128, i % 128);
            let ql = &ql[64 * half..];
            let qh = &qh[32 * half..];
            let low = if e < 64 {
                ql[e] & 0x0F
            } else {
                ql[e - 64] >> 4
            };
            let high = (qh[e % 32] >> (2 * (e / 32))) & 3;
            let q = i32::from(low | (high << 4)) - 32;
            let scale = d * f32::from(scales[i / 16] as i8);
            *y = scale * q as f32;
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 10.0).collect();
        let mut y = Vec::new();
        q8_0_dequantize(&q8_0_quantize(&x), &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 0.02, "{a} vs {b}");
        }
    }

    #[test]
    fn q6_k_layout() {
        // d = 1, every scale 1; set one element's low and high bits.
        let mut b = [0u8; 210];
        b[192..208].fill(1);
        b[208..210].copy_from_slice(&f16::ONE.to_le_bytes());
        // Element 128 + 64 + 5 = 197: second half, high nibble of ql[64+5],
        // qh[32 + 5] bits 5-4.
        b[64 + 5] = 0x70; // low 4 bits of q = 7
        b[128 + 32 + 5] = 0b10 << 4; // high 2 bits of q = 2
        let mut y = Vec::new();
        q6_k_dequantize(&b, &mut y);
        assert_eq!(y.len(), 256);
        assert_eq!(y[197], 7.0);
        assert_eq!(y[0], -32.0);
    }
}

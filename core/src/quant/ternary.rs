//! Ternary weight packings, byte-exact, with scalar reference codecs.
//!
//! Layouts from `shared/docs/formats.md` section 1:
//! - I2_S (bitnet.cpp, x86 layout): every 128 weights form a 32-byte group;
//!   byte p holds weights p, 32+p, 64+p, 96+p in bits 7-6, 5-4, 3-2, 1-0;
//!   code c means c-1. One f32 scale per tensor follows the codes, then 28
//!   bytes of padding.
//! - TQ2_0 (ggml): 256 weights in 66 bytes: 64 code bytes as two 32-byte
//!   halves (byte m of a half holds weights m, m+32, m+64, m+96 of that half
//!   in bits 1-0, 3-2, 5-4, 7-6), then the f16 scale d.
//! - TQ1_0 (ggml): 256 weights in 54 bytes: qs[48], qh[4], f16 d. Each byte
//!   is a base-3 number of 5 trits (first trit most significant) stored as
//!   ceil(q * 256 / 243), so trit n is `((b * 3^n) mod 256) * 3 >> 8`.
//!
//! Weights are `i8` in {-1, 0, 1}. The 2-bit formats have a fourth code (3)
//! that no quantizer writes; it unpacks to 2, which is what a kernel that
//! multiplies the raw code would compute.

use half::f16;

// ---------------------------------------------------------------------------
// I2_S
// ---------------------------------------------------------------------------

/// Weights per I2_S group.
pub const I2S_GROUP: usize = 128;
/// Bytes per I2_S group.
pub const I2S_GROUP_BYTES: usize = 32;

/// One I2_S group: 128 weights, 2 bits each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockI2S {
    pub qs: [u8; I2S_GROUP_BYTES],
}
const _: () = assert!(std::mem::size_of::<BlockI2S>() == 32);

impl BlockI2S {
    /// Packs 128 weights; each must be in -1..=2 (2 only to round-trip code 3).
    pub fn pack(w: &[i8; I2S_GROUP]) -> BlockI2S {
        let mut qs = [0u8; I2S_GROUP_BYTES];
        for (p, q) in qs.iter_mut().enumerate() {
            for k in 0..4 {
                let code = (w[32 * k + p] + 1) as u8 & 3;
                *q |= code << (6 - 2 * k);
            }
        }
        BlockI2S { qs }
    }

    pub fn unpack(&self) -> [i8; I2S_GROUP] {
        let mut w = [0i8; I2S_GROUP];
        for (p, &q) in self.qs.iter().enumerate() {
            for k in 0..4 {
                w[32 * k + p] = ((q >> (6 - 2 * k)) & 3) as i8 - 1;
            }
        }
        w
    }
}

/// Encodes a whole tensor (`weights.len()` a multiple of 128) as I2_S:
/// codes, then the f32 scale and 28 zero bytes.
pub fn i2s_encode(weights: &[i8], scale: f32) -> Vec<u8> {
    debug_assert_eq!(weights.len() % I2S_GROUP, 0);
    let mut out = Vec::with_capacity(weights.len() / 4 + 32);
    for group in weights.chunks_exact(I2S_GROUP) {
        let mut w = [0i8; I2S_GROUP];
        w.copy_from_slice(group);
        out.extend_from_slice(&BlockI2S::pack(&w).qs);
    }
    out.extend_from_slice(&scale.to_le_bytes());
    out.resize(out.len() + 28, 0);
    out
}

/// The per-tensor scale of an I2_S tensor of `n` weights, read from the
/// trailer at byte `n / 4`. `None` if `data` is too short.
pub fn i2s_scale(data: &[u8], n: usize) -> Option<f32> {
    let b = data.get(n / 4..n / 4 + 4)?;
    Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes the ternary codes of an I2_S tensor of `n` weights.
pub fn i2s_decode(data: &[u8], n: usize) -> Option<Vec<i8>> {
    let codes = data.get(..n / 4)?;
    let mut out = Vec::with_capacity(n);
    for chunk in codes.chunks_exact(I2S_GROUP_BYTES) {
        let mut qs = [0u8; I2S_GROUP_BYTES];
        qs.copy_from_slice(chunk);
        out.extend_from_slice(&BlockI2S { qs }.unpack());
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// TQ2_0
// ---------------------------------------------------------------------------

/// Weights per TQ1_0 / TQ2_0 block (ggml's QK_K).
pub const QK_K: usize = 256;

/// One TQ2_0 block: 256 weights, 2 bits each, then an f16 scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockTQ2_0 {
    pub qs: [u8; 64],
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockTQ2_0>() == 66);

impl BlockTQ2_0 {
    pub fn from_bytes(b: &[u8; 66]) -> Self {
        let mut qs = [0u8; 64];
        qs.copy_from_slice(&b[..64]);
        BlockTQ2_0 {
            qs,
            d: [b[64], b[65]],
        }
    }

    pub fn to_bytes(&self) -> [u8; 66] {
        let mut b = [0u8; 66];
        b[..64].copy_from_slice(&self.qs);
        b[64..].copy_from_slice(&self.d);
        b
    }

    pub fn pack(w: &[i8; QK_K], d: f16) -> Self {
        Self::from_codes(&w.map(|x| (x + 1) as u8), d.to_le_bytes())
    }

    /// The block of 256 codes (weight + 1, each 0..=2) in weight order and
    /// the f16 scale's bytes.
    pub fn from_codes(codes: &[u8; QK_K], d: [u8; 2]) -> Self {
        let mut qs = [0u8; 64];
        for (i, &c) in codes.iter().enumerate() {
            let (half, within) = (i / 128, i % 128);
            let (k, m) = (within / 32, within % 32);
            qs[32 * half + m] |= (c & 3) << (2 * k);
        }
        BlockTQ2_0 { qs, d }
    }

    pub fn unpack(&self) -> [i8; QK_K] {
        let mut w = [0i8; QK_K];
        for (i, x) in w.iter_mut().enumerate() {
            let (half, within) = (i / 128, i % 128);
            let (k, m) = (within / 32, within % 32);
            *x = ((self.qs[32 * half + m] >> (2 * k)) & 3) as i8 - 1;
        }
        w
    }

    pub fn scale(&self) -> f16 {
        f16::from_le_bytes(self.d)
    }
}

// ---------------------------------------------------------------------------
// TQ1_0
// ---------------------------------------------------------------------------

/// One TQ1_0 block: 256 weights as base-3 digits, then an f16 scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockTQ1_0 {
    pub qs: [u8; 48],
    pub qh: [u8; 4],
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockTQ1_0>() == 54);

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// Packs up to 5 trits (0..=2, first most significant) into one TQ1_0 byte.
pub fn tq1_pack_byte(trits: &[u8]) -> u8 {
    debug_assert!(trits.len() <= 5);
    let q: u16 = trits
        .iter()
        .enumerate()
        .map(|(n, &t)| u16::from(t) * u16::from(POW3[4 - n]))
        .sum();
    // ceil(q * 256 / 243); q ≤ 242 so this fits in a byte.
    ((q * 256).div_ceil(243)) as u8
}

/// Trit `n` (0 = most significant) of a TQ1_0 byte.
pub fn tq1_trit(byte: u8, n: usize) -> u8 {
    let x = byte.wrapping_mul(POW3[n]);
    ((u16::from(x) * 3) >> 8) as u8
}

/// The five trits of every byte value (trit n = [`tq1_trit`]`(b, n)`).
const TQ1_TRITS: [[u8; 5]; 256] = {
    let mut t = [[0u8; 5]; 256];
    let mut b = 0;
    while b < 256 {
        let mut n = 0;
        while n < 5 {
            let x = (b as u8).wrapping_mul(POW3[n]);
            t[b][n] = ((x as u16 * 3) >> 8) as u8;
            n += 1;
        }
        b += 1;
    }
    t
};

/// Unpacks one TQ1_0 block's 52 code bytes (qs‖qh) into 256 codes
/// (weight + 1: 0, 1 or 2) in weight order, through a table: the fast path
/// the CPU kernels use (equal to [`BlockTQ1_0::unpack`] + 1, tested).
pub fn tq1_unpack_codes(bytes: &[u8], out: &mut [u8]) {
    debug_assert!(bytes.len() >= 52 && out.len() >= 256);
    for (p, &b) in bytes[..32].iter().enumerate() {
        for (n, &t) in TQ1_TRITS[b as usize].iter().enumerate() {
            out[n * 32 + p] = t;
        }
    }
    for (p, &b) in bytes[32..48].iter().enumerate() {
        for (n, &t) in TQ1_TRITS[b as usize].iter().enumerate() {
            out[160 + n * 16 + p] = t;
        }
    }
    tq1_unpack_tail(bytes, out);
}

/// A TQ1_0 block (54 bytes) as the TQ2_0 block of the same weights and
/// scale (66 bytes): 2 bits per weight instead of 1.6875, read by the
/// packed 2-bit kernels instead of a base-3 decoder.
pub fn tq1_to_tq2(tq1: &[u8]) -> [u8; 66] {
    let mut codes = [0u8; QK_K];
    tq1_unpack_codes(tq1, &mut codes);
    BlockTQ2_0::from_codes(&codes, [tq1[52], tq1[53]]).to_bytes()
}

/// The last 16 codes of a TQ1_0 block (qh: 4 bytes × 4 trits) into
/// `out[240..256]`.
pub fn tq1_unpack_tail(bytes: &[u8], out: &mut [u8]) {
    for (p, &b) in bytes[48..52].iter().enumerate() {
        for (n, &t) in TQ1_TRITS[b as usize][..4].iter().enumerate() {
            out[240 + n * 4 + p] = t;
        }
    }
}

/// Where weight `i` of a TQ1_0 block lives: (byte index in qs‖qh, trit).
fn tq1_position(i: usize) -> (usize, usize) {
    match i {
        0..=159 => (i % 32, i / 32),
        160..=239 => (32 + (i - 160) % 16, (i - 160) / 16),
        _ => (48 + (i - 240) % 4, (i - 240) / 4),
    }
}

impl BlockTQ1_0 {
    pub fn from_bytes(b: &[u8; 54]) -> Self {
        let mut qs = [0u8; 48];
        qs.copy_from_slice(&b[..48]);
        BlockTQ1_0 {
            qs,
            qh: [b[48], b[49], b[50], b[51]],
            d: [b[52], b[53]],
        }
    }

    pub fn to_bytes(&self) -> [u8; 54] {
        let mut b = [0u8; 54];
        b[..48].copy_from_slice(&self.qs);
        b[48..52].copy_from_slice(&self.qh);
        b[52..].copy_from_slice(&self.d);
        b
    }

    pub fn pack(w: &[i8; QK_K], d: f16) -> Self {
        let mut trits = [[0u8; 5]; 52];
        for (i, &x) in w.iter().enumerate() {
            let (byte, n) = tq1_position(i);
            trits[byte][n] = (x + 1) as u8;
        }
        let mut bytes = [0u8; 52];
        for (b, t) in bytes.iter_mut().zip(&trits) {
            *b = tq1_pack_byte(t);
        }
        let mut qs = [0u8; 48];
        qs.copy_from_slice(&bytes[..48]);
        BlockTQ1_0 {
            qs,
            qh: [bytes[48], bytes[49], bytes[50], bytes[51]],
            d: d.to_le_bytes(),
        }
    }

    pub fn unpack(&self) -> [i8; QK_K] {
        let mut w = [0i8; QK_K];
        for (i, x) in w.iter_mut().enumerate() {
            let (byte, n) = tq1_position(i);
            let b = if byte < 48 {
                self.qs[byte]
            } else {
                self.qh[byte - 48]
            };
            *x = tq1_trit(b, n) as i8 - 1;
        }
        w
    }

    pub fn scale(&self) -> f16 {
        f16::from_le_bytes(self.d)
    }
}

// ---------------------------------------------------------------------------
// Whole tensors in the ggml block formats
// ---------------------------------------------------------------------------

/// The scale ggml's quantizer gives a block: its absmax, so an all-zero block
/// gets 0 and every other block the tensor scale.
fn block_scale(w: &[i8; QK_K], scale: f32) -> f16 {
    if w.iter().any(|&x| x != 0) {
        f16::from_f32(scale.abs())
    } else {
        f16::ZERO
    }
}

/// What the two ggml ternary block formats share, so whole tensors are
/// encoded and decoded by one piece of code.
pub trait TernaryBlock: Sized {
    /// Bytes per block.
    const BYTES: usize;
    fn pack(w: &[i8; QK_K], d: f16) -> Self;
    fn unpack(&self) -> [i8; QK_K];
    fn scale(&self) -> f16;
    /// Reads one block from exactly `BYTES` bytes.
    fn read(bytes: &[u8]) -> Self;
    fn write(&self, out: &mut Vec<u8>);
}

impl TernaryBlock for BlockTQ2_0 {
    const BYTES: usize = 66;
    fn pack(w: &[i8; QK_K], d: f16) -> Self {
        BlockTQ2_0::pack(w, d)
    }
    fn unpack(&self) -> [i8; QK_K] {
        BlockTQ2_0::unpack(self)
    }
    fn scale(&self) -> f16 {
        BlockTQ2_0::scale(self)
    }
    fn read(bytes: &[u8]) -> Self {
        let mut b = [0u8; 66];
        b.copy_from_slice(bytes);
        BlockTQ2_0::from_bytes(&b)
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }
}

impl TernaryBlock for BlockTQ1_0 {
    const BYTES: usize = 54;
    fn pack(w: &[i8; QK_K], d: f16) -> Self {
        BlockTQ1_0::pack(w, d)
    }
    fn unpack(&self) -> [i8; QK_K] {
        BlockTQ1_0::unpack(self)
    }
    fn scale(&self) -> f16 {
        BlockTQ1_0::scale(self)
    }
    fn read(bytes: &[u8]) -> Self {
        let mut b = [0u8; 54];
        b.copy_from_slice(bytes);
        BlockTQ1_0::from_bytes(&b)
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }
}

/// Encodes ternary weights times `scale` in block format `B` (length a
/// multiple of 256).
pub fn encode_blocks<B: TernaryBlock>(weights: &[i8], scale: f32) -> Vec<u8> {
    debug_assert_eq!(weights.len() % QK_K, 0);
    let mut out = Vec::with_capacity(weights.len() / QK_K * B::BYTES);
    for chunk in weights.chunks_exact(QK_K) {
        let mut w = [0i8; QK_K];
        w.copy_from_slice(chunk);
        B::pack(&w, block_scale(&w, scale)).write(&mut out);
    }
    out
}

/// Dequantizes blocks of format `B`: weight × f32(d).
pub fn dequantize_blocks<B: TernaryBlock>(data: &[u8], out: &mut Vec<f32>) {
    for chunk in data.chunks_exact(B::BYTES) {
        let block = B::read(chunk);
        let d = block.scale().to_f32();
        out.extend(block.unpack().iter().map(|&w| d * f32::from(w)));
    }
}

#[cfg(test)]
mod tq1_fast_tests {
    use super::*;

    #[test]
    fn table_unpack_equals_block_unpack() {
        let mut x = 0x1234_5678u32;
        for _ in 0..200 {
            let mut w = [0i8; QK_K];
            for v in w.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = (x % 3) as i8 - 1;
            }
            let block = BlockTQ1_0::pack(&w, f16::ONE);
            let bytes = block.to_bytes();
            let mut codes = [0u8; 256];
            tq1_unpack_codes(&bytes, &mut codes);
            let want: Vec<u8> = block.unpack().iter().map(|&v| (v + 1) as u8).collect();
            assert_eq!(codes.to_vec(), want);
            let tq2 = BlockTQ2_0::from_bytes(&tq1_to_tq2(&bytes));
            assert_eq!((tq2.unpack(), tq2.scale()), (block.unpack(), f16::ONE));
        }
        // Widened to TQ2_0: the same weights and scale.
        let block = BlockTQ1_0::pack(&[1; QK_K], f16::from_f32(0.5));
        let tq2 = BlockTQ2_0::from_bytes(&tq1_to_tq2(&block.to_bytes()));
        assert_eq!((tq2.unpack(), tq2.scale()), ([1; QK_K], f16::from_f32(0.5)));
        // Every byte value, including ones no encoder writes.
        for b in 0..=255u8 {
            for (n, &t) in TQ1_TRITS[b as usize].iter().enumerate() {
                assert_eq!(t, tq1_trit(b, n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All 256 I2_S bytes in every position of a group: unpack then pack is
    /// the identity, and each byte's four codes land where formats.md says.
    #[test]
    fn i2s_every_byte_code() {
        for byte in 0..=255u8 {
            for p in 0..32 {
                let mut block = BlockI2S { qs: [0x55; 32] }; // code 1 = weight 0
                block.qs[p] = byte;
                let w = block.unpack();
                assert_eq!(BlockI2S::pack(&w), block);
                for k in 0..4 {
                    let code = (byte >> (6 - 2 * k)) & 3;
                    assert_eq!(w[32 * k + p], code as i8 - 1);
                }
            }
        }
    }

    #[test]
    fn tq2_0_every_byte_code() {
        for byte in 0..=255u8 {
            for pos in [0usize, 17, 31, 32, 50, 63] {
                let mut block = BlockTQ2_0 {
                    qs: [0x55; 64],
                    d: f16::ONE.to_le_bytes(),
                };
                block.qs[pos] = byte;
                let w = block.unpack();
                assert_eq!(BlockTQ2_0::pack(&w, f16::ONE), block);
                let (half, m) = (pos / 32, pos % 32);
                for k in 0..4 {
                    let code = (byte >> (2 * k)) & 3;
                    assert_eq!(w[128 * half + 32 * k + m], code as i8 - 1);
                }
            }
        }
    }

    /// All 243 base-3 values: packing then reading the trits gives them back,
    /// and the 243 encoded bytes are distinct.
    #[test]
    fn tq1_0_every_base3_code() {
        let mut seen = std::collections::HashSet::new();
        for q in 0..243u16 {
            let trits: Vec<u8> = (0..5)
                .map(|n| ((q / u16::from(POW3[4 - n])) % 3) as u8)
                .collect();
            let byte = tq1_pack_byte(&trits);
            assert!(seen.insert(byte));
            for (n, &t) in trits.iter().enumerate() {
                assert_eq!(tq1_trit(byte, n), t, "q={q} n={n}");
            }
        }
        // Any byte decodes to trits that re-encode to a byte decoding the same.
        for byte in 0..=255u8 {
            let trits: Vec<u8> = (0..5).map(|n| tq1_trit(byte, n)).collect();
            assert!(trits.iter().all(|&t| t <= 2));
            let again = tq1_pack_byte(&trits);
            let trits2: Vec<u8> = (0..5).map(|n| tq1_trit(again, n)).collect();
            assert_eq!(trits, trits2);
            if seen.contains(&byte) {
                assert_eq!(again, byte);
            }
        }
    }

    #[test]
    fn tq1_0_block_round_trip_and_positions() {
        for i in 0..QK_K {
            let mut w = [0i8; QK_K];
            w[i] = 1;
            w[(i * 7 + 3) % QK_K] = -1;
            let block = BlockTQ1_0::pack(&w, f16::from_f32(0.5));
            assert_eq!(block.unpack(), w);
            assert_eq!(BlockTQ1_0::from_bytes(&block.to_bytes()), block);
        }
        // Weight 240 + j + 4n is trit n of qh[j]; the fifth trit stays zero.
        let mut w = [-1i8; QK_K]; // trit 0 everywhere...
        w[240 + 2 + 4 * 3] = 1; // ...but qh[2] trit 3: value 2 * 3 = 6 → ceil(6*256/243) = 7
        let block = BlockTQ1_0::pack(&w, f16::ONE);
        assert_eq!(block.qh, [0, 0, 7, 0]);
        assert!(block.qs.iter().all(|&b| b == 0));
    }

    #[test]
    fn whole_tensor_codecs_agree() {
        let w: Vec<i8> = (0..1024).map(|i| ((i * 7 + i / 5) % 3) as i8 - 1).collect();
        let i2s = i2s_encode(&w, 0.25);
        assert_eq!(i2s.len(), 1024 / 4 + 32);
        assert_eq!(i2s_scale(&i2s, 1024), Some(0.25));
        assert_eq!(i2s_decode(&i2s, 1024).as_deref(), Some(&w[..]));
        let expect: Vec<f32> = w.iter().map(|&x| f32::from(x) * 0.25).collect();
        let mut out = Vec::new();
        dequantize_blocks::<BlockTQ2_0>(&encode_blocks::<BlockTQ2_0>(&w, 0.25), &mut out);
        assert_eq!(out, expect);
        out.clear();
        dequantize_blocks::<BlockTQ1_0>(&encode_blocks::<BlockTQ1_0>(&w, 0.25), &mut out);
        assert_eq!(out, expect);
    }
}

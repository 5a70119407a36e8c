//! Lookup-table ternary kernels, after bitnet.cpp's TL1/TL2 and T-MAC: the
//! weights are repacked at load time into tiles of 32 rows that hold, per
//! group of 2 (TL1) or 3 (TL2) columns, one 4-bit table index per row; per
//! token, each group's activations give a 16-entry table of every sum the
//! group's weights can make, and the product is a table lookup per row
//! and group (`vpshufb` on 32 rows at once).
//!
//! Unlike bitnet.cpp's, whose tables are rounded to int8, these are exact:
//! each entry is an i16 (|Σ| ≤ 3·128) kept as a low-byte and a high-byte
//! table, looked up separately and interleaved back into i16 lanes, so the
//! sums equal the packed kernels' bit for bit.
//!
//! - TL1: index 3·(w0 + 1) + (w1 + 1), 9 entries: 2 bits per weight.
//! - TL2: the 27 sums of three weights are 13 pairs ±v and 0; the index is
//!   the magnitude code m (0..=13) and a sign bit apart: 5 bits per three
//!   weights (1.67 bits per weight).
//!
//! Any shape: rows are padded to a multiple of 32 (zero weights), columns
//! to an even number of groups (zero weights against zero activations).
//! Nothing is generated per model.

/// Rows per tile.
pub const ROWS: usize = 32;

/// A lookup-table layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lut {
    Tl1,
    Tl2,
}

impl Lut {
    /// Columns per group.
    pub const fn group(self) -> usize {
        match self {
            Lut::Tl1 => 2,
            Lut::Tl2 => 3,
        }
    }

    /// Groups of a `cols`-wide row, padded to an even count (the SIMD
    /// kernel takes two per step).
    pub const fn groups(self, cols: usize) -> usize {
        cols.div_ceil(self.group()).next_multiple_of(2)
    }

    /// Bytes of one tile of 32 rows: 16 bytes of indices per group, and
    /// for TL2 the sign bits, 128 bytes per 32 groups.
    pub const fn tile_bytes(self, groups: usize) -> usize {
        16 * groups
            + match self {
                Lut::Tl1 => 0,
                Lut::Tl2 => 128 * groups.div_ceil(32),
            }
    }

    /// Table index and sign of one group's weights (each -1, 0 or 1; a
    /// missing third weight of TL1 is ignored).
    fn encode(self, w: [i8; 3]) -> (u8, bool) {
        let d = |x: i8| (x + 1) as u8;
        match self {
            Lut::Tl1 => (3 * d(w[0]) + d(w[1]), false),
            Lut::Tl2 => {
                let c = 9 * d(w[0]) + 3 * d(w[1]) + d(w[2]);
                if c >= 13 {
                    (c - 13, false)
                } else {
                    (13 - c, true)
                }
            }
        }
    }

    /// The weights behind table entry `e` (entries past the last are 0).
    fn weights_of(self, e: usize) -> [i32; 3] {
        let w = |c: usize| c as i32 - 1;
        match self {
            Lut::Tl1 if e < 9 => [w(e / 3), w(e % 3), 0],
            Lut::Tl2 if e < 14 => {
                let c = 13 + e;
                [w(c / 9), w(c / 3 % 3), w(c % 3)]
            }
            _ => [0; 3],
        }
    }

    /// Bytes of one token's tables for `groups` groups: per pair of groups
    /// (a step), the low bytes of both groups' 16 entries, then the high
    /// bytes: `[lo g, lo g+1, hi g, hi g+1]`, 64 bytes.
    pub const fn table_bytes(groups: usize) -> usize {
        32 * groups
    }

    /// One token's tables from its int8 activations `q` (`cols` of them;
    /// `out` is `table_bytes(groups(cols))` long).
    pub fn build_tables(self, q: &[i8], out: &mut [u8]) {
        let g = self.group();
        let groups = self.groups(q.len());
        assert_eq!(out.len(), Lut::table_bytes(groups));
        for (gi, step) in (0..groups).zip((0..).map(|i| i / 2)) {
            let a: [i32; 3] =
                std::array::from_fn(|i| q.get(gi * g + i).map_or(0, |&v| i32::from(v)));
            let base = 64 * step + 16 * (gi % 2);
            for e in 0..16 {
                let w = self.weights_of(e);
                let v = (w[0] * a[0] + w[1] * a[1] + w[2] * a[2]) as i16;
                let [lo, hi] = v.to_le_bytes();
                out[base + e] = lo;
                out[base + 32 + e] = hi;
            }
        }
    }
}

/// A ternary matrix repacked into tiles for one [`Lut`] layout.
pub struct LutMatrix {
    pub lut: Lut,
    pub rows: usize,
    pub cols: usize,
    pub groups: usize,
    data: Vec<u8>,
}

impl LutMatrix {
    /// Repacks `rows` × `cols` ternary weights (row-major, each -1, 0 or 1).
    pub fn new(lut: Lut, weights: &[i8], rows: usize, cols: usize) -> LutMatrix {
        assert_eq!(weights.len(), rows * cols);
        let groups = lut.groups(cols);
        let tile = lut.tile_bytes(groups);
        let mut data = vec![0u8; rows.div_ceil(ROWS) * tile];
        let g = lut.group();
        for (b, t) in data.chunks_exact_mut(tile).enumerate() {
            let (idx, signs) = t.split_at_mut(16 * groups);
            for r in 0..ROWS {
                let row = (b * ROWS + r < rows).then(|| &weights[(b * ROWS + r) * cols..][..cols]);
                for gi in 0..groups {
                    let w = std::array::from_fn(|i| {
                        row.and_then(|row| (i < g).then(|| row.get(gi * g + i)).flatten())
                            .copied()
                            .unwrap_or(0)
                    });
                    let (e, neg) = lut.encode(w);
                    idx[16 * gi + r % 16] |= e << (4 * (r / 16));
                    if neg {
                        let (at, bit) = sign_at(gi, r);
                        signs[at] |= 1 << (bit % 8);
                    }
                }
            }
        }
        LutMatrix {
            lut,
            rows,
            cols,
            groups,
            data,
        }
    }

    /// Tile `b` (rows 32·b..32·b + 32).
    pub fn tile(&self, b: usize) -> &[u8] {
        let n = self.lut.tile_bytes(self.groups);
        &self.data[b * n..(b + 1) * n]
    }
}

/// Byte and bit of TL2's sign of group `g`, row `r` inside a tile's sign
/// area: per 32 groups, four 32-byte vectors (rows 8a..8a + 8, a = 0..4),
/// each two lanes (even and odd groups) of eight u16 words (one per row);
/// the word's bit 15 − j belongs to the lane's j-th group (group 2j + lane
/// of the 32), so the SIMD kernel reads bit 15 and shifts left once per
/// step.
fn sign_at(g: usize, r: usize) -> (usize, usize) {
    let (chunk, gi) = (g / 32, g % 32);
    let (lane, j) = (gi % 2, gi / 2);
    let word = 128 * chunk + 32 * (r / 8) + 16 * lane + 2 * (r % 8);
    let bit = 15 - j;
    (word + bit / 8, bit)
}

/// `(lut, tile, groups, tables, out)`: Σ weight·q of the tile's 32 rows.
pub type LutTile = fn(Lut, &[u8], usize, &[u8], &mut [i32; ROWS]);

/// Scalar reference of [`LutTile`]: for each row and group, the entry its
/// index names, negated by its sign bit (TL2).
pub fn dot_tile_scalar(lut: Lut, tile: &[u8], groups: usize, tables: &[u8], out: &mut [i32; ROWS]) {
    let (idx, signs) = tile.split_at(16 * groups);
    for (r, o) in out.iter_mut().enumerate() {
        let mut sum = 0i32;
        for g in 0..groups {
            let e = usize::from((idx[16 * g + r % 16] >> (4 * (r / 16))) & 15);
            let base = 64 * (g / 2) + 16 * (g % 2) + e;
            let v = i32::from(i16::from_le_bytes([tables[base], tables[base + 32]]));
            let neg = lut == Lut::Tl2 && {
                let (at, bit) = sign_at(g, r);
                signs[at] >> (bit % 8) & 1 == 1
            };
            sum += if neg { -v } else { v };
        }
        *o = sum;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{Lut, ROWS};

    pub fn dot_tile(lut: Lut, tile: &[u8], groups: usize, tables: &[u8], out: &mut [i32; ROWS]) {
        assert!(groups.is_multiple_of(2));
        assert!(tile.len() >= lut.tile_bytes(groups) && tables.len() >= Lut::table_bytes(groups));
        // SAFETY: reachable only through `Kernels::for_level` of a level
        // with AVX2; the asserts keep every load in bounds.
        unsafe {
            match lut {
                Lut::Tl1 => dot_tile_avx2::<false>(tile, groups, tables, out),
                Lut::Tl2 => dot_tile_avx2::<true>(tile, groups, tables, out),
            }
        }
    }

    /// One step is two groups (lane 0 the even, lane 1 the odd one): the
    /// indices of rows 0..16 (low nibbles) and 16..32 (high) look up the
    /// low and high table bytes, interleaved into i16 sums of rows
    /// 8a..8a + 8 (a = 0..4), negated where TL2's sign bit (bit 15 of the
    /// rows' sign words, shifted once per step) is set. |entry| ≤ 384, so
    /// the i16 lanes are widened every 64 steps (≤ 24,576).
    #[target_feature(enable = "avx2")]
    unsafe fn dot_tile_avx2<const TL2: bool>(
        tile: &[u8],
        groups: usize,
        tables: &[u8],
        out: &mut [i32; ROWS],
    ) {
        let steps = groups / 2;
        let nib = _mm256_set1_epi8(15);
        let one = _mm256_set1_epi16(1);
        let (idx, signs) = (tile.as_ptr(), tile[16 * groups..].as_ptr());
        let mut acc32 = [_mm256_setzero_si256(); 4];
        let mut s = 0;
        while s < steps {
            let end = (s + 64).min(steps);
            let mut acc16 = [_mm256_setzero_si256(); 4];
            let mut sign = [_mm256_setzero_si256(); 4];
            while s < end {
                if s % 2 == 0 {
                    crate::backend::kernels::prefetch_ahead(idx.wrapping_add(32 * s));
                }
                // SAFETY: step s < steps reads 32 index bytes at 32·s <
                // 16·groups, 64 table bytes at 64·s, and every 16th step
                // the 128 sign bytes of its 32 groups: all in bounds by the
                // caller's asserts.
                let (v, tl, th) = unsafe {
                    if TL2 && s % 16 == 0 {
                        for (a, w) in sign.iter_mut().enumerate() {
                            *w = _mm256_loadu_si256(signs.add(128 * (s / 16) + 32 * a).cast());
                        }
                    }
                    let t = tables.as_ptr().add(64 * s);
                    (
                        _mm256_loadu_si256(idx.add(32 * s).cast()),
                        _mm256_loadu_si256(t.cast()),
                        _mm256_loadu_si256(t.add(32).cast()),
                    )
                };
                let n = [
                    _mm256_and_si256(v, nib),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib),
                ];
                for (h, n) in n.into_iter().enumerate() {
                    let (lo, hi) = (_mm256_shuffle_epi8(tl, n), _mm256_shuffle_epi8(th, n));
                    let vals = [_mm256_unpacklo_epi8(lo, hi), _mm256_unpackhi_epi8(lo, hi)];
                    for (u, mut x) in vals.into_iter().enumerate() {
                        let a = 2 * h + u;
                        if TL2 {
                            // Negated where bit 15 is set (never zeroed:
                            // bit 0 is forced on).
                            x = _mm256_sign_epi16(x, _mm256_or_si256(sign[a], one));
                        }
                        acc16[a] = _mm256_add_epi16(acc16[a], x);
                    }
                }
                if TL2 {
                    for w in sign.iter_mut() {
                        *w = _mm256_slli_epi16::<1>(*w);
                    }
                }
                s += 1;
            }
            for (a32, a16) in acc32.iter_mut().zip(acc16) {
                let even = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a16));
                let odd = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(a16));
                *a32 = _mm256_add_epi32(*a32, _mm256_add_epi32(even, odd));
            }
        }
        for (a, v) in acc32.into_iter().enumerate() {
            // SAFETY: 8 i32 at 8·a of a 32-element array.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(8 * a).cast(), v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernels::{Kernels, SimdLevel};

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Both layouts, every level's tile kernel: Σ weight·q equals the
    /// direct sum from the unpacked weights, exactly, on shapes with row
    /// and column tails, long rows (i16 widening), and extreme activations.
    #[test]
    fn lut_tiles_equal_direct_sums_at_every_level() {
        let mut next = rng(0x7e57);
        let levels: Vec<Kernels> = SimdLevel::ALL
            .iter()
            .filter(|l| l.supported())
            .map(|&l| Kernels::for_level(l).unwrap())
            .collect();
        for (rows, cols) in [(32, 2), (1, 7), (45, 64), (64, 129), (33, 1000), (5, 4096)] {
            for case in 0..4 {
                let w: Vec<i8> = (0..rows * cols)
                    .map(|i| match case {
                        0 => [1, -1][i % 2],
                        _ => (next() % 3) as i8 - 1,
                    })
                    .collect();
                let q: Vec<i8> = (0..cols)
                    .map(|i| match case {
                        0 => [-128, 127][(i / 2) % 2],
                        1 => -128,
                        _ => next() as i8,
                    })
                    .collect();
                for lut in [Lut::Tl1, Lut::Tl2] {
                    let m = LutMatrix::new(lut, &w, rows, cols);
                    let mut tables = vec![0; Lut::table_bytes(m.groups)];
                    lut.build_tables(&q, &mut tables);
                    for k in &levels {
                        for b in 0..rows.div_ceil(ROWS) {
                            let mut got = [0; ROWS];
                            (k.lut_tile)(lut, m.tile(b), m.groups, &tables, &mut got);
                            for (r, &g) in got.iter().enumerate() {
                                let row = b * ROWS + r;
                                let want: i32 = if row < rows {
                                    w[row * cols..(row + 1) * cols]
                                        .iter()
                                        .zip(&q)
                                        .map(|(&a, &b)| i32::from(a) * i32::from(b))
                                        .sum()
                                } else {
                                    0
                                };
                                assert_eq!(
                                    g, want,
                                    "{lut:?} {} rows {rows} cols {cols} case {case} row {row}",
                                    k.level
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;
        use crate::backend::kernels::{Kernels, SimdLevel};

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Random shapes (row and column tails), weights and
            /// activations (or saturated ones): every level's tile kernel
            /// gives each row's exact Σ weight·q, both layouts.
            #[test]
            fn lut_tiles_equal_direct_sums(
                rows in 1usize..80,
                cols in 1usize..700,
                seed in any::<u64>(),
                edge in 0u8..3,
            ) {
                let mut next = super::rng(seed);
                let w: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
                let q: Vec<i8> = (0..cols)
                    .map(|_| match edge { 0 => -128, 1 => 127, _ => next() as i8 })
                    .collect();
                for lut in [Lut::Tl1, Lut::Tl2] {
                    let m = LutMatrix::new(lut, &w, rows, cols);
                    let mut tables = vec![0; Lut::table_bytes(m.groups)];
                    lut.build_tables(&q, &mut tables);
                    for level in SimdLevel::ALL.into_iter().filter(|l| l.supported()) {
                        let k = Kernels::for_level(level).unwrap();
                        for b in 0..rows.div_ceil(ROWS) {
                            let mut got = [0; ROWS];
                            (k.lut_tile)(lut, m.tile(b), m.groups, &tables, &mut got);
                            for (r, &g) in got.iter().enumerate().take(rows - b * ROWS) {
                                let row = &w[(b * ROWS + r) * cols..][..cols];
                                let want: i32 =
                                    row.iter().zip(&q).map(|(&a, &x)| i32::from(a) * i32::from(x)).sum();
                                prop_assert_eq!(g, want, "{:?} {} row {}", lut, level, b * ROWS + r);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tl2_codes_cover_every_triple_once() {
        let mut seen = std::collections::HashSet::new();
        for a in -1..=1 {
            for b in -1..=1 {
                for c in -1..=1 {
                    let (e, neg) = Lut::Tl2.encode([a, b, c]);
                    assert!(e < 14);
                    let w = Lut::Tl2.weights_of(e.into());
                    let s = if neg { -1 } else { 1 };
                    assert_eq!([s * w[0], s * w[1], s * w[2]], [a, b, c].map(i32::from));
                    assert!(seen.insert((e, neg)));
                }
            }
        }
    }
}

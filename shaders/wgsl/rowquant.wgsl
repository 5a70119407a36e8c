// One row of activations to int8 codes, the CPU rule bit for bit
// (core/src/quant/act.rs): scale = 127 / max(absmax, 1e-5), correctly
// rounded; q = clamp(round(x * scale), -128, 127) with ties to even. With
// `norm` the row is first RMS-normalised as norm.wgsl does
// (x * (1 / sqrt(mean(x²) + eps)) * w, in that order), and the normalised
// values are what get quantized.
//
// Needs the `dot4` prelude. A prelude, not a shader: quant.wgsl (codes to buffers) and ternary.wgsl's
// one-token kernels (codes to workgroup memory, then the product) call the
// same `quantize_row`, so both make the same codes from the same row. The
// module declares the row source `src: array<f32>`, the norm weight
// `norm_w: array<f32>` ([k]), and where the results go:
//   fn emit_word(row: u32, x0: u32, w: u32, word: u32, v: vec4<f32>)
//       word w of the row: its four codes packed (byte n is element
//       4w + n) and the four values they were made from;
//   fn code_word(row: u32, w: u32) -> u32
//       word w as emitted (read back once every word is out);
//   fn rq_sync()
//       a barrier that makes emitted words and chunk sums visible to the
//       whole workgroup (a storage barrier only where they go to buffers:
//       on an H100 it costs microseconds).
//   fn emit_chunk(row: u32, c: u32, sum: i32)
//       the sum of the codes of 128-element chunk c (the ternary kernels
//       subtract it to turn 2-bit codes 0..2 into weights -1..1).
// All 256 threads of a workgroup call `quantize_row` together (it has
// barriers); each takes whole words, word w = lid + 256 * j. When it
// returns, every word and chunk sum is out and visible to the workgroup.

const RQ_WG: u32 = 256u;
var<workgroup> rq_red: array<f32, 256>;

// 127 / a, correctly rounded to nearest even (WGSL's `/` may be 2.5 ulp off,
// and the scale must equal the CPU's). `a` is finite and >= 1e-5, so it is
// a normal number and so is the result. Long division of 127 by a's 24-bit
// significand, one quotient bit per step, until the quotient has 26 bits.
fn recip127(a: f32) -> f32 {
    let bits = bitcast<u32>(a);
    if ((bits >> 23u) & 0xffu) == 0xffu {
        // 127 / inf = 0, as on the CPU; NaN stays NaN.
        return select(a, 0.0, (bits & 0x7fffffu) == 0u);
    }
    let m = (bits & 0x7fffffu) | 0x800000u;  // a = m * 2^ea
    let ea = i32((bits >> 23u) & 0xffu) - 150;
    // The first 16 steps give no quotient bits (127 * 2^16 < 2^23 <= m):
    // start after them.
    var rem = 127u << 16u;
    var quo = 0u;
    var steps = 16;
    loop {
        rem = rem << 1u;
        quo = quo << 1u;
        steps += 1;
        if rem >= m {
            rem -= m;
            quo |= 1u;
        }
        if quo >= 0x2000000u {
            break;
        }
    }
    // 127 / a = (quo + rem / m) * 2^(-steps - ea); keep 24 bits, round.
    var mant = quo >> 2u;
    let guard = (quo >> 1u) & 1u;
    let sticky = (quo & 1u) | select(0u, 1u, rem != 0u);
    if guard == 1u && (sticky == 1u || (mant & 1u) == 1u) {
        mant += 1u;
    }
    var e = 2 - steps - ea;  // value = mant * 2^e
    if mant == 0x1000000u {
        mant = mant >> 1u;
        e += 1;
    }
    return bitcast<f32>((u32(e + 150) << 23u) | (mant & 0x7fffffu));
}

// The sum (or the max) of every thread's `v`.
fn rq_reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    rq_red[lid] = v;
    workgroupBarrier();
    for (var s = RQ_WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            if is_max {
                rq_red[lid] = max(rq_red[lid], rq_red[lid + s]);
            } else {
                rq_red[lid] += rq_red[lid + s];
            }
        }
        workgroupBarrier();
    }
    let r = rq_red[0];
    workgroupBarrier();
    return r;
}

// Word w (elements 4w..4w+3) of the row starting at x0, normalised with
// `inv` where `normed`.
fn rq_word4(x0: u32, w: u32, normed: bool, inv: f32) -> vec4<f32> {
    let i = x0 + 4u * w;
    let v = vec4<f32>(src[i], src[i + 1u], src[i + 2u], src[i + 3u]);
    if normed {
        let g = vec4<f32>(norm_w[4u * w], norm_w[4u * w + 1u], norm_w[4u * w + 2u], norm_w[4u * w + 3u]);
        return v * inv * g;
    }
    return v;
}

// Words w0 + 256 u (u = 0..3) of the row, those below `words`, normalised
// where `normed`: one step of the loops below, all loaded before any is used.
fn rq_words(x0: u32, w0: u32, words: u32, normed: bool, inv: f32) -> array<vec4<f32>, 4> {
    var v = array<vec4<f32>, 4>();
    for (var u = 0u; u < 4u; u++) {
        if w0 + u * RQ_WG < words {
            v[u] = rq_word4(x0, w0 + u * RQ_WG, normed, inv);
        }
    }
    return v;
}

// Quantizes row `row` (k elements from src[x0], k a multiple of 128),
// emitting its words and chunk sums; returns its scale.
fn quantize_row(row: u32, x0: u32, k: u32, norm: bool, eps: f32, lid: u32) -> f32 {
    let words = k / 4u;
    var inv = 1.0;
    if norm {
        var ss = 0.0;
        for (var w0 = lid; w0 < words; w0 += 4u * RQ_WG) {
            var v = rq_words(x0, w0, words, false, inv);
            for (var u = 0u; u < 4u; u++) {
                ss += dot(v[u], v[u]);
            }
        }
        inv = 1.0 / sqrt(rq_reduce(lid, ss, false) / f32(k) + eps);
    }
    var amax = vec4<f32>(0.0);
    for (var w0 = lid; w0 < words; w0 += 4u * RQ_WG) {
        var v = rq_words(x0, w0, words, norm, inv);
        for (var u = 0u; u < 4u; u++) {
            amax = max(amax, abs(v[u]));
        }
    }
    let scale = recip127(max(rq_reduce(lid, max(max(amax.x, amax.y), max(amax.z, amax.w)), true), 1e-5));
    for (var w0 = lid; w0 < words; w0 += 4u * RQ_WG) {
        var v = rq_words(x0, w0, words, norm, inv);
        for (var u = 0u; u < 4u; u++) {
            let w = w0 + u * RQ_WG;
            if w < words {
                var word = 0u;
                for (var n = 0u; n < 4u; n++) {
                    let c = i32(clamp(round(v[u][n] * scale), -128.0, 127.0));
                    word |= (u32(c) & 0xffu) << (8u * n);
                }
                emit_word(row, x0, w, word, v[u]);
            }
        }
    }
    // Chunk sums from the codes as emitted: a thread per chunk, four
    // words per step (the sum of a word's codes is its dot product with
    // four ones), no atomics.
    rq_sync();
    for (var c = lid; c < k / 128u; c += RQ_WG) {
        var s = vec4<i32>(0);
        for (var i = 0u; i < 32u; i += 4u) {
            let w0 = 32u * c + i;
            s += vec4<i32>(dot4(code_word(row, w0), 0x01010101u), dot4(code_word(row, w0 + 1u), 0x01010101u),
                           dot4(code_word(row, w0 + 2u), 0x01010101u), dot4(code_word(row, w0 + 3u), 0x01010101u));
        }
        emit_chunk(row, c, (s.x + s.y) + (s.z + s.w));
    }
    rq_sync();
    return scale;
}

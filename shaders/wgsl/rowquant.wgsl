// One row of activations to int8 codes, the CPU rule bit for bit
// (core/src/quant/act.rs): scale = 127 / max(absmax, 1e-5), correctly
// rounded; q = clamp(round(x * scale), -128, 127) with ties to even. With
// `norm` the row is first RMS-normalised as norm.wgsl does
// (x * (1 / sqrt(mean(x²) + eps)) * w, in that order), and the normalised
// values are what get quantized.
//
// Needs the `dot4` and reduce.wgsl preludes. A prelude, not a shader:
// quant.wgsl (codes to buffers) and ternary.wgsl's one-token kernels
// (codes to workgroup memory, then the product) call the same
// `quantize_row`, so both make the same codes from the same row. The
// module declares the row source `src: array<f32>`, the norm weight
// `norm_w: array<f32>` ([k]; without a norm, any buffer of at least k
// values, since it is read either way), and where the results go:
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

// Words w0 + 256 u (u = 0..3) of the row: one step of the loops below.
// Vectors, every load written out and none behind a branch (a
// function-local array indexed in a loop can end up in memory, and a load
// behind a branch can wait for the loads before it; on an H100 both cost
// time).
struct RqStep {
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
}

// A step's values and their norm weights, zero from `words` on.
struct RqRaw {
    x: RqStep,
    g: RqStep,
}

// Word w (elements 4w..4w+3) of the row starting at x0, and of the norm
// weight; zero from `words` on (read at the last word, so no load waits on
// a branch).
struct RqWord {
    x: vec4<f32>,
    g: vec4<f32>,
}

fn rq_at(x0: u32, w: u32, words: u32) -> RqWord {
    let wc = min(w, words - 1u);
    let i = x0 + 4u * wc;
    let v = vec4<f32>(src[i], src[i + 1u], src[i + 2u], src[i + 3u]);
    // `norm_w` is the row itself when there is no norm: always k long.
    let g = vec4<f32>(norm_w[4u * wc], norm_w[4u * wc + 1u], norm_w[4u * wc + 2u], norm_w[4u * wc + 3u]);
    let live = w < words;
    return RqWord(select(vec4<f32>(0.0), v, live), select(vec4<f32>(0.0), g, live));
}

fn rq_raw(x0: u32, w0: u32, words: u32) -> RqRaw {
    let a = rq_at(x0, w0, words);
    let b = rq_at(x0, w0 + RQ_WG, words);
    let c = rq_at(x0, w0 + 2u * RQ_WG, words);
    let d = rq_at(x0, w0 + 3u * RQ_WG, words);
    return RqRaw(RqStep(a.x, b.x, c.x, d.x), RqStep(a.g, b.g, c.g, d.g));
}

// The step's values, normalised (x * inv * g, the CPU's order) where
// `normed`.
fn rq_norm(r: RqRaw, normed: bool, inv: f32) -> RqStep {
    let x = r.x;
    let g = r.g;
    return RqStep(select(x.v0, x.v0 * inv * g.v0, normed), select(x.v1, x.v1 * inv * g.v1, normed),
                  select(x.v2, x.v2 * inv * g.v2, normed), select(x.v3, x.v3 * inv * g.v3, normed));
}

// `ss` plus the step's squares, added one vector at a time.
fn rq_sq(ss: f32, x: RqStep) -> f32 {
    return ss + dot(x.v0, x.v0) + dot(x.v1, x.v1) + dot(x.v2, x.v2) + dot(x.v3, x.v3);
}

fn rq_absmax(v: vec4<f32>) -> f32 {
    let a = abs(v);
    return max(max(a.x, a.y), max(a.z, a.w));
}

fn rq_max(x: RqStep) -> f32 {
    return max(max(rq_absmax(x.v0), rq_absmax(x.v1)), max(rq_absmax(x.v2), rq_absmax(x.v3)));
}

// Emits word w (values `v`) of the row as codes, if it is within the row.
fn rq_emit(row: u32, x0: u32, w: u32, words: u32, v: vec4<f32>, scale: f32) {
    if w < words {
        let c = vec4<i32>(clamp(round(v * scale), vec4<f32>(-128.0), vec4<f32>(127.0)));
        let word = (u32(c.x) & 0xffu) | ((u32(c.y) & 0xffu) << 8u) | ((u32(c.z) & 0xffu) << 16u)
            | ((u32(c.w) & 0xffu) << 24u);
        emit_word(row, x0, w, word, v);
    }
}

fn rq_emit4(row: u32, x0: u32, w0: u32, words: u32, x: RqStep, scale: f32) {
    rq_emit(row, x0, w0, words, x.v0, scale);
    rq_emit(row, x0, w0 + RQ_WG, words, x.v1, scale);
    rq_emit(row, x0, w0 + 2u * RQ_WG, words, x.v2, scale);
    rq_emit(row, x0, w0 + 3u * RQ_WG, words, x.v3, scale);
}

// Quantizes row `row` (k elements from src[x0], k a multiple of 128),
// emitting its words and, where `sums`, its chunk sums; returns its
// scale. The first two steps (rows of up to 8192 elements: every row of
// the one-token kernels) are loaded once and held in registers through
// the three passes (sum of squares, max, codes); further steps are loaded
// again in each pass.
fn quantize_row(row: u32, x0: u32, k: u32, norm: bool, eps: f32, sums: bool, lid: u32) -> f32 {
    let words = k / 4u;
    let step = 4u * RQ_WG;
    let h0 = rq_raw(x0, lid, words);
    let h1 = rq_raw(x0, lid + step, words);
    var inv = 1.0;
    if norm {
        var ss = rq_sq(rq_sq(0.0, h0.x), h1.x);
        for (var w0 = lid + 2u * step; w0 < words; w0 += step) {
            ss = rq_sq(ss, rq_raw(x0, w0, words).x);
        }
        inv = 1.0 / sqrt(wg_reduce(lid, ss, false) / f32(k) + eps);
    }
    let n0 = rq_norm(h0, norm, inv);
    let n1 = rq_norm(h1, norm, inv);
    var amax = max(rq_max(n0), rq_max(n1));
    for (var w0 = lid + 2u * step; w0 < words; w0 += step) {
        amax = max(amax, rq_max(rq_norm(rq_raw(x0, w0, words), norm, inv)));
    }
    let scale = recip127(max(wg_reduce(lid, amax, true), 1e-5));
    rq_emit4(row, x0, lid, words, n0, scale);
    rq_emit4(row, x0, lid + step, words, n1, scale);
    for (var w0 = lid + 2u * step; w0 < words; w0 += step) {
        rq_emit4(row, x0, w0, words, rq_norm(rq_raw(x0, w0, words), norm, inv), scale);
    }
    // Chunk sums from the codes as emitted: a thread per chunk, four
    // words per step (the sum of a word's codes is its dot product with
    // four ones), no atomics.
    rq_sync();
    if !sums {
        return scale;
    }
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

// Per-token int8 activation quantization, the CPU rule bit for bit
// (core/src/quant/act.rs): scale = 127 / max(absmax, 1e-5), correctly
// rounded; q = clamp(round(x * scale), -128, 127) with ties to even.
//
// One workgroup per token row. Outputs, per row: the codes packed four to a
// u32 (byte n of word i is element 4i + n), the sum of the codes of every
// 128-element chunk (the ternary kernels subtract it to turn 2-bit codes
// 0..2 into weights -1..1), and the scale.
//
// With `norm` = 1 the row is first RMS-normalised as norm.wgsl does
// (x * (1 / sqrt(mean(x²) + eps)) * w, in that order), the normalised row
// is written to `out`, and that is what gets quantized: every RMSNorm of a
// BitNet layer feeds a BitLinear, and this saves a dispatch and a pass.
// (Without `norm`, `weight` and `out` are bound to buffers it never uses.)

struct Params {
    k: u32,     // elements per row, a multiple of 128
    rows: u32,
    norm: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<u32>;       // [rows][k / 4]
@group(0) @binding(3) var<storage, read_write> qsum: array<i32>;    // [rows][k / 128]
@group(0) @binding(4) var<storage, read_write> qscale: array<f32>;  // [rows]
@group(0) @binding(5) var<storage, read> weight: array<f32>;        // [k] (norm)
@group(0) @binding(6) var<storage, read_write> out: array<f32>;     // [rows][k] (norm)

const WG: u32 = 256u;
// Chunk sums are gathered for this many chunks at a time.
const CHUNKS: u32 = 64u;
var<workgroup> red: array<f32, 256>;
var<workgroup> csum: array<atomic<i32>, 64>;

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
    var rem = 127u;
    var quo = 0u;
    var steps = 0;
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
fn reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            if is_max {
                red[lid] = max(red[lid], red[lid + s]);
            } else {
                red[lid] += red[lid + s];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Word w (elements 4w..4w+3) of the row starting at x0: x, or (`normed`
// and p.norm) x normalised.
fn word4(x0: u32, w: u32, normed: bool, inv: f32) -> vec4<f32> {
    let i = x0 + 4u * w;
    let v = vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
    if normed && p.norm == 1u {
        let g = vec4<f32>(weight[4u * w], weight[4u * w + 1u], weight[4u * w + 2u], weight[4u * w + 3u]);
        return v * inv * g;
    }
    return v;
}

// Quantizes word w (values v) of `row` with `scale`: its codes into q, its
// code sum into the chunk sums gathered from chunk c0 on, and with p.norm
// the normalised values into `out`.
fn emit(row: u32, x0: u32, w: u32, v: vec4<f32>, scale: f32, c0: u32) {
    var word = 0u;
    var sum = 0;
    for (var n = 0u; n < 4u; n++) {
        let c = i32(clamp(round(v[n] * scale), -128.0, 127.0));
        sum += c;
        word |= (u32(c) & 0xffu) << (8u * n);
    }
    if p.norm == 1u {
        let o = x0 + 4u * w;
        out[o] = v.x;
        out[o + 1u] = v.y;
        out[o + 2u] = v.z;
        out[o + 3u] = v.w;
    }
    q[row * (p.k / 4u) + w] = word;
    atomicAdd(&csum[w / 32u - c0], sum);
}

// Each thread takes whole words (four elements), word w = lid + WG * j, so
// the 32 words of a chunk are handled by 32 threads at once. The loops go
// four words per step, all loaded before any is used.
@compute @workgroup_size(256)
fn quantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    let x0 = row * p.k;
    let words = p.k / 4u;
    var inv = 1.0;
    if p.norm == 1u {
        var ss = 0.0;
        for (var w0 = lid; w0 < words; w0 += 4u * WG) {
            var v = array<vec4<f32>, 4>();
            for (var u = 0u; u < 4u; u++) {
                if w0 + u * WG < words {
                    v[u] = word4(x0, w0 + u * WG, false, inv);
                }
            }
            for (var u = 0u; u < 4u; u++) {
                ss += dot(v[u], v[u]);
            }
        }
        inv = 1.0 / sqrt(reduce(lid, ss, false) / f32(p.k) + p.eps);
    }
    var amax = vec4<f32>(0.0);
    for (var w0 = lid; w0 < words; w0 += 4u * WG) {
        var v = array<vec4<f32>, 4>();
        for (var u = 0u; u < 4u; u++) {
            if w0 + u * WG < words {
                v[u] = word4(x0, w0 + u * WG, true, inv);
            }
        }
        for (var u = 0u; u < 4u; u++) {
            amax = max(amax, abs(v[u]));
        }
    }
    let scale = recip127(max(reduce(lid, max(max(amax.x, amax.y), max(amax.z, amax.w)), true), 1e-5));
    let chunks = p.k / 128u;
    for (var c0 = 0u; c0 < chunks; c0 += CHUNKS) {
        if lid < CHUNKS {
            atomicStore(&csum[lid], 0);
        }
        workgroupBarrier();
        let end = min(words, (c0 + CHUNKS) * 32u);
        for (var w0 = c0 * 32u + lid; w0 < end; w0 += 4u * WG) {
            var v = array<vec4<f32>, 4>();
            for (var u = 0u; u < 4u; u++) {
                if w0 + u * WG < end {
                    v[u] = word4(x0, w0 + u * WG, true, inv);
                }
            }
            for (var u = 0u; u < 4u; u++) {
                if w0 + u * WG < end {
                    emit(row, x0, w0 + u * WG, v[u], scale, c0);
                }
            }
        }
        workgroupBarrier();
        if lid < min(CHUNKS, chunks - c0) {
            qsum[row * chunks + c0 + lid] = atomicLoad(&csum[lid]);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        qscale[row] = scale;
    }
}

// Per-token int8 activation quantization, the CPU rule bit for bit
// (core/src/quant/act.rs): scale = 127 / max(absmax, 1e-5), correctly
// rounded; q = clamp(round(x * scale), -128, 127) with ties to even.
//
// One workgroup per token row. Outputs, per row: the codes packed four to a
// u32 (byte n of word i is element 4i + n), the sum of the codes of every
// 128-element chunk (the ternary kernels subtract it to turn 2-bit codes
// 0..2 into weights -1..1), and the scale.

struct Params {
    k: u32,     // elements per row, a multiple of 128
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<u32>;       // [rows][k / 4]
@group(0) @binding(3) var<storage, read_write> qsum: array<i32>;    // [rows][k / 128]
@group(0) @binding(4) var<storage, read_write> qscale: array<f32>;  // [rows]

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

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

@compute @workgroup_size(256)
fn quantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    let x0 = row * p.k;
    var amax = 0.0;
    for (var i = lid; i < p.k; i += WG) {
        amax = max(amax, abs(x[x0 + i]));
    }
    red[lid] = amax;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let scale = recip127(max(red[0], 1e-5));
    let chunks = p.k / 128u;
    for (var c = lid; c < chunks; c += WG) {
        var sum = 0;
        for (var i = 0u; i < 32u; i++) {
            let e = x0 + c * 128u + 4u * i;
            var word = 0u;
            for (var n = 0u; n < 4u; n++) {
                let v = i32(clamp(round(x[e + n] * scale), -128.0, 127.0));
                sum += v;
                word |= (u32(v) & 0xffu) << (8u * n);
            }
            q[row * (p.k / 4u) + c * 32u + i] = word;
        }
        qsum[row * chunks + c] = sum;
    }
    if lid == 0u {
        qscale[row] = scale;
    }
}

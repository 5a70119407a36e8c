// Rotary position embedding, and the store of a batch's keys and values
// into the KV cache (needs the f16.wgsl prelude). One dispatch, two parts:
//   1. rows of `x` (cols > 0): every pair of every head rotated in place;
//   2. rows of `k` and `v` (kv_cols > 0): with flag ROTATE the keys are
//      rotated in place, and with flag STORE the keys and values go into
//      the cache at positions pos0.. (f16 with flag F16: two per u32,
//      element 2i in the low half, rounded as the CPU's cache rounds).
// Part 2 takes a thread per unit of two elements (2u, 2u + 1) of a head,
// so that an f16 cache word has one writer. In the NEOX pairing a unit
// u < half / 2 also takes its partners (2u + half, 2u + 1 + half) and
// rotates both pairs; units half / 2 .. half, those partners, do nothing.
// So part 2 needs an even head_dim, and for NEOX an even half (the host
// checks; otherwise it rotates the keys in part 1 and only stores here).
// The cos/sin table is made on the host by the CPU backend's own function
// (`cpu::rope_sin_cos`), so the angles are the CPU's to the bit.
//   style 0 (NEOX): pairs (i, i + half); style 1 (llama): pairs (2i, 2i + 1).

struct Params {
    rows: u32,
    cols: u32,      // of x: heads * head_dim (0: no part 1)
    head_dim: u32,
    half: u32,      // rope_dim / 2
    pos0: u32,
    style: u32,
    kv_cols: u32,   // of k and v, and the cache's row (0: no part 2)
    flags: u32,
}

const ROTATE: u32 = 1u;
const STORE: u32 = 2u;
const F16: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> cs: array<f32>;  // [pos][half] (cos, sin)
@group(0) @binding(3) var<storage, read_write> k: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> kc: array<u32>;
@group(0) @binding(6) var<storage, read_write> vc: array<u32>;

// cos and sin of pair i at row r.
fn angle(r: u32, i: u32) -> vec2<f32> {
    let t = ((p.pos0 + r) * p.half + i) * 2u;
    return vec2<f32>(cs[t], cs[t + 1u]);
}

// The pair (a, b) rotated by angle `t` (cos, sin), as the CPU computes it.
fn rotate(a: f32, b: f32, t: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a * t.x - b * t.y, a * t.y + b * t.x);
}

// Key elements (e, e + 1) of row r (from element `at` of k and v) into the
// cache.
fn store(r: u32, at: u32, key: vec2<f32>) {
    let val = vec2<f32>(v[at], v[at + 1u]);
    let c = (p.pos0 + r) * p.kv_cols + at % p.kv_cols;
    if (p.flags & F16) != 0u {
        kc[c / 2u] = f32_to_f16(key.x) | (f32_to_f16(key.y) << 16u);
        vc[c / 2u] = f32_to_f16(val.x) | (f32_to_f16(val.y) << 16u);
    } else {
        kc[c] = bitcast<u32>(key.x);
        kc[c + 1u] = bitcast<u32>(key.y);
        vc[c] = bitcast<u32>(val.x);
        vc[c + 1u] = bitcast<u32>(val.y);
    }
}

// Part 1: pair `idx` of all the rows' heads of x.
fn rope_x(idx: u32) {
    let i = idx % p.half;
    let heads = p.cols / p.head_dim;
    let head = (idx / p.half) % heads;
    let r = idx / (p.half * heads);
    var ia = i;
    var ib = i + p.half;
    if p.style == 1u {
        ia = 2u * i;
        ib = 2u * i + 1u;
    }
    let base = r * p.cols + head * p.head_dim;
    let y = rotate(x[base + ia], x[base + ib], angle(r, i));
    x[base + ia] = y.x;
    x[base + ib] = y.y;
}

// Part 2: unit `idx` (elements 2u, 2u + 1 of one head of one row).
fn rope_kv(idx: u32) {
    let per_row = p.kv_cols / 2u;
    let row = idx / per_row;
    let at = row * p.kv_cols + (idx % per_row) * 2u;  // element 2u of its head
    let u = (idx % per_row) % (p.head_dim / 2u);
    var key = vec2<f32>(k[at], k[at + 1u]);
    let rot = (p.flags & ROTATE) != 0u && u < p.half;
    if rot && p.style == 0u {
        if u >= p.half / 2u {
            return;  // a partner unit: done by unit u - half / 2
        }
        let at2 = at + p.half;
        var key2 = vec2<f32>(k[at2], k[at2 + 1u]);
        let y0 = rotate(key.x, key2.x, angle(row, 2u * u));
        let y1 = rotate(key.y, key2.y, angle(row, 2u * u + 1u));
        key = vec2<f32>(y0.x, y1.x);
        key2 = vec2<f32>(y0.y, y1.y);
        k[at2] = key2.x;
        k[at2 + 1u] = key2.y;
        if (p.flags & STORE) != 0u {
            store(row, at2, key2);
        }
    } else if rot {
        key = rotate(key.x, key.y, angle(row, u));
    }
    if rot {
        k[at] = key.x;
        k[at + 1u] = key.y;
    }
    if (p.flags & STORE) != 0u {
        store(row, at, key);
    }
}

@compute @workgroup_size(64)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * 64u + lid;
    let first = p.rows * (p.cols / p.head_dim) * p.half;
    if idx < first {
        rope_x(idx);
    } else if idx - first < p.rows * p.kv_cols / 2u {
        rope_kv(idx - first);
    }
}

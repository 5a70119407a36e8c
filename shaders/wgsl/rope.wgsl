// Rotary position embedding, in place, on every head of every row of `x`
// and then of `x2` (the queries and the keys: one dispatch for both; with
// cols2 = 0 only `x`, and `x2` is bound but never touched). The cos/sin
// table is made on the host by the CPU backend's own function
// (`cpu::rope_sin_cos`), so the angles are the CPU's to the bit.
//   style 0 (NEOX): pairs (i, i + half); style 1 (llama): pairs (2i, 2i + 1).

struct Params {
    rows: u32,
    cols: u32,      // of x: heads * head_dim
    head_dim: u32,
    half: u32,      // rope_dim / 2
    pos0: u32,
    style: u32,
    cols2: u32,     // of x2 (0: none)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> cs: array<f32>;  // [pos][half] (cos, sin)
@group(0) @binding(3) var<storage, read_write> x2: array<f32>;

@compute @workgroup_size(64)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    var idx = (wid.x + wid.y * nwg.x) * 64u + lid;
    var cols = p.cols;
    let first = p.rows * (p.cols / p.head_dim) * p.half;
    let second = idx >= first;
    if second {
        idx -= first;
        cols = p.cols2;
    }
    let heads = cols / p.head_dim;
    if idx >= p.rows * heads * p.half {
        return;
    }
    let i = idx % p.half;
    let head = (idx / p.half) % heads;
    let r = idx / (p.half * heads);
    let t = ((p.pos0 + r) * p.half + i) * 2u;
    let c = cs[t];
    let s = cs[t + 1u];
    var ia = i;
    var ib = i + p.half;
    if p.style == 1u {
        ia = 2u * i;
        ib = 2u * i + 1u;
    }
    let base = r * cols + head * p.head_dim;
    if second {
        let a = x2[base + ia];
        let b = x2[base + ib];
        x2[base + ia] = a * c - b * s;
        x2[base + ib] = a * s + b * c;
    } else {
        let a = x[base + ia];
        let b = x[base + ib];
        x[base + ia] = a * c - b * s;
        x[base + ib] = a * s + b * c;
    }
}

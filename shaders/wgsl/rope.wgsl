// Rotary position embedding, in place, on every head of every row. The
// cos/sin table is made on the host by the CPU backend's own function
// (`cpu::rope_sin_cos`), so the angles are the CPU's to the bit.
//   style 0 (NEOX): pairs (i, i + half); style 1 (llama): pairs (2i, 2i + 1).

struct Params {
    rows: u32,
    cols: u32,      // heads * head_dim
    head_dim: u32,
    half: u32,      // rope_dim / 2
    pos0: u32,
    style: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> cs: array<f32>;  // [pos][half] (cos, sin)

@compute @workgroup_size(64)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * 64u + lid;
    let heads = p.cols / p.head_dim;
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
    let base = r * p.cols + head * p.head_dim;
    let a = x[base + ia];
    let b = x[base + ib];
    x[base + ia] = a * c - b * s;
    x[base + ib] = a * s + b * c;
}

// RMSNorm of each row times a weight vector: x * (1 / sqrt(mean(x²) + eps)) * w,
// multiplied in that order, as the CPU does. One workgroup per row.

struct Params {
    cols: u32,
    rows: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    let x0 = row * p.cols;
    var ss = 0.0;
    for (var i = lid; i < p.cols; i += WG) {
        let v = x[x0 + i];
        ss += v * v;
    }
    red[lid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(red[0] / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i += WG) {
        out[x0 + i] = x[x0 + i] * inv * weight[i];
    }
}

// Per-token int8 activation quantization (entry `quantize`), optionally
// after RMSNorm: one workgroup per token row runs rowquant.wgsl's
// `quantize_row` (the rule, and the CPU's, are described there). Outputs,
// per row: the codes packed four to a u32 (byte n of word i is element
// 4i + n), the sum of the codes of every 128-element chunk, and the scale.
//
// With `norm` = 1 the normalised row is also written to `out`: every
// RMSNorm of a BitNet layer feeds a BitLinear, and this saves a dispatch
// and a pass. (Without `norm`, `norm_w` and `out` are bound to buffers it
// never uses.)

struct Params {
    k: u32,     // elements per row, a multiple of 128
    rows: u32,
    norm: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<u32>;       // [rows][k / 4]
@group(0) @binding(3) var<storage, read_write> qsum: array<i32>;    // [rows][k / 128]
@group(0) @binding(4) var<storage, read_write> qscale: array<f32>;  // [rows]
@group(0) @binding(5) var<storage, read> norm_w: array<f32>;        // [k] (norm)
@group(0) @binding(6) var<storage, read_write> out: array<f32>;     // [rows][k] (norm)

fn emit_word(row: u32, x0: u32, w: u32, word: u32, v: vec4<f32>) {
    if p.norm == 1u {
        let o = x0 + 4u * w;
        out[o] = v.x;
        out[o + 1u] = v.y;
        out[o + 2u] = v.z;
        out[o + 3u] = v.w;
    }
    q[row * (p.k / 4u) + w] = word;
}

fn code_word(row: u32, w: u32) -> u32 {
    return q[row * (p.k / 4u) + w];
}

fn rq_sync() {
    storageBarrier();
    workgroupBarrier();
}

fn emit_chunk(row: u32, c: u32, sum: i32) {
    qsum[row * (p.k / 128u) + c] = sum;
}

@compute @workgroup_size(256)
fn quantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    let scale = quantize_row(row, row * p.k, p.k, p.norm == 1u, p.eps, true, lid);
    if lid == 0u {
        qscale[row] = scale;
    }
}

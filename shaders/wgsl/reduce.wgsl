// The sum or the max over a workgroup of 256 threads (a prelude, not a
// shader: rowquant.wgsl and attention.wgsl use it). All 256 threads call
// `wg_reduce` together (it has barriers); every one gets the result.

var<workgroup> wg_red: array<f32, 256>;

fn wg_op(a: f32, b: f32, is_max: bool) -> f32 {
    return select(a + b, max(a, b), is_max);
}

// 256 -> 32 -> 4 -> 1 values, eight at a time: three barriers (a pairwise
// tree takes nine, and on an H100 each costs time).
fn wg_reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    wg_red[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s >= 4u; s /= 8u) {
        if lid < s {
            var r = wg_red[lid];
            for (var j = 1u; j < 8u; j++) {
                r = wg_op(r, wg_red[lid + s * j], is_max);
            }
            wg_red[lid] = r;
        }
        workgroupBarrier();
    }
    let r = wg_op(wg_op(wg_red[0], wg_red[1], is_max), wg_op(wg_red[2], wg_red[3], is_max), is_max);
    workgroupBarrier();
    return r;
}

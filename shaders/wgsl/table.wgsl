// Embedding lookup and the LM head over a float table: F32, or F16 / BF16
// two per u32 (F16 decoded by the f16.wgsl prelude, or in the LM head by
// `halves`, the builtin where the device has it; BF16 is the top half of
// an f32). A table larger than one storage binding
// is uploaded as several parts of whole rows; each dispatch sees one part,
// rows row0..row0+nrows.
//   embed:  out[t] = table[tokens[t]] for the tokens in this part.
//   logits: out[t][row0 + r] = x[xrow0 + t] · table[r], f32 sums.

struct Params {
    cols: u32,
    n: u32,        // tokens
    row0: u32,
    nrows: u32,
    ty: u32,       // 0: F32, 1: F16, 2: BF16
    vocab: u32,    // row stride of `out` in logits
    xrow0: u32,    // first row of `x` in logits
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;

fn value(i: u32) -> f32 {
    if p.ty == 1u {
        return f16_pair_at(table[i / 2u], i);
    }
    if p.ty == 2u {
        return bitcast<f32>(((table[i / 2u] >> (16u * (i & 1u))) & 0xffffu) << 16u);
    }
    return bitcast<f32>(table[i]);
}

@compute @workgroup_size(64)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * 64u + lid;
    if idx >= p.n * p.cols {
        return;
    }
    let t = idx / p.cols;
    let c = idx % p.cols;
    let tok = tokens[t];
    if tok >= p.row0 && tok < p.row0 + p.nrows {
        out[idx] = value((tok - p.row0) * p.cols + c);
    }
}

// logits: a workgroup of 256 takes ROWS rows for TILE tokens, LANES
// threads (a warp on most GPUs) per row.
const ROWS: u32 = 8u;
const LANES: u32 = 32u;
const TILE: u32 = 4u;
var<workgroup> red: array<f32, 1024>;

// Adds word i of a 16-bit row (elements 2i, 2i + 1) times x to `acc`.
fn half_pair(acc: ptr<function, vec4<f32>>, word: u32, i: u32, t0: u32, nt: u32) {
    var v0 = bitcast<f32>(word << 16u);
    var v1 = bitcast<f32>(word & 0xffff0000u);
    if p.ty == 1u {
        let h = halves(word);
        v0 = h.x;
        v1 = h.y;
    }
    for (var t = 0u; t < TILE; t++) {
        if t < nt {
            let xi = (p.xrow0 + t0 + t) * p.cols + 2u * i;
            (*acc)[t] += x[xi] * v0 + x[xi + 1u] * v1;
        }
    }
}

@compute @workgroup_size(256)
fn logits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x * ROWS + lid / LANES;
    let lane = lid % LANES;
    let t0 = wid.y * TILE;
    let nt = min(TILE, p.n - t0);
    var acc = vec4<f32>(0.0);
    if r < p.nrows {
        let base = r * p.cols;
        if p.ty == 1u && p.n == 1u {
            // One token (decode) from F16: no token loop.
            let words = p.cols / 2u;
            let full = words / (4u * LANES) * (4u * LANES);
            let xw = p.xrow0 * p.cols;
            var s = 0.0;
            for (var i0 = lane; i0 < full; i0 += 4u * LANES) {
                let w = vec4<u32>(table[base / 2u + i0], table[base / 2u + i0 + LANES],
                                  table[base / 2u + i0 + 2u * LANES], table[base / 2u + i0 + 3u * LANES]);
                for (var u = 0u; u < 4u; u++) {
                    let i = i0 + u * LANES;
                    let h = halves(w[u]);
                    s += x[xw + 2u * i] * h.x + x[xw + 2u * i + 1u] * h.y;
                }
            }
            for (var i = full + lane; i < words; i += LANES) {
                let h = halves(table[base / 2u + i]);
                s += x[xw + 2u * i] * h.x + x[xw + 2u * i + 1u] * h.y;
            }
            acc[0] = s;
        } else if p.ty != 0u {
            // Four words per lane and step, loaded before they are used;
            // the lanes of a row read neighbouring words. Then the tail.
            let words = p.cols / 2u;
            let full = words / (4u * LANES) * (4u * LANES);
            for (var i0 = lane; i0 < full; i0 += 4u * LANES) {
                let w = vec4<u32>(table[base / 2u + i0], table[base / 2u + i0 + LANES],
                                  table[base / 2u + i0 + 2u * LANES], table[base / 2u + i0 + 3u * LANES]);
                for (var u = 0u; u < 4u; u++) {
                    half_pair(&acc, w[u], i0 + u * LANES, t0, nt);
                }
            }
            for (var i = full + lane; i < words; i += LANES) {
                half_pair(&acc, table[base / 2u + i], i, t0, nt);
            }
        } else {
            for (var i = lane; i < p.cols; i += LANES) {
                let v = bitcast<f32>(table[base + i]);
                for (var t = 0u; t < TILE; t++) {
                    if t < nt {
                        acc[t] += x[(p.xrow0 + t0 + t) * p.cols + i] * v;
                    }
                }
            }
        }
    }
    for (var t = 0u; t < TILE; t++) {
        red[lid * TILE + t] = acc[t];
    }
    workgroupBarrier();
    if lane == 0u && r < p.nrows {
        for (var t = 0u; t < nt; t++) {
            var s = 0.0;
            for (var l = 0u; l < LANES; l++) {
                s += red[(lid + l) * TILE + t];
            }
            out[(t0 + t) * p.vocab + p.row0 + r] = s;
        }
    }
}

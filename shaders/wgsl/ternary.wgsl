// Ternary weights × int8 activations (BitLinear), weights in their GGUF
// layout as uploaded from the file:
//   kind 0: I2_S. Row j is k/4 bytes at byte j*k/4; 32-byte chunks of 128
//           weights, byte b holding weights b, 32+b, 64+b, 96+b at bits
//           6, 4, 2, 0. One tensor scale (passed in `wscale`).
//   kind 1: TQ2_0, every block sharing one scale (`wscale`): 66-byte blocks
//           of two 32-byte chunks (weights 32l+b at bits 2l) and an f16 d.
//   kind 2: TQ2_0 with a scale per block, read from the block.
// Codes c are 0..2 for weights c-1, so per chunk sum(w*q) = sum(c*q) - sum(q);
// the chunk sums of q come from quant.wgsl. Integer sums are exact; the
// rescale is the CPU's: f32(sum) * wscale / qscale (kinds 0, 1), or
// sum over blocks of f32(block sum) * d, / qscale (kind 2).
//
// A workgroup computes ROWS output features for TILE tokens; LANES threads
// share one weight row and split its chunks (blocks), then add up.
// Needs the preludes `dot4` (dot product of four signed bytes) and f16.wgsl.

struct Params {
    k: u32,       // inputs per row
    m: u32,       // outputs (weight rows)
    rows: u32,    // tokens
    kind: u32,
    wscale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> q: array<u32>;       // [rows][k/4]
@group(0) @binding(3) var<storage, read> qsum: array<i32>;    // [rows][k/128]
@group(0) @binding(4) var<storage, read> qscale: array<f32>;  // [rows]
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // [rows][m]

const ROWS: u32 = 8u;
const LANES: u32 = 8u;
const TILE: u32 = 4u;
const MASK: u32 = 0x03030303u;

var<workgroup> red_i: array<i32, 256>;  // [ROWS * LANES][TILE]
var<workgroup> red_f: array<f32, 256>;

// The little-endian u32 at any even byte offset (TQ2_0 blocks are 66 bytes).
fn word_at(byte: u32) -> u32 {
    let i = byte >> 2u;
    if (byte & 3u) == 0u {
        return w[i];
    }
    return (w[i] >> 16u) | (w[i + 1u] << 16u);
}

// sum(code * q) over one 128-weight chunk whose codes are `wv`, against
// token `t`'s activations from word `qw`, codes for weight 32l+b at bit
// shift `sh[l]`.
fn chunk_dot(wv: ptr<function, array<u32, 8>>, qw: u32, i2s: bool) -> i32 {
    var s = 0;
    for (var l = 0u; l < 4u; l++) {
        let sh = select(2u * l, 6u - 2u * l, i2s);
        for (var i = 0u; i < 8u; i++) {
            s += dot4(((*wv)[i] >> sh) & MASK, q[qw + 8u * l + i]);
        }
    }
    return s;
}

@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x * ROWS + lid / LANES;
    let lane = lid % LANES;
    let t0 = wid.y * TILE;
    let nt = min(TILE, p.rows - t0);
    let kw = p.k / 4u;
    let chunks = p.k / 128u;
    var iacc = array<i32, 4>(0, 0, 0, 0);
    var facc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var wv: array<u32, 8>;
    if j < p.m {
        if p.kind == 0u {
            for (var c = lane; c < chunks; c += LANES) {
                let w0 = j * (p.k / 16u) + c * 8u;
                for (var i = 0u; i < 8u; i++) {
                    wv[i] = w[w0 + i];
                }
                // Constant trip counts (TILE, not nt) keep the accumulators
                // in registers; the guard skips tokens past the end.
                for (var t = 0u; t < TILE; t++) {
                    if t < nt {
                        let row = t0 + t;
                        iacc[t] += chunk_dot(&wv, row * kw + c * 32u, true) - qsum[row * chunks + c];
                    }
                }
            }
        } else {
            let nb = p.k / 256u;
            for (var b = lane; b < nb; b += LANES) {
                let base = (j * nb + b) * 66u;
                var bs = array<i32, 4>(0, 0, 0, 0);
                for (var h = 0u; h < 2u; h++) {
                    let c = 2u * b + h;
                    for (var i = 0u; i < 8u; i++) {
                        wv[i] = word_at(base + 32u * h + 4u * i);
                    }
                    for (var t = 0u; t < TILE; t++) {
                        if t < nt {
                            let row = t0 + t;
                            bs[t] += chunk_dot(&wv, row * kw + c * 32u, false) - qsum[row * chunks + c];
                        }
                    }
                }
                let d = f16_to_f32(word_at(base + 64u) & 0xffffu);
                for (var t = 0u; t < TILE; t++) {
                    iacc[t] += bs[t];
                    facc[t] += f32(bs[t]) * d;
                }
            }
        }
    }
    for (var t = 0u; t < TILE; t++) {
        red_i[lid * TILE + t] = iacc[t];
        red_f[lid * TILE + t] = facc[t];
    }
    workgroupBarrier();
    if lane == 0u && j < p.m {
        for (var t = 0u; t < nt; t++) {
            var isum = 0;
            var fsum = 0.0;
            for (var l = 0u; l < LANES; l++) {
                isum += red_i[(lid + l) * TILE + t];
                fsum += red_f[(lid + l) * TILE + t];
            }
            let row = t0 + t;
            var v: f32;
            if p.kind == 2u {
                v = fsum / qscale[row];
            } else {
                v = f32(isum) * p.wscale / qscale[row];
            }
            out[row * p.m + j] = v;
        }
    }
}

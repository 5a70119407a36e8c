// Ternary weights × int8 activations (BitLinear), weights in their GGUF
// layout as uploaded from the file:
//   kind 0: I2_S. Row j is k/4 bytes at byte j*k/4; 32-byte chunks of 128
//           weights, byte b holding weights b, 32+b, 64+b, 96+b at bits
//           6, 4, 2, 0. One tensor scale (passed in `wscale`).
//   kind 1: TQ2_0, every block sharing one scale (`wscale`): 66-byte blocks
//           of two 32-byte chunks (weights 32l+b at bits 2l) and an f16 d.
//   kind 2: TQ2_0 with a scale per block, read from the block.
//   kind 3: TQ1_0 with one scale; kind 4: TQ1_0 with a scale per block.
//           54-byte blocks: qs[48], qh[4], f16 d. Weight i < 160 is trit
//           i/32 of byte i%32; i < 240 trit (i-160)/16 of byte
//           32+(i-160)%16; else trit (i-240)/4 of byte 48+(i-240)%4; trit n
//           of byte b is ((b * 3^n) mod 256) * 3 >> 8. Four consecutive
//           weights (i a multiple of 4) are the same trit of four
//           consecutive bytes, so they unpack into one packed code word.
// Codes c are 0..2 for weights c-1, so per chunk sum(w*q) = sum(c*q) - sum(q);
// the chunk sums of q come from quant.wgsl (`matmul`). The one-token
// kernels turn the codes into signed bytes c - 1 instead (`weights_dot`).
// Integer sums are exact; the rescale is the CPU's formula, f32(sum) *
// wscale / qscale (kinds 0, 1), or sum over blocks of f32(block sum) * d,
// / qscale (kind 2), equal to the CPU's within rounding (WGSL's `/` may be
// 2.5 ulp off, and kind 2 adds its blocks in another order).
//
// `matmul` (several tokens): a workgroup computes ROWS output features for
// TILE tokens from activations quantize.wgsl made; LANES threads share one
// weight row and split its chunks (blocks), then add up. `matvec` and
// `matvec3` (one token) take the float row instead and quantize it
// themselves, after RMSNorm where `norm` = 1 (rowquant.wgsl): every
// workgroup makes the codes in its own memory, which saves the dispatch
// that would otherwise make them (and the one of the norm before it).
//
// `mode` fuses the op that follows the product (fewer dispatches per token;
// the formulas are the CPU's, applied to the same values):
//   0: out = y            1: out = out + y (the residual add)
//   2: out = relu(y)² · y2     3: out = silu(y) · y2
// where y2 is the product with the second matrix `w2` (FFN up; gate is `w`).
// Modes 0 and 1 bind `w` as `w2` too.
// Needs the preludes `dot4` (dot product of four signed bytes), f16.wgsl and
// rowquant.wgsl.

struct Params {
    k: u32,       // inputs per row
    m: u32,       // outputs (weight rows)
    rows: u32,    // tokens
    kind: u32,    // of w
    wscale: f32,  // of w
    mode: u32,
    kind2: u32,   // of w2
    wscale2: f32, // of w2
    seg: u32,     // matvec: threads per row
    m2: u32,      // matvec3: rows of w2 and w3, and w3's kind and scale
    m3: u32,
    kind3: u32,
    wscale3: f32,
    norm: u32,    // matvec, matvec3: RMSNorm the row before quantizing it
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> q: array<u32>;       // [rows][k/4]
@group(0) @binding(3) var<storage, read> qsum: array<i32>;    // [rows][k/128]
@group(0) @binding(4) var<storage, read> qscale: array<f32>;  // [rows]
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // [rows][m]
@group(0) @binding(6) var<storage, read> w2: array<u32>;
// matvec, matvec3: the token's float row ([k]) and the norm weight ([k]).
@group(0) @binding(10) var<storage, read> src: array<f32>;
@group(0) @binding(11) var<storage, read> norm_w: array<f32>;

const ROWS: u32 = 8u;
const LANES: u32 = 8u;
const TILE: u32 = 4u;
const MASK: u32 = 0x03030303u;

// Per thread and token: integer sums, and the block-scaled float sums of
// kind 2. Index [lid * TILE + t]; the second set is for w2.
var<workgroup> red_i: array<i32, 256>;
var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_i2: array<i32, 256>;
var<workgroup> red_f2: array<f32, 256>;
// matvec, matvec3: the token's codes (rows up to 8192 wide; the host sends
// wider ones to `matmul`), from `quantize_row`.
var<workgroup> qs: array<u32, 2048>;

fn emit_word(row: u32, x0: u32, w: u32, word: u32, v: vec4<f32>) {
    qs[w] = word;
}

fn code_word(row: u32, w: u32) -> u32 {
    return qs[w];
}

fn rq_sync() {
    workgroupBarrier();
}

// Never called: the one-token kernels take signed weights
// (`weights_dot`) and ask `quantize_row` for no chunk sums.
fn emit_chunk(row: u32, c: u32, sum: i32) {}

// Word i of w (which = 0), w2 (1) or w3 (2; `w3_word` comes from a
// prelude: the real binding for `matvec3`'s module, zero elsewhere).
fn wload(which: u32, i: u32) -> u32 {
    if which == 1u {
        return w2[i];
    }
    if which == 2u {
        return w3_word(i);
    }
    return w[i];
}

// The little-endian u32 at any even byte offset (TQ2_0 blocks are 66 bytes).
fn word_at(which: u32, byte: u32) -> u32 {
    let i = byte >> 2u;
    if (byte & 3u) == 0u {
        return wload(which, i);
    }
    return (wload(which, i) >> 16u) | (wload(which, i + 1u) << 16u);
}

// sum(code * q) over word i of a 128-weight chunk (bytes 4i..4i+3, the
// weights 32l + 4i.. of each group l), whose codes are `w`, against the
// activations `a` (a[l]: word 8l + i of the chunk's codes); codes of
// weight 32l+b at bit 6-2l (I2_S) or 2l (TQ2_0).
fn codes_dot(w: u32, a: vec4<u32>, i2s: bool) -> i32 {
    var s = 0;
    for (var l = 0u; l < 4u; l++) {
        let sh = select(2u * l, 6u - 2u * l, i2s);
        s += dot4((w >> sh) & MASK, a[l]);
    }
    return s;
}

// sum(weight * q) of the same: the codes c made the signed bytes c - 1
// (c + 127 is 127..129, no carry into the next byte; the top bit flipped
// gives c - 1 in two's complement), so no chunk sum of q is needed.
fn weights_dot(w: u32, a: vec4<u32>, i2s: bool) -> i32 {
    var s = 0;
    for (var l = 0u; l < 4u; l++) {
        let sh = select(2u * l, 6u - 2u * l, i2s);
        s += dot4((((w >> sh) & MASK) + 0x7f7f7f7fu) ^ 0x80808080u, a[l]);
    }
    return s;
}

// `codes_dot` against the chunk's activations in `q` from word `qw`.
fn word_codes_dot(w: u32, qw: u32, i: u32, i2s: bool) -> i32 {
    let a = vec4<u32>(q[qw + i], q[qw + 8u + i], q[qw + 16u + i], q[qw + 24u + i]);
    return codes_dot(w, a, i2s);
}

// The same over the whole chunk, codes `w0` (words 0..3) and `w1` (4..7).
// (Vectors, not a function-local array: one of those indexed in a loop
// can end up in memory, where each load waits for the one before.)
fn chunk_dot(w0: vec4<u32>, w1: vec4<u32>, qw: u32, i2s: bool) -> i32 {
    var s = 0;
    for (var i = 0u; i < 4u; i++) {
        s += word_codes_dot(w0[i], qw, i, i2s) + word_codes_dot(w1[i], qw, i + 4u, i2s);
    }
    return s;
}

// Words at bytes `byte`, + 4, + 8, + 12 of `which`.
fn at4(which: u32, byte: u32) -> vec4<u32> {
    return words_at4(which, vec4<u32>(byte) + vec4<u32>(0u, 4u, 8u, 12u));
}

// Trit n (0..4) of each of the four bytes of `w`: the TQ1_0 codes of four
// weights, packed one per byte.
fn trits(w: u32, n: u32) -> u32 {
    var pow3 = 1u;
    for (var j = 0u; j < n; j++) {
        pow3 *= 3u;
    }
    var out = 0u;
    for (var b = 0u; b < 4u; b++) {
        let byte = (w >> (8u * b)) & 0xffu;
        out |= ((((byte * pow3) & 0xffu) * 3u) >> 8u) << (8u * b);
    }
    return out;
}

struct Partial {
    i: vec4<i32>,
    f: vec4<f32>,
}

// One item of weight row j (of w, w2 or w3: `which`) against tokens
// t0..t0+nt: chunk c (128 weights) for I2_S, block c (256) for TQ2_0 and
// TQ1_0. Integer sums, and for the per-block kinds the block-scaled sums.
fn item(which: u32, kind: u32, j: u32, c: u32, t0: u32, nt: u32) -> Partial {
    let kw = p.k / 4u;
    let chunks = p.k / 128u;
    var r: Partial;
    if kind == 0u {
        let w0 = j * (p.k / 16u) + c * 8u;
        let wv0 = wload4(which, vec4<u32>(w0) + vec4<u32>(0u, 1u, 2u, 3u));
        let wv1 = wload4(which, vec4<u32>(w0) + vec4<u32>(4u, 5u, 6u, 7u));
        // Constant trip counts (TILE, not nt) keep the accumulators in
        // registers; the guard skips tokens past the end.
        for (var t = 0u; t < TILE; t++) {
            if t < nt {
                let row = t0 + t;
                r.i[t] = chunk_dot(wv0, wv1, row * kw + c * 32u, true) - qsum[row * chunks + c];
            }
        }
        return r;
    }
    let nb = p.k / 256u;
    var bs = vec4<i32>(0);
    var d: f32;
    if kind >= 3u {
        let base = (j * nb + c) * 54u;
        for (var g = 0u; g < 64u; g++) {
            let i = 4u * g;
            var at = 48u;
            var n = (i - 240u) / 4u;
            if i < 160u {
                at = i % 32u;
                n = i / 32u;
            } else if i < 240u {
                at = 32u + (i - 160u) % 16u;
                n = (i - 160u) / 16u;
            }
            let codes = trits(word_at(which, base + at), n);
            for (var t = 0u; t < TILE; t++) {
                if t < nt {
                    bs[t] += dot4(codes, q[(t0 + t) * kw + c * 64u + g]);
                }
            }
        }
        for (var t = 0u; t < TILE; t++) {
            if t < nt {
                let row = t0 + t;
                bs[t] -= qsum[row * chunks + 2u * c] + qsum[row * chunks + 2u * c + 1u];
            }
        }
        d = f16_to_f32(word_at(which, base + 52u) & 0xffffu);
    } else {
        let base = (j * nb + c) * 66u;
        for (var h = 0u; h < 2u; h++) {
            let ch = 2u * c + h;
            let wv0 = at4(which, base + 32u * h);
            let wv1 = at4(which, base + 32u * h + 16u);
            for (var t = 0u; t < TILE; t++) {
                if t < nt {
                    let row = t0 + t;
                    bs[t] += chunk_dot(wv0, wv1, row * kw + ch * 32u, false) - qsum[row * chunks + ch];
                }
            }
        }
        d = f16_to_f32(word_at(which, base + 64u) & 0xffffu);
    }
    for (var t = 0u; t < TILE; t++) {
        r.i[t] = bs[t];
        r.f[t] = f32(bs[t]) * d;
    }
    return r;
}

// Items per weight row: chunks (I2_S) or blocks.
fn items(kind: u32) -> u32 {
    return select(p.k / 256u, p.k / 128u, kind == 0u);
}

// This thread's share of weight row j: items lane, lane + LANES, ...
fn partial(which: u32, kind: u32, j: u32, lane: u32, t0: u32, nt: u32) -> Partial {
    var r: Partial;
    for (var c = lane; c < items(kind); c += LANES) {
        let x = item(which, kind, j, c, t0, nt);
        for (var t = 0u; t < TILE; t++) {
            r.i[t] += x.i[t];
            r.f[t] += x.f[t];
        }
    }
    return r;
}

// The rescale of a finished row sum, as the CPU does it (`qsc`: the
// activations' scale).
fn rescale(kind: u32, wscale: f32, isum: i32, fsum: f32, qsc: f32) -> f32 {
    if kind == 2u || kind == 4u {
        return fsum / qsc;
    }
    return f32(isum) * wscale / qsc;
}

// Writes product y (and y2, the product with w2) at `at` as `mode` says.
fn store(at: u32, y: f32, y2: f32) {
    if p.mode == 0u {
        out[at] = y;
    } else if p.mode == 1u {
        out[at] = out[at] + y;
    } else {
        var act: f32;
        if p.mode == 2u {
            let r = max(y, 0.0);
            act = r * r;
        } else {
            act = y / (1.0 + exp(-y));
        }
        out[at] = act * y2;
    }
}

// The finished product for token `row` from the lanes' sums starting at
// thread `lid` (lane 0 of its weight row).
fn finish(second: bool, kind: u32, wscale: f32, lid: u32, t: u32, row: u32) -> f32 {
    var isum = 0;
    var fsum = 0.0;
    for (var l = 0u; l < LANES; l++) {
        let at = (lid + l) * TILE + t;
        if second {
            isum += red_i2[at];
            fsum += red_f2[at];
        } else {
            isum += red_i[at];
            fsum += red_f[at];
        }
    }
    return rescale(kind, wscale, isum, fsum, qscale[row]);
}

@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x * ROWS + lid / LANES;
    let lane = lid % LANES;
    let t0 = wid.y * TILE;
    let nt = min(TILE, p.rows - t0);
    let glu = p.mode >= 2u;
    var a: Partial;
    var b: Partial;
    if j < p.m {
        a = partial(0u, p.kind, j, lane, t0, nt);
        if glu {
            b = partial(1u, p.kind2, j, lane, t0, nt);
        }
    }
    for (var t = 0u; t < TILE; t++) {
        red_i[lid * TILE + t] = a.i[t];
        red_f[lid * TILE + t] = a.f[t];
        red_i2[lid * TILE + t] = b.i[t];
        red_f2[lid * TILE + t] = b.f[t];
    }
    workgroupBarrier();
    if lane == 0u && j < p.m {
        for (var t = 0u; t < nt; t++) {
            let row = t0 + t;
            let y = finish(false, p.kind, p.wscale, lid, t, row);
            var y2 = 0.0;
            if glu {
                y2 = finish(true, p.kind2, p.wscale2, lid, t, row);
            }
            store(row * p.m + j, y, y2);
        }
    }
}

struct Sums {
    i: i32,
    f: f32,
}

// Word u of packed row j, holding `wv`, against the one token's codes in
// `qs`: sum(weight * q) over its 16 weights; kind 2 also scaled by its
// block's d.
fn word_dot(which: u32, kind: u32, j: u32, u: u32, wv: u32) -> Sums {
    let i = u / 8u * 32u + u % 8u;
    let s = weights_dot(wv, vec4<u32>(qs[i], qs[i + 8u], qs[i + 16u], qs[i + 24u]), kind == 0u);
    var r: Sums;
    r.i = s;
    if kind == 2u {
        let b = j * (p.k / 256u) + u / 16u;
        r.f = f32(s) * f16_to_f32(word_at(which, b * 66u + 64u) & 0xffffu);
    }
    return r;
}

// Eight words of each matrix: a lane's step of `packed_rows`. Vectors and
// not arrays, every load written out and none behind a branch of its own:
// a function-local array indexed in a loop can end up in memory, and a
// load behind a branch can wait for the loads before it. On an H100 either
// made the product several times slower than the weights' bandwidth
// allows.
struct Batch {
    a0: vec4<u32>,
    a1: vec4<u32>,
    b0: vec4<u32>,
    b1: vec4<u32>,
}

// The u32s at even byte offsets byte.x .. byte.w of `which`: `word_at`
// four at a time, the unaligned ones (TQ2_0 blocks are 66 bytes) from two
// aligned loads each, no load behind a branch of its own.
fn words_at4(which: u32, byte: vec4<u32>) -> vec4<u32> {
    let lo = wload4(which, byte >> vec4<u32>(2u));
    let hi = wload4(which, (byte >> vec4<u32>(2u)) + 1u);
    return select(lo, (lo >> vec4<u32>(16u)) | (hi << vec4<u32>(16u)), (byte & vec4<u32>(2u)) != vec4<u32>(0u));
}

// Words i.x .. i.w of `which`, four loads in one branch.
fn wload4(which: u32, i: vec4<u32>) -> vec4<u32> {
    if which == 1u {
        return vec4<u32>(w2[i.x], w2[i.y], w2[i.z], w2[i.w]);
    }
    if which == 2u {
        return vec4<u32>(w3_word(i.x), w3_word(i.y), w3_word(i.z), w3_word(i.w));
    }
    return vec4<u32>(w[i.x], w[i.y], w[i.z], w[i.w]);
}

// Words u0, u0 + seg, u0 + 2 seg, u0 + 3 seg (16 weights each) of packed
// row j (kinds 0-2), zero past the row's end (read at the last word, so
// that every load is issued without a branch). Word u is word u % 8 of
// chunk u / 8 (for TQ2_0, of half u % 16 / 8 of block u / 16; the chunk's
// index is u / 8 either way).
fn wword4(which: u32, kind: u32, j: u32, u0: u32, seg: u32, words: u32) -> vec4<u32> {
    let u = vec4<u32>(u0, u0 + seg, u0 + 2u * seg, u0 + 3u * seg);
    let uc = min(u, vec4<u32>(words - 1u));
    var r: vec4<u32>;
    if kind == 0u {
        r = wload4(which, vec4<u32>(j * (p.k / 16u)) + uc);
    } else {
        r = words_at4(which, (vec4<u32>(j * (p.k / 256u)) + uc / 16u) * 66u + 4u * (uc % 16u));
    }
    return select(vec4<u32>(0u), r, u < vec4<u32>(words));
}

// Lane `lane`'s words u0, u0 + seg, ... (eight) of packed row ja of matrix
// `wa` (kind ka) and with `two` of row jb of `wb` (kind kb); zero past the
// row's end.
fn batch(wa: u32, ka: u32, ja: u32, two: bool, wb: u32, kb: u32, jb: u32,
         u0: u32, seg: u32) -> Batch {
    let words = p.k / 16u;
    var r: Batch;
    r.a0 = wword4(wa, ka, ja, u0, seg, words);
    r.a1 = wword4(wa, ka, ja, u0 + 4u * seg, seg, words);
    if two {
        r.b0 = wword4(wb, kb, jb, u0, seg, words);
        r.b1 = wword4(wb, kb, jb, u0 + 4u * seg, seg, words);
    }
    return r;
}

// Four words (u0, u0 + seg, ...) of row j holding `wv`, against the
// token's codes: `word_dot` of each that is within the row, added up.
fn word_dot4(which: u32, kind: u32, j: u32, u0: u32, seg: u32, wv: vec4<u32>) -> Sums {
    let words = p.k / 16u;
    var r: Sums;
    // Past the row's end: word 0 (from `wword4`) at the last index, so
    // that nothing is behind a branch.
    for (var v = 0u; v < 4u; v++) {
        let u = u0 + v * seg;
        let x = word_dot(which, kind, j, min(u, words - 1u), wv[v]);
        r.i += select(0, x.i, u < words);
        r.f += select(0.0, x.f, u < words);
    }
    return r;
}

// Lane `lane` of `seg` threads of packed row ja of matrix `wa` (kind ka),
// and with `two` of row jb of matrix `wb` (kind kb): words lane, lane +
// seg, ... Neighbouring lanes read neighbouring words (weights and
// activations alike). `first` is the lane's first batch, which the caller
// loaded before it quantized the token (so the weights are on their way
// meanwhile); every step loads the next batch before it uses the current.
fn packed_rows(wa: u32, ka: u32, ja: u32, two: bool, wb: u32, kb: u32, jb: u32,
               lane: u32, seg: u32, first: Batch, a: ptr<function, Sums>, b: ptr<function, Sums>) {
    let words = p.k / 16u;
    var cur = first;
    for (var u0 = lane; u0 < words; u0 += 8u * seg) {
        var next: Batch;
        if u0 + 8u * seg < words {
            next = batch(wa, ka, ja, two, wb, kb, jb, u0 + 8u * seg, seg);
        }
        let x0 = word_dot4(wa, ka, ja, u0, seg, cur.a0);
        let x1 = word_dot4(wa, ka, ja, u0 + 4u * seg, seg, cur.a1);
        (*a).i += x0.i + x1.i;
        (*a).f += x0.f + x1.f;
        if two {
            let y0 = word_dot4(wb, kb, jb, u0, seg, cur.b0);
            let y1 = word_dot4(wb, kb, jb, u0 + 4u * seg, seg, cur.b1);
            (*b).i += y0.i + y1.i;
            (*b).f += y0.f + y1.f;
        }
        cur = next;
    }
}

// One token (decode), packed weights (I2_S, TQ2_0; the host sends TQ1_0
// to `matmul`), rows of at most 8192. The workgroup first quantizes the
// token's row into `qs` (each workgroup redoes it: the row is small and
// sits in cache; a dispatch of its own cost more). Then it takes
// 256 / seg weight rows, `seg` threads per row (a power of two), and each
// row's threads add up in a tree. Rows
// are read in words, neighbouring threads on neighbouring words, so that
// each load of a warp is one contiguous run of weights and one of
// activations (a thread per 128-weight chunk made every activation load
// touch 32 cache lines).
@compute @workgroup_size(256)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let seg = p.seg;
    let c = lid % seg;
    let j = wid.x * (256u / seg) + lid / seg;
    let glu = p.mode >= 2u;
    var first: Batch;
    if j < p.m {
        first = batch(0u, p.kind, j, glu, 1u, p.kind2, j, c, seg);
    }
    let qsc = quantize_row(0u, 0u, p.k, p.norm == 1u, p.eps, false, lid);
    // Float sums only for per-block scales.
    let fa = p.kind == 2u;
    let fb = glu && p.kind2 == 2u;
    var a: Sums;
    var b: Sums;
    if j < p.m {
        packed_rows(0u, p.kind, j, glu, 1u, p.kind2, j, c, seg, first, &a, &b);
    }
    red_i[lid] = a.i;
    if fa {
        red_f[lid] = a.f;
    }
    if glu {
        red_i2[lid] = b.i;
        if fb {
            red_f2[lid] = b.f;
        }
    }
    workgroupBarrier();
    for (var s = seg / 2u; s > 0u; s >>= 1u) {
        if c < s {
            red_i[lid] += red_i[lid + s];
            if fa {
                red_f[lid] += red_f[lid + s];
            }
            if glu {
                red_i2[lid] += red_i2[lid + s];
                if fb {
                    red_f2[lid] += red_f2[lid + s];
                }
            }
        }
        workgroupBarrier();
    }
    if c == 0u && j < p.m {
        let y = rescale(p.kind, p.wscale, red_i[lid], red_f[lid], qsc);
        var y2 = 0.0;
        if glu {
            y2 = rescale(p.kind2, p.wscale2, red_i2[lid], red_f2[lid], qsc);
        }
        store(j, y, y2);
    }
}

// One token through three matrices of the same width (the queries, keys
// and values): rows 0..m of w into `out`, then m2 rows of w2 and m3 of w3
// into `out2` and `out3` (`put`, from the same prelude as `w3_word`). One
// dispatch instead of three; otherwise `matvec`.
@compute @workgroup_size(256)
fn matvec3(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let seg = p.seg;
    let c = lid % seg;
    let j = wid.x * (256u / seg) + lid / seg;
    var which = 0u;
    var jl = j;
    var kind = p.kind;
    var wscale = p.wscale;
    if j >= p.m + p.m2 {
        which = 2u;
        jl = j - p.m - p.m2;
        kind = p.kind3;
        wscale = p.wscale3;
    } else if j >= p.m {
        which = 1u;
        jl = j - p.m;
        kind = p.kind2;
        wscale = p.wscale2;
    }
    let live = j < p.m + p.m2 + p.m3;
    var first: Batch;
    if live {
        first = batch(which, kind, jl, false, 0u, 0u, 0u, c, seg);
    }
    let qsc = quantize_row(0u, 0u, p.k, p.norm == 1u, p.eps, false, lid);
    var a: Sums;
    var unused: Sums;
    if live {
        packed_rows(which, kind, jl, false, 0u, 0u, 0u, c, seg, first, &a, &unused);
    }
    red_i[lid] = a.i;
    red_f[lid] = a.f;
    workgroupBarrier();
    for (var s = seg / 2u; s > 0u; s >>= 1u) {
        if c < s {
            red_i[lid] += red_i[lid + s];
            red_f[lid] += red_f[lid + s];
        }
        workgroupBarrier();
    }
    if c == 0u && live {
        let y = rescale(kind, wscale, red_i[lid], red_f[lid], qsc);
        if which == 0u {
            out[jl] = y;
        } else {
            put(which, jl, y);
        }
    }
}

// Causal grouped-query attention over the KV cache (needs the f16.wgsl,
// reduce.wgsl and `halves` preludes, and one of the cache preludes).
// Usually the keys and values of this batch are already in the cache
// (rope.wgsl stores them, in the dispatch before), so the cache is only
// read here. With NEW_TOKEN (one new token, decode) this kernel does that
// part itself: it rotates the query and the new key (as rope.wgsl would),
// takes the new key and value as the cache would hold them, and the
// workgroup of the first query head of each KV head stores them at
// position pos0. The other workgroups may see that position's old or new
// cache contents; they use their own copy of the new key and value.
//
// The cache of one layer is [max_seq][kv_dim] values, f32 or f16 (two per
// u32, element 2i in the low half), read 16 bytes at a time: head_dim is a
// multiple of 8 (the host checks), so every head starts on a 16-byte
// boundary.
//
// One workgroup per (head, query row): scores over positions
// 0..=pos0+row, softmax, weighted sum of V. Positions go in tiles of
// TILE with a running max and sum (online softmax), so any context length
// works in fixed workgroup memory.

struct Params {
    rows: u32,
    n_head: u32,
    head_dim: u32,
    group: u32,     // query heads per KV head
    kv_dim: u32,
    pos0: u32,
    f16: u32,       // 1: the cache holds f16
    scale: f32,     // 1 / sqrt(head_dim)
    half: u32,      // NEW_TOKEN: rope_dim / 2
    style: u32,     // NEW_TOKEN: 0 NEOX pairs (i, i + half), 1 pairs (2i, 2i + 1)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const SUBS: u32 = 2u;        // threads per position in the scores
const TILE: u32 = WG / SUBS; // positions per tile
const NEG: f32 = -3.0e38;

var<workgroup> qh: array<vec4<f32>, 64>;     // this head's query (head_dim <= 256)
var<workgroup> sp: array<f32, 256>;          // the threads' partial scores
var<workgroup> pr: array<f32, 256>;          // the tile's exp(score - max)
var<workgroup> part: array<vec4<f32>, 512>;  // the groups' weighted sums
var<workgroup> kn: array<vec4<f32>, 64>;     // NEW_TOKEN: the new key, as cached
var<workgroup> vn: array<vec4<f32>, 64>;     // NEW_TOKEN: the new value, as cached

// The values in 16 bytes of the cache: eight f16, or four f32 (`hi` zero).
struct Oct {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn oct(x: vec4<u32>, half: bool) -> Oct {
    if half {
        return Oct(vec4<f32>(halves(x.x), halves(x.y)), vec4<f32>(halves(x.z), halves(x.w)));
    }
    return Oct(bitcast<vec4<f32>>(x), vec4<f32>(0.0));
}

// Where the 16-byte vectors of position `pos` of this KV head start, and
// how many there are (head_dim / 8 or / 4).
fn vec_at(pos: u32, kv0: u32, half: bool) -> u32 {
    return (pos * p.kv_dim + kv0) / select(4u, 8u, half);
}

// Vector i (of `n`) of a key against the query, zero from i = n on (read at
// n - 1, so that no load waits on a branch).
fn kdot(base: u32, i: u32, n: u32, half: bool) -> f32 {
    let ic = min(i, n - 1u);
    let o = oct(kc[base + ic], half);
    var s: f32;
    if half {
        s = dot(o.lo, qh[2u * ic]) + dot(o.hi, qh[2u * ic + 1u]);
    } else {
        s = dot(o.lo, qh[ic]);
    }
    return select(0.0, s, i < n);
}

// Vectors i, i + st, ..., i + 7 st of a key against the query.
fn kdot8(base: u32, i: u32, st: u32, n: u32, half: bool) -> f32 {
    return ((kdot(base, i, n, half) + kdot(base, i + st, n, half))
            + (kdot(base, i + 2u * st, n, half) + kdot(base, i + 3u * st, n, half)))
         + ((kdot(base, i + 4u * st, n, half) + kdot(base, i + 5u * st, n, half))
            + (kdot(base, i + 6u * st, n, half) + kdot(base, i + 7u * st, n, half)));
}

// pr[i] times vector `d` of the value at tile position i, or zero from
// i = len on.
fn pv(t0: u32, i: u32, len: u32, kv0: u32, d: u32, half: bool) -> Oct {
    let j = min(i, len - 1u);
    var o = oct(vc[vec_at(t0 + j, kv0, half) + d], half);
    if NEW_TOKEN {
        let now = t0 + j == p.pos0;
        var f = Oct(vn[d], vec4<f32>(0.0));
        if half {
            f = Oct(vn[2u * d], vn[2u * d + 1u]);
        }
        o = Oct(select(o.lo, f.lo, now), select(o.hi, f.hi, now));
    }
    let w = select(0.0, pr[j], i < len);
    return Oct(w * o.lo, w * o.hi);
}

fn add(a: Oct, b: Oct) -> Oct {
    return Oct(a.lo + b.lo, a.hi + b.hi);
}

// x as the cache holds it.
fn cached(x: f32, half: bool) -> f32 {
    return select(x, f16_to_f32(f32_to_f16(x)), half);
}

// NEW_TOKEN: rotates element e of the query in `qh` and of the new key in
// `kn` (with its partner, where e is the first of a pair; e past the
// rotated part stays), rounds the key and value elements it owns as the
// cache would, as rope.wgsl and the cache store do it.
fn new_token_element(e: u32, half: bool) {
    let rotated = e < 2u * p.half;
    var first = e & ~1u;
    var partner = first + 1u;
    if p.style == 0u {
        first = select(e - p.half, e, e < p.half);
        partner = first + p.half;
    }
    let i = select(first / 2u, first, p.style == 0u);  // the pair's angle
    if rotated && e == first {
        let t = new_angle((p.pos0 * p.half + i));
        let qa = qh[e / 4u][e % 4u];
        let qb = qh[partner / 4u][partner % 4u];
        qh[e / 4u][e % 4u] = qa * t.x - qb * t.y;
        qh[partner / 4u][partner % 4u] = qa * t.y + qb * t.x;
        let ka = kn[e / 4u][e % 4u];
        let kb = kn[partner / 4u][partner % 4u];
        kn[e / 4u][e % 4u] = cached(ka * t.x - kb * t.y, half);
        kn[partner / 4u][partner % 4u] = cached(ka * t.y + kb * t.x, half);
    } else if !rotated {
        kn[e / 4u][e % 4u] = cached(kn[e / 4u][e % 4u], half);
    }
    vn[e / 4u][e % 4u] = cached(vn[e / 4u][e % 4u], half);
}

// NEW_TOKEN: vector d of the new key (or value) as the cache stores it.
fn new_word(is_v: bool, d: u32, half: bool) -> vec4<u32> {
    var x0 = kn[2u * d];
    var x1 = kn[min(2u * d + 1u, 63u)];
    var x = kn[d];
    if is_v {
        x0 = vn[2u * d];
        x1 = vn[min(2u * d + 1u, 63u)];
        x = vn[d];
    }
    if half {
        return vec4<u32>(f32_to_f16(x0.x) | (f32_to_f16(x0.y) << 16u), f32_to_f16(x0.z) | (f32_to_f16(x0.w) << 16u),
                         f32_to_f16(x1.x) | (f32_to_f16(x1.y) << 16u), f32_to_f16(x1.z) | (f32_to_f16(x1.w) << 16u));
    }
    return bitcast<vec4<u32>>(x);
}

// Scores: SUBS threads per position (neighbouring threads on neighbouring
// vectors), eight vectors (loads) per step, written out: a function-local
// array indexed in a loop can end up in memory, where each load waits for
// the one before. The tile's max and sum by `wg_reduce`.
// Weighted values: thread (g, d) takes vector d of the positions g,
// g + groups, ... of the tile (groups = 256 / vectors per position), eight
// per step; the groups' sums are added at the end.
@compute @workgroup_size(256)
fn attend(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let row = wid.y;
    if row >= p.rows {
        return;
    }
    let hd = p.head_dim;
    let half = p.f16 == 1u;
    let q_cols = p.n_head * hd;
    let kv0 = (h / p.group) * hd;
    let q0 = row * q_cols + h * hd;
    for (var d = lid; d < hd / 4u; d += WG) {
        let i = q0 + 4u * d;
        qh[d] = vec4<f32>(q[i], q[i + 1u], q[i + 2u], q[i + 3u]);
        if NEW_TOKEN {
            let j = kv0 + 4u * d;
            kn[d] = vec4<f32>(new_k(j), new_k(j + 1u), new_k(j + 2u), new_k(j + 3u));
            vn[d] = vec4<f32>(new_v(j), new_v(j + 1u), new_v(j + 2u), new_v(j + 3u));
        }
    }
    workgroupBarrier();
    let n = p.pos0 + row + 1u;
    let per = hd / select(4u, 8u, half);  // vectors per position
    var s_new = 0.0;  // NEW_TOKEN: the new key's score
    if NEW_TOKEN {
        if lid < hd {
            new_token_element(lid, half);
        }
        workgroupBarrier();
        if h % p.group == 0u && lid < per {
            let at = vec_at(p.pos0, kv0, half) + lid;
            put_kv(false, at, new_word(false, lid, half));
            put_kv(true, at, new_word(true, lid, half));
        }
        let e = min(lid, hd - 1u);
        s_new = wg_reduce(lid, select(0.0, qh[e / 4u][e % 4u] * kn[e / 4u][e % 4u], lid < hd), false);
    }
    let groups = WG / per;
    let g = lid / per;
    let d = lid % per;
    var m = NEG;
    var l = 0.0;
    var acc = Oct(vec4<f32>(0.0), vec4<f32>(0.0));
    for (var t0 = 0u; t0 < n; t0 += TILE) {
        let len = min(TILE, n - t0);
        let base = vec_at(t0 + min(lid / SUBS, len - 1u), kv0, half);
        var s = 0.0;
        for (var i = lid % SUBS; i < per; i += 8u * SUBS) {
            s += kdot8(base, i, SUBS, per, half);
        }
        sp[lid] = s;
        workgroupBarrier();
        // Thread i takes position i of the tile.
        let live = lid < len;
        s = 0.0;
        for (var j = 0u; j < SUBS; j++) {
            s += sp[min(SUBS * lid + j, WG - 1u)];
        }
        if NEW_TOKEN && t0 + lid == p.pos0 {
            s = s_new;
        }
        let score = select(NEG, s * p.scale, live);
        let m_new = max(m, wg_reduce(lid, score, true));
        let e = select(0.0, exp(score - m_new), live);
        pr[lid] = e;
        let factor = exp(m - m_new);
        l = l * factor + wg_reduce(lid, e, false);
        if g < groups {
            var a = Oct(vec4<f32>(0.0), vec4<f32>(0.0));
            let st = groups;
            for (var i = g; i < len; i += 8u * st) {
                let v0 = add(pv(t0, i, len, kv0, d, half), pv(t0, i + st, len, kv0, d, half));
                let v1 = add(pv(t0, i + 2u * st, len, kv0, d, half), pv(t0, i + 3u * st, len, kv0, d, half));
                let v2 = add(pv(t0, i + 4u * st, len, kv0, d, half), pv(t0, i + 5u * st, len, kv0, d, half));
                let v3 = add(pv(t0, i + 6u * st, len, kv0, d, half), pv(t0, i + 7u * st, len, kv0, d, half));
                a = add(a, add(add(v0, v1), add(v2, v3)));
            }
            acc = Oct(acc.lo * factor + a.lo, acc.hi * factor + a.hi);
        }
        m = m_new;
    }
    part[2u * lid] = acc.lo;
    part[2u * lid + 1u] = acc.hi;
    workgroupBarrier();
    if g == 0u {
        var lo = vec4<f32>(0.0);
        var hi = vec4<f32>(0.0);
        for (var j = 0u; j < groups; j++) {
            lo += part[2u * (j * per + d)];
            hi += part[2u * (j * per + d) + 1u];
        }
        let o = q0 + d * select(4u, 8u, half);
        for (var c = 0u; c < 4u; c++) {
            out[o + c] = lo[c] / l;
            if half {
                out[o + 4u + c] = hi[c] / l;
            }
        }
    }
}


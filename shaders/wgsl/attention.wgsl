// Causal grouped-query attention over the KV cache, storing this batch's
// keys and values into it on the way (needs the f16.wgsl prelude; f16 is
// rounded exactly as the CPU's cache rounds it).
//
// The cache of one layer is [max_seq][kv_dim] values, f32 (stored as their
// bits) or f16 (two per u32, element 2i in the low half; head_dim is even,
// so no word holds two heads).
//
// One workgroup per (head, query row): scores over positions 0..=pos0+row,
// softmax, weighted sum of V. Positions go in tiles of 64 with a running
// max and sum (online softmax), so any context length works in fixed
// workgroup memory. The workgroups of the first query head of each KV head
// write their row's K and V into the cache; every workgroup reads
// positions pos0.. from `k_new` / `v_new` (as the cache would hold them),
// since other workgroups' writes are not visible within the dispatch.

struct Params {
    rows: u32,
    n_head: u32,
    head_dim: u32,
    group: u32,     // query heads per KV head
    kv_dim: u32,
    pos0: u32,
    f16: u32,       // 1: the cache holds f16
    scale: f32,     // 1 / sqrt(head_dim)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k_new: array<f32>;
@group(0) @binding(2) var<storage, read> v_new: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<u32>;
@group(0) @binding(4) var<storage, read_write> vc: array<u32>;
@group(0) @binding(5) var<storage, read> q: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
// Positions per tile, and threads per position in the scores.
const TILE: u32 = 64u;
const SUBS: u32 = 4u;
const NEG: f32 = -3.0e38;

// Element e (0..kv_dim) of the key (or value) at position `pos`: from
// k_new / v_new for this batch's positions, else from the cache. Both loads
// are made, at valid indices and without a branch around them, and a select
// picks one: on an H100 a load behind a branch waited for the loads before
// it, and attention took several times longer.
fn kv(is_v: bool, pos: u32, e: u32) -> f32 {
    let fresh = pos >= p.pos0;
    let half = p.f16 == 1u;
    let i_new = select(0u, (pos - min(pos, p.pos0)) * p.kv_dim + e, fresh);
    let i = pos * p.kv_dim + e;
    let ic = select(i, i / 2u, half);
    var x = k_new[i_new];
    var w = kc[ic];
    if is_v {
        x = v_new[i_new];
        w = vc[ic];
    }
    var old = bitcast<f32>(w);
    if half {
        x = f16_to_f32(f32_to_f16(x));
        old = f16_pair_at(w, i);
    }
    return select(old, x, fresh);
}

// Writes row `row` of k_new / v_new, elements kv0..kv0+hd, into the cache.
fn store(row: u32, kv0: u32, lid: u32) {
    let src = row * p.kv_dim + kv0;
    let dst = (p.pos0 + row) * p.kv_dim + kv0;
    if p.f16 == 1u {
        for (var e = 2u * lid; e < p.head_dim; e += 2u * WG) {
            kc[(dst + e) / 2u] = f32_to_f16(k_new[src + e]) | (f32_to_f16(k_new[src + e + 1u]) << 16u);
            vc[(dst + e) / 2u] = f32_to_f16(v_new[src + e]) | (f32_to_f16(v_new[src + e + 1u]) << 16u);
        }
    } else {
        for (var e = lid; e < p.head_dim; e += WG) {
            kc[dst + e] = bitcast<u32>(k_new[src + e]);
            vc[dst + e] = bitcast<u32>(v_new[src + e]);
        }
    }
}

var<workgroup> qh: array<f32, 256>;   // this head's query (head_dim <= 256)
var<workgroup> sc: array<f32, 64>;    // this tile's scores
var<workgroup> pr: array<f32, 64>;    // this tile's exp(score - max)
var<workgroup> red: array<f32, 64>;   // the tile's max, then its sum
var<workgroup> part: array<vec4<f32>, 256>; // partial dot products / outputs

// The max (or the sum) of the tile's `len` values in `red`, by a tree;
// every thread gets the same result. All threads call it.
fn tile_reduce(lid: u32, len: u32, is_max: bool) -> f32 {
    for (var s = TILE / 2u; s > 0u; s >>= 1u) {
        if lid < s && lid + s < len {
            if is_max {
                red[lid] = max(red[lid], red[lid + s]);
            } else {
                red[lid] += red[lid + s];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Element e of the key (or value) at position `pos` of this head (from
// element e0), or 0 from e = hd on (read at hd - 1, so that no load waits
// on a branch).
fn kv_at(is_v: bool, pos: u32, e0: u32, e: u32, hd: u32) -> f32 {
    return select(0.0, kv(is_v, pos, e0 + min(e, hd - 1u)), e < hd);
}

// Elements e, e + st, e + 2 st, e + 3 st of it. Loads written out, into
// vectors: a function-local array indexed in a loop can end up in memory,
// where each load waits for the one before.
fn kv4(is_v: bool, pos: u32, e0: u32, e: u32, st: u32, hd: u32) -> vec4<f32> {
    return vec4<f32>(kv_at(is_v, pos, e0, e, hd), kv_at(is_v, pos, e0, e + st, hd),
                     kv_at(is_v, pos, e0, e + 2u * st, hd), kv_at(is_v, pos, e0, e + 3u * st, hd));
}

// The same four elements of the query.
fn q4(e: u32, st: u32, hd: u32) -> vec4<f32> {
    return vec4<f32>(qh[min(e, hd - 1u)], qh[min(e + st, hd - 1u)], qh[min(e + 2u * st, hd - 1u)],
                     qh[min(e + 3u * st, hd - 1u)]);
}

// pr[i] times the four value elements of tile position i, or zero from
// i = len on.
fn pv4(t0: u32, i: u32, len: u32, e0: u32, e: u32, hd: u32) -> vec4<f32> {
    let j = min(i, len - 1u);
    return select(vec4<f32>(0.0), pr[j] * kv4(true, t0 + j, e0, e, 1u, hd), i < len);
}

// Scores: SUBS threads per position, each taking every SUBS-th element
// (neighbouring threads read neighbouring elements), sixteen loads per
// step. The tile's max and sum by trees.
// Weighted values: thread (g, d4) takes dimensions 4 d4 .. 4 d4 + 3 of the
// positions g, g + groups, ... of the tile (groups = WG / ceil(hd / 4),
// eight positions per thread and tile for head_dim 128); the groups'
// sums are added at the end.
@compute @workgroup_size(256)
fn attend(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let row = wid.y;
    if row >= p.rows {
        return;
    }
    let hd = p.head_dim;
    let q_cols = p.n_head * hd;
    let kv0 = (h / p.group) * hd;
    if h % p.group == 0u {
        store(row, kv0, lid);
    }
    for (var d = lid; d < hd; d += WG) {
        qh[d] = q[row * q_cols + h * hd + d];
    }
    workgroupBarrier();
    let n = p.pos0 + row + 1u;
    let pp = lid / SUBS;
    let sub = lid % SUBS;
    let per = (hd + 3u) / 4u;  // threads per position in the weighted sum
    let groups = WG / per;
    let g = lid / per;
    let d4 = lid % per;
    var m = NEG;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var t0 = 0u; t0 < n; t0 += TILE) {
        let pos = t0 + pp;
        let len = min(TILE, n - t0);
        var sdot = 0.0;
        if pos < n {
            // Sixteen elements per step.
            for (var i0 = sub; i0 < hd; i0 += 16u * SUBS) {
                let st = SUBS;
                let k0 = kv4(false, pos, kv0, i0, st, hd);
                let k1 = kv4(false, pos, kv0, i0 + 4u * st, st, hd);
                let k2 = kv4(false, pos, kv0, i0 + 8u * st, st, hd);
                let k3 = kv4(false, pos, kv0, i0 + 12u * st, st, hd);
                sdot += dot(q4(i0, st, hd), k0) + dot(q4(i0 + 4u * st, st, hd), k1)
                     + dot(q4(i0 + 8u * st, st, hd), k2) + dot(q4(i0 + 12u * st, st, hd), k3);
            }
        }
        part[lid].x = sdot;
        workgroupBarrier();
        if sub == 0u && pos < n {
            var s = 0.0;
            for (var j = 0u; j < SUBS; j++) {
                s += part[lid + j].x;
            }
            sc[pp] = s * p.scale;
            red[pp] = s * p.scale;
        }
        workgroupBarrier();
        let m_new = max(m, tile_reduce(lid, len, true));
        if lid < len {
            let e = exp(sc[lid] - m_new);
            pr[lid] = e;
            red[lid] = e;
        }
        workgroupBarrier();
        let factor = exp(m - m_new);
        l = l * factor + tile_reduce(lid, len, false);
        if g < groups {
            // Eight positions per step, all loaded before any is used.
            var a = vec4<f32>(0.0);
            let e = 4u * d4;
            let st = groups;
            for (var i0 = g; i0 < len; i0 += 8u * st) {
                let v0 = pv4(t0, i0, len, kv0, e, hd);
                let v1 = pv4(t0, i0 + st, len, kv0, e, hd);
                let v2 = pv4(t0, i0 + 2u * st, len, kv0, e, hd);
                let v3 = pv4(t0, i0 + 3u * st, len, kv0, e, hd);
                let v4 = pv4(t0, i0 + 4u * st, len, kv0, e, hd);
                let v5 = pv4(t0, i0 + 5u * st, len, kv0, e, hd);
                let v6 = pv4(t0, i0 + 6u * st, len, kv0, e, hd);
                let v7 = pv4(t0, i0 + 7u * st, len, kv0, e, hd);
                a += ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7));
            }
            acc = acc * factor + a;
        }
        m = m_new;
        workgroupBarrier();
    }
    part[lid] = acc;
    workgroupBarrier();
    if g == 0u {
        var total = vec4<f32>(0.0);
        for (var j = 0u; j < groups; j++) {
            total += part[j * per + d4];
        }
        for (var n4 = 0u; n4 < 4u; n4++) {
            let d = 4u * d4 + n4;
            if d < hd {
                out[row * q_cols + h * hd + d] = total[n4] / l;
            }
        }
    }
}

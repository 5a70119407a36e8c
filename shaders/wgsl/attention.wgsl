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

const WG: u32 = 64u;
const NEG: f32 = -3.0e38;

// Element e (0..kv_dim) of the key (or value) at position `pos`.
fn kv(is_v: bool, pos: u32, e: u32) -> f32 {
    if pos >= p.pos0 {
        let i = (pos - p.pos0) * p.kv_dim + e;
        var x = k_new[i];
        if is_v {
            x = v_new[i];
        }
        if p.f16 == 1u {
            return f16_to_f32(f32_to_f16(x));
        }
        return x;
    }
    let i = pos * p.kv_dim + e;
    if is_v {
        return v_at(i);
    }
    return k_at(i);
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

fn k_at(i: u32) -> f32 {
    if p.f16 == 1u {
        return f16_pair_at(kc[i / 2u], i);
    }
    return bitcast<f32>(kc[i]);
}

fn v_at(i: u32) -> f32 {
    if p.f16 == 1u {
        return f16_pair_at(vc[i / 2u], i);
    }
    return bitcast<f32>(vc[i]);
}

var<workgroup> qh: array<f32, 256>;   // this head's query (head_dim <= 256)
var<workgroup> pr: array<f32, 64>;    // this tile's exp(score - max)
var<workgroup> red: array<f32, 64>;

fn reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
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

@compute @workgroup_size(64)
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
    var m = NEG;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var t0 = 0u; t0 < n; t0 += WG) {
        let pos = t0 + lid;
        var s = NEG;
        if pos < n {
            // Eight independent loads per step (one at a time, each waits
            // for the last: the kernel would be load latency, nothing else).
            var s0 = vec4<f32>(0.0);
            var s1 = vec4<f32>(0.0);
            var d = 0u;
            for (; d + 8u <= hd; d += 8u) {
                let e = kv0 + d;
                s0 += vec4<f32>(qh[d], qh[d + 1u], qh[d + 2u], qh[d + 3u])
                    * vec4<f32>(kv(false, pos, e), kv(false, pos, e + 1u),
                                kv(false, pos, e + 2u), kv(false, pos, e + 3u));
                s1 += vec4<f32>(qh[d + 4u], qh[d + 5u], qh[d + 6u], qh[d + 7u])
                    * vec4<f32>(kv(false, pos, e + 4u), kv(false, pos, e + 5u),
                                kv(false, pos, e + 6u), kv(false, pos, e + 7u));
            }
            let s2 = s0 + s1;
            var dot = (s2.x + s2.y) + (s2.z + s2.w);
            for (; d < hd; d++) {
                dot += qh[d] * kv(false, pos, kv0 + d);
            }
            s = dot * p.scale;
        }
        let m_new = max(m, reduce(lid, s, true));
        var e = 0.0;
        if pos < n {
            e = exp(s - m_new);
        }
        pr[lid] = e;
        let factor = exp(m - m_new);
        l = l * factor + reduce(lid, e, false);
        let len = min(WG, n - t0);
        for (var j = 0u; j < 4u; j++) {
            let d = lid + j * WG;
            if d < hd {
                let e = kv0 + d;
                var a4 = vec4<f32>(0.0);
                var i = 0u;
                for (; i + 4u <= len; i += 4u) {
                    let t = t0 + i;
                    a4 += vec4<f32>(pr[i], pr[i + 1u], pr[i + 2u], pr[i + 3u])
                        * vec4<f32>(kv(true, t, e), kv(true, t + 1u, e),
                                    kv(true, t + 2u, e), kv(true, t + 3u, e));
                }
                var a = (a4.x + a4.y) + (a4.z + a4.w);
                for (; i < len; i++) {
                    a += pr[i] * kv(true, t0 + i, e);
                }
                acc[j] = acc[j] * factor + a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let d = lid + j * WG;
        if d < hd {
            out[row * q_cols + h * hd + d] = acc[j] / l;
        }
    }
}

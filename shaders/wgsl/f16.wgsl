// IEEE half precision <-> f32 with integer operations only, so no shader
// feature (shader-f16, or the f16-in-f32 packing builtins) is needed, and
// rounding is exactly the CPU's: round to nearest, ties to even.
// Prepended to the shaders that read F16 tables or keep an f16 KV cache.

fn f16_to_f32(h: u32) -> f32 {
    // Branch-free (it runs once per weight of the LM head): compute the
    // normal, subnormal and inf/NaN results and select.
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    let normal = ((h & 0x7fffu) << 13u) + 0x38000000u;  // exponent + (127 - 15)
    let sub = bitcast<u32>(f32(m) * 5.9604645e-8);     // m * 2^-24, exact
    let special = 0x7f800000u | (m << 13u);
    let bits = select(select(normal, special, e == 31u), sub, e == 0u);
    return bitcast<f32>(sign | bits);
}

fn f32_to_f16(f: f32) -> u32 {
    let x = bitcast<u32>(f);
    let sign = (x >> 16u) & 0x8000u;
    let e = i32((x >> 23u) & 0xffu);
    let m = x & 0x7fffffu;
    if e == 255 {
        // Infinity, or NaN kept quiet.
        return sign | 0x7c00u | select(0u, 0x200u | (m >> 13u), m != 0u);
    }
    let he = e - 112;  // the half exponent field
    if he >= 31 {
        return sign | 0x7c00u;
    }
    if he <= 0 {
        // Subnormal half (or zero): shift the full significand down.
        let shift = u32(14 - he);
        if shift > 24u {
            return sign;
        }
        let full = m | 0x800000u;
        let half_bit = 1u << (shift - 1u);
        var r = full >> shift;
        // Round up past half, or at exactly half when r is odd.
        if (full & half_bit) != 0u && (full & (3u * half_bit - 1u)) != 0u {
            r += 1u;
        }
        return sign | r;
    }
    let r = (u32(he) << 10u) | (m >> 13u);
    if (m & 0x1000u) != 0u && (m & 0x2fffu) != 0u {
        return sign | (r + 1u);  // a carry into the exponent is right
    }
    return sign | r;
}

// Element i of an array of f16 values stored two per u32 (element 2j in
// the low half of word j).
fn f16_pair_at(word: u32, i: u32) -> f32 {
    return f16_to_f32((word >> (16u * (i & 1u))) & 0xffffu);
}

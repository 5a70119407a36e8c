//! WGSL compute shaders of the wgpu backend, one file per operation family
//! (`wgsl/*.wgsl`), as source strings. `core/src/backend/wgpu` builds its
//! pipelines from them; this crate's tests parse and validate every one with
//! naga, so a broken shader fails `cargo test` without a GPU.
//!
//! Shaders that take int8 dot products call `dot4(a, b)`; the backend puts
//! one of the two [`DOT4`] preludes in front of them, packed
//! (`dot4I8Packed`) where the adapter compiles it, portable otherwise.

/// One WGSL file and the preludes it needs.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub src: &'static str,
    /// Calls `dot4(a, b)` (a [`Dot4`] prelude).
    pub dot4: bool,
    /// Calls the f16 conversions of [`F16`].
    pub f16: bool,
    /// Two versions of one prelude, (usual, alternate): ternary.wgsl's
    /// third matrix ([`NO_THIRD`], [`THIRD`]), attention.wgsl's cache
    /// ([`CACHE_READ`], [`CACHE_NEW_TOKEN`]).
    pub alt: Option<(&'static str, &'static str)>,
    /// Calls `quantize_row` ([`ROWQUANT`], which needs [`REDUCE`]).
    pub rowquant: bool,
    /// Calls `wg_reduce` ([`REDUCE`]).
    pub reduce: bool,
    /// Calls `halves(w)` (a [`Halves`] prelude).
    pub halves: bool,
}

const fn shader(name: &'static str, src: &'static str, dot4: bool, f16: bool) -> Shader {
    Shader {
        name,
        src,
        dot4,
        f16,
        alt: None,
        rowquant: false,
        reduce: false,
        halves: false,
    }
}

/// f16 <-> f32 in integer operations (a prelude, not a shader).
pub const F16: &str = include_str!("../wgsl/f16.wgsl");

/// The sum or the max over a workgroup of 256 threads (a prelude).
pub const REDUCE: &str = include_str!("../wgsl/reduce.wgsl");

/// One row of activations to int8 codes, optionally after RMSNorm (a
/// prelude: the activation quantizer and the one-token ternary kernels
/// share it, so both make the same codes).
pub const ROWQUANT: &str = include_str!("../wgsl/rowquant.wgsl");

/// ternary.wgsl's third matrix and its two extra outputs, for `matvec3`
/// (a prelude: that entry point needs nine storage bindings, which not
/// every device has, so the other entry points are built without them).
pub const THIRD: &str = "@group(0) @binding(7) var<storage, read> w3: array<u32>;
@group(0) @binding(8) var<storage, read_write> out2: array<f32>;
@group(0) @binding(9) var<storage, read_write> out3: array<f32>;
fn w3_word(i: u32) -> u32 { return w3[i]; }
fn put(which: u32, at: u32, y: f32) {
    if which == 1u {
        out2[at] = y;
    } else {
        out3[at] = y;
    }
}
";

/// [`THIRD`] for the module of the other entry points: no bindings.
pub const NO_THIRD: &str = "fn w3_word(i: u32) -> u32 { return 0u; }
fn put(which: u32, at: u32, y: f32) {}
";

/// attention.wgsl's usual cache bindings: read only (the rope kernel
/// stored this batch's keys and values before).
pub const CACHE_READ: &str = "@group(0) @binding(1) var<storage, read> kc: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> vc: array<vec4<u32>>;
const NEW_TOKEN: bool = false;
fn new_k(i: u32) -> f32 { return 0.0; }
fn new_v(i: u32) -> f32 { return 0.0; }
fn new_angle(i: u32) -> vec2<f32> { return vec2<f32>(1.0, 0.0); }
fn put_kv(is_v: bool, i: u32, w: vec4<u32>) {}
";

/// attention.wgsl for one new token (`attend` with `NEW_TOKEN`): its
/// key and value come unrotated from `k_new` / `v_new`, with the cos/sin
/// table, and the kernel stores them into the cache itself (so the cache
/// is read-write).
pub const CACHE_NEW_TOKEN: &str =
    "@group(0) @binding(1) var<storage, read_write> kc: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> vc: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> k_new: array<f32>;
@group(0) @binding(6) var<storage, read> v_new: array<f32>;
@group(0) @binding(7) var<storage, read> cs: array<f32>;
const NEW_TOKEN: bool = true;
fn new_k(i: u32) -> f32 { return k_new[i]; }
fn new_v(i: u32) -> f32 { return v_new[i]; }
fn new_angle(i: u32) -> vec2<f32> { return vec2<f32>(cs[2u * i], cs[2u * i + 1u]); }
fn put_kv(is_v: bool, i: u32, w: vec4<u32>) {
    if is_v {
        vc[i] = w;
    } else {
        kc[i] = w;
    }
}
";

/// Per-token int8 activation quantization, optionally after RMSNorm (entry
/// `quantize`).
pub const QUANT: Shader = Shader {
    rowquant: true,
    ..shader(
        "quant.wgsl",
        include_str!("../wgsl/quant.wgsl"),
        true,
        false,
    )
};
/// Ternary × int8 matrix product for I2_S, TQ2_0 and TQ1_0 (entries `matmul`,
/// and `matvec` / `matvec3` for one token, which quantize their own input).
pub const TERNARY: Shader = Shader {
    alt: Some((NO_THIRD, THIRD)),
    rowquant: true,
    ..shader(
        "ternary.wgsl",
        include_str!("../wgsl/ternary.wgsl"),
        true,
        true,
    )
};
/// RMSNorm (entry `rms_norm`).
pub const NORM: Shader = shader("norm.wgsl", include_str!("../wgsl/norm.wgsl"), false, false);
/// Rotary embedding, and the store of keys and values into the KV cache
/// (entry `rope`).
pub const ROPE: Shader = shader("rope.wgsl", include_str!("../wgsl/rope.wgsl"), false, true);
/// Attention over the KV cache (entry `attend`).
pub const ATTENTION: Shader = Shader {
    alt: Some((CACHE_READ, CACHE_NEW_TOKEN)),
    reduce: true,
    halves: true,
    ..shader(
        "attention.wgsl",
        include_str!("../wgsl/attention.wgsl"),
        false,
        true,
    )
};
/// GLU and residual add (entries `glu`, `add`).
pub const ELEMENTWISE: Shader = shader(
    "elementwise.wgsl",
    include_str!("../wgsl/elementwise.wgsl"),
    false,
    false,
);
/// Embedding lookup and LM head (entries `embed`, `logits`).
pub const TABLE: Shader = Shader {
    halves: true,
    ..shader(
        "table.wgsl",
        include_str!("../wgsl/table.wgsl"),
        false,
        true,
    )
};

/// Every shader.
pub const ALL: [Shader; 7] = [QUANT, TERNARY, NORM, ROPE, ATTENTION, ELEMENTWISE, TABLE];

impl Shader {
    /// The full source as the backend compiles it: preludes, then the file.
    pub fn source(&self, dot4: Dot4, halves: Halves) -> String {
        self.source_with(dot4, halves, false)
    }

    /// [`Shader::source`], with the alternate prelude (see
    /// [`Shader::alt`]) where `alt`.
    pub fn source_with(&self, dot4: Dot4, halves: Halves, alt: bool) -> String {
        let mut s = String::new();
        if self.dot4 {
            s.push_str(dot4.prelude());
        }
        if self.f16 || self.halves {
            s.push_str(F16);
        }
        if self.halves {
            s.push_str(halves.prelude());
        }
        if let Some((usual, other)) = self.alt {
            s.push_str(if alt { other } else { usual });
        }
        if self.reduce || self.rowquant {
            s.push_str(REDUCE);
        }
        if self.rowquant {
            s.push_str(ROWQUANT);
        }
        s.push_str(self.src);
        s
    }
}

/// How `dot4(a, b)` (four signed bytes of `a` times those of `b`, summed)
/// is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dot4 {
    /// WGSL's `dot4I8Packed` (the `packed_4x8_integer_dot_product`
    /// language feature; hardware int8 dot products where there are some).
    Packed,
    /// Shifts and multiplies: works everywhere.
    Portable,
}

impl Dot4 {
    pub const ALL: [Dot4; 2] = [Dot4::Packed, Dot4::Portable];

    pub const fn prelude(self) -> &'static str {
        match self {
            Dot4::Packed => "fn dot4(a: u32, b: u32) -> i32 { return dot4I8Packed(a, b); }\n",
            Dot4::Portable => {
                "fn dot4(a: u32, b: u32) -> i32 {\n\
                 \x20   var s = 0;\n\
                 \x20   for (var n = 0u; n < 4u; n++) {\n\
                 \x20       let sh = 24u - 8u * n;\n\
                 \x20       s += (bitcast<i32>(a << sh) >> 24u) * (bitcast<i32>(b << sh) >> 24u);\n\
                 \x20   }\n\
                 \x20   return s;\n\
                 }\n"
            }
        }
    }
}

/// How `halves(w)` turns two f16 values (one u32, element 0 in the low
/// half) into f32: exactly either way, since every f16 is an f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halves {
    /// WGSL's `unpack2x16float`: one instruction on most GPUs, but not
    /// every wgpu backend has it (naga's `SHADER_FLOAT16_IN_FLOAT32`).
    Builtin,
    /// f16.wgsl's integer conversion: works everywhere.
    Portable,
}

impl Halves {
    pub const ALL: [Halves; 2] = [Halves::Builtin, Halves::Portable];

    pub const fn prelude(self) -> &'static str {
        match self {
            Halves::Builtin => "fn halves(w: u32) -> vec2<f32> { return unpack2x16float(w); }\n",
            Halves::Portable => {
                "fn halves(w: u32) -> vec2<f32> {\n\
                 \x20   return vec2<f32>(f16_to_f32(w & 0xffffu), f16_to_f32(w >> 16u));\n\
                 }\n"
            }
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// Parses and validates `src`, with the capability the builtin
    /// `halves` needs (and nothing else) where `halves` is that one.
    fn validate(name: &str, src: &str, halves: Halves) -> naga::Module {
        let module = naga::front::wgsl::parse_str(src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        let caps = match halves {
            Halves::Builtin => naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
            Halves::Portable => naga::valid::Capabilities::empty(),
        };
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        module
    }

    #[test]
    fn every_shader_parses_and_validates() {
        for sh in ALL {
            for d in Dot4::ALL {
                for h in Halves::ALL {
                    validate(sh.name, &sh.source(d, h), h);
                    validate(sh.name, &sh.source_with(d, h, true), h);
                }
            }
        }
    }

    #[test]
    fn entry_points_are_where_the_backend_looks() {
        let want: [(&str, &[&str]); 7] = [
            ("quant.wgsl", &["quantize"]),
            ("ternary.wgsl", &["matmul", "matvec", "matvec3"]),
            ("norm.wgsl", &["rms_norm"]),
            ("rope.wgsl", &["rope"]),
            ("attention.wgsl", &["attend"]),
            ("elementwise.wgsl", &["glu", "add"]),
            ("table.wgsl", &["embed", "logits"]),
        ];
        for (sh, (name, entries)) in ALL.iter().zip(want) {
            assert_eq!(sh.name, name);
            let m = validate(
                name,
                &sh.source(Dot4::Portable, Halves::Portable),
                Halves::Portable,
            );
            let got: Vec<&str> = m.entry_points.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(got, entries, "{name}");
        }
    }
}

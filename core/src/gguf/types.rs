//! ggml tensor types: ids, names and byte sizes as GGUF files store them.
//!
//! Block and type sizes follow ggml (`ggml/src/ggml-common.h`) and are checked
//! against the `gguf` Python package's `GGML_QUANT_SIZES` by
//! `tests/python/test_oracle.py`. Ids 36 to 39 mean different things to
//! bitnet.cpp and to upstream ggml, so an id only becomes a type together with
//! the file's [`Producer`] (see `shared/docs/formats.md`, section 1).

use std::fmt;

/// Who wrote a file, as far as the meaning of type ids is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Producer {
    /// llama.cpp / ggml and everything that follows its type table.
    Upstream,
    /// bitnet.cpp (microsoft/BitNet), whose fork gives ids 36..=39 to
    /// I2_S, I8_S, TL1 and TL2.
    BitnetCpp,
}

impl Producer {
    /// Architectures only bitnet.cpp writes.
    pub const BITNET_CPP_ARCHS: [&'static str; 2] = ["bitnet-b1.58", "bitnet-25"];
    /// `general.file_type` values only bitnet.cpp writes: 40 = MOSTLY_I2_S,
    /// 137 = the first upload of the official 2B4T file.
    pub const BITNET_CPP_FILE_TYPES: [u32; 2] = [40, 137];

    /// Our rule: a file is bitnet.cpp's when its architecture or its file type
    /// is one that only bitnet.cpp produces. Everything else is upstream.
    pub fn detect(architecture: Option<&str>, file_type: Option<u32>) -> Producer {
        let arch = architecture.is_some_and(|a| Self::BITNET_CPP_ARCHS.contains(&a));
        let ftype = file_type.is_some_and(|f| Self::BITNET_CPP_FILE_TYPES.contains(&f));
        if arch || ftype {
            Producer::BitnetCpp
        } else {
            Producer::Upstream
        }
    }
}

macro_rules! ggml_types {
    ($( $variant:ident = $id:literal, $block:literal, $size:literal; )*) => {
        /// A ggml tensor type known to this reader.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $( $variant, )*
        }

        impl GgmlType {
            /// Every type, in id order.
            pub const ALL: &'static [GgmlType] = &[$( GgmlType::$variant, )*];

            /// The id written in GGUF tensor infos.
            pub const fn id(self) -> u32 {
                match self { $( GgmlType::$variant => $id, )* }
            }

            /// ggml's name for the type (`TQ2_0`, `I2_S`, ...).
            pub const fn name(self) -> &'static str {
                match self { $( GgmlType::$variant => stringify!($variant), )* }
            }

            /// Elements per block.
            pub const fn block_size(self) -> u64 {
                match self { $( GgmlType::$variant => $block, )* }
            }

            /// Bytes per block.
            pub const fn type_size(self) -> u64 {
                match self { $( GgmlType::$variant => $size, )* }
            }
        }
    };
}

// variant = id, elements per block, bytes per block.
ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 18;
    Q4_1 = 3, 32, 20;
    Q5_0 = 6, 32, 22;
    Q5_1 = 7, 32, 24;
    Q8_0 = 8, 32, 34;
    Q8_1 = 9, 32, 36;
    Q2_K = 10, 256, 84;
    Q3_K = 11, 256, 110;
    Q4_K = 12, 256, 144;
    Q5_K = 13, 256, 176;
    Q6_K = 14, 256, 210;
    Q8_K = 15, 256, 292;
    IQ2_XXS = 16, 256, 66;
    IQ2_XS = 17, 256, 74;
    IQ3_XXS = 18, 256, 98;
    IQ1_S = 19, 256, 50;
    IQ4_NL = 20, 32, 18;
    IQ3_S = 21, 256, 110;
    IQ2_S = 22, 256, 82;
    IQ4_XS = 23, 256, 136;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, 256, 56;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, 256, 54;
    TQ2_0 = 35, 256, 66;
    // bitnet.cpp's I2_S: 128 weights in 32 bytes, plus one per-tensor trailer
    // (see `I2S_TRAILER_BYTES`). Only valid for `Producer::BitnetCpp`.
    I2_S = 36, 128, 32;
    MXFP4 = 39, 32, 17;
    NVFP4 = 40, 64, 36;
    Q1_0 = 41, 128, 18;
}

/// Bytes bitnet.cpp appends to every I2_S tensor: the f32 scale and padding.
pub const I2S_TRAILER_BYTES: u64 = 32;

/// Why a type id does not name a type this reader accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeIdProblem {
    /// Not in any table we know.
    Unknown,
    /// bitnet.cpp's runtime-only activation type I8_S (37).
    RuntimeOnly,
    /// bitnet.cpp's shape-specific lookup-table layouts TL1 (38) / TL2 (39).
    LookupTable,
    /// Ids 36..=38 in a file that does not identify as bitnet.cpp's:
    /// upstream retired them (IQ4_NL_4_4...), bitnet.cpp reuses them.
    Ambiguous,
}

impl fmt::Display for TypeIdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TypeIdProblem::Unknown => "unknown ggml type id",
            TypeIdProblem::RuntimeOnly => {
                "bitnet.cpp I8_S is a runtime activation type, never stored in files"
            }
            TypeIdProblem::LookupTable => {
                "bitnet.cpp TL1/TL2 tensors depend on a per-shape kernel config that GGUF does \
                 not store; convert the model to I2_S instead"
            }
            TypeIdProblem::Ambiguous => {
                "ids 36..38 are retired upstream and mean I2_S/I8_S/TL1 only in bitnet.cpp files; \
                 this file's general.architecture / general.file_type do not identify it as one"
            }
        })
    }
}

impl GgmlType {
    /// Resolves a stored type id for a file written by `producer`.
    pub fn from_id(id: u32, producer: Producer) -> Result<GgmlType, TypeIdProblem> {
        match (id, producer) {
            (36, Producer::BitnetCpp) => Ok(GgmlType::I2_S),
            (37, Producer::BitnetCpp) => Err(TypeIdProblem::RuntimeOnly),
            (38 | 39, Producer::BitnetCpp) => Err(TypeIdProblem::LookupTable),
            (36..=38, Producer::Upstream) => Err(TypeIdProblem::Ambiguous),
            _ => GgmlType::ALL
                .iter()
                .copied()
                .find(|t| t.id() == id && *t != GgmlType::I2_S)
                .ok_or(TypeIdProblem::Unknown),
        }
    }

    /// Looks a type up by its ggml name, case-insensitively (`tq2_0`, `I2_S`).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// True for the ternary weight types BitNet kernels consume.
    pub const fn is_ternary(self) -> bool {
        matches!(self, GgmlType::I2_S | GgmlType::TQ1_0 | GgmlType::TQ2_0)
    }

    /// Bytes a tensor of `n_elements` takes in a file, or `None` when that
    /// count is not a whole number of blocks or the size overflows `u64`.
    /// I2_S adds bitnet.cpp's 32-byte per-tensor trailer.
    pub fn byte_size(self, n_elements: u64) -> Option<u64> {
        if !n_elements.is_multiple_of(self.block_size()) {
            return None;
        }
        let body = (n_elements / self.block_size()).checked_mul(self.type_size())?;
        match self {
            GgmlType::I2_S => body.checked_add(I2S_TRAILER_BYTES),
            _ => Some(body),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip() {
        for t in GgmlType::ALL {
            let producer = if *t == GgmlType::I2_S {
                Producer::BitnetCpp
            } else {
                Producer::Upstream
            };
            assert_eq!(GgmlType::from_id(t.id(), producer), Ok(*t));
            assert_eq!(GgmlType::from_name(t.name()), Some(*t));
        }
    }

    #[test]
    fn ids_36_to_39_depend_on_the_producer() {
        use GgmlType::*;
        assert_eq!(GgmlType::from_id(36, Producer::BitnetCpp), Ok(I2_S));
        assert_eq!(
            GgmlType::from_id(36, Producer::Upstream),
            Err(TypeIdProblem::Ambiguous)
        );
        assert_eq!(
            GgmlType::from_id(37, Producer::BitnetCpp),
            Err(TypeIdProblem::RuntimeOnly)
        );
        assert_eq!(
            GgmlType::from_id(39, Producer::BitnetCpp),
            Err(TypeIdProblem::LookupTable)
        );
        assert_eq!(GgmlType::from_id(39, Producer::Upstream), Ok(MXFP4));
        assert_eq!(GgmlType::from_id(40, Producer::BitnetCpp), Ok(NVFP4));
        assert_eq!(
            GgmlType::from_id(99, Producer::Upstream),
            Err(TypeIdProblem::Unknown)
        );
    }

    #[test]
    fn producer_detection() {
        assert_eq!(
            Producer::detect(Some("bitnet-b1.58"), None),
            Producer::BitnetCpp
        );
        assert_eq!(
            Producer::detect(Some("bitnet-25"), None),
            Producer::BitnetCpp
        );
        assert_eq!(
            Producer::detect(Some("llama"), Some(40)),
            Producer::BitnetCpp
        );
        assert_eq!(
            Producer::detect(Some("bitnet"), Some(37)),
            Producer::Upstream
        );
        assert_eq!(Producer::detect(None, None), Producer::Upstream);
    }

    #[test]
    fn byte_sizes() {
        // 2B4T attn_q: 2560 x 2560 I2_S = n/4 + 32.
        assert_eq!(GgmlType::I2_S.byte_size(2560 * 2560), Some(2560 * 640 + 32));
        assert_eq!(GgmlType::TQ2_0.byte_size(512), Some(132));
        assert_eq!(GgmlType::TQ1_0.byte_size(512), Some(108));
        assert_eq!(GgmlType::TQ1_0.byte_size(100), None);
        assert_eq!(GgmlType::F32.byte_size(u64::MAX), None);
    }
}

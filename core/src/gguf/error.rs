//! Errors of the GGUF reader: one variant per check, each naming the field
//! (or tensor) and the byte offset where the problem was found.

use super::types::TypeIdProblem;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("file is {len} bytes, too short for a GGUF header (24 bytes)")]
    TooShort { len: u64 },
    #[error("not a GGUF file: magic at offset 0 is \"{}\", expected \"GGUF\"", found.escape_ascii())]
    BadMagic { found: [u8; 4] },
    #[error("big-endian GGUF files are not supported (byte-swapped magic or version at offset 0)")]
    BigEndian,
    #[error("unsupported GGUF version {version} at offset 4 (supported: 2, 3)")]
    UnsupportedVersion { version: u32 },
    #[error("file too large for this platform's address space ({len} bytes)")]
    FileTooLarge { len: u64 },
    #[error("truncated: {field} at offset {offset} needs {needed} bytes, {available} left")]
    Truncated {
        field: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{field} at offset {offset} is {count}, over the limit of {limit}")]
    CountTooLarge {
        field: String,
        offset: u64,
        count: u64,
        limit: u64,
    },
    #[error(
        "{field} at offset {offset} claims {count} entries of at least {min_entry_size} bytes, \
         but only {available} bytes are left"
    )]
    CountExceedsFile {
        field: String,
        offset: u64,
        count: u64,
        min_entry_size: u64,
        available: u64,
    },
    #[error("{field} at offset {offset}: string length {len} is over the limit of {limit}")]
    StringTooLong {
        field: String,
        offset: u64,
        len: u64,
        limit: u64,
    },
    #[error("{field} at offset {offset}: empty string")]
    EmptyString { field: String, offset: u64 },
    #[error("{field} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { field: String, offset: u64 },
    #[error("duplicate metadata key {key:?} at offset {offset}")]
    DuplicateKey { key: String, offset: u64 },
    #[error("{field} at offset {offset}: unknown value type id {type_id} (valid: 0..=12)")]
    BadValueType {
        field: String,
        offset: u64,
        type_id: u32,
    },
    #[error("{field} at offset {offset}: bool byte is {value}, expected 0 or 1")]
    BadBool {
        field: String,
        offset: u64,
        value: u8,
    },
    #[error("{field} at offset {offset}: arrays nested deeper than {limit} levels")]
    NestingTooDeep {
        field: String,
        offset: u64,
        limit: u32,
    },
    #[error("general.alignment at offset {offset} must be a UINT32, found {found}")]
    AlignmentType { offset: u64, found: &'static str },
    #[error(
        "general.alignment at offset {offset} is {value}: must be a non-zero power of two ≤ 1 MiB"
    )]
    BadAlignment { offset: u64, value: u64 },
    #[error("tensor {index} name at offset {offset} is {len} bytes (allowed 1..=63)")]
    BadTensorName { index: u64, offset: u64, len: u64 },
    #[error("duplicate tensor name {name:?} at offset {offset}")]
    DuplicateTensor { name: String, offset: u64 },
    #[error("tensor {name:?} at offset {offset}: n_dims is {n_dims} (allowed 1..=4)")]
    BadDimCount {
        name: String,
        offset: u64,
        n_dims: u32,
    },
    #[error("tensor {name:?} at offset {offset}: dimension {dim} is {value}, over i64::MAX")]
    DimTooLarge {
        name: String,
        offset: u64,
        dim: usize,
        value: u64,
    },
    #[error("tensor {name:?} at offset {offset}: element count overflows 64 bits")]
    ElementCountOverflow { name: String, offset: u64 },
    #[error("tensor {name:?} at offset {offset}: type id {type_id}: {problem}")]
    BadTensorType {
        name: String,
        offset: u64,
        type_id: u32,
        problem: TypeIdProblem,
    },
    #[error(
        "tensor {name:?} at offset {offset}: first dimension {ne0} is not a multiple of \
         {ty}'s block of {block} elements"
    )]
    NotBlockMultiple {
        name: String,
        offset: u64,
        ty: &'static str,
        ne0: u64,
        block: u64,
    },
    #[error("tensor {name:?} at offset {offset}: byte size overflows 64 bits")]
    SizeOverflow { name: String, offset: u64 },
    #[error(
        "tensor data would start at offset {data_start}, beyond the end of the file ({file_len})"
    )]
    DataStartBeyondFile { data_start: u64, file_len: u64 },
    #[error(
        "tensor {name:?}: data offset {data_offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        name: String,
        data_offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {name:?}: bytes {start}..{end} of the data section are out of bounds \
         (data section is {data_len} bytes, starting at file offset {data_start})"
    )]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        data_len: u64,
        data_start: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap at data offset {offset}")]
    TensorOverlap {
        first: String,
        second: String,
        offset: u64,
    },
}

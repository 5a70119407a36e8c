//! GGUF: the container every BitNet model arrives in.
//!
//! [`GgufFile`] maps a file (or takes bytes) and validates the whole header
//! before anything else touches it; tensor data is then borrowed in place.
//! [`GgufWriter`] writes files the reader (and llama.cpp) accepts.

mod error;
mod reader;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{
    GgufFile, GgufHeader, Metadata, ReaderLimits, TensorInfo, TensorView, DEFAULT_ALIGNMENT,
    MAX_ALIGNMENT, MAX_DIMS, MAX_TENSOR_NAME,
};
pub use types::{GgmlType, Producer, TypeIdProblem, I2S_TRAILER_BYTES};
pub use value::{Array, StringArray, Value, ValueType};
pub use writer::{GgufWriter, WriteError};

//! The GGUF writer: fixtures, the converter and tests write files with it.
//!
//! It writes GGUF v3, little-endian: header, metadata in insertion order,
//! tensor infos, then each tensor's data padded to the alignment, in insertion
//! order (the layout llama.cpp and the `gguf` Python package produce). Data can
//! be given as bytes or produced while writing, so a 1.2 GB model never has to
//! sit in memory.

use std::collections::HashSet;
use std::io::{self, Write};

use super::reader::{DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_DIMS, MAX_TENSOR_NAME};
use super::types::GgmlType;
use super::value::{Array, Value};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    #[error("tensor name {0:?} must be 1..=63 bytes")]
    BadTensorName(String),
    #[error("tensor {name:?}: {dims} dims (allowed 1..=4)")]
    BadDims { name: String, dims: usize },
    #[error("tensor {name:?}: {n_elements} elements do not make whole {ty} blocks")]
    NotBlockMultiple {
        name: String,
        ty: GgmlType,
        n_elements: u64,
    },
    #[error("tensor {name:?}: {ty} data must be {expected} bytes, got {actual}")]
    WrongSize {
        name: String,
        ty: GgmlType,
        expected: u64,
        actual: u64,
    },
    #[error("alignment {0} must be a power of two ≤ 1 MiB")]
    BadAlignment(u64),
    #[error(transparent)]
    Io(#[from] io::Error),
}

type Producer = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()>>;

enum Data {
    Bytes(Vec<u8>),
    Lazy(Producer),
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    size: u64,
    data: Data,
}

/// Builds a GGUF file in memory (metadata and tensor table) and writes it out.
pub struct GgufWriter {
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
    keys: HashSet<String>,
    names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
            keys: HashSet::new(),
            names: HashSet::new(),
        }
    }

    /// Sets the data alignment; a non-default one is recorded as
    /// `general.alignment` (UINT32), as GGUF requires.
    pub fn set_alignment(&mut self, alignment: u64) -> Result<(), WriteError> {
        if alignment == 0 || !alignment.is_power_of_two() || alignment > MAX_ALIGNMENT {
            return Err(WriteError::BadAlignment(alignment));
        }
        self.alignment = alignment;
        if alignment != DEFAULT_ALIGNMENT {
            // Bounded by MAX_ALIGNMENT above, so it fits in u32.
            self.add_metadata("general.alignment", Value::U32(alignment as u32))?;
        }
        Ok(())
    }

    pub fn add_metadata(&mut self, key: &str, value: Value) -> Result<(), WriteError> {
        if !self.keys.insert(key.to_owned()) {
            return Err(WriteError::DuplicateKey(key.to_owned()));
        }
        self.metadata.push((key.to_owned(), value));
        Ok(())
    }

    /// Adds a tensor whose data is already in memory. `dims` are in ggml
    /// order (ne0 first).
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), WriteError> {
        let size = self.check_tensor(name, dims, ty)?;
        if data.len() as u64 != size {
            return Err(WriteError::WrongSize {
                name: name.to_owned(),
                ty,
                expected: size,
                actual: data.len() as u64,
            });
        }
        self.push(name, dims, ty, size, Data::Bytes(data));
        Ok(())
    }

    /// Adds a tensor whose data `produce` writes when the file is written. It
    /// must write exactly the tensor's byte size; `write` checks that.
    pub fn add_tensor_with(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        produce: impl FnOnce(&mut dyn Write) -> io::Result<()> + 'static,
    ) -> Result<(), WriteError> {
        let size = self.check_tensor(name, dims, ty)?;
        self.push(name, dims, ty, size, Data::Lazy(Box::new(produce)));
        Ok(())
    }

    fn check_tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, WriteError> {
        if name.is_empty() || name.len() as u64 > MAX_TENSOR_NAME {
            return Err(WriteError::BadTensorName(name.to_owned()));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS as usize {
            return Err(WriteError::BadDims {
                name: name.to_owned(),
                dims: dims.len(),
            });
        }
        let n_elements = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let size = n_elements
            .filter(|_| dims[0].is_multiple_of(ty.block_size()))
            .and_then(|n| ty.byte_size(n))
            .ok_or_else(|| WriteError::NotBlockMultiple {
                name: name.to_owned(),
                ty,
                n_elements: n_elements.unwrap_or(u64::MAX),
            })?;
        if !self.names.insert(name.to_owned()) {
            return Err(WriteError::DuplicateTensor(name.to_owned()));
        }
        Ok(size)
    }

    fn push(&mut self, name: &str, dims: &[u64], ty: GgmlType, size: u64, data: Data) {
        self.tensors.push(PendingTensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            ty,
            size,
            data,
        });
    }

    /// Writes the whole file; returns the number of bytes written.
    pub fn write(self, w: impl Write) -> Result<u64, WriteError> {
        let mut w = CountingWriter { inner: w, count: 0 };
        w.write_all(b"GGUF")?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            write_str(&mut w, key)?;
            w.write_all(&(value.value_type() as u32).to_le_bytes())?;
            write_value(&mut w, value)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_str(&mut w, &t.name)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.ty.id().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offset = align_up(offset + t.size, self.alignment);
        }
        pad(&mut w, self.alignment)?;
        for t in self.tensors {
            let start = w.count;
            match t.data {
                Data::Bytes(b) => w.write_all(&b)?,
                Data::Lazy(produce) => produce(&mut w)?,
            }
            let actual = w.count - start;
            if actual != t.size {
                return Err(WriteError::WrongSize {
                    name: t.name,
                    ty: t.ty,
                    expected: t.size,
                    actual,
                });
            }
            pad(&mut w, self.alignment)?;
        }
        w.flush()?;
        Ok(w.count)
    }

    /// The whole file as bytes.
    pub fn to_bytes(self) -> Result<Vec<u8>, WriteError> {
        let mut v = Vec::new();
        self.write(&mut v)?;
        Ok(v)
    }

    /// Writes the file to `path` through a buffer.
    pub fn write_file(self, path: impl AsRef<std::path::Path>) -> Result<u64, WriteError> {
        let f = std::fs::File::create(path)?;
        self.write(io::BufWriter::with_capacity(1 << 20, f))
    }
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pad<W: Write>(w: &mut CountingWriter<W>, alignment: u64) -> io::Result<()> {
    let n = align_up(w.count, alignment) - w.count;
    w.write_all(&vec![0u8; n as usize])
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(s) => write_str(w, s),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(a) => write_array(w, a),
    }
}

fn write_array(w: &mut impl Write, a: &Array) -> io::Result<()> {
    w.write_all(&(a.element_type() as u32).to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        Array::U8(v) => w.write_all(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => {
            let bytes: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
            w.write_all(&bytes)
        }
        Array::String(v) => {
            for s in v.iter() {
                write_str(w, s)?;
            }
            Ok(())
        }
        Array::Array(v) => {
            for inner in v {
                write_array(w, inner)?;
            }
            Ok(())
        }
    }
}

//! The GGUF reader: parses and validates a header, then hands out tensor data
//! as slices of the memory map (or of the caller's bytes) without copying.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. Every
//! check of `shared/docs/reliability.md` section 3 is made here: all sizes are
//! computed with checked `u64` arithmetic, every count is capped and bounded by
//! the bytes left before anything is allocated, names and keys are unique, and
//! tensors lie aligned, in bounds and apart. No input makes this module panic.
//!
//! Files are memory-mapped read-only ([`GgufFile::open`]): opening reads only
//! the header, and tensor data is paged in when a backend reads it. As with
//! any memory map, a file truncated by another process while it is open makes
//! later reads fault (SIGBUS); replace model files by renaming, not in place.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use super::error::GgufError;
use super::types::{GgmlType, Producer};
use super::value::{Array, StringArray, Value, ValueType};

type Result<T> = std::result::Result<T, GgufError>;

/// The default `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The largest alignment we accept (ggml PR #1516 proposes the same).
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// ggml's `GGML_MAX_NAME` is 64 including the terminating NUL.
pub const MAX_TENSOR_NAME: u64 = 63;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;

/// Caps on what a header may ask for. The defaults are far above any real
/// model and far below what would let a small file exhaust memory.
#[derive(Clone, Copy, Debug)]
pub struct ReaderLimits {
    pub max_tensors: u64,
    pub max_kv: u64,
    pub max_key_len: u64,
    pub max_string_len: u64,
    pub max_array_len: u64,
    /// Array nesting: 1 = plain arrays, 2 = arrays of arrays.
    pub max_array_depth: u32,
}

impl Default for ReaderLimits {
    fn default() -> Self {
        ReaderLimits {
            max_tensors: 1 << 20,
            max_kv: 1 << 20,
            max_key_len: 1 << 16,
            max_string_len: 1 << 24,
            max_array_len: 1 << 28,
            max_array_depth: 2,
        }
    }
}

/// Smallest possible encodings, used to bound counts by the bytes left.
const MIN_KV_SIZE: u64 = 8 + 1 + 4 + 1; // key length, 1-byte key, type, 1-byte value
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 1 + 4 + 8 + 4 + 8; // name len, name, n_dims, 1 dim, type, offset

/// Metadata key-value pairs in file order, with lookup by key.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    /// File offset of each entry's value.
    value_offsets: Vec<u64>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The file offset at which `key`'s value is stored.
    pub fn value_offset(&self, key: &str) -> Option<u64> {
        self.index.get(key).map(|&i| self.value_offsets[i])
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `general.architecture`, when present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous dimension (ne0 = K).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset within the data section, as stored.
    pub offset: u64,
    /// Bytes of data, including I2_S's per-tensor trailer.
    pub size: u64,
    pub n_elements: u64,
}

impl TensorInfo {
    /// ne0: elements per row.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of all dims after the first).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// Everything a GGUF header says, validated.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_start: u64,
    /// Bytes from `data_start` to the end of the file.
    pub data_len: u64,
    pub producer: Producer,
}

impl GgufHeader {
    /// Parses and validates the header in `bytes` (the whole file).
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader> {
        Self::parse_with(bytes, &ReaderLimits::default())
    }

    pub fn parse_with(bytes: &[u8], limits: &ReaderLimits) -> Result<GgufHeader> {
        Parser {
            cur: Cursor { buf: bytes, pos: 0 },
            limits,
        }
        .parse()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8]> {
        let truncated = || GgufError::Truncated {
            field: field.to_owned(),
            offset: self.offset(),
            needed: n,
            available: self.left(),
        };
        let n_usize = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n_usize).ok_or_else(truncated)?;
        let slice = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
}

struct Parser<'a, 'l> {
    cur: Cursor<'a>,
    limits: &'l ReaderLimits,
}

/// How strictly a string is decoded.
#[derive(Clone, Copy, PartialEq)]
enum Text {
    /// Keys: non-empty, strict UTF-8.
    Key,
    /// Values: lossy UTF-8, trailing NULs stripped.
    Value,
}

impl<'a> Parser<'a, '_> {
    fn parse(mut self) -> Result<GgufHeader> {
        let file_len = self.cur.buf.len() as u64;
        if file_len < 24 {
            return Err(GgufError::TooShort { len: file_len });
        }
        let magic: [u8; 4] = self.cur.array("magic")?;
        match &magic {
            b"GGUF" => {}
            b"FUGG" => return Err(GgufError::BigEndian),
            _ => return Err(GgufError::BadMagic { found: magic }),
        }
        let version = self.cur.u32("version")?;
        if version != 0 && version & 0xFFFF == 0 {
            return Err(GgufError::BigEndian);
        }
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { version });
        }

        let tensor_count = self.count(
            "tensor_count",
            self.limits.max_tensors,
            MIN_TENSOR_INFO_SIZE,
        )?;
        let kv_count = self.count("kv_count", self.limits.max_kv, MIN_KV_SIZE)?;

        let metadata = self.metadata(kv_count)?;
        let alignment = alignment(&metadata)?;
        let producer = Producer::detect(
            metadata.architecture(),
            metadata
                .get_u64("general.file_type")
                .and_then(|v| u32::try_from(v).ok()),
        );

        let tensors = self.tensor_infos(tensor_count, producer)?;

        let end_of_infos = self.cur.offset();
        let data_start =
            align_up(end_of_infos, alignment).ok_or(GgufError::DataStartBeyondFile {
                data_start: u64::MAX,
                file_len,
            })?;
        let data_len = match file_len.checked_sub(data_start) {
            Some(len) => len,
            // A file without tensors need not carry the final padding.
            None if tensors.is_empty() => 0,
            None => {
                return Err(GgufError::DataStartBeyondFile {
                    data_start,
                    file_len,
                })
            }
        };
        check_tensor_placement(&tensors, alignment, data_start, data_len)?;

        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_start,
            data_len,
            producer,
        })
    }

    /// Reads a count, caps it, and checks that `count` entries of at least
    /// `min_size` bytes could fit in what is left of the file.
    fn count(&mut self, field: &str, limit: u64, min_size: u64) -> Result<u64> {
        let offset = self.cur.offset();
        let count = self.cur.u64(field)?;
        if count > limit {
            return Err(GgufError::CountTooLarge {
                field: field.to_owned(),
                offset,
                count,
                limit,
            });
        }
        self.fits(field, offset, count, min_size)?;
        Ok(count)
    }

    fn fits(&self, field: &str, offset: u64, count: u64, min_size: u64) -> Result<()> {
        let available = self.cur.left();
        match count.checked_mul(min_size) {
            Some(need) if need <= available => Ok(()),
            _ => Err(GgufError::CountExceedsFile {
                field: field.to_owned(),
                offset,
                count,
                min_entry_size: min_size,
                available,
            }),
        }
    }

    /// A string borrowed from the file where it is valid UTF-8.
    fn string(&mut self, field: &str, limit: u64, text: Text) -> Result<Cow<'a, str>> {
        let offset = self.cur.offset();
        let len = self.cur.u64(field)?;
        if len > limit {
            return Err(GgufError::StringTooLong {
                field: field.to_owned(),
                offset,
                len,
                limit,
            });
        }
        let mut bytes = self.cur.take(len, field)?;
        match text {
            Text::Key => {
                if bytes.is_empty() {
                    return Err(GgufError::EmptyString {
                        field: field.to_owned(),
                        offset,
                    });
                }
                std::str::from_utf8(bytes)
                    .map(Cow::Borrowed)
                    .map_err(|_| GgufError::InvalidUtf8 {
                        field: field.to_owned(),
                        offset,
                    })
            }
            Text::Value => {
                while let [rest @ .., 0] = bytes {
                    bytes = rest;
                }
                Ok(String::from_utf8_lossy(bytes))
            }
        }
    }

    fn metadata(&mut self, kv_count: u64) -> Result<Metadata> {
        let mut md = Metadata::default();
        for i in 0..kv_count {
            let key_offset = self.cur.offset();
            let key = self
                .string(
                    &format!("metadata key #{i}"),
                    self.limits.max_key_len,
                    Text::Key,
                )?
                .into_owned();
            if md.index.contains_key(&key) {
                return Err(GgufError::DuplicateKey {
                    key,
                    offset: key_offset,
                });
            }
            let ty = self.value_type(&key)?;
            let value_offset = self.cur.offset();
            let value = self.value(ty, &key, 0)?;
            md.index.insert(key.clone(), md.entries.len());
            md.entries.push((key, value));
            md.value_offsets.push(value_offset);
        }
        Ok(md)
    }

    fn value_type(&mut self, field: &str) -> Result<ValueType> {
        let offset = self.cur.offset();
        let type_id = self.cur.u32(field)?;
        ValueType::from_id(type_id).ok_or(GgufError::BadValueType {
            field: field.to_owned(),
            offset,
            type_id,
        })
    }

    fn value(&mut self, ty: ValueType, field: &str, depth: u32) -> Result<Value> {
        let c = &mut self.cur;
        Ok(match ty {
            ValueType::U8 => Value::U8(c.u8(field)?),
            ValueType::I8 => Value::I8(i8::from_le_bytes(c.array(field)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(field)?)),
            ValueType::U32 => Value::U32(c.u32(field)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(field)?)),
            ValueType::U64 => Value::U64(c.u64(field)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(field)?)),
            ValueType::Bool => Value::Bool(self.bool(field)?),
            ValueType::String => Value::String(
                self.string(field, self.limits.max_string_len, Text::Value)?
                    .into_owned(),
            ),
            ValueType::Array => Value::Array(self.array(field, depth + 1)?),
        })
    }

    fn bool(&mut self, field: &str) -> Result<bool> {
        let offset = self.cur.offset();
        match self.cur.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(GgufError::BadBool {
                field: field.to_owned(),
                offset,
                value,
            }),
        }
    }

    fn array(&mut self, field: &str, depth: u32) -> Result<Array> {
        let offset = self.cur.offset();
        if depth > self.limits.max_array_depth {
            return Err(GgufError::NestingTooDeep {
                field: field.to_owned(),
                offset,
                limit: self.limits.max_array_depth,
            });
        }
        let elem = self.value_type(field)?;
        let len_offset = self.cur.offset();
        let len = self.cur.u64(field)?;
        if len > self.limits.max_array_len {
            return Err(GgufError::CountTooLarge {
                field: format!("{field} (array length)"),
                offset: len_offset,
                count: len,
                limit: self.limits.max_array_len,
            });
        }
        self.fits(field, len_offset, len, elem.min_size())?;
        // `fits` bounded `len` by the bytes left, so it is a valid usize and
        // the numeric vectors below are never larger than the file.
        let n = len as usize;

        macro_rules! numeric {
            ($variant:ident, $t:ty) => {{
                const W: usize = std::mem::size_of::<$t>();
                let bytes = self.cur.take(len * W as u64, field)?;
                Array::$variant(
                    bytes
                        .chunks_exact(W)
                        .map(|b| {
                            let mut a = [0u8; W];
                            a.copy_from_slice(b);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }

        Ok(match elem {
            ValueType::U8 => Array::U8(self.cur.take(len, field)?.to_vec()),
            ValueType::I8 => numeric!(I8, i8),
            ValueType::U16 => numeric!(U16, u16),
            ValueType::I16 => numeric!(I16, i16),
            ValueType::U32 => numeric!(U32, u32),
            ValueType::I32 => numeric!(I32, i32),
            ValueType::F32 => numeric!(F32, f32),
            ValueType::U64 => numeric!(U64, u64),
            ValueType::I64 => numeric!(I64, i64),
            ValueType::F64 => numeric!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(field)?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = StringArray::new();
                for _ in 0..n {
                    let s = self.string(field, self.limits.max_string_len, Text::Value)?;
                    v.push(&s);
                }
                Array::String(v)
            }
            ValueType::Array => {
                // Grown as parsed: an element in memory is larger than its
                // 12-byte minimum in the file.
                let mut v = Vec::new();
                for _ in 0..n {
                    v.push(self.array(field, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }

    fn tensor_infos(&mut self, count: u64, producer: Producer) -> Result<Vec<TensorInfo>> {
        let mut tensors = Vec::new();
        let mut names: HashSet<String> = HashSet::new();
        for index in 0..count {
            let offset = self.cur.offset();
            let field = format!("tensor #{index} name");
            let len = self.cur.u64(&field)?;
            if len == 0 || len > MAX_TENSOR_NAME {
                return Err(GgufError::BadTensorName { index, offset, len });
            }
            let bytes = self.cur.take(len, &field)?;
            let name = std::str::from_utf8(bytes)
                .map_err(|_| GgufError::InvalidUtf8 {
                    field: field.clone(),
                    offset,
                })?
                .to_owned();
            if !names.insert(name.clone()) {
                return Err(GgufError::DuplicateTensor { name, offset });
            }
            let info = self.tensor_info(name, offset, producer)?;
            tensors.push(info);
        }
        Ok(tensors)
    }

    fn tensor_info(&mut self, name: String, offset: u64, producer: Producer) -> Result<TensorInfo> {
        let field = format!("tensor {name:?}");
        let n_dims = self.cur.u32(&field)?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(GgufError::BadDimCount {
                name,
                offset,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for dim in 0..n_dims as usize {
            let value = self.cur.u64(&field)?;
            if value > i64::MAX as u64 {
                return Err(GgufError::DimTooLarge {
                    name,
                    offset,
                    dim,
                    value,
                });
            }
            dims.push(value);
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| GgufError::ElementCountOverflow {
                name: name.clone(),
                offset,
            })?;
        let type_id = self.cur.u32(&field)?;
        let ty =
            GgmlType::from_id(type_id, producer).map_err(|problem| GgufError::BadTensorType {
                name: name.clone(),
                offset,
                type_id,
                problem,
            })?;
        let ne0 = dims[0];
        if ne0 % ty.block_size() != 0 {
            return Err(GgufError::NotBlockMultiple {
                name,
                offset,
                ty: ty.name(),
                ne0,
                block: ty.block_size(),
            });
        }
        let size = ty
            .byte_size(n_elements)
            .ok_or_else(|| GgufError::SizeOverflow {
                name: name.clone(),
                offset,
            })?;
        let data_offset = self.cur.u64(&field)?;
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset: data_offset,
            size,
            n_elements,
        })
    }
}

fn alignment(md: &Metadata) -> Result<u64> {
    let Some(value) = md.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let offset = md.value_offset("general.alignment").unwrap_or(0);
    let Value::U32(a) = *value else {
        return Err(GgufError::AlignmentType {
            offset,
            found: value.value_type().name(),
        });
    };
    let a = u64::from(a);
    if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
        return Err(GgufError::BadAlignment { offset, value: a });
    }
    Ok(a)
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? / alignment * alignment)
}

fn check_tensor_placement(
    tensors: &[TensorInfo],
    alignment: u64,
    data_start: u64,
    data_len: u64,
) -> Result<()> {
    for t in tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                name: t.name.clone(),
                data_offset: t.offset,
                alignment,
            });
        }
        let end = t.offset.checked_add(t.size).filter(|&e| e <= data_len);
        if end.is_none() {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                start: t.offset,
                end: t.offset.saturating_add(t.size),
                data_len,
                data_start,
            });
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.offset < a.offset + a.size {
            return Err(GgufError::TensorOverlap {
                first: a.name.clone(),
                second: b.name.clone(),
                offset: b.offset,
            });
        }
    }
    Ok(())
}

/// Where the file's bytes live. Tensor data is always borrowed from here.
enum Storage {
    #[cfg(not(target_arch = "wasm32"))]
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
    Static(&'static [u8]),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
            Storage::Static(s) => s,
        }
    }
}

/// A validated GGUF file whose tensor data is read in place.
pub struct GgufFile {
    header: GgufHeader,
    storage: Storage,
}

/// A tensor's table entry and its bytes, borrowed from the file.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

impl GgufFile {
    /// Maps `path` read-only and validates its header. No tensor data is read.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 24 {
            return Err(GgufError::TooShort { len });
        }
        if usize::try_from(len).is_err() {
            return Err(GgufError::FileTooLarge { len });
        }
        // SAFETY: the map is read-only and we never hand out `&mut`. If another
        // process truncates or rewrites the file while it is mapped, reads may
        // fault (SIGBUS) or see changed bytes; that is inherent to memory maps
        // and documented at the top of this module. Validation below works on
        // the bytes as mapped now.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::with_storage(Storage::Mmap(map))
    }

    /// Validates a file held in memory (the wasm path, tests).
    pub fn from_vec(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::with_storage(Storage::Owned(bytes))
    }

    /// Validates a file embedded in the binary (`include_bytes!`).
    pub fn from_static(bytes: &'static [u8]) -> Result<GgufFile> {
        Self::with_storage(Storage::Static(bytes))
    }

    fn with_storage(storage: Storage) -> Result<GgufFile> {
        let header = GgufHeader::parse(storage.bytes())?;
        Ok(GgufFile { header, storage })
    }

    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// Total file size in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// The tensor named `name`, with its data.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let info = self.header.tensors.iter().find(|t| t.name == name)?;
        Some(self.view(info))
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView<'_>> {
        self.header.tensors.iter().map(|t| self.view(t))
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        TensorView {
            info,
            data: self.tensor_data(info),
        }
    }

    /// The bytes of a tensor of this file's table.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        // Parsing proved data_start + offset + size ≤ file length for every
        // entry of the table, and the storage never changes size. An info
        // from another file may not fit: that gives an empty slice.
        let start = self.header.data_start.saturating_add(info.offset);
        let end = start.saturating_add(info.size);
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.storage.bytes().get(s..e))
            .unwrap_or_default()
    }

    /// Says that `bytes` of a tensor (offsets into its data) will not be
    /// read again soon: a backend made its own copy at load (widened,
    /// repacked or requantized weights). For a memory-mapped file on Linux,
    /// the pages lying wholly inside that range leave this process's
    /// resident set; a later read of them maps them again from the page
    /// cache, with the same bytes. For other storage, or elsewhere, nothing
    /// happens. Returns the bytes released.
    pub fn release(&self, info: &TensorInfo, bytes: std::ops::Range<u64>) -> u64 {
        #[cfg(target_os = "linux")]
        if let Storage::Mmap(map) = &self.storage {
            // Pages wholly inside the tensor (4 KiB: with larger pages the
            // map rounds the start down and the length up, which only costs
            // a neighbour a page fault; the count returned is then
            // approximate).
            const PAGE: u64 = 4096;
            let base = self.header.data_start.saturating_add(info.offset);
            let end = base
                .saturating_add(bytes.end.min(info.size))
                .min(self.file_len());
            let start = base.saturating_add(bytes.start.min(info.size)).min(end);
            let (first, last) = (start.next_multiple_of(PAGE), end / PAGE * PAGE);
            if last <= first {
                return 0;
            }
            // SAFETY: the map is shared and read-only, so no page of it was
            // ever written: MADV_DONTNEED only drops page-table entries, and
            // Linux fills a later access from the file's current contents,
            // the same bytes every outstanding slice already refers to (the
            // caveat of a file changed underneath is that of any map; see the
            // module's documentation). The range lies inside the map.
            let advised = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first as usize,
                    (last - first) as usize,
                )
            };
            return match advised {
                Ok(()) => last - first,
                Err(e) => {
                    log::debug!("{}: madvise(DONTNEED) failed: {e}", info.name);
                    0
                }
            };
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (info, bytes);
        0
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.header.version)
            .field("kv", &self.header.metadata.len())
            .field("tensors", &self.header.tensors.len())
            .field("file_len", &self.file_len())
            .finish()
    }
}

//! The malformed-GGUF corpus (`tests/malformed/*.gguf`): one crafted file per
//! reader check of `shared/docs/reliability.md` section 3. Each must give its
//! own error variant, never a panic, and the reader must not allocate more
//! than the file's size plus 1 MiB while refusing it.
//!
//! The files are built here, byte by byte, and compared with the committed
//! copies; `BITNET_BLESS=1 cargo test -p bitnet-rt --test malformed` rewrites
//! them. This is the only test in its binary so the allocation counter sees
//! no other test's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use bitnet::gguf::GgufHeader;

// ---------------------------------------------------------------------------
// Allocation counter
// ---------------------------------------------------------------------------

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------
// A byte builder for hand-made headers
// ---------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw::default()
            .bytes(b"GGUF")
            .u32(version)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(self, v: u8) -> Raw {
        self.bytes(&[v])
    }
    fn u32(self, v: u32) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key).u32(4).u32(v)
    }
    fn kv_str(self, key: &str, v: &str) -> Raw {
        self.str(key).u32(8).str(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    fn pad(mut self, align: usize) -> Raw {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    fn zeros(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// Every corpus file: name, expected error variant, bytes.
fn corpus() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let v3 = |t, k| Raw::new(3, t, k);
    // A valid one-tensor file (F32 [8], 32 bytes of data) to derive from.
    let one_tensor = |dims: &[u64], ty: u32, offset: u64, data: usize| {
        v3(1, 0).tensor("w", dims, ty, offset).pad(32).zeros(data).0
    };
    vec![
        ("empty", "TooShort", vec![]),
        (
            "short_header",
            "TooShort",
            b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00".to_vec(),
        ),
        (
            "bad_magic",
            "BadMagic",
            Raw::default().bytes(b"GGML").u32(3).u64(0).u64(0).0,
        ),
        (
            "big_endian",
            "BigEndian",
            Raw::default()
                .bytes(b"GGUF")
                .u32(3u32.swap_bytes())
                .u64(0)
                .u64(0)
                .0,
        ),
        ("version_1", "UnsupportedVersion", Raw::new(1, 0, 0).0),
        ("version_4", "UnsupportedVersion", Raw::new(4, 0, 0).0),
        ("huge_tensor_count", "CountTooLarge", v3(u64::MAX, 0).0),
        (
            "tensor_count_exceeds_file",
            "CountExceedsFile",
            v3(1000, 0).zeros(64).0,
        ),
        ("huge_kv_count", "CountTooLarge", v3(0, 1 << 40).0),
        (
            "kv_count_exceeds_file",
            "CountExceedsFile",
            v3(0, 100).kv_u32("a", 1).0,
        ),
        (
            "truncated_key",
            "Truncated",
            v3(0, 1).u64(100).bytes(b"general.ar").0,
        ),
        (
            "key_too_long",
            "StringTooLong",
            v3(0, 1).u64(1 << 20).zeros(64).0,
        ),
        ("empty_key", "EmptyString", v3(0, 1).str("").u32(4).u32(1).0),
        (
            "key_bad_utf8",
            "InvalidUtf8",
            v3(0, 1).u64(2).bytes(&[0xC3, 0x28]).u32(4).u32(1).0,
        ),
        (
            "duplicate_key",
            "DuplicateKey",
            v3(0, 2).kv_u32("a.b", 1).kv_u32("a.b", 2).0,
        ),
        (
            "bad_value_type",
            "BadValueType",
            v3(0, 1).str("k").u32(13).u32(0).0,
        ),
        (
            "bad_bool",
            "BadBool",
            v3(0, 1).str("k").u32(7).u8(2).zeros(8).0,
        ),
        (
            "string_too_long",
            "StringTooLong",
            v3(0, 1).str("k").u32(8).u64(1 << 40).zeros(8).0,
        ),
        (
            "string_past_end",
            "Truncated",
            v3(0, 1).str("k").u32(8).u64(1000).bytes(b"abc").0,
        ),
        (
            "array_bad_element_type",
            "BadValueType",
            v3(0, 1).str("k").u32(9).u32(42).u64(1).zeros(8).0,
        ),
        (
            "array_huge_count",
            "CountTooLarge",
            v3(0, 1).str("k").u32(9).u32(0).u64(u64::MAX).0,
        ),
        (
            "array_count_exceeds_file",
            "CountExceedsFile",
            v3(0, 1).str("k").u32(9).u32(6).u64(1000).zeros(40).0,
        ),
        (
            "array_nesting_too_deep",
            "NestingTooDeep",
            v3(0, 1)
                .str("k")
                .u32(9)
                .u32(9)
                .u64(1)
                .u32(9)
                .u64(1)
                .u32(4)
                .u64(1)
                .u32(7)
                .0,
        ),
        (
            "string_array_truncated",
            "Truncated",
            v3(0, 1)
                .str("k")
                .u32(9)
                .u32(8)
                .u64(2)
                .str("a")
                .u64(5)
                .bytes(b"ab")
                .0,
        ),
        (
            "alignment_zero",
            "BadAlignment",
            v3(0, 1).kv_u32("general.alignment", 0).0,
        ),
        (
            "alignment_not_power_of_two",
            "BadAlignment",
            v3(0, 1).kv_u32("general.alignment", 48).0,
        ),
        (
            "alignment_too_large",
            "BadAlignment",
            v3(0, 1).kv_u32("general.alignment", 1 << 21).0,
        ),
        (
            "alignment_wrong_type",
            "AlignmentType",
            v3(0, 1).str("general.alignment").u32(10).u64(32).0,
        ),
        (
            "tensor_name_empty",
            "BadTensorName",
            v3(1, 0).tensor("", &[8], 0, 0).zeros(64).0,
        ),
        (
            "tensor_name_too_long",
            "BadTensorName",
            v3(1, 0).tensor(&"x".repeat(64), &[8], 0, 0).zeros(64).0,
        ),
        (
            "tensor_name_bad_utf8",
            "InvalidUtf8",
            v3(1, 0)
                .u64(2)
                .bytes(&[0xFF, 0xFE])
                .u32(1)
                .u64(8)
                .u32(0)
                .u64(0)
                .zeros(64)
                .0,
        ),
        (
            "duplicate_tensor",
            "DuplicateTensor",
            v3(2, 0)
                .tensor("w", &[8], 0, 0)
                .tensor("w", &[8], 0, 32)
                .pad(32)
                .zeros(64)
                .0,
        ),
        (
            "n_dims_zero",
            "BadDimCount",
            v3(1, 0).tensor("w", &[], 0, 0).zeros(64).0,
        ),
        (
            "n_dims_five",
            "BadDimCount",
            v3(1, 0).tensor("w", &[1, 1, 1, 1, 1], 0, 0).zeros(64).0,
        ),
        (
            "dim_over_i64_max",
            "DimTooLarge",
            v3(1, 0).tensor("w", &[1 << 63], 0, 0).zeros(64).0,
        ),
        (
            "element_count_overflow",
            "ElementCountOverflow",
            v3(1, 0).tensor("w", &[1 << 32, 1 << 32], 0, 0).zeros(64).0,
        ),
        (
            "unknown_type",
            "BadTensorType",
            v3(1, 0).tensor("w", &[8], 99, 0).zeros(64).0,
        ),
        (
            "type_36_without_bitnet_producer",
            "BadTensorType",
            v3(1, 1)
                .kv_str("general.architecture", "llama")
                .tensor("w", &[128], 36, 0)
                .pad(32)
                .zeros(64)
                .0,
        ),
        (
            "tl2_in_bitnet_file",
            "BadTensorType",
            v3(1, 1)
                .kv_str("general.architecture", "bitnet-b1.58")
                .tensor("w", &[128], 39, 0)
                .pad(32)
                .zeros(64)
                .0,
        ),
        (
            "not_block_multiple",
            "NotBlockMultiple",
            v3(1, 0).tensor("w", &[100, 2], 35, 0).zeros(64).0,
        ),
        (
            "byte_size_overflow",
            "SizeOverflow",
            v3(1, 0).tensor("w", &[1 << 62], 28, 0).zeros(64).0,
        ),
        (
            "data_start_beyond_file",
            "DataStartBeyondFile",
            v3(1, 0).tensor("w", &[8], 0, 0).0,
        ),
        (
            "misaligned_tensor",
            "MisalignedTensor",
            one_tensor(&[8], 0, 4, 64),
        ),
        (
            "tensor_out_of_bounds",
            "TensorOutOfBounds",
            one_tensor(&[8], 0, 32, 32),
        ),
        (
            "tensor_offset_wraps",
            "TensorOutOfBounds",
            one_tensor(&[8], 0, u64::MAX - 31, 32),
        ),
        (
            "overlapping_tensors",
            "TensorOverlap",
            v3(2, 0)
                .tensor("a", &[16], 0, 0)
                .tensor("b", &[8], 0, 32)
                .pad(32)
                .zeros(96)
                .0,
        ),
        (
            "truncated_tensor_info",
            "Truncated",
            v3(1, 0).str("w").u32(2).u64(8).zeros(12).0,
        ),
        // 128 I2_S weights need 32 code bytes plus the 32-byte scale trailer.
        (
            "i2s_missing_scale",
            "TensorOutOfBounds",
            v3(1, 1)
                .kv_str("general.architecture", "bitnet-b1.58")
                .tensor("w", &[128], 36, 0)
                .pad(32)
                .zeros(32)
                .0,
        ),
    ]
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/malformed")
}

#[test]
fn malformed_corpus() {
    let corpus = corpus();
    assert!(corpus.len() >= 25);
    let dir = corpus_dir();
    let bless = std::env::var_os("BITNET_BLESS").is_some();
    let mut failures = Vec::new();
    for (i, (name, expected, bytes)) in corpus.iter().enumerate() {
        let path = dir.join(format!("{:02}_{name}.gguf", i + 1));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with BITNET_BLESS=1)", path.display()));
        assert!(
            &on_disk == bytes,
            "{} differs from its builder",
            path.display()
        );

        let before = CURRENT.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let result = GgufHeader::parse(&on_disk);
        let peak = PEAK.load(Ordering::Relaxed) - before;

        match result {
            Ok(_) => failures.push(format!("{name}: parsed, expected {expected}")),
            Err(e) => {
                let debug = format!("{e:?}");
                let message = e.to_string();
                if !debug.starts_with(expected) {
                    failures.push(format!("{name}: expected {expected}, got {debug}"));
                }
                if message.is_empty() {
                    failures.push(format!("{name}: empty message"));
                }
            }
        }
        if peak > on_disk.len() + (1 << 20) {
            failures.push(format!(
                "{name}: peak allocation {peak} for a {}-byte file",
                on_disk.len()
            ));
        }
    }
    // Nothing stale in the directory.
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, corpus.len(), "stray files in {}", dir.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

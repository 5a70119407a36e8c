//! Writer → reader round trip, 1,000 random files: every metadata value type,
//! nested arrays, random tensor types and shapes, random alignment. The reader
//! must give back exactly what was written, and tensor bytes in place.

mod common;

use bitnet::gguf::{Array, GgmlType, GgufFile, GgufWriter, StringArray, Value};
use proptest::prelude::*;

fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), Just(-0.0f32), -1e30f32..1e30f32]
}

fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![Just(-0.0f64), -1e300f64..1e300f64]
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including empty strings, but no trailing NUL: the reader
    // strips those (real files carry them).
    "\\PC{0,12}".prop_map(|s: String| s.trim_end_matches('\0').to_owned())
}

fn flat_array() -> impl Strategy<Value = Array> {
    let n = 0..6usize;
    prop_oneof![
        prop::collection::vec(any::<u8>(), n.clone()).prop_map(Array::U8),
        prop::collection::vec(any::<i8>(), n.clone()).prop_map(Array::I8),
        prop::collection::vec(any::<u16>(), n.clone()).prop_map(Array::U16),
        prop::collection::vec(any::<i16>(), n.clone()).prop_map(Array::I16),
        prop::collection::vec(any::<u32>(), n.clone()).prop_map(Array::U32),
        prop::collection::vec(any::<i32>(), n.clone()).prop_map(Array::I32),
        prop::collection::vec(finite_f32(), n.clone()).prop_map(Array::F32),
        prop::collection::vec(any::<bool>(), n.clone()).prop_map(Array::Bool),
        prop::collection::vec(text(), n.clone())
            .prop_map(|v| Array::String(v.iter().collect::<StringArray>())),
        prop::collection::vec(any::<u64>(), n.clone()).prop_map(Array::U64),
        prop::collection::vec(any::<i64>(), n.clone()).prop_map(Array::I64),
        prop::collection::vec(finite_f64(), n).prop_map(Array::F64),
    ]
}

fn array() -> impl Strategy<Value = Array> {
    prop_oneof![
        4 => flat_array(),
        1 => prop::collection::vec(flat_array(), 0..4).prop_map(Array::Array),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        finite_f32().prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        text().prop_map(Value::String),
        array().prop_map(Value::Array),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        finite_f64().prop_map(Value::F64),
    ]
}

const TYPES: [GgmlType; 10] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q6_K,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::I2_S,
    GgmlType::I8,
    GgmlType::Q4_K,
];

#[derive(Debug, Clone)]
struct TensorSpec {
    dims: Vec<u64>,
    ty: GgmlType,
    seed: u8,
}

fn tensor() -> impl Strategy<Value = TensorSpec> {
    (
        0..TYPES.len(),
        1..4u64,
        prop::collection::vec(1..4u64, 0..3),
        any::<u8>(),
    )
        .prop_map(|(t, blocks, rest, seed)| {
            let ty = TYPES[t];
            let mut dims = vec![blocks * ty.block_size()];
            dims.extend(rest);
            TensorSpec { dims, ty, seed }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn writer_reader_round_trip(
        values in prop::collection::vec(value(), 0..8),
        tensors in prop::collection::vec(tensor(), 0..6),
        align_log2 in 0u32..9,
    ) {
        let alignment = 1u64 << align_log2;
        let mut w = GgufWriter::new();
        w.set_alignment(alignment).unwrap();
        // I2_S needs a bitnet.cpp architecture to be read as I2_S.
        w.add_metadata("general.architecture", Value::String("bitnet-b1.58".into())).unwrap();
        let mut expected_md = vec![];
        if alignment != 32 {
            expected_md.push(("general.alignment".to_string(), Value::U32(alignment as u32)));
        }
        expected_md.push(("general.architecture".to_string(), Value::String("bitnet-b1.58".into())));
        for (i, v) in values.iter().enumerate() {
            let key = format!("test.key{i}");
            w.add_metadata(&key, v.clone()).unwrap();
            expected_md.push((key, v.clone()));
        }
        let mut expected_data = vec![];
        for (i, t) in tensors.iter().enumerate() {
            let n: u64 = t.dims.iter().product();
            let size = t.ty.byte_size(n).unwrap() as usize;
            let data: Vec<u8> = (0..size).map(|j| (j as u8).wrapping_mul(31) ^ t.seed).collect();
            let name = format!("blk.{i}.w");
            w.add_tensor(&name, &t.dims, t.ty, data.clone()).unwrap();
            expected_data.push((name, t.dims.clone(), t.ty, data));
        }
        let bytes = w.to_bytes().unwrap();
        let file = GgufFile::from_vec(bytes).unwrap();

        prop_assert_eq!(file.version(), 3);
        prop_assert_eq!(file.header().alignment, alignment);
        let got: Vec<(String, Value)> =
            file.metadata().iter().map(|(k, v)| (k.to_owned(), v.clone())).collect();
        prop_assert_eq!(got, expected_md);
        prop_assert_eq!(file.tensor_infos().len(), expected_data.len());
        for (view, (name, dims, ty, data)) in file.tensors().zip(&expected_data) {
            prop_assert_eq!(&view.info.name, name);
            prop_assert_eq!(&view.info.dims, dims);
            prop_assert_eq!(view.info.ty, *ty);
            prop_assert_eq!(view.data, &data[..]);
            prop_assert_eq!((file.header().data_start + view.info.offset) % alignment, 0);
        }
    }
}

#[test]
fn string_values_lose_trailing_nuls_and_bad_utf8_is_replaced() {
    let mut w = GgufWriter::new();
    w.add_metadata("a", Value::String("abc\0\0".into()))
        .unwrap();
    let mut bytes = w.to_bytes().unwrap();
    let file = GgufFile::from_vec(bytes.clone()).unwrap();
    assert_eq!(file.metadata().get_str("a"), Some("abc"));
    // Corrupt one byte of the value into invalid UTF-8: values are lossy.
    let pos = bytes.windows(3).position(|w| w == b"abc").unwrap();
    bytes[pos + 1] = 0xFF;
    let file = GgufFile::from_vec(bytes).unwrap();
    assert_eq!(file.metadata().get_str("a"), Some("a\u{FFFD}c"));
}

#[test]
fn opens_a_file_from_disk_without_copying_tensor_data() {
    let dir = std::env::temp_dir().join(format!("bitnet-rt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let cfg = bitnet::fixture::FixtureConfig::tiny(GgmlType::TQ2_0);
    cfg.write_file(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let from_memory = GgufFile::from_vec(std::fs::read(&path).unwrap()).unwrap();
    for (a, b) in file.tensors().zip(from_memory.tensors()) {
        assert_eq!(a.info, b.info);
        assert_eq!(a.data, b.data);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn a_released_tensor_leaves_the_resident_set_and_reads_the_same() {
    let dir = std::env::temp_dir().join(format!("bitnet-rt-release-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.gguf");
    let big: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let small = vec![7u8; 100];
    let mut w = GgufWriter::new();
    w.add_tensor("small", &[100], GgmlType::I8, small.clone())
        .unwrap();
    w.add_tensor("big", &[big.len() as u64], GgmlType::I8, big.clone())
        .unwrap();
    w.write_file(&path).unwrap();

    let file = GgufFile::open(&path).unwrap();
    let view = file.tensor("big").unwrap();
    let ptr = view.data.as_ptr();
    assert_eq!(view.data, &big[..]);
    let before = common::resident_bytes_of_mapping(ptr);
    assert!(
        before >= big.len() as u64,
        "resident {before} after reading it all"
    );

    let len = big.len() as u64;
    // The first half, then all of it: only pages wholly inside the range
    // (at most a page lost at each end).
    let half = file.release(view.info, 0..len / 2);
    assert!(half <= len / 2 && half + 2 * 4096 >= len / 2);
    let at_half = common::resident_bytes_of_mapping(ptr);
    assert!(
        at_half + half <= before,
        "resident {before} -> {at_half}, released {half}"
    );
    // The second half stays (but for one page, up to 64 KiB on some
    // kernels, rounded in by the system).
    assert!(at_half + 65536 >= len / 2, "resident {at_half} after half");
    let released = file.release(view.info, 0..len);
    assert!(released <= len && released + 2 * 4096 >= len);
    let after = common::resident_bytes_of_mapping(ptr);
    assert!(
        after + released <= before,
        "resident {before} -> {after}, released {released}"
    );
    // Too small to hold a whole page, or an empty range: nothing released.
    let small_info = file.tensor("small").unwrap().info;
    assert_eq!(file.release(small_info, 0..100), 0);
    assert_eq!(file.release(view.info, len..2 * len), 0);

    // Read again: the same bytes, paged back in.
    assert_eq!(file.tensor("big").unwrap().data, &big[..]);
    assert_eq!(file.tensor("small").unwrap().data, &small[..]);
    assert!(common::resident_bytes_of_mapping(ptr) >= big.len() as u64);

    // Bytes in memory are never released.
    let in_memory = GgufFile::from_vec(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        in_memory.release(in_memory.tensor("big").unwrap().info, 0..len),
        0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

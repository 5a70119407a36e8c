//! A hand-made I2_S tensor asserted byte by byte against
//! `shared/docs/formats.md` (section 1, I2_S): the expected bytes below were
//! worked out by hand from that text, not produced by our packer.
//!
//! Tensor: ne0 = 128 (K), ne1 = 2 rows, scale 0.5.
//! - Row 0: weights 0..31 = +1, 32..63 = 0, 64..95 = -1, 96..127 = +1.
//!   Codes 2, 1, 0, 2 → every byte is 0b10_01_00_10 = 0x92.
//! - Row 1: weight p (p < 32) = (p mod 3) - 1, weights 32..127 = 0.
//!   Byte p = code(p) << 6 | 0b01_01_01 → 0x15, 0x55, 0x95, 0x15, ...
//! - Then the f32 scale 0.5 little-endian (00 00 00 3F) and 28 zero bytes.

use bitnet::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use bitnet::quant;

fn weights() -> Vec<i8> {
    let mut w = Vec::new();
    for i in 0..128 {
        w.push(match i / 32 {
            0 | 3 => 1,
            1 => 0,
            _ => -1,
        });
    }
    for p in 0..128 {
        w.push(if p < 32 { (p % 3) as i8 - 1 } else { 0 });
    }
    w
}

fn expected_bytes() -> Vec<u8> {
    let mut b = vec![0x92u8; 32];
    for p in 0..32 {
        b.push([0x15, 0x55, 0x95][p % 3]);
    }
    b.extend_from_slice(&[0x00, 0x00, 0x00, 0x3F]);
    b.extend_from_slice(&[0u8; 28]);
    b
}

#[test]
fn i2s_encoding_matches_formats_md() {
    let bytes = quant::encode_ternary(GgmlType::I2_S, &weights(), 0.5).unwrap();
    assert_eq!(bytes, expected_bytes());
}

#[test]
fn i2s_file_reads_back_byte_for_byte() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("bitnet-b1.58".into()))
        .unwrap();
    w.add_tensor(
        "blk.0.attn_q.weight",
        &[128, 2],
        GgmlType::I2_S,
        expected_bytes(),
    )
    .unwrap();
    let file = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
    let t = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(t.info.ty, GgmlType::I2_S);
    assert_eq!(t.info.size, 128 * 2 / 4 + 32);
    assert_eq!(t.data, &expected_bytes()[..]);
    let values = quant::dequantize(GgmlType::I2_S, t.data, 256).unwrap();
    let expect: Vec<f32> = weights().iter().map(|&w| f32::from(w) * 0.5).collect();
    assert_eq!(values, expect);
}

#[test]
fn i2s_needs_a_bitnet_producer() {
    // The same tensor in a file that does not identify as bitnet.cpp's.
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.add_tensor("w", &[128, 2], GgmlType::I2_S, expected_bytes())
        .unwrap();
    let err = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap_err();
    assert!(err.to_string().contains("type id 36"), "{err}");
    // ...unless its file type is bitnet.cpp's MOSTLY_I2_S (40).
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.add_metadata("general.file_type", Value::U32(40)).unwrap();
    w.add_tensor("w", &[128, 2], GgmlType::I2_S, expected_bytes())
        .unwrap();
    assert!(GgufFile::from_vec(w.to_bytes().unwrap()).is_ok());
}

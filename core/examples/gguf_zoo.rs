//! Writes a GGUF file holding every metadata value type (scalars, typed
//! arrays, an array of arrays), a non-default alignment and tensors of every
//! float and ternary type we encode. `tests/python/test_oracle.py` reads it
//! with the `gguf` Python package to check our writer against llama.cpp's.
//!
//! Usage: `cargo run -p bitnet-rt --example gguf_zoo -- OUT.gguf`

use bitnet::gguf::{Array, GgmlType, GgufWriter, Value};
use bitnet::quant;
use half::{bf16, f16};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).ok_or("usage: gguf_zoo OUT.gguf")?;
    let mut w = GgufWriter::new();
    w.set_alignment(128)?;
    w.add_metadata("general.architecture", Value::String("bitnet".into()))?;
    let scalars = [
        ("zoo.u8", Value::U8(255)),
        ("zoo.i8", Value::I8(-128)),
        ("zoo.u16", Value::U16(65535)),
        ("zoo.i16", Value::I16(-32768)),
        ("zoo.u32", Value::U32(u32::MAX)),
        ("zoo.i32", Value::I32(i32::MIN)),
        ("zoo.f32", Value::F32(-1.5e-3)),
        ("zoo.bool", Value::Bool(true)),
        ("zoo.string", Value::String("Ġhello ✓ 日本語".into())),
        ("zoo.u64", Value::U64(u64::MAX)),
        ("zoo.i64", Value::I64(i64::MIN)),
        ("zoo.f64", Value::F64(1e-300)),
    ];
    for (k, v) in scalars {
        w.add_metadata(k, v)?;
    }
    let arrays = [
        ("zoo.arr_u8", Array::U8(vec![0, 7, 255])),
        ("zoo.arr_i8", Array::I8(vec![-1, 1])),
        ("zoo.arr_u16", Array::U16(vec![1, 2, 3])),
        ("zoo.arr_i16", Array::I16(vec![-3, 3])),
        ("zoo.arr_u32", Array::U32((0..100).collect())),
        ("zoo.arr_i32", Array::I32(vec![1, 3, 3, 1])),
        ("zoo.arr_f32", Array::F32(vec![0.1, 0.2, -0.0])),
        ("zoo.arr_bool", Array::Bool(vec![false, true])),
        (
            "zoo.arr_str",
            Array::String(["a", "", "<|eot_id|>"].into_iter().collect()),
        ),
        ("zoo.arr_u64", Array::U64(vec![u64::MAX])),
        ("zoo.arr_i64", Array::I64(vec![i64::MIN, 0])),
        ("zoo.arr_f64", Array::F64(vec![0.25, 1e300])),
        (
            "zoo.arr_nested",
            Array::Array(vec![Array::I32(vec![1, 2]), Array::I32(vec![3])]),
        ),
    ];
    for (k, a) in arrays {
        w.add_metadata(k, Value::Array(a))?;
    }

    let x: Vec<f32> = (0..512)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    w.add_tensor(
        "f32",
        &[64, 8],
        GgmlType::F32,
        x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )?;
    let h: Vec<u8> = x
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    w.add_tensor("f16", &[128, 4], GgmlType::F16, h)?;
    let b: Vec<u8> = x
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    w.add_tensor("bf16", &[512], GgmlType::BF16, b)?;
    w.add_tensor(
        "q8_0",
        &[256, 2],
        GgmlType::Q8_0,
        quant::float::q8_0_quantize(&x),
    )?;
    let t: Vec<i8> = (0..512).map(|i| (i % 3) as i8 - 1).collect();
    w.add_tensor(
        "tq1_0",
        &[256, 2],
        GgmlType::TQ1_0,
        quant::encode_ternary(GgmlType::TQ1_0, &t, 0.75)?,
    )?;
    w.add_tensor(
        "tq2_0",
        &[512],
        GgmlType::TQ2_0,
        quant::encode_ternary(GgmlType::TQ2_0, &t, 1.25)?,
    )?;
    w.write_file(out)?;
    Ok(())
}

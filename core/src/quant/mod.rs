//! Tensor codecs: scalar reference code for every type a BitNet file uses.
//!
//! [`ternary`] holds the ternary weight packings (I2_S, TQ1_0, TQ2_0),
//! [`float`] the float and 8-bit types (F32, F16, BF16, Q8_0, Q6_K). These
//! are the references fast kernels are tested against.

pub mod act;
pub mod float;
pub mod ternary;

use crate::gguf::GgmlType;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("{op} is not implemented for {ty}")]
    Unsupported { op: &'static str, ty: GgmlType },
    #[error("{ty}: {n} elements need {expected} bytes, got {actual}")]
    WrongSize {
        ty: GgmlType,
        n: usize,
        expected: u64,
        actual: usize,
    },
    #[error("{ty}: {n} elements are not whole blocks of {block}")]
    NotBlockMultiple { ty: GgmlType, n: usize, block: u64 },
    #[error("ternary weights must be -1, 0 or 1; found {value} at index {index}")]
    NotTernary { index: usize, value: i8 },
}

fn check_size(ty: GgmlType, data: &[u8], n: usize) -> Result<(), QuantError> {
    let expected = ty.byte_size(n as u64).ok_or(QuantError::NotBlockMultiple {
        ty,
        n,
        block: ty.block_size(),
    })?;
    if data.len() as u64 != expected {
        return Err(QuantError::WrongSize {
            ty,
            n,
            expected,
            actual: data.len(),
        });
    }
    Ok(())
}

/// Dequantizes `n` elements of type `ty` to f32.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    let mut out = Vec::new();
    dequantize_into(ty, data, n, &mut out)?;
    Ok(out)
}

/// [`dequantize`] into `out` (cleared first), reusing its buffer.
pub fn dequantize_into(
    ty: GgmlType,
    data: &[u8],
    n: usize,
    out: &mut Vec<f32>,
) -> Result<(), QuantError> {
    check_size(ty, data, n)?;
    out.clear();
    out.reserve(n);
    match ty {
        GgmlType::F32 => float::f32_dequantize(data, out),
        GgmlType::F16 => float::f16_dequantize(data, out),
        GgmlType::BF16 => float::bf16_dequantize(data, out),
        GgmlType::Q8_0 => float::q8_0_dequantize(data, out),
        GgmlType::Q6_K => float::q6_k_dequantize(data, out),
        GgmlType::TQ1_0 => ternary::dequantize_blocks::<ternary::BlockTQ1_0>(data, out),
        GgmlType::TQ2_0 => ternary::dequantize_blocks::<ternary::BlockTQ2_0>(data, out),
        GgmlType::I2_S => {
            // Sizes were checked above, so both reads succeed.
            let scale = ternary::i2s_scale(data, n).unwrap_or_default();
            let w = ternary::i2s_decode(data, n).unwrap_or_default();
            out.extend(w.iter().map(|&w| f32::from(w) * scale));
        }
        _ => {
            return Err(QuantError::Unsupported {
                op: "dequantization",
                ty,
            })
        }
    }
    Ok(())
}

/// The ternary weights (each -1, 0 or 1; block scales dropped) of `n`
/// elements of a ternary type, in tensor order.
pub fn decode_ternary(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<i8>, QuantError> {
    check_size(ty, data, n)?;
    fn blocks<B: ternary::TernaryBlock>(data: &[u8], n: usize) -> Vec<i8> {
        let mut out = Vec::with_capacity(n);
        for chunk in data.chunks_exact(B::BYTES).take(n / ternary::QK_K) {
            out.extend_from_slice(&B::read(chunk).unpack());
        }
        out
    }
    Ok(match ty {
        // The size was checked above, so the read succeeds.
        GgmlType::I2_S => ternary::i2s_decode(data, n).unwrap_or_default(),
        GgmlType::TQ2_0 => blocks::<ternary::BlockTQ2_0>(data, n),
        GgmlType::TQ1_0 => blocks::<ternary::BlockTQ1_0>(data, n),
        _ => {
            return Err(QuantError::Unsupported {
                op: "ternary decoding",
                ty,
            })
        }
    })
}

/// Encodes ternary weights (values in {-1, 0, 1}) with one scale per tensor
/// in a ternary type: the fixture generator and the converter use this.
pub fn encode_ternary(ty: GgmlType, weights: &[i8], scale: f32) -> Result<Vec<u8>, QuantError> {
    if let Some((index, &value)) = weights
        .iter()
        .enumerate()
        .find(|(_, w)| !(-1..=1).contains(*w))
    {
        return Err(QuantError::NotTernary { index, value });
    }
    let n = weights.len();
    if !(n as u64).is_multiple_of(ty.block_size()) {
        return Err(QuantError::NotBlockMultiple {
            ty,
            n,
            block: ty.block_size(),
        });
    }
    Ok(match ty {
        GgmlType::I2_S => ternary::i2s_encode(weights, scale),
        GgmlType::TQ1_0 => ternary::encode_blocks::<ternary::BlockTQ1_0>(weights, scale),
        GgmlType::TQ2_0 => ternary::encode_blocks::<ternary::BlockTQ2_0>(weights, scale),
        _ => {
            return Err(QuantError::Unsupported {
                op: "ternary encoding",
                ty,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_typed() {
        assert_eq!(
            dequantize(GgmlType::Q4_K, &[0; 144], 256),
            Err(QuantError::Unsupported {
                op: "dequantization",
                ty: GgmlType::Q4_K
            })
        );
        assert!(matches!(
            dequantize(GgmlType::TQ2_0, &[0; 65], 256),
            Err(QuantError::WrongSize { .. })
        ));
        assert_eq!(
            encode_ternary(GgmlType::TQ2_0, &[2; 256], 1.0),
            Err(QuantError::NotTernary { index: 0, value: 2 })
        );
    }
}

/// Checks a tensor's values (`--check-tensors`): no NaN or infinity in float
/// data or in block scales, and no unused code 3 in 2-bit ternary codes.
/// Works through the data in slices so a 656 MB table needs no f32 copy.
pub fn check_values(ty: GgmlType, data: &[u8], n: usize) -> Result<(), String> {
    check_size(ty, data, n).map_err(|e| e.to_string())?;
    let bad_code = |i: usize| Err(format!("unused 2-bit code 3 in byte {i}"));
    match ty {
        GgmlType::I2_S => {
            let scale = ternary::i2s_scale(data, n).unwrap_or(f32::NAN);
            if !scale.is_finite() {
                return Err(format!("scale is {scale}"));
            }
            if let Some(i) = data[..n / 4].iter().position(|&b| has_code3(b)) {
                return bad_code(i);
            }
        }
        GgmlType::TQ2_0 | GgmlType::TQ1_0 => {
            let block = ty.type_size() as usize;
            for (b, chunk) in data.chunks_exact(block).enumerate() {
                let d = half::f16::from_le_bytes([chunk[block - 2], chunk[block - 1]]);
                if !d.is_finite() {
                    return Err(format!("block {b} has scale {d}"));
                }
                if ty == GgmlType::TQ2_0 {
                    if let Some(i) = chunk[..64].iter().position(|&b| has_code3(b)) {
                        return bad_code(b * block + i);
                    }
                }
            }
        }
        _ => {
            // Dequantize a slice of whole blocks at a time.
            let per_chunk = (ty.block_size() as usize) * 4096;
            let bytes_per_chunk = per_chunk / ty.block_size() as usize * ty.type_size() as usize;
            for (c, chunk) in data.chunks(bytes_per_chunk).enumerate() {
                let count = chunk.len() / ty.type_size() as usize * ty.block_size() as usize;
                let values = dequantize(ty, chunk, count).map_err(|e| e.to_string())?;
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(format!("element {} is {}", c * per_chunk + i, values[i]));
                }
            }
        }
    }
    Ok(())
}

fn has_code3(b: u8) -> bool {
    (0..4).any(|k| (b >> (2 * k)) & 3 == 3)
}

#[cfg(test)]
mod check_tests {
    use super::*;

    #[test]
    fn check_values_finds_bad_data() {
        let w: Vec<i8> = (0..256).map(|i| (i % 3) as i8 - 1).collect();
        let mut i2s = encode_ternary(GgmlType::I2_S, &w, 0.5).unwrap();
        assert_eq!(check_values(GgmlType::I2_S, &i2s, 256), Ok(()));
        i2s[3] = 0xFF;
        assert!(check_values(GgmlType::I2_S, &i2s, 256)
            .unwrap_err()
            .contains("byte 3"));
        let mut tq2 = encode_ternary(GgmlType::TQ2_0, &w, 0.5).unwrap();
        assert_eq!(check_values(GgmlType::TQ2_0, &tq2, 256), Ok(()));
        tq2[64..66].copy_from_slice(&half::f16::NAN.to_le_bytes());
        assert!(check_values(GgmlType::TQ2_0, &tq2, 256).is_err());
        let mut f = vec![0u8; 16];
        assert_eq!(check_values(GgmlType::F32, &f, 4), Ok(()));
        f[8..12].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert_eq!(
            check_values(GgmlType::F32, &f, 4),
            Err("element 2 is inf".into())
        );
        assert!(check_values(GgmlType::Q4_K, &[0; 144], 256).is_err());
    }
}

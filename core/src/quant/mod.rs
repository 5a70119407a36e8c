//! Tensor codecs: scalar reference code for every type a BitNet file uses.
//!
//! [`ternary`] holds the ternary weight packings (I2_S, TQ1_0, TQ2_0),
//! [`float`] the float and 8-bit types (F32, F16, BF16, Q8_0, Q6_K). These
//! are the references fast kernels are tested against.

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
    check_size(ty, data, n)?;
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => float::f32_dequantize(data, &mut out),
        GgmlType::F16 => float::f16_dequantize(data, &mut out),
        GgmlType::BF16 => float::bf16_dequantize(data, &mut out),
        GgmlType::Q8_0 => float::q8_0_dequantize(data, &mut out),
        GgmlType::Q6_K => float::q6_k_dequantize(data, &mut out),
        GgmlType::TQ1_0 => ternary::tq1_0_dequantize(data, &mut out),
        GgmlType::TQ2_0 => ternary::tq2_0_dequantize(data, &mut out),
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
    Ok(out)
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
    if n as u64 % ty.block_size() != 0 {
        return Err(QuantError::NotBlockMultiple {
            ty,
            n,
            block: ty.block_size(),
        });
    }
    Ok(match ty {
        GgmlType::I2_S => ternary::i2s_encode(weights, scale),
        GgmlType::TQ1_0 => ternary::tq1_0_encode(weights, scale),
        GgmlType::TQ2_0 => ternary::tq2_0_encode(weights, scale),
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

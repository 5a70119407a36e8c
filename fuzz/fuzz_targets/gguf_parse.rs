//! Fuzzes the GGUF reader with arbitrary bytes: parsing must never panic,
//! hang or over-allocate, and every tensor of a file it accepts must be
//! readable (its bytes in bounds, its codec either working or refusing with
//! an error).
#![no_main]

use bitnet::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_vec(data.to_vec()) else {
        return;
    };
    for t in file.tensors() {
        assert_eq!(t.data.len() as u64, t.info.size);
        // Dequantize small tensors only, to keep each run fast.
        if t.info.n_elements <= 1 << 16 {
            let _ = bitnet::quant::dequantize(t.info.ty, t.data, t.info.n_elements as usize);
        }
    }
    for (_, v) in file.metadata().iter() {
        let _ = v.to_string();
    }
});

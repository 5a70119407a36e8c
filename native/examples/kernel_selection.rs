//! Which kernels the CPU backend uses for each operation, and the level
//! that `BITNET_SIMD_LEVEL` or `--simd-level` would force.
//!
//! ```sh
//! cargo run --example kernel_selection --no-default-features --features cpu
//! BITNET_SIMD_LEVEL=scalar cargo run --example kernel_selection
//! ```

use bitnet::backend::cpu::CpuBackend;
use bitnet::backend::kernels::Kernels;

fn main() {
    let k = Kernels::global();
    let forced = std::env::var("BITNET_SIMD_LEVEL").ok();
    println!(
        "level: {}{}",
        k.level,
        forced.map_or(String::new(), |f| format!(" (BITNET_SIMD_LEVEL={f})"))
    );
    let level = k.level.name();
    for (op, kernel) in [
        ("ternary x int8 (I2_S, TQ2_0)", level),
        ("ternary x int8 (TQ1_0)", "scalar (unpacked base-3 codes)"),
        ("F16 embedding / LM head dot", level),
        (
            "activation quantization, RMSNorm, RoPE, attention",
            "scalar",
        ),
    ] {
        println!("  {op:<52} {kernel}");
    }
    println!("backend reports: {}", CpuBackend::new().simd_level());
}

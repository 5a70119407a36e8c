//! Which kernel the CPU backend runs for each operation, at the level it
//! chose (the best this CPU runs, or `BITNET_SIMD_LEVEL`).
//!
//! ```sh
//! cargo run --example kernel_selection --no-default-features --features cpu
//! BITNET_SIMD_LEVEL=scalar cargo run --example kernel_selection
//! ```

use bitnet::backend::cpu::CpuBackend;

fn main() {
    let cpu = CpuBackend::new();
    let forced = std::env::var("BITNET_SIMD_LEVEL").ok();
    println!(
        "level: {}{}",
        cpu.simd_level(),
        forced.map_or(String::new(), |f| format!(" (BITNET_SIMD_LEVEL={f})"))
    );
    for (op, kernel) in cpu.kernels().describe() {
        println!("  {op:<40} {kernel}");
    }
}

//! Which SIMD features this CPU has and which kernel levels BitNet Rust can
//! run on it.
//!
//! ```sh
//! cargo run --example check_cpu_features --no-default-features --features cpu
//! ```

use bitnet::backend::kernels::SimdLevel;

fn main() {
    println!("architecture: {}", std::env::consts::ARCH);
    #[cfg(target_arch = "x86_64")]
    {
        let features = [
            ("sse4.1", is_x86_feature_detected!("sse4.1")),
            ("ssse3", is_x86_feature_detected!("ssse3")),
            ("avx", is_x86_feature_detected!("avx")),
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("f16c", is_x86_feature_detected!("f16c")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
            ("avx512bw", is_x86_feature_detected!("avx512bw")),
            ("avx512vnni", is_x86_feature_detected!("avx512vnni")),
            ("avxvnni", is_x86_feature_detected!("avxvnni")),
        ];
        for (name, present) in features {
            println!("  {name:<11} {}", if present { "yes" } else { "no" });
        }
    }
    println!("kernel levels:");
    for level in SimdLevel::ALL {
        println!(
            "  {:<10} {}",
            level.name(),
            if level.supported() {
                "runs here"
            } else {
                "not on this CPU"
            }
        );
    }
    println!(
        "chosen: {} (override with BITNET_SIMD_LEVEL or --simd-level)",
        SimdLevel::detect()
    );
}

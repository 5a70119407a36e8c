//! `--device`: which backend runs the model, and `bitnet-cli devices`.

use bitnet::backend::cpu::{CpuBackend, TernaryKernels};
use bitnet::backend::kernels::SimdLevel;
use bitnet::DeviceChoice;

/// A backend chosen at startup.
pub enum AnyBackend {
    Cpu(CpuBackend),
    #[cfg(feature = "wgpu")]
    Wgpu(bitnet::WgpuBackend),
}

/// Runs `$body` with `$x` bound to what the `Cpu` or `Wgpu` variant of
/// `$value` (an enum `$ty` such as [`AnyBackend`]) holds: one generic code
/// path for every backend.
#[macro_export]
macro_rules! with_any {
    ($ty:ident, $value:expr, $x:ident => $body:expr) => {
        match $value {
            $ty::Cpu($x) => $body,
            #[cfg(feature = "wgpu")]
            $ty::Wgpu($x) => $body,
        }
    };
}

/// The backend `choice` names. `cpu` builds the CPU backend with `make_cpu`;
/// `auto` takes a hardware GPU when wgpu finds one and the CPU otherwise
/// (never a software adapter such as lavapipe: the CPU kernels beat a GPU
/// emulated on the same cores), and says which on stderr when it is a GPU.
pub fn backend(
    choice: DeviceChoice,
    make_cpu: impl FnOnce() -> anyhow::Result<CpuBackend>,
) -> anyhow::Result<AnyBackend> {
    #[cfg(feature = "wgpu")]
    {
        use bitnet::backend::wgpu::device;
        use bitnet::WgpuBackend;
        match choice {
            DeviceChoice::Cpu => {}
            DeviceChoice::Auto => match device::pick(DeviceChoice::Auto) {
                Ok(Some(adapter)) => match WgpuBackend::from_adapter(&adapter) {
                    Ok(b) => {
                        eprintln!("device: {}", bitnet::backend::Backend::name(&b));
                        return Ok(AnyBackend::Wgpu(b));
                    }
                    Err(e) => eprintln!(
                        "device: {} failed ({e}); running on the CPU",
                        adapter.get_info().name
                    ),
                },
                Ok(None) => log::debug!("device auto: no hardware GPU adapter, CPU backend"),
                Err(e) => log::debug!("device auto: {e}; CPU backend"),
            },
            DeviceChoice::Wgpu(_) => {
                let b = WgpuBackend::new(choice)?;
                log::debug!("device {choice}: {}", bitnet::backend::Backend::name(&b));
                return Ok(AnyBackend::Wgpu(b));
            }
        }
    }
    #[cfg(not(feature = "wgpu"))]
    if let DeviceChoice::Wgpu(_) = choice {
        anyhow::bail!("--device {choice}: this bitnet-cli was built without the wgpu feature");
    }
    let cpu = make_cpu()?;
    if log::log_enabled!(log::Level::Debug) {
        let kernels = cpu.kernels().describe().map(|(op, k)| format!("{op}: {k}"));
        log::debug!(
            "CPU backend, {} kernels ({})",
            cpu.simd_level(),
            kernels.join("; ")
        );
    }
    Ok(AnyBackend::Cpu(cpu))
}

/// Refuses the CPU-only options (`--simd-level`, `--quantization`) when
/// `b` is not the CPU backend, instead of ignoring them.
pub fn check_cpu_options(
    b: &AnyBackend,
    simd_level: Option<SimdLevel>,
    quantization: TernaryKernels,
) -> Result<(), String> {
    if matches!(b, AnyBackend::Cpu(_)) {
        return Ok(());
    }
    if let Some(level) = simd_level {
        return Err(format!(
            "--simd-level {level} is a CPU option and the GPU was chosen; add --device cpu"
        ));
    }
    if quantization != TernaryKernels::File {
        return Err(format!(
            "--quantization {} is a CPU option (the GPU runs the file's layout); add --device cpu",
            quantization.name()
        ));
    }
    Ok(())
}

/// `bitnet-cli devices`: the CPU and every wgpu adapter.
pub fn list() -> anyhow::Result<()> {
    println!(
        "cpu     {} kernels, {} threads",
        SimdLevel::detect(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    #[cfg(feature = "wgpu")]
    {
        use bitnet::backend::wgpu::device;
        let adapters = device::adapters();
        if adapters.is_empty() {
            println!("(no wgpu adapter; on Linux without a GPU, Mesa's lavapipe gives one: apt-get install mesa-vulkan-drivers)");
        }
        for (i, a) in adapters.iter().enumerate() {
            let auto = if device::is_hardware(&a.get_info()) {
                ""
            } else {
                "  (software: --device auto skips it)"
            };
            println!("{}{auto}", device::describe(i, a));
        }
    }
    #[cfg(not(feature = "wgpu"))]
    println!("(built without the wgpu feature)");
    Ok(())
}

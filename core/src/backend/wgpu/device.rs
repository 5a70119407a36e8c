//! Adapters: listing them, choosing one at startup, and checking a device
//! that a host application hands us.

pub use crate::backend::DeviceChoice;

/// Why there is no usable wgpu device.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum WgpuError {
    #[error("no wgpu adapter found (on Linux without a GPU, install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)")]
    NoAdapter,
    /// `auto` found only software adapters (or none), or `cpu` was asked
    /// of the wgpu backend: the CPU backend is the one to use.
    #[error("--device {0} means the CPU backend here (auto takes only a hardware GPU; ask for wgpu or wgpu:N to run on a software adapter)")]
    NotAGpu(DeviceChoice),
    #[error("wgpu adapter {index} does not exist ({count} found; see `bitnet-cli devices`)")]
    NoSuchAdapter { index: usize, count: usize },
    #[error("requesting a device from {adapter}: {reason}")]
    RequestDevice { adapter: String, reason: String },
    /// A host's device lacks a limit the backend needs.
    #[error("the device's {limit} is {have}, the wgpu backend needs at least {need}")]
    Limit {
        limit: &'static str,
        need: u64,
        have: u64,
    },
    #[error("compiling {shader}: {reason}")]
    Shader { shader: String, reason: String },
}

/// The wgpu instance, with the backends `WGPU_BACKEND` names (all by
/// default).
pub fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter, in the order `wgpu:N` counts them (in the browser: the
/// one WebGPU adapter, or none).
pub async fn adapters_async() -> Vec<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    instance().enumerate_adapters(backends).await
}

/// [`adapters_async`], waited for.
#[cfg(not(target_arch = "wasm32"))]
pub fn adapters() -> Vec<wgpu::Adapter> {
    pollster::block_on(adapters_async())
}

/// Whether an adapter is a real GPU (what `--device auto` takes).
pub fn is_hardware(info: &wgpu::AdapterInfo) -> bool {
    matches!(
        info.device_type,
        wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu
    )
}

/// The adapter for `choice` (`None` means: use the CPU backend).
#[cfg(not(target_arch = "wasm32"))]
pub fn pick(choice: DeviceChoice) -> Result<Option<wgpu::Adapter>, WgpuError> {
    pollster::block_on(pick_async(choice))
}

/// The adapter for `choice` (`None` means: use the CPU backend).
pub async fn pick_async(choice: DeviceChoice) -> Result<Option<wgpu::Adapter>, WgpuError> {
    if choice == DeviceChoice::Cpu {
        return Ok(None);
    }
    let mut all = adapters_async().await;
    let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    match choice {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Auto => {
            let best = (0..all.len())
                .filter(|&i| is_hardware(&all[i].get_info()))
                .min_by_key(|&i| rank(&all[i]));
            Ok(best.map(|i| all.swap_remove(i)))
        }
        DeviceChoice::Wgpu(None) => {
            let best = (0..all.len()).min_by_key(|&i| rank(&all[i]));
            best.map(|i| Some(all.swap_remove(i)))
                .ok_or(WgpuError::NoAdapter)
        }
        DeviceChoice::Wgpu(Some(index)) => {
            let count = all.len();
            if index >= count {
                return Err(if count == 0 {
                    WgpuError::NoAdapter
                } else {
                    WgpuError::NoSuchAdapter { index, count }
                });
            }
            Ok(Some(all.swap_remove(index)))
        }
    }
}

/// The limits the backend needs at the least. A host application asks for
/// these (or more) when it creates the device it hands over.
pub fn required_limits() -> wgpu::Limits {
    wgpu::Limits {
        max_storage_buffers_per_shader_stage: 6,
        max_compute_invocations_per_workgroup: 256,
        max_compute_workgroup_size_x: 256,
        max_compute_workgroup_storage_size: 4096,
        max_dynamic_uniform_buffers_per_pipeline_layout: 1,
        ..wgpu::Limits::downlevel_defaults()
    }
}

/// Checks a device's limits against [`required_limits`].
pub fn check_limits(have: &wgpu::Limits) -> Result<(), WgpuError> {
    let need = required_limits();
    let pairs: [(&'static str, u64, u64); 7] = [
        (
            "max_storage_buffers_per_shader_stage",
            need.max_storage_buffers_per_shader_stage.into(),
            have.max_storage_buffers_per_shader_stage.into(),
        ),
        (
            "max_compute_invocations_per_workgroup",
            need.max_compute_invocations_per_workgroup.into(),
            have.max_compute_invocations_per_workgroup.into(),
        ),
        (
            "max_compute_workgroup_size_x",
            need.max_compute_workgroup_size_x.into(),
            have.max_compute_workgroup_size_x.into(),
        ),
        (
            "max_compute_workgroup_storage_size",
            need.max_compute_workgroup_storage_size.into(),
            have.max_compute_workgroup_storage_size.into(),
        ),
        (
            "max_dynamic_uniform_buffers_per_pipeline_layout",
            need.max_dynamic_uniform_buffers_per_pipeline_layout.into(),
            have.max_dynamic_uniform_buffers_per_pipeline_layout.into(),
        ),
        (
            "max_compute_workgroups_per_dimension",
            need.max_compute_workgroups_per_dimension.into(),
            have.max_compute_workgroups_per_dimension.into(),
        ),
        (
            "max_uniform_buffer_binding_size",
            256,
            have.max_uniform_buffer_binding_size,
        ),
    ];
    for (limit, need, have) in pairs {
        if have < need {
            return Err(WgpuError::Limit { limit, need, have });
        }
    }
    Ok(())
}

/// Creates a device on `adapter` with the adapter's real limits (so large
/// buffers and bindings are allowed) and no optional feature.
#[cfg(not(target_arch = "wasm32"))]
pub fn request_device(adapter: &wgpu::Adapter) -> Result<(wgpu::Device, wgpu::Queue), WgpuError> {
    pollster::block_on(request_device_async(adapter))
}

/// [`request_device`], as a future (the only way in the browser).
pub async fn request_device_async(
    adapter: &wgpu::Adapter,
) -> Result<(wgpu::Device, wgpu::Queue), WgpuError> {
    let info = adapter.get_info();
    check_limits(&adapter.limits())?;
    let desc = wgpu::DeviceDescriptor {
        label: Some("bitnet"),
        // Timestamps only for `BITNET_WGPU_PROFILE=gpu` (see `profile`).
        required_features: if super::profile::Mode::from_env() == Some(super::profile::Mode::Gpu) {
            adapter.features() & wgpu::Features::TIMESTAMP_QUERY
        } else {
            wgpu::Features::empty()
        },
        required_limits: adapter.limits(),
        ..Default::default()
    };
    adapter
        .request_device(&desc)
        .await
        .map_err(|e| WgpuError::RequestDevice {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })
}

/// One line per adapter for `bitnet-cli devices`.
pub fn describe(index: usize, adapter: &wgpu::Adapter) -> String {
    let info = adapter.get_info();
    let l = adapter.limits();
    let yes = |f: wgpu::Features| {
        if adapter.features().contains(f) {
            "yes"
        } else {
            "no"
        }
    };
    format!(
        "wgpu:{index}  {}  backend={:?} type={:?} driver={:?} {:?}\n        max_buffer_size={} MiB  max_storage_buffer_binding_size={} MiB  storage_buffers_per_stage={}  workgroup_invocations={}\n        features: shader-f16={} subgroup={} timestamp-query={} (the backend needs none of them)",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info,
        l.max_buffer_size >> 20,
        l.max_storage_buffer_binding_size >> 20,
        l.max_storage_buffers_per_shader_stage,
        l.max_compute_invocations_per_workgroup,
        yes(wgpu::Features::SHADER_F16),
        yes(wgpu::Features::SUBGROUP),
        yes(wgpu::Features::TIMESTAMP_QUERY),
    )
}

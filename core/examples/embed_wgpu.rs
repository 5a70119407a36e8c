//! Embedding BitNet Rust in a wgpu application: the application creates
//! the device (asking for what the backend needs), hands its `Device` and
//! `Queue` over, and generates text without the backend ever creating a
//! device of its own. Generation runs on a worker thread, as it would next
//! to a render loop, and streams its text back over a channel.
//!
//!     cargo run --release -p bitnet-rt --features wgpu --example embed_wgpu [-- model.gguf "prompt"]
//!
//! Without a model argument it uses the bundled demo model.

use std::sync::Arc;

use bitnet::wgpu; // the same wgpu the backend is built with
use bitnet::{Engine, GenerationConfig, GgufFile, WgpuBackend};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/tiny-bitnet-trained-i2s.gguf"
        )
        .to_owned()
    });
    let prompt = args.next().unwrap_or_else(|| "In the beginning".to_owned());

    // The host's own setup: instance, adapter, device.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let Ok(adapter) = pollster::block_on(instance.request_adapter(&Default::default())) else {
        println!("no wgpu adapter here; nothing to embed into (on Linux: apt-get install mesa-vulkan-drivers)");
        return Ok(());
    };
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host app"),
        required_features: WgpuBackend::required_features(),
        // What the backend needs at the least, raised to the adapter's real
        // limits so large tables fit in fewer bindings.
        required_limits: WgpuBackend::required_limits().or_better_values_from(&adapter.limits()),
        ..Default::default()
    }))?;

    // Hand the device over (clones: the host keeps using its own handles).
    let backend = WgpuBackend::from_wgpu(device.clone(), queue.clone(), info.clone())?;
    let file = Arc::new(GgufFile::open(&model)?);
    let engine = Arc::new(Engine::load(file, backend)?);
    println!("running on {} ({:?})", info.name, info.backend);

    // Generate on a worker thread; the host's thread stays free.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let worker = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let mut cfg = GenerationConfig::greedy();
            cfg.max_tokens = Some(32);
            engine.generate(&prompt, &cfg, |text| tx.send(text.to_owned()).is_ok())
        })
    };
    print!("> ");
    for piece in rx {
        // A real host would draw this in its next frame.
        print!("{piece}");
    }
    let stats = worker.join().map_err(|_| "generation thread panicked")??;
    println!(
        "\n{} tokens at {:.1} tokens/s",
        stats.generated_tokens,
        stats.generation_tokens_per_second()
    );
    Ok(())
}

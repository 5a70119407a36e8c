//! The public API (`BitNetModel` and its configs) on the bundled model:
//! every way to generate gives the same tokens as the engine underneath.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bitnet::{
    BitNetModel, EngineError, GenerationConfig, InferenceConfig, KvType, LoadingStrategy,
    ModelConfig, StopReason, StreamingConfig,
};

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-bitnet-i2s.gguf")
}

/// A minimal executor: parks the thread until the future's waker fires.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

fn cfg(n: usize) -> GenerationConfig {
    GenerationConfig {
        max_tokens: Some(n),
        ..GenerationConfig::greedy()
    }
}

#[test]
fn every_way_to_generate_agrees() {
    let model = BitNetModel::from_pretrained(bundled()).unwrap();
    let cfg = cfg(8);
    let engine_run = model
        .cpu_engine()
        .unwrap()
        .generate("Once upon a time", &cfg, |_| true)
        .unwrap();

    let blocking = model.generate_blocking("Once upon a time", &cfg).unwrap();
    assert_eq!(blocking.stats.tokens, engine_run.tokens);
    assert_eq!(blocking.stats.stop_reason, StopReason::MaxTokens);
    assert_eq!(blocking.text, model.tokenizer().decode(&engine_run.tokens));

    let streamed: Vec<u32> = model
        .stream("Once upon a time", &cfg)
        .unwrap()
        .flat_map(|c| c.unwrap().tokens)
        .collect();
    assert_eq!(streamed, engine_run.tokens);

    let fut = block_on(model.generate("Once upon a time", &cfg)).unwrap();
    assert_eq!(fut.stats.tokens, engine_run.tokens);

    let batch =
        block_on(model.generate_batch(&["Once upon a time", "Hello", "1 2 3"], &cfg)).unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[0].stats.tokens, engine_run.tokens);
    for (g, p) in batch.iter().zip(["Once upon a time", "Hello", "1 2 3"]) {
        assert_eq!(
            g.stats.tokens,
            model.generate_blocking(p, &cfg).unwrap().stats.tokens
        );
    }
}

#[test]
fn configs_change_how_not_what() {
    let reference = BitNetModel::from_pretrained(bundled()).unwrap();
    let want = reference.generate_blocking("Hello", &cfg(6)).unwrap();

    // Preloaded into memory, own 1-thread pool: same tokens.
    let model = BitNetModel::load(
        bundled(),
        &ModelConfig {
            loading_strategy: LoadingStrategy::Preload,
            ..Default::default()
        },
    )
    .unwrap()
    .with_inference_config(InferenceConfig {
        threads: Some(1),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        model
            .generate_blocking("Hello", &cfg(6))
            .unwrap()
            .stats
            .tokens,
        want.stats.tokens
    );

    // Chunks of 4 tokens.
    let streaming = StreamingConfig {
        buffer_size: 4,
        flush_interval_ms: 60_000,
        token_timeout_ms: None,
    };
    let chunks: Vec<_> = model
        .stream("Hello", &cfg(6))
        .unwrap()
        .with_streaming(&streaming)
        .map(|c| c.unwrap())
        .collect();
    assert_eq!(chunks[0].tokens.len(), 4);
    let tokens: Vec<u32> = chunks.iter().flat_map(|c| c.tokens.clone()).collect();
    assert_eq!(tokens, want.stats.tokens);

    // A short context: the prompt-too-long error, not a panic.
    let small = BitNetModel::load(
        bundled(),
        &ModelConfig {
            max_seq_len: 3,
            kv_cache_type: KvType::F16,
            ..Default::default()
        },
    )
    .unwrap();
    let err = small
        .generate_blocking("a much longer prompt than three tokens", &cfg(2))
        .unwrap_err();
    assert!(
        matches!(err, EngineError::PromptTooLong { ctx: 3, .. }),
        "{err}"
    );

    // Batch limit.
    let limited = reference
        .clone()
        .with_inference_config(InferenceConfig {
            max_batch_size: 1,
            ..Default::default()
        })
        .unwrap();
    let err = block_on(limited.generate_batch(&["a", "b"], &cfg(1))).unwrap_err();
    assert!(err.to_string().contains("max_batch_size is 1"), "{err}");
    assert!(reference
        .clone()
        .with_inference_config(InferenceConfig {
            threads: Some(0),
            ..Default::default()
        })
        .is_err());
}

#[test]
fn bad_paths_are_clear_errors() {
    let err = BitNetModel::from_pretrained("/nonexistent/model.gguf")
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
    let dir = std::env::temp_dir().join(format!("bitnet-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = BitNetModel::from_pretrained(&dir).err().unwrap();
    assert!(err.to_string().contains("no .gguf file"), "{err}");
    std::fs::copy(bundled(), dir.join("a.gguf")).unwrap();
    assert!(BitNetModel::from_pretrained(&dir).is_ok());
    std::fs::copy(bundled(), dir.join("b.gguf")).unwrap();
    let err = BitNetModel::from_pretrained(&dir).err().unwrap();
    assert!(err.to_string().contains("a.gguf, b.gguf"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dropping_the_future_cancels_its_work() {
    let model = BitNetModel::from_pretrained(bundled()).unwrap();
    // Never polled to completion: dropping it must not hang or panic, and
    // the worker stops at its next token.
    drop(model.generate("Hello", &GenerationConfig::greedy()));
    let out = block_on(model.generate("Hello", &cfg(3))).unwrap();
    assert_eq!(out.stats.generated_tokens, 3);
}

/// `Device::Wgpu` runs the same model on the GPU path: same tokens from the
/// iterator, the blocking call and the async one. Skips without an adapter
/// unless REQUIRE_GPU=1.
#[cfg(feature = "wgpu")]
#[test]
fn the_wgpu_device_gives_the_cpu_tokens() {
    let on = |device| {
        BitNetModel::load(
            bundled(),
            &ModelConfig {
                device,
                ..ModelConfig::default()
            },
        )
    };
    let gpu = match on(bitnet::Device::Wgpu(None)) {
        Ok(m) => m,
        Err(e) if std::env::var("REQUIRE_GPU").as_deref() != Ok("1") => {
            eprintln!("skipped: no wgpu device ({e})");
            return;
        }
        Err(e) => panic!("REQUIRE_GPU=1 but no wgpu device: {e}"),
    };
    assert!(gpu.backend_name().starts_with("wgpu"));
    assert!(gpu.cpu_engine().is_none() && gpu.wgpu_engine().is_some());
    let cpu = on(bitnet::Device::Cpu).unwrap();
    let cfg = cfg(12);
    let want = cpu.generate_blocking("Once upon a time", &cfg).unwrap();
    let got = gpu.generate_blocking("Once upon a time", &cfg).unwrap();
    assert_eq!(got.stats.tokens, want.stats.tokens);
    let streamed: Vec<u32> = gpu
        .stream("Once upon a time", &cfg)
        .unwrap()
        .flat_map(|c| c.unwrap().tokens)
        .collect();
    assert_eq!(streamed, want.stats.tokens);
    let asynced = block_on(gpu.generate("Once upon a time", &cfg)).unwrap();
    assert_eq!(asynced.stats.tokens, want.stats.tokens);
    // The int8 head is a CPU option: asked for on wgpu, a clear error.
    let err = BitNetModel::load(
        bundled(),
        &ModelConfig {
            device: bitnet::Device::Wgpu(None),
            output_table: bitnet::OutputTable::Int8,
            ..ModelConfig::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, EngineError::Config(_)), "{err}");
}

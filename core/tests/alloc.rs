//! The CPU forward pass allocates nothing per decoded token once warm but
//! the logits it returns: activations, scratch and quantized rows come from
//! buffers kept between tokens. Counted with a global allocator that counts
//! every allocation (this test binary only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bitnet::backend::cpu::CpuBackend;
use bitnet::backend::KvType;
use bitnet::fixture::FixtureConfig;
use bitnet::gguf::GgufFile;
use bitnet::model::BitNet;
use bitnet::GgmlType;

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decoding_a_token_allocates_only_the_returned_logits() {
    use bitnet::backend::cpu::{OutputTable, TernaryKernels};
    use bitnet::backend::lut::Lut;
    let (file_head, packed) = (OutputTable::File, TernaryKernels::File);
    for (ty, kv, threads, head, ternary) in [
        (GgmlType::I2_S, KvType::F32, 1, file_head, packed),
        (GgmlType::I2_S, KvType::F16, 2, file_head, packed),
        (GgmlType::TQ2_0, KvType::F32, 2, file_head, packed),
        (GgmlType::TQ1_0, KvType::F32, 2, file_head, packed),
        // The compact heads and the other kernel families.
        (GgmlType::I2_S, KvType::F32, 2, OutputTable::Int8, packed),
        (GgmlType::I2_S, KvType::F32, 2, OutputTable::Int6, packed),
        (
            GgmlType::I2_S,
            KvType::F32,
            2,
            file_head,
            TernaryKernels::Lut(Lut::Tl1),
        ),
        (
            GgmlType::TQ2_0,
            KvType::F32,
            1,
            file_head,
            TernaryKernels::Lut(Lut::Tl2),
        ),
        (
            GgmlType::TQ1_0,
            KvType::F32,
            2,
            file_head,
            TernaryKernels::Tq2,
        ),
    ] {
        let file = GgufFile::from_vec(FixtureConfig::tiny(ty).to_bytes().unwrap()).unwrap();
        let cpu = CpuBackend::new()
            .with_output_table(head)
            .with_ternary_kernels(ternary);
        let m = BitNet::load(Arc::new(file), cpu).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut s = m.new_session(160, kv);
            m.forward(&mut s, &[496, 10, 200, 3, 77], false).unwrap();
            // A short context (a head per item), then past 64 positions
            // (one token's attention split by position blocks).
            for warm_to in [8, 70] {
                while s.len() < warm_to {
                    m.forward(&mut s, &[7], false).unwrap();
                }
                for t in 0..4 {
                    let before = ALLOCATIONS.load(Relaxed);
                    let logits = m.forward(&mut s, &[10 + t], false).unwrap();
                    let n = ALLOCATIONS.load(Relaxed) - before;
                    assert_eq!(logits.len(), 512);
                    // The returned logits, rayon's job for each helper
                    // thread of the pass (`team::with_team`), and a little
                    // slack for rayon's own queues; before the buffers
                    // were kept, a token of this 2-layer model took 377 or
                    // more.
                    let most = 1 + (threads - 1) + 3;
                    assert!(
                        n <= most,
                        "{ty} {kv:?} {head:?} {ternary:?} {threads} threads at {warm_to}: \
                         {n} allocations per token, want ≤ {most}"
                    );
                }
            }
        });
    }
}

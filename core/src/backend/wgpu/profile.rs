//! Where a token's time goes on the device, for tuning: set
//! `BITNET_WGPU_PROFILE` before the backend is made.
//!
//! - `host`: the submission is unchanged; counts the time spent encoding
//!   and submitting (`flush`) and waiting for results (`read`).
//! - `gpu`: also times every dispatch on the device. Each dispatch gets a
//!   compute pass of its own with timestamps at its start and end (the
//!   `TIMESTAMP_QUERY` feature, requested only in this mode), and every
//!   submission waits for its timestamps, so the totals of this mode are
//!   slower than a normal run; the split between ops is what it is for.
//!
//! The report goes to stderr when the device is dropped: per op and shape
//! (the first two parameters and the workgroup counts), calls, total and
//! mean time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::gpu::Op;

/// Timestamped dispatches per submission at most (pairs of queries).
pub const MAX_TIMED: u32 = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Host,
    Gpu,
}

impl Mode {
    /// From `BITNET_WGPU_PROFILE` (`host` or `gpu`; anything else: none).
    pub fn from_env() -> Option<Mode> {
        match std::env::var("BITNET_WGPU_PROFILE").ok()?.as_str() {
            "host" => Some(Mode::Host),
            "gpu" | "1" => Some(Mode::Gpu),
            _ => None,
        }
    }
}

/// A dispatch as the report groups it.
pub type Key = (Op, [u32; 2], [u32; 2]);

/// The device side of `gpu` mode.
pub struct Timer {
    pub queries: wgpu::QuerySet,
    pub resolve: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    pub period: f64,
}

impl Timer {
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Timer {
        let bytes = u64::from(2 * MAX_TIMED) * 8;
        Timer {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bitnet:profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * MAX_TIMED,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bitnet:profile-resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bitnet:profile-read"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            period: f64::from(queue.get_timestamp_period()),
        }
    }

    /// Waits for the submission that resolved `n` pairs of timestamps and
    /// adds each dispatch's time to `stats`.
    pub fn collect(&self, device: &wgpu::Device, keys: &[Key], stats: &Mutex<Stats>) {
        let bytes = keys.len() as u64 * 16;
        if bytes == 0 {
            return;
        }
        let slice = self.readback.slice(..bytes);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        if device.poll(wgpu::PollType::wait_indefinitely()).is_err() {
            return;
        }
        let Ok(view) = slice.get_mapped_range() else {
            return;
        };
        let ticks: Vec<u64> = view
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect();
        drop(view);
        self.readback.unmap();
        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
        for (key, pair) in keys.iter().zip(ticks.chunks_exact(2)) {
            let ns = pair[1].saturating_sub(pair[0]) as f64 * self.period;
            let e = s.ops.entry(*key).or_default();
            e.0 += 1;
            e.1 += ns;
        }
    }
}

#[derive(Default)]
pub struct Stats {
    /// Per op and shape: calls and device nanoseconds.
    pub ops: BTreeMap<Key, (u64, f64)>,
    pub flushes: u64,
    pub dispatches: u64,
    pub flush_time: Duration,
    pub reads: u64,
    pub wait_time: Duration,
}

impl Stats {
    pub fn report(&self, device: &str) -> String {
        let per = |d: Duration, n: u64| d.as_secs_f64() * 1e3 / n.max(1) as f64;
        let mut out = format!(
            "wgpu profile ({device}):\n  host: {} submissions, {:.1} dispatches each, encode+submit {:.3} ms each; {} reads, waiting {:.3} ms each\n",
            self.flushes,
            self.dispatches as f64 / self.flushes.max(1) as f64,
            per(self.flush_time, self.flushes),
            self.reads,
            per(self.wait_time, self.reads),
        );
        if self.ops.is_empty() {
            return out;
        }
        let total: f64 = self.ops.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = self.ops.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        out += &format!(
            "  device time by op (params[0..2], workgroups), {:.3} ms in all:\n",
            total / 1e6
        );
        for ((op, p, g), (calls, ns)) in rows {
            out += &format!(
                "  {:>6.2}%  {:>9.3} ms  {:>7} calls  {:>9.2} us each  {op:?} p={p:?} wg={g:?}\n",
                100.0 * ns / total,
                ns / 1e6,
                calls,
                ns / 1e3 / *calls as f64,
            );
        }
        out
    }
}

//! The device side of the wgpu backend: pipelines, buffers, and the
//! recorder that turns a forward pass into a few submissions.
//!
//! - Pipelines and their bind-group layouts are made once.
//! - Every dispatch's parameters go into one uniform buffer (a slot of 256
//!   bytes each, bound with a dynamic offset), written once per submission.
//! - Activations come from a pool of buffers, handed back when a tensor is
//!   dropped, so after the first token the same buffers come back in the
//!   same order, and the bind groups (cached by buffer identity) are reused.
//! - Work is recorded, not run: `flush` encodes the recorded dispatches into
//!   one compute pass and submits them. It runs every [`SUBMIT_EVERY`]
//!   dispatches (the first time after a read, after a quarter of that), so
//!   the GPU works on the first layers while the host records the rest,
//!   and at `read`, the only call that waits for the device.
//! - `BITNET_WGPU_PROFILE` (see [`super::profile`]) reports where the time
//!   goes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bitnet_shaders::{Dot4, Halves, Shader};

use super::device::WgpuError;
use super::profile::{self, Stats, Timer};
use super::WgpuOptions;
use crate::backend::BackendError;

/// Parameter slots per submission at most.
const PARAM_SLOTS: usize = 4096;
/// Dispatches per submission by default. A 2B4T token records about 360;
/// submitting every 64 lets the GPU start on the first layers while the
/// host still records and encodes the rest (on an H100, 122 against 106
/// tokens/s with one submission per token; docs/perf.md).
/// `BITNET_WGPU_SUBMIT_EVERY` overrides it (4096: one per token).
const SUBMIT_EVERY: usize = 64;
/// Bytes of one parameter slot: every shader's `Params` fits, and it is the
/// largest `min_uniform_buffer_offset_alignment` WebGPU allows.
const SLOT: usize = 256;
/// Pooled buffers beyond this many bytes are released, not kept.
const POOL_BYTES: u64 = 1 << 30;

/// A device buffer with an identity that is never reused (the key of the
/// bind-group cache). Dropping the last handle tells the recorder to forget
/// its bind groups.
pub struct Buf {
    pub id: u64,
    pub buffer: wgpu::Buffer,
    pub size: u64,
    dead: Arc<Mutex<Vec<u64>>>,
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Ok(mut d) = self.dead.lock() {
            d.push(self.id);
        }
    }
}

pub type GpuBuf = Arc<Buf>;

/// One shader entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Quantize,
    Matmul,
    Matvec,
    Matvec3,
    RmsNorm,
    Rope,
    Attend,
    /// `attend` for one new token, which rotates and stores it itself.
    AttendOne,
    Glu,
    Add,
    Embed,
    Logits,
}

/// How a storage binding is used.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}
use Access::{Read, Write};

impl Op {
    const ALL: [Op; 12] = [
        Op::Quantize,
        Op::Matmul,
        Op::Matvec,
        Op::Matvec3,
        Op::RmsNorm,
        Op::Rope,
        Op::Attend,
        Op::AttendOne,
        Op::Glu,
        Op::Add,
        Op::Embed,
        Op::Logits,
    ];

    fn shader(self) -> (Shader, &'static str) {
        use bitnet_shaders as s;
        match self {
            Op::Quantize => (s::QUANT, "quantize"),
            Op::Matmul => (s::TERNARY, "matmul"),
            Op::Matvec => (s::TERNARY, "matvec"),
            Op::Matvec3 => (s::TERNARY, "matvec3"),
            Op::RmsNorm => (s::NORM, "rms_norm"),
            Op::Rope => (s::ROPE, "rope"),
            Op::Attend | Op::AttendOne => (s::ATTENTION, "attend"),
            Op::Glu => (s::ELEMENTWISE, "glu"),
            Op::Add => (s::ELEMENTWISE, "add"),
            Op::Embed => (s::TABLE, "embed"),
            Op::Logits => (s::TABLE, "logits"),
        }
    }

    /// The storage bindings of the entry point, in the order `dispatch`
    /// takes its buffers (binding 0 is always the parameters).
    fn bindings(self) -> &'static [(u32, Access)] {
        match self {
            Op::Quantize => &[
                (1, Read),
                (2, Write),
                (3, Write),
                (4, Write),
                (5, Read),
                (6, Write),
            ],
            Op::Matmul => &[
                (1, Read),
                (2, Read),
                (3, Read),
                (4, Read),
                (5, Write),
                (6, Read),
            ],
            Op::Matvec => &[(1, Read), (10, Read), (11, Read), (5, Write), (6, Read)],
            Op::Matvec3 => &[
                (1, Read),
                (10, Read),
                (11, Read),
                (5, Write),
                (6, Read),
                (7, Read),
                (8, Write),
                (9, Write),
            ],
            Op::RmsNorm => &[(1, Read), (2, Read), (3, Write)],
            Op::Rope => &[
                (1, Write),
                (2, Read),
                (3, Write),
                (4, Write),
                (5, Write),
                (6, Write),
            ],
            Op::Attend => &[(1, Read), (2, Read), (3, Read), (4, Write)],
            Op::AttendOne => &[
                (1, Write),
                (2, Write),
                (3, Read),
                (4, Write),
                (5, Read),
                (6, Read),
                (7, Read),
            ],
            Op::Glu => &[(1, Read), (2, Read), (3, Write)],
            Op::Add => &[(1, Read), (3, Write)],
            Op::Embed => &[(1, Read), (2, Read), (3, Write)],
            Op::Logits => &[(1, Read), (4, Read), (3, Write)],
        }
    }
}

struct Pipe {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

enum Cmd {
    Dispatch {
        op: Op,
        bind_group: wgpu::BindGroup,
        offset: u32,
        groups: [u32; 3],
        /// The first two parameters (shapes, for the profile).
        shape: [u32; 2],
    },
    Copy {
        src: GpuBuf,
        dst: GpuBuf,
        size: u64,
    },
}

#[derive(Default)]
struct Recorder {
    cmds: Vec<Cmd>,
    params: Vec<u8>,
    bind_groups: HashMap<Vec<u64>, wgpu::BindGroup>,
    pool: HashMap<u64, Vec<GpuBuf>>,
    pool_bytes: u64,
    /// Nothing submitted since the last read waited for the device.
    idle: bool,
    /// The first device error not yet reported.
    error: Option<String>,
}

/// The device, its pipelines and the recorder. Shared by every handle the
/// backend gives out.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub dot4: Dot4,
    /// Packed words per thread `matvec` aims at (32, or
    /// `BITNET_WGPU_MATVEC_WORDS` for tuning).
    pub matvec_words: usize,
    pipes: HashMap<Op, Pipe>,
    params: GpuBuf,
    /// Bound where an entry point has a writable binding the dispatch does
    /// not use (WebGPU forbids binding a buffer twice when one binding is
    /// writable, so the dispatch's own buffers cannot stand in, and a
    /// dispatch that leaves several unused needs a different one for each).
    pub unused: [GpuBuf; 5],
    /// Dispatches per submission at most (`PARAM_SLOTS`, or fewer to test
    /// the early submit).
    slots: usize,
    rec: Mutex<Recorder>,
    next_id: AtomicU64,
    dead: Arc<Mutex<Vec<u64>>>,
    /// Errors the device reported on its own (in the browser, where error
    /// scopes cannot be waited for, every error comes this way).
    reported: Arc<Mutex<Option<String>>>,
    /// `BITNET_WGPU_PROFILE` (see [`profile`]): what to measure, the
    /// timestamp queries of `gpu` mode, and the totals.
    profile: Option<profile::Mode>,
    timer: Option<Timer>,
    stats: Mutex<Stats>,
}

impl Gpu {
    pub fn new(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        opts: &WgpuOptions,
    ) -> Result<Self, WgpuError> {
        let mut limits = device.limits();
        if let Some(b) = opts.max_binding {
            // Pretend the device allows less (tests of the table split).
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(b);
        }
        super::device::check_limits(&limits)?;
        let dot4 = opts.dot4.unwrap_or_else(|| choose_dot4(&device));
        let halves = opts.halves.unwrap_or_else(|| choose_halves(&device));
        log::debug!(
            "wgpu device: {} ({:?}, {:?}); int8 dot products: {dot4:?}; f16 to f32: {halves:?}; storage binding limit {} MiB",
            info.name,
            info.backend,
            info.device_type,
            limits.max_storage_buffer_binding_size >> 20
        );
        let checks = Checks::from_env();
        log::debug!("wgpu shader runtime checks: {checks:?}");
        let mut modules: HashMap<(&'static str, bool), wgpu::ShaderModule> = HashMap::new();
        let mut pipes = HashMap::new();
        for op in Op::ALL {
            let (shader, entry) = op.shader();
            // The shader's alternate prelude (bitnet_shaders::Shader::alt).
            let alt = matches!(op, Op::Matvec3 | Op::AttendOne);
            if op.bindings().len() as u32 > limits.max_storage_buffers_per_shader_stage {
                // Optional (`matvec3`): the ops it fuses run one by one.
                log::debug!("{entry}: not built (the device has fewer storage bindings)");
                continue;
            }
            let module = match modules.get(&(shader.name, alt)) {
                Some(m) => m.clone(),
                None => {
                    let m = compile(&device, shader, dot4, halves, alt, checks)?;
                    modules.insert((shader.name, alt), m.clone());
                    m
                }
            };
            let (pipe, err) = scoped(&device, wgpu::ErrorFilter::Validation, || {
                make_pipe(&device, op, &module, entry)
            });
            if let Some(e) = err {
                return Err(WgpuError::Shader {
                    shader: format!("{} ({entry})", shader.name),
                    reason: e.to_string(),
                });
            }
            pipes.insert(op, pipe);
        }
        let dead = Arc::new(Mutex::new(Vec::new()));
        let reported = Arc::new(Mutex::new(None));
        #[cfg(target_arch = "wasm32")]
        {
            // Our own device in the browser: its uncaptured errors are ours.
            let slot = reported.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                if slot.is_none() {
                    *slot = Some(e.to_string());
                }
            }));
        }
        let params = Arc::new(Buf {
            id: 0,
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bitnet:params"),
                size: (PARAM_SLOTS * SLOT) as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            size: (PARAM_SLOTS * SLOT) as u64,
            dead: dead.clone(),
        });
        let unused = std::array::from_fn(|i| {
            Arc::new(Buf {
                id: u64::MAX - i as u64,
                buffer: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bitnet:unused"),
                    size: 256,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                }),
                size: 256,
                dead: dead.clone(),
            })
        });
        let profile = profile::Mode::from_env();
        let timer = (profile == Some(profile::Mode::Gpu)
            && device.features().contains(wgpu::Features::TIMESTAMP_QUERY))
        .then(|| Timer::new(&device, &queue));
        if profile == Some(profile::Mode::Gpu) && timer.is_none() {
            log::warn!(
                "BITNET_WGPU_PROFILE=gpu: this device has no timestamp queries; host times only"
            );
        }
        let matvec_words = std::env::var("BITNET_WGPU_MATVEC_WORDS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(32)
            .clamp(1, 64);
        Ok(Gpu {
            matvec_words,
            profile,
            timer,
            stats: Mutex::default(),
            device,
            queue,
            info,
            limits,
            dot4,
            pipes,
            params,
            unused,
            slots: opts
                .max_dispatches
                .or_else(|| std::env::var("BITNET_WGPU_SUBMIT_EVERY").ok()?.parse().ok())
                .unwrap_or(SUBMIT_EVERY)
                .clamp(1, PARAM_SLOTS),
            rec: Mutex::new(Recorder::default()),
            next_id: AtomicU64::new(1),
            dead,
            reported,
        })
    }

    /// Whether `op` was built on this device (`Matvec3` needs nine storage
    /// bindings).
    pub fn has(&self, op: Op) -> bool {
        self.pipes.contains_key(&op)
    }

    fn rec(&self) -> MutexGuard<'_, Recorder> {
        // A panic while recording leaves nothing half-written that matters.
        self.rec.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The largest buffer one binding can see.
    pub fn max_binding(&self) -> u64 {
        // A multiple of 4 (Vulkan and DX12 report 2^31 - 1; storage
        // bindings must be whole words).
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            & !3
    }

    /// Records an error to report at the next `read` (ops cannot fail on
    /// the spot: their results are only known when the device runs them).
    pub fn fail(&self, msg: String) {
        let mut r = self.rec();
        if r.error.is_none() {
            log::error!("wgpu backend: {msg}");
            r.error = Some(msg);
        }
    }

    fn wrap(&self, buffer: wgpu::Buffer, size: u64) -> GpuBuf {
        Arc::new(Buf {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            buffer,
            size,
            dead: self.dead.clone(),
        })
    }

    /// A storage buffer of `size` bytes (a multiple of 4) for data that
    /// lives as long as its owner; too large for one binding, or out of
    /// device memory, is an error.
    fn create(&self, label: &str, size: u64, mapped: bool) -> Result<wgpu::Buffer, BackendError> {
        if size > self.max_binding() {
            return Err(BackendError::Unsupported(format!(
                "{label}: {size} bytes is more than the device's largest storage binding ({} bytes)",
                self.max_binding()
            )));
        }
        let (buffer, err) = scoped(&self.device, wgpu::ErrorFilter::OutOfMemory, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: mapped,
            })
        });
        match err {
            Some(e) => Err(BackendError::Device(format!("{label}: {e}"))),
            None => Ok(buffer),
        }
    }

    /// A buffer filled with `bytes` (weights straight from the memory map:
    /// mapped at creation and copied once, no staging copy in RAM).
    pub fn upload(&self, label: &str, bytes: &[u8]) -> Result<GpuBuf, BackendError> {
        let size = (bytes.len() as u64 + 4).next_multiple_of(4);
        let buffer = self.create(label, size, true)?;
        {
            let mut view = buffer
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| BackendError::Device(format!("{label}: {e}")))?;
            // The padding after the data is already zero (new buffers are).
            view.slice(..bytes.len()).copy_from_slice(bytes);
        }
        buffer.unmap();
        Ok(self.wrap(buffer, size))
    }

    /// A zeroed buffer of at least `size` bytes (a KV cache).
    pub fn zeroed(&self, label: &str, size: u64) -> Result<GpuBuf, BackendError> {
        let size = size.max(4).next_multiple_of(4);
        Ok(self.wrap(self.create(label, size, false)?, size))
    }

    /// A scratch buffer of at least `size` bytes from the pool; hand it
    /// back with [`Gpu::recycle`]. Sizes are rounded up to a power of two
    /// (at most the binding limit) so prompts of different lengths share.
    pub fn scratch(&self, size: u64) -> GpuBuf {
        let limit = self.max_binding();
        if size > limit {
            self.fail(format!(
                "an activation of {size} bytes is more than the device's largest storage binding ({limit} bytes); process the prompt in smaller batches"
            ));
        }
        let size = size.max(256).next_power_of_two().min(limit);
        {
            let mut r = self.rec();
            if let Some(b) = r.pool.get_mut(&size).and_then(Vec::pop) {
                r.pool_bytes -= size;
                return b;
            }
        }
        let (buffer, err) = scoped(&self.device, wgpu::ErrorFilter::OutOfMemory, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bitnet:activations"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        if let Some(e) = err {
            self.fail(format!("activation buffer of {size} bytes: {e}"));
        }
        self.wrap(buffer, size)
    }

    /// Called as the last handle of a scratch buffer goes away: keeps it
    /// for reuse (work already recorded on it still runs first, in order).
    pub fn recycle(&self, buf: &GpuBuf) {
        if Arc::strong_count(buf) != 1 {
            return;
        }
        let mut r = self.rec();
        if r.pool_bytes + buf.size <= POOL_BYTES {
            r.pool_bytes += buf.size;
            r.pool.entry(buf.size).or_default().push(buf.clone());
        }
    }

    /// Records one dispatch of `op` with `params` (at most [`SLOT`] bytes)
    /// and the storage buffers in the order of the op's bindings.
    pub fn dispatch(&self, op: Op, params: &[u32], bufs: &[&GpuBuf], groups: [u32; 3]) {
        debug_assert!(params.len() * 4 <= SLOT);
        debug_assert_eq!(bufs.len(), op.bindings().len());
        if groups.contains(&0) {
            return;
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return self.fail(format!(
                "{op:?}: {groups:?} workgroups is more than the device allows ({max} per dimension); process the prompt in smaller batches"
            ));
        }
        let mut r = self.rec();
        // (A loop: another thread may fill the slots between the flush and
        // taking the lock again.)
        // While the device is idle (nothing submitted since the last read)
        // the first submission comes after a quarter of the usual number,
        // so that the GPU starts as soon as possible.
        while r.params.len()
            >= if r.idle {
                self.slots.div_ceil(4)
            } else {
                self.slots
            } * SLOT
        {
            drop(r);
            self.flush();
            r = self.rec();
        }
        let offset = r.params.len() as u32;
        for p in params {
            r.params.extend_from_slice(&p.to_le_bytes());
        }
        r.params.resize(offset as usize + SLOT, 0);

        let mut key = Vec::with_capacity(bufs.len() + 1);
        key.push(op as u64);
        key.extend(bufs.iter().map(|b| b.id));
        let pipe = &self.pipes[&op];
        let mut failed = None;
        let bind_group = r
            .bind_groups
            .entry(key)
            .or_insert_with(|| {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &self.params.buffer,
                        offset: 0,
                        size: wgpu::BufferSize::new(SLOT as u64),
                    }),
                }];
                for (&(binding, _), b) in op.bindings().iter().zip(bufs) {
                    entries.push(wgpu::BindGroupEntry {
                        binding,
                        resource: b.buffer.as_entire_binding(),
                    });
                }
                let (group, err) = scoped(&self.device, wgpu::ErrorFilter::Validation, || {
                    self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("bitnet:bind"),
                        layout: &pipe.layout,
                        entries: &entries,
                    })
                });
                if let Some(e) = err {
                    failed = Some(format!("{op:?} bindings: {e}"));
                }
                group
            })
            .clone();
        if let Some(e) = failed {
            // Not kept: the next use tries again (and fails again).
            r.bind_groups.retain(|_, g| *g != bind_group);
            if r.error.is_none() {
                r.error = Some(e);
            }
            return;
        }
        r.cmds.push(Cmd::Dispatch {
            op,
            bind_group,
            offset,
            groups,
            shape: [
                params.first().copied().unwrap_or(0),
                params.get(1).copied().unwrap_or(0),
            ],
        });
    }

    /// Records a copy (`read` uses it to fetch a result).
    fn copy(&self, src: &GpuBuf, dst: &GpuBuf, size: u64) {
        self.rec().cmds.push(Cmd::Copy {
            src: src.clone(),
            dst: dst.clone(),
            size,
        });
    }

    /// Whether work is recorded but not submitted.
    pub fn pending(&self) -> bool {
        !self.rec().cmds.is_empty()
    }

    /// Submits everything recorded, as one command buffer.
    pub fn flush(&self) {
        let mut r = self.rec();
        // Bind groups of buffers that no longer exist.
        let dead: Vec<u64> =
            std::mem::take(&mut *self.dead.lock().unwrap_or_else(|e| e.into_inner()));
        if !dead.is_empty() {
            r.bind_groups
                .retain(|k, _| !k[1..].iter().any(|id| dead.contains(id)));
        }
        if r.cmds.is_empty() {
            return;
        }
        let cmds = std::mem::take(&mut r.cmds);
        r.idle = false;
        let started = self.profile.map(|_| web_time::Instant::now());
        // `gpu` profile: each dispatch in a pass of its own, timestamped.
        let mut timed: Vec<profile::Key> = Vec::new();
        let ((), err) = scoped(&self.device, wgpu::ErrorFilter::Validation, || {
            self.queue.write_buffer(&self.params.buffer, 0, &r.params);
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("bitnet:forward"),
                });
            let mut i = 0;
            while i < cmds.len() {
                if let Cmd::Copy { src, dst, size } = &cmds[i] {
                    enc.copy_buffer_to_buffer(&src.buffer, 0, &dst.buffer, 0, *size);
                    i += 1;
                    continue;
                }
                let timer = self
                    .timer
                    .as_ref()
                    .filter(|_| timed.len() < profile::MAX_TIMED as usize);
                let n = timed.len() as u32;
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("bitnet:ops"),
                    timestamp_writes: timer.map(|t| wgpu::ComputePassTimestampWrites {
                        query_set: &t.queries,
                        beginning_of_pass_write_index: Some(2 * n),
                        end_of_pass_write_index: Some(2 * n + 1),
                    }),
                });
                while let Some(Cmd::Dispatch {
                    op,
                    bind_group,
                    offset,
                    groups,
                    shape,
                }) = cmds.get(i)
                {
                    pass.set_pipeline(&self.pipes[op].pipeline);
                    pass.set_bind_group(0, bind_group, &[*offset]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    i += 1;
                    if timer.is_some() {
                        timed.push((*op, *shape, [groups[0], groups[1]]));
                        break;
                    }
                }
            }
            if let Some(t) = self.timer.as_ref().filter(|_| !timed.is_empty()) {
                let n = timed.len() as u32;
                enc.resolve_query_set(&t.queries, 0..2 * n, &t.resolve, 0);
                enc.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, u64::from(n) * 16);
            }
            self.queue.submit([enc.finish()]);
        });
        if let Some(started) = started {
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.flushes += 1;
            s.dispatches += cmds
                .iter()
                .filter(|c| matches!(c, Cmd::Dispatch { .. }))
                .count() as u64;
            s.flush_time += started.elapsed();
        }
        if let Some(t) = &self.timer {
            t.collect(&self.device, &timed, &self.stats);
        }
        r.params.clear();
        if let Some(e) = err {
            if r.error.is_none() {
                r.error = Some(e.to_string());
            }
        }
        if r.bind_groups.len() > 8192 {
            r.bind_groups.clear();
        }
    }

    /// Records a copy of `size` bytes of `buf` into a new mappable buffer,
    /// submits everything recorded, and reports the first error met.
    fn stage(&self, buf: &GpuBuf, size: u64) -> Result<GpuBuf, BackendError> {
        let staging = self.wrap(
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bitnet:readback"),
                size: size.max(4),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            size,
        );
        if size > 0 {
            self.copy(buf, &staging, size);
        }
        self.flush_errors()?;
        Ok(staging)
    }

    /// The bytes of a staging buffer once its mapping is done.
    fn unstage(staging: &GpuBuf, size: u64) -> Result<Vec<u8>, BackendError> {
        let out = staging
            .buffer
            .slice(..size)
            .get_mapped_range()
            .map_err(|e| BackendError::Device(e.to_string()))?
            .to_vec();
        staging.buffer.unmap();
        Ok(out)
    }

    /// Runs everything recorded and copies `size` bytes of `buf` back,
    /// waiting for the device. In the browser nothing may wait: this is an
    /// error there, and [`Gpu::read_async`] is the way.
    pub fn read(&self, buf: &GpuBuf, size: u64) -> Result<Vec<u8>, BackendError> {
        #[cfg(target_arch = "wasm32")]
        {
            let _ = (buf, size);
            Err(BackendError::Unsupported(
                "the browser cannot wait for the GPU: use the async calls (read_async, forward_async, next_async)".into(),
            ))
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let size = size.next_multiple_of(4);
            let staging = self.stage(buf, size)?;
            if size == 0 {
                return Ok(Vec::new());
            }
            let (tx, rx) = std::sync::mpsc::channel();
            staging
                .buffer
                .slice(..size)
                .map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send(r);
                });
            let started = self.profile.map(|_| web_time::Instant::now());
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| BackendError::Device(e.to_string()))?;
            if let Some(started) = started {
                let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.reads += 1;
                s.wait_time += started.elapsed();
            }
            rx.recv()
                .map_err(|e| BackendError::Device(e.to_string()))?
                .map_err(|e| BackendError::Device(e.to_string()))?;
            self.rec().idle = true;
            Self::unstage(&staging, size)
        }
    }

    /// [`Gpu::read`] without blocking: the mapping is awaited (the browser
    /// runs its event loop meanwhile). Natively the device is polled first,
    /// so the future is ready at once.
    pub async fn read_async(&self, buf: &GpuBuf, size: u64) -> Result<Vec<u8>, BackendError> {
        let size = size.next_multiple_of(4);
        let staging = self.stage(buf, size)?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot();
        staging
            .buffer
            .slice(..size)
            .map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| BackendError::Device(e.to_string()))?;
        rx.await.map_err(|e| BackendError::Device(e.to_string()))?;
        self.rec().idle = true;
        // Errors the browser reported while this work ran.
        self.flush_errors()?;
        Self::unstage(&staging, size)
    }

    /// Submits what is recorded and returns the first error met, if any.
    pub fn flush_errors(&self) -> Result<(), BackendError> {
        self.flush();
        let reported = self
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let recorded = self.rec().error.take();
        match recorded.or(reported) {
            Some(e) => Err(BackendError::Device(e)),
            None => Ok(()),
        }
    }

    /// Writes `bytes` into `buf` before any work recorded after this call
    /// (work recorded before it is submitted first).
    pub fn write(&self, buf: &GpuBuf, bytes: &[u8]) {
        if self.pending() {
            self.flush();
        }
        self.queue.write_buffer(&buf.buffer, 0, bytes);
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if self.profile.is_some() {
            let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            eprint!("{}", stats.report(&self.info.name));
        }
    }
}

/// `dot4I8Packed` where this device compiles it (and `BITNET_WGPU_DOT4`
/// is not `portable`), else the shift-and-multiply version.
fn choose_dot4(device: &wgpu::Device) -> Dot4 {
    if std::env::var("BITNET_WGPU_DOT4").is_ok_and(|v| v.eq_ignore_ascii_case("portable")) {
        return Dot4::Portable;
    }
    let src = format!(
        "{}@compute @workgroup_size(1) fn main() {{ _ = dot4(0x01020304u, 0x05060708u); }}",
        Dot4::Packed.prelude()
    );
    if cfg!(target_arch = "wasm32") {
        // The browser's compiler cannot be probed without waiting; it says
        // which WGSL extensions it has.
        let features = super::device::instance().wgsl_language_features();
        return if features.contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct) {
            Dot4::Packed
        } else {
            Dot4::Portable
        };
    }
    match probe(device, &src) {
        None => Dot4::Packed,
        Some(e) => {
            log::debug!("dot4I8Packed unavailable ({e}); using the portable int8 dot product");
            Dot4::Portable
        }
    }
}

/// `unpack2x16float` where this device compiles it, else the integer
/// conversion. (In the browser WGSL always has it.)
fn choose_halves(device: &wgpu::Device) -> Halves {
    if cfg!(target_arch = "wasm32") {
        return Halves::Builtin;
    }
    let src = format!(
        "{}@compute @workgroup_size(1) fn main() {{ _ = halves(0x3c00u); }}",
        Halves::Builtin.prelude()
    );
    match probe(device, &src) {
        None => Halves::Builtin,
        Some(e) => {
            log::debug!("unpack2x16float unavailable ({e}); using the integer f16 conversion");
            Halves::Portable
        }
    }
}

/// The validation error of compiling `src` on `device`, if any.
fn probe(device: &wgpu::Device, src: &str) -> Option<wgpu::Error> {
    let ((), err) = scoped(device, wgpu::ErrorFilter::Validation, || {
        let _ = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("bitnet:probe"),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
    });
    err
}

/// The runtime checks wgpu adds to our shaders. By default (`Bounds`)
/// every buffer access stays bounds-checked, but naga does not add the
/// counter it otherwise puts in every loop to bound it: our loops all end
/// by construction (counted, or the long division in rowquant.wgsl, which
/// ends for every finite divisor it is given), and on an H100 the counters
/// cost a third of decode speed (208 tokens/s without, 135 with). The
/// browser compiles WGSL its own way and always gets `All`.
/// `BITNET_WGPU_CHECKS=all|bounds|none` picks one (`none`: no bounds
/// checks either, for measuring what they cost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checks {
    All,
    Bounds,
    None,
}

impl Checks {
    fn from_env() -> Checks {
        if cfg!(target_arch = "wasm32") {
            return Checks::All;
        }
        match std::env::var("BITNET_WGPU_CHECKS").as_deref() {
            Ok("all") => Checks::All,
            Ok("none") => Checks::None,
            _ => Checks::Bounds,
        }
    }
}

fn compile(
    device: &wgpu::Device,
    shader: Shader,
    dot4: Dot4,
    halves: Halves,
    alt: bool,
    checks: Checks,
) -> Result<wgpu::ShaderModule, WgpuError> {
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(shader.name),
        source: wgpu::ShaderSource::Wgsl(shader.source_with(dot4, halves, alt).into()),
    };
    let (module, err) = scoped(device, wgpu::ErrorFilter::Validation, || match checks {
        Checks::All => device.create_shader_module(desc),
        Checks::Bounds | Checks::None => {
            let mut rc = wgpu::ShaderRuntimeChecks::checked();
            rc.force_loop_bounding = false;
            if checks == Checks::None {
                rc = wgpu::ShaderRuntimeChecks::unchecked();
            }
            // SAFETY: every loop of our shaders ends (see `Checks`); with
            // `None` (asked for by name) every index stays within the
            // buffers the backend sizes from validated shapes.
            unsafe { device.create_shader_module_trusted(desc, rc) }
        }
    });
    match err {
        None => Ok(module),
        Some(e) => Err(WgpuError::Shader {
            shader: shader.name.into(),
            reason: e.to_string(),
        }),
    }
}

fn make_pipe(device: &wgpu::Device, op: Op, module: &wgpu::ShaderModule, entry: &str) -> Pipe {
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }];
    for &(binding, access) in op.bindings() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: matches!(access, Read),
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(entry),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(entry),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(&pipeline_layout),
        module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    Pipe { pipeline, layout }
}

/// Runs `f` inside an error scope of `filter`; returns what it made and the
/// error the scope caught. In the browser a scope's answer comes only after
/// the event loop runs, and nothing may wait for it: there errors reach the
/// device's error handler instead (set in `Gpu::new`) and the next read
/// reports them.
fn scoped<T>(
    device: &wgpu::Device,
    filter: wgpu::ErrorFilter,
    f: impl FnOnce() -> T,
) -> (T, Option<wgpu::Error>) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let scope = device.push_error_scope(filter);
        let out = f();
        (out, pollster::block_on(scope.pop()))
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (device, filter);
        (f(), None)
    }
}

/// A one-value channel whose receiver is a future (a buffer mapping's
/// callback is the sender).
fn oneshot<T>() -> (OneshotSender<T>, Oneshot<T>) {
    let slot = Arc::new(Mutex::new((None, None)));
    (OneshotSender(slot.clone()), Oneshot(slot))
}

type OneshotSlot<T> = Arc<Mutex<(Option<T>, Option<std::task::Waker>)>>;

struct OneshotSender<T>(OneshotSlot<T>);

impl<T> OneshotSender<T> {
    fn send(self, value: T) {
        let waker = {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            slot.0 = Some(value);
            slot.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

struct Oneshot<T>(OneshotSlot<T>);

impl<T> std::future::Future for Oneshot<T> {
    type Output = T;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match slot.0.take() {
            Some(v) => std::task::Poll::Ready(v),
            None => {
                slot.1 = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}

//! The CPU backend's parallel loops.
//!
//! A decoded token runs about 200 small parallel loops (a few projections
//! per layer, then the LM head), each a fraction of a millisecond. Rayon's
//! workers fall asleep as soon as they find no work, so every loop paid for
//! waking them, and a token cost hundreds of context switches. During a
//! forward pass ([`with_team`]) the pool's other threads instead run a
//! helper that spins (then yields) between loops and picks up work the
//! moment a loop opens; outside a pass, [`for_each`] is an ordinary rayon
//! loop. The threads are rayon's own, so `--threads` and
//! `RAYON_NUM_THREADS` size both.
//!
//! A loop hands out item indices one at a time from an atomic counter
//! (callers make items blocks of rows), so a thread delayed by the rest of
//! the machine does less of the work instead of holding up the loop.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;

use rayon::prelude::*;

/// A loop body with its lifetime erased: valid while its loop is open (the
/// opening thread waits for every helper to leave before it returns).
type Job = *const (dyn Fn(usize) + Sync + 'static);

struct Team {
    /// Odd while a loop is open; each loop adds 2 (open, close).
    gen: AtomicUsize,
    job: Mutex<Option<SendJob>>,
    /// Items of the open loop, the next one to hand out, and how many are
    /// finished.
    n: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Helpers inside the open loop's body.
    busy: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Threads that may work on a loop (the opener and its helpers).
    threads: usize,
    opener: std::thread::ThreadId,
}

#[derive(Clone, Copy)]
struct SendJob(Job);
// SAFETY: the pointee is `Sync`; the pointer is only dereferenced while
// its loop is open (see `Team::run` and `Team::help`).
unsafe impl Send for SendJob {}

thread_local! {
    /// The team of the pass this thread opened, if any.
    static TEAM: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` (one forward pass) with the current rayon pool's other threads
/// kept at hand for [`for_each`]. Nested calls run `f` directly.
pub fn with_team<R>(f: impl FnOnce() -> R) -> R {
    let threads = rayon::current_num_threads();
    if threads <= 1 || !TEAM.with(|t| t.get().is_null()) {
        return f();
    }
    let team = Team {
        gen: AtomicUsize::new(0),
        job: Mutex::new(None),
        n: AtomicUsize::new(0),
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        busy: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        threads,
        opener: std::thread::current().id(),
    };
    let result = rayon::in_place_scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| team.help());
        }
        TEAM.with(|t| t.set(&team));
        let r = catch_unwind(AssertUnwindSafe(f));
        TEAM.with(|t| t.set(std::ptr::null()));
        // Helpers not yet started see this and return at once.
        team.stop.store(true, SeqCst);
        r
    });
    result.unwrap_or_else(|p| resume_unwind(p))
}

/// How many threads a loop opened here can use.
pub fn threads() -> usize {
    TEAM.with(|t| {
        // SAFETY: a non-null pointer is the team of the `with_team` call
        // still running on this thread (it clears the pointer before the
        // team is dropped).
        unsafe { t.get().as_ref() }.map_or_else(rayon::current_num_threads, |t| t.threads)
    })
}

/// Calls `f(i)` for every i in 0..n, in parallel: on the team when this
/// thread runs a forward pass, else on rayon's pool.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    let team = TEAM.with(|t| t.get());
    // SAFETY: as in `threads`.
    match unsafe { team.as_ref() } {
        Some(team) if n > 1 => team.run(n, &f),
        _ if n > 1 => (0..n).into_par_iter().for_each(&f),
        _ => (0..n).for_each(f),
    }
}

/// Calls `f(i, chunk)` for every `len`-long chunk of `data` (the last may
/// be shorter), in parallel as [`for_each`].
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    for_each_chunk_mut_of([data], [len], |_, i, chunk| f(i, chunk));
}

/// [`for_each_chunk_mut`] over several slices in one parallel loop:
/// `f(s, i, chunk)` for the i-th `len[s]`-long chunk of `data[s]`.
pub fn for_each_chunk_mut_of<T: Send, const N: usize>(
    data: [&mut [T]; N],
    len: [usize; N],
    f: impl Fn(usize, usize, &mut [T]) + Sync,
) {
    let len = len.map(|l| l.max(1));
    let totals: [usize; N] = std::array::from_fn(|s| data[s].len());
    let counts: [usize; N] = std::array::from_fn(|s| totals[s].div_ceil(len[s]));
    let bases = data.map(|d| SendPtr(d.as_mut_ptr()));
    for_each(counts.iter().sum(), |mut i| {
        let mut s = 0;
        while i >= counts[s] {
            i -= counts[s];
            s += 1;
        }
        let start = i * len[s];
        let end = (start + len[s]).min(totals[s]);
        // SAFETY: `for_each` calls each item once and items map one to one
        // onto (slice, chunk) pairs, so the chunks [start, end) are
        // disjoint and inside their slice, which stays mutably borrowed
        // until every call has returned.
        let chunk =
            unsafe { std::slice::from_raw_parts_mut(bases[s].get().add(start), end - start) };
        f(s, i, chunk)
    });
}

struct SendPtr<T>(*mut T);
impl<T> SendPtr<T> {
    // A method, so closures capture the whole wrapper (which is Sync), not
    // the raw pointer field.
    fn get(&self) -> *mut T {
        self.0
    }
}
// SAFETY: used only to hand disjoint chunks of slices of `T: Send` to
// other threads (`for_each_chunk_mut_of`).
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Busy-wait iterations before a waiting thread starts yielding its core.
const SPINS: u32 = 1 << 14;

fn wait_until(mut ready: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        if spins < SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl Team {
    /// Opens a loop of `n` items, works on it, and returns once every item
    /// is finished and no helper is inside `f` any more.
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let job: *const (dyn Fn(usize) + Sync + '_) = f;
        // SAFETY: only the lifetime is erased; helpers dereference the
        // pointer only while the loop is open, and this function does not
        // return before the loop is closed and `busy` is back to 0.
        let job: Job = unsafe { std::mem::transmute(job) };
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(SendJob(job));
        self.n.store(n, SeqCst);
        self.next.store(0, SeqCst);
        self.done.store(0, SeqCst);
        self.gen.fetch_add(1, SeqCst); // open
        let mine = catch_unwind(AssertUnwindSafe(|| self.work(f)));
        wait_until(|| self.done.load(SeqCst) >= n);
        self.gen.fetch_add(1, SeqCst); // close
        wait_until(|| self.busy.load(SeqCst) == 0);
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if self.panicked.swap(false, SeqCst) {
            panic!("a CPU worker thread panicked");
        }
    }

    /// Takes items of the open loop until there are none left.
    fn work(&self, f: &(dyn Fn(usize) + Sync)) {
        let n = self.n.load(SeqCst);
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= n {
                return;
            }
            // Count the item even if `f` panics, so the opener never
            // waits forever.
            struct Done<'a>(&'a AtomicUsize);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.fetch_add(1, SeqCst);
                }
            }
            let _done = Done(&self.done);
            f(i);
        }
    }

    /// A helper thread: joins each loop as it opens until the pass ends.
    fn help(&self) {
        // Rayon may run a helper on the opener's own thread (while it waits
        // inside some rayon call): it must not spin there until the pass
        // ends, which would never come.
        if std::thread::current().id() == self.opener {
            return;
        }
        let mut seen = 0;
        loop {
            let mut gen = 0;
            wait_until(|| {
                gen = self.gen.load(SeqCst);
                (gen % 2 == 1 && gen != seen) || self.stop.load(SeqCst)
            });
            if gen % 2 == 0 || gen == seen {
                return; // stopped
            }
            seen = gen;
            self.busy.fetch_add(1, SeqCst);
            // Re-checked after announcing ourselves: if the loop is still
            // open, its opener will wait for `busy` to drop before it
            // returns, so the job stays valid while we use it.
            if self.gen.load(SeqCst) == gen {
                let job = *self.job.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(SendJob(job)) = job {
                    // SAFETY: see above: the loop is open and waits for us.
                    let f = unsafe { &*job };
                    if catch_unwind(AssertUnwindSafe(|| self.work(f))).is_err() {
                        self.panicked.store(true, SeqCst);
                    }
                }
            }
            self.busy.fetch_sub(1, SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    }

    #[test]
    fn every_item_once_on_and_off_a_team() {
        for n_threads in [1, 2, 4] {
            pool(n_threads).install(|| {
                let check = || {
                    for n in [0, 1, 2, 3, 17, 1000] {
                        let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                        for_each(n, |i| {
                            hits[i].fetch_add(1, SeqCst);
                        });
                        assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n = {n}");
                        let mut v = vec![0usize; n];
                        for_each_chunk_mut(&mut v, 7, |c, chunk| {
                            for (j, x) in chunk.iter_mut().enumerate() {
                                *x += c * 7 + j + 1;
                            }
                        });
                        assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1));
                    }
                };
                check();
                with_team(|| {
                    assert_eq!(threads(), n_threads);
                    // Many loops in a row, as a forward pass runs them.
                    for _ in 0..200 {
                        check();
                    }
                    with_team(check); // nested: runs directly
                });
            });
        }
    }

    #[test]
    fn panics_reach_the_caller_and_the_team_survives() {
        pool(2).install(|| {
            let r = catch_unwind(|| {
                with_team(|| {
                    for_each(64, |i| {
                        if i == 40 {
                            panic!("item 40");
                        }
                    })
                })
            });
            assert!(r.is_err());
            // The thread-local is cleared: later loops run normally.
            let sum = AtomicU64::new(0);
            with_team(|| {
                for_each(100, |i| {
                    sum.fetch_add(i as u64, SeqCst);
                })
            });
            assert_eq!(sum.load(SeqCst), 4950);
        });
    }
}

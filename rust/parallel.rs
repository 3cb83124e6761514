//! mlecore's own thread pool and how work is cut into tasks.
//!
//! The pool is rebuilt when the thread count changes and after `fork()`: rayon's global pool
//! hangs in a forked child (its worker threads do not exist there), so the pool is keyed by
//! the process id.

use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Elements a task should cover at least (256 KiB of float32), so scheduling is amortized.
pub const TASK_ELEMS: usize = 1 << 16;

struct Pool {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
static REQUESTED: Mutex<Option<usize>> = Mutex::new(None);

fn default_threads() -> usize {
    std::env::var("MLECORE_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The number of threads kernels use.
pub fn num_threads() -> usize {
    let requested = *REQUESTED.lock().unwrap_or_else(|e| e.into_inner());
    requested.unwrap_or_else(default_threads)
}

/// Sets the number of threads kernels use (at least 1).
pub fn set_num_threads(n: usize) {
    *REQUESTED.lock().unwrap_or_else(|e| e.into_inner()) = Some(n.max(1));
}

fn pool() -> Arc<rayon::ThreadPool> {
    let threads = num_threads();
    let pid = std::process::id();
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref() {
        if p.pid == pid && p.threads == threads {
            return p.pool.clone();
        }
    }
    if let Some(old) = guard.take() {
        if old.pid != pid {
            // Inherited across fork(): its threads are gone, and dropping it would wait on them.
            std::mem::forget(old);
        }
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mlecore-{i}"))
            .build()
            .expect("building a thread pool"),
    );
    *guard = Some(Pool {
        pid,
        threads,
        pool: pool.clone(),
    });
    pool
}

/// Runs `f(range)` over `0..units` cut into ranges of at least `TASK_ELEMS` elements, where
/// one unit holds `unit_elems` elements, on mlecore's pool.
pub fn for_blocks(units: usize, unit_elems: usize, f: impl Fn(Range<usize>) + Sync) {
    if units == 0 {
        return;
    }
    let per = (TASK_ELEMS / unit_elems.max(1)).max(1);
    let blocks = units.div_ceil(per);
    if blocks == 1 || num_threads() == 1 {
        f(0..units);
        return;
    }
    pool().install(|| {
        (0..blocks)
            .into_par_iter()
            .for_each(|b| f(b * per..((b + 1) * per).min(units)))
    });
}

/// Runs `f(range)` over `0..units` cut into a few contiguous ranges per thread, for work whose
/// units are large (whole columns of a matrix).
pub fn for_ranges(units: usize, f: impl Fn(Range<usize>) + Sync) {
    let threads = num_threads();
    if units == 0 {
        return;
    }
    if threads == 1 || units == 1 {
        f(0..units);
        return;
    }
    let parts = units.min(2 * threads);
    pool().install(|| {
        (0..parts)
            .into_par_iter()
            .for_each(|p| f(p * units / parts..(p + 1) * units / parts))
    });
}

/// A slice that tasks write at disjoint indices.
pub struct Shared<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: `Shared` is only used to write disjoint indices from different tasks (`set`'s
// contract), which is data-race free for `T: Send`.
unsafe impl<T: Send> Sync for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Shared<T> {}

impl<T> Shared<T> {
    pub fn new(s: &mut [T]) -> Self {
        Shared {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// No two tasks may write the same index, and nothing may read it meanwhile.
    pub unsafe fn set(&self, i: usize, v: T) {
        assert!(i < self.len);
        // SAFETY: in bounds (checked) and exclusive (the caller's contract).
        unsafe { *self.ptr.add(i) = v }
    }
}

/// A raw pointer that may cross threads; the kernel that uses it keeps accesses disjoint.
#[derive(Clone, Copy)]
pub struct SendPtr<T>(pub *mut T);
// SAFETY: only dereferenced at disjoint ranges by different tasks (each kernel's contract).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

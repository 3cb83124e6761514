//! mlecore's own thread pool and how work is cut into tasks.
//!
//! The pool is rebuilt when the thread count changes and after `fork()`: rayon's global pool
//! hangs in a forked child (its worker threads do not exist there), so the pool is keyed by
//! the process id. Nothing a forked child touches can be left locked by a thread of its
//! parent: the settings are atomics, and the pool's lock is held across `fork()` by the
//! forking thread itself (`pthread_atfork`), which releases it on both sides.

use std::any::Any;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Elements a task should cover at least (256 KiB of float32), so scheduling is amortized.
pub const TASK_ELEMS: usize = 1 << 16;

/// How long a worker that finished its tasks keeps watching for the next call's before it
/// returns to the pool, where it sleeps. Waking a sleeping thread on a virtual machine takes
/// tens of microseconds, longer than a kernel on a row in cache; a worker still watching
/// joins the next call at once. `MLECORE_LINGER_US` sets it (0: never watch).
const LINGER: Duration = Duration::from_micros(200);

/// How much of the watch is a pure spin (back-to-back calls, as a chunked loop makes them).
/// After it, the watcher yields its core at every look: a thread of another pool that wants
/// the core (torch's OpenMP team, a BLAS library) gets it at once, so watching only ever uses
/// cycles nobody else wants. A pure spin of the whole watch kept torch's workers off a core
/// of two for up to 200 µs after each mlecore call.
const SPIN: Duration = Duration::from_micros(20);

/// [`LINGER`], or `MLECORE_LINGER_US`: read once.
fn linger() -> Duration {
    static US: AtomicU64 = AtomicU64::new(u64::MAX);
    let mut us = US.load(Ordering::Relaxed);
    if us == u64::MAX {
        us = std::env::var("MLECORE_LINGER_US")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(LINGER.as_micros() as u64)
            .min(1_000_000);
        US.store(us, Ordering::Relaxed);
    }
    Duration::from_micros(us)
}

struct Pool {
    pid: u32,
    threads: usize,
    /// `None` when the workers could not be started: the caller then works alone.
    pool: Option<Arc<rayon::ThreadPool>>,
    board: Arc<Board>,
}

/// Where a call posts its tasks for workers still watching after the previous call. One per
/// pool, so that a forked child (with a new pool) never touches a lock that a thread of its
/// parent may have held.
#[derive(Default)]
struct Board {
    latest: Mutex<Option<Arc<Tasks>>>,
    /// Calls posted so far.
    posted: AtomicU64,
    /// Workers watching now.
    watching: AtomicUsize,
}

impl Board {
    /// A worker's job: the tasks it was spawned for, then those of each call posted while it
    /// watches, until `LINGER` passes without one.
    fn serve(&self, first: Arc<Tasks>) {
        let mut seen = self.posted.load(Ordering::Acquire);
        first.work();
        drop(first);
        let linger = linger();
        if linger.is_zero() {
            return;
        }
        self.watching.fetch_add(1, Ordering::AcqRel);
        let mut since = Instant::now();
        loop {
            let posted = self.posted.load(Ordering::Acquire);
            if posted != seen {
                seen = posted;
                let latest = self
                    .latest
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(t) = latest {
                    t.work();
                }
                since = Instant::now();
                continue;
            }
            let idle = since.elapsed();
            if idle > linger {
                break;
            }
            if idle < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        self.watching.fetch_sub(1, Ordering::AcqRel);
    }
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
/// The thread count asked for by [`set_num_threads`]; 0 until then.
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

/// The thread count of the framework calling the kernels (torch's intra-op threads), when it
/// said one ([`follow_threads`]); 0 until then.
static FOLLOWED: AtomicUsize = AtomicUsize::new(0);

/// `MLECORE_NUM_THREADS` (0 when unset), and the cores available to the process: worked out
/// once, the first time they are needed. `available_parallelism` reads the cgroup's CPU
/// quota from files, which cost a short kernel call more than its arithmetic
/// (BENCHMARKS.md).
fn default_threads() -> (usize, usize) {
    static ENV: AtomicUsize = AtomicUsize::new(usize::MAX);
    static CORES: AtomicUsize = AtomicUsize::new(0);
    // ENV is stored last, with Release: a thread that sees it set sees CORES too.
    if ENV.load(Ordering::Acquire) == usize::MAX {
        let env = std::env::var("MLECORE_NUM_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CORES.store(cores, Ordering::Relaxed);
        ENV.store(env, Ordering::Release);
    }
    (ENV.load(Ordering::Acquire), CORES.load(Ordering::Relaxed))
}

/// The number of threads kernels use: [`set_num_threads`]'s, else `MLECORE_NUM_THREADS`, else
/// the calling framework's ([`follow_threads`]), else the cores available.
pub fn num_threads() -> usize {
    match REQUESTED.load(Ordering::Relaxed) {
        0 => match default_threads() {
            (0, cores) => match FOLLOWED.load(Ordering::Relaxed) {
                0 => cores,
                n => n,
            },
            (env, _) => env,
        },
        n => n,
    }
}

/// The thread count of the framework that calls the kernels (torch's `get_num_threads()`):
/// used unless mlecore was given a count of its own, so that a process that limits torch's
/// threads limits mlecore's too.
pub fn follow_threads(n: usize) {
    FOLLOWED.store(n, Ordering::Relaxed);
}

/// Sets the number of threads kernels use (at least 1).
pub fn set_num_threads(n: usize) {
    REQUESTED.store(n.max(1), Ordering::Relaxed);
}

/// `workers` threads for the pool, or `None` when they cannot be started (a resource limit):
/// kernels then run on the calling thread alone instead of failing.
fn start_workers(workers: usize, stack_size: Option<usize>) -> Option<Arc<rayon::ThreadPool>> {
    let mut builder = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("mlecore-{i}"));
    if let Some(bytes) = stack_size {
        builder = builder.stack_size(bytes);
    }
    builder.build().ok().map(Arc::new)
}

/// The pool for `threads` threads in all (the caller and `threads − 1` workers).
fn pool(threads: usize) -> (Option<Arc<rayon::ThreadPool>>, Arc<Board>) {
    fork::guard_pool_lock();
    let pid = std::process::id();
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref() {
        if p.pid == pid && p.threads == threads {
            return (p.pool.clone(), p.board.clone());
        }
    }
    if let Some(old) = guard.take() {
        if old.pid != pid {
            // Inherited across fork(): its threads are gone, and dropping it would wait on them.
            std::mem::forget(old);
        }
    }
    // The thread that calls a kernel works alongside the pool ([`run_tasks`]).
    let pool = start_workers(threads - 1, None);
    let board = Arc::new(Board::default());
    *guard = Some(Pool {
        pid,
        threads,
        pool: pool.clone(),
        board: board.clone(),
    });
    (pool, board)
}

/// Holding the pool's lock across `fork()`: a thread of the parent that held it when another
/// forked would otherwise leave it locked forever in the child, whose first kernel call would
/// then wait on it.
#[cfg(unix)]
mod fork {
    use super::{Pool, POOL};
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::MutexGuard;

    thread_local! {
        /// The lock, taken by the forking thread before `fork()` and released after it.
        static HELD: RefCell<Option<MutexGuard<'static, Option<Pool>>>> =
            const { RefCell::new(None) };
    }

    extern "C" fn before_fork() {
        let guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
        HELD.with(|h| *h.borrow_mut() = Some(guard));
    }

    extern "C" fn after_fork() {
        // In the parent and in the child alike, the thread that forked is the one that holds
        // the lock, so it may release it.
        HELD.with(|h| drop(h.borrow_mut().take()));
    }

    /// Registers the handlers, once, before the pool's lock is first taken.
    pub fn guard_pool_lock() {
        static REGISTERED: AtomicBool = AtomicBool::new(false);
        if !REGISTERED.swap(true, Ordering::AcqRel) {
            // SAFETY: the handlers are plain functions that live as long as the process; they
            // take and release a lock that no handler of theirs holds already.
            unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
        }
    }
}

#[cfg(not(unix))]
mod fork {
    /// No `fork()` here.
    pub fn guard_pool_lock() {}
}

/// The tasks of one [`run_tasks`] call, shared with the pool's workers.
struct Tasks {
    n: usize,
    /// The next task to take; values ≥ n mean none is left.
    next: AtomicUsize,
    /// Tasks finished (or panicked).
    done: AtomicUsize,
    /// The caller's closure, its lifetime erased: only called for a task taken while
    /// `done < n`, and the caller does not return before `done == n` (see [`run_tasks`]).
    task: *const (dyn Fn(usize) + Sync),
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `task` points to a `Sync` closure that outlives every call through it
// ([`run_tasks`]'s protocol); the other fields are thread-safe.
unsafe impl Send for Tasks {}
// SAFETY: as above.
unsafe impl Sync for Tasks {}

impl Tasks {
    /// Takes and runs tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // SAFETY: task i was taken before `done` reached n, so the caller is still
            // waiting in `run_tasks` and the closure is alive.
            let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*self.task)(i) }));
            if let Err(p) = r {
                *self.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Runs `task(i)` for every i in `0..n` on up to [`num_threads`] threads: the calling thread
/// and the pool's workers each take the next task as they finish one.
///
/// The calling thread works too and never waits for a worker that has not started: a worker
/// woken late finds no task left and returns without touching the closure. Waking a sleeping
/// thread on a virtual machine can take longer than a short kernel, so a short call runs at
/// the caller's speed instead of waiting for the wake-up; workers still watching after the
/// previous call (see [`LINGER`]) join at once, and only the others are woken.
fn run_tasks(n: usize, task: impl Fn(usize) + Sync) {
    let all = num_threads();
    let threads = all.min(n);
    if threads <= 1 {
        (0..n).for_each(task);
        return;
    }
    let task: &(dyn Fn(usize) + Sync) = &task;
    // SAFETY: only the lifetime is erased. The closure is called for tasks taken while
    // `done < n`; this function returns only once `done == n`, after which every task
    // index is taken and no worker calls the closure again.
    let task: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(task) };
    let tasks = Arc::new(Tasks {
        n,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        task,
        panic: Mutex::new(None),
    });
    let (pool, board) = pool(all);
    if let Some(pool) = pool {
        *board.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(tasks.clone());
        board.posted.fetch_add(1, Ordering::AcqRel);
        // A watcher that stops just now leaves its share to the caller: slower, never wrong.
        let watching = board.watching.load(Ordering::Acquire).min(threads - 1);
        for _ in watching + 1..threads {
            let (t, b) = (tasks.clone(), board.clone());
            pool.spawn(move || b.serve(t));
        }
    }
    tasks.work();
    let mut spins = 0u32;
    while tasks.done.load(Ordering::Acquire) < n {
        if spins < 1 << 12 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    {
        let mut latest = board.latest.lock().unwrap_or_else(|e| e.into_inner());
        if latest.as_ref().is_some_and(|t| Arc::ptr_eq(t, &tasks)) {
            *latest = None;
        }
    }
    let panic = tasks.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = panic {
        resume_unwind(p);
    }
}

/// Runs `f(range)` over `0..units` cut into ranges of at least `TASK_ELEMS` elements, where
/// one unit holds `unit_elems` elements.
pub fn for_blocks(units: usize, unit_elems: usize, f: impl Fn(Range<usize>) + Sync) {
    let per = (TASK_ELEMS / unit_elems.max(1)).max(1);
    run_tasks(units.div_ceil(per), |b| {
        f(b * per..((b + 1) * per).min(units))
    });
}

/// Runs `f(range)` over `0..units` cut into a few contiguous ranges per thread, for work whose
/// units are large (whole columns of a matrix).
pub fn for_ranges(units: usize, f: impl Fn(Range<usize>) + Sync) {
    let parts = units.min(2 * num_threads());
    run_tasks(parts, |p| f(p * units / parts..(p + 1) * units / parts));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for n in [0, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            run_tasks(n, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn calls_from_several_threads_back_to_back_each_run_every_task_once() {
        // Workers watching after one call pick up the next, whichever thread posts it; a
        // call whose tasks another caller's watcher never sees still completes.
        std::thread::scope(|s| {
            for t in 0..3 {
                s.spawn(move || {
                    for call in 0..300 {
                        let n = 1 + (call * 7 + t) % 13;
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        run_tasks(n, |i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn workers_that_cannot_start_are_no_error() {
        // A stack no system can give: the pool is None, where it used to panic.
        assert!(start_workers(2, Some(usize::MAX / 2)).is_none());
        assert!(start_workers(1, None).is_some());
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_without_a_hang() {
        let ran = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            run_tasks(64, |i| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert_ne!(i, 5, "task five fails");
            })
        }));
        assert!(r.is_err());
        // The other tasks still ran: none was left holding the caller.
        assert_eq!(ran.load(Ordering::Relaxed), 64);
    }
}

//! Helper threads that share one operator's rows (a matrix product's, a convolution's, a resampling's) with the
//! calling thread. A decoding step is about a hundred products of a fraction of a millisecond each, so helpers spin
//! briefly between them instead of sleeping: waking a sleeping pool thread costs as much as the product. After a
//! short idle spell they sleep until the next product.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper keeps spinning for the next product before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// A job: pieces `0..pieces`, each run once by whichever thread claims it.
type Job<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// Bumped for every job; a helper runs each generation once.
    generation: AtomicUsize,
    job: Mutex<Option<JobRef>>,
    pieces: AtomicUsize,
    next_piece: AtomicUsize,
    /// Helpers still working on the current generation.
    pending: AtomicUsize,
    panicked: AtomicBool,
    sleeping: AtomicUsize,
    wake: Condvar,
    wake_lock: Mutex<()>,
}

/// The job as a raw pointer: the caller of [`Workers::run`] keeps it alive until every helper is done with it.
#[derive(Clone, Copy)]
struct JobRef(*const Job<'static>);

// SAFETY: the job is `Sync` and outlives every use (see `Workers::run`).
unsafe impl Send for JobRef {}

/// A set of helper threads; `run` splits a job between them and the caller.
pub struct Workers {
    shared: Arc<Shared>,
    helpers: usize,
    /// One job at a time: a second caller waits.
    running: Mutex<()>,
}

impl Workers {
    fn new(helpers: usize) -> Workers {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            pieces: AtomicUsize::new(0),
            next_piece: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
        });
        let mut started = 0;
        for ix in 0..helpers {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new().name(format!("lookout-mm-{ix}")).spawn(move || helper(&shared));
            if spawned.is_ok() {
                started += 1;
            }
        }
        Workers { shared, helpers: started, running: Mutex::new(()) }
    }

    /// Threads a job runs on, the caller included.
    pub fn threads(&self) -> usize {
        self.helpers + 1
    }

    /// Runs `job(piece)` for every piece in `0..pieces`, on the helpers and the calling thread; returns when all
    /// are done. A panic in a piece is raised again here.
    pub fn run<'a>(&self, pieces: usize, job: &'a Job<'a>) {
        if self.helpers == 0 || pieces <= 1 {
            (0..pieces).for_each(job);
            return;
        }
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: the lifetime is erased only while this function waits for every helper to finish with the job.
        let job_ref =
            JobRef(unsafe { std::mem::transmute::<&'a Job<'a>, &'static Job<'static>>(job) } as *const Job<'static>);
        *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job_ref);
        shared.pieces.store(pieces, Ordering::SeqCst);
        shared.next_piece.store(0, Ordering::SeqCst);
        shared.panicked.store(false, Ordering::SeqCst);
        shared.pending.store(self.helpers, Ordering::SeqCst);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.sleeping.load(Ordering::SeqCst) > 0 {
            let _guard = shared.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| run_pieces(shared, job)));
        while shared.pending.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if shared.panicked.load(Ordering::SeqCst) {
            panic!("a matrix product helper thread panicked");
        }
    }
}

fn run_pieces(shared: &Shared, job: &Job<'_>) {
    let pieces = shared.pieces.load(Ordering::Acquire);
    loop {
        let piece = shared.next_piece.fetch_add(1, Ordering::AcqRel);
        if piece >= pieces {
            return;
        }
        job(piece);
    }
}

fn helper(shared: &Shared) {
    let mut seen = 0;
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        while shared.generation.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || idle_since.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            shared.sleeping.fetch_add(1, Ordering::SeqCst);
            let mut guard = shared.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            while shared.generation.load(Ordering::SeqCst) == seen {
                guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            drop(guard);
            shared.sleeping.fetch_sub(1, Ordering::SeqCst);
        }
        seen = shared.generation.load(Ordering::Acquire);
        let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(JobRef(job)) = job {
            // SAFETY: the caller of `run` keeps the job alive until `pending` reaches zero, after this.
            let job = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| run_pieces(shared, job))).is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

static WORKERS: Mutex<Option<Arc<Workers>>> = Mutex::new(None);
static SINGLE: OnceLock<Arc<Workers>> = OnceLock::new();

/// Sets how many threads block-quantized products use from now on (`0` and `1`: the calling thread only).
pub fn set_threads(threads: usize) {
    let mut current = WORKERS.lock().unwrap_or_else(|e| e.into_inner());
    if current.as_ref().map(|w| w.threads()) != Some(threads.max(1)) {
        // Helpers of a replaced set stay parked; thread counts change once or twice in a process's life.
        *current = Some(Arc::new(Workers::new(threads.max(1) - 1)));
    }
}

/// The workers products run on now.
pub fn current() -> Arc<Workers> {
    let current = WORKERS.lock().unwrap_or_else(|e| e.into_inner());
    match current.as_ref() {
        Some(workers) => workers.clone(),
        None => SINGLE.get_or_init(|| Arc::new(Workers::new(0))).clone(),
    }
}

/// Below this many multiply-adds, [`share`] runs a job on the calling thread alone: waking helpers costs more.
const SHARED_MIN_MACS: usize = 1 << 20;

/// Runs `job` over every index of `0..len`, a job of `macs` multiply-adds: on the calling thread alone when it is
/// small or there are no helpers, else in a few ranges per thread, each a multiple of `align` long but the last.
pub fn share(len: usize, macs: usize, align: usize, job: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    share_on(&current(), len, macs, align, job)
}

fn share_on(workers: &Workers, len: usize, macs: usize, align: usize, job: &(dyn Fn(Range<usize>) + Sync)) {
    if len == 0 || macs < SHARED_MIN_MACS || workers.threads() == 1 {
        return job(0..len);
    }
    let chunk = len.div_ceil(workers.threads() * 4).next_multiple_of(align.max(1));
    workers.run(len.div_ceil(chunk), &|piece| job(piece * chunk..((piece + 1) * chunk).min(len)));
}

/// Runs `job` over the rows of `out` (`row_len` values each) as [`share`] shares a job of `macs` multiply-adds:
/// each range of rows with its own part of `out`.
pub fn share_rows(out: &mut [f32], row_len: usize, macs: usize, job: &(dyn Fn(Range<usize>, &mut [f32]) + Sync)) {
    share_rows_on(&current(), out, row_len, macs, job)
}

fn share_rows_on(
    workers: &Workers,
    out: &mut [f32],
    row_len: usize,
    macs: usize,
    job: &(dyn Fn(Range<usize>, &mut [f32]) + Sync),
) {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let base = RowsOf(out.as_mut_ptr());
    share_on(workers, rows, macs, 1, &|range| {
        let base = &base;
        // SAFETY: `share` hands out disjoint ranges of `0..rows`, so each part of `out` is lent to one job only,
        // and `out` outlives the call.
        let part = unsafe { std::slice::from_raw_parts_mut(base.0.add(range.start * row_len), range.len() * row_len) };
        job(range, part)
    });
}

/// The start of a buffer whose rows [`share_rows`] lends to threads.
struct RowsOf(*mut f32);

// SAFETY: only `share_rows` reads it, and it lends each row to one thread.
unsafe impl Sync for RowsOf {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_runs_once_across_threads_and_jobs() {
        let workers = Workers::new(2);
        assert_eq!(workers.threads(), 3);
        for pieces in [0, 1, 2, 7, 100] {
            let counts: Vec<AtomicUsize> = (0..pieces).map(|_| AtomicUsize::new(0)).collect();
            workers.run(pieces, &|p| {
                counts[p].fetch_add(1, Ordering::SeqCst);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::SeqCst) == 1), "{pieces} pieces");
        }
        // After the helpers have gone to sleep they still wake for the next job.
        std::thread::sleep(Duration::from_millis(20));
        let total = AtomicUsize::new(0);
        workers.run(64, &|p| {
            total.fetch_add(p, Ordering::SeqCst);
        });
        assert_eq!(total.load(Ordering::SeqCst), 64 * 63 / 2);
    }

    #[test]
    fn shared_rows_are_each_written_once_by_the_range_that_holds_them() {
        let workers = Workers::new(2);
        for (rows, row_len) in [(0, 3), (1, 5), (37, 4), (1000, 3)] {
            let mut out = vec![0f32; rows * row_len];
            share_rows_on(&workers, &mut out, row_len, SHARED_MIN_MACS, &|range, part| {
                assert_eq!(part.len(), range.len() * row_len);
                for (r, row) in range.zip(part.chunks_exact_mut(row_len)) {
                    row.iter_mut().for_each(|v| *v += r as f32 + 1.0);
                }
            });
            let expected: Vec<f32> = (0..rows).flat_map(|r| vec![r as f32 + 1.0; row_len]).collect();
            assert_eq!(out, expected, "{rows} rows of {row_len}");
        }
    }

    #[test]
    fn a_panicking_piece_is_raised_in_the_caller_and_the_workers_go_on() {
        let workers = Workers::new(1);
        let result = catch_unwind(AssertUnwindSafe(|| workers.run(8, &|p| assert!(p != 5, "piece five"))));
        assert!(result.is_err());
        let total = AtomicUsize::new(0);
        workers.run(8, &|p| {
            total.fetch_add(p, Ordering::SeqCst);
        });
        assert_eq!(total.load(Ordering::SeqCst), 28);
    }
}

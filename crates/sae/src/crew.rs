//! The threads a sweep trains on: one run at a time per thread, the
//! costliest first, and threads with nothing left helping the others' steps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::config::SaeConfig;
use crate::duo::{Duo, Exec};

use crate::run::{drive_run, Run, Shared};

/// Trains every run: one run at a time on each thread of the rayon pool
/// (`RAYON_NUM_THREADS`, or `xtask --threads`), the costliest first (a
/// longest-first schedule), and a thread with nothing left to train helps a
/// thread still training with each of its steps (`Exec::Duo`), so a single
/// run still uses two cores. A run gives the same bits on any number of
/// threads: its features split into two halves fixed by `d_sae`, whichever
/// thread runs each. (Measured on the 2-core target with the zoo's seven SAEs
/// over 8 epochs: 25.9-28.7 s this way, 32.1-36.2 s stepping all seven in
/// lockstep, each step split over both cores, whose helper then idled
/// through each step's serial parts.)
pub(crate) fn drive_all(mut runs: Vec<&mut Run>, shared: &Shared) {
    let threads = rayon::current_num_threads().min(2 * runs.len());
    if threads < 2 || !runs.iter().any(|r| r.trainer.uses_helper_thread()) {
        for run in runs {
            // The fast path runs with subnormals flushed; the reference (candle,
            // on threads of its own) keeps IEEE arithmetic.
            if run.trainer.uses_helper_thread() {
                subnormals::flushed(|| drive_run(run, shared, &|| Exec::Serial));
            } else {
                drive_run(run, shared, &|| Exec::Serial);
            }
        }
        return;
    }
    let rows = shared.raw.data.rows();
    // Ascending, so that `pop` takes the costliest.
    runs.sort_by(|a, b| cost(a.cfg, rows).total_cmp(&cost(b.cfg, rows)));
    let queue = Mutex::new(runs);
    let crew = Crew::new(threads);
    // Every worker, and the helper each may become, runs with subnormals
    // flushed (`subnormals`: 2.5x on Intel, the same bits).
    let worker = |i: usize| {
        subnormals::flushed(|| {
            let _done = WorkerDone { crew: &crew, i };
            let exec = || {
                if crew.helped[i].load(Ordering::Acquire) {
                    Exec::Duo(&crew.duos[i])
                } else {
                    Exec::Serial
                }
            };
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(run) = next else {
                    break;
                };
                drive_run(run, shared, &exec);
            }
        })
    };
    std::thread::scope(|scope| {
        for i in 1..threads {
            scope.spawn(move || worker(i));
        }
        worker(0);
    });
}

/// The workers of `drive_all`: each one's `Duo` (it is the caller, a worker
/// with nothing left to train its helper), whether it has a helper, and
/// which workers are still training.
pub(crate) struct Crew {
    pub(crate) duos: Vec<Duo>,
    /// Read by worker i before each step: whether its `Duo` has a helper.
    pub(crate) helped: Vec<AtomicBool>,
    /// Per worker: (still training, has a helper); changed under the lock.
    pub(crate) slots: Mutex<Vec<(bool, bool)>>,
}

impl Crew {
    pub(crate) fn new(workers: usize) -> Crew {
        Crew {
            duos: (0..workers).map(|_| Duo::new()).collect(),
            helped: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            slots: Mutex::new(vec![(true, false); workers]),
        }
    }

    /// A worker still training that has no helper, now claimed as helped.
    pub(crate) fn claim(&self) -> Option<usize> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let j = slots
            .iter()
            .position(|&(training, helped)| training && !helped)?;
        slots[j].1 = true;
        self.helped[j].store(true, Ordering::Release);
        Some(j)
    }
}

/// When worker `i` has no run left (or is unwinding): it releases its helper,
/// if any, then helps each worker still training that has none, one after
/// another, until none is left.
pub(crate) struct WorkerDone<'a> {
    pub(crate) crew: &'a Crew,
    pub(crate) i: usize,
}

impl Drop for WorkerDone<'_> {
    fn drop(&mut self) {
        let crew = self.crew;
        let had_helper = {
            let mut slots = crew.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots[self.i].0 = false;
            slots[self.i].1
        };
        if had_helper {
            // Its helper returns (at once if it has not started) and looks on.
            crew.duos[self.i].release();
        }
        if std::thread::panicking() {
            return;
        }
        while let Some(j) = crew.claim() {
            crew.duos[j].help_until_released();
        }
    }
}

/// A run's training cost relative to others, for the longest-first order:
/// its steps times the weights a step reads, times what its architecture's
/// step costs beyond that (`ArchitectureSpec::relative_step_cost`).
pub(crate) fn cost(cfg: &SaeConfig, rows: usize) -> f64 {
    let steps = cfg.steps_per_epoch(rows) * cfg.epochs;
    steps as f64
        * (cfg.d_sae * (cfg.d_in + cfg.d_out())) as f64
        * cfg.architecture.relative_step_cost()
}

//! A two-thread fork-join with spin-waiting, for the fast trainer's
//! sub-millisecond phases.
//!
//! On the 2-core target machine an empty `rayon::join` costs about 20 us
//! (the idle worker sleeps and must be woken), more than the phases it would
//! split. Here a helper thread (a sweep's core with no point left to train)
//! spins (then yields) between tasks until it is released, so handing it
//! work costs well under a microsecond.
//! If the helper has not picked a task up by the time the caller is done with
//! its own half (it was descheduled on a busy machine), the caller takes the
//! task back and runs it itself rather than wait.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const RUNNING: u8 = 2;
const DONE: u8 = 3;
const FAILED: u8 = 4;
const SHUTDOWN: u8 = 5;

/// Spins this many times before yielding the CPU between checks.
const SPINS_BEFORE_YIELD: u32 = 1 << 12;

type Task = *const (dyn Fn() + Sync + 'static);

pub(crate) struct Duo {
    state: AtomicU8,
    /// Written by the caller before `POSTED`, read by the helper after it.
    task: UnsafeCell<Option<Task>>,
}

// SAFETY: `task` is only accessed under the state protocol: the caller writes it
// while the helper waits for POSTED, and the helper reads it after POSTED; the
// caller does not return from `join` before the helper is done with it.
unsafe impl Sync for Duo {}
unsafe impl Send for Duo {}

/// Where the two halves of a fork-join run.
#[derive(Clone, Copy)]
pub(crate) enum Exec<'a> {
    /// Both on the calling thread, one after the other.
    Serial,
    /// The second on the helper thread.
    Duo(&'a Duo),
}

impl Exec<'_> {
    pub fn join<RA, RB: Send>(
        &self,
        a: impl FnOnce() -> RA,
        b: impl FnOnce() -> RB + Send,
    ) -> (RA, RB) {
        match self {
            Exec::Serial => {
                let ra = a();
                (ra, b())
            }
            Exec::Duo(duo) => duo.join(a, b),
        }
    }
}

fn wait_while(state: &AtomicU8, mut busy: impl FnMut(u8) -> bool) -> u8 {
    let mut spins = 0u32;
    loop {
        let s = state.load(Ordering::Acquire);
        if !busy(s) {
            return s;
        }
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl Duo {
    /// A `Duo` with no helper yet: some thread must call
    /// [`Duo::help_until_released`] (until then `join` runs both halves itself).
    pub fn new() -> Duo {
        Duo {
            state: AtomicU8::new(IDLE),
            task: UnsafeCell::new(None),
        }
    }

    /// Runs `body` with a `Duo` whose helper thread lives as long as `body`.
    #[cfg(test)]
    pub fn scope<R>(body: impl FnOnce(&Duo) -> R) -> R {
        let duo = Duo::new();
        std::thread::scope(|scope| {
            scope.spawn(|| duo.help_until_released());
            struct Release<'a>(&'a Duo);
            impl Drop for Release<'_> {
                fn drop(&mut self) {
                    self.0.release();
                }
            }
            let _release = Release(&duo);
            body(&duo)
        })
    }

    /// Lets [`Duo::help_until_released`] return (at once if it is called
    /// later). No `join` may follow.
    pub fn release(&self) {
        self.state.store(SHUTDOWN, Ordering::Release);
    }

    /// Runs the tasks `join` posts on this thread until [`Duo::release`].
    pub fn help_until_released(&self) {
        loop {
            if wait_while(&self.state, |s| s != POSTED && s != SHUTDOWN) == SHUTDOWN {
                return;
            }
            // The caller may have taken the task back meanwhile.
            if self
                .state
                .compare_exchange(POSTED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // SAFETY: we won POSTED -> RUNNING, so the caller stored a task
            // that stays alive until we publish DONE/FAILED.
            let task = unsafe { (*self.task.get()).expect("a posted task") };
            let outcome = catch_unwind(AssertUnwindSafe(|| unsafe { (*task)() }));
            let next = if outcome.is_ok() { DONE } else { FAILED };
            // Release can only come after the caller saw DONE, so this cannot race it.
            self.state.store(next, Ordering::Release);
        }
    }

    fn join<RA, RB: Send>(
        &self,
        a: impl FnOnce() -> RA,
        b: impl FnOnce() -> RB + Send,
    ) -> (RA, RB) {
        let slot = Mutex::new((Some(b), None::<RB>));
        let task = || {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = slot.0.take() {
                slot.1 = Some(b());
            }
        };
        let task_ref: &(dyn Fn() + Sync) = &task;
        // SAFETY: the lifetime is erased only for the hand-over; `Wait` below
        // blocks (even while unwinding) until the helper has finished the task.
        let task_ptr: Task = unsafe { std::mem::transmute(task_ref as *const (dyn Fn() + Sync)) };
        assert_eq!(
            self.state.load(Ordering::Acquire),
            IDLE,
            "Duo::join is not reentrant"
        );
        // SAFETY: the helper only reads `task` after it sees POSTED.
        unsafe { *self.task.get() = Some(task_ptr) };
        self.state.store(POSTED, Ordering::Release);

        struct Wait<'a>(&'a Duo);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                let taken_back = self
                    .0
                    .state
                    .compare_exchange(POSTED, IDLE, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok();
                if !taken_back {
                    wait_while(&self.0.state, |s| s == RUNNING);
                }
                // SAFETY: the helper is done with the task or never started it.
                unsafe { *self.0.task.get() = None };
                self.0.state.store(IDLE, Ordering::Release);
            }
        }
        let ra = {
            let _wait = Wait(self);
            a()
        };
        // Runs b here if the helper never picked it up (no-op otherwise).
        task();
        let (_, rb) = slot.into_inner().unwrap_or_else(|e| e.into_inner());
        match rb {
            Some(rb) => (ra, rb),
            None => panic!("the SAE trainer's helper thread panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_runs_both_halves_with_borrowed_data() {
        let data: Vec<u64> = (1..=1000).collect();
        Duo::scope(|duo| {
            for round in 0..200u64 {
                let (lo, hi) = data.split_at(500);
                let (a, b) = Exec::Duo(duo).join(
                    || lo.iter().sum::<u64>() + round,
                    || hi.iter().sum::<u64>() * 2,
                );
                assert_eq!(a, 125_250 + round);
                assert_eq!(b, 2 * (500_500 - 125_250));
            }
        });
    }

    #[test]
    fn helper_panic_reaches_the_caller() {
        let outcome = std::panic::catch_unwind(|| {
            Duo::scope(|duo| Exec::Duo(duo).join(|| 1, || -> u32 { panic!("boom") }))
        });
        assert!(outcome.is_err());
    }
}

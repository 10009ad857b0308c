//! An allocation that fails ends the run with one line that names the stage
//! being built and removes its staging folder, instead of Rust's bare
//! "memory allocation of N bytes failed" and an abort that leaves it behind.
//! The global allocator is the system's, watched for a null return.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Watched;

static REPORTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a run that ran out of memory (as a kill by the OOM killer).
pub const EXIT_OUT_OF_MEMORY: i32 = 137;

// SAFETY: every call is the system allocator's, with the caller's arguments.
unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            failed(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            failed(layout.size());
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            failed(new_size);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

thread_local! {
    static REPORTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Says what failed and exits. Small allocations still succeed after a
/// large one failed. Another thread failing meanwhile waits for the exit
/// (else Rust's own abort would cut the message short); a failure while
/// saying so falls through to Rust's own message.
fn failed(size: usize) {
    if REPORTED.swap(true, Ordering::SeqCst) {
        if REPORTING.with(|r| r.get()) {
            return;
        }
        loop {
            std::thread::park();
        }
    }
    REPORTING.with(|r| r.set(true));
    let stage = crate::building_now().unwrap_or_else(|| "between stages".into());
    let removed = match artifacts::try_remove_own_staging() {
        Some(removed) => format!("removed {} staging folder(s)", removed.len()),
        None => "its staging folder is left for `gc`".into(),
    };
    eprintln!(
        "\nout of memory while building {stage}: an allocation of {:.2} GB failed; {removed}. Every artifact already built is kept. Lower the sizes it works with (sae.d_sae, sae.batch_size) or run it on a machine with more memory.",
        size as f64 / 1e9
    );
    std::process::exit(EXIT_OUT_OF_MEMORY);
}

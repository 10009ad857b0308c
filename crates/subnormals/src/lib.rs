//! The floating-point mode every thread that trains or evaluates runs in:
//! subnormal floats flushed to zero.
//!
//! Why: Intel CPUs take a microcode assist (about a hundred cycles) on every
//! subnormal operand or result; AMD's cost is small. Adam's moments and the
//! gradients of nearly dead features decay into the subnormal range, so on an
//! Intel Xeon (Sapphire Rapids) the default SAE stage took 170.5 s with them
//! and 68.8 s flushed, with the same weights. Values that small carry nothing
//! a trainer or an evaluation needs: they are below 1.2e-38.
//!
//! How: flush-to-zero (results) and denormals-are-zero (operands), MXCSR bits
//! 0x8040 on x86-64 (FZ in FPCR on aarch64), through `no_denormals`. The mode
//! belongs to a thread, so it is set where a thread starts its work (each
//! worker and helper of the SAE trainer, each half of the MLP trainer's step,
//! each chunk of SAE encoding on the rayon pool) and restored when the closure
//! returns or unwinds: code outside, such as the candle reference paths the
//! fast ones are tested against, keeps IEEE behaviour.
//!
//! Entry point: [`flushed`].

/// Runs `work` on this thread with subnormal inputs and results read and
/// written as zero, then restores the mode this thread had (also if `work`
/// panics). Nests: an inner call leaves the outer mode as it found it.
#[inline]
pub fn flushed<T>(work: impl FnOnce() -> T) -> T {
    // SAFETY: `no_denormals` warns that changing MXCSR is undefined behaviour
    // in principle, since LLVM assumes the default mode when it folds
    // constants. Flushing only changes results that would be subnormal (below
    // 1.2e-38 in f32) to zero; saelab's kernels compare no such constant and
    // its tests check the flushed paths against f64 computations. The mode is
    // restored by a guard, so no caller outside `work` sees it.
    unsafe { no_denormals::no_denormals(work) }
}

#[cfg(test)]
mod tests {
    use super::flushed;
    use std::hint::black_box;

    /// Half the smallest normal f32: a subnormal.
    fn halve_smallest_normal() -> f32 {
        black_box(f32::MIN_POSITIVE) * black_box(0.5f32)
    }

    #[test]
    fn subnormal_results_are_zero_inside_and_kept_outside() {
        let outside = halve_smallest_normal();
        assert!(outside > 0.0 && !outside.is_normal(), "{outside:e}");
        assert_eq!(flushed(halve_smallest_normal), 0.0);
        // Operands too: a subnormal read inside counts as zero.
        let sub = black_box(outside);
        assert_eq!(flushed(|| black_box(sub) * black_box(4.0f32)), 0.0);
        assert_eq!(sub * 4.0, 2.0 * f32::MIN_POSITIVE);
        // Restored afterwards, and after a nested call.
        assert_eq!(halve_smallest_normal(), outside);
        flushed(|| {
            flushed(|| ());
            assert_eq!(halve_smallest_normal(), 0.0);
        });
        assert_eq!(halve_smallest_normal(), outside);
    }

    #[test]
    fn the_mode_is_restored_when_the_work_panics() {
        let caught = std::panic::catch_unwind(|| flushed(|| panic!("boom")));
        assert!(caught.is_err());
        assert!(halve_smallest_normal() > 0.0);
    }

    #[test]
    fn normal_arithmetic_is_unchanged() {
        let (a, b) = (black_box(1.5e-20f32), black_box(3.0e-10f32));
        assert_eq!(flushed(|| a * b), a * b);
        assert_eq!(flushed(|| (a * b).sqrt()), (a * b).sqrt());
    }
}

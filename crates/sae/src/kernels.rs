//! Raw f32 kernels shared by the fast trainer and the CPU forward pass.
//!
//! Loops are written with explicit 8-lane accumulators so the compiler vectorises
//! them without reassociating floats: the results are the same bit for bit
//! whether the AVX2 or the baseline build of a kernel runs.

/// A strided read-only matrix view for [`matmul`].
#[derive(Clone, Copy)]
pub struct MatRef<'a, T = f32> {
    pub data: &'a [T],
    pub row_stride: usize,
    pub col_stride: usize,
}

/// The element types [`matmul`] multiplies (gemm's own, with their 0 and 1).
pub trait Scalar: Copy + 'static {
    const ZERO: Self;
    const ONE: Self;
}

impl Scalar for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
}

impl Scalar for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
}

impl<'a, T> MatRef<'a, T> {
    pub fn row_major(data: &'a [T], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `[rows, cols]` buffer.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.row_stride + (cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// The most terms gemm sums in one block. Above it, gemm splits the sum over
/// `k` into blocks sized from the L1 cache it detects, so the bits would
/// follow the machine; [`matmul`] splits such sums itself, in fixed blocks.
const K_BLOCK_MAX: usize = 512;

/// `dst[m, n] (row-major) = (accumulate ? dst : 0) + lhs[m, k] @ rhs[k, n]`,
/// single-threaded. A sum over more than 512 terms is taken in equal blocks
/// of at most 512, added in order: the same bits on every machine.
pub fn matmul<T: Scalar>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
) {
    assert!(dst.len() >= m * n, "matmul destination too small");
    lhs.check(m, k);
    rhs.check(k, n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::ZERO);
        }
        return;
    }
    let block = k.div_ceil(k.div_ceil(K_BLOCK_MAX));
    for start in (0..k).step_by(block) {
        let terms = block.min(k - start);
        // SAFETY: every index gemm touches was bounds-checked above; this
        // block reads columns `start..start + terms` of lhs and those rows of rhs.
        unsafe {
            gemm::gemm(
                m,
                n,
                terms,
                dst.as_mut_ptr(),
                1,
                n as isize,
                accumulate || start > 0,
                lhs.data.as_ptr().add(start * lhs.col_stride),
                lhs.col_stride as isize,
                lhs.row_stride as isize,
                rhs.data.as_ptr().add(start * rhs.row_stride),
                rhs.col_stride as isize,
                rhs.row_stride as isize,
                T::ONE,
                T::ONE,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// Instruction-set-specific kernels. The multiversioned entry points are
/// generic over this, so the AVX2 build uses explicit intrinsics where LLVM's
/// auto-vectoriser does badly (reductions). Both give bit-identical results:
/// same 8 lanes, same reduction order, no fused multiply-add.
pub(crate) trait Simd {
    fn dot(a: &[f32], b: &[f32]) -> f32;
    /// Bit l set where `x[l] > 0`.
    fn positive_mask32(x: &[f32; 32]) -> u32;
}

pub(crate) struct Portable;

impl Simd for Portable {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0.0f32; 8];
        let mut ca = a.chunks_exact(8);
        let mut cb = b.chunks_exact(8);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for l in 0..8 {
                acc[l] += x[l] * y[l];
            }
        }
        let mut tail = 0.0f32;
        for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
            tail += x * y;
        }
        let quad = [
            acc[0] + acc[4],
            acc[1] + acc[5],
            acc[2] + acc[6],
            acc[3] + acc[7],
        ];
        ((quad[0] + quad[2]) + (quad[1] + quad[3])) + tail
    }

    #[inline(always)]
    fn positive_mask32(x: &[f32; 32]) -> u32 {
        let mut mask = 0;
        for (l, &v) in x.iter().enumerate() {
            mask |= ((v > 0.0) as u32) << l;
        }
        mask
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let chunks = n / 8;
        let mut acc = _mm256_setzero_ps();
        for c in 0..chunks {
            // SAFETY: c * 8 + 8 <= n <= both lengths.
            let x = unsafe { _mm256_loadu_ps(a.as_ptr().add(c * 8)) };
            let y = unsafe { _mm256_loadu_ps(b.as_ptr().add(c * 8)) };
            acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
        }
        let mut tail = 0.0f32;
        for i in chunks * 8..n {
            tail += a[i] * b[i];
        }
        // quad = lanes 0..4 + lanes 4..8; then (q0 + q2) + (q1 + q3), as Portable.
        let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let sum = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        _mm_cvtss_f32(sum) + tail
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn positive_mask32(x: &[f32; 32]) -> u32 {
        let mut mask = 0u32;
        for q in 0..4 {
            // SAFETY: x holds 32 floats.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * q)) };
            let bits = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ));
            mask |= (bits as u32) << (8 * q);
        }
        mask
    }
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: only reached from functions compiled with, and dispatched on, AVX2.
        unsafe { avx2::dot(a, b) }
    }

    #[inline(always)]
    fn positive_mask32(x: &[f32; 32]) -> u32 {
        // SAFETY: as above.
        unsafe { avx2::positive_mask32(x) }
    }
}

/// `y += a * x`
#[inline(always)]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Which pre-activations of a row become active features.
#[derive(Clone, Copy)]
pub(crate) enum Selection {
    /// Every positive pre-activation (ReLU).
    Relu,
    /// The k largest, then ReLU. Ties go to the lower feature index.
    TopK(usize),
    /// The k largest whatever their sign (no ReLU); ties as `TopK`.
    TopKAny(usize),
}

/// Appends the active features of one row (ascending feature index, plus
/// `offset`) to `idx`/`val`. `allowed` (indexed like `pre`) restricts the
/// candidates (AuxK's dead latents). `scratch` is reused.
#[inline(always)]
pub(crate) fn select_active<S: Simd>(
    pre: &[f32],
    offset: u32,
    selection: Selection,
    allowed: Option<&[bool]>,
    scratch: &mut Vec<(f32, u32)>,
    idx: &mut Vec<u32>,
    val: &mut Vec<f32>,
) {
    scratch.clear();
    if let Selection::TopKAny(_) = selection {
        scratch.extend(
            pre.iter()
                .enumerate()
                .filter(|&(f, _)| allowed.is_none_or(|a| a[f]))
                .map(|(f, &p)| (p, f as u32)),
        );
    } else {
        // Candidates are the positive entries: only they survive the ReLU, so the
        // top k of the positives are the surviving top k of the whole row.
        let mut blocks = pre.chunks_exact(32);
        let mut base = 0u32;
        for block in &mut blocks {
            let mut mask = S::positive_mask32(block.try_into().expect("32 lanes"));
            while mask != 0 {
                let f = base + mask.trailing_zeros();
                mask &= mask - 1;
                if allowed.is_none_or(|a| a[f as usize]) {
                    scratch.push((pre[f as usize], f));
                }
            }
            base += 32;
        }
        for (l, &p) in blocks.remainder().iter().enumerate() {
            let f = base + l as u32;
            if p > 0.0 && allowed.is_none_or(|a| a[f as usize]) {
                scratch.push((p, f));
            }
        }
    }
    if let Selection::TopK(k) | Selection::TopKAny(k) = selection {
        keep_top(scratch, k);
    }
    for &(p, f) in scratch.iter() {
        idx.push(f + offset);
        val.push(p);
    }
}

/// Keeps the `k` largest entries (value descending, then index ascending), in index order.
fn keep_top(scratch: &mut Vec<(f32, u32)>, k: usize) {
    if scratch.len() > k {
        let by_rank = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        scratch.select_nth_unstable_by(k - 1, by_rank);
        scratch.truncate(k);
    }
    scratch.sort_unstable_by_key(|e| e.1);
}

/// Adam hyper-parameters for one step, PyTorch's formulation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamStep {
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    /// lr / (1 - beta1^t)
    pub step_size: f32,
    /// 1 / sqrt(1 - beta2^t): a multiply, not a divide, in the hot loop.
    pub inv_bias_correction2_sqrt: f32,
    pub eps: f32,
}

impl AdamStep {
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, t: usize) -> Self {
        let bias_correction1 = 1.0 - beta1.powi(t as i32);
        let bias_correction2 = 1.0 - beta2.powi(t as i32);
        AdamStep {
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            step_size: (lr / bias_correction1) as f32,
            inv_bias_correction2_sqrt: (1.0 / bias_correction2.sqrt()) as f32,
            eps: eps as f32,
        }
    }
}

#[inline(always)]
pub(crate) fn adam_inline<S: Simd>(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    h: AdamStep,
) {
    let n = p.len();
    let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
    for i in 0..n {
        let gi = g[i];
        let mi = h.beta1 * m[i] + h.one_minus_beta1 * gi;
        let vi = h.beta2 * v[i] + h.one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        let denom = vi.sqrt() * h.inv_bias_correction2_sqrt + h.eps;
        p[i] -= h.step_size * (mi / denom);
    }
}

/// Scales every `cols`-wide row of `w` to unit L2 norm (rows of norm 0 are left alone).
#[inline(always)]
pub(crate) fn normalise_rows_inline<S: Simd>(w: &mut [f32], cols: usize) {
    for row in w.chunks_exact_mut(cols) {
        let norm = S::dot(row, row).sqrt();
        if norm > 0.0 {
            let inv = 1.0 / norm;
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    }
}

/// Dispatch by CPU feature to an entry point generic over [`Simd`]. Not the
/// `multiversion` crate (which `mlp` uses): that recompiles one body per
/// target, while these kernels choose an implementation type (`Avx2`, with
/// explicit intrinsics for the reductions LLVM vectorises badly) that must stay
/// bit-identical to `Portable`, which a `target_feature` clone cannot express.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $inner:ident) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $inner::<$crate::kernels::Avx2>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the enabled features.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $inner::<$crate::kernels::Portable>($($arg),*)
        }
    };
}
pub(crate) use multiversion;

multiversion! {
    /// Dense Adam over contiguous slices.
    pub(crate) fn adam(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], h: AdamStep) => adam_inline
}

multiversion! {
    pub(crate) fn normalise_rows(w: &mut [f32], cols: usize) => normalise_rows_inline
}

#[inline(always)]
fn dot_inline<S: Simd>(a: &[f32], b: &[f32]) -> f32 {
    S::dot(a, b)
}

multiversion! {
    pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 => dot_inline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_sequential_sum_on_exact_values() {
        let a: Vec<f32> = (0..21).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..21).map(|i| (i % 3) as f32).collect();
        let expected: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(Portable::dot(&a, &b), expected);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            assert_eq!(Avx2::dot(&a, &b), expected);
            let noisy: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
            let other: Vec<f32> = (0..37).map(|i| (i as f32 * 1.3).cos()).collect();
            assert_eq!(
                Avx2::dot(&noisy, &other).to_bits(),
                Portable::dot(&noisy, &other).to_bits()
            );
        }
    }

    #[test]
    fn a_long_sum_is_taken_in_fixed_blocks_in_order() {
        // k = 1100: three blocks of 367, 367 and 366 terms, added in order.
        let (m, n, k) = (3, 5, 1100);
        let value = |i: usize| ((i * 7919) % 1000) as f32 / 997.0 - 0.5;
        let lhs: Vec<f32> = (0..m * k).map(value).collect();
        let rhs_t: Vec<f32> = (0..n * k).map(|i| value(i + 13)).collect();
        let mut whole = vec![0.25f32; m * n];
        matmul(
            &mut whole,
            m,
            n,
            k,
            true,
            MatRef::row_major(&lhs, k),
            MatRef::transposed(&rhs_t, k),
        );
        let mut blocks = vec![0.25f32; m * n];
        for (start, terms) in [(0, 367), (367, 367), (734, 366)] {
            let l: Vec<f32> = lhs
                .chunks(k)
                .flat_map(|r| r[start..start + terms].to_vec())
                .collect();
            let r: Vec<f32> = rhs_t
                .chunks(k)
                .flat_map(|r| r[start..start + terms].to_vec())
                .collect();
            matmul(
                &mut blocks,
                m,
                n,
                terms,
                true,
                MatRef::row_major(&l, terms),
                MatRef::transposed(&r, terms),
            );
        }
        assert_eq!(whole, blocks);
        // And it is the product: against f64.
        for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
            let want = 0.25
                + (0..k)
                    .map(|t| lhs[i * k + t] as f64 * rhs_t[j * k + t] as f64)
                    .sum::<f64>();
            assert!((whole[i * n + j] as f64 - want).abs() < 1e-3, "{i},{j}");
        }
    }

    #[test]
    fn matmul_with_transposed_rhs() {
        // lhs [2,3] @ rhs^T where rhs_t is [2,3] row-major.
        let lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let rhs_t = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let mut dst = [10.0f32; 4];
        matmul(
            &mut dst,
            2,
            2,
            3,
            true,
            MatRef::row_major(&lhs, 3),
            MatRef::transposed(&rhs_t, 3),
        );
        assert_eq!(dst, [10.0 - 2.0, 10.0 + 4.0, 10.0 - 2.0, 10.0 + 13.0]);
    }

    #[test]
    fn top_k_breaks_ties_by_index_and_drops_non_positive() {
        let pre = [0.5, 2.0, -1.0, 2.0, 0.0, 1.0];
        let (mut idx, mut val, mut scratch) = (vec![], vec![], vec![]);
        select_active::<Portable>(
            &pre,
            0,
            Selection::TopK(2),
            None,
            &mut scratch,
            &mut idx,
            &mut val,
        );
        assert_eq!(idx, [1, 3]);
        idx.clear();
        val.clear();
        select_active::<Portable>(
            &pre,
            0,
            Selection::TopK(5),
            None,
            &mut scratch,
            &mut idx,
            &mut val,
        );
        assert_eq!(idx, [0, 1, 3, 5]);
        assert_eq!(val, [0.5, 2.0, 2.0, 1.0]);
    }

    #[test]
    fn adam_first_step_moves_by_lr_times_sign() {
        // At t = 1, m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps).
        let mut p = vec![1.0f32, 1.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adam(
            &mut p,
            &mut m,
            &mut v,
            &[0.5, -2.0],
            AdamStep::new(0.1, 0.9, 0.999, 1e-8, 1),
        );
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] - 1.1).abs() < 1e-6,
            "{p:?}"
        );
    }
}

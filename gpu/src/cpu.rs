//! The CPU backend: `f32` GEMM on the `gemm` crate, exact ring GEMM with wrapping
//! `u64` arithmetic, both multi-threaded with rayon.

use crate::ring::Storage;
use crate::{check_shapes, Backend, BackendError, RingMatrix};
use rayon::prelude::*;

/// Multi-threaded CPU backend.
#[derive(Clone, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend on rayon's global pool.
    pub fn new() -> Self {
        Self
    }
}

/// Rows of `w` handled by one rayon task in the matrix-vector paths.
const GEMV_ROWS_PER_TASK: usize = 64;

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn matmul_f32(
        &self,
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        n: usize,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        check_shapes("matmul_f32", x.len(), w.len(), out.len(), m, k, n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            out.fill(0.0);
            return Ok(());
        }
        if m <= 2 {
            // Decode: memory-bound matrix-vector products; split the weight rows over
            // threads and stream each row once.
            gemv_f32(x, w, m, k, n, out);
            return Ok(());
        }
        gemm_abt(x, w, m, k, n, out);
        Ok(())
    }

    fn ring_matmul(
        &self,
        x: &[u64],
        w: &[u64],
        m: usize,
        k: usize,
        n: usize,
        out: &mut [u64],
    ) -> Result<(), BackendError> {
        check_shapes("ring_matmul", x.len(), w.len(), out.len(), m, k, n)?;
        ring_matmul_cpu(x, w, m, k, n, out);
        Ok(())
    }

    fn ring_matmul_prepared(
        &self,
        x: &[u64],
        w: &RingMatrix,
        m: usize,
        out: &mut [u64],
    ) -> Result<(), BackendError> {
        check_shapes("ring_matmul_prepared", x.len(), w.n * w.k, out.len(), m, w.k, w.n)?;
        ring_matmul_limbs(x, w, m, out)
    }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators so the compiler can keep them in vector lanes.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (pa, pb) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += pa[l] * pb[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

fn gemv_f32(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    by_weight_rows(m, n, GEMV_ROWS_PER_TASK, out, |i, j| {
        dot_f32(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k])
    });
}

/// The float types the `gemm` crate multiplies for us.
pub(crate) trait GemmFloat: Copy + 'static {
    const ZERO: Self;
    const ONE: Self;
}

impl GemmFloat for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl GemmFloat for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// `out (m x n) = x (m x k) * w^T` (`w` is `n x k`) on the `gemm` crate. Callers check
/// the shapes.
pub(crate) fn gemm_abt<T: GemmFloat>(x: &[T], w: &[T], m: usize, k: usize, n: usize, out: &mut [T]) {
    gemm_abt_on(x, w, m, k, n, out, rayon::current_num_threads().max(1));
}

/// [`gemm_abt`] on `threads` threads (1: the calling thread only, for callers that
/// already run in parallel).
fn gemm_abt_on<T: GemmFloat>(x: &[T], w: &[T], m: usize, k: usize, n: usize, out: &mut [T], threads: usize) {
    debug_assert!(x.len() == m * k && w.len() == n * k && out.len() == m * n);
    // SAFETY: the slices hold exactly m*k, n*k and m*n elements (checked by every
    // caller); the strides below describe those row-major layouts (lhs = x with row
    // stride k, rhs = w^T read from w with column stride k, dst with row stride n), so
    // every index gemm forms is in bounds, and `out` is not aliased by x or w.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None },
        );
    }
}

/// Fills `out` (`m x n`, row-major) with `f(i, j)`, parallel over blocks of
/// `rows_per_task` output columns (weight rows), so each task streams its weight rows
/// once for all `m` inputs; writes go through a transposed scratch to avoid aliasing.
pub(crate) fn by_weight_rows<T: Copy + Default + Send + Sync>(
    m: usize,
    n: usize,
    rows_per_task: usize,
    out: &mut [T],
    f: impl Fn(usize, usize) -> T + Sync,
) {
    let mut cols = vec![T::default(); n * m];
    cols.par_chunks_mut(rows_per_task * m).enumerate().for_each(|(t, block)| {
        for (jj, slot) in block.chunks_mut(m).enumerate() {
            let j = t * rows_per_task + jj;
            for (i, s) in slot.iter_mut().enumerate() {
                *s = f(i, j);
            }
        }
    });
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = cols[j * m + i];
        }
    }
}

/// Exact `x * w^T mod 2^64`: every product and sum wraps, so the result is the ring
/// product whatever the magnitudes. Parallel over output rows, blocked over `w` rows so
/// a block of weights stays in cache while all rows of `x` use it.
pub(crate) fn ring_matmul_cpu(x: &[u64], w: &[u64], m: usize, k: usize, n: usize, out: &mut [u64]) {
    const JB: usize = 16;
    if m <= 2 {
        out.par_chunks_mut(1).enumerate().for_each(|(idx, o)| {
            let (i, j) = (idx / n, idx % n);
            o[0] = ring_dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
        });
        return;
    }
    by_weight_rows(m, n, JB, out, |i, j| ring_dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]));
}

fn ring_dot(a: &[u64], b: &[u64]) -> u64 {
    let mut acc = [0u64; 4];
    let chunks = a.len() / 4;
    for c in 0..chunks {
        for l in 0..4 {
            acc[l] = acc[l].wrapping_add(a[c * 4 + l].wrapping_mul(b[c * 4 + l]));
        }
    }
    let mut s = acc[0].wrapping_add(acc[1]).wrapping_add(acc[2]).wrapping_add(acc[3]);
    for i in chunks * 4..a.len() {
        s = s.wrapping_add(a[i].wrapping_mul(b[i]));
    }
    s
}

/// `out = x * w^T mod 2^64` for a prepared `w`. `x` is `m x k`.
pub(crate) fn ring_matmul_limbs(
    x: &[u64],
    w: &RingMatrix,
    m: usize,
    out: &mut [u64],
) -> Result<(), BackendError> {
    let (n, k) = (w.n, w.k);
    let wide: std::borrow::Cow<'_, [f64]> = match &w.storage {
        Storage::Raw(raw) => {
            ring_matmul_cpu(x, raw, m, k, n, out);
            return Ok(());
        }
        Storage::Device(_) => {
            return Err(BackendError::Shape {
                op: "ring_matmul_prepared",
                detail: "this matrix was prepared on a GPU backend; multiply it there".into(),
            })
        }
        Storage::Small(v) if m <= 4 => {
            // Decode steps: memory-bound; one pass over the 4-byte weights with wrapping
            // integer products.
            ring_gemv_small_m(x, v, m, k, n, out);
            return Ok(());
        }
        Storage::Wide(v) if m <= 4 => {
            ring_gemv_small_m(x, v, m, k, n, out);
            return Ok(());
        }
        Storage::Small(v) => {
            ring_matmul_small_blocked(x, v, m, k, n, w.limb_bits, out);
            return Ok(());
        }
        Storage::Wide(v) => std::borrow::Cow::Borrowed(v.as_slice()),
    };
    let b = w.limb_bits;
    let limbs = 64u32.div_ceil(b);
    let mask = if b >= 64 { u64::MAX } else { (1u64 << b) - 1 };
    out.fill(0);
    let mut xl = vec![0f64; m * k];
    let mut acc = vec![0f64; m * n];
    for l in 0..limbs {
        let shift = l * b;
        xl.par_iter_mut().zip(x.par_iter()).for_each(|(d, &v)| *d = ((v >> shift) & mask) as f64);
        f64_gemm_wt(&xl, &wide, m, k, n, &mut acc);
        out.par_iter_mut().zip(acc.par_iter()).for_each(|(o, &a)| {
            *o = o.wrapping_add((a as i64 as u64).wrapping_shl(shift));
        });
    }
    Ok(())
}

/// Weight rows a task of [`ring_matmul_small_blocked`] widens at a time: 64 rows of the
/// widest unit (`k` = 8960 at 1.5B) are 4.6 MB of `f64`, which stay in cache while every
/// limb multiplies them.
const WIDEN_ROWS: usize = 64;

/// `out = x * w^T mod 2^64` for `i32` weights and `m > 4` rows, exactly, by limbs: `x`
/// is split into `64 / b`-bit limbs once, and each task widens a block of
/// [`WIDEN_ROWS`] weight rows to `f64` and multiplies every limb by it while it is in
/// cache. Each weight is read once per call (4 bytes) and no widened copy of the whole
/// matrix is made, so a call costs its arithmetic plus one pass over the `i32` weights;
/// splitting a request into chunks (v3) then adds little per chunk. Every `f64`
/// accumulation is exact by the choice of `b` ([`RingMatrix::limb_bits`]), so the result
/// is bit for bit that of any other exact method.
fn ring_matmul_small_blocked(x: &[u64], w: &[i32], m: usize, k: usize, n: usize, b: u32, out: &mut [u64]) {
    let limbs = 64u32.div_ceil(b);
    let mask = if b >= 64 { u64::MAX } else { (1u64 << b) - 1 };
    let x_limbs: Vec<Vec<f64>> =
        (0..limbs).map(|l| x.par_iter().map(|&v| ((v >> (l * b)) & mask) as f64).collect()).collect();
    let mut cols = vec![0u64; n * m];
    cols.par_chunks_mut(WIDEN_ROWS * m).enumerate().for_each(|(t, block)| {
        let (j0, nb) = (t * WIDEN_ROWS, block.len() / m);
        let wide: Vec<f64> = w[j0 * k..(j0 + nb) * k].iter().map(|&v| f64::from(v)).collect();
        let mut acc = vec![0f64; m * nb];
        let mut sum = vec![0u64; m * nb];
        for (l, xl) in x_limbs.iter().enumerate() {
            gemm_abt_on(xl, &wide, m, k, nb, &mut acc, 1);
            let shift = l as u32 * b;
            sum.iter_mut()
                .zip(&acc)
                .for_each(|(s, &a)| *s = s.wrapping_add((a as i64 as u64).wrapping_shl(shift)));
        }
        // The block's columns, transposed: `block[jj * m + i]` is output `(i, j0 + jj)`.
        for i in 0..m {
            for jj in 0..nb {
                block[jj * m + i] = sum[i * nb + jj];
            }
        }
    });
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = cols[j * m + i];
        }
    }
}

/// A weight element that converts exactly to a signed 64-bit integer.
trait IntWeight: Copy + Send + Sync {
    fn as_ring(self) -> u64;
}

impl IntWeight for i32 {
    fn as_ring(self) -> u64 {
        i64::from(self) as u64
    }
}

impl IntWeight for f64 {
    fn as_ring(self) -> u64 {
        self as i64 as u64
    }
}

fn ring_gemv_small_m<W: IntWeight>(x: &[u64], w: &[W], m: usize, k: usize, n: usize, out: &mut [u64]) {
    let avx2 = has_avx2();
    by_weight_rows(m, n, 64, out, |i, j| {
        let (xr, row) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `has_avx2` checked at run time that this CPU has AVX2, the only
            // requirement of `ring_dot_avx2`; its body is safe slice arithmetic.
            return unsafe { ring_dot_avx2(xr, row) };
        }
        ring_dot_int(xr, row)
    });
}

/// Whether the CPU runs AVX2 code (decode steps' ring GEMV vectorizes its 64-bit
/// products four wide with it, about twice the portable build's speed).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `sum a_t b_t mod 2^64` for integer weights.
#[inline(always)]
fn ring_dot_int<W: IntWeight>(a: &[u64], b: &[W]) -> u64 {
    a.iter().zip(b).fold(0u64, |acc, (&a, &b)| acc.wrapping_add(a.wrapping_mul(b.as_ring())))
}

/// [`ring_dot_int`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn ring_dot_avx2<W: IntWeight>(a: &[u64], b: &[W]) -> u64 {
    ring_dot_int(a, b)
}

fn f64_gemm_wt(x: &[f64], w: &[f64], m: usize, k: usize, n: usize, out: &mut [f64]) {
    gemm_abt(x, w, m, k, n, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn naive_f32(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for t in 0..k {
                    s += x[i * k + t] as f64 * w[j * k + t] as f64;
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn f32_matmul_matches_naive_for_gemm_and_gemv_paths() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for &(m, k, n) in &[(1, 37, 130), (2, 64, 65), (3, 5, 7), (17, 96, 200), (98, 64, 33)] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut out = vec![0.0; m * n];
            CpuBackend::new().matmul_f32(&x, &w, m, k, n, &mut out).unwrap();
            let want = naive_f32(&x, &w, m, k, n);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "({m},{k},{n}): {a} vs {b}");
            }
        }
    }

    #[test]
    fn ring_matmul_wraps_exactly() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for &(m, k, n) in &[(1, 9, 5), (2, 33, 17), (5, 64, 40), (40, 31, 3)] {
            let mut x: Vec<u64> = (0..m * k).map(|_| rng.gen()).collect();
            let w: Vec<u64> = (0..n * k).map(|_| rng.gen()).collect();
            x[0] = u64::MAX;
            let mut out = vec![0; m * n];
            CpuBackend::new().ring_matmul(&x, &w, m, k, n, &mut out).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want =
                        (0..k).fold(0u64, |s, t| s.wrapping_add(x[i * k + t].wrapping_mul(w[j * k + t])));
                    assert_eq!(out[i * n + j], want);
                }
            }
        }
    }

    #[test]
    fn shape_errors_are_reported_not_panics() {
        let mut out = vec![0.0; 4];
        let err = CpuBackend::new().matmul_f32(&[0.0; 3], &[0.0; 4], 2, 2, 2, &mut out).unwrap_err();
        assert!(err.to_string().contains("matmul_f32"));
    }

    fn naive(x: &[u64], w: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
        let mut out = vec![0u64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    (0..k).fold(0u64, |s, t| s.wrapping_add(x[i * k + t].wrapping_mul(w[j * k + t])));
            }
        }
        out
    }

    fn check(m: usize, k: usize, n: usize, wbits: u32, extreme: bool, seed: u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let lim = 1i64 << wbits;
        let x: Vec<u64> =
            (0..m * k).map(|i| if extreme && i % 2 == 0 { u64::MAX } else { rng.gen() }).collect();
        let w: Vec<u64> = (0..n * k)
            .map(|i| {
                if extreme {
                    (if i % 2 == 0 { lim - 1 } else { -(lim - 1) }) as u64
                } else {
                    rng.gen_range(-lim + 1..lim) as u64
                }
            })
            .collect();
        let rm = RingMatrix::new(&w, n, k);
        let mut out = vec![0u64; m * n];
        ring_matmul_limbs(&x, &rm, m, &mut out).unwrap();
        assert_eq!(out, naive(&x, &w, m, k, n), "m={m} k={k} n={n} wbits={wbits} limbs={}", rm.limb_bits);
    }

    #[test]
    fn limb_gemm_equals_wrapping_reference() {
        check(5, 64, 9, 18, false, 1);
        check(1, 64, 70, 18, true, 7); // decode path
        check(4, 100, 3, 18, false, 8);
        check(7, 300, 5, 18, true, 2);
        check(3, 33, 4, 40, false, 3); // large weights: narrow limbs
        check(2, 17, 3, 60, true, 4); // too large for limbs: integer fallback
    }

    #[test]
    fn blocked_limb_gemm_spans_several_weight_blocks() {
        // More weight rows than one widened block, a ragged last block, chunk-sized m.
        check(25, 300, 130, 18, true, 9);
        check(13, 896, 2 * WIDEN_ROWS + 1, 18, false, 10);
        check(98, 64, WIDEN_ROWS - 1, 18, true, 11);
        check(5, 18944, WIDEN_ROWS + 3, 18, true, 12);
    }

    #[test]
    fn limb_gemm_is_exact_at_k_18944_with_extreme_weights() {
        // The 7B's intermediate size, weights at the largest magnitude F_w = 16 gives to
        // |W| < 4 (2^18 - 1), inputs all ones (u64::MAX) in half the entries.
        check(2, 18944, 3, 18, true, 5);
        check(3, 18944, 2, 18, false, 6);
        assert_eq!(crate::limb_bits_for(18944, 18), 20);
    }
}

//! Exact ring GEMM on the CPU through `f64` GEMMs on limbs.
//!
//! `X * W^T mod 2^64` where `X` holds arbitrary ring elements (shares, masked values) and
//! `W` is a public weight in fixed point, so `|W| < 2^bw` as a signed integer. Split each
//! `x` into `L` unsigned limbs of `b` bits, `x = sum_l x_l 2^(b l)`; then
//! `x W^T = sum_l 2^(b l) (X_l W^T)` and each `X_l W^T` is an integer matrix product whose
//! every partial sum is bounded by `K * (2^b - 1) * 2^bw`. While that bound is below
//! `2^53` the product in `f64` is exact in any summation order (each product and each
//! partial sum is an integer representable in `f64`), so a fast float GEMM gives the
//! exact integer; converting to `i64` and recombining with wrapping shifts gives the
//! exact ring result. `b` is chosen per matrix as the largest limb width with
//! `K * 2^(b + bw) <= 2^53`; for Qwen weights (`bw = 18` at `F_w = 16`) and
//! `K = 18944` (the 7B's intermediate size) `b = 20`, so four limbs cover 64 bits.
//! Never TF32/bf16/f16: the mantissa would not hold the sums.

use rayon::prelude::*;

/// A weight matrix prepared for exact ring GEMM: `n x k`, stored as `f64` integers.
#[derive(Clone)]
pub struct RingMatrix {
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// Bits of magnitude of the largest weight as a signed integer (`|w| < 2^bits`).
    pub magnitude_bits: u32,
    /// Limb width that keeps every f64 accumulation exact for this matrix.
    pub limb_bits: u32,
    pub(crate) storage: Storage,
}

/// How a prepared weight is held.
#[derive(Clone)]
pub(crate) enum Storage {
    /// Weights that fit `i32` (every fixed-point checkpoint weight): 4 bytes each, which
    /// halves the memory traffic of decode steps; widened to `f64` per GEMM call.
    Small(Vec<i32>),
    /// Larger weights that still allow exact limbs.
    Wide(Vec<f64>),
    /// Weights too large for the limb path: wrapping integer loops.
    Raw(Vec<u64>),
    /// Resident on a GPU backend (opaque here).
    Device(std::sync::Arc<dyn std::any::Any + Send + Sync>),
}

impl std::fmt::Debug for RingMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match &self.storage {
            Storage::Small(_) => format!("i32, {}-bit limbs", self.limb_bits),
            Storage::Wide(_) => format!("f64, {}-bit limbs", self.limb_bits),
            Storage::Raw(_) => "u64".to_string(),
            Storage::Device(_) => "on device".to_string(),
        };
        write!(f, "RingMatrix({}x{}, |w| < 2^{}, {how})", self.n, self.k, self.magnitude_bits)
    }
}

/// The exactness condition of the limb path: `k * (2^limb - 1) * 2^magnitude < 2^53`.
pub fn limb_bits_for(k: usize, magnitude_bits: u32) -> u32 {
    let log_k = usize::BITS - k.max(1).leading_zeros(); // k <= 2^log_k
    53u32.saturating_sub(magnitude_bits + log_k).min(32)
}

impl RingMatrix {
    /// Prepares `w` (`n x k`, ring elements read as signed integers).
    pub fn new(w: &[u64], n: usize, k: usize) -> Self {
        let max_abs = w.par_iter().map(|&v| (v as i64).unsigned_abs()).max().unwrap_or(0);
        let magnitude_bits = 64 - max_abs.leading_zeros();
        let limb_bits = limb_bits_for(k, magnitude_bits);
        let storage = if limb_bits >= 8 && magnitude_bits <= 31 {
            Storage::Small(w.par_iter().map(|&v| v as i64 as i32).collect())
        } else if limb_bits >= 8 {
            Storage::Wide(w.par_iter().map(|&v| v as i64 as f64).collect())
        } else {
            Storage::Raw(w.to_vec())
        };
        Self { n, k, magnitude_bits, limb_bits, storage }
    }

    /// A matrix that lives only on a device (its backend multiplies it).
    pub fn on_device(n: usize, k: usize, device: std::sync::Arc<dyn std::any::Any + Send + Sync>) -> Self {
        Self { n, k, magnitude_bits: 64, limb_bits: 0, storage: Storage::Device(device) }
    }

    /// The device copy, if a GPU backend prepared this matrix.
    pub fn device(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        match &self.storage {
            Storage::Device(d) => Some(d.as_ref()),
            _ => None,
        }
    }

    /// The matrix back in ring encoding, `n x k` (empty for a device-only matrix).
    pub fn to_ring(&self) -> Vec<u64> {
        match &self.storage {
            Storage::Small(v) => v.par_iter().map(|&x| x as i64 as u64).collect(),
            Storage::Wide(v) => v.par_iter().map(|&x| x as i64 as u64).collect(),
            Storage::Raw(v) => v.clone(),
            Storage::Device(_) => Vec::new(),
        }
    }

    /// Whether products go through exact f64 limb GEMMs (else wrapping integer loops).
    pub fn uses_limbs(&self) -> bool {
        matches!(self.storage, Storage::Small(_) | Storage::Wide(_))
    }
}

/// `out = x * w^T mod 2^64` for a prepared `w`. `x` is `m x k`.
pub(crate) fn ring_matmul_limbs(
    x: &[u64],
    w: &RingMatrix,
    m: usize,
    out: &mut [u64],
) -> Result<(), crate::BackendError> {
    let (n, k) = (w.n, w.k);
    let wide: std::borrow::Cow<'_, [f64]> = match &w.storage {
        Storage::Raw(raw) => {
            super::cpu::ring_matmul_cpu(x, raw, m, k, n, out);
            return Ok(());
        }
        Storage::Device(_) => {
            return Err(crate::BackendError::Shape {
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
        Storage::Small(v) => std::borrow::Cow::Owned(v.par_iter().map(|&x| f64::from(x)).collect()),
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
    super::cpu::by_weight_rows(m, n, 64, out, |i, j| {
        let (xr, row) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
        xr.iter().zip(row).fold(0u64, |acc, (&a, &b)| acc.wrapping_add(a.wrapping_mul(b.as_ring())))
    });
}

fn f64_gemm_wt(x: &[f64], w: &[f64], m: usize, k: usize, n: usize, out: &mut [f64]) {
    super::cpu::gemm_abt(x, w, m, k, n, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

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
    fn limb_gemm_is_exact_at_k_18944_with_extreme_weights() {
        // The 7B's intermediate size, weights at the largest magnitude F_w = 16 gives to
        // |W| < 4 (2^18 - 1), inputs all ones (u64::MAX) in half the entries.
        check(2, 18944, 3, 18, true, 5);
        check(3, 18944, 2, 18, false, 6);
        assert_eq!(limb_bits_for(18944, 18), 20);
    }
}

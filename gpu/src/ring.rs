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

//! Local compute for one party: the [`Backend`] trait and its implementations.
//!
//! A party's heavy local work is of two kinds, and both go through one trait
//! (candle's `BackendDevice` pattern, STYLE.md):
//!
//! * **Plaintext float kernels** used by the reference engine and by the client side of
//!   v2/v3: `X * W^T` in `f32` on a real GEMM (the `gemm` crate, runtime-dispatched
//!   AVX2/FMA/AVX-512, multi-threaded through rayon).
//! * **Exact ring GEMM** of shares by public weights, `X * W^T mod 2^64`, used by every
//!   private variant. Ring math is never done in reduced precision.
//!
//! [`CpuBackend`] is always available. The CUDA backend lives behind the cargo feature
//! `cuda`; [`best_available`] picks the best backend present at run time and says which.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod host_memory;
mod ring;

#[cfg(feature = "cuda")]
pub use cuda::{driver_present, CudaBackend};

pub use cpu::CpuBackend;
pub use ring::{limb_bits_for, RingMatrix};

use std::sync::Arc;

/// Errors from choosing or running a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// CUDA was asked for but this binary was built without the `cuda` feature.
    #[error("this build has no CUDA support: rebuild with `--features cuda`, or use `--device cpu`")]
    CudaNotCompiled,
    /// CUDA was asked for but no usable driver or device was found at run time.
    #[error("CUDA unavailable: {0}; use `--device cpu`")]
    CudaUnavailable(String),
    /// An unknown device name was given.
    #[error("unknown device `{0}`: expected `cpu`, `cuda` or `auto`")]
    UnknownDevice(String),
    /// Operand shapes do not agree.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What disagreed.
        detail: String,
    },
}

/// What a party computes locally. Matrices are row-major; `w` is `n x k` (a weight as
/// stored in a checkpoint: one row per output feature), and products are `x * w^T`.
pub trait Backend: Send + Sync {
    /// Human-readable name, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;

    /// `out (m x n) = x (m x k) * w^T` with `w` `n x k`, in `f32`.
    fn matmul_f32(
        &self,
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        n: usize,
        out: &mut [f32],
    ) -> Result<(), BackendError>;

    /// `out (m x n) = x (m x k) * w^T mod 2^64` with `w` `n x k`: exact wrapping ring GEMM.
    fn ring_matmul(
        &self,
        x: &[u64],
        w: &[u64],
        m: usize,
        k: usize,
        n: usize,
        out: &mut [u64],
    ) -> Result<(), BackendError>;

    /// Prepares a public weight (`n x k`, ring-encoded) for repeated ring GEMMs: the CPU
    /// keeps exact `f64` integers for the limb path, a GPU backend uploads it once.
    fn prepare_ring(&self, w: &[u64], n: usize, k: usize) -> Result<RingMatrix, BackendError> {
        if w.len() != n * k {
            return Err(BackendError::Shape {
                op: "prepare_ring",
                detail: format!("{} elements, want {n}x{k}", w.len()),
            });
        }
        Ok(RingMatrix::new(w, n, k))
    }

    /// `out (m x n) = x (m x k) * w^T mod 2^64` with a prepared `w`: exact.
    fn ring_matmul_prepared(
        &self,
        x: &[u64],
        w: &RingMatrix,
        m: usize,
        out: &mut [u64],
    ) -> Result<(), BackendError>;
}

/// Which backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The best one present: CUDA when compiled in and a device is there, else CPU.
    Auto,
    /// The CPU backend.
    Cpu,
    /// The CUDA backend; an error when it is not available.
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            other => Err(BackendError::UnknownDevice(other.to_string())),
        }
    }
}

/// Opens the backend for `choice`. `Auto` falls back to the CPU and the returned note
/// says why, so callers can print it.
pub fn open(choice: DeviceChoice) -> Result<(Arc<dyn Backend>, String), BackendError> {
    match choice {
        DeviceChoice::Cpu => Ok((Arc::new(CpuBackend::new()), "cpu backend (requested)".into())),
        DeviceChoice::Cuda => open_cuda().map(|b| {
            let note = format!("{} (requested)", b.name());
            (b, note)
        }),
        DeviceChoice::Auto => match open_cuda() {
            Ok(b) => {
                let note = b.name();
                Ok((b, note))
            }
            Err(e) => Ok((Arc::new(CpuBackend::new()), format!("cpu backend ({e})"))),
        },
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(CudaBackend::new(0)?))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Arc<dyn Backend>, BackendError> {
    Err(BackendError::CudaNotCompiled)
}

/// The best backend present at run time, with a note saying which and why.
pub fn best_available() -> (Arc<dyn Backend>, String) {
    match open(DeviceChoice::Auto) {
        Ok(pair) => pair,
        Err(e) => (Arc::new(CpuBackend::new()), format!("cpu backend ({e})")),
    }
}

pub(crate) fn check_shapes(
    op: &'static str,
    x: usize,
    w: usize,
    out: usize,
    m: usize,
    k: usize,
    n: usize,
) -> Result<(), BackendError> {
    if x != m * k || w != n * k || out != m * n {
        return Err(BackendError::Shape {
            op,
            detail: format!(
                "x has {x} elements (want {m}x{k}), w has {w} (want {n}x{k}), out has {out} (want {m}x{n})"
            ),
        });
    }
    Ok(())
}

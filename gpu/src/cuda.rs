//! The CUDA backend (feature `cuda`): cudarc with dynamic loading, so the crate builds
//! with no CUDA installed and a binary runs without a driver (it reports the CUDA
//! backend as unavailable and the caller falls back to the CPU).
//!
//! Kernels are compiled at run time with NVRTC. Ring GEMM is done in 64-bit integer
//! arithmetic (`unsigned long long` multiply-add wraps mod 2^64 exactly, by the C
//! semantics of unsigned overflow), never in TF32/bf16/f16. Weights are uploaded once by
//! [`Backend::prepare_ring`] and stay on the device across layers and sessions; each
//! product uploads only the activations.
//!
//! Status: compiled in CI (no GPU there); the bit-identity test against the CPU backend
//! (`cuda_ring_gemm_equals_cpu`) runs only where a GPU and driver are present.

use crate::{check_shapes, Backend, BackendError, RingMatrix};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const TILE: u32 = 16;

const KERNELS: &str = r#"
#define TILE 16
extern "C" __global__ void ring_gemm_abt(const unsigned long long* x, const unsigned long long* w,
                                         unsigned long long* out, int m, int k, int n) {
    __shared__ unsigned long long xs[TILE][TILE + 1];
    __shared__ unsigned long long ws[TILE][TILE + 1];
    int row = blockIdx.y * TILE + threadIdx.y;
    int col0 = blockIdx.x * TILE;
    int col = col0 + threadIdx.x;
    unsigned long long acc = 0ULL;
    for (int t0 = 0; t0 < k; t0 += TILE) {
        int t = t0 + threadIdx.x;
        xs[threadIdx.y][threadIdx.x] = (row < m && t < k) ? x[(size_t)row * k + t] : 0ULL;
        int wr = col0 + threadIdx.y;
        ws[threadIdx.y][threadIdx.x] = (wr < n && t < k) ? w[(size_t)wr * k + t] : 0ULL;
        __syncthreads();
        #pragma unroll
        for (int e = 0; e < TILE; ++e) acc += xs[threadIdx.y][e] * ws[threadIdx.x][e];
        __syncthreads();
    }
    if (row < m && col < n) out[(size_t)row * n + col] = acc;
}

extern "C" __global__ void f32_gemm_abt(const float* x, const float* w, float* out, int m, int k, int n) {
    __shared__ float xs[TILE][TILE + 1];
    __shared__ float ws[TILE][TILE + 1];
    int row = blockIdx.y * TILE + threadIdx.y;
    int col0 = blockIdx.x * TILE;
    int col = col0 + threadIdx.x;
    float acc = 0.0f;
    for (int t0 = 0; t0 < k; t0 += TILE) {
        int t = t0 + threadIdx.x;
        xs[threadIdx.y][threadIdx.x] = (row < m && t < k) ? x[(size_t)row * k + t] : 0.0f;
        int wr = col0 + threadIdx.y;
        ws[threadIdx.y][threadIdx.x] = (wr < n && t < k) ? w[(size_t)wr * k + t] : 0.0f;
        __syncthreads();
        #pragma unroll
        for (int e = 0; e < TILE; ++e) acc = fmaf(xs[threadIdx.y][e], ws[threadIdx.x][e], acc);
        __syncthreads();
    }
    if (row < m && col < n) out[(size_t)row * n + col] = acc;
}
"#;

/// A CUDA device with the ShardLM kernels loaded.
pub struct CudaBackend {
    stream: Arc<CudaStream>,
    ring_gemm: CudaFunction,
    f32_gemm: CudaFunction,
    name: String,
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::CudaUnavailable(e.to_string())
}

/// Whether the CUDA driver and NVRTC libraries can be loaded on this host.
pub fn driver_present() -> bool {
    // SAFETY: these only try to dlopen the libraries by name (libloading) and drop the
    // handle; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() && cudarc::nvrtc::sys::is_culib_present() }
}

impl CudaBackend {
    /// Opens device `ordinal`, compiles and loads the kernels.
    pub fn new(ordinal: usize) -> Result<Self, BackendError> {
        if !driver_present() {
            return Err(unavailable("no CUDA driver (libcuda) or NVRTC library on this host"));
        }
        let ctx = CudaContext::new(ordinal).map_err(unavailable)?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS).map_err(unavailable)?;
        let module = ctx.load_module(ptx).map_err(unavailable)?;
        let ring_gemm = module.load_function("ring_gemm_abt").map_err(unavailable)?;
        let f32_gemm = module.load_function("f32_gemm_abt").map_err(unavailable)?;
        Ok(Self { stream: ctx.default_stream(), ring_gemm, f32_gemm, name: format!("cuda:{ordinal} {name}") })
    }

    fn grid(m: usize, n: usize) -> Result<LaunchConfig, BackendError> {
        let gx = u32::try_from(n.div_ceil(TILE as usize)).map_err(unavailable)?;
        let gy = u32::try_from(m.div_ceil(TILE as usize)).map_err(unavailable)?;
        Ok(LaunchConfig { grid_dim: (gx, gy, 1), block_dim: (TILE, TILE, 1), shared_mem_bytes: 0 })
    }

    fn dims(m: usize, k: usize, n: usize) -> Result<(i32, i32, i32), BackendError> {
        let c = |v: usize| {
            i32::try_from(v).map_err(|_| BackendError::Shape {
                op: "cuda gemm",
                detail: format!("dimension {v} exceeds i32"),
            })
        };
        Ok((c(m)?, c(k)?, c(n)?))
    }

    fn ring_gemm_device(
        &self,
        x: &[u64],
        w: &CudaSlice<u64>,
        m: usize,
        k: usize,
        n: usize,
        out: &mut [u64],
    ) -> Result<(), BackendError> {
        let (mi, ki, ni) = Self::dims(m, k, n)?;
        let xd = self.stream.clone_htod(x).map_err(unavailable)?;
        let mut od = self.stream.alloc_zeros::<u64>(m * n).map_err(unavailable)?;
        let cfg = Self::grid(m, n)?;
        let mut launch = self.stream.launch_builder(&self.ring_gemm);
        launch.arg(&xd).arg(w).arg(&mut od).arg(&mi).arg(&ki).arg(&ni);
        // SAFETY: the kernel reads x (m*k) and w (n*k) and writes out (m*n) with bounds
        // checks against m, k, n, which match the buffers' lengths (checked by callers).
        unsafe { launch.launch(cfg) }.map_err(unavailable)?;
        self.stream.memcpy_dtoh(&od, out).map_err(unavailable)?;
        self.stream.synchronize().map_err(unavailable)?;
        Ok(())
    }
}

/// A ring weight resident on the device.
pub(crate) struct DeviceRing(pub(crate) CudaSlice<u64>);

impl Backend for CudaBackend {
    fn name(&self) -> String {
        self.name.clone()
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
        let (mi, ki, ni) = Self::dims(m, k, n)?;
        let xd = self.stream.clone_htod(x).map_err(unavailable)?;
        let wd = self.stream.clone_htod(w).map_err(unavailable)?;
        let mut od = self.stream.alloc_zeros::<f32>(m * n).map_err(unavailable)?;
        let mut launch = self.stream.launch_builder(&self.f32_gemm);
        launch.arg(&xd).arg(&wd).arg(&mut od).arg(&mi).arg(&ki).arg(&ni);
        // SAFETY: as for the ring kernel: bounds-checked accesses within m*k, n*k, m*n.
        unsafe { launch.launch(Self::grid(m, n)?) }.map_err(unavailable)?;
        self.stream.memcpy_dtoh(&od, out).map_err(unavailable)?;
        self.stream.synchronize().map_err(unavailable)?;
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
        if m == 0 || n == 0 {
            return Ok(());
        }
        let wd = self.stream.clone_htod(w).map_err(unavailable)?;
        self.ring_gemm_device(x, &wd, m, k, n, out)
    }

    fn prepare_ring(&self, w: &[u64], n: usize, k: usize) -> Result<RingMatrix, BackendError> {
        if w.len() != n * k {
            return Err(BackendError::Shape {
                op: "prepare_ring",
                detail: format!("{} elements, want {n}x{k}", w.len()),
            });
        }
        let wd = self.stream.clone_htod(w).map_err(unavailable)?;
        Ok(RingMatrix::on_device(n, k, Arc::new(DeviceRing(wd))))
    }

    fn ring_matmul_prepared(
        &self,
        x: &[u64],
        w: &RingMatrix,
        m: usize,
        out: &mut [u64],
    ) -> Result<(), BackendError> {
        check_shapes("ring_matmul_prepared", x.len(), w.n * w.k, out.len(), m, w.k, w.n)?;
        let Some(dev) = w.device().and_then(|d| d.downcast_ref::<DeviceRing>()) else {
            // Prepared by the CPU backend: multiply there.
            return crate::CpuBackend::new().ring_matmul_prepared(x, w, m, out);
        };
        if m == 0 || w.n == 0 {
            return Ok(());
        }
        self.ring_gemm_device(x, &dev.0, m, w.k, w.n, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn cuda_ring_gemm_equals_cpu() {
        let gpu = match CudaBackend::new(0) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("skipped: CUDA test not run: {e}");
                return;
            }
        };
        let cpu = crate::CpuBackend::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for &(m, k, n) in &[(1, 896, 1152), (98, 1536, 2048), (7, 18944, 33), (98, 8960, 1536)] {
            let x: Vec<u64> = (0..m * k).map(|i| if i % 5 == 0 { u64::MAX } else { rng.gen() }).collect();
            let w: Vec<u64> = (0..n * k).map(|i| ((i as i64 % 524287) - 262143) as u64).collect();
            let (pc, pg) = (cpu.prepare_ring(&w, n, k).unwrap(), gpu.prepare_ring(&w, n, k).unwrap());
            let (mut a, mut b) = (vec![0u64; m * n], vec![0u64; m * n]);
            cpu.ring_matmul_prepared(&x, &pc, m, &mut a).unwrap();
            gpu.ring_matmul_prepared(&x, &pg, m, &mut b).unwrap();
            assert_eq!(a, b, "({m},{k},{n})");
        }
    }
}

//! The public weights in ring encoding, shared by every variant that multiplies shares
//! or masked values by them: v2/v3's server answers `Y enc(W)^T`, the dealer computes
//! `S = R enc(W)^T`, and both v3-mpc parties multiply their shares locally.
//!
//! Weights are encoded once per process with `F_w` fractional bits and prepared on the
//! party's [`Backend`] (a GPU backend uploads them once); a dealer in the same process
//! as the server party reuses the server's copy.

use rayon::prelude::*;
use shardlm_configs::{FixedPoint, ModelConfig};
use shardlm_gpu::{Backend, BackendError, RingMatrix};
use shardlm_model::{Linear, Weights};
use shardlm_mpc::material::LinearWeights;
use shardlm_mpc::ring::encode_f32;
use shardlm_transport::handshake::GemmCost;
use std::borrow::Cow;
use std::sync::Arc;

/// The public weights in ring encoding, `enc(W)` with `F_w` fractional bits, per linear
/// unit: what the server multiplies by and what the dealer computes `S` with.
pub struct RingWeights {
    config: ModelConfig,
    fixed: FixedPoint,
    units: Vec<(Linear, RingMatrix)>,
    backend: Arc<dyn Backend>,
}

impl RingWeights {
    /// Encodes every linear unit of `w` and prepares it on `backend` (on a GPU backend:
    /// uploads it once).
    pub fn encode(w: &Weights, fixed: FixedPoint, backend: Arc<dyn Backend>) -> Result<Self, BackendError> {
        let units = Linear::all(&w.config)
            .into_iter()
            .map(|lin| {
                let v = w.linear(lin);
                let enc: Vec<u64> =
                    v.weight.par_iter().map(|&x| encode_f32(x, fixed.weight_frac_bits)).collect();
                Ok((lin, backend.prepare_ring(&enc, v.d_out, v.d_in)?))
            })
            .collect::<Result<_, BackendError>>()?;
        Ok(Self { config: w.config.clone(), fixed, units, backend })
    }

    /// The unit with a dealer weight id.
    pub fn unit_by_id(&self, id: u32) -> Option<(Linear, &RingMatrix)> {
        self.units.get(id as usize).map(|(l, m)| (*l, m))
    }

    /// `Y enc(W)^T` for a unit on the backend: the server's answer, the dealer's `S`.
    pub fn multiply(&self, lin: Linear, y: &[u64], n: usize) -> Result<Vec<u64>, BackendError> {
        let m = self.unit(lin);
        let mut z = vec![0u64; n * m.n];
        self.backend.ring_matmul_prepared(y, m, n, &mut z)?;
        Ok(z)
    }

    /// `enc(W)` of a unit, `d_out x d_in`, prepared for ring GEMM.
    pub fn unit(&self, lin: Linear) -> &RingMatrix {
        let i = match lin {
            Linear::LmHead => self.units.len() - 1,
            Linear::Qkv(l) => 4 * l,
            Linear::O(l) => 4 * l + 1,
            Linear::GateUp(l) => 4 * l + 2,
            Linear::Down(l) => 4 * l + 3,
        };
        debug_assert_eq!(self.units[i].0, lin);
        &self.units[i].1
    }

    /// The model shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The encoding.
    pub fn fixed(&self) -> FixedPoint {
        self.fixed
    }

    /// Measures what a GEMM on this backend costs per weight element
    /// ([`GemmCost`]): the widest unit of the first layer (`gate_up`) multiplied on
    /// [`CALIBRATION_ROWS`] rows, the best of two calls each, and a line through the two
    /// times. About one layer's worth of prefill work; the server does it once at start.
    pub fn calibrate(&self) -> Result<GemmCost, BackendError> {
        let lin = if self.config.num_hidden_layers > 0 { Linear::GateUp(0) } else { Linear::LmHead };
        let m = self.unit(lin);
        let weights = (m.n * m.k).max(1) as f64;
        let time = |rows: usize| -> Result<f64, BackendError> {
            let y: Vec<u64> =
                (0..rows * m.k).map(|i| (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
            let mut best = f64::MAX;
            for _ in 0..2 {
                let t = std::time::Instant::now();
                self.multiply(lin, &y, rows)?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let [r1, r2] = CALIBRATION_ROWS;
        let (t1, t2) = (time(r1)?, time(r2)?);
        let row = ((t2 - t1) / (r2 - r1) as f64).max(0.0);
        let fixed = (t1 - r1 as f64 * row).max(0.0);
        let ps = |s: f64| (s / weights * 1e12).round() as u64;
        Ok(GemmCost { fixed_ps: ps(fixed), row_ps: ps(row) })
    }
}

/// Row counts [`RingWeights::calibrate`] times: a small and a large v3 chunk.
pub const CALIBRATION_ROWS: [usize; 2] = [8, 32];

/// The dealer reads weights by id ([`Linear::weight_id`]) and computes `S` with the
/// backend's exact prepared ring GEMM.
impl LinearWeights for RingWeights {
    fn linear_weight(&self, id: u32) -> Result<Cow<'_, [u64]>, String> {
        let (_, m) = self.unit_by_id(id).ok_or_else(|| format!("the model has no linear unit {id}"))?;
        Ok(Cow::Owned(m.to_ring()))
    }

    fn mask_image(
        &self,
        id: u32,
        r: &[u64],
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<Vec<u64>, String> {
        let (lin, m) = self.unit_by_id(id).ok_or_else(|| format!("the model has no linear unit {id}"))?;
        if (m.k, m.n) != (d_in, d_out) {
            return Err(format!("{lin:?} is {}x{}, the request says {d_out}x{d_in}", m.n, m.k));
        }
        self.multiply(lin, r, n).map_err(|e| e.to_string())
    }
}

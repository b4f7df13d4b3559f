//! Client-assisted linear-layer material (v2, v3; DESIGN.md section 3), P0 only: a
//! fresh mask `R` (`n x d_in`, seeded) and `S = R enc(W)^T` (`n x d_out`, raw) for the
//! public weight `weight`, consumed by [`crate::masked_linear`]. P1 gets nothing.
//!
//! Layout: a shape record `[n, d_in, d_out, weight]` raw for P0, `r` seeded for P0, `s`
//! raw for P0.

use super::super::kind::{checked_len, parts, shape_words, Component, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::share::P0;

/// Client-assisted linear layer material: a fresh mask `R` and `S = R * enc(W)^T`.
pub struct MaskedLinear {
    /// Rows (tokens).
    pub n: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Which weight `S` was computed for.
    pub weight: u32,
    /// The mask `R`, row-major `n x d_in`.
    pub r: Vec<u64>,
    /// `S = R * enc(W)^T mod 2^64`, row-major `n x d_out`.
    pub s: Vec<u64>,
}
crate::debug_lengths!(MaskedLinear { r, s });

impl MaskedLinear {
    /// Splits the material into consecutive row blocks of `rows[i]` rows each (they must
    /// add up to `n`; a block may be empty), for a request sent in chunks (v3). Consumes
    /// the material, so each row of `R` still masks exactly one input row.
    pub fn split_rows(self, rows: &[usize]) -> Result<Vec<MaskedLinear>, MaterialError> {
        let total: usize = rows.iter().sum();
        if total != self.n {
            return Err(MaterialError::InvalidRequest(format!(
                "masked-linear material for weight {} has {} rows; the chunks ask for {total}",
                self.weight, self.n
            )));
        }
        let (mut r, mut s) = (self.r.as_slice(), self.s.as_slice());
        let mut out = Vec::with_capacity(rows.len());
        for &k in rows {
            let (rh, rt) = r.split_at(k * self.d_in);
            let (sh, st) = s.split_at(k * self.d_out);
            (r, s) = (rt, st);
            let (d_in, d_out, weight) = (self.d_in, self.d_out, self.weight);
            out.push(MaskedLinear { n: k, d_in, d_out, weight, r: rh.to_vec(), s: sh.to_vec() });
        }
        Ok(out)
    }
}

/// Masked-linear material for `n` rows of weight `weight` (`d_out x d_in`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MaskedLinearRequest {
    /// Rows.
    pub n: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Weight id (see [`LinearWeights`]).
    pub weight: u32,
}

impl Kind for MaskedLinearRequest {
    fn name(&self) -> String {
        "masked-linear".into()
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        Ok(Layout::new(self.name())
            .comp("shape", 4, Src::Raw, Src::Absent)
            .comp("r", checked_len(self.n, self.d_in, self)?, Src::Seed, Src::Absent)
            .comp("s", checked_len(self.n, self.d_out, self)?, Src::Raw, Src::Absent)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, weights: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let Self { n, d_in, d_out, weight } = *self;
        let r = s.get(0, 1);
        let image = weights
            .mask_image(weight, &r, n, d_in, d_out)
            .map_err(|detail| MaterialError::Weights { id: weight, detail })?;
        Ok([vec![self.shape_record().unwrap_or_default(), image], vec![]])
    }
    fn elements(&self) -> u64 {
        self.n as u64
    }
    fn shape_record(&self) -> Option<Vec<u64>> {
        Some(shape_words(&[self.n, self.d_in, self.d_out, self.weight as usize]))
    }
}

impl Request<P0> for MaskedLinearRequest {
    type Output = MaskedLinear;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<MaskedLinear, MaterialError> {
        let [_shape, r, s] = parts(p)?;
        let Self { n, d_in, d_out, weight } = *self;
        Ok(MaskedLinear { n, d_in, d_out, weight, r, s })
    }
}

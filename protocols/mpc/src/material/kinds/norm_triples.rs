//! Norm triples: a square pair `(a, a^2)` per element and a row-scaling triple
//! `(r_row, a, r_row a)` on the same `a`, so that `x` opened once for its square is not
//! opened again when its row is scaled (RMSNorm, [`crate::beaver::norm_square_start`]).
//!
//! Layout: a shape record `[rows, cols]` raw for both; `a` seeded for both; `aa` raw
//! for P0 / seeded for P1; `r` (one per row) seeded for both; `c` raw for P0 / seeded
//! for P1.

use super::super::kind::{
    both, checked_len, parts, shape_words, Component, Kind, Layout, Request, Seeded, Src,
};
use super::super::{LinearWeights, MaterialError};
use crate::ring;
use crate::share::{Role, Shares};

/// A norm triple for a `rows x cols` activation.
#[derive(Debug)]
pub struct NormTriples<R: Role> {
    /// Rows.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Shares of `a` (`rows x cols`).
    pub a: Shares<R>,
    /// Shares of `a^2`.
    pub aa: Shares<R>,
    /// Shares of `r` (`rows`).
    pub r: Shares<R>,
    /// Shares of `c = r_row a`.
    pub c: Shares<R>,
}

/// A norm triple for `rows x cols`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NormTriplesRequest {
    /// Rows.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
}

impl Kind for NormTriplesRequest {
    fn name(&self) -> String {
        "norm-triples".into()
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        let n = checked_len(self.rows, self.cols, self)?;
        Ok(Layout::new(self.name())
            .shape(2)
            .comp("a", n, Src::Seed, Src::Seed)
            .comp("aa", n, Src::Raw, Src::Seed)
            .comp("r", self.rows as u64, Src::Seed, Src::Seed)
            .comp("c", n, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let Self { rows, cols } = *self;
        let a = both(s, 1);
        let aa0 = ring::sub(&ring::mul(&a, &a), &s.get(1, 2));
        let r = both(s, 3);
        let c1 = s.get(1, 4);
        let c0 =
            (0..rows * cols).map(|i| r[i / cols.max(1)].wrapping_mul(a[i]).wrapping_sub(c1[i])).collect();
        let shape = shape_words(&[rows, cols]);
        Ok([vec![shape.clone(), aa0, c0], vec![shape]])
    }
    fn elements(&self) -> u64 {
        1
    }
    fn shape_record(&self) -> Option<Vec<u64>> {
        Some(shape_words(&[self.rows, self.cols]))
    }
}

impl<R: Role> Request<R> for NormTriplesRequest {
    type Output = NormTriples<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<NormTriples<R>, MaterialError> {
        let [_shape, a, aa, r, c] = parts(p)?;
        Ok(NormTriples {
            rows: self.rows,
            cols: self.cols,
            a: Shares::from_raw(a),
            aa: Shares::from_raw(aa),
            r: Shares::from_raw(r),
            c: Shares::from_raw(c),
        })
    }
}

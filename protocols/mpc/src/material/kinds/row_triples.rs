//! Row-scaling triples: `a_r` per row, `b_rj` per element, `c_rj = a_r b_rj`, for every
//! element of a row times the row's value with one opening per row
//! ([`crate::beaver::row_mul_start`]; softmax's reciprocal, RMSNorm's scale).
//!
//! Layout: a shape record `[rows, cols]` raw for both; `a` (per row) and `b` seeded for
//! both; `c` raw for P0 / seeded for P1.

use super::super::kind::{
    both, checked_len, parts, shape_words, Component, Kind, Layout, Request, Seeded, Src,
};
use super::super::{LinearWeights, MaterialError};
use crate::share::{Role, Shares};

/// A row-scaling triple for a `rows x cols` activation.
#[derive(Debug)]
pub struct RowTriples<R: Role> {
    /// Rows.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Shares of `a` (`rows`).
    pub a: Shares<R>,
    /// Shares of `b` (`rows x cols`, row-major).
    pub b: Shares<R>,
    /// Shares of `c` (`rows x cols`).
    pub c: Shares<R>,
}

/// A row-scaling triple for `rows x cols`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RowTriplesRequest {
    /// Rows.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
}

impl Kind for RowTriplesRequest {
    fn name(&self) -> String {
        "row-triples".into()
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        let n = checked_len(self.rows, self.cols, self)?;
        Ok(Layout::new(self.name())
            .shape(2)
            .comp("a", self.rows as u64, Src::Seed, Src::Seed)
            .comp("b", n, Src::Seed, Src::Seed)
            .comp("c", n, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let Self { rows, cols } = *self;
        let (a, b, c1) = (both(s, 1), both(s, 2), s.get(1, 3));
        let c0 =
            (0..rows * cols).map(|i| a[i / cols.max(1)].wrapping_mul(b[i]).wrapping_sub(c1[i])).collect();
        let shape = shape_words(&[rows, cols]);
        Ok([vec![shape.clone(), c0], vec![shape]])
    }
    fn elements(&self) -> u64 {
        1
    }
    fn shape_record(&self) -> Option<Vec<u64>> {
        Some(shape_words(&[self.rows, self.cols]))
    }
}

impl<R: Role> Request<R> for RowTriplesRequest {
    type Output = RowTriples<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<RowTriples<R>, MaterialError> {
        let [_shape, a, b, c] = parts(p)?;
        Ok(RowTriples {
            rows: self.rows,
            cols: self.cols,
            a: Shares::from_raw(a),
            b: Shares::from_raw(b),
            c: Shares::from_raw(c),
        })
    }
}

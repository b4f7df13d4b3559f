//! Matrix triples (`A`, `B`, `C = A B`) for a product of two secret matrices with one
//! opening of `X - A` and `Y - B` per matrix, not per output ([`crate::beaver::matmul`];
//! attention's `Q K^T`).
//!
//! Layout: a public shape record `[m, k, n]` raw for both (checked on take); `A`, `B`
//! seeded for both; `C` raw for P0 (`C0 = A B - C1`), seeded for P1.

use super::super::kind::{
    both, checked_len, parts, shape_words, Component, Kind, Layout, Request, Seeded, Src,
};
use super::super::{LinearWeights, MaterialError};
use crate::ring;
use crate::share::{Role, Shares};

/// A matrix triple: `A` (`m x k`), `B` (`k x n`), `C = A B` (`m x n`), row-major.
#[derive(Debug)]
pub struct MatrixTriple<R: Role> {
    /// Rows of `A`.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of `B`.
    pub n: usize,
    /// `Some(start)`: `A` (and the `X` it masks) is zero beyond column `start + r` of row
    /// `r`, so only the visible entries of `X - A` are exchanged
    /// ([`super::causal_matrix_triples`]).
    pub causal: Option<usize>,
    /// Shares of `A`.
    pub a: Shares<R>,
    /// Shares of `B`.
    pub b: Shares<R>,
    /// Shares of `C = A B`.
    pub c: Shares<R>,
}

/// One matrix triple for `(m x k) * (k x n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MatrixTripleRequest {
    /// Rows of the left matrix.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of the right matrix.
    pub n: usize,
}

impl Kind for MatrixTripleRequest {
    fn name(&self) -> String {
        "matrix-triples".into()
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        let Self { m, k, n } = *self;
        Ok(Layout::new(self.name())
            .shape(3)
            .comp("a", checked_len(m, k, self)?, Src::Seed, Src::Seed)
            .comp("b", checked_len(k, n, self)?, Src::Seed, Src::Seed)
            .comp("c", checked_len(m, n, self)?, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let Self { m, k, n } = *self;
        let c0 = ring::sub(&ring::gemm(&both(s, 1), &both(s, 2), m, k, n), &s.get(1, 3));
        let shape = shape_words(&[m, k, n]);
        Ok([vec![shape.clone(), c0], vec![shape]])
    }
    fn elements(&self) -> u64 {
        1
    }
    fn shape_record(&self) -> Option<Vec<u64>> {
        Some(shape_words(&[self.m, self.k, self.n]))
    }
}

impl<R: Role> Request<R> for MatrixTripleRequest {
    type Output = MatrixTriple<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<MatrixTriple<R>, MaterialError> {
        let [_shape, a, b, c] = parts(p)?;
        let Self { m, k, n } = *self;
        Ok(MatrixTriple {
            m,
            k,
            n,
            causal: None,
            a: Shares::from_raw(a),
            b: Shares::from_raw(b),
            c: Shares::from_raw(c),
        })
    }
}

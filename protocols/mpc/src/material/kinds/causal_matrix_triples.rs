//! Causal matrix triples: a [`MatrixTriple`] whose left factor `A` is zero beyond the
//! causal mask (`A[r][j] = 0` for `j > start + r`), for attention's `E V`: the masked
//! entries of `E` are public zeros, so only the visible entries of `E - A` are opened.
//!
//! Layout: a shape record `[m, k, n, start]` raw for both; `A` (hidden entries zeroed
//! after derivation), `B` seeded for both; `C` raw for P0, seeded for P1.

use super::super::kind::{
    both, checked_len, parts, shape_words, Component, Kind, Layout, Request, Seeded, Src,
};
use super::super::{LinearWeights, MaterialError};
use super::matrix_triples::MatrixTriple;
use crate::ring;
use crate::share::{Role, Shares};

/// Columns of row `r` visible under a causal mask starting at `start`, in a `k`-column
/// matrix.
pub fn visible(r: usize, k: usize, start: usize) -> usize {
    (start + r + 1).min(k)
}

/// Zeroes the entries of an `m x k` row-major matrix beyond column `start + r` in row `r`.
pub fn zero_hidden(a: &mut [u64], m: usize, k: usize, start: usize) {
    for (r, row) in a.chunks_mut(k.max(1)).take(m).enumerate() {
        row[visible(r, k, start)..].iter_mut().for_each(|v| *v = 0);
    }
}

/// One causal matrix triple for `(m x k) * (k x n)`; row `r` sees columns `0 ..= start + r`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CausalMatrixTripleRequest {
    /// Rows of the left matrix.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of the right matrix.
    pub n: usize,
    /// Row `r` sees columns `0 ..= start + r`.
    pub start: usize,
}

impl Kind for CausalMatrixTripleRequest {
    fn name(&self) -> String {
        "causal-matrix-triples".into()
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        let Self { m, k, n, .. } = *self;
        Ok(Layout::new(self.name())
            .shape(4)
            .comp("a", checked_len(m, k, self)?, Src::Seed, Src::Seed)
            .comp("b", checked_len(k, n, self)?, Src::Seed, Src::Seed)
            .comp("c", checked_len(m, n, self)?, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let Self { m, k, n, start } = *self;
        let (mut a0, mut a1) = (s.get(0, 1), s.get(1, 1));
        zero_hidden(&mut a0, m, k, start);
        zero_hidden(&mut a1, m, k, start);
        let a = ring::add(&a0, &a1);
        let c0 = ring::sub(&ring::gemm(&a, &both(s, 2), m, k, n), &s.get(1, 3));
        let shape = shape_words(&[m, k, n, start]);
        Ok([vec![shape.clone(), c0], vec![shape]])
    }
    fn elements(&self) -> u64 {
        1
    }
    fn shape_record(&self) -> Option<Vec<u64>> {
        Some(shape_words(&[self.m, self.k, self.n, self.start]))
    }
}

impl<R: Role> Request<R> for CausalMatrixTripleRequest {
    type Output = MatrixTriple<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<MatrixTriple<R>, MaterialError> {
        let [_shape, mut a, b, c] = parts(p)?;
        let Self { m, k, n, start } = *self;
        zero_hidden(&mut a, m, k, start);
        Ok(MatrixTriple {
            m,
            k,
            n,
            causal: Some(start),
            a: Shares::from_raw(a),
            b: Shares::from_raw(b),
            c: Shares::from_raw(c),
        })
    }
}

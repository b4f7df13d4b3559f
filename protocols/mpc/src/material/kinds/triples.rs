//! Elementwise Beaver triples (Beaver, CRYPTO 1991): shares of `a`, `b` and `c = a b`,
//! consumed by [`crate::beaver::mul`].
//!
//! Layout: `a`, `b` seeded for both parties; `c` raw for P0 (`c0 = (a0 + a1)(b0 + b1) -
//! c1`) and seeded for P1. P0's shard stores one word per triple, P1's nothing.

use super::super::kind::{both, parts, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::ring;
use crate::share::{Role, Shares};

/// Elementwise Beaver triples: shares of `a`, `b`, `c = a b`.
#[derive(Debug)]
pub struct Triples<R: Role> {
    /// Shares of `a`.
    pub a: Shares<R>,
    /// Shares of `b`.
    pub b: Shares<R>,
    /// Shares of `c = a * b`.
    pub c: Shares<R>,
}

/// `n` Beaver triples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TriplesRequest {
    /// Triples.
    pub n: usize,
}

impl Kind for TriplesRequest {
    fn name(&self) -> String {
        "triples".into()
    }
    fn layout(&self) -> Result<Vec<super::super::kind::Component>, MaterialError> {
        let n = self.n as u64;
        Ok(Layout::new(self.name())
            .comp("a", n, Src::Seed, Src::Seed)
            .comp("b", n, Src::Seed, Src::Seed)
            .comp("c", n, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let c0 = ring::sub(&ring::mul(&both(s, 0), &both(s, 1)), &s.get(1, 2));
        Ok([vec![c0], vec![]])
    }
    fn elements(&self) -> u64 {
        self.n as u64
    }
}

impl<R: Role> Request<R> for TriplesRequest {
    type Output = Triples<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<Triples<R>, MaterialError> {
        let [a, b, c] = parts(p)?;
        Ok(Triples { a: Shares::from_raw(a), b: Shares::from_raw(b), c: Shares::from_raw(c) })
    }
}

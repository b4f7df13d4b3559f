//! Boolean AND triples on bit-packed words (64 ANDs per word): XOR shares of `a`, `b`
//! and `c = a & b`, consumed by [`crate::boolean::and`] and the comparison trees.
//!
//! Layout: `a`, `b` seeded for both; `c` raw for P0 (`c0 = (a0 ^ a1) & (b0 ^ b1) ^ c1`),
//! seeded for P1.

use super::super::kind::{parts, Component, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::share::{BitShares, Role};

/// Boolean AND triples on bit-packed words: XOR shares of `a`, `b`, `c = a & b`.
#[derive(Debug)]
pub struct AndTriples<R: Role> {
    /// Shares of `a`.
    pub a: BitShares<R>,
    /// Shares of `b`.
    pub b: BitShares<R>,
    /// Shares of `c = a & b`.
    pub c: BitShares<R>,
}

/// AND triples for `words` 64-bit words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AndTriplesRequest {
    /// 64-bit words.
    pub words: usize,
}

fn xor(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

impl Kind for AndTriplesRequest {
    fn name(&self) -> String {
        "and-triples".into()
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        let n = self.words as u64;
        Ok(Layout::new(self.name())
            .comp("a", n, Src::Seed, Src::Seed)
            .comp("b", n, Src::Seed, Src::Seed)
            .comp("c", n, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let a = xor(&s.get(0, 0), &s.get(1, 0));
        let b = xor(&s.get(0, 1), &s.get(1, 1));
        let c0 = a.iter().zip(&b).zip(s.get(1, 2)).map(|((a, b), c1)| (a & b) ^ c1).collect();
        Ok([vec![c0], vec![]])
    }
    fn elements(&self) -> u64 {
        self.words as u64
    }
}

impl<R: Role> Request<R> for AndTriplesRequest {
    type Output = AndTriples<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<AndTriples<R>, MaterialError> {
        let [a, b, c] = parts(p)?;
        Ok(AndTriples { a: BitShares::from_raw(a), b: BitShares::from_raw(b), c: BitShares::from_raw(c) })
    }
}

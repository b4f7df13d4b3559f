//! Bit triples: a daBit `r` and a Beaver pair `(a, c = r a)` on it. One opening of
//! `b XOR r` (a bit) and `x - a` (a word) gives shares of `b x` for a XOR-shared bit `b`
//! ([`crate::beaver::bit_mul_start`]): a selection in one round.
//!
//! Layout: `b` seeded for both (the daBit's XOR bit), `r` raw for P0 / seeded for P1
//! (its arithmetic share), `a` seeded for both, `c` raw for P0 / seeded for P1.

use super::super::kind::{both, parts, Component, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::ring;
use crate::share::{Role, Shares};

/// Bit triples: a random bit `r` shared both ways (as a daBit) and a Beaver pair
/// `(a, c = r a)` on it.
pub struct BitTriples<R: Role> {
    /// XOR shares of `r`, one per element (0 or 1).
    pub bits: Vec<u64>,
    /// Additive shares of `r`.
    pub r: Shares<R>,
    /// Additive shares of `a` (uniform).
    pub a: Shares<R>,
    /// Additive shares of `c = r a`.
    pub c: Shares<R>,
}
crate::debug_lengths!(BitTriples<R> { bits, r, a, c });

/// `n` bit triples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BitTriplesRequest {
    /// Bit triples.
    pub n: usize,
}

impl Kind for BitTriplesRequest {
    fn name(&self) -> String {
        "bit-triples".into()
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        let n = self.n as u64;
        Ok(Layout::new(self.name())
            .comp("b", n, Src::Seed, Src::Seed)
            .comp("r", n, Src::Raw, Src::Seed)
            .comp("a", n, Src::Seed, Src::Seed)
            .comp("c", n, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let r: Vec<u64> = s.get(0, 0).iter().zip(s.get(1, 0)).map(|(b0, b1)| (b0 ^ b1) & 1).collect();
        let r0 = ring::sub(&r, &s.get(1, 1));
        let c0 = ring::sub(&ring::mul(&r, &both(s, 2)), &s.get(1, 3));
        Ok([vec![r0, c0], vec![]])
    }
    fn elements(&self) -> u64 {
        self.n as u64
    }
}

impl<R: Role> Request<R> for BitTriplesRequest {
    type Output = BitTriples<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<BitTriples<R>, MaterialError> {
        let [b, r, a, c] = parts(p)?;
        Ok(BitTriples {
            bits: b.into_iter().map(|w| w & 1).collect(),
            r: Shares::from_raw(r),
            a: Shares::from_raw(a),
            c: Shares::from_raw(c),
        })
    }
}

//! Bit-vector product triples: a Beaver triple `(a, b, c = ab)` per element and `bits`
//! daBits `r_j` with `r_j a`, `r_j b` and `r_j ab`. One opening of `x - a`, `y - b`
//! (two words) and of `s_j XOR r_j` (`bits` bits) gives shares of
//! `sum_j w_j s_j x y` for XOR-shared bits `s_j` and public weights `w_j`
//! ([`crate::beaver::bit_vector_mul_start`]): v3-ot's `(p + inr sigmoid(g)) g u` in one
//! round, `g` and `u` opened once instead of once for `g u` and again for the bits.
//!
//! Layout: `a`, `b` seeded for both; `c` raw for P0, seeded for P1; `s` (the daBits' XOR
//! bits, `bits` per element) seeded for both; `r`, `ra`, `rb`, `rab` raw for P0, seeded
//! for P1.

use super::super::kind::{both, checked_len, parts, Component, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::ring;
use crate::share::{Role, Shares};

/// Bit-vector product triples for `n` elements of `bits` bits each (module doc).
pub struct BitVectorTriples<R: Role> {
    /// Bits per element.
    pub bits: usize,
    /// Shares of `a` (masks `x`).
    pub a: Shares<R>,
    /// Shares of `b` (masks `y`).
    pub b: Shares<R>,
    /// Shares of `ab`.
    pub c: Shares<R>,
    /// XOR shares of the daBits, `bits` per element (element-major).
    pub s: Vec<u64>,
    /// Additive shares of the daBits.
    pub r: Shares<R>,
    /// Shares of `r_j a`.
    pub ra: Shares<R>,
    /// Shares of `r_j b`.
    pub rb: Shares<R>,
    /// Shares of `r_j ab`.
    pub rab: Shares<R>,
}
crate::debug_lengths!(BitVectorTriples<R> { a, b, c, s, r, ra, rb, rab });

/// `n` bit-vector product triples of `bits` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BitVectorTriplesRequest {
    /// Elements.
    pub n: usize,
    /// Bits per element (1..=64).
    pub bits: u32,
}

impl Kind for BitVectorTriplesRequest {
    fn name(&self) -> String {
        format!("bit-vector-triples-{}", self.bits)
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        if !(1..=64).contains(&self.bits) {
            return Err(MaterialError::InvalidRequest(format!(
                "bit-vector triples of {} bits: 1..=64 are supported",
                self.bits
            )));
        }
        let (n, nb) = (self.n as u64, checked_len(self.n, self.bits as usize, self)?);
        Ok(Layout::new(self.name())
            .comp("a", n, Src::Seed, Src::Seed)
            .comp("b", n, Src::Seed, Src::Seed)
            .comp("c", n, Src::Raw, Src::Seed)
            .comp("s", nb, Src::Seed, Src::Seed)
            .comp("r", nb, Src::Raw, Src::Seed)
            .comp("ra", nb, Src::Raw, Src::Seed)
            .comp("rb", nb, Src::Raw, Src::Seed)
            .comp("rab", nb, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let (a, b) = (both(s, 0), both(s, 1));
        let ab = ring::mul(&a, &b);
        let bits = self.bits as usize;
        let r: Vec<u64> = s.get(0, 3).iter().zip(s.get(1, 3)).map(|(x, y)| (x ^ y) & 1).collect();
        let times = |v: &[u64]| -> Vec<u64> {
            r.iter().enumerate().map(|(i, &ri)| ri.wrapping_mul(v[i / bits])).collect()
        };
        let (ra, rb, rab) = (times(&a), times(&b), times(&ab));
        Ok([
            vec![
                ring::sub(&ab, &s.get(1, 2)),
                ring::sub(&r, &s.get(1, 4)),
                ring::sub(&ra, &s.get(1, 5)),
                ring::sub(&rb, &s.get(1, 6)),
                ring::sub(&rab, &s.get(1, 7)),
            ],
            vec![],
        ])
    }
    fn elements(&self) -> u64 {
        self.n as u64
    }
}

impl<R: Role> Request<R> for BitVectorTriplesRequest {
    type Output = BitVectorTriples<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<BitVectorTriples<R>, MaterialError> {
        let [a, b, c, s, r, ra, rb, rab] = parts(p)?;
        Ok(BitVectorTriples {
            bits: self.bits as usize,
            a: Shares::from_raw(a),
            b: Shares::from_raw(b),
            c: Shares::from_raw(c),
            s: s.into_iter().map(|w| w & 1).collect(),
            r: Shares::from_raw(r),
            ra: Shares::from_raw(ra),
            rb: Shares::from_raw(rb),
            rab: Shares::from_raw(rab),
        })
    }
}

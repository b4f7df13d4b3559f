//! Bit-vector product triples: a Beaver triple `(a, b, c = ab)` per element, `bits`
//! daBits `r_j` with `r_j a`, `r_j b` and `r_j ab`, and `y_bits` daBits `q_j` with
//! `q_j b`. One opening of `x - a`, `y - b` (two words) and of the bits XOR their daBits
//! (`bits + y_bits` bits) gives shares of `sum_j w_j s_j x y + sum_j w'_j t_j y` for
//! XOR-shared bits `s_j`, `t_j` and public weights `w_j`, `w'_j` (plus public constants
//! times `x y` and `y`, which the triple yields anyway)
//! ([`crate::beaver::bit_vector_mul_start`]): v3-ot's SiLU tangent line
//! `(slope g - intercept) u` in one round, `g` and `u` opened once instead of once for
//! `g u` and again for the bits. A bit times `x y` costs four words of P0 material, a
//! bit times `y` alone two.
//!
//! Layout: `a`, `b` seeded for both; `c` raw for P0, seeded for P1; `s` (the daBits' XOR
//! bits, `bits` per element) seeded for both; `r`, `ra`, `rb`, `rab` raw for P0, seeded
//! for P1; then `sy` (XOR bits, `y_bits` per element) seeded for both, `q`, `qb` raw for
//! P0, seeded for P1.

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
    /// Bits per element multiplied by `y` alone.
    pub y_bits: usize,
    /// XOR shares of the `y`-only daBits, `y_bits` per element (element-major).
    pub sy: Vec<u64>,
    /// Additive shares of the `y`-only daBits.
    pub q: Shares<R>,
    /// Shares of `q_j b`.
    pub qb: Shares<R>,
}
crate::debug_lengths!(BitVectorTriples<R> { a, b, c, s, r, ra, rb, rab, sy, q, qb });

/// `n` bit-vector product triples of `bits` bits times `x y` and `y_bits` times `y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BitVectorTriplesRequest {
    /// Elements.
    pub n: usize,
    /// Bits per element multiplied by `x y` (1..=64).
    pub bits: u32,
    /// Bits per element multiplied by `y` alone (0..=64).
    pub y_bits: u32,
}

impl Kind for BitVectorTriplesRequest {
    fn name(&self) -> String {
        format!("bit-vector-triples-{}-{}", self.bits, self.y_bits)
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        if !(1..=64).contains(&self.bits) || self.y_bits > 64 {
            return Err(MaterialError::InvalidRequest(format!(
                "bit-vector triples of {} + {} bits: 1..=64 and 0..=64 are supported",
                self.bits, self.y_bits
            )));
        }
        let (n, nb) = (self.n as u64, checked_len(self.n, self.bits as usize, self)?);
        let ny = checked_len(self.n, self.y_bits as usize, self)?;
        Ok(Layout::new(self.name())
            .comp("a", n, Src::Seed, Src::Seed)
            .comp("b", n, Src::Seed, Src::Seed)
            .comp("c", n, Src::Raw, Src::Seed)
            .comp("s", nb, Src::Seed, Src::Seed)
            .comp("r", nb, Src::Raw, Src::Seed)
            .comp("ra", nb, Src::Raw, Src::Seed)
            .comp("rb", nb, Src::Raw, Src::Seed)
            .comp("rab", nb, Src::Raw, Src::Seed)
            .comp("sy", ny, Src::Seed, Src::Seed)
            .comp("q", ny, Src::Raw, Src::Seed)
            .comp("qb", ny, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let (a, b) = (both(s, 0), both(s, 1));
        let ab = ring::mul(&a, &b);
        // The daBits of component `i` (XOR of both seeded bits) and their products with
        // the values of their elements (`per` bits each).
        let dabits = |i: usize| -> Vec<u64> {
            s.get(0, i).iter().zip(s.get(1, i)).map(|(x, y)| (x ^ y) & 1).collect()
        };
        let times = |bits: &[u64], per: u32, v: &[u64]| -> Vec<u64> {
            bits.iter().enumerate().map(|(i, &bi)| bi.wrapping_mul(v[i / per as usize])).collect()
        };
        let (r, q) = (dabits(3), dabits(8));
        let (ra, rb, rab) = (times(&r, self.bits, &a), times(&r, self.bits, &b), times(&r, self.bits, &ab));
        let qb = times(&q, self.y_bits, &b);
        Ok([
            vec![
                ring::sub(&ab, &s.get(1, 2)),
                ring::sub(&r, &s.get(1, 4)),
                ring::sub(&ra, &s.get(1, 5)),
                ring::sub(&rb, &s.get(1, 6)),
                ring::sub(&rab, &s.get(1, 7)),
                ring::sub(&q, &s.get(1, 9)),
                ring::sub(&qb, &s.get(1, 10)),
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
        let [a, b, c, s, r, ra, rb, rab, sy, q, qb] = parts(p)?;
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
            y_bits: self.y_bits as usize,
            sy: sy.into_iter().map(|w| w & 1).collect(),
            q: Shares::from_raw(q),
            qb: Shares::from_raw(qb),
        })
    }
}

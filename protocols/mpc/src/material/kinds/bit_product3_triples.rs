//! Bit-weighted three-factor product triples: masks `a`, `b`, `c` for three values, a
//! daBit `r`, and every product of them (`ab`, `ac`, `bc`, `abc`, `r a`, ..., `r abc`).
//! One opening of `x - a`, `y - b`, `w - c` (three words) and of `s XOR r` (one bit)
//! gives shares of `s x y w` for an XOR-shared bit `s`
//! ([`crate::beaver::bit_product3_start`]): v3-ot's softmax exponential
//! `[z >= -16] exp(z) exp(e1) (1 + e2)` in one round where a bit product and two Beaver
//! products took two.
//!
//! Layout: `a`, `b`, `c` and `s` (the daBit's XOR bit) seeded for both; the eleven
//! products and the daBit's additive shares `r` raw for P0, seeded for P1 (12 words per
//! element for P0).

use super::super::kind::{both, parts, Component, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::ring;
use crate::share::{Role, Shares};

/// Names of the raw (P0) parts, in layout order after `a`, `b`, `c`, `s`.
const PRODUCTS: [&str; 12] = ["ab", "ac", "bc", "abc", "r", "ra", "rb", "rc", "rab", "rac", "rbc", "rabc"];

/// Bit-weighted three-factor product triples for `n` elements (module doc).
pub struct BitProduct3Triples<R: Role> {
    /// Shares of the masks `a`, `b`, `c` (of `x`, `y`, `w`).
    pub masks: [Shares<R>; 3],
    /// XOR shares of the daBits.
    pub s: Vec<u64>,
    /// Shares of `ab`, `ac`, `bc`, `abc`, `r`, `ra`, `rb`, `rc`, `rab`, `rac`, `rbc`,
    /// `rabc`.
    pub products: [Shares<R>; 12],
}

impl<R: Role> std::fmt::Debug for BitProduct3Triples<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BitProduct3Triples {{ n: {} }}", self.s.len())
    }
}

/// `n` bit-weighted three-factor product triples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BitProduct3TriplesRequest {
    /// Elements.
    pub n: usize,
}

impl Kind for BitProduct3TriplesRequest {
    fn name(&self) -> String {
        "bit-product3-triples".into()
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        let n = self.n as u64;
        let mut l = Layout::new(self.name())
            .comp("a", n, Src::Seed, Src::Seed)
            .comp("b", n, Src::Seed, Src::Seed)
            .comp("c", n, Src::Seed, Src::Seed)
            .comp("s", n, Src::Seed, Src::Seed);
        for p in PRODUCTS {
            l = l.comp(p, n, Src::Raw, Src::Seed);
        }
        Ok(l.build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let (a, b, c) = (both(s, 0), both(s, 1), both(s, 2));
        let r: Vec<u64> = s.get(0, 3).iter().zip(s.get(1, 3)).map(|(x, y)| (x ^ y) & 1).collect();
        let (ab, ac, bc) = (ring::mul(&a, &b), ring::mul(&a, &c), ring::mul(&b, &c));
        let abc = ring::mul(&ab, &c);
        let times_r = |v: &[u64]| ring::mul(&r, v);
        let (ra, rb, rc) = (times_r(&a), times_r(&b), times_r(&c));
        let (rab, rac, rbc, rabc) = (times_r(&ab), times_r(&ac), times_r(&bc), times_r(&abc));
        let plain = [ab, ac, bc, abc, r, ra, rb, rc, rab, rac, rbc, rabc];
        let p0 = plain.iter().enumerate().map(|(k, v)| ring::sub(v, &s.get(1, 4 + k))).collect();
        Ok([p0, vec![]])
    }
    fn elements(&self) -> u64 {
        self.n as u64
    }
}

impl<R: Role> Request<R> for BitProduct3TriplesRequest {
    type Output = BitProduct3Triples<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<BitProduct3Triples<R>, MaterialError> {
        let [a, b, c, s, ab, ac, bc, abc, r, ra, rb, rc, rab, rac, rbc, rabc] = parts(p)?;
        let sh = Shares::from_raw;
        Ok(BitProduct3Triples {
            masks: [sh(a), sh(b), sh(c)],
            s: s.into_iter().map(|w| w & 1).collect(),
            products: [
                sh(ab),
                sh(ac),
                sh(bc),
                sh(abc),
                sh(r),
                sh(ra),
                sh(rb),
                sh(rc),
                sh(rab),
                sh(rac),
                sh(rbc),
                sh(rabc),
            ],
        })
    }
}

//! daBits (Rotaru and Wood, INDOCRYPT 2019): a random bit shared both as XOR bits and
//! additively, for converting a XOR-shared bit to an arithmetic share with one opened
//! bit ([`crate::boolean::bit_to_arith`]).
//!
//! Layout: `b` (its low bit) seeded for both; `r` raw for P0 (`r0 = (b0 ^ b1) - r1`),
//! seeded for P1.

use super::super::kind::{parts, Component, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::share::{Role, Shares};

/// daBits: a random bit `r` shared both ways, XOR (`bits`, one bit per element in the
/// low bit of a word) and additively (`arith`).
pub struct DaBits<R: Role> {
    /// XOR shares of `r`, one per element (0 or 1).
    pub bits: Vec<u64>,
    /// Additive shares of `r`.
    pub arith: Shares<R>,
}
crate::debug_lengths!(DaBits<R> { bits, arith });

/// `n` daBits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DaBitsRequest {
    /// daBits.
    pub n: usize,
}

impl Kind for DaBitsRequest {
    fn name(&self) -> String {
        "dabits".into()
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        let n = self.n as u64;
        Ok(Layout::new(self.name())
            .comp("b", n, Src::Seed, Src::Seed)
            .comp("r", n, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let r0 = s
            .get(0, 0)
            .iter()
            .zip(s.get(1, 0))
            .zip(s.get(1, 1))
            .map(|((b0, b1), r1)| ((b0 ^ b1) & 1).wrapping_sub(r1))
            .collect();
        Ok([vec![r0], vec![]])
    }
    fn elements(&self) -> u64 {
        self.n as u64
    }
}

impl<R: Role> Request<R> for DaBitsRequest {
    type Output = DaBits<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<DaBits<R>, MaterialError> {
        let [b, r] = parts(p)?;
        Ok(DaBits { bits: b.into_iter().map(|w| w & 1).collect(), arith: Shares::from_raw(r) })
    }
}

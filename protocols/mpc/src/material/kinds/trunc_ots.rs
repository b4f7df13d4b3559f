//! Truncation OTs: 1-of-2 random OTs on `F`-bit strings, used by faithful truncation by
//! `F` ([`crate::trunc`]) as a correlated OT (Gilboa's product of a bit and a word).
//! Same layout as [`super::random_ots`] with two choices; a kind of its own so that its
//! streams (and manifest counts) are separate per shift.

use super::super::kind::{parts, Component, Kind, Request, Seeded};
use super::super::{LinearWeights, MaterialError};
use super::random_ots::{deal_chosen, ot_layout, RandomOts};
use crate::share::Role;

/// `n` 1-of-2 OTs on `bits`-bit strings for faithful truncation by `bits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TruncOtsRequest {
    /// Elements.
    pub n: usize,
    /// The shift `F` (1..=62).
    pub bits: u32,
}

impl Kind for TruncOtsRequest {
    fn name(&self) -> String {
        format!("trunc-ots-{}b", self.bits)
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        if !(1..=62).contains(&self.bits) {
            return Err(MaterialError::InvalidRequest(format!(
                "truncation shift {} is outside 1..=62",
                self.bits
            )));
        }
        ot_layout(self.name(), 2, self.bits, self.n, self)
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        Ok(deal_chosen(s, 2, self.bits, self.n))
    }
    fn elements(&self) -> u64 {
        self.n as u64
    }
}

impl<R: Role> Request<R> for TruncOtsRequest {
    type Output = RandomOts<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<RandomOts<R>, MaterialError> {
        let [idx, strings, chosen] = parts(p)?;
        Ok(RandomOts::from_parts(2, self.bits, self.n, idx, strings, chosen))
    }
}

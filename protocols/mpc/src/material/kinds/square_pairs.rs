//! Square pairs: shares of `a` and `a^2`, for squaring with one opening of `x - a`
//! ([`crate::beaver::square`]), half a triple's traffic.
//!
//! Layout: `a` seeded for both; `aa` raw for P0 (`aa0 = a^2 - aa1`), seeded for P1.

use super::super::kind::{both, parts, Component, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::share::{Role, Shares};

/// Square pairs: shares of `a` and `a^2`.
#[derive(Debug)]
pub struct SquarePairs<R: Role> {
    /// Shares of `a`.
    pub a: Shares<R>,
    /// Shares of `a^2`.
    pub aa: Shares<R>,
}

/// `n` square pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SquarePairsRequest {
    /// Pairs.
    pub n: usize,
}

impl Kind for SquarePairsRequest {
    fn name(&self) -> String {
        "square-pairs".into()
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        let n = self.n as u64;
        Ok(Layout::new(self.name())
            .comp("a", n, Src::Seed, Src::Seed)
            .comp("aa", n, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let a = both(s, 0);
        let aa0 = a.iter().zip(s.get(1, 1)).map(|(a, aa1)| a.wrapping_mul(*a).wrapping_sub(aa1)).collect();
        Ok([vec![aa0], vec![]])
    }
    fn elements(&self) -> u64 {
        self.n as u64
    }
}

impl<R: Role> Request<R> for SquarePairsRequest {
    type Output = SquarePairs<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<SquarePairs<R>, MaterialError> {
        let [a, aa] = parts(p)?;
        Ok(SquarePairs { a: Shares::from_raw(a), aa: Shares::from_raw(aa) })
    }
}

//! Power tuples: shares of `a` (uniform) and of `a^2, ..., a^degree`. One opening of
//! `x - a` gives every power of `x` up to `degree` by the binomial expansion
//! ([`crate::beaver::powers_start`]; SiLU's and exp's polynomials).
//!
//! Layout: `a` seeded for both; `pow` (`degree - 1` words per element, element-major)
//! raw for P0 (`pow0 = a^j - pow1`), seeded for P1.

use super::super::kind::{both, checked_len, parts, Component, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::ring;
use crate::share::{Role, Shares};

/// Power tuples: shares of `a` and of `a^2 ..= a^degree` (`degree - 1` per element).
#[derive(Debug)]
pub struct PowerTuples<R: Role> {
    /// Highest power.
    pub degree: u32,
    /// Shares of `a`.
    pub a: Shares<R>,
    /// Shares of `a^2 ..= a^degree`, `degree - 1` words per element.
    pub powers: Shares<R>,
}

/// `n` power tuples up to `degree` (2..=8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PowerTuplesRequest {
    /// Elements.
    pub n: usize,
    /// Highest power (2..=8).
    pub degree: u32,
}

impl Kind for PowerTuplesRequest {
    fn name(&self) -> String {
        format!("power-tuples-{}", self.degree)
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        if !(2..=8).contains(&self.degree) {
            return Err(MaterialError::InvalidRequest(format!(
                "power tuples of degree {}: 2..=8 are supported",
                self.degree
            )));
        }
        Ok(Layout::new(self.name())
            .comp("a", self.n as u64, Src::Seed, Src::Seed)
            .comp("pow", checked_len(self.n, self.degree as usize - 1, self)?, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let a = both(s, 0);
        let d = self.degree as usize - 1;
        let mut pow = vec![0u64; self.n * d];
        for (i, &ai) in a.iter().enumerate() {
            let mut p = ai;
            for slot in &mut pow[i * d..(i + 1) * d] {
                p = p.wrapping_mul(ai);
                *slot = p;
            }
        }
        Ok([vec![ring::sub(&pow, &s.get(1, 1))], vec![]])
    }
    fn elements(&self) -> u64 {
        self.n as u64
    }
}

impl<R: Role> Request<R> for PowerTuplesRequest {
    type Output = PowerTuples<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<PowerTuples<R>, MaterialError> {
        let [a, pow] = parts(p)?;
        Ok(PowerTuples { degree: self.degree, a: Shares::from_raw(a), powers: Shares::from_raw(pow) })
    }
}

//! The ideal dealer: both parties' material from one seed, in memory, generated on
//! demand by the same [`super::deal`] the bundle writer uses. For tests and local demos:
//! P0's half holds both parties' seeds, which a real deployment never does.

use super::{
    deal, p1_raw_parts, LinearWeights, Material, MaterialError, MaterialRequest, MaterialStore, NoWeights,
};
use crate::prg::Seed;
use crate::share::{P0, P1};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Shared weights for masked-linear material.
pub type SharedWeights = Arc<dyn LinearWeights + Send + Sync>;

/// Produces both parties' material from one seed.
pub struct IdealDealer {
    seed: Seed,
    weights: SharedWeights,
}

impl std::fmt::Debug for IdealDealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdealDealer(..)")
    }
}

/// The two party seeds a dealer seed expands into (the bundle writer uses the same).
pub(crate) fn party_seeds(seed: &Seed) -> [Seed; 2] {
    [seed.derive("party", 0), seed.derive("party", 1)]
}

impl IdealDealer {
    /// A dealer from `seed`, without linear weights.
    pub fn new(seed: Seed) -> IdealDealer {
        IdealDealer { seed, weights: Arc::new(NoWeights) }
    }

    /// Gives the dealer the public linear weights for masked-linear material.
    pub fn with_weights(mut self, weights: SharedWeights) -> IdealDealer {
        self.weights = weights;
        self
    }

    /// The two parties' material sources.
    pub fn split(self) -> (Material<P0>, Material<P1>) {
        let seeds = party_seeds(&self.seed);
        let p0 = Material::from_store(
            seeds[0],
            BTreeMap::new(),
            Box::new(IdealP0 { seeds, weights: self.weights }),
        );
        let p1 = Material::from_store(seeds[1], BTreeMap::new(), Box::new(IdealP1));
        (p0, p1)
    }
}

struct IdealP0 {
    seeds: [Seed; 2],
    weights: SharedWeights,
}

impl MaterialStore for IdealP0 {
    fn commit(&mut self, _cursors: &BTreeMap<String, u64>) -> Result<(), MaterialError> {
        Ok(())
    }
    fn raw_parts(&mut self, req: &MaterialRequest, offsets: &[u64]) -> Result<Vec<Vec<u64>>, MaterialError> {
        let [p0, _] = deal(req, [&self.seeds[0], &self.seeds[1]], offsets, self.weights.as_ref())?;
        Ok(p0)
    }
    fn total(&self, _component: &str) -> Option<u64> {
        None
    }
}

struct IdealP1;

impl MaterialStore for IdealP1 {
    fn commit(&mut self, _cursors: &BTreeMap<String, u64>) -> Result<(), MaterialError> {
        Ok(())
    }
    fn raw_parts(&mut self, req: &MaterialRequest, _offsets: &[u64]) -> Result<Vec<Vec<u64>>, MaterialError> {
        p1_raw_parts(req)
    }
    fn total(&self, _component: &str) -> Option<u64> {
        None
    }
}

//! 1-of-N random OT correlations: the sender (P1) holds `N` random strings per OT, the
//! receiver (P0) a random index and the string at that index. Derandomized online by
//! [`crate::ot`] (lookups) and, as a correlated OT, by faithful truncation
//! ([`super::trunc_ots`]).
//!
//! Layout: `idx` seeded for P0 only; `strings` (`N` per OT) seeded for P1 only; `chosen`
//! raw for P0, packed at the string width (the one part that depends on both seeds).

use super::super::kind::{checked_len, parts, Component, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::ring;
use crate::share::{Role, P0, P1};
use rayon::prelude::*;

/// `count` 1-of-`n_choices` random-OT correlations on `bits`-bit strings. Accessors are
/// typed by role.
pub struct RandomOts<R: Role> {
    pub(crate) n_choices: usize,
    pub(crate) bits: u32,
    pub(crate) count: usize,
    /// P0: random indices (`count`). P1: empty.
    pub(crate) index: Vec<u64>,
    /// P0: the chosen strings (`count`). P1: all strings (`count * n_choices`, OT-major).
    pub(crate) strings: Vec<u64>,
    pub(crate) _role: std::marker::PhantomData<R>,
}
crate::debug_lengths!(RandomOts<R> { index, strings });

impl<R: Role> RandomOts<R> {
    /// Choices per OT.
    pub fn n_choices(&self) -> usize {
        self.n_choices
    }
    /// String width in bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Number of OTs.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Builds a party's random OTs from its components (seeded words reduced to their
    /// range).
    pub(crate) fn from_parts(
        n_choices: usize,
        bits: u32,
        count: usize,
        idx: Vec<u64>,
        strings: Vec<u64>,
        chosen: Vec<u64>,
    ) -> Self {
        let mask = ring::low_mask(bits);
        let (index, strings) = if R::ID == 0 {
            (idx.into_iter().map(|v| v & (n_choices as u64 - 1)).collect(), chosen)
        } else {
            (Vec::new(), strings.into_iter().map(|v| v & mask).collect())
        };
        RandomOts { n_choices, bits, count, index, strings, _role: std::marker::PhantomData }
    }
}

impl RandomOts<P0> {
    /// Builds the receiver's half (random indices and their strings).
    pub fn receiver(n_choices: usize, bits: u32, index: Vec<u64>, chosen: Vec<u64>) -> Self {
        RandomOts { n_choices, bits, count: index.len(), index, strings: chosen, _role: Default::default() }
    }
    /// The random indices.
    pub fn indices(&self) -> &[u64] {
        &self.index
    }
    /// The strings at the random indices.
    pub fn chosen(&self) -> &[u64] {
        &self.strings
    }
}

impl RandomOts<P1> {
    /// Builds the sender's half (`count * n_choices` strings).
    pub fn sender(n_choices: usize, bits: u32, strings: Vec<u64>) -> Self {
        let count = strings.len().checked_div(n_choices).unwrap_or(0);
        RandomOts { n_choices, bits, count, index: Vec::new(), strings, _role: Default::default() }
    }
    /// All strings, OT-major (`strings[ot * n_choices + j]`).
    pub fn strings(&self) -> &[u64] {
        &self.strings
    }
}

/// The layout shared by every random-OT kind.
pub(crate) fn ot_layout(
    name: String,
    n_choices: usize,
    bits: u32,
    count: usize,
    what: &dyn std::fmt::Debug,
) -> Result<Vec<Component>, MaterialError> {
    Ok(Layout::new(name)
        .comp("idx", count as u64, Src::Seed, Src::Absent)
        .comp("strings", checked_len(count, n_choices, what)?, Src::Absent, Src::Seed)
        .packed("chosen", count as u64, Src::Raw, Src::Absent, bits)
        .build())
}

/// P0's chosen strings: `strings[i * N + (idx[i] mod N)]` reduced to `bits` bits.
pub(crate) fn deal_chosen(s: &Seeded<'_>, n_choices: usize, bits: u32, count: usize) -> [Vec<Vec<u64>>; 2] {
    let (idx, strings) = (s.get(0, 0), s.get(1, 1));
    let mask = ring::low_mask(bits);
    let sel = n_choices as u64 - 1;
    let chosen =
        (0..count).into_par_iter().map(|i| strings[i * n_choices + (idx[i] & sel) as usize] & mask).collect();
    [vec![chosen], vec![]]
}

/// `count` 1-of-`n_choices` random OTs on `bits`-bit strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RandomOtsRequest {
    /// Choices per OT (a power of two, 2..=65536).
    pub n_choices: usize,
    /// String width (1..=64).
    pub bits: u32,
    /// Number of OTs.
    pub count: usize,
}

impl Kind for RandomOtsRequest {
    fn name(&self) -> String {
        format!("random-ots-1of{}-{}b", self.n_choices, self.bits)
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        let Self { n_choices, bits, count } = *self;
        if n_choices < 2 || !n_choices.is_power_of_two() || n_choices > 1 << 16 {
            return Err(MaterialError::InvalidRequest(format!(
                "random OTs need a power-of-two number of choices in 2..=65536, got {n_choices}"
            )));
        }
        if !(1..=64).contains(&bits) {
            return Err(MaterialError::InvalidRequest(format!("OT string width {bits} is outside 1..=64")));
        }
        ot_layout(self.name(), n_choices, bits, count, self)
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        Ok(deal_chosen(s, self.n_choices, self.bits, self.count))
    }
    fn elements(&self) -> u64 {
        self.count as u64
    }
}

impl<R: Role> Request<R> for RandomOtsRequest {
    type Output = RandomOts<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<RandomOts<R>, MaterialError> {
        let [idx, strings, chosen] = parts(p)?;
        Ok(RandomOts::from_parts(self.n_choices, self.bits, self.count, idx, strings, chosen))
    }
}

//! One-time truth tables of chunk carries (Ishai, Kushilevitz, Meldgaard, Orlandi and
//! Paskin-Cherniavsky, "On the power of correlated randomness in secure computation",
//! TCC 2013), the leaves of every comparison ([`crate::compare`]).
//!
//! Per chunk instance P0 holds a random mask `r_A`, P1 a random mask `r_B` (`chunk` bits
//! each), and both hold XOR shares of the table `T[u][v] = (gen, prop)` of
//! `A = u + r_A`, `B = v + r_B` (mod `2^chunk`): `gen` is the carry out of `A + B`,
//! `prop` whether `A + B = 2^chunk - 1`. Online each party opens its chunk plus its mask
//! and both read their share of the entry: one round, no AND gate.
//!
//! Layout: `ra` seeded for P0 only, `rb` seeded for P1 only, `t` raw for P0
//! (`t0 = T ^ t1`), seeded for P1. P0 stores [`CarryTables::table_words`] words per
//! instance: this is where v3-mpc's dealer bytes go.

use super::super::kind::{checked_len, parts, Component, Kind, Layout, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::share::{Role, P0};
use rayon::prelude::*;

/// One-time truth tables for `count` chunk instances (module doc).
pub struct CarryTables<R: Role> {
    /// Chunk width in bits.
    pub chunk: u32,
    /// This party's masks, one per instance.
    pub mask: Vec<u64>,
    /// This party's table shares, `table_words(chunk)` words per instance.
    pub tables: Vec<u64>,
    pub(crate) _role: std::marker::PhantomData<R>,
}
crate::debug_lengths!(CarryTables<R> { mask, tables });

impl<R: Role> CarryTables<R> {
    /// Words of one table: `2^(2 chunk)` entries of 2 bits.
    pub fn table_words(chunk: u32) -> usize {
        (2usize << (2 * chunk)).div_ceil(64)
    }
}

/// The XOR-sharable carry table of one chunk for masks `ra`, `rb` (module doc), as
/// [`CarryTables::table_words`] words.
pub fn carry_table(chunk: u32, ra: u64, rb: u64) -> Vec<u64> {
    let size = 1u64 << chunk;
    let m = size - 1;
    let mut t = vec![0u64; CarryTables::<P0>::table_words(chunk)];
    for u in 0..size {
        for v in 0..size {
            let sum = ((u + ra) & m) + ((v + rb) & m);
            let entry = u64::from(sum >= size) | (u64::from(sum == m) << 1);
            let at = 2 * (u * size + v) as usize;
            t[at / 64] |= entry << (at % 64);
        }
    }
    t
}

/// Carry tables for `count` chunk instances of `chunk` bits (1..=4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CarryTablesRequest {
    /// Chunk instances (elements times chunks).
    pub count: usize,
    /// Chunk width in bits (1..=4).
    pub chunk: u32,
}

impl Kind for CarryTablesRequest {
    fn name(&self) -> String {
        format!("carry-tables-{}b", self.chunk)
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        if !(1..=4).contains(&self.chunk) {
            return Err(MaterialError::InvalidRequest(format!(
                "carry tables on {}-bit chunks: 1..=4 are supported",
                self.chunk
            )));
        }
        let words = CarryTables::<P0>::table_words(self.chunk);
        let count = self.count as u64;
        Ok(Layout::new(self.name())
            .comp("ra", count, Src::Seed, Src::Absent)
            .comp("rb", count, Src::Absent, Src::Seed)
            .comp("t", checked_len(self.count, words, self)?, Src::Raw, Src::Seed)
            .build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let (ra, rb, t1) = (s.get(0, 0), s.get(1, 1), s.get(1, 2));
        let words = CarryTables::<P0>::table_words(self.chunk);
        let t0: Vec<u64> = (0..self.count)
            .into_par_iter()
            .flat_map_iter(|i| {
                let table = carry_table(self.chunk, ra[i], rb[i]);
                table
                    .into_iter()
                    .zip(t1[i * words..(i + 1) * words].to_vec())
                    .map(|(t, m)| t ^ m)
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok([vec![t0], vec![]])
    }
    fn elements(&self) -> u64 {
        self.count as u64
    }
}

impl<R: Role> Request<R> for CarryTablesRequest {
    type Output = CarryTables<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<CarryTables<R>, MaterialError> {
        let [ra, rb, tables] = parts(p)?;
        let lo = crate::ring::low_mask(self.chunk);
        let mask = if R::ID == 0 { ra } else { rb };
        Ok(CarryTables {
            chunk: self.chunk,
            mask: mask.into_iter().map(|r| r & lo).collect(),
            tables,
            _role: std::marker::PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carry_tables_hold_generate_and_propagate() {
        for (ra, rb) in [(0u64, 0u64), (3, 5), (7, 7)] {
            let t = carry_table(3, ra, rb);
            for a in 0..8u64 {
                for b in 0..8u64 {
                    let (u, v) = ((a + 8 - ra) % 8, (b + 8 - rb) % 8);
                    let at = 2 * (u * 8 + v) as usize;
                    let e = (t[at / 64] >> (at % 64)) & 3;
                    assert_eq!(e & 1, u64::from(a + b >= 8));
                    assert_eq!(e >> 1, u64::from(a + b == 7));
                }
            }
        }
    }
}

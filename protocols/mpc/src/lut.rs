//! Table lookups on shares with one-time truth tables (Ishai et al., TCC 2013; the
//! material is [`crate::material::kinds::lookup_tables`]): v3-ot's way of computing a
//! public function of a secret in one round.
//!
//! **Reduce** ([`reduce`]). A ring value `x` with `|x| < 2^(s + k - 1)` becomes a `k`-bit
//! index with no communication: each party shifts its share right by `s` and keeps `k`
//! bits, P0 adding 1. The two shares' carry out of the dropped bits is lost, and the
//! wrap of `x0 + x1` past `2^64` vanishes modulo `2^k` (because `k <= 64 - s`), so the
//! index is `v = floor(x / 2^s) + 1 - c`, `c` in `{0, 1}`: `x / 2^s - v` lies in
//! `[-1, 1)` whatever the shares. The dropped bits themselves are an exact integer
//! sharing of the residual `x - 2^s v` in `[-2^s, 2^s)` ([`residual`]).
//!
//! **Look up** ([`lut_start`], [`lut_finish`]). Each party sends its index plus its share
//! of the instance's mask `r` (`k` bits, packed); both learn `y = v + r mod 2^k`, which
//! is uniform whatever `v` (the mask is fresh and one-time), and read entry `y` of each
//! of their rotated tables: P0 its stored share, P1 its seed-derived share (one word of
//! its stream per lookup, read on demand). One round,
//! `k` bits each way, every function of the same input at once.
//!
//! Cost per lookup: `k / 8` bytes each way online; `2^bits x out` bits of P0 material per
//! function read; nothing stored for P1.

use super::{check_len, shape, MpcError};
use crate::material::kinds::lookup_tables::{Lookups, TableShares};
use crate::ring::{low_mask, pack_bits, packed_words, unpack_bits};
use crate::share::{Role, Shares};

/// Local bit-width reduction (module doc): `k`-bit index shares of `x / 2^shift`.
pub fn reduce<R: Role>(x: &Shares<R>, shift: u32, k: u32) -> Vec<u64> {
    let m = low_mask(k);
    let one = u64::from(R::ID == 0);
    x.as_slice().iter().map(|v| ((v >> shift.min(63)).wrapping_add(one)) & m).collect()
}

/// The exact residual `x - 2^shift v` of [`reduce`] (any `k`), as ring shares of a value
/// in `[-2^shift, 2^shift)`: the dropped low bits of each share, P0 subtracting
/// `2^shift`.
pub fn residual<R: Role>(x: &Shares<R>, shift: u32) -> Shares<R> {
    let (m, off) = (low_mask(shift), if R::ID == 0 { 1u64 << shift } else { 0 });
    Shares::from_raw(x.as_slice().iter().map(|v| (v & m).wrapping_sub(off)).collect())
}

/// A lookup between its message and the peer's.
pub struct LutState<R: Role> {
    tables: Lookups<R>,
    mine: Vec<u64>,
}
crate::debug_lengths!(LutState<R> { mine });

/// Words of one party's message for `n` lookups of a `k`-bit index.
pub fn lut_words(n: usize, k: u32) -> usize {
    packed_words(n, k)
}

/// Core: starts lookups of `index` (this party's `k`-bit index shares, one per
/// instance); our message is the index plus our mask share, packed.
pub fn lut_start<R: Role>(index: &[u64], tables: Lookups<R>) -> Result<(LutState<R>, Vec<u64>), MpcError> {
    let n = index.len();
    check_len("lookup", "masks", tables.mask.len(), n)?;
    check_len("lookup", "tables", tables.tables.len(), tables.reads.len())?;
    for (t, r) in tables.tables.iter().zip(&tables.reads) {
        if let TableShares::Stored(t) = t {
            check_len("lookup", "table words", t.len(), n * r.table_words())?;
        }
    }
    let m = low_mask(tables.k);
    let mine: Vec<u64> = index.iter().zip(&tables.mask).map(|(v, r)| v.wrapping_add(*r) & m).collect();
    let msg = pack_bits(&mine, tables.k);
    Ok((LutState { tables, mine }, msg))
}

/// Core: finishes with the peer's message; returns, per function read, this party's
/// output shares (one per instance, in the read's [`crate::material::Out`] sharing).
pub fn lut_finish<R: Role>(st: LutState<R>, peer: &[u64]) -> Result<Vec<Vec<u64>>, MpcError> {
    let (n, k) = (st.mine.len(), st.tables.k);
    check_len("lookup", "peer message (words)", peer.len(), lut_words(n, k))?;
    let theirs = unpack_bits(peer, k, n).ok_or_else(|| shape("lookup", "short message"))?;
    let m = low_mask(k);
    let y: Vec<u64> = st.mine.iter().zip(&theirs).map(|(a, b)| a.wrapping_add(*b) & m).collect();
    Ok((0..st.tables.reads.len())
        .map(|r| {
            let bm = low_mask(st.tables.reads[r].bits);
            let idx: Vec<u64> = y.iter().map(|v| v & bm).collect();
            st.tables.read(r, &idx)
        })
        .collect())
}

//! Boolean shares: AND with bit triples, and bit-to-arithmetic conversion with daBits.
//!
//! **AND** (Beaver over `GF(2)`, 64 gates per word). Triple words `(a, b, c = a & b)`.
//! Each party sends `d_i = x_i ^ a_i`, `e_i = y_i ^ b_i` in one message; then
//! `z_i = c_i ^ (d & b_i) ^ (e & a_i)`, P0 also XORing `d & e`. Cost: 16 bytes per word
//! (per 64 ANDs) each direction, one round.
//!
//! **Bit to arithmetic** with daBits (Rotaru and Wood, INDOCRYPT 2019): a random bit `r`
//! shared both as XOR bits and additively. Each party sends `x_i ^ r_i` (1 bit per
//! element, packed); both learn `c = x ^ r` (uniform) and set
//! `z_i = r_i (1 - 2c)`, P0 adding `c` (since `x = c + r - 2 c r`). Cost: `n / 8` bytes
//! each direction, one round.

use super::{check_len, exchange, AndTriples, DaBits, MpcError};
use crate::ring::{pack_bits, packed_words, unpack_bits};
use crate::share::{BitShares, Role, Shares};
use shardlm_transport::{Channel, Lane};

/// State of a batch of ANDs.
pub struct AndState<R: Role> {
    triples: AndTriples<R>,
    d: Vec<u64>,
    e: Vec<u64>,
}
crate::debug_lengths!(AndState<R> { d, e });

/// Core: starts `x & y` on bit-packed words; our message is `d_i || e_i`.
pub fn and_start<R: Role>(
    x: &BitShares<R>,
    y: &BitShares<R>,
    triples: AndTriples<R>,
) -> Result<(AndState<R>, Vec<u64>), MpcError> {
    let n = x.len();
    check_len("boolean and", "y", y.len(), n)?;
    check_len("boolean and", "triples.a", triples.a.len(), n)?;
    check_len("boolean and", "triples.b", triples.b.len(), n)?;
    check_len("boolean and", "triples.c", triples.c.len(), n)?;
    let d: Vec<u64> = x.as_slice().iter().zip(triples.a.as_slice()).map(|(x, a)| x ^ a).collect();
    let e: Vec<u64> = y.as_slice().iter().zip(triples.b.as_slice()).map(|(y, b)| y ^ b).collect();
    let mut msg = d.clone();
    msg.extend_from_slice(&e);
    Ok((AndState { triples, d, e }, msg))
}

/// Core: finishes with the peer's `d || e`; returns shares of `x & y`.
pub fn and_finish<R: Role>(st: AndState<R>, peer: &[u64]) -> Result<BitShares<R>, MpcError> {
    let n = st.d.len();
    check_len("boolean and", "peer message", peer.len(), 2 * n)?;
    let (a, b, c) = (st.triples.a.as_slice(), st.triples.b.as_slice(), st.triples.c.as_slice());
    let z = (0..n)
        .map(|i| {
            let d = st.d[i] ^ peer[i];
            let e = st.e[i] ^ peer[n + i];
            let mut z = c[i] ^ (d & b[i]) ^ (e & a[i]);
            if R::ID == 0 {
                z ^= d & e;
            }
            z
        })
        .collect();
    Ok(BitShares::from_raw(z))
}

/// Driver: shares of `x & y` (bitwise on packed words).
pub fn and<R: Role, C: Channel + ?Sized>(
    ch: &mut C,
    x: &BitShares<R>,
    y: &BitShares<R>,
    triples: AndTriples<R>,
) -> Result<BitShares<R>, MpcError> {
    let (st, msg) = and_start(x, y, triples)?;
    let peer = exchange(ch, Lane::Openings, &msg, msg.len())?;
    and_finish(st, &peer)
}

/// State of a bit-to-arithmetic conversion.
pub struct B2aState<R: Role> {
    dabits: DaBits<R>,
    c: Vec<u64>,
}
crate::debug_lengths!(B2aState<R> { c });

/// Core: starts converting the first `n` bits of `x` (bit `j` of word `j / 64`, bit
/// `j % 64`); our message is the packed `x_i ^ r_i`.
pub fn b2a_start<R: Role>(
    x: &BitShares<R>,
    n: usize,
    dabits: DaBits<R>,
) -> Result<(B2aState<R>, Vec<u64>), MpcError> {
    check_len("bit to arithmetic", "daBits", dabits.bits.len(), n)?;
    check_len("bit to arithmetic", "daBits (arithmetic)", dabits.arith.len(), n)?;
    let bits = unpack_bits(x.as_slice(), 1, n).ok_or_else(|| {
        super::shape("bit to arithmetic", format!("{} words hold fewer than {n} bits", x.len()))
    })?;
    let c: Vec<u64> = bits.iter().zip(&dabits.bits).map(|(x, r)| (x ^ r) & 1).collect();
    let msg = pack_bits(&c, 1);
    Ok((B2aState { dabits, c }, msg))
}

/// Core: finishes with the peer's packed bits; returns additive shares of the bits.
pub fn b2a_finish<R: Role>(st: B2aState<R>, peer: &[u64]) -> Result<Shares<R>, MpcError> {
    let n = st.c.len();
    check_len("bit to arithmetic", "peer message (words)", peer.len(), packed_words(n, 1))?;
    let pc = unpack_bits(peer, 1, n).ok_or_else(|| super::shape("bit to arithmetic", "short message"))?;
    let r = st.dabits.arith.as_slice();
    let z = (0..n)
        .map(|i| {
            let c = st.c[i] ^ pc[i];
            let mut z = r[i].wrapping_mul(1u64.wrapping_sub(c.wrapping_mul(2)));
            if R::ID == 0 {
                z = z.wrapping_add(c);
            }
            z
        })
        .collect();
    Ok(Shares::from_raw(z))
}

/// Driver: additive shares of the first `n` bits of `x`.
pub fn b2a<R: Role, C: Channel + ?Sized>(
    ch: &mut C,
    x: &BitShares<R>,
    n: usize,
    dabits: DaBits<R>,
) -> Result<Shares<R>, MpcError> {
    let (st, msg) = b2a_start(x, n, dabits)?;
    let peer = exchange(ch, Lane::Openings, &msg, msg.len())?;
    b2a_finish(st, &peer)
}

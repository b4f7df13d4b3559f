//! Faithful truncation by the MSB trick, with one dealer random OT per element
//! (DESIGN.md section 3).
//!
//! Input: shares of `x` with `|x| < 2^62` (signed reading), a shift `F` in `1..=62`.
//! Output: shares of `(x >> F) - c` with `c` in `{0, 1}`: exact up to one unit in the
//! last place, never a wrap failure.
//!
//! **Why.** P0 adds `2^62`, so `x' = x + 2^62` lies in `[0, 2^63)`. As integers
//! `x0' + x1 = x' + w 2^64` with the wrap bit `w = m0 OR m1 = m0 + m1 - m0 m1`, where
//! `m_i = msb(x_i)` (if both MSBs are set the sum wraps; if one is, the sum is at least
//! `2^63 > x'`, so it wraps; if none, it cannot). Then
//! `(x0' >> F) + (x1 >> F) = (x' >> F) + w 2^(64-F) - c`, `c` in `{0, 1}` the lost carry
//! of the low bits. `w 2^(64-F) mod 2^64` needs `w` only modulo `2^F`, so shares of
//! `m0 m1 mod 2^F` suffice, and those come from one 1-of-2 OT.
//!
//! **Protocol** (one round, on [`Lane::Openings`], both messages independent). Dealer
//! random OT: P1 holds two random `F`-bit strings `s_0, s_1`, P0 a random bit `c` and
//! `s_c`. The OT is used as a correlated OT (the correction-string derandomization of
//! Gilboa's multiplication): P0 gets `y = s_c + c u`, so `y - s_0 = c m1`.
//! 1. P0 sends `e = m0 XOR c` (1 bit per element, packed); at the same time P1 sends
//!    `u = s_0 - s_1 + m1 mod 2^F` (`F` bits per element, packed).
//! 2. With `m0 = e XOR c`, `m0 m1 = e m1 + (1 - 2e) c m1`: P0's share is
//!    `u0 = (1 - 2e) y`, P1's `u1 = e m1 - (1 - 2e) s_0` (mod `2^F`).
//! 3. P0 outputs `t0 = (x0' >> F) - (m0 - u0) 2^(64-F) - 2^(62-F)`, P1
//!    `t1 = (x1 >> F) - (m1 - u1) 2^(64-F)`.
//!
//! P1 sees `e`, uniform since `c` is; P0 sees `u`, masked by `s_{1-c}` which it does not
//! know. **Cost:** P0 sends `n/8` bytes, P1 `n F/8` bytes (2.125 bytes per element in
//! total for `F = 16`; the two-string version it replaces sent `n F/4` from P1), one
//! round in which neither party waits for the other.
//!
//! [`local_truncate`] is SecureML's share-local shift, kept ONLY as a documented
//! comparison: it fails (an error near `2^(64-F)`) with probability about `|x| / 2^64`
//! per element, which at 10^8 truncations per forward pass breaks a logit every few
//! passes.

use super::{check_len, shape, MpcError, RandomOts};
use crate::ring::{low_mask, pack_bits, packed_words, unpack_bits};
use crate::share::{Role, Shares, P0, P1};
use shardlm_transport::{Channel, Lane};

const OP: &str = "faithful truncation";

/// Largest magnitude (exclusive) the truncation handles: `2^62`.
pub const TRUNC_BOUND: u64 = 1 << 62;

fn check_params(shift: u32, n: usize, ot_n: usize, ot_choices: usize, ot_bits: u32) -> Result<(), MpcError> {
    if !(1..=62).contains(&shift) {
        return Err(shape(OP, format!("shift {shift} is outside 1..=62")));
    }
    check_len(OP, "random OTs", ot_n, n)?;
    if ot_choices != 2 || ot_bits != shift {
        return Err(shape(
            OP,
            format!("needs 1-of-2 OTs on {shift}-bit strings, got 1-of-{ot_choices} on {ot_bits} bits"),
        ));
    }
    Ok(())
}

/// P0's state between its message and P1's answer.
pub struct TruncP0State {
    shift: u32,
    x: Vec<u64>,
    ots: RandomOts<P0>,
}
crate::debug_lengths!(TruncP0State { x });

/// Core, P0 step 1: returns the state and the message (packed bits `b = m0 XOR c`).
pub fn p0_start(
    x0: &Shares<P0>,
    shift: u32,
    ots: RandomOts<P0>,
) -> Result<(TruncP0State, Vec<u64>), MpcError> {
    check_params(shift, x0.len(), ots.count(), ots.n_choices(), ots.bits())?;
    let x: Vec<u64> = x0.as_slice().iter().map(|v| v.wrapping_add(TRUNC_BOUND)).collect();
    let b: Vec<u64> = x.iter().zip(ots.indices()).map(|(v, c)| (v >> 63) ^ (c & 1)).collect();
    Ok((TruncP0State { shift, x, ots }, pack_bits(&b, 1)))
}

/// P1's state between its message and P0's.
pub struct TruncP1State {
    shift: u32,
    x: Vec<u64>,
    s0: Vec<u64>,
}
crate::debug_lengths!(TruncP1State { x, s0 });

/// Core, P1 step 1: returns the state and the message (packed `F`-bit words
/// `u = s_0 - s_1 + m1`), which does not depend on P0's.
pub fn p1_start(
    x1: &Shares<P1>,
    shift: u32,
    ots: &RandomOts<P1>,
) -> Result<(TruncP1State, Vec<u64>), MpcError> {
    let n = x1.len();
    check_params(shift, n, ots.count(), ots.n_choices(), ots.bits())?;
    let mask = low_mask(shift);
    let s = ots.strings();
    let u: Vec<u64> = x1
        .as_slice()
        .iter()
        .enumerate()
        .map(|(i, &x)| s[2 * i].wrapping_sub(s[2 * i + 1]).wrapping_add(x >> 63) & mask)
        .collect();
    let s0 = (0..n).map(|i| s[2 * i] & mask).collect();
    Ok((TruncP1State { shift, x: x1.as_slice().to_vec(), s0 }, pack_bits(&u, shift)))
}

/// Core, P1 step 2: P1's output shares from P0's message (packed bits `e`).
pub fn p1_finish(st: TruncP1State, msg: &[u64]) -> Result<Shares<P1>, MpcError> {
    let (n, shift) = (st.x.len(), st.shift);
    check_len(OP, "P0's message (words)", msg.len(), packed_words(n, 1))?;
    let e = unpack_bits(msg, 1, n).ok_or_else(|| shape(OP, "short message"))?;
    let t1 = (0..n)
        .map(|i| {
            let x = st.x[i];
            let m1 = x >> 63;
            // u1 = e m1 - (1 - 2e) s0.
            let u1 = if e[i] & 1 == 1 { m1.wrapping_add(st.s0[i]) } else { st.s0[i].wrapping_neg() };
            let w1 = m1.wrapping_sub(u1);
            (x >> shift).wrapping_sub(w1 << (64 - shift))
        })
        .collect();
    Ok(Shares::from_raw(t1))
}

/// Core, P0 step 2: P0's output shares from P1's message (packed `u`).
pub fn p0_finish(st: TruncP0State, answer: &[u64]) -> Result<Shares<P0>, MpcError> {
    let (n, shift) = (st.x.len(), st.shift);
    check_len(OP, "P1's message (words)", answer.len(), packed_words(n, shift))?;
    let u = unpack_bits(answer, shift, n).ok_or_else(|| shape(OP, "short message"))?;
    let mask = low_mask(shift);
    let offset = 1u64 << (62 - shift);
    let (idx, sc) = (st.ots.indices(), st.ots.chosen());
    let t0 = (0..n)
        .map(|i| {
            let x = st.x[i];
            let m0 = x >> 63;
            let c = idx[i] & 1;
            let e = m0 ^ c;
            // y = s_c + c u; u0 = (1 - 2e) y.
            let y = sc[i].wrapping_add(c.wrapping_mul(u[i])) & mask;
            let u0 = if e == 1 { y.wrapping_neg() } else { y };
            let w0 = m0.wrapping_sub(u0);
            (x >> shift).wrapping_sub(w0 << (64 - shift)).wrapping_sub(offset)
        })
        .collect();
    Ok(Shares::from_raw(t0))
}

/// Driver: faithful truncation of `x` by `shift` bits.
pub fn truncate<R: Role, C: Channel + ?Sized>(
    ch: &mut C,
    x: Shares<R>,
    shift: u32,
    ots: RandomOts<R>,
) -> Result<Shares<R>, MpcError> {
    let n = x.len();
    if R::ID == 0 {
        let x0 = Shares::<P0>::from_raw(x.into_raw());
        let ots = RandomOts::<P0>::receiver(ots.n_choices, ots.bits, ots.index, ots.strings);
        let (st, msg) = p0_start(&x0, shift, ots)?;
        ch.send_u64s(Lane::Openings, &msg)?;
        let answer = ch.recv_u64s(Lane::Openings, packed_words(n, shift))?;
        Ok(Shares::from_raw(p0_finish(st, &answer)?.into_raw()))
    } else {
        let x1 = Shares::<P1>::from_raw(x.into_raw());
        let ots = RandomOts::<P1>::sender(ots.n_choices, ots.bits, ots.strings);
        let (st, msg) = p1_start(&x1, shift, &ots)?;
        ch.send_u64s(Lane::Openings, &msg)?;
        let peer = ch.recv_u64s(Lane::Openings, packed_words(n, 1))?;
        Ok(Shares::from_raw(p1_finish(st, &peer)?.into_raw()))
    }
}

/// SecureML's share-local truncation (Mohassel and Zhang, S&P 2017): P0 takes
/// `x0 >> F`, P1 takes `-((-x1) >> F)`. No communication, but wrong (off by about
/// `2^(64-F)`) with probability about `|x| / 2^64` per element. Documented comparison
/// only: ShardLM does not use it.
pub fn local_truncate<R: Role>(x: &Shares<R>, shift: u32) -> Shares<R> {
    let shift = shift.min(63);
    Shares::from_raw(
        x.as_slice()
            .iter()
            .map(|&v| if R::ID == 0 { v >> shift } else { (v.wrapping_neg() >> shift).wrapping_neg() })
            .collect(),
    )
}

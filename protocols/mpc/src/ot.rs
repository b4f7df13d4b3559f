//! 1-of-N oblivious transfer from dealer random-OT correlations (derandomization,
//! Beaver's OT precomputation, CRYPTO '95), used for lookup tables.
//!
//! Dealer: P1 (sender) gets `N` random `bits`-bit strings `s_0..s_{N-1}` per OT; P0
//! (receiver) gets a random index `c` and `s_c`. `N` is a power of two, `2..=2^16`.
//!
//! Online, for a receiver choice `x` and a sender table `T[0..N]` (one round, on
//! [`Lane::Ot`]):
//! 1. P0 sends `u = x - c mod N` (`log2 N` bits per OT, packed).
//! 2. P1 sends the table rotated and masked: `M_j = T[(j + u) mod N] + s_j mod 2^bits`
//!    (`N * bits` bits per OT, packed).
//! 3. P0 outputs `M_c - s_c = T[x]`.
//!
//! P1 sees `u`, uniform since `c` is; P0 sees every `M_j` with `j != c` masked by a
//! string it does not know. Cost: P0 sends `count log2(N) / 8` bytes, P1
//! `count N bits / 8` bytes; e.g. a 1-of-64 lookup of 16-bit values is 0.75 + 128 bytes.
//! A 1-of-2 OT is the case `N = 2`.

use super::{check_len, shape, MpcError, RandomOts};
use crate::ring::{low_mask, pack_bits, packed_words, unpack_bits};
use crate::share::{P0, P1};
use shardlm_transport::{Channel, Lane};

const OP: &str = "random-OT lookup";

fn log2_choices(n: usize) -> Result<u32, MpcError> {
    if n < 2 || !n.is_power_of_two() || n > 1 << 16 {
        return Err(shape(OP, format!("number of choices {n} is not a power of two in 2..=65536")));
    }
    Ok(n.trailing_zeros())
}

/// The receiver's state.
#[derive(Debug)]
pub struct ReceiverState {
    ots: RandomOts<P0>,
}

/// Core, P0: starts a batch with `choices[i] < N`; returns the state and the message.
pub fn receiver_start(choices: &[u64], ots: RandomOts<P0>) -> Result<(ReceiverState, Vec<u64>), MpcError> {
    let lg = log2_choices(ots.n_choices())?;
    check_len(OP, "choices", choices.len(), ots.count())?;
    let n = ots.n_choices() as u64;
    if let Some(bad) = choices.iter().find(|&&x| x >= n) {
        return Err(shape(OP, format!("choice {bad} is out of range for 1-of-{n}")));
    }
    let u: Vec<u64> = choices.iter().zip(ots.indices()).map(|(x, c)| x.wrapping_sub(*c) & (n - 1)).collect();
    Ok((ReceiverState { ots }, pack_bits(&u, lg)))
}

/// Core, P1: answers P0's message with tables `tables[i * N + j]` (low `bits` bits used).
pub fn sender_respond(tables: &[u64], ots: &RandomOts<P1>, msg: &[u64]) -> Result<Vec<u64>, MpcError> {
    let lg = log2_choices(ots.n_choices())?;
    let (n, count) = (ots.n_choices(), ots.count());
    check_len(OP, "tables", tables.len(), count * n)?;
    check_len(OP, "receiver message (words)", msg.len(), packed_words(count, lg))?;
    let u = unpack_bits(msg, lg, count).ok_or_else(|| shape(OP, "short message"))?;
    let mask = low_mask(ots.bits());
    let s = ots.strings();
    let mut out = Vec::with_capacity(count * n);
    for (i, &ui) in u.iter().enumerate() {
        let t = &tables[i * n..(i + 1) * n];
        for j in 0..n {
            out.push(t[(j + ui as usize) & (n - 1)].wrapping_add(s[i * n + j]) & mask);
        }
    }
    Ok(pack_bits(&out, ots.bits()))
}

/// Core, P0: the chosen table entries from P1's answer.
pub fn receiver_finish(st: ReceiverState, answer: &[u64]) -> Result<Vec<u64>, MpcError> {
    let (n, count, bits) = (st.ots.n_choices(), st.ots.count(), st.ots.bits());
    check_len(OP, "sender answer (words)", answer.len(), packed_words(count * n, bits))?;
    let m = unpack_bits(answer, bits, count * n).ok_or_else(|| shape(OP, "short answer"))?;
    let mask = low_mask(bits);
    Ok((0..count)
        .map(|i| {
            let c = st.ots.indices()[i] as usize & (n - 1);
            m[i * n + c].wrapping_sub(st.ots.chosen()[i]) & mask
        })
        .collect())
}

/// Driver, P0: receives `T_i[choices[i]]` for each OT.
pub fn receive<C: Channel + ?Sized>(
    ch: &mut C,
    choices: &[u64],
    ots: RandomOts<P0>,
) -> Result<Vec<u64>, MpcError> {
    let (n, count, bits) = (ots.n_choices(), ots.count(), ots.bits());
    let (st, msg) = receiver_start(choices, ots)?;
    ch.send_u64s(Lane::Ot, &msg)?;
    let answer = ch.recv_u64s(Lane::Ot, packed_words(count * n, bits))?;
    receiver_finish(st, &answer)
}

/// Driver, P1: serves `tables` (`count * N` entries) to P0's choices.
pub fn send<C: Channel + ?Sized>(ch: &mut C, tables: &[u64], ots: &RandomOts<P1>) -> Result<(), MpcError> {
    let lg = log2_choices(ots.n_choices())?;
    let msg = ch.recv_u64s(Lane::Ot, packed_words(ots.count(), lg))?;
    let answer = sender_respond(tables, ots, &msg)?;
    ch.send_u64s(Lane::Ot, &answer)?;
    Ok(())
}

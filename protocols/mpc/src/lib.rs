//! shardlm-mpc: the two-party computation engine of ShardLM, knowing nothing of any model.
//!
//! * [`ring`], [`share`], [`prg`]: `Z_2^64` with fixed-point encoding, shares typed by
//!   owner ([`share::P0`], [`share::P1`]), seeded pseudorandom generators.
//! * the primitives below, over [`shardlm_transport::Channel`] (openings, Beaver
//!   products, faithful truncation, boolean AND, daBits, comparisons, random-OT lookups,
//!   nonlinear functions on shares, the audited [`session::Session`]);
//! * [`material`]: the one-time correlated randomness they consume (kinds, dealing,
//!   the ideal dealer, the recorder the planner uses, bundle files on disk).
//!
//! Primitives are batched: one message per batch per direction, never one per element.
//!
//! Every primitive is split as STYLE.md 1 asks: a **core** that does no IO (it computes a
//! party's next message from its state, its material and the peer's message; tests and
//! higher layers can call it directly and batch several primitives into one message)
//! and a thin synchronous **driver** that moves those messages over a `Channel`.
//!
//! | primitive | module | online bytes per element, each direction | rounds |
//! |---|---|---|---|
//! | open | [`open`] | 8 | 1 |
//! | Beaver multiply (triple) | [`beaver`] | 16 | 1 |
//! | square (square pair) | [`beaver`] | 8 | 1 |
//! | matrix multiply `m x k x n` | [`beaver`] | `8 (mk + kn)` per matrix | 1 |
//! | faithful truncation | [`trunc`] | P0 1 bit, P1 `2F` bits | 1 |
//! | boolean AND (64 per word) | [`boolean`] | 16 bytes per word | 1 |
//! | bit to arithmetic (daBit) | [`boolean`] | 1 bit | 1 |
//! | sign bit / less-than on `k` bits | [`compare`] | about `2 (3k - 6) / 8` bytes (AND `d`, `e`) + 1 bit | `2 + ceil(log2(k - 1))` |
//! | table lookup, `k`-bit index (one-time truth table) | [`lut`] | `k / 8` | 1 |
//! | bits times a value (bit-vector triple) | [`beaver`] | `8 + bits / 8` per value | 1 |
//! | 1-of-N random-OT lookup | [`ot`] | P0 `log2 N` bits, P1 `N * bits` bits | 1 |
//! | client-assisted linear `n x d_in -> d_out` (v2) | [`masked_linear`] | P0 `8 n d_in`, P1 `8 n d_out` bytes | 1 |
//!
//! The correlated randomness they consume, one module per kind, and where it comes from
//! (an ideal dealer in tests, dealer files in deployment) is [`material`].

#![deny(missing_docs)]

/// Implements `Debug` showing only the lengths of the named fields: a share, a mask or
/// one-time material is never printed (logs and panics stay free of secrets).
#[macro_export]
#[doc(hidden)]
macro_rules! debug_lengths {
    ($ty:ident $(<$g:ident>)? { $($field:ident),* $(,)? }) => {
        impl$(<$g: $crate::share::Role>)? ::std::fmt::Debug for $ty$(<$g>)? {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let mut d = f.debug_struct(stringify!($ty));
                $( d.field(stringify!($field), &format_args!("len {}", self.$field.len())); )*
                d.finish_non_exhaustive()
            }
        }
    };
}

pub mod beaver;
pub mod boolean;
pub mod compare;
pub mod lut;
pub mod masked_linear;
pub mod material;
pub mod nonlinear;
pub mod open;
pub mod ot;
pub mod prg;
pub mod ring;
pub mod session;
pub mod share;
pub mod tables;
pub mod trunc;

pub use material::{
    AndTriples, BitProduct3Triples, BitTriples, BitVectorTriples, CarryTables, DaBits, MaskedLinear,
    MatrixTriple, NormTriples, PowerTuples, RandomOts, RowTriples, SquarePairs, Triples,
};

use crate::material::MaterialError;
use shardlm_transport::{Channel, Lane, TransportError};

/// What can go wrong in a two-party primitive.
#[derive(Debug, thiserror::Error)]
pub enum MpcError {
    /// The channel failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The material ran out or does not fit.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// Inputs, material or a peer message have the wrong size or parameters.
    #[error("{op}: {detail}")]
    Shape {
        /// The primitive.
        op: &'static str,
        /// What does not fit.
        detail: String,
    },
}

pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> MpcError {
    MpcError::Shape { op, detail: detail.into() }
}

pub(crate) fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<(), MpcError> {
    if got != want {
        return Err(shape(op, format!("{what} has {got} elements, expected {want}")));
    }
    Ok(())
}

/// Exchanges several symmetric core messages (both parties send messages of the same
/// lengths, as the Beaver, AND, daBit and open cores do) as ONE message each way on
/// `lane`, and splits the peer's answer back: how a layer step batches all its openings
/// into one round. Example: `let (s1, m1) = beaver::mul_start(..)?; let (s2, m2) =
/// beaver::square_start(..)?; let peer = exchange_batch(ch, Lane::Openings, &[&m1, &m2])?;
/// beaver::mul_finish(s1, &peer[0])?; beaver::square_finish(s2, &peer[1])?`.
pub fn exchange_batch<C: Channel + ?Sized>(
    ch: &mut C,
    lane: Lane,
    msgs: &[&[u64]],
) -> Result<Vec<Vec<u64>>, MpcError> {
    let total: usize = msgs.iter().map(|m| m.len()).sum();
    let mut all = Vec::with_capacity(total);
    for m in msgs {
        all.extend_from_slice(m);
    }
    let peer = exchange(ch, lane, &all, total)?;
    let mut out = Vec::with_capacity(msgs.len());
    let mut at = 0;
    for m in msgs {
        out.push(peer[at..at + m.len()].to_vec());
        at += m.len();
    }
    Ok(out)
}

/// Sends `msg` and receives the peer's message of `peer_len` words on `lane`: both
/// parties send first, so this is one round.
pub(crate) fn exchange<C: Channel + ?Sized>(
    ch: &mut C,
    lane: Lane,
    msg: &[u64],
    peer_len: usize,
) -> Result<Vec<u64>, MpcError> {
    ch.send_u64s(lane, msg)?;
    Ok(ch.recv_u64s(lane, peer_len)?)
}

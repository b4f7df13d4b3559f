//! Opening: both parties learn `x = x0 + x1`.
//!
//! Protocol: each party sends its share on [`Lane::Openings`] and adds the peer's.
//! Cost: `8 n` bytes each direction, one round (both send before receiving). Only ever
//! open values that are masked by fresh randomness (Beaver `d`, `e`) or that the design
//! says both parties may learn (final logits).

use super::{check_len, exchange, MpcError};
use crate::share::{Role, Shares};
use shardlm_transport::{Channel, Lane};

/// Core: this party's message (its shares).
pub fn open_message<R: Role>(own: &Shares<R>) -> Vec<u64> {
    own.as_slice().to_vec()
}

/// Core: the opened values from our shares and the peer's message.
pub fn open_finish<R: Role>(own: &Shares<R>, peer: &[u64]) -> Result<Vec<u64>, MpcError> {
    check_len("open", "peer message", peer.len(), own.len())?;
    Ok(crate::ring::add(own.as_slice(), peer))
}

/// Driver: opens `x` to both parties.
pub fn open<R: Role, C: Channel + ?Sized>(ch: &mut C, x: &Shares<R>) -> Result<Vec<u64>, MpcError> {
    let peer = exchange(ch, Lane::Openings, &open_message(x), x.len())?;
    open_finish(x, &peer)
}

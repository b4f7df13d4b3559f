//! The wire between the two parties.
//!
//! Protocol code sees only the [`Channel`] trait: send and receive whole messages on
//! numbered [`Lane`]s, and read exact [`Counters`]. Two implementations:
//!
//! * [`memory::pair`]: two connected endpoints in one process, for two-party tests
//!   (STYLE.md 9). Same semantics and counters as the network one.
//! * [`quic`]: quinn + rustls, mutual TLS with pinned certificates ([`identity`]), one
//!   unidirectional stream per lane and direction, length-prefixed sequenced frames
//!   ([`frame`]), then the application [`handshake`] on the control lane.
//!
//! A lane is a one-way ordered stream of messages per direction; lanes do not block
//! each other. Bulk `u64` payloads travel as raw little-endian bytes
//! ([`Channel::send_u64s`]); control messages as bincode ([`ChannelExt::send_msg`]).
//!
//! **Rounds.** A round is counted when a party receives after having sent since its last
//! receive: that is a send whose answer it waits for. A pipeline that sends many chunks
//! before the first answer counts one round, as it should.
//!
//! # Wiring a server and a client
//!
//! ```no_run
//! use shardlm_transport::handshake::{self, ServerInfo};
//! use shardlm_transport::{close_code, keygen, quic, Channel, Identity, QuicClient, QuicConfig, QuicServer};
//! # fn main() -> shardlm_transport::Result<()> {
//! # let dir = std::path::Path::new("/tmp/id");
//! # let info: ServerInfo = todo!();
//! # let client_fp = String::new();
//! // `keygen`: write cert.pem/key.pem (key 0600), print the fingerprint to hand over.
//! println!("{}", keygen(dir, "shardlm-server")?);
//!
//! // `serve`: one thread per client, at most 8 sessions at once; Info/Health are answered,
//! // sessions reach the closure.
//! let cfg = QuicConfig::default();
//! let server = QuicServer::bind("0.0.0.0:4433".parse().unwrap(), &Identity::load(dir)?, &[client_fp], cfg.clone())?;
//! println!("listening on {}, fingerprint {}", server.local_addr(), server.fingerprint());
//! server.serve(&info, 8, |_hello, _client_fp| Ok(()), |mut chan, hello| {
//!     // run the protocol named in hello.request on `chan`, then:
//!     chan.close(close_code::NORMAL, "done");
//!     Ok::<(), shardlm_transport::TransportError>(())
//! });
//!
//! // Client: `info`, `health`, or a session.
//! let addr = quic::resolve_addr("quic://server.example:4433")?;
//! let id = Identity::load(dir)?;
//! let info = QuicClient::info(addr, &id, "blake3:...", cfg.clone())?;
//! let rtt = QuicClient::health(addr, &id, "blake3:...", cfg.clone())?;
//! let request = handshake::Request::Session {
//!     variant: "v3-mpc".into(),
//!     model_fingerprint: info.fingerprint.clone(),
//!     session_id: [0; 16],
//!     params: handshake::SessionParams { prompt_tokens: 98, max_new_tokens: 8, all_rows: false },
//!     material: None,
//! };
//! let (mut chan, info) = QuicClient::session(addr, &id, "blake3:...", cfg, request)?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod counters;
pub mod frame;
pub mod handshake;
pub mod identity;
pub mod memory;
pub mod quic;

pub use counters::{Counters, LaneCounters};
pub use identity::{keygen, Identity};
pub use quic::{QuicChannel, QuicClient, QuicConfig, QuicServer, MAX_UDP_PAYLOAD};

/// Application codes a channel is closed with ([`Channel::close`]); the peer's error says
/// which it was.
pub mod close_code {
    /// The session ended normally.
    pub const NORMAL: u32 = 0;
    /// The application handshake found the parties incompatible.
    pub const HANDSHAKE_REJECTED: u32 = 1;
    /// The peer broke the framing rules.
    pub const PROTOCOL_VIOLATION: u32 = 2;
    /// The channel was dropped without an explicit close.
    pub const DROPPED: u32 = 3;
    /// The server has no free session slot; retry later.
    pub const BUSY: u32 = 4;
}

/// The error a receiver reports when the peer closed the channel with `code`/`reason`.
pub(crate) fn closed_by_peer(peer: String, code: u64, reason: &str) -> TransportError {
    if code == u64::from(close_code::HANDSHAKE_REJECTED) {
        return TransportError::Handshake(format!("{peer} refused the session: {reason}").into());
    }
    if code == u64::from(close_code::BUSY) {
        return TransportError::Busy { peer, active: 0, max: 0 };
    }
    let reason = match (code, reason.is_empty()) {
        (c, true) if c == u64::from(close_code::NORMAL) => "it ended the session".to_string(),
        (c, false) if c == u64::from(close_code::NORMAL) => reason.to_string(),
        (c, true) => format!("close code {c}"),
        (c, false) => format!("{reason} (close code {c})"),
    };
    TransportError::PeerGone { peer, reason }
}

use std::time::Duration;

/// A logical one-way stream of messages. Each lane maps to its own transport stream per
/// direction, so bulk transfers on one lane never delay openings on another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Handshake, session control, small typed messages.
    Control,
    /// Masked openings of the two-party protocols (Beaver d/e, truncation).
    Openings,
    /// Oblivious-transfer derandomization messages.
    Ot,
    /// Masked activations and results of client-assisted linear layers; the index
    /// lets a pipelined client keep several chunks in flight (v3).
    Masked(u8),
}

impl Lane {
    /// The lane's wire id.
    pub fn id(self) -> u16 {
        match self {
            Lane::Control => 0,
            Lane::Openings => 1,
            Lane::Ot => 2,
            Lane::Masked(i) => 16 + i as u16,
        }
    }

    /// Decodes a wire id; `None` for an id no lane has.
    pub fn from_id(id: u16) -> Option<Lane> {
        match id {
            0 => Some(Lane::Control),
            1 => Some(Lane::Openings),
            2 => Some(Lane::Ot),
            16..=271 => Some(Lane::Masked((id - 16) as u8)),
            _ => None,
        }
    }
}

/// What can go wrong on a channel. Every variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Nothing arrived within the deadline.
    #[error("timed out after {after:?} waiting for {what} from {peer}; the peer may have stopped or the network is down (on a slow link, raise --connect-timeout, --idle-timeout or --recv-timeout)")]
    Timeout {
        /// Who we were waiting for.
        peer: String,
        /// What we were waiting for.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// The peer closed the connection or went away.
    #[error("peer {peer} closed the connection: {reason}")]
    PeerGone {
        /// The peer.
        peer: String,
        /// Why, as far as we know.
        reason: String,
    },
    /// The peer sent something that breaks the framing rules.
    #[error("protocol violation from {peer}: {problem}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What was wrong.
        problem: String,
    },
    /// A message has an unexpected size or encoding.
    #[error("malformed message on lane {lane:?}: {problem}")]
    Malformed {
        /// The lane.
        lane: Lane,
        /// What was wrong.
        problem: String,
    },
    /// The handshake found the two parties incompatible.
    #[error("handshake refused: {0}")]
    Handshake(handshake::HandshakeFailure),
    /// The server had no free session slot.
    #[error("{peer} is busy ({}): try again later, or ask its operator to raise --max-sessions", busy_detail(*active, *max))]
    Busy {
        /// The server: `server ADDR` as a client sees it, `this server` in its own log.
        peer: String,
        /// Sessions it was running (0: not told).
        active: u32,
        /// Its cap (0: not told).
        max: u32,
    },
    /// TLS, certificate or socket setup.
    #[error("transport setup: {0}")]
    Setup(String),
    /// Local IO.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

fn busy_detail(active: u32, max: u32) -> String {
    if max == 0 {
        "all session slots in use".into()
    } else {
        format!("{active} of {max} sessions in use")
    }
}

/// Result alias for transport operations.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;

/// A bidirectional, lane-multiplexed message channel to the other party.
///
/// Sends are buffered and never wait for the peer's receives (a network channel may wait
/// for the network when much is already queued); receives block until a whole message
/// arrives on that lane, the receive timeout expires, or the peer goes away.
pub trait Channel: Send {
    /// Sends one message on `lane`.
    fn send_bytes(&mut self, lane: Lane, payload: &[u8]) -> Result<()>;

    /// Receives the next message on `lane`.
    fn recv_bytes(&mut self, lane: Lane) -> Result<Vec<u8>>;

    /// Receives the next message on `lane`, waiting at most `timeout` instead of the
    /// channel's receive timeout (handshakes use their own deadline). The default ignores
    /// `timeout`.
    fn recv_bytes_within(&mut self, lane: Lane, timeout: Duration) -> Result<Vec<u8>> {
        let _ = timeout;
        self.recv_bytes(lane)
    }

    /// Sends one owned message; implementations that can avoid a copy do.
    fn send_vec(&mut self, lane: Lane, payload: Vec<u8>) -> Result<()> {
        self.send_bytes(lane, &payload)
    }

    /// Closes the channel: queued messages are still delivered (best effort, bounded by
    /// the channel's timeouts), then the peer's pending and later receives fail with an
    /// error carrying `code` (see [`close_code`]) and `reason`. Idempotent. The default
    /// does nothing.
    fn close(&mut self, code: u32, reason: &str) {
        let _ = (code, reason);
    }

    /// Exact traffic counters since the channel was created.
    fn counters(&self) -> Counters;

    /// A short description of the peer for error messages.
    fn peer(&self) -> String;

    /// Bounds the received bytes held unread (the session's declared shape says how
    /// many it needs at most); beyond it the peer is held back or, if it floods lanes
    /// nobody reads, disconnected with a named error. The default does nothing.
    fn set_recv_budget(&mut self, bytes: usize) {
        let _ = bytes;
    }

    /// Sends ring elements as raw little-endian bytes.
    fn send_u64s(&mut self, lane: Lane, values: &[u64]) -> Result<()> {
        self.send_vec(lane, u64s_to_le_bytes(values))
    }

    /// Receives exactly `len` ring elements; any other size is [`TransportError::Malformed`].
    fn recv_u64s(&mut self, lane: Lane, len: usize) -> Result<Vec<u64>> {
        let bytes = self.recv_bytes(lane)?;
        if bytes.len() != len * 8 {
            return Err(TransportError::Malformed {
                lane,
                problem: format!("expected {} u64 ({} bytes), got {} bytes", len, len * 8, bytes.len()),
            });
        }
        Ok(le_bytes_to_u64s(&bytes))
    }
}

/// `Channel` for a pointer to a channel (`&mut C`, `Box<C>`): every method forwards,
/// so a wrapper's own overrides (counters, budgets) are kept.
macro_rules! forward_channel {
    ($($ptr:ty),*) => {$(
        impl<C: Channel + ?Sized> Channel for $ptr {
            fn send_bytes(&mut self, lane: Lane, payload: &[u8]) -> Result<()> {
                (**self).send_bytes(lane, payload)
            }
            fn recv_bytes(&mut self, lane: Lane) -> Result<Vec<u8>> {
                (**self).recv_bytes(lane)
            }
            fn counters(&self) -> Counters {
                (**self).counters()
            }
            fn peer(&self) -> String {
                (**self).peer()
            }
            fn send_u64s(&mut self, lane: Lane, values: &[u64]) -> Result<()> {
                (**self).send_u64s(lane, values)
            }
            fn recv_u64s(&mut self, lane: Lane, len: usize) -> Result<Vec<u64>> {
                (**self).recv_u64s(lane, len)
            }
            fn recv_bytes_within(&mut self, lane: Lane, timeout: Duration) -> Result<Vec<u8>> {
                (**self).recv_bytes_within(lane, timeout)
            }
            fn send_vec(&mut self, lane: Lane, payload: Vec<u8>) -> Result<()> {
                (**self).send_vec(lane, payload)
            }
            fn close(&mut self, code: u32, reason: &str) {
                (**self).close(code, reason)
            }
            fn set_recv_budget(&mut self, bytes: usize) {
                (**self).set_recv_budget(bytes)
            }
        }
    )*};
}

forward_channel!(&mut C, Box<C>);

/// The bincode configuration of control messages: bincode 1's legacy wire format
/// (fixed-width little-endian integers, trailing bytes allowed), byte for byte what
/// `bincode::serialize` writes.
fn wire_format() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_fixint_encoding().allow_trailing_bytes()
}

/// Encodes a control message (identical to `bincode::serialize`); use it for any
/// message a peer decodes with [`decode_msg`].
pub fn encode_msg<T: serde::Serialize + ?Sized>(msg: &T) -> bincode::Result<Vec<u8>> {
    use bincode::Options;
    wire_format().serialize(msg)
}

/// Decodes a control message received from the peer with a size limit of the message's
/// own length: a string or byte length prefix inside it that claims more is refused
/// (`the size limit has been reached`) before anything is allocated for it. A
/// sequence's elements are preallocated by serde up to its cautious 1 MiB cap before
/// they are read. (bincode 1 ignores the limit when decoding a slice, so this decodes
/// through its reader interface, where the limit is enforced.)
pub fn decode_msg<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> bincode::Result<T> {
    use bincode::Options;
    wire_format().with_limit(bytes.len() as u64).deserialize_from(bytes).map_err(|e| match *e {
        bincode::ErrorKind::SizeLimit => Box::new(bincode::ErrorKind::Custom(format!(
            "the {}-byte message is truncated, or a length inside it claims more than it holds",
            bytes.len()
        ))),
        other => Box::new(other),
    })
}

/// Typed control messages over any [`Channel`] (bincode, size-checked by the channel's
/// frame cap before decoding, and decoded within the message's own length).
pub trait ChannelExt: Channel {
    /// Sends a serde value on `lane`.
    fn send_msg<T: serde::Serialize>(&mut self, lane: Lane, msg: &T) -> Result<()> {
        let bytes =
            encode_msg(msg).map_err(|e| TransportError::Malformed { lane, problem: e.to_string() })?;
        self.send_bytes(lane, &bytes)
    }

    /// Receives and decodes a serde value from `lane`.
    fn recv_msg<T: serde::de::DeserializeOwned>(&mut self, lane: Lane) -> Result<T> {
        let bytes = self.recv_bytes(lane)?;
        decode_msg(&bytes).map_err(|e| TransportError::Malformed {
            lane,
            problem: format!("cannot decode {}: {e}", std::any::type_name::<T>()),
        })
    }
}

impl<C: Channel + ?Sized> ChannelExt for C {}

/// Encodes ring elements as little-endian bytes.
pub fn u64s_to_le_bytes(values: &[u64]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * 8];
    for (dst, v) in out.chunks_exact_mut(8).zip(values) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decodes little-endian bytes (length a multiple of 8) into ring elements.
pub fn le_bytes_to_u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks_exact(8) yields 8 bytes")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_ids_round_trip() {
        for lane in [Lane::Control, Lane::Openings, Lane::Ot, Lane::Masked(0), Lane::Masked(255)] {
            assert_eq!(Lane::from_id(lane.id()), Some(lane));
        }
        assert_eq!(Lane::from_id(3), None);
        assert_eq!(Lane::from_id(272), None);
    }
}

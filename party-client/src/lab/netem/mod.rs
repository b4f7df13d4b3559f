//! `netem`: a user-space link emulator for the QUIC traffic between the two parties.
//!
//! A UDP relay: datagrams that arrive on `--listen` are sent on to `--forward`, and the
//! answers come back the same way. Each direction is its own link with its own shaper:
//!
//! 0. **MTU**: a datagram larger than `--mtu` minus the IPv4 and UDP headers (28 bytes)
//!    is dropped, as a router drops an oversized packet with DF set, so QUIC's path MTU
//!    discovery finds what the emulated link carries (default 1500, Ethernet) and not
//!    the loopback's 64 KiB;
//! 1. **loss**: each datagram is dropped with probability `--loss` (seeded ChaCha RNG,
//!    `--seed`; the two directions use different streams);
//! 2. **rate**: a token bucket one datagram deep (a pacer): a datagram leaves the rate
//!    stage when the link has finished sending everything queued before it and itself,
//!    `len * 8 / rate` seconds each. The bytes still waiting are the queue; a datagram
//!    that would make it exceed `--queue` bytes is dropped (tail drop). Sizes count the
//!    UDP payload (the QUIC packet), not IP/UDP headers.
//! 3. **delay**: `--delay` plus a uniform jitter in `[-J, +J]`, clamped at zero. The
//!    link stays FIFO (a packet never overtakes an earlier one), except that with
//!    probability `--reorder` a packet skips the delay line, as `tc netem reorder`
//!    does, and so overtakes the packets in flight.
//!
//! Timestamps come from the monotonic clock (`std::time::Instant`, what
//! `tokio::time::Instant` wraps). Sockets are read by a tokio task; departures are
//! scheduled by one OS thread per direction that sleeps on a condition variable until
//! the next due datagram. That keeps sub-millisecond delays precise (the tokio timer
//! has a 1 ms granularity) without spinning a core. The delay each datagram really
//! got, from its arrival at the relay to its send, is recorded, so an experiment can
//! state the link it had, not only the one it asked for.
//!
//! The relay never decrypts: datagrams are relayed byte for byte. Each new source
//! address on `--listen` gets its own socket toward `--forward` (a tiny NAT), so
//! several QUIC connections can share one emulated link.
//!
//! Use it as a command (`shardlm-client netem`) or as a library: [`Netem::start`]
//! returns a handle with [`Netem::stats`] and [`Netem::stop`].
//!
//! Where each part lives:
//!
//! - this module: what a link is ([`LinkConfig`], checked and described here) and what
//!   the relay connects ([`NetemConfig`]);
//! - `relay`: [`Netem`], the sockets and threads: it reads datagrams from the client
//!   and from the server and hands each to the link of its direction;
//! - `link`: one direction's shaper (MTU, loss, pacing and queue, delay line,
//!   reordering), the departure thread that sends datagrams when due, and its counters;
//! - `stats`: the counters read back ([`NetemStats`], [`DirectionStats`],
//!   [`DelaySummary`]) and their table;
//! - `units`: the text forms of durations, rates, probabilities and sizes, shared with
//!   `experiment`;
//! - `cli`: the `netem` command ([`NetemArgs`], [`run_netem`]).

mod cli;
mod link;
mod relay;
mod stats;
mod units;

pub use cli::{run_netem, NetemArgs};
pub use relay::Netem;
pub use stats::{DelaySummary, DirectionStats, NetemStats};
pub(crate) use units::{format_ms, format_rate, parse_duration, parse_rate, parse_size};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use units::trim_float;

/// What one direction of the emulated link does to datagrams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkConfig {
    /// One-way delay added to each datagram.
    #[serde(with = "duration_ms")]
    pub delay: Duration,
    /// Uniform jitter: the delay is drawn from `[delay - jitter, delay + jitter]`.
    #[serde(with = "duration_ms")]
    pub jitter: Duration,
    /// Link rate in bits per second; `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram skips the delay line (and overtakes others).
    pub reorder: f64,
    /// Bytes the rate stage may hold before it drops (tail drop).
    pub queue_bytes: u64,
    /// Link MTU (IP packet bytes): datagrams over `mtu - 28` payload bytes are dropped.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

/// Default link MTU: Ethernet.
const DEFAULT_MTU: u32 = 1500;

fn default_mtu() -> u32 {
    DEFAULT_MTU
}

/// IPv4 + UDP header bytes inside the MTU.
const IP_UDP_HEADERS: u32 = 28;

/// Default queue: 1 MB, about 80 ms at 100 Mbit/s and 8 ms at 1 Gbit/s.
const DEFAULT_QUEUE_BYTES: u64 = 1_000_000;

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bps: None,
            loss: 0.0,
            reorder: 0.0,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            mtu: DEFAULT_MTU,
        }
    }
}

impl LinkConfig {
    fn validate(&self) -> Result<()> {
        anyhow::ensure!((0.0..=1.0).contains(&self.loss), "loss must be in [0, 1], got {}", self.loss);
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.reorder),
            "reorder must be in [0, 1], got {}",
            self.reorder
        );
        anyhow::ensure!(
            self.queue_bytes >= 65_536 || self.rate_bps.is_none(),
            "--queue {} bytes cannot hold one maximal datagram; use at least 64kb",
            self.queue_bytes
        );
        anyhow::ensure!(self.rate_bps != Some(0), "--rate must be positive");
        anyhow::ensure!(
            (1280..=65_535).contains(&self.mtu),
            "--mtu {} is outside 1280..=65535 (QUIC needs 1200-byte datagrams to get through)",
            self.mtu
        );
        Ok(())
    }

    /// A one-line description (`delay 1ms, rate 100mbit, loss 0%`).
    pub fn describe(&self) -> String {
        let mut s = format!("delay {}", format_ms(self.delay));
        if !self.jitter.is_zero() {
            s += &format!(" ± {}", format_ms(self.jitter));
        }
        s += &match self.rate_bps {
            Some(r) => format!(", rate {} (queue {} bytes)", format_rate(r), self.queue_bytes),
            None => ", rate unlimited".into(),
        };
        if self.loss > 0.0 {
            s += &format!(", loss {}%", trim_float(self.loss * 100.0));
        }
        if self.reorder > 0.0 {
            s += &format!(", reorder {}%", trim_float(self.reorder * 100.0));
        }
        if self.mtu != DEFAULT_MTU {
            s += &format!(", mtu {}", self.mtu);
        }
        s
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms.max(0.0) / 1e3).map_err(serde::de::Error::custom)
    }
}

/// Where the relay listens, where it forwards, and the link in between.
#[derive(Clone, Debug)]
pub struct NetemConfig {
    /// Address the relay listens on (the client party connects here). Port 0 picks one.
    pub listen: SocketAddr,
    /// Address of the server party.
    pub forward: SocketAddr,
    /// Link toward `forward` (client to server).
    pub upstream: LinkConfig,
    /// Link back toward the listen side (server to client).
    pub downstream: LinkConfig,
    /// Seed of the loss, jitter and reorder draws.
    pub seed: u64,
}

impl NetemConfig {
    /// The same link in both directions.
    pub fn symmetric(listen: SocketAddr, forward: SocketAddr, link: LinkConfig, seed: u64) -> Self {
        Self { listen, forward, upstream: link.clone(), downstream: link, seed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_queues_are_refused() {
        let link = LinkConfig { rate_bps: Some(1_000_000), queue_bytes: 100, ..Default::default() };
        assert!(link.validate().unwrap_err().to_string().contains("--queue"));
    }
}

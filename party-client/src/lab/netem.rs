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

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A value on the command line that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum LinkParseError {
    /// A duration such as `2ms`.
    #[error("`{0}` is not a duration: write a number and a unit, e.g. `2ms`, `0.2ms`, `150us`, `1s`")]
    Duration(String),
    /// A rate such as `100mbit`.
    #[error("`{0}` is not a rate: write a number and a unit, e.g. `10gbit`, `100mbit`, `512kbit` (bits/s), or `12mbps` (bytes/s, as tc writes it)")]
    Rate(String),
    /// A probability such as `1%`.
    #[error("`{0}` is not a probability: write a percentage such as `1%` or `0.5%` (or a fraction in [0, 1] such as `0.01`)")]
    Probability(String),
    /// A size such as `1mb`.
    #[error("`{0}` is not a size in bytes: write e.g. `65536`, `64kb`, `1mb`, `1mib`")]
    Size(String),
    /// An address such as `127.0.0.1:4433`.
    #[error("`{0}` is not an address: write host:port, e.g. `127.0.0.1:4433`")]
    Address(String),
}

fn split_number(text: &str) -> Option<(f64, String)> {
    let t = text.trim();
    let end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    Some((v, unit.trim().to_ascii_lowercase()))
}

/// Parses `2ms`, `0.2ms`, `150us`, `1s`, `500ns` (and `0`).
pub fn parse_duration(text: &str) -> Result<Duration, LinkParseError> {
    let err = || LinkParseError::Duration(text.to_string());
    let (v, unit) = split_number(text).ok_or_else(err)?;
    let secs = match unit.as_str() {
        "" if v == 0.0 => 0.0,
        "s" | "sec" | "secs" => v,
        "ms" | "msec" => v * 1e-3,
        "us" | "µs" | "usec" => v * 1e-6,
        "ns" | "nsec" => v * 1e-9,
        _ => return Err(err()),
    };
    if secs > 3600.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a rate in bits per second: `10gbit`, `100mbit`, `512kbit`, `9600bit` or a bare
/// number (bits/s); `bps`, `kbps`, `mbps`, `gbps` are bytes per second, as in `tc`.
pub fn parse_rate(text: &str) -> Result<u64, LinkParseError> {
    let err = || LinkParseError::Rate(text.to_string());
    let (v, unit) = split_number(text).ok_or_else(err)?;
    let bits = match unit.as_str() {
        "" | "bit" => v,
        "kbit" => v * 1e3,
        "mbit" => v * 1e6,
        "gbit" => v * 1e9,
        "tbit" => v * 1e12,
        "bps" => v * 8.0,
        "kbps" => v * 8e3,
        "mbps" => v * 8e6,
        "gbps" => v * 8e9,
        _ => return Err(err()),
    };
    if !(1.0..=1e15).contains(&bits) {
        return Err(err());
    }
    Ok(bits.round() as u64)
}

/// Parses `1%`, `0.5%` or a fraction in `[0, 1]`.
pub fn parse_probability(text: &str) -> Result<f64, LinkParseError> {
    let err = || LinkParseError::Probability(text.to_string());
    let (v, unit) = split_number(text).ok_or_else(err)?;
    let p = match unit.as_str() {
        "%" => v / 100.0,
        "" => v,
        _ => return Err(err()),
    };
    if !(0.0..=1.0).contains(&p) {
        return Err(err());
    }
    Ok(p)
}

/// Parses a size in bytes: `65536`, `64kb`, `1mb` (powers of ten), `64kib`, `1mib`.
pub fn parse_size(text: &str) -> Result<u64, LinkParseError> {
    let err = || LinkParseError::Size(text.to_string());
    let (v, unit) = split_number(text).ok_or_else(err)?;
    let bytes = match unit.as_str() {
        "" | "b" => v,
        "k" | "kb" => v * 1e3,
        "m" | "mb" => v * 1e6,
        "g" | "gb" => v * 1e9,
        "kib" => v * 1024.0,
        "mib" => v * 1024.0 * 1024.0,
        "gib" => v * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    if bytes > 1e12 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// Parses `host:port` (names are resolved, the first address is used).
pub fn parse_addr(text: &str) -> Result<SocketAddr, LinkParseError> {
    let t = text.trim();
    let t = t.strip_prefix("quic://").or_else(|| t.strip_prefix("udp://")).unwrap_or(t);
    t.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| LinkParseError::Address(text.to_string()))
}

/// Formats a rate the way it is written on the command line (`100mbit`).
pub fn format_rate(bits: u64) -> String {
    for (unit, f) in [("tbit", 1e12), ("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)] {
        let v = bits as f64 / f;
        if v >= 1.0 {
            return format!("{}{unit}", trim_float(v));
        }
    }
    format!("{bits}bit")
}

/// Formats a duration as milliseconds (`0.2ms`).
pub fn format_ms(d: Duration) -> String {
    format!("{}ms", trim_float(d.as_secs_f64() * 1e3))
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

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
pub const DEFAULT_MTU: u32 = 1500;

fn default_mtu() -> u32 {
    DEFAULT_MTU
}

/// IPv4 + UDP header bytes inside the MTU.
const IP_UDP_HEADERS: u32 = 28;

/// Default queue: 1 MB, about 80 ms at 100 Mbit/s and 8 ms at 1 Gbit/s.
pub const DEFAULT_QUEUE_BYTES: u64 = 1_000_000;

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

/// Summary of the delay the relay really added (arrival to send), in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DelaySummary {
    /// Datagrams measured.
    pub samples: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// Counters of one direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionStats {
    /// Datagrams that arrived.
    pub packets_in: u64,
    /// Their payload bytes.
    pub bytes_in: u64,
    /// Datagrams sent on.
    pub packets_delivered: u64,
    /// Their payload bytes.
    pub bytes_delivered: u64,
    /// Dropped for being larger than the link MTU allows.
    #[serde(default)]
    pub dropped_mtu: u64,
    /// Dropped by the loss draw.
    pub dropped_loss: u64,
    /// Dropped because the rate stage's queue was full.
    pub dropped_queue: u64,
    /// Dropped because the outgoing socket refused them.
    pub dropped_send: u64,
    /// Sent past the delay line (`--reorder`).
    pub reordered: u64,
    /// Most bytes held by the rate stage at once.
    pub max_queue_bytes: u64,
    /// Admitted but not yet sent when the counters were read (dropped by `stop`).
    pub in_flight: u64,
    /// The delay datagrams really got.
    pub added_delay: DelaySummary,
}

/// Counters of the whole relay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetemStats {
    /// Where it listened.
    pub listen: String,
    /// Where it forwarded.
    pub forward: String,
    /// Seconds since start.
    pub elapsed_s: f64,
    /// Client flows (source addresses) seen.
    pub flows: u64,
    /// Client to server.
    pub upstream: DirectionStats,
    /// Server to client.
    pub downstream: DirectionStats,
}

impl NetemStats {
    /// The round-trip time the link added, measured: mean added delay both ways.
    pub fn measured_rtt_ms(&self) -> f64 {
        self.upstream.added_delay.mean_ms + self.downstream.added_delay.mean_ms
    }

    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut s = format!(
            "netem {} -> {}: {:.1} s, {} flows\n",
            self.listen, self.forward, self.elapsed_s, self.flows
        );
        s += "direction    packets in    bytes in  delivered  lost(mtu)  lost(loss)  lost(queue)  lost(send)  reordered  delay mean/p50/p99 ms\n";
        for (name, d) in [("upstream", &self.upstream), ("downstream", &self.downstream)] {
            s += &format!(
                "{name:<10} {:>11} {:>11} {:>10} {:>10} {:>11} {:>12} {:>11} {:>10}  {:.3}/{:.3}/{:.3}\n",
                d.packets_in,
                d.bytes_in,
                d.packets_delivered,
                d.dropped_mtu,
                d.dropped_loss,
                d.dropped_queue,
                d.dropped_send,
                d.reordered,
                d.added_delay.mean_ms,
                d.added_delay.p50_ms,
                d.added_delay.p99_ms
            );
        }
        s
    }
}

// ---- one direction ----------------------------------------------------------------

/// Where a datagram goes when it leaves.
#[derive(Clone)]
enum Out {
    /// A socket connected to the server party.
    Connected(Arc<StdUdpSocket>),
    /// The listen socket, to a client address.
    To(Arc<StdUdpSocket>, SocketAddr),
}

struct Pending {
    at: Instant,
    seq: u64,
    arrival: Instant,
    data: Vec<u8>,
    out: Out,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    // Reversed: BinaryHeap is a max-heap and we want the earliest departure on top.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Most delay samples kept for percentiles (the mean uses all).
const MAX_SAMPLES: usize = 2_000_000;

struct DirState {
    link: LinkConfig,
    heap: BinaryHeap<Pending>,
    rng: ChaCha8Rng,
    backlog_until: Option<Instant>,
    last_at: Option<Instant>,
    seq: u64,
    stats: DirectionStats,
    delay_sum_s: f64,
    delays_us: Vec<u32>,
    stopped: bool,
}

struct Direction {
    state: Mutex<DirState>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Direction {
    fn new(link: LinkConfig, seed: u64) -> Self {
        Self {
            state: Mutex::new(DirState {
                link,
                heap: BinaryHeap::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
                backlog_until: None,
                last_at: None,
                seq: 0,
                stats: DirectionStats::default(),
                delay_sum_s: 0.0,
                delays_us: Vec::new(),
                stopped: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// Loss, rate stage and delay line: decides when (and whether) a datagram leaves.
    fn admit(&self, data: Vec<u8>, arrival: Instant, out: Out) {
        let mut st = lock(&self.state);
        let link = st.link.clone();
        let link = &link;
        let len = data.len() as u64;
        st.stats.packets_in += 1;
        st.stats.bytes_in += len;
        if len > u64::from(link.mtu.saturating_sub(IP_UDP_HEADERS)) {
            st.stats.dropped_mtu += 1;
            return;
        }
        if link.loss > 0.0 && st.rng.gen::<f64>() < link.loss {
            st.stats.dropped_loss += 1;
            return;
        }
        let departs = match link.rate_bps {
            None => arrival,
            Some(rate) => {
                let start = st.backlog_until.map_or(arrival, |b| b.max(arrival));
                let queued = ((start - arrival).as_secs_f64() * rate as f64 / 8.0) as u64;
                if queued + len > link.queue_bytes {
                    st.stats.dropped_queue += 1;
                    return;
                }
                st.stats.max_queue_bytes = st.stats.max_queue_bytes.max(queued + len);
                let done = start + Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
                st.backlog_until = Some(done);
                done
            }
        };
        let reordered = link.reorder > 0.0 && st.rng.gen::<f64>() < link.reorder;
        let at = if reordered {
            st.stats.reordered += 1;
            departs
        } else {
            let mut d = link.delay.as_secs_f64();
            if !link.jitter.is_zero() {
                let j = link.jitter.as_secs_f64();
                d += st.rng.gen_range(-j..=j);
            }
            let at = departs + Duration::from_secs_f64(d.max(0.0));
            let at = st.last_at.map_or(at, |l| at.max(l));
            st.last_at = Some(at);
            at
        };
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Pending { at, seq, arrival, data, out });
        drop(st);
        self.wake.notify_one();
    }

    /// The departure thread: sleeps until the next datagram is due, sends it.
    fn run_departures(&self) {
        let mut due = Vec::new();
        loop {
            {
                let mut st = lock(&self.state);
                loop {
                    if st.stopped {
                        return;
                    }
                    let now = Instant::now();
                    match st.heap.peek().map(|p| p.at) {
                        Some(at) if at <= now => break,
                        Some(at) => {
                            st = self.wake.wait_timeout(st, at - now).unwrap_or_else(|p| p.into_inner()).0
                        }
                        None => {
                            st = self
                                .wake
                                .wait_timeout(st, Duration::from_millis(200))
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                    }
                }
                let now = Instant::now();
                while st.heap.peek().is_some_and(|p| p.at <= now) {
                    if let Some(p) = st.heap.pop() {
                        due.push(p);
                    }
                }
            }
            let mut sent = Vec::with_capacity(due.len());
            for p in due.drain(..) {
                let r = match &p.out {
                    Out::Connected(s) => send_with_retry(|| s.send(&p.data)),
                    Out::To(s, to) => send_with_retry(|| s.send_to(&p.data, to)),
                };
                sent.push((r.is_ok(), p.data.len() as u64, p.arrival.elapsed()));
            }
            let mut st = lock(&self.state);
            for (ok, len, delay) in sent {
                if ok {
                    st.stats.packets_delivered += 1;
                    st.stats.bytes_delivered += len;
                    st.delay_sum_s += delay.as_secs_f64();
                    if st.delays_us.len() < MAX_SAMPLES {
                        st.delays_us.push(delay.as_micros().min(u32::MAX as u128) as u32);
                    }
                } else {
                    st.stats.dropped_send += 1;
                }
            }
        }
    }

    fn stats(&self) -> DirectionStats {
        let st = lock(&self.state);
        let mut s = st.stats.clone();
        s.in_flight = st.heap.len() as u64;
        let mut v = st.delays_us.clone();
        let delay_sum_s = st.delay_sum_s;
        drop(st);
        v.sort_unstable();
        let pct = |q: f64| {
            if v.is_empty() {
                0.0
            } else {
                let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
                v[i] as f64 / 1e3
            }
        };
        s.added_delay = DelaySummary {
            samples: s.packets_delivered,
            mean_ms: if s.packets_delivered > 0 {
                delay_sum_s * 1e3 / s.packets_delivered as f64
            } else {
                0.0
            },
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: v.last().map_or(0.0, |&m| m as f64 / 1e3),
        };
        s
    }

    fn set_link(&self, link: LinkConfig) {
        lock(&self.state).link = link;
    }

    fn stop(&self) {
        lock(&self.state).stopped = true;
        self.wake.notify_all();
    }
}

/// A UDP send that retries briefly when the socket buffer is full.
fn send_with_retry(mut send: impl FnMut() -> std::io::Result<usize>) -> std::io::Result<usize> {
    let mut tries = 0;
    loop {
        match send() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
            r => return r,
        }
    }
}

// ---- the relay ---------------------------------------------------------------------

/// A running emulator. Dropping it stops it.
pub struct Netem {
    listen: SocketAddr,
    forward: SocketAddr,
    started: Instant,
    upstream: Arc<Direction>,
    downstream: Arc<Direction>,
    flows: Arc<std::sync::atomic::AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn nonblocking_pair(sock: StdUdpSocket) -> Result<(tokio::net::UdpSocket, Arc<StdUdpSocket>)> {
    let send = sock.try_clone().context("cloning a UDP socket")?;
    sock.set_nonblocking(true).context("making a UDP socket non-blocking")?;
    let recv = tokio::net::UdpSocket::from_std(sock).context("registering a UDP socket")?;
    Ok((recv, Arc::new(send)))
}

fn socket_buffers(sock: &StdUdpSocket) {
    // Big buffers so that bursts at high rates are shaped by us, not lost by the kernel.
    let s = socket2::SockRef::from(sock);
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
}

impl Netem {
    /// Binds `config.listen` and starts relaying to `config.forward`.
    pub fn start(config: NetemConfig) -> Result<Netem> {
        config.upstream.validate()?;
        config.downstream.validate()?;
        let listen_std = StdUdpSocket::bind(config.listen)
            .with_context(|| format!("netem: cannot listen on {}", config.listen))?;
        socket_buffers(&listen_std);
        let listen = listen_std.local_addr()?;
        let upstream = Arc::new(Direction::new(config.upstream.clone(), config.seed));
        let downstream =
            Arc::new(Direction::new(config.downstream.clone(), config.seed ^ 0x9e37_79b9_7f4a_7c15));
        let flows = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("netem: starting its runtime")?;
        let mut threads = Vec::new();
        for (name, d) in [("netem-upstream", upstream.clone()), ("netem-downstream", downstream.clone())] {
            threads.push(std::thread::Builder::new().name(name.into()).spawn(move || d.run_departures())?);
        }
        let (up, down, fl, forward) = (upstream.clone(), downstream.clone(), flows.clone(), config.forward);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        threads.push(std::thread::Builder::new().name("netem-relay".into()).spawn(move || {
            rt.block_on(async move {
                let pair = match nonblocking_pair(listen_std) {
                    Ok(p) => {
                        let _ = ready_tx.send(Ok(()));
                        p
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                tokio::select! {
                    _ = relay(pair, forward, up, down, fl) => {}
                    _ = rx => {}
                }
            });
            // Dropping the runtime here cancels the per-flow tasks.
        })?);
        // From here on, dropping `netem` stops every thread it started.
        let netem = Netem {
            listen,
            forward: config.forward,
            started: Instant::now(),
            upstream,
            downstream,
            flows,
            shutdown: Some(tx),
            threads,
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(netem),
            Ok(Err(e)) => Err(e),
            Err(_) => anyhow::bail!("netem: the relay thread did not start within 10 s"),
        }
    }

    /// The address clients connect to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Counters so far.
    pub fn stats(&self) -> NetemStats {
        NetemStats {
            listen: self.listen.to_string(),
            forward: self.forward.to_string(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            flows: self.flows.load(std::sync::atomic::Ordering::Relaxed),
            upstream: self.upstream.stats(),
            downstream: self.downstream.stats(),
        }
    }

    /// Changes the links from now on (datagrams already admitted keep their schedule):
    /// a link that degrades or dies in the middle of a session.
    pub fn set_links(&self, upstream: LinkConfig, downstream: LinkConfig) -> Result<()> {
        upstream.validate()?;
        downstream.validate()?;
        self.upstream.set_link(upstream);
        self.downstream.set_link(downstream);
        Ok(())
    }

    /// Stops relaying (datagrams still in flight are dropped) and returns the counters.
    pub fn stop(mut self) -> NetemStats {
        self.shutdown_now();
        self.stats()
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.upstream.stop();
        self.downstream.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Flows with no datagram from their client for this long are closed once the table
/// holds more than [`MAX_IDLE_FLOWS`] of them.
const FLOW_IDLE: Duration = Duration::from_secs(120);
/// See [`FLOW_IDLE`].
const MAX_IDLE_FLOWS: usize = 64;

struct Flow {
    socket: Arc<StdUdpSocket>,
    last_seen: Instant,
    task: tokio::task::JoinHandle<()>,
}

/// Reads the listen socket; each new client address gets a socket toward `forward` and
/// a task that reads the server's answers.
async fn relay(
    (listen, listen_send): (tokio::net::UdpSocket, Arc<StdUdpSocket>),
    forward: SocketAddr,
    up: Arc<Direction>,
    down: Arc<Direction>,
    flows_seen: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match listen.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors from earlier sends surface here on some systems: not fatal.
            Err(_) => continue,
        };
        let arrival = Instant::now();
        if !flows.contains_key(&from) {
            if flows.len() > MAX_IDLE_FLOWS {
                flows.retain(|_, f| {
                    let keep = arrival.duration_since(f.last_seen) < FLOW_IDLE;
                    if !keep {
                        f.task.abort();
                    }
                    keep
                });
            }
            match open_flow(forward, from, listen_send.clone(), down.clone()) {
                Ok((socket, task)) => {
                    flows_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    flows.insert(from, Flow { socket, last_seen: arrival, task });
                }
                Err(e) => {
                    tracing::warn!("netem: cannot open a flow for {from}: {e:#}");
                    continue;
                }
            }
        }
        let Some(flow) = flows.get_mut(&from) else { continue };
        flow.last_seen = arrival;
        up.admit(buf[..n].to_vec(), arrival, Out::Connected(flow.socket.clone()));
    }
}

fn open_flow(
    forward: SocketAddr,
    client: SocketAddr,
    listen_send: Arc<StdUdpSocket>,
    down: Arc<Direction>,
) -> Result<(Arc<StdUdpSocket>, tokio::task::JoinHandle<()>)> {
    let local: IpAddr = match forward.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = StdUdpSocket::bind(SocketAddr::new(local, 0))?;
    socket_buffers(&sock);
    sock.connect(forward)?;
    let (recv, send) = nonblocking_pair(sock)?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            match recv.recv(&mut buf).await {
                Ok(n) => down.admit(buf[..n].to_vec(), Instant::now(), Out::To(listen_send.clone(), client)),
                // The server is not (yet) there: ICMP port unreachable. Keep the flow.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    });
    Ok((send, task))
}

// ---- the command -------------------------------------------------------------------

/// `shardlm-client netem`: relay UDP between the parties through an emulated link.
#[derive(clap::Args, Debug, Clone)]
pub struct NetemArgs {
    /// Address to listen on; point the client party here (`-s`). Port 0 picks one.
    #[arg(long, value_parser = parse_addr)]
    pub listen: SocketAddr,
    /// Address of the server party.
    #[arg(long, value_parser = parse_addr)]
    pub forward: SocketAddr,
    /// One-way delay added in each direction (`2ms`, `0.2ms`); the RTT adds twice this.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub delay: Duration,
    /// Uniform jitter around the delay (`0.5ms`); the link stays FIFO.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub jitter: Duration,
    /// Rate of each direction (`10gbit`, `100mbit`); unlimited when absent.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// Datagram loss probability in each direction (`1%`).
    #[arg(long, value_parser = parse_probability, default_value = "0%")]
    pub loss: f64,
    /// Probability that a datagram skips the delay line (`5%`).
    #[arg(long, value_parser = parse_probability, default_value = "0%")]
    pub reorder: f64,
    /// Bytes the rate stage may queue before tail drop (`1mb`, `256kib`).
    #[arg(long, value_parser = parse_size, default_value = "1mb")]
    pub queue: u64,
    /// Link MTU in bytes (IP packet size): larger datagrams are dropped, as on a real
    /// path (1500 Ethernet, 9000 jumbo frames).
    #[arg(long, default_value_t = DEFAULT_MTU)]
    pub mtu: u32,
    /// Seed of the loss, jitter and reorder draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this long (`30s`); by default run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Also write the final counters as JSON here.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
}

impl NetemArgs {
    /// The emulator configuration these arguments describe.
    pub fn config(&self) -> NetemConfig {
        let link = LinkConfig {
            delay: self.delay,
            jitter: self.jitter,
            rate_bps: self.rate,
            loss: self.loss,
            reorder: self.reorder,
            queue_bytes: self.queue,
            mtu: self.mtu,
        };
        NetemConfig::symmetric(self.listen, self.forward, link, self.seed)
    }
}

/// Runs the relay until Ctrl-C (or `--duration`), then prints the counters.
pub fn run_netem(args: NetemArgs) -> Result<()> {
    let config = args.config();
    let describe = config.upstream.describe();
    let netem = Netem::start(config)?;
    println!(
        "netem listening on {} forwarding to {} ({describe}, each direction)",
        netem.listen_addr(),
        args.forward
    );
    let _ = std::io::stdout().flush();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        match args.duration {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    });
    let stats = netem.stop();
    eprint!("{}", stats.render());
    if let Some(path) = &args.stats_json {
        std::fs::write(path, serde_json::to_string_pretty(&stats)?)
            .with_context(|| format!("{}: cannot write the counters", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_of_the_command_line() {
        assert_eq!(parse_duration("2ms").unwrap(), Duration::from_millis(2));
        assert_eq!(parse_duration("0.2ms").unwrap(), Duration::from_micros(200));
        assert_eq!(parse_duration("150us").unwrap(), Duration::from_micros(150));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["2", "ms", "-1ms", "2 parsecs", "", "1e3ms", "nanms"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("2ms"), "{bad}: {e}");
        }
        assert_eq!(parse_rate("10gbit").unwrap(), 10_000_000_000);
        assert_eq!(parse_rate("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1.5mbit").unwrap(), 1_500_000);
        assert_eq!(parse_rate("1mbps").unwrap(), 8_000_000);
        assert!(parse_rate("fast").unwrap_err().to_string().contains("100mbit"));
        assert!(parse_rate("0mbit").is_err());
        assert_eq!(parse_probability("1%").unwrap(), 0.01);
        assert_eq!(parse_probability("0.5%").unwrap(), 0.005);
        assert_eq!(parse_probability("0.25").unwrap(), 0.25);
        assert!(parse_probability("5").unwrap_err().to_string().contains('%'));
        assert!(parse_probability("101%").is_err());
        assert_eq!(parse_size("1mb").unwrap(), 1_000_000);
        assert_eq!(parse_size("64kib").unwrap(), 65_536);
        assert!(parse_size("lots").is_err());
        assert_eq!(format_rate(100_000_000), "100mbit");
        assert_eq!(format_rate(10_000_000_000), "10gbit");
        assert_eq!(format_ms(Duration::from_micros(200)), "0.2ms");
    }

    #[test]
    fn small_queues_are_refused() {
        let link = LinkConfig { rate_bps: Some(1_000_000), queue_bytes: 100, ..Default::default() };
        assert!(link.validate().unwrap_err().to_string().contains("--queue"));
    }
}

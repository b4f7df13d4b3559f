//! One direction of the emulated link: the shaping state machine and the thread that
//! sends what it scheduled.
//!
//! The relay hands every datagram that arrives to [`Direction::admit`], which decides
//! under one lock, in this order, whether and when it leaves: the MTU check, the loss
//! draw, the rate stage (`DirState::pace`: a pacer whose backlog is the queue, with
//! tail drop) and the delay line (`DirState::delay`: delay plus jitter, kept FIFO, or
//! skipped when the reorder draw says so). The datagram then waits in a heap ordered
//! by departure time. [`Direction::run_departures`], on its own OS thread, sleeps on a
//! condition variable until the earliest one is due, sends every due datagram without
//! holding the lock, and records what it delivered and the delay each one really got;
//! [`Direction::stats`] reads those counters back.

use super::stats::{DelaySummary, DirectionStats};
use super::{LinkConfig, IP_UDP_HEADERS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where a datagram goes when it leaves.
#[derive(Clone)]
pub(super) enum Out {
    /// A socket connected to the server party.
    Connected(Arc<StdUdpSocket>),
    /// The listen socket, to a client address.
    To(Arc<StdUdpSocket>, SocketAddr),
}

/// A datagram admitted and waiting for its departure time `at` (`seq` breaks ties in
/// admission order).
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

/// A direction's shaper state, behind its lock: the link, the datagrams waiting, the
/// draws, the rate stage's backlog, the delay line's last departure, the counters.
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

/// One direction of the link: its state and the condition variable its departure
/// thread sleeps on.
pub(super) struct Direction {
    state: Mutex<DirState>,
    wake: Condvar,
}

/// Locks `m`, going on with the data of a thread that panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Direction {
    pub(super) fn new(link: LinkConfig, seed: u64) -> Self {
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
    pub(super) fn admit(&self, data: Vec<u8>, arrival: Instant, out: Out) {
        let mut st = lock(&self.state);
        let link = st.link.clone();
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
        let Some(departs) = st.pace(&link, len, arrival) else { return };
        let at = st.delay(&link, departs);
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Pending { at, seq, arrival, data, out });
        drop(st);
        self.wake.notify_one();
    }

    /// The departure thread: sleeps until the next datagram is due, sends it.
    pub(super) fn run_departures(&self) {
        let mut due = Vec::new();
        while self.take_due(&mut due) {
            let sent: Vec<Sent> = due.drain(..).map(|p| send(&p)).collect();
            self.record(sent);
        }
    }

    /// Sleeps until a datagram is due, then moves every due one into `due`; `false`
    /// once the direction is stopped.
    fn take_due(&self, due: &mut Vec<Pending>) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.stopped {
                return false;
            }
            let now = Instant::now();
            match st.heap.peek().map(|p| p.at) {
                Some(at) if at <= now => break,
                Some(at) => st = self.wake.wait_timeout(st, at - now).unwrap_or_else(|p| p.into_inner()).0,
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
        true
    }

    /// Counts what the departure thread sent: delivered bytes and delays, or failures.
    fn record(&self, sent: Vec<Sent>) {
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

    pub(super) fn stats(&self) -> DirectionStats {
        let st = lock(&self.state);
        let mut s = st.stats.clone();
        s.in_flight = st.heap.len() as u64;
        let delays_us = st.delays_us.clone();
        let delay_sum_s = st.delay_sum_s;
        drop(st);
        s.added_delay = DelaySummary::of(s.packets_delivered, delay_sum_s, delays_us);
        s
    }

    pub(super) fn set_link(&self, link: LinkConfig) {
        lock(&self.state).link = link;
    }

    pub(super) fn stop(&self) {
        lock(&self.state).stopped = true;
        self.wake.notify_all();
    }
}

impl DirState {
    /// The rate stage: when a datagram of `len` bytes that arrived at `arrival` has been
    /// sent at the link rate behind the bytes queued before it, or `None` (counted as a
    /// queue drop) when it does not fit in the queue.
    fn pace(&mut self, link: &LinkConfig, len: u64, arrival: Instant) -> Option<Instant> {
        let Some(rate) = link.rate_bps else { return Some(arrival) };
        let start = self.backlog_until.map_or(arrival, |b| b.max(arrival));
        let queued = ((start - arrival).as_secs_f64() * rate as f64 / 8.0) as u64;
        if queued + len > link.queue_bytes {
            self.stats.dropped_queue += 1;
            return None;
        }
        self.stats.max_queue_bytes = self.stats.max_queue_bytes.max(queued + len);
        let done = start + Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
        self.backlog_until = Some(done);
        Some(done)
    }

    /// The delay line: when a datagram that left the rate stage at `departs` is sent.
    /// Delay plus jitter, never before the previous datagram (FIFO), unless the reorder
    /// draw lets it skip the line.
    fn delay(&mut self, link: &LinkConfig, departs: Instant) -> Instant {
        if link.reorder > 0.0 && self.rng.gen::<f64>() < link.reorder {
            self.stats.reordered += 1;
            return departs;
        }
        let mut d = link.delay.as_secs_f64();
        if !link.jitter.is_zero() {
            let j = link.jitter.as_secs_f64();
            d += self.rng.gen_range(-j..=j);
        }
        let at = departs + Duration::from_secs_f64(d.max(0.0));
        let at = self.last_at.map_or(at, |l| at.max(l));
        self.last_at = Some(at);
        at
    }
}

/// What sending one datagram gave: sent or not, its bytes, the delay it got.
type Sent = (bool, u64, Duration);

/// Sends a due datagram where it goes.
fn send(p: &Pending) -> Sent {
    let r = match &p.out {
        Out::Connected(s) => send_with_retry(|| s.send(&p.data)),
        Out::To(s, to) => send_with_retry(|| s.send_to(&p.data, to)),
    };
    (r.is_ok(), p.data.len() as u64, p.arrival.elapsed())
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

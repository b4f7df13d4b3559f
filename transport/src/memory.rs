//! Two connected [`Channel`] endpoints in one process (STYLE.md 9: swanky's
//! `local_channel_pair`, mpz's in-memory duplex). Same lane semantics, counters and
//! timeouts as the network channel, so two-party tests exercise the real accounting.

use crate::{Channel, Counters, Lane, Result, TransportError};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Queues {
    lanes: HashMap<Lane, VecDeque<Vec<u8>>>,
    sender_gone: bool,
    /// Set by an explicit close: (code, reason).
    close: Option<(u32, String)>,
}

#[derive(Default)]
struct Direction {
    queues: Mutex<Queues>,
    ready: Condvar,
}

/// One end of an in-memory channel pair.
pub struct MemoryChannel {
    name: &'static str,
    peer_name: &'static str,
    outgoing: Arc<Direction>,
    incoming: Arc<Direction>,
    counters: Counters,
    recv_timeout: Duration,
}

/// Creates two connected endpoints: (P0's end, P1's end). Receives time out after 60 s.
pub fn pair() -> (MemoryChannel, MemoryChannel) {
    pair_with_timeout(Duration::from_secs(60))
}

/// Like [`pair`], with a chosen receive timeout.
pub fn pair_with_timeout(recv_timeout: Duration) -> (MemoryChannel, MemoryChannel) {
    let a_to_b = Arc::new(Direction::default());
    let b_to_a = Arc::new(Direction::default());
    let a = MemoryChannel {
        name: "p0",
        peer_name: "p1",
        outgoing: a_to_b.clone(),
        incoming: b_to_a.clone(),
        counters: Counters::default(),
        recv_timeout,
    };
    let b = MemoryChannel {
        name: "p1",
        peer_name: "p0",
        outgoing: b_to_a,
        incoming: a_to_b,
        counters: Counters::default(),
        recv_timeout,
    };
    (a, b)
}

impl MemoryChannel {
    /// This end's name ("p0" or "p1").
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Channel for MemoryChannel {
    fn send_bytes(&mut self, lane: Lane, payload: &[u8]) -> Result<()> {
        self.send_vec(lane, payload.to_vec())
    }

    fn send_vec(&mut self, lane: Lane, payload: Vec<u8>) -> Result<()> {
        let len = payload.len();
        let mut q = self.outgoing.queues.lock().expect("memory channel lock poisoned");
        if q.sender_gone {
            return Err(TransportError::PeerGone {
                peer: self.peer_name.into(),
                reason: format!("{} already closed this channel", self.name),
            });
        }
        q.lanes.entry(lane).or_default().push_back(payload);
        drop(q);
        self.outgoing.ready.notify_all();
        self.counters.on_send(lane, len, 0);
        Ok(())
    }

    fn recv_bytes(&mut self, lane: Lane) -> Result<Vec<u8>> {
        self.recv_bytes_within(lane, self.recv_timeout)
    }

    fn recv_bytes_within(&mut self, lane: Lane, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut q = self.incoming.queues.lock().expect("memory channel lock poisoned");
        loop {
            if let Some(msg) = q.lanes.get_mut(&lane).and_then(|l| l.pop_front()) {
                drop(q);
                self.counters.on_recv(lane, msg.len());
                return Ok(msg);
            }
            if q.sender_gone {
                return Err(match &q.close {
                    Some((code, reason)) => {
                        crate::closed_by_peer(self.peer_name.into(), u64::from(*code), reason)
                    }
                    None => TransportError::PeerGone {
                        peer: self.peer_name.into(),
                        reason: format!("in-memory peer dropped while {} waited on lane {lane:?}", self.name),
                    },
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TransportError::Timeout {
                    peer: self.peer_name.into(),
                    what: format!("a message on lane {lane:?}"),
                    after: timeout,
                });
            }
            q = self.incoming.ready.wait_timeout(q, deadline - now).expect("memory channel lock poisoned").0;
        }
    }

    fn counters(&self) -> Counters {
        self.counters.clone()
    }

    fn close(&mut self, code: u32, reason: &str) {
        if let Ok(mut q) = self.outgoing.queues.lock() {
            if !q.sender_gone {
                q.sender_gone = true;
                q.close = Some((code, reason.to_string()));
            }
        }
        self.outgoing.ready.notify_all();
    }

    fn peer(&self) -> String {
        self.peer_name.into()
    }
}

impl Drop for MemoryChannel {
    fn drop(&mut self) {
        if let Ok(mut q) = self.outgoing.queues.lock() {
            q.sender_gone = true;
        }
        self.outgoing.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChannelExt;

    #[test]
    fn lanes_are_independent_and_counted() {
        let (mut a, mut b) = pair();
        a.send_u64s(Lane::Openings, &[1, 2, 3]).unwrap();
        a.send_msg(Lane::Control, &("hello", 7u32)).unwrap();
        let m: (String, u32) = b.recv_msg(Lane::Control).unwrap();
        assert_eq!(m, ("hello".to_string(), 7));
        assert_eq!(b.recv_u64s(Lane::Openings, 3).unwrap(), vec![1, 2, 3]);
        assert_eq!(a.counters().lane(Lane::Openings).bytes_sent, 24);
        assert_eq!(b.counters().lane(Lane::Openings).bytes_received, 24);
        assert_eq!(b.counters().lane(Lane::Openings).messages_received, 1);
        // b never sent, so it waited on no answer: zero rounds.
        assert_eq!(b.counters().rounds, 0);
        b.send_u64s(Lane::Openings, &[9]).unwrap();
        assert_eq!(a.recv_u64s(Lane::Openings, 1).unwrap(), vec![9]);
        assert_eq!(a.counters().rounds, 1);
    }

    #[test]
    fn wrong_length_is_malformed() {
        let (mut a, mut b) = pair();
        a.send_u64s(Lane::Ot, &[1, 2]).unwrap();
        assert!(matches!(b.recv_u64s(Lane::Ot, 3), Err(TransportError::Malformed { .. })));
    }

    #[test]
    fn dropped_peer_and_timeout_are_errors() {
        let (a, mut b) = pair_with_timeout(Duration::from_millis(50));
        assert!(matches!(b.recv_bytes(Lane::Control), Err(TransportError::Timeout { .. })));
        drop(a);
        assert!(matches!(b.recv_bytes(Lane::Control), Err(TransportError::PeerGone { .. })));
    }
}

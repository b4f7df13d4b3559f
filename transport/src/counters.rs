//! Exact traffic accounting: payload bytes and messages per lane and direction, and rounds.

use crate::Lane;
use std::collections::BTreeMap;

/// Traffic on one lane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LaneCounters {
    /// Payload bytes sent (excluding framing).
    pub bytes_sent: u64,
    /// Payload bytes received (excluding framing).
    pub bytes_received: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
}

/// Traffic since a channel was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Per lane.
    pub lanes: BTreeMap<Lane, LaneCounters>,
    /// Framing bytes sent on top of payload (headers), all lanes.
    pub framing_bytes_sent: u64,
    /// Rounds: receives that followed at least one send since the previous receive.
    pub rounds: u64,
    sent_since_recv: bool,
}

impl Counters {
    /// Records a sent message.
    pub fn on_send(&mut self, lane: Lane, payload_len: usize, framing_len: usize) {
        let c = self.lanes.entry(lane).or_default();
        c.bytes_sent += payload_len as u64;
        c.messages_sent += 1;
        self.framing_bytes_sent += framing_len as u64;
        self.sent_since_recv = true;
    }

    /// Records a received message.
    pub fn on_recv(&mut self, lane: Lane, payload_len: usize) {
        let c = self.lanes.entry(lane).or_default();
        c.bytes_received += payload_len as u64;
        c.messages_received += 1;
        if self.sent_since_recv {
            self.rounds += 1;
            self.sent_since_recv = false;
        }
    }

    /// Total payload bytes sent.
    pub fn bytes_sent(&self) -> u64 {
        self.lanes.values().map(|c| c.bytes_sent).sum()
    }

    /// Total payload bytes received.
    pub fn bytes_received(&self) -> u64 {
        self.lanes.values().map(|c| c.bytes_received).sum()
    }

    /// Counters for one lane (zero if unused).
    pub fn lane(&self, lane: Lane) -> LaneCounters {
        self.lanes.get(&lane).copied().unwrap_or_default()
    }

    /// The traffic between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut out = Counters {
            framing_bytes_sent: self.framing_bytes_sent - earlier.framing_bytes_sent,
            rounds: self.rounds - earlier.rounds,
            ..Default::default()
        };
        for (lane, c) in &self.lanes {
            let e = earlier.lane(*lane);
            out.lanes.insert(
                *lane,
                LaneCounters {
                    bytes_sent: c.bytes_sent - e.bytes_sent,
                    bytes_received: c.bytes_received - e.bytes_received,
                    messages_sent: c.messages_sent - e.messages_sent,
                    messages_received: c.messages_received - e.messages_received,
                },
            );
        }
        out
    }
}

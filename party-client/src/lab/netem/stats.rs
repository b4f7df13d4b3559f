//! What the emulator counted: per direction, datagrams in, delivered and dropped (by
//! cause), and the delay each delivered datagram really got, summarised; for the whole
//! relay, both directions and the flows. `link` keeps the raw counters and samples;
//! `DelaySummary::of` turns the samples into the summary, and
//! [`NetemStats::render`] prints the table `netem` ends with.

use serde::{Deserialize, Serialize};

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

impl DelaySummary {
    /// The summary of `delivered` datagrams whose delays add up to `delay_sum_s`
    /// seconds, with percentiles from the samples kept (`delays_us`, microseconds).
    pub(super) fn of(delivered: u64, delay_sum_s: f64, delays_us: Vec<u32>) -> Self {
        let mut v = delays_us;
        v.sort_unstable();
        let pct = |q: f64| {
            if v.is_empty() {
                0.0
            } else {
                let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
                v[i] as f64 / 1e3
            }
        };
        DelaySummary {
            samples: delivered,
            mean_ms: if delivered > 0 { delay_sum_s * 1e3 / delivered as f64 } else { 0.0 },
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: v.last().map_or(0.0, |&m| m as f64 / 1e3),
        }
    }
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

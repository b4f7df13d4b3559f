//! `benchmark`: repeated timed generations with the seed's JSON report (model, gpu,
//! version, endpoint, timestamp, config, results.embedding/prefill/total with mean, std,
//! min, max, p50, p95, p99, tokens_per_second) plus exact traffic (`bytes_sent`,
//! `bytes_received`, `rounds`, per lane) and a per-phase time breakdown.

use serde::Serialize;
use shardlm_model::timing::PhaseTimes;
use shardlm_transport::Counters;
use std::collections::BTreeMap;

/// Summary statistics of a sample, in milliseconds. Also read back from reports (by
/// `experiment`), where a missing field reads as 0.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(default)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
}

impl Summary {
    /// Summarizes `values` (empty gives zeros).
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let pct = |p: f64| v[((p / 100.0 * n).ceil() as usize).clamp(1, v.len()) - 1];
        Self { mean, std, min: v[0], max: v[v.len() - 1], p50: pct(50.0), p95: pct(95.0), p99: pct(99.0) }
    }
}

/// One measured run.
#[derive(Clone, Debug, Default)]
pub struct RunMeasurement {
    /// Embedding time of the prefill, ms.
    pub embedding_ms: f64,
    /// Prefill step, ms.
    pub prefill_ms: f64,
    /// Whole generation, ms.
    pub total_ms: f64,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Decode step times, ms.
    pub decode_ms: Vec<f64>,
    /// Traffic of the run, from the session's start (handshake included).
    pub traffic: Counters,
    /// Of `traffic`, what was exchanged when the session opened (handshake, attestation,
    /// material binding): before the timed generation.
    pub setup: Counters,
    /// Time per operation kind.
    pub phases: PhaseTimes,
    /// Chunks the prefill was cut into (v3's wavefront; 1 otherwise).
    pub prefill_chunks: usize,
}

/// The JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Model name.
    pub model: String,
    /// Device of the server party as it reported it (or the local backend).
    pub gpu: String,
    /// ShardLM version.
    pub version: String,
    /// Variant measured.
    pub endpoint: String,
    /// RFC 3339 UTC time of the report.
    pub timestamp: String,
    /// Run settings.
    pub config: serde_json::Value,
    /// Timings.
    pub results: Results,
    /// Payload bytes the client sent, per run (mean over measured runs).
    pub bytes_sent: u64,
    /// Payload bytes the client received, per run.
    pub bytes_received: u64,
    /// Communication rounds per run.
    pub rounds: u64,
    /// Of `rounds`, those spent opening the session (handshake, attestation), before
    /// the timed generation.
    pub setup_rounds: u64,
    /// Of the bytes sent and received, those exchanged opening the session.
    pub setup_bytes: u64,
    /// Chunks the prefill was cut into (v3's wavefront; 1 for the other variants).
    pub prefill_chunks: usize,
    /// Traffic per lane, per run.
    pub lanes: BTreeMap<String, serde_json::Value>,
    /// Mean milliseconds per run in each operation kind.
    pub phases_ms: BTreeMap<String, f64>,
}

/// Timing results of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// Embedding lookup of the prompt.
    pub embedding: Summary,
    /// Prefill step (time to first token's logits).
    pub prefill: Summary,
    /// A decode step.
    pub decode_step: Summary,
    /// Whole generation.
    pub total: Summary,
    /// New tokens per second over the whole generation (mean over runs).
    pub tokens_per_second: f64,
    /// Decode tokens per second (decode steps only).
    pub decode_tokens_per_second: f64,
}

/// Builds the report from measured runs.
pub fn report(
    model: &str,
    gpu: &str,
    endpoint: &str,
    config: serde_json::Value,
    runs: &[RunMeasurement],
) -> Report {
    let col = |f: &dyn Fn(&RunMeasurement) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    let decode: Vec<f64> = runs.iter().flat_map(|r| r.decode_ms.iter().copied()).collect();
    let tps =
        runs.iter().map(|r| r.new_tokens as f64 / (r.total_ms / 1e3)).sum::<f64>() / runs.len().max(1) as f64;
    let decode_total: f64 = decode.iter().sum();
    let n = runs.len().max(1) as u64;
    let mut lanes: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new();
    let mut phases: BTreeMap<String, f64> = BTreeMap::new();
    for r in runs {
        for (lane, c) in &r.traffic.lanes {
            let e = lanes.entry(format!("{lane:?}")).or_default();
            e.0 += c.bytes_sent;
            e.1 += c.bytes_received;
            e.2 += c.messages_sent;
            e.3 += c.messages_received;
        }
        for (op, d) in &r.phases.by_op {
            *phases.entry(op.to_string()).or_default() += d.as_secs_f64() * 1e3 / runs.len() as f64;
        }
    }
    Report {
        model: model.to_string(),
        gpu: gpu.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        endpoint: endpoint.to_string(),
        timestamp: rfc3339_now(),
        config,
        results: Results {
            embedding: Summary::of(&col(&|r| r.embedding_ms)),
            prefill: Summary::of(&col(&|r| r.prefill_ms)),
            decode_step: Summary::of(&decode),
            total: Summary::of(&col(&|r| r.total_ms)),
            tokens_per_second: tps,
            decode_tokens_per_second: if decode_total > 0.0 { decode.len() as f64 / (decode_total / 1e3) } else { 0.0 },
        },
        bytes_sent: runs.iter().map(|r| r.traffic.bytes_sent()).sum::<u64>() / n,
        bytes_received: runs.iter().map(|r| r.traffic.bytes_received()).sum::<u64>() / n,
        rounds: runs.iter().map(|r| r.traffic.rounds).sum::<u64>() / n,
        setup_rounds: runs.iter().map(|r| r.setup.rounds).sum::<u64>() / n,
        setup_bytes: runs.iter().map(|r| r.setup.bytes_sent() + r.setup.bytes_received()).sum::<u64>() / n,
        prefill_chunks: runs.iter().map(|r| r.prefill_chunks).max().unwrap_or(1),
        lanes: lanes
            .into_iter()
            .map(|(k, (bs, br, ms, mr))| {
                (k, serde_json::json!({"bytes_sent": bs / n, "bytes_received": br / n, "messages_sent": ms / n, "messages_received": mr / n}))
            })
            .collect(),
        phases_ms: phases,
    }
}

/// Current UTC time as RFC 3339, without a date crate.
pub fn rfc3339_now() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!((s.min, s.max, s.p50, s.p95, s.p99), (1.0, 100.0, 50.0, 95.0, 99.0));
        assert!((s.mean - 50.5).abs() < 1e-12);
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn timestamp_shape() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}

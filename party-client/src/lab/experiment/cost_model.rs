//! The cost model, per variant and per phase (the prefill, one decode step):
//!
//! ```text
//! stages = (compute, sent / rate, received / rate), C chunks
//! predicted = max( max(stages) + (sum(stages) - max(stages)) / C,  rounds x RTT + sum(stages) / C )
//! ```
//!
//! ([`shardlm_variants::v3::pipelined_seconds`], the formula v3's client cuts its passes
//! with.) A pass cut into `C` chunks that stream through the stages (v3's wavefront: the
//! client's and the server's compute, the uplink, the downlink) takes the bottleneck
//! stage's whole time plus the other stages' time for one chunk's share (the pipeline's
//! fill and drain), unless one chunk's chain of round trips takes longer; with one chunk
//! (v2, v3-mpc, v3-ot, every decode step) it is the classic `compute + rounds x RTT + bytes /
//! rate`. A fully private variant's rounds are symmetric exchanges (both parties send,
//! then each waits for the other's message, sent at the same time), so each costs one
//! one-way delay: its `RTT` term is `rounds x RTT / 2` (measured: v3-mpc's 2202 rounds
//! cost 1,157 RTTs between 2 and 80 ms). `rounds`, the bytes of each
//! direction and `C` come from the client's report of each point; `compute` is fitted
//! once per variant and phase, at its lowest-RTT, highest-rate point, as the value that
//! makes the model reproduce that point's measurement. The total is the prefill plus
//! the decode steps. [`apply_cost_model`] writes the prediction and its error into every
//! point and returns one [`CostModel`] per variant, for the table and `results.json`.

use super::report::Point;
use serde::{Deserialize, Serialize};
use shardlm_variants::v3::pipelined_seconds;

/// The cost model of one variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CostModel {
    /// Variant.
    pub variant: String,
    /// Compute per run, ms (total at the reference point minus its network terms).
    pub compute_ms: f64,
    /// Compute of the prefill, ms.
    pub compute_prefill_ms: f64,
    /// Compute of one decode step, ms.
    pub compute_decode_step_ms: f64,
    /// RTT of the reference point, ms.
    pub reference_rtt_ms: f64,
    /// Rate of the reference point.
    pub reference_rate: String,
    /// Rounds per run.
    pub rounds: u64,
    /// Bytes per run, both directions.
    pub bytes: u64,
    /// Chunks the prefill is pipelined in (v3; 1 otherwise).
    #[serde(default)]
    pub prefill_chunks: usize,
    /// Mean |prediction error| of the total over the other points, percent.
    pub mean_abs_error_pct: Option<f64>,
    /// The same for the prefill and for a decode step.
    pub mean_abs_error_pct_prefill_decode: Option<(f64, f64)>,
}

/// One phase of a point as the model sees it (ms, except `rounds` and `chunks`).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Phase {
    /// Dependent round trips.
    rounds: f64,
    /// The round-trip time.
    rtt: f64,
    /// Bytes sent / rate.
    up: f64,
    /// Bytes received / rate.
    down: f64,
    /// Chunks the phase is pipelined in.
    chunks: usize,
}

impl Phase {
    /// The predicted time of the phase with `compute` ms of compute.
    fn predict(&self, compute: f64) -> f64 {
        pipelined_seconds([compute, self.up, self.down], self.chunks, self.rounds, self.rtt)
    }

    /// The compute that makes [`Phase::predict`] equal `measured` (it is continuous and
    /// increasing in compute; 0 when even no compute predicts more than measured).
    fn fit(&self, measured: f64) -> f64 {
        let (mut lo, mut hi) = (0.0, measured.max(0.0));
        if self.predict(lo) >= measured {
            return 0.0;
        }
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if self.predict(mid) < measured {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (lo + hi) / 2.0
    }
}

/// The prefill and one decode step of a point. A run is `new_tokens` forward passes
/// (the prefill gives the first token); the rounds and bytes of the timed generation
/// (those of opening the session are not timed) are split: rounds evenly between
/// passes, bytes in proportion to the tokens each pass processes (exact for v2's and
/// v3's linear layers, an estimate elsewhere).
fn phases(p: &Point) -> (Phase, Phase) {
    let passes = p.new_tokens.max(1) as f64;
    let tokens = (p.prompt_tokens + p.new_tokens.max(1) - 1) as f64;
    let rounds = p.rounds.saturating_sub(p.setup_rounds) as f64;
    // Opening bytes are a few kilobytes, split like the totals.
    let total = (p.bytes_sent + p.bytes_received).max(1) as f64;
    let open_share = p.setup_bytes as f64 / total;
    let ms = |b: u64| b as f64 * (1.0 - open_share) * 8.0 / p.rate_bps.max(1) as f64 * 1e3;
    let (up, down) = (ms(p.bytes_sent), ms(p.bytes_received));
    let share = p.prompt_tokens as f64 / tokens;
    let (rounds, rtt) = (rounds / passes, p.rtt_ms * round_trip_share(&p.variant));
    let prefill = Phase { rounds, rtt, up: up * share, down: down * share, chunks: p.prefill_chunks.max(1) };
    let step = Phase { rounds, rtt, up: up / tokens, down: down / tokens, chunks: 1 };
    (prefill, step)
}

/// The part of an RTT one round costs: 1/2 for the fully private variants, whose
/// rounds are symmetric exchanges (module doc), 1 for request/answer rounds.
fn round_trip_share(variant: &str) -> f64 {
    let symmetric = variant.parse::<shardlm_configs::Variant>().is_ok_and(|v| {
        shardlm_variants::registry::spec(v).material == shardlm_variants::registry::MaterialNeed::BothParties
    });
    if symmetric {
        0.5
    } else {
        1.0
    }
}

/// Fits `compute` per variant at its reference point and predicts every point.
pub(crate) fn apply_cost_model(points: &mut [Point]) -> Vec<CostModel> {
    let mut variants: Vec<String> = points.iter().map(|p| p.variant.clone()).collect();
    variants.dedup();
    let mut models = Vec::new();
    let err = |pred: f64, meas: f64| if meas > 0.0 { (pred - meas) / meas * 100.0 } else { 0.0 };
    for v in variants {
        let reference = points
            .iter()
            .filter(|p| p.variant == v && p.error.is_none())
            .min_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms).then(b.rate_bps.cmp(&a.rate_bps)))
            .cloned();
        let Some(r) = reference else { continue };
        let (prefill, step) = phases(&r);
        let compute_prefill = prefill.fit(r.prefill_ms.mean);
        let compute_step = step.fit(r.decode_step_ms.mean);
        let decode_steps = |p: &Point| p.new_tokens.saturating_sub(1) as f64;
        let mut errors = Vec::new();
        for p in points.iter_mut().filter(|p| p.variant == v && p.error.is_none()) {
            let (prefill, step) = phases(p);
            let (pred_prefill, pred_step) = (prefill.predict(compute_prefill), step.predict(compute_step));
            let pred = pred_prefill + decode_steps(p) * pred_step;
            p.predicted_total_ms = Some(pred);
            p.predicted_prefill_ms = Some(pred_prefill);
            p.predicted_decode_step_ms = Some(pred_step);
            let e = (
                err(pred, p.total_ms.mean),
                err(pred_prefill, p.prefill_ms.mean),
                err(pred_step, p.decode_step_ms.mean),
            );
            p.prediction_error_pct = Some(e.0);
            p.prediction_error_pct_prefill_decode = Some((e.1, e.2));
            if !(p.rtt_ms == r.rtt_ms && p.rate_bps == r.rate_bps) {
                errors.push(e);
            }
        }
        let k = errors.len() as f64;
        models.push(CostModel {
            variant: v,
            compute_ms: compute_prefill + decode_steps(&r) * compute_step,
            compute_prefill_ms: compute_prefill,
            compute_decode_step_ms: compute_step,
            reference_rtt_ms: r.rtt_ms,
            reference_rate: r.rate.clone(),
            rounds: r.rounds,
            bytes: r.bytes_sent + r.bytes_received,
            prefill_chunks: r.prefill_chunks,
            mean_abs_error_pct: (!errors.is_empty())
                .then(|| errors.iter().map(|e| e.0.abs()).sum::<f64>() / k),
            mean_abs_error_pct_prefill_decode: (!errors.is_empty()).then(|| {
                (
                    errors.iter().map(|e| e.1.abs()).sum::<f64>() / k,
                    errors.iter().map(|e| e.2.abs()).sum::<f64>() / k,
                )
            }),
        });
    }
    models
}

#[cfg(test)]
mod tests {
    use super::super::report::{machine, write_outputs, Results, Stat};
    use super::*;
    use crate::lab::netem::{format_rate, LinkConfig};

    fn point(rtt: f64, rate: u64, total: f64) -> Point {
        Point {
            variant: "v2".into(),
            rtt_ms: rtt,
            rate_bps: rate,
            rate: format_rate(rate),
            link: LinkConfig::default(),
            measured_link: None,
            measured_rtt_ms: rtt,
            prompt_tokens: 4,
            new_tokens: 2,
            runs: 1,
            prefill_ms: Stat { mean: total / 2.0, ..Default::default() },
            decode_step_ms: Stat { mean: total / 4.0, ..Default::default() },
            total_ms: Stat { mean: total, ..Default::default() },
            bytes_sent: 500_000,
            bytes_received: 500_000,
            rounds: 10,
            setup_rounds: 0,
            setup_bytes: 0,
            prefill_chunks: 1,
            attestation: vec![],
            predicted_prefill_ms: None,
            predicted_decode_step_ms: None,
            predicted_total_ms: None,
            prediction_error_pct: None,
            prediction_error_pct_prefill_decode: None,
            error: None,
        }
    }

    #[test]
    fn opening_the_session_is_not_part_of_the_timed_run() {
        let plain = point(20.0, 1_000_000_000, 0.0);
        let mut opened = point(20.0, 1_000_000_000, 0.0);
        opened.rounds += 2;
        opened.bytes_sent += 2_000;
        opened.bytes_received += 2_000;
        opened.setup_rounds = 2;
        opened.setup_bytes = 4_000;
        let ((a, b), (c, d)) = (phases(&plain), phases(&opened));
        assert_eq!((a.rounds, b.rounds), (c.rounds, d.rounds));
        assert!((a.up - c.up).abs() < 1e-9 && (a.down - c.down).abs() < 1e-9);
        assert!(a.rounds > 0.0 && a.up > 0.0);
    }

    #[test]
    fn one_chunk_pays_the_sum_and_many_chunks_the_bottleneck() {
        let p = Phase { rounds: 5.0, rtt: 2.0, up: 300.0, down: 500.0, chunks: 1 };
        assert_eq!(p.predict(200.0), 10.0 + 200.0 + 300.0 + 500.0);
        let p4 = Phase { chunks: 4, ..p };
        assert_eq!(p4.predict(200.0), 500.0 + (200.0 + 300.0) / 4.0);
        // Compute becomes the bottleneck past the link's time.
        assert_eq!(p4.predict(900.0), 900.0 + 800.0 / 4.0);
        // A long RTT: one chunk's chain of round trips bounds it.
        let far = Phase { rtt: 200.0, ..p4 };
        assert_eq!(far.predict(200.0), 1000.0 + 1000.0 / 4.0);
        for c in [0.0, 50.0, 499.0, 700.0, 2000.0] {
            assert!((p4.fit(p4.predict(c)) - c).abs() < 1e-6, "fit inverts predict at {c}");
        }
        assert_eq!(p4.fit(1.0), 0.0, "a measurement below the network time fits no compute");
    }

    #[test]
    fn cost_model_is_exact_on_its_own_form() {
        // Prefill compute 40 ms, 5 ms per decode step; 10 rounds, 1 MB each way.
        for chunks in [1, 4] {
            let truth = |rtt: f64, rate: u64| {
                let mut p = point(rtt, rate, 0.0);
                p.prefill_chunks = chunks;
                let (prefill, step) = phases(&p);
                let (tp, ts) = (prefill.predict(40.0), step.predict(5.0));
                p.prefill_ms.mean = tp;
                p.decode_step_ms.mean = ts;
                p.total_ms.mean = tp + ts;
                p
            };
            let mut pts = vec![truth(1.0, 1_000_000_000), truth(20.0, 8_000_000)];
            let models = apply_cost_model(&mut pts);
            assert_eq!(models.len(), 1);
            assert!((models[0].compute_prefill_ms - 40.0).abs() < 1e-6, "{chunks} chunks");
            assert!((models[0].compute_decode_step_ms - 5.0).abs() < 1e-6);
            assert!(pts[1].prediction_error_pct.unwrap().abs() < 1e-6);
            let tmp = tempfile::tempdir().unwrap();
            let r = Results {
                model: "m".into(),
                machine: machine(),
                timestamp: "t".into(),
                settings: serde_json::json!({"prompt_tokens": 4, "max_new_tokens": 2, "runs": 1, "warmup": 0}),
                skipped: vec![],
                points: pts,
                cost_models: models,
            };
            write_outputs(tmp.path(), &r).unwrap();
            let svg = std::fs::read_to_string(tmp.path().join("latency-v2.svg")).unwrap();
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(std::fs::read_to_string(tmp.path().join("results.md"))
                .unwrap()
                .contains("| v2 | 20 ms | 8mbit |"));
        }
    }
}

//! The cost model: `predicted = compute + rounds x RTT + bytes / rate`, per variant.
//!
//! `rounds` and `bytes` (both directions, which a sequential protocol pays one after
//! the other) come from the client's counters of each point; `compute` is fitted once
//! per variant, at its lowest-RTT, highest-rate point, as that point's measured time
//! minus its own network terms ([`network_ms`]). [`apply_cost_model`] then writes the
//! prediction and its error into every point and returns one [`CostModel`] per
//! variant, for the table and `results.json`.

use super::report::Point;
use serde::{Deserialize, Serialize};

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
    /// Mean |prediction error| of the total over the other points, percent.
    pub mean_abs_error_pct: Option<f64>,
    /// The same for the prefill and for a decode step.
    pub mean_abs_error_pct_prefill_decode: Option<(f64, f64)>,
}

/// The network terms of the cost model for one point, ms: the whole run, the prefill,
/// and one decode step. A run is `new_tokens` forward passes (the prefill gives the
/// first token); the rounds and bytes of the timed generation (those of opening the
/// session are not timed) are split: rounds evenly between passes, bytes in proportion
/// to the tokens each pass processes (exact for v2's linear layers, an estimate
/// elsewhere).
fn network_ms(p: &Point) -> (f64, f64, f64) {
    let passes = p.new_tokens.max(1) as f64;
    let tokens = (p.prompt_tokens + p.new_tokens.max(1) - 1) as f64;
    let rounds = p.rounds.saturating_sub(p.setup_rounds);
    let bytes = (p.bytes_sent + p.bytes_received).saturating_sub(p.setup_bytes);
    let rounds_per_pass = rounds as f64 / passes;
    let bytes_ms = bytes as f64 * 8.0 / p.rate_bps as f64 * 1e3;
    let total = rounds as f64 * p.rtt_ms + bytes_ms;
    let prefill = rounds_per_pass * p.rtt_ms + bytes_ms * p.prompt_tokens as f64 / tokens;
    let step = rounds_per_pass * p.rtt_ms + bytes_ms / tokens;
    (total, prefill, step)
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
        let (net, net_prefill, net_step) = network_ms(&r);
        let compute = (r.total_ms.mean - net).max(0.0);
        let compute_prefill = (r.prefill_ms.mean - net_prefill).max(0.0);
        let compute_step = (r.decode_step_ms.mean - net_step).max(0.0);
        let mut errors = Vec::new();
        for p in points.iter_mut().filter(|p| p.variant == v && p.error.is_none()) {
            let (n, np, ns) = network_ms(p);
            let (pred, pred_prefill, pred_step) = (compute + n, compute_prefill + np, compute_step + ns);
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
            compute_ms: compute,
            compute_prefill_ms: compute_prefill,
            compute_decode_step_ms: compute_step,
            reference_rtt_ms: r.rtt_ms,
            reference_rate: r.rate.clone(),
            rounds: r.rounds,
            bytes: r.bytes_sent + r.bytes_received,
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
        opened.bytes_sent += 4_000;
        opened.setup_rounds = 2;
        opened.setup_bytes = 4_000;
        assert_eq!(network_ms(&plain), network_ms(&opened));
        assert!(network_ms(&plain).0 > 0.0);
    }

    #[test]
    fn cost_model_is_exact_on_its_own_form() {
        // compute 50 ms, 10 rounds, 1 MB: at 8 Mbit/s the bytes cost 1000 ms.
        let truth = |rtt: f64, rate: u64| 50.0 + 10.0 * rtt + 8e6 / rate as f64 * 1e3;
        let mut pts = vec![
            point(1.0, 1_000_000_000, truth(1.0, 1_000_000_000)),
            point(20.0, 8_000_000, truth(20.0, 8_000_000)),
        ];
        let models = apply_cost_model(&mut pts);
        assert_eq!(models.len(), 1);
        assert!((models[0].compute_ms - 50.0).abs() < 1e-9);
        assert!(pts[1].prediction_error_pct.unwrap().abs() < 1e-9);
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

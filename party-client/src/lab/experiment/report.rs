//! The sweep's results and their files: [`Point`] (one variant at one RTT and rate, as
//! measured, with the cost model's prediction) and [`Results`] (the whole sweep) are
//! the schema of `results.json`; [`render_markdown`] makes the table of `results.md`;
//! [`write_outputs`] writes both and has `plot` draw the SVG plots.

use super::cost_model::CostModel;
use super::plot::{plot_bytes, plot_latency};
use crate::lab::netem::{LinkConfig, NetemStats};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Timing summary in milliseconds: the benchmark report's own type.
pub(crate) use crate::bench::Summary as Stat;

/// One point of the sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Point {
    /// Variant.
    pub variant: String,
    /// Round-trip time asked of the emulator, ms.
    pub rtt_ms: f64,
    /// Rate asked of the emulator, bits/s.
    pub rate_bps: u64,
    /// The same, written as on the command line.
    pub rate: String,
    /// Each direction's link as configured.
    pub link: LinkConfig,
    /// What the emulator measured (counters and the delay it really added).
    pub measured_link: Option<NetemStats>,
    /// Round-trip delay the emulator really added (mean both ways), ms.
    pub measured_rtt_ms: f64,
    /// Prompt tokens of each run.
    pub prompt_tokens: usize,
    /// New tokens of each run.
    pub new_tokens: usize,
    /// Measured runs.
    pub runs: usize,
    /// Time to the first token's logits.
    pub prefill_ms: Stat,
    /// One decode step (per new token after the first).
    pub decode_step_ms: Stat,
    /// Whole generation.
    pub total_ms: Stat,
    /// Payload bytes client to server per run.
    pub bytes_sent: u64,
    /// Payload bytes server to client per run.
    pub bytes_received: u64,
    /// Rounds per run.
    pub rounds: u64,
    /// Of `rounds`, those opening the session (before the timed generation).
    #[serde(default)]
    pub setup_rounds: u64,
    /// Of the bytes, those opening the session.
    #[serde(default)]
    pub setup_bytes: u64,
    /// Chunks the client cut the prefill into (v3's wavefront; 1 otherwise).
    #[serde(default = "one")]
    pub prefill_chunks: usize,
    /// What attested the server (v3-cc), as the client's report said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attestation: Vec<String>,
    /// Cost-model prediction of `prefill_ms.mean`.
    pub predicted_prefill_ms: Option<f64>,
    /// Cost-model prediction of `decode_step_ms.mean`.
    pub predicted_decode_step_ms: Option<f64>,
    /// Cost-model prediction of `total_ms.mean`.
    pub predicted_total_ms: Option<f64>,
    /// `(predicted - measured) / measured` of the total, percent.
    pub prediction_error_pct: Option<f64>,
    /// The same for the prefill and for a decode step, percent.
    pub prediction_error_pct_prefill_decode: Option<(f64, f64)>,
    /// Why the point failed, if it did.
    pub error: Option<String>,
}

/// The whole sweep, as written to `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Results {
    /// Model name.
    pub model: String,
    /// Where and when.
    pub machine: String,
    /// RFC 3339 UTC.
    pub timestamp: String,
    /// The sweep's settings.
    pub settings: serde_json::Value,
    /// Variants asked for but not served, with the reason.
    pub skipped: Vec<String>,
    /// Every point.
    pub points: Vec<Point>,
    /// Per variant.
    pub cost_models: Vec<CostModel>,
}

/// Where the sweep ran: CPU model, cores and OS.
pub(super) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores, {}", std::env::consts::OS)
}

/// The default of a count missing from an older results file: one.
fn one() -> usize {
    1
}

/// Bytes as the table writes them (`12.3 GB`, `12.3 MB`, `45.6 kB`, `789 B`).
pub(crate) fn fmt_bytes(b: u64) -> String {
    if b >= 10_000_000_000 {
        format!("{:.1} GB", b as f64 / 1e9)
    } else if b >= 10_000_000 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else if b >= 10_000 {
        format!("{:.1} kB", b as f64 / 1e3)
    } else {
        format!("{b} B")
    }
}

/// The markdown table of `results.md`.
pub(crate) fn render_markdown(r: &Results) -> String {
    let mut s = markdown_header(r);
    s += "| variant | RTT | rate | RTT measured | prefill | predicted | per token | predicted | total | predicted | sent | received | rounds |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for p in &r.points {
        s += &point_row(p);
    }
    s += &cost_model_section(&r.cost_models);
    s
}

/// The title, the setting and the notes on skipped variants.
fn markdown_header(r: &Results) -> String {
    let mut s = format!("# Network sweep: {}\n\n", r.model);
    s += &format!(
        "Machine: {}. {}. Client and server party and the emulator on 127.0.0.1.\n\n",
        r.machine, r.timestamp
    );
    s += &format!(
        "Prompt {} tokens, {} new tokens, {} runs per point (+{} warmup). Times in ms, mean (p50 / p95). \
         RTT measured = delay the emulator really added, both ways. Predicted: see the cost model below.\n\n",
        r.settings["prompt_tokens"], r.settings["max_new_tokens"], r.settings["runs"], r.settings["warmup"]
    );
    if let Some(g) = r.settings.get("server_ring_gemm_ps_per_weight").filter(|g| !g.is_null()) {
        s += &format!(
            "Server ring GEMM as the server measured it at start (v3 cuts its chunks with it): {} ps per weight per call + {} ps per weight per row.\n\n",
            g["per_call"], g["per_row"]
        );
    }
    let mut attested: Vec<(&str, &str)> = r
        .points
        .iter()
        .filter_map(|p| p.attestation.first().map(|a| (p.variant.as_str(), a.as_str())))
        .collect();
    attested.dedup();
    for (variant, note) in attested {
        s += &format!("{variant}: {note}.\n\n");
    }
    for note in &r.skipped {
        s += &format!("- skipped: {note}\n");
    }
    if !r.skipped.is_empty() {
        s += "\n";
    }
    s
}

/// One row of the points table: the measurement and the prediction, or the failure.
fn point_row(p: &Point) -> String {
    if let Some(e) = &p.error {
        return format!(
            "| {} | {} ms | {} | failed: {} | | | | | | | | | |\n",
            p.variant,
            p.rtt_ms,
            p.rate,
            e.replace('|', "/")
        );
    }
    let t = |x: &Stat| format!("{:.1} ({:.1} / {:.1})", x.mean, x.p50, x.p95);
    let pr = |x: Option<f64>, e: Option<f64>| match (x, e) {
        (Some(x), Some(e)) => format!("{x:.1} ({e:+.0}%)"),
        _ => "-".into(),
    };
    let (ep, ed) = p.prediction_error_pct_prefill_decode.map_or((None, None), |(a, b)| (Some(a), Some(b)));
    format!(
        "| {} | {} ms | {} | {:.2} ms | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} ({} opening){} |\n",
        p.variant,
        p.rtt_ms,
        p.rate,
        p.measured_rtt_ms,
        t(&p.prefill_ms),
        pr(p.predicted_prefill_ms, ep),
        t(&p.decode_step_ms),
        pr(p.predicted_decode_step_ms, ed),
        p.total_ms.mean,
        pr(p.predicted_total_ms, p.prediction_error_pct),
        fmt_bytes(p.bytes_sent),
        fmt_bytes(p.bytes_received),
        p.rounds,
        p.setup_rounds,
        if p.prefill_chunks > 1 {
            format!(", prefill in {} chunks", p.prefill_chunks)
        } else {
            String::new()
        }
    )
}

/// The cost model's section: how it predicts, and one row per variant.
fn cost_model_section(models: &[CostModel]) -> String {
    let mut s = String::from(
        "\n## Cost model\n\nPer phase (the prefill, one decode step), with stages = (compute, sent / rate, received / rate) and C chunks: \
          predicted = max(max(stages) + (sum(stages) - max(stages)) / C, rounds x RTT + sum(stages) / C). A pass cut into C chunks (v3's wavefront) \
          pays its bottleneck stage plus one chunk's share of the others, unless one chunk's chain of round trips takes longer; \
          with one chunk (v2, v3-mpc, v3-ot, decode steps) it is compute + rounds x RTT + bytes / rate. \
          The fully private variants' rounds are symmetric exchanges (both parties send at once), one one-way delay each: RTT / 2 per round. \
          Compute is fitted at the variant's lowest-RTT, highest-rate point; rounds are split evenly over the forward passes and bytes in \
          proportion to the tokens processed. Total = prefill + decode steps.\n\n\
          | variant | compute: run / prefill / step (ms) | fitted at | rounds | bytes | prefill chunks | mean abs error: total / prefill / step |\n|---|---|---|---|---|---|---|\n",
    );
    for m in models {
        let errs = match (m.mean_abs_error_pct, m.mean_abs_error_pct_prefill_decode) {
            (Some(t), Some((p, d))) => format!("{t:.1}% / {p:.1}% / {d:.1}%"),
            _ => "-".into(),
        };
        s += &format!(
            "| {} | {:.1} / {:.1} / {:.2} | {} ms, {} | {} | {} | {} | {} |\n",
            m.variant,
            m.compute_ms,
            m.compute_prefill_ms,
            m.compute_decode_step_ms,
            m.reference_rtt_ms,
            m.reference_rate,
            m.rounds,
            fmt_bytes(m.bytes),
            m.prefill_chunks.max(1),
            errs
        );
    }
    s
}

/// The names of the plots [`write_outputs`] draws, for the closing line.
pub(super) fn plot_names(r: &Results) -> Vec<String> {
    let mut v: Vec<String> = r.cost_models.iter().map(|m| format!("latency-{}.svg", m.variant)).collect();
    if !r.cost_models.is_empty() {
        v.push("bytes.svg".into());
    }
    v
}

/// Writes results.json, results.md and the SVG plots into `out`.
pub(crate) fn write_outputs(out: &Path, r: &Results) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(r)?)
        .context("writing results.json")?;
    std::fs::write(out.join("results.md"), render_markdown(r)).context("writing results.md")?;
    for m in &r.cost_models {
        plot_latency(&out.join(format!("latency-{}.svg", m.variant)), r, &m.variant)?;
    }
    if !r.cost_models.is_empty() {
        plot_bytes(&out.join("bytes.svg"), r)?;
    }
    Ok(())
}

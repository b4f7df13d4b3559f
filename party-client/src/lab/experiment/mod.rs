//! `experiment`: a sweep of variants x round-trip times x link rates through the link
//! emulator ([`crate::lab::netem`]), with a table, plots and a cost model.
//!
//! For every point of the sweep, three parties run on 127.0.0.1: the server party
//! (`shardlm-server serve`, a subprocess with identities made for the sweep), the link
//! emulator (in this process, which does nothing else meanwhile: `delay = rtt / 2` in
//! each direction, the point's rate, a 1 MB queue), and the client party
//! (`shardlm-client benchmark`, a subprocess pointed at the emulator). The client's
//! JSON report and the emulator's counters make one point of `results.json`. For a
//! fully private variant (v3-mpc, v3-ot) a dealer process of its own, separate from
//! both parties, first deals the point's bundle: the server party gets its `p1`, the
//! client its `p0` (`runner`). Bundles are dealt into `OUT/material/` and deleted
//! after their point (a large model's take many GB).
//!
//! **Prompt.** Every run's prompt has exactly `--prompt-tokens` tokens of the model's
//! own tokenizer, or the closest length that round-trips (`prompt`; the report states
//! the length that was used).
//!
//! **Cost model.** Per variant and phase, `predicted = rounds x RTT + pipelined(compute,
//! sent / rate, received / rate)`: the sum of the three for a pass sent whole (v2,
//! v3-mpc, v3-ot, decode steps), the bottleneck plus one chunk's share of the others for v3's
//! wavefront (`cost_model`). `rounds`, the bytes of each direction and the chunk count
//! come from the client's report, and `compute` is fitted once, at the variant's
//! lowest-RTT, highest-rate point. Every other point is then a prediction, shown next to
//! the measurement.
//!
//! [`run_experiment`] goes through these steps, each in its own part:
//!
//! 1. check the arguments, find the server binary, build the prompt (`prompt`);
//! 2. make the identities and ask a server which variants it serves (`runner`; the
//!    fully private ones need material, which the sweep deals per point);
//! 3. run every point, variant by variant, rate by rate, RTT by RTT (`runner`: one
//!    point's server, emulator and client);
//! 4. fit the cost model and predict every point (`cost_model`);
//! 5. write `results.json` and `results.md` (`report`) and the SVG plots (`plot`).

mod cost_model;
mod plot;
mod prompt;
pub(crate) mod report;
mod runner;

use crate::lab::netem::{format_ms, format_rate, parse_duration, parse_rate, parse_size, LinkConfig};
use anyhow::{bail, Context, Result};
use cost_model::apply_cost_model;
use report::{machine, plot_names, write_outputs, Point, Results, Stat};
use runner::{dealt_by_sweep, server_bin, server_info, Identities, Parties};
use shardlm_configs::Variant;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `shardlm-client experiment`: sweep variants, RTTs and rates through the emulator.
#[derive(clap::Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// Hugging Face model directory (both parties load it).
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    pub model_dir: PathBuf,
    /// Variants to measure; those the server does not serve are skipped with a note.
    /// The fully private ones (v3-mpc, v3-ot) are dealt for each point by a dealer
    /// separate from both parties.
    #[arg(long, value_delimiter = ',', default_value = "v2,v3,v3-mpc,v3-ot,v3-cc")]
    pub variants: Vec<Variant>,
    /// Round-trip times the emulator adds (half in each direction).
    #[arg(long, value_delimiter = ',', value_parser = parse_duration, default_value = "0.2ms,2ms,20ms,80ms")]
    pub rtt: Vec<Duration>,
    /// Link rates (each direction).
    #[arg(long, value_delimiter = ',', value_parser = parse_rate, default_value = "10gbit,1gbit,100mbit")]
    pub rate: Vec<u64>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 98)]
    pub prompt_tokens: usize,
    /// New tokens per run.
    #[arg(long, default_value_t = 8)]
    pub max_new_tokens: usize,
    /// Measured runs per point.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Unmeasured warmup runs per point.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Output directory (results.json, results.md, *.svg, logs/).
    #[arg(long)]
    pub out: PathBuf,
    /// Bytes the emulator queues per direction before tail drop.
    #[arg(long, value_parser = parse_size, default_value = "1mb")]
    pub queue: u64,
    /// Give up on a point after this long (`600s`); the sweep goes on with the next.
    #[arg(long, value_parser = parse_duration, default_value = "600s")]
    pub point_timeout: Duration,
    /// Seconds each party waits for an answer of the other.
    #[arg(long, default_value_t = 120.0)]
    pub recv_timeout: f64,
    /// Run both parties at this `nice` level (0 = as this process), so that on a small
    /// machine the emulator, which competes with them for the cores, is not starved
    /// and the link stays the one asked for. Needs `nice` on the PATH.
    #[arg(long, default_value_t = 5)]
    pub party_nice: i32,
    /// The server binary (default: `shardlm-server` next to this binary).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// v3: rows per chunk of a multi-row pass (default: the client chooses).
    #[arg(long)]
    pub chunk_rows: Option<usize>,
    /// v3-cc: the providers attesting the sweep's server (`shardlm-server serve
    /// --cc-provider`). The default, `software`, protects nothing and is only for
    /// measuring the protocol's cost; on confidential hardware name its providers and
    /// give `--cc-policy`.
    #[arg(long, value_delimiter = ',', default_value = "software")]
    pub cc_provider: Vec<shardlm_attest::ProviderKind>,
    /// v3-cc: the client's attestation policy (JSON), needed with hardware providers.
    #[arg(long)]
    pub cc_policy: Option<PathBuf>,
}

/// Runs the sweep and writes its outputs.
pub fn run_experiment(args: ExperimentArgs) -> Result<()> {
    check_args(&args)?;
    let bin = server_bin(&args)?;
    let me = std::env::current_exe().context("finding this binary")?;
    std::fs::create_dir_all(args.out.join("logs"))
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    let dir = shardlm_model::ModelDir::open(&args.model_dir)?;
    let (prompt, prompt_tokens) = prompt::sweep_prompt(&dir, args.prompt_tokens)?;

    let tmp = tempfile::Builder::new().prefix("shardlm-experiment-").tempdir()?;
    let ids = Identities::generate(tmp.path(), &args)?;
    let info = server_info(&bin, &args, &ids)?;
    let (variants, skipped) = select_variants(&args.variants, &info.variants)?;
    let (rtts, rates) = grid(&args);

    let scratch = args.out.join("material");
    let parties = Parties {
        client_bin: &me,
        server_bin: &bin,
        args: &args,
        ids: &ids,
        prompt: &prompt,
        scratch: &scratch,
    };
    let mut points = sweep(&parties, &variants, &rtts, &rates, prompt_tokens);
    // Each point's bundle is gone with its point; the folder is empty (or never made).
    let _ = std::fs::remove_dir(&scratch);
    let cost_models = apply_cost_model(&mut points);
    let results = Results {
        model: dir.config.name.clone(),
        machine: machine(),
        timestamp: crate::bench::rfc3339_now(),
        settings: settings(&args, &rtts, &rates, prompt_tokens, &prompt, &info),
        skipped,
        points,
        cost_models,
    };
    write_outputs(&args.out, &results)?;
    summarize(&args.out, &results)
}

/// Refuses settings that cannot make a sweep.
fn check_args(args: &ExperimentArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if args.variants.is_empty() || args.rtt.is_empty() || args.rate.is_empty() {
        bail!("--variants, --rtt and --rate each need at least one value");
    }
    if let Some(v) = args.variants.iter().find(|v| **v == Variant::Local) {
        bail!("`{v}` has no server party; sweep private variants (v2, v3, v3-mpc, v3-ot, v3-cc, ...)");
    }
    Ok(())
}

/// The variants asked for that the server serves, and a note (also printed) for each
/// one it does not; an error when it serves none of them. A fully private variant is
/// served when this build implements it: the sweep deals its material and starts each
/// of its points' servers with their part (the server asked here holds none, so it
/// does not list them).
fn select_variants(asked: &[Variant], served: &[String]) -> Result<(Vec<Variant>, Vec<String>)> {
    let mut variants = Vec::new();
    let mut skipped = Vec::new();
    for v in asked {
        let note = if dealt_by_sweep(*v) {
            match shardlm_variants::registry::implemented(*v) {
                Ok(_) => None,
                Err(e) => Some(format!("{v}: {e}; skipped")),
            }
        } else if served.iter().any(|s| s == v.name()) {
            None
        } else {
            Some(format!("{v}: not served by this server (it serves {}); skipped", served.join(", ")))
        };
        match note {
            None => variants.push(*v),
            Some(note) => {
                eprintln!("note: {note}");
                skipped.push(note);
            }
        }
    }
    if variants.is_empty() {
        bail!("none of the variants asked for is served by this server (it serves {})", served.join(", "));
    }
    Ok((variants, skipped))
}

/// The sweep's RTTs, ascending, and rates, descending, each without repeats.
fn grid(args: &ExperimentArgs) -> (Vec<Duration>, Vec<u64>) {
    let mut rtts = args.rtt.clone();
    rtts.sort();
    rtts.dedup();
    let mut rates = args.rate.clone();
    rates.sort_by(|a, b| b.cmp(a));
    rates.dedup();
    (rtts, rates)
}

/// Runs every point, rate by rate, RTT by RTT, and at each link every variant in turn
/// (so variants compared at one link run minutes apart, not a whole variant's sweep
/// apart: a shared machine's speed drifts), with a progress bar on a terminal; a point
/// that fails is kept with its error, and the sweep goes on. Points are returned
/// variant by variant, rate by rate, RTT by RTT.
fn sweep(
    parties: &Parties<'_>,
    variants: &[Variant],
    rtts: &[Duration],
    rates: &[u64],
    prompt_tokens: usize,
) -> Vec<Point> {
    let args = parties.args;
    let bar = progress_bar((variants.len() * rtts.len() * rates.len()) as u64);
    let mut points = Vec::new();
    for &rate in rates {
        for &rtt in rtts {
            for v in variants {
                let name = format!("{v}-rtt{}-{}", format_ms(rtt), format_rate(rate));
                bar.set_message(format!("{v} rtt {} rate {}", format_ms(rtt), format_rate(rate)));
                let link = LinkConfig {
                    delay: rtt / 2,
                    rate_bps: Some(rate),
                    queue_bytes: args.queue,
                    ..LinkConfig::default()
                };
                let mut point = planned_point(args, *v, rtt, rate, &link, prompt_tokens);
                if let Err(e) = parties.run_point(*v, &name, link, &mut point) {
                    bar.suspend(|| eprintln!("point {name} failed: {e:#}"));
                    point.error = Some(format!("{e:#}"));
                }
                points.push(point);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    // Stable: within a variant, the run order (rates, then RTTs) is kept.
    points.sort_by_key(|p: &Point| variants.iter().position(|v| v.to_string() == p.variant));
    points
}

/// A progress bar of `total` points on a terminal, a hidden one otherwise.
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:40} [{bar:30}] {pos}/{len} points ({elapsed}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// A point before it runs: what is asked of it, nothing measured yet.
fn planned_point(
    args: &ExperimentArgs,
    v: Variant,
    rtt: Duration,
    rate: u64,
    link: &LinkConfig,
    prompt_tokens: usize,
) -> Point {
    Point {
        variant: v.to_string(),
        rtt_ms: rtt.as_secs_f64() * 1e3,
        rate_bps: rate,
        rate: format_rate(rate),
        link: link.clone(),
        measured_link: None,
        measured_rtt_ms: 0.0,
        prompt_tokens,
        new_tokens: args.max_new_tokens,
        runs: args.runs,
        prefill_ms: Stat::default(),
        decode_step_ms: Stat::default(),
        total_ms: Stat::default(),
        bytes_sent: 0,
        bytes_received: 0,
        rounds: 0,
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

/// The sweep's settings, as `results.json` records them.
fn settings(
    args: &ExperimentArgs,
    rtts: &[Duration],
    rates: &[u64],
    prompt_tokens: usize,
    prompt: &str,
    info: &shardlm_transport::handshake::ServerInfo,
) -> serde_json::Value {
    serde_json::json!({
        "model_dir": args.model_dir,
        "variants": args.variants.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        "rtt_ms": rtts.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        "rate_bps": rates,
        "prompt_tokens": prompt_tokens,
        "max_new_tokens": args.max_new_tokens,
        "runs": args.runs,
        "warmup": args.warmup,
        "queue_bytes": args.queue,
        "party_nice": args.party_nice,
        "prompt": prompt,
        "chunk_rows": args.chunk_rows,
        "cc_provider": args.cc_provider.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "cc_policy": args.cc_policy,
        "server_devices": info.devices,
        "server_ring_gemm_ps_per_weight": info.ring_gemm.map(|g| serde_json::json!({"per_call": g.fixed_ps, "per_row": g.row_ps})),
    })
}

/// Prints what was written where, and fails when every point failed.
fn summarize(out: &Path, results: &Results) -> Result<()> {
    let failed = results.points.iter().filter(|p| p.error.is_some()).count();
    eprintln!(
        "experiment: {} points ({} failed) in {}: results.json, results.md, {}",
        results.points.len(),
        failed,
        out.display(),
        plot_names(results).join(", ")
    );
    if failed == results.points.len() && failed > 0 {
        bail!("every point failed; see {}/logs", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fully_private_variants_are_dealt_by_the_sweep_and_the_rest_must_be_served() {
        let served: Vec<String> = ["v2", "v3"].iter().map(|s| s.to_string()).collect();
        let asked = [Variant::V2, Variant::V3Mpc, Variant::V3Ot, Variant::V3Cc];
        let (variants, skipped) = select_variants(&asked, &served).unwrap();
        // v3-mpc and v3-ot are in whenever this build implements them: the server asked
        // for its variants holds no material, each point's server gets its bundle's p1.
        let mut want = vec![Variant::V2];
        want.extend(
            [Variant::V3Mpc, Variant::V3Ot]
                .into_iter()
                .filter(|v| shardlm_variants::registry::implemented(*v).is_ok()),
        );
        assert_eq!(variants, want);
        assert!(skipped.iter().any(|n| n.starts_with("v3-cc: not served by this server")), "{skipped:?}");
        assert_eq!(skipped.len(), asked.len() - want.len(), "{skipped:?}");
        assert!(select_variants(&[Variant::V3Cc], &served).is_err());
    }
}

//! `experiment`: a sweep of variants x round-trip times x link rates through the link
//! emulator ([`crate::netem`]), with a table, plots and a cost model.
//!
//! For every point of the sweep, three parties run on 127.0.0.1: the server party
//! (`shardlm-server serve`, a subprocess with identities made for the sweep), the link
//! emulator (in this process, which does nothing else meanwhile: `delay = rtt / 2` in
//! each direction, the point's rate, a 1 MB queue), and the client party
//! (`shardlm-client benchmark`, a subprocess pointed at the emulator). The client's
//! JSON report and the emulator's counters make one point of `results.json`.
//!
//! **Prompt.** A prompt of exactly `--prompt-tokens` tokens is built from the model's
//! own tokenizer: a fixed English sentence is repeated, its token ids are cut at N and
//! decoded, and the text is kept if it encodes back to N tokens (cuts near N are tried
//! otherwise; the report states the length that was used).
//!
//! **Cost model.** Per variant, `predicted = compute + rounds x RTT + bytes / rate`, with
//! `rounds` and `bytes` (both directions, which a sequential protocol pays one after
//! the other) from the client's counters, and `compute` measured once: the total at the
//! variant's lowest-RTT, highest-rate point minus that point's own network terms. Every
//! other point is then a prediction, shown next to the measurement.

use crate::lab::netem::{
    format_ms, format_rate, parse_duration, parse_rate, parse_size, LinkConfig, Netem, NetemConfig,
    NetemStats,
};
use crate::text::TextCodec;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use shardlm_configs::Variant;
use shardlm_transport::{Identity, QuicClient, QuicConfig};
use std::io::{BufRead, BufReader, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `shardlm-client experiment`: sweep variants, RTTs and rates through the emulator.
#[derive(clap::Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// Hugging Face model directory (both parties load it).
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    pub model_dir: PathBuf,
    /// Variants to measure; those the server does not serve are skipped with a note.
    #[arg(long, value_delimiter = ',', default_value = "v2,v3,v3-mpc")]
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
}

/// Timing summary in milliseconds: the benchmark report's own type.
pub use crate::bench::Summary as Stat;

/// One point of the sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
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

/// The cost model of one variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CostModel {
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

/// The whole sweep, as written to `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
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

fn server_bin(args: &ExperimentArgs) -> Result<PathBuf> {
    if let Some(p) = &args.server_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().context("finding this binary")?;
    let p = me.with_file_name(format!("shardlm-server{}", std::env::consts::EXE_SUFFIX));
    if !p.exists() {
        bail!("{} not found: build it (`cargo build -p shardlm-server`) or pass --server-bin", p.display());
    }
    Ok(p)
}

/// A server party subprocess; killed when dropped.
struct ServerProc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Identities {
    server_dir: PathBuf,
    client_dir: PathBuf,
    server_fp: String,
    client_fp: String,
}

/// A command for a party's binary, under `nice` when asked.
fn party_command(bin: &Path, nice: i32) -> Command {
    if nice != 0 && Path::new("/usr/bin/nice").exists() {
        let mut c = Command::new("/usr/bin/nice");
        c.arg("-n").arg(nice.to_string()).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn start_server(bin: &Path, args: &ExperimentArgs, ids: &Identities, log: &Path) -> Result<ServerProc> {
    let log_file = std::fs::File::create(log)
        .with_context(|| format!("{}: cannot create the server log", log.display()))?;
    let mut child = party_command(bin, args.party_nice)
        .args(["serve", "--bind", "127.0.0.1", "--port", "0", "--idle-timeout", "30"])
        .arg("--recv-timeout")
        .arg(args.recv_timeout.to_string())
        .arg("--model-dir")
        .arg(&args.model_dir)
        .arg("--identity")
        .arg(&ids.server_dir)
        .args(["--allow-client", &ids.client_fp])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("server stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let mut proc = ServerProc { child, addr: "127.0.0.1:0".parse().map_err(|e| anyhow!("{e}"))? };
    let line = match rx.recv_timeout(Duration::from_secs(600)) {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => bail!("reading the server's first line: {e}"),
        Err(_) => bail!("the server did not start listening within 600 s (see {})", log.display()),
    };
    // "listening on ADDR (server fingerprint FP)"
    let addr = line.split_whitespace().nth(2).unwrap_or_default();
    proc.addr = addr.parse().map_err(|_| {
        anyhow!("the server did not start: it said {:?} (see {})", line.trim(), log.display())
    })?;
    Ok(proc)
}

/// Waits for `child` up to `limit`, killing it after that.
fn wait_within(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the client did not finish within {:.0} s (--point-timeout)", limit.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A prompt of `n` tokens for `codec` (see the module docs); returns it and its length.
pub fn prompt_of_length(codec: &TextCodec, n: usize) -> Result<(String, usize)> {
    if n == 0 {
        bail!("--prompt-tokens must be at least 1");
    }
    const SENTENCE: &str =
        "The two parties compute the answer together while the server never learns the prompt. ";
    let mut text = SENTENCE.to_string();
    let ids = loop {
        let ids = codec.encode(&text)?;
        if ids.len() >= n + 8 {
            break ids;
        }
        if text.len() > 64 * (n + 8) + SENTENCE.len() {
            bail!("the tokenizer makes fewer than {n} tokens of a long text; use a smaller --prompt-tokens");
        }
        text.push_str(SENTENCE);
    };
    let mut best: Option<(String, usize)> = None;
    for delta in 0..8i64 {
        for k in [n as i64 - delta, n as i64 + delta] {
            if k < 1 || k as usize > ids.len() {
                continue;
            }
            let t = codec.decode(&ids[..k as usize])?;
            let m = codec.encode(&t)?.len();
            if m == n {
                return Ok((t, n));
            }
            let closer = match &best {
                None => true,
                Some((_, b)) => m.abs_diff(n) < b.abs_diff(n),
            };
            if closer {
                best = Some((t, m));
            }
        }
    }
    best.context("no prompt could be built")
}

fn machine() -> String {
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

fn stat(v: &serde_json::Value) -> Stat {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// Runs the sweep and writes its outputs.
pub fn run_experiment(args: ExperimentArgs) -> Result<()> {
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
        bail!("`{v}` has no server party; sweep private variants (v2, v3, v3-mpc, ...)");
    }
    let bin = server_bin(&args)?;
    let me = std::env::current_exe().context("finding this binary")?;
    std::fs::create_dir_all(args.out.join("logs"))
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    let dir = shardlm_model::ModelDir::open(&args.model_dir)?;
    let codec = TextCodec::load(&dir.tokenizer)?;
    let (prompt, prompt_tokens) = prompt_of_length(&codec, args.prompt_tokens)?;
    if prompt_tokens != args.prompt_tokens {
        eprintln!(
            "note: the closest prompt this tokenizer round-trips has {prompt_tokens} tokens, not {}",
            args.prompt_tokens
        );
    }

    let tmp = tempfile::Builder::new().prefix("shardlm-experiment-").tempdir()?;
    let ids = Identities {
        server_dir: tmp.path().join("server-id"),
        client_dir: tmp.path().join("client-id"),
        server_fp: shardlm_transport::keygen(&tmp.path().join("server-id"), "shardlm-server")?,
        client_fp: shardlm_transport::keygen(&tmp.path().join("client-id"), "shardlm-client")?,
    };

    // Which variants does the server serve?
    let served = {
        let server = start_server(&bin, &args, &ids, &args.out.join("logs/server-info.log"))?;
        let identity = Identity::load(&ids.client_dir)?;
        // A few tries: an `info` answer can race the server's close of that connection.
        let mut tries = 0;
        loop {
            tries += 1;
            match QuicClient::info(server.addr, &identity, &ids.server_fp, QuicConfig::default()) {
                Ok(info) => break info,
                Err(e) if tries < 4 => {
                    tracing::debug!("info from {}: {e}; trying again", server.addr);
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("asking the server at {} which variants it serves", server.addr)
                    })
                }
            }
        }
    };
    let mut variants = Vec::new();
    let mut skipped = Vec::new();
    for v in &args.variants {
        if served.variants.iter().any(|s| s == v.name()) {
            variants.push(*v);
        } else {
            let note =
                format!("{v}: not served by this server (it serves {}); skipped", served.variants.join(", "));
            eprintln!("note: {note}");
            skipped.push(note);
        }
    }
    if variants.is_empty() {
        bail!(
            "none of the variants asked for is served by this server (it serves {})",
            served.variants.join(", ")
        );
    }
    let mut rtts = args.rtt.clone();
    rtts.sort();
    rtts.dedup();
    let mut rates = args.rate.clone();
    rates.sort_by(|a, b| b.cmp(a));
    rates.dedup();

    let total = (variants.len() * rtts.len() * rates.len()) as u64;
    let bar = if std::io::stderr().is_terminal() {
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
    };
    let mut points = Vec::new();
    for v in &variants {
        for &rate in &rates {
            for &rtt in &rtts {
                let name = format!("{v}-rtt{}-{}", format_ms(rtt), format_rate(rate));
                bar.set_message(format!("{v} rtt {} rate {}", format_ms(rtt), format_rate(rate)));
                let link = LinkConfig {
                    delay: rtt / 2,
                    rate_bps: Some(rate),
                    queue_bytes: args.queue,
                    ..LinkConfig::default()
                };
                let mut point = Point {
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
                    predicted_prefill_ms: None,
                    predicted_decode_step_ms: None,
                    predicted_total_ms: None,
                    prediction_error_pct: None,
                    prediction_error_pct_prefill_decode: None,
                    error: None,
                };
                if let Err(e) = run_point(&me, &bin, &args, &ids, *v, &prompt, &name, link, &mut point) {
                    bar.suspend(|| eprintln!("point {name} failed: {e:#}"));
                    point.error = Some(format!("{e:#}"));
                }
                points.push(point);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();

    let cost_models = apply_cost_model(&mut points);
    let results = Results {
        model: dir.config.name.clone(),
        machine: machine(),
        timestamp: crate::bench::rfc3339_now(),
        settings: serde_json::json!({
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
        }),
        skipped,
        points,
        cost_models,
    };
    write_outputs(&args.out, &results)?;
    let failed = results.points.iter().filter(|p| p.error.is_some()).count();
    eprintln!(
        "experiment: {} points ({} failed) in {}: results.json, results.md, {}",
        results.points.len(),
        failed,
        args.out.display(),
        plot_names(&results).join(", ")
    );
    if failed == results.points.len() && failed > 0 {
        bail!("every point failed; see {}/logs", args.out.display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_point(
    me: &Path,
    bin: &Path,
    args: &ExperimentArgs,
    ids: &Identities,
    variant: Variant,
    prompt: &str,
    name: &str,
    link: LinkConfig,
    point: &mut Point,
) -> Result<()> {
    let logs = args.out.join("logs");
    let server = start_server(bin, args, ids, &logs.join(format!("{name}.server.log")))?;
    let netem = Netem::start(NetemConfig::symmetric(
        "127.0.0.1:0".parse().map_err(|e| anyhow!("{e}"))?,
        server.addr,
        link,
        1,
    ))?;
    let report_path = logs.join(format!("{name}.report.json"));
    let client_log = logs.join(format!("{name}.client.log"));
    let rtt_s = point.rtt_ms / 1e3;
    let mut child = party_command(me, args.party_nice)
        .arg("benchmark")
        .arg("--model-dir")
        .arg(&args.model_dir)
        .args(["--endpoint", variant.name(), "-s", &netem.listen_addr().to_string()])
        .arg("--identity")
        .arg(&ids.client_dir)
        .args(["--server-fingerprint", &ids.server_fp, "-p", prompt])
        .args(["--max-tokens", &args.max_new_tokens.to_string(), "--runs", &args.runs.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--connect-timeout", &(10.0 + 10.0 * rtt_s).to_string(), "--idle-timeout", "30"])
        .args(["--recv-timeout", &args.recv_timeout.to_string()])
        .arg("--output")
        .arg(&report_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&client_log)?)
        .spawn()
        .context("starting the client party")?;
    let status = wait_within(&mut child, args.point_timeout);
    let stats = netem.stop();
    drop(server);
    point.measured_rtt_ms = stats.measured_rtt_ms();
    point.measured_link = Some(stats);
    let status = status?;
    if !status.success() {
        let log = std::fs::read_to_string(&client_log).unwrap_or_default();
        let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)");
        bail!("the client failed ({status}): {last}");
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path)
            .with_context(|| format!("{}: no report", report_path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", report_path.display()))?;
    let r = &report["results"];
    point.prefill_ms = stat(&r["prefill"]);
    point.decode_step_ms = stat(&r["decode_step"]);
    point.total_ms = stat(&r["total"]);
    point.bytes_sent = report["bytes_sent"].as_u64().unwrap_or(0);
    point.bytes_received = report["bytes_received"].as_u64().unwrap_or(0);
    point.rounds = report["rounds"].as_u64().unwrap_or(0);
    if let Some(n) = report["config"]["prompt_tokens"].as_u64() {
        point.prompt_tokens = n as usize;
    }
    Ok(())
}

/// The network terms of the cost model for one point, ms: the whole run, the prefill,
/// and one decode step. A run is `new_tokens` forward passes (the prefill gives the
/// first token); rounds are split evenly between passes, bytes in proportion to the
/// tokens each pass processes (exact for v2's linear layers, an estimate elsewhere).
fn network_ms(p: &Point) -> (f64, f64, f64) {
    let passes = p.new_tokens.max(1) as f64;
    let tokens = (p.prompt_tokens + p.new_tokens.max(1) - 1) as f64;
    let rounds_per_pass = p.rounds as f64 / passes;
    let bytes_ms = (p.bytes_sent + p.bytes_received) as f64 * 8.0 / p.rate_bps as f64 * 1e3;
    let total = p.rounds as f64 * p.rtt_ms + bytes_ms;
    let prefill = rounds_per_pass * p.rtt_ms + bytes_ms * p.prompt_tokens as f64 / tokens;
    let step = rounds_per_pass * p.rtt_ms + bytes_ms / tokens;
    (total, prefill, step)
}

/// Fits `compute` per variant at its reference point and predicts every point.
pub fn apply_cost_model(points: &mut [Point]) -> Vec<CostModel> {
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

fn fmt_bytes(b: u64) -> String {
    if b >= 10_000_000 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else if b >= 10_000 {
        format!("{:.1} kB", b as f64 / 1e3)
    } else {
        format!("{b} B")
    }
}

/// The markdown table of `results.md`.
pub fn render_markdown(r: &Results) -> String {
    let mut s = format!("# Network sweep: {}\n\n", r.model);
    s += &format!(
        "Machine: {}. {}. Client and server party and the emulator on 127.0.0.1.\n\n",
        r.machine, r.timestamp
    );
    s += &format!(
        "Prompt {} tokens, {} new tokens, {} runs per point (+{} warmup). Times in ms, mean (p50 / p95). \
         RTT measured = delay the emulator really added, both ways. Predicted = compute + rounds x RTT + bytes / rate.\n\n",
        r.settings["prompt_tokens"], r.settings["max_new_tokens"], r.settings["runs"], r.settings["warmup"]
    );
    for note in &r.skipped {
        s += &format!("- skipped: {note}\n");
    }
    if !r.skipped.is_empty() {
        s += "\n";
    }
    s += "| variant | RTT | rate | RTT measured | prefill | predicted | per token | predicted | total | predicted | sent | received | rounds |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for p in &r.points {
        if let Some(e) = &p.error {
            s += &format!(
                "| {} | {} ms | {} | failed: {} | | | | | | | | | |\n",
                p.variant,
                p.rtt_ms,
                p.rate,
                e.replace('|', "/")
            );
            continue;
        }
        let t = |x: &Stat| format!("{:.1} ({:.1} / {:.1})", x.mean, x.p50, x.p95);
        let pr = |x: Option<f64>, e: Option<f64>| match (x, e) {
            (Some(x), Some(e)) => format!("{x:.1} ({e:+.0}%)"),
            _ => "-".into(),
        };
        let (ep, ed) =
            p.prediction_error_pct_prefill_decode.map_or((None, None), |(a, b)| (Some(a), Some(b)));
        s += &format!(
            "| {} | {} ms | {} | {:.2} ms | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} |\n",
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
            p.rounds
        );
    }
    s += "\n## Cost model\n\npredicted = compute + rounds x RTT + bytes / rate, compute fitted at the variant's lowest-RTT, highest-rate point; \
          per phase, rounds split evenly over the forward passes and bytes in proportion to the tokens processed.\n\n\
          | variant | compute: run / prefill / step (ms) | fitted at | rounds | bytes | mean abs error: total / prefill / step |\n|---|---|---|---|---|---|\n";
    for m in &r.cost_models {
        let errs = match (m.mean_abs_error_pct, m.mean_abs_error_pct_prefill_decode) {
            (Some(t), Some((p, d))) => format!("{t:.1}% / {p:.1}% / {d:.1}%"),
            _ => "-".into(),
        };
        s += &format!(
            "| {} | {:.1} / {:.1} / {:.2} | {} ms, {} | {} | {} | {} |\n",
            m.variant,
            m.compute_ms,
            m.compute_prefill_ms,
            m.compute_decode_step_ms,
            m.reference_rtt_ms,
            m.reference_rate,
            m.rounds,
            fmt_bytes(m.bytes),
            errs
        );
    }
    s
}

fn plot_names(r: &Results) -> Vec<String> {
    let mut v: Vec<String> = r.cost_models.iter().map(|m| format!("latency-{}.svg", m.variant)).collect();
    if !r.cost_models.is_empty() {
        v.push("bytes.svg".into());
    }
    v
}

/// Writes results.json, results.md and the SVG plots into `out`.
pub fn write_outputs(out: &Path, r: &Results) -> Result<()> {
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

const COLORS: [plotters::style::RGBColor; 6] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(23, 190, 207),
];

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// Latency vs RTT for one variant: prefill, per-token and total, one line per rate, the
/// cost model's prediction dashed.
fn plot_latency(path: &Path, r: &Results, variant: &str) -> Result<()> {
    use plotters::prelude::*;
    let pts: Vec<&Point> = r.points.iter().filter(|p| p.variant == variant && p.error.is_none()).collect();
    let mut rates: Vec<u64> = pts.iter().map(|p| p.rate_bps).collect();
    rates.sort_by(|a, b| b.cmp(a));
    rates.dedup();
    let xmin = pts.iter().map(|p| p.rtt_ms).fold(f64::INFINITY, f64::min).max(1e-3);
    let xmax = pts.iter().map(|p| p.rtt_ms).fold(0.0, f64::max).max(xmin * 1.01);
    let root = SVGBackend::new(path, (1500, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root
        .titled(&format!("{variant} on {}: latency vs RTT (one line per rate)", r.model), ("sans-serif", 20))
        .map_err(plot_err)?;
    let panels = root.split_evenly((1, 3));
    type Getter = fn(&Point) -> f64;
    type Predicted = fn(&Point) -> Option<f64>;
    let series: [(&str, Getter, Predicted); 3] = [
        ("prefill (ms)", |p| p.prefill_ms.mean, |p| p.predicted_prefill_ms),
        ("per token, decode step (ms)", |p| p.decode_step_ms.mean, |p| p.predicted_decode_step_ms),
        ("total per generation (ms)", |p| p.total_ms.mean, |p| p.predicted_total_ms),
    ];
    for (panel, (title, get, predicted)) in panels.iter().zip(series) {
        let ymax =
            pts.iter().map(|p| get(p).max(predicted(p).unwrap_or(0.0))).fold(0.0, f64::max).max(1e-3) * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), 0f64..ymax)
            .map_err(plot_err)?;
        chart.configure_mesh().x_desc("RTT (ms, log)").y_desc("ms").draw().map_err(plot_err)?;
        for (k, rate) in rates.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let mut line: Vec<(f64, f64)> =
                pts.iter().filter(|p| p.rate_bps == *rate).map(|p| (p.rtt_ms, get(p))).collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(format_rate(*rate))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart
                .draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled())))
                .map_err(plot_err)?;
            {
                let mut pred: Vec<(f64, f64)> = pts
                    .iter()
                    .filter(|p| p.rate_bps == *rate)
                    .filter_map(|p| predicted(p).map(|y| (p.rtt_ms, y)))
                    .collect();
                pred.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(DashedLineSeries::new(pred, 6, 4, color.stroke_width(1)))
                    .map_err(plot_err)?
                    .label(format!("{} predicted", format_rate(*rate)))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], color.stroke_width(1)));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Bytes per generation for each variant, each direction.
fn plot_bytes(path: &Path, r: &Results) -> Result<()> {
    use plotters::prelude::*;
    let models = &r.cost_models;
    let bars: Vec<(String, f64, f64)> = models
        .iter()
        .map(|m| {
            let p = r.points.iter().find(|p| p.variant == m.variant && p.error.is_none());
            (
                m.variant.clone(),
                p.map_or(0.0, |p| p.bytes_sent as f64 / 1e6),
                p.map_or(0.0, |p| p.bytes_received as f64 / 1e6),
            )
        })
        .collect();
    let ymax = bars.iter().map(|b| b.1.max(b.2)).fold(0.0, f64::max).max(1e-6) * 1.2;
    let root = SVGBackend::new(path, (300 + 160 * bars.len() as u32, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("bytes per generation on {} (MB)", r.model), ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(bars.len() as f64 - 0.5), 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("MB")
        .draw()
        .map_err(plot_err)?;
    for (k, (label, pick)) in [("client to server", 0usize), ("server to client", 1)].into_iter().enumerate()
    {
        let color = COLORS[k];
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let y = if pick == 0 { b.1 } else { b.2 };
                let x0 = i as f64 - 0.35 + 0.35 * k as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.33, y)], color.filled())
            }))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            predicted_prefill_ms: None,
            predicted_decode_step_ms: None,
            predicted_total_ms: None,
            prediction_error_pct: None,
            prediction_error_pct_prefill_decode: None,
            error: None,
        }
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

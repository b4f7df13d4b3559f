//! Running the parties of a sweep on 127.0.0.1.
//!
//! Before the sweep, [`Identities::generate`] makes a server and a client identity
//! that allow each other, and [`served_variants`] starts a server party once to ask it
//! which variants it serves. For each point, [`Parties::run_point`] starts a fresh
//! server party (`shardlm-server serve`, port 0: it prints the address it got), the
//! link emulator in front of it (in this process), and the client party
//! (`shardlm-client benchmark`, pointed at the emulator, writing a JSON report); it
//! waits for the client within `--point-timeout`, stops the emulator and the server,
//! and fills the point from the emulator's counters and the client's report. Both
//! parties run under `nice` when `--party-nice` asks, and log into `logs/`.
//!
//! A fully private variant (v3-mpc, v3-ot) needs both parties' material. Before its
//! point starts, [`Parties::deal`] runs a dealer as a process of its own, separate from
//! both parties (`shardlm-client dealer --role independent`, the sweep's client bound),
//! for the point's warmup and measured runs; the server party is started with the
//! bundle's `p1`, the client with its `p0`, and the bundle is deleted after the point.
//! Dealing is offline work: it is not part of any measurement.

use super::report::{Point, Stat};
use super::ExperimentArgs;
use crate::lab::netem::{format_rate, LinkConfig, Netem, NetemConfig};
use anyhow::{anyhow, bail, Context, Result};
use shardlm_attest::ProviderKind;
use shardlm_configs::Variant;
use shardlm_transport::handshake::ServerInfo;
use shardlm_transport::{Identity, QuicClient, QuicConfig};
use shardlm_variants::registry::{self, MaterialNeed};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server party's binary: `--server-bin`, or `shardlm-server` next to this one.
pub(super) fn server_bin(args: &ExperimentArgs) -> Result<PathBuf> {
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

/// The identities of a sweep's two parties: directories and fingerprints.
pub(super) struct Identities {
    server_dir: PathBuf,
    client_dir: PathBuf,
    server_fp: String,
    client_fp: String,
    /// The software attestation provider's test CA, when the sweep has v3-cc attested
    /// by it.
    software_ca: Option<PathBuf>,
}

impl Identities {
    /// Makes a server and a client identity under `dir` (and a software-attestation test
    /// CA when the sweep's v3-cc uses that provider).
    pub(super) fn generate(dir: &Path, args: &ExperimentArgs) -> Result<Self> {
        let software_ca = if cc_sweep(args) && args.cc_provider.contains(&ProviderKind::Software) {
            let ca = dir.join("cc-software-ca");
            shardlm_attest::software::make_ca(&ca)?;
            Some(ca)
        } else {
            None
        };
        Ok(Identities {
            server_dir: dir.join("server-id"),
            client_dir: dir.join("client-id"),
            server_fp: shardlm_transport::keygen(&dir.join("server-id"), "shardlm-server")?,
            client_fp: shardlm_transport::keygen(&dir.join("client-id"), "shardlm-client")?,
            software_ca,
        })
    }
}

/// Whether the sweep measures v3-cc (only then are its servers started with providers).
fn cc_sweep(args: &ExperimentArgs) -> bool {
    args.variants.contains(&Variant::V3Cc) && !args.cc_provider.is_empty()
}

/// The server's v3-cc flags.
fn cc_server_flags(args: &ExperimentArgs, ids: &Identities) -> Vec<std::ffi::OsString> {
    if !cc_sweep(args) {
        return vec![];
    }
    let names: Vec<String> = args.cc_provider.iter().map(|p| p.to_string()).collect();
    let mut flags: Vec<std::ffi::OsString> = vec!["--cc-provider".into(), names.join(",").into()];
    if let Some(ca) = &ids.software_ca {
        flags.extend(["--cc-software-ca".into(), ca.clone().into_os_string()]);
    }
    flags
}

/// The client's v3-cc flags.
fn cc_client_flags(args: &ExperimentArgs, ids: &Identities, variant: Variant) -> Vec<std::ffi::OsString> {
    let mut flags: Vec<std::ffi::OsString> = vec![];
    if variant != Variant::V3Cc {
        return flags;
    }
    if let Some(policy) = &args.cc_policy {
        flags.extend(["--cc-policy".into(), policy.clone().into_os_string()]);
    }
    if let Some(ca) = &ids.software_ca {
        flags.extend([
            "--insecure-software-attestation".into(),
            "--cc-software-ca".into(),
            ca.join("ca.pem").into(),
        ]);
    }
    flags
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

/// Whether the sweep deals `variant`'s material for each of its points: the fully
/// private variants, whose server party holds a part of every bundle.
pub(super) fn dealt_by_sweep(variant: Variant) -> bool {
    registry::spec(variant).material == MaterialNeed::BothParties
}

/// One point's bundle of a fully private variant; deleted when dropped (its material
/// is one-time, and a large model's is many GB).
struct PointBundle {
    dir: PathBuf,
}

impl PointBundle {
    /// P0's part, for the client party.
    fn client_part(&self) -> PathBuf {
        self.dir.join("p0")
    }

    /// P1's part, for the server party.
    fn server_part(&self) -> PathBuf {
        self.dir.join("p1")
    }
}

impl Drop for PointBundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a server party (port 0, allowing the sweep's client, serving from `material`
/// when given: P1's part of a bundle) and waits for the address it listens on, the
/// first line it prints.
fn start_server(
    bin: &Path,
    args: &ExperimentArgs,
    ids: &Identities,
    log: &Path,
    material: Option<&Path>,
) -> Result<ServerProc> {
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
        .args(cc_server_flags(args, ids))
        .args(material.map(|m| vec![std::ffi::OsStr::new("--material"), m.as_os_str()]).unwrap_or_default())
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

/// Starts a server party and asks it what it serves (variants, devices, the GEMM cost
/// it measured at start).
pub(super) fn server_info(bin: &Path, args: &ExperimentArgs, ids: &Identities) -> Result<ServerInfo> {
    let server = start_server(bin, args, ids, &args.out.join("logs/server-info.log"), None)?;
    let identity = Identity::load(&ids.client_dir)?;
    // A few tries: an `info` answer can race the server's close of that connection.
    let mut tries = 0;
    loop {
        tries += 1;
        match QuicClient::info(server.addr, &identity, &ids.server_fp, QuicConfig::default()) {
            Ok(info) => return Ok(info),
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

/// What every point of a sweep shares: the two binaries, the settings, the identities
/// and the prompt.
pub(super) struct Parties<'a> {
    /// This binary, run as the client party (`benchmark`).
    pub(super) client_bin: &'a Path,
    /// The server party's binary.
    pub(super) server_bin: &'a Path,
    /// The sweep's settings.
    pub(super) args: &'a ExperimentArgs,
    /// Both parties' identities.
    pub(super) ids: &'a Identities,
    /// The prompt of every run.
    pub(super) prompt: &'a str,
    /// Where the fully private variants' bundles are dealt, one point's at a time
    /// (`OUT/material`).
    pub(super) scratch: &'a Path,
}

impl Parties<'_> {
    /// Runs one point (see the module docs): `link` both ways, logs and the client's
    /// report under `logs/<name>.*`; fills `point` with what was measured.
    pub(super) fn run_point(
        &self,
        variant: Variant,
        name: &str,
        link: LinkConfig,
        point: &mut Point,
    ) -> Result<()> {
        let logs = self.args.out.join("logs");
        let bundle = self.deal(variant, name, point.prompt_tokens)?;
        let server = start_server(
            self.server_bin,
            self.args,
            self.ids,
            &logs.join(format!("{name}.server.log")),
            bundle.as_ref().map(PointBundle::server_part).as_deref(),
        )?;
        let netem = Netem::start(NetemConfig::symmetric(
            "127.0.0.1:0".parse().map_err(|e| anyhow!("{e}"))?,
            server.addr,
            link,
            1,
        ))?;
        let report_path = logs.join(format!("{name}.report.json"));
        let client_log = logs.join(format!("{name}.client.log"));
        let mut child = self.spawn_client(
            variant,
            netem.listen_addr(),
            point,
            bundle.as_ref().map(PointBundle::client_part).as_deref(),
            &report_path,
            &client_log,
        )?;
        let status = wait_within(&mut child, self.args.point_timeout);
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
        read_report(&report_path, point)
    }

    /// Deals the bundle of one point of a fully private variant (`None` for the other
    /// variants): a dealer process separate from both parties, for `prompt_tokens` (the
    /// length the client's prompt has) and the point's warmup and measured runs, one
    /// session each, bound to the sweep's client. Its output goes to
    /// `logs/<name>.dealer.log`.
    fn deal(&self, variant: Variant, name: &str, prompt_tokens: usize) -> Result<Option<PointBundle>> {
        if !dealt_by_sweep(variant) {
            return Ok(None);
        }
        let args = self.args;
        let bundle = PointBundle { dir: self.scratch.join(format!("{name}.bundle")) };
        // A bundle left by an earlier point of the same name is spent or half-written.
        let _ = std::fs::remove_dir_all(&bundle.dir);
        let log_path = args.out.join("logs").join(format!("{name}.dealer.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("{}: cannot create the dealer log", log_path.display()))?;
        let status = Command::new(self.client_bin)
            .arg("dealer")
            .arg("--model-dir")
            .arg(&args.model_dir)
            .args([
                "--variant",
                variant.name(),
                "--role",
                "independent",
                "--bind-client",
                &self.ids.client_fp,
            ])
            .args(["--prompt-tokens", &prompt_tokens.to_string()])
            .args(["--max-new-tokens", &args.max_new_tokens.to_string()])
            .args(["--sessions", &(args.warmup + args.runs).to_string()])
            .arg("--out")
            .arg(&bundle.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("starting the dealer")?;
        if !status.success() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)");
            bail!("the dealer failed ({status}): {last}");
        }
        Ok(Some(bundle))
    }

    /// Starts the client party's benchmark of `point` through the emulator at `via`,
    /// with `material` (P0's part of the point's bundle) when given.
    fn spawn_client(
        &self,
        variant: Variant,
        via: SocketAddr,
        point: &Point,
        material: Option<&Path>,
        report_path: &Path,
        client_log: &Path,
    ) -> Result<Child> {
        let args = self.args;
        let ids = self.ids;
        let (rtt_s, rate_bps) = (point.rtt_ms / 1e3, point.rate_bps);
        party_command(self.client_bin, args.party_nice)
            .arg("benchmark")
            .arg("--model-dir")
            .arg(&args.model_dir)
            .args(["--endpoint", variant.name(), "-s", &via.to_string()])
            .arg("--identity")
            .arg(&ids.client_dir)
            .args(["--server-fingerprint", &ids.server_fp, "-p", self.prompt])
            .args(["--max-tokens", &args.max_new_tokens.to_string(), "--runs", &args.runs.to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .args(["--connect-timeout", &(10.0 + 10.0 * rtt_s).to_string(), "--idle-timeout", "30"])
            .args(["--recv-timeout", &args.recv_timeout.to_string()])
            .args(cc_client_flags(args, ids, variant))
            .args(
                material.map(|m| vec![std::ffi::OsStr::new("--material"), m.as_os_str()]).unwrap_or_default(),
            )
            .args(match (variant, args.chunk_rows) {
                (Variant::V3, Some(rows)) => vec!["--chunk-rows".to_string(), rows.to_string()],
                // The emulated link's rate, for the client's chunk model (a user states
                // their link's the same way).
                (Variant::V3, None) => vec!["--link-rate".to_string(), format_rate(rate_bps)],
                _ => vec![],
            })
            .arg("--output")
            .arg(report_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(client_log)?)
            .spawn()
            .context("starting the client party")
    }
}

/// Fills `point` from the client's benchmark report: timings, bytes, rounds, and the
/// prompt length it really used.
fn read_report(report_path: &Path, point: &mut Point) -> Result<()> {
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report_path)
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
    point.setup_rounds = report["setup_rounds"].as_u64().unwrap_or(0);
    point.setup_bytes = report["setup_bytes"].as_u64().unwrap_or(0);
    point.prefill_chunks = report["prefill_chunks"].as_u64().unwrap_or(1).max(1) as usize;
    point.attestation = report["config"]["attestation"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if let Some(n) = report["config"]["prompt_tokens"].as_u64() {
        point.prompt_tokens = n as usize;
    }
    Ok(())
}

/// A timing summary of the report, or zeros where it is missing.
fn stat(v: &serde_json::Value) -> Stat {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

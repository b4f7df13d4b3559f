//! The link emulator and the sweep runner (issue 8), on 127.0.0.1 only: the emulator
//! adds the configured delay and holds the configured rate within 10%; a lossy link
//! makes QUIC retransmit and a v2 session through it still produces the plaintext
//! engine's output; a link dead from the start, or dying mid-session, makes the client
//! fail with a timeout naming the peer;
//! a two-point sweep writes results.json, results.md and SVG plots.

use shardlm_client::lab::netem::{LinkConfig, Netem, NetemConfig};
use shardlm_testkit::bins::{Binaries, Server};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timing tests (delay, rate) and tests that run both parties do not overlap: on a
/// 2-core machine the parties' compute would delay the emulator's wake-ups and the echo
/// thread, and the tests would measure the machine rather than the emulator.
static CPU: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    CPU.lock().unwrap_or_else(|p| p.into_inner())
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A UDP echo server on 127.0.0.1; stops when the flag is set.
fn echo_server(stop: Arc<AtomicBool>) -> SocketAddr {
    let sock = UdpSocket::bind(localhost()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    addr
}

/// Median round trip of `n` sequential pings to `to`.
fn median_rtt(to: SocketAddr, n: usize) -> Duration {
    let sock = UdpSocket::bind(localhost()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..n as u32 {
        let t = Instant::now();
        sock.send_to(&i.to_le_bytes(), to).unwrap();
        loop {
            let (m, _) = sock.recv_from(&mut buf).expect("echo answered");
            if m == 4 && buf[..4] == i.to_le_bytes() {
                break;
            }
        }
        rtts.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    rtts.sort();
    rtts[n / 2]
}

/// One measurement of a link with `delay_ms` each way: `Err` says what was off.
fn check_delay(echo: SocketAddr, base: Duration, delay_ms: f64) -> Result<(), String> {
    let link = LinkConfig { delay: Duration::from_secs_f64(delay_ms / 1e3), ..LinkConfig::default() };
    let netem = Netem::start(NetemConfig::symmetric(localhost(), echo, link, 1)).unwrap();
    let rtt = median_rtt(netem.listen_addr(), 40);
    let stats = netem.stop();
    for d in [&stats.upstream, &stats.downstream] {
        assert_eq!(d.packets_delivered, 40, "nothing may be lost on a delay-only link");
    }
    // End to end: what the emulator added to the round trip. Besides the delay that
    // includes relaying each datagram twice (receive, hand-off, timed send), a few hundred
    // microseconds of wake-ups on a busy 2-core machine (seen: +0.42 ms on 4 ms, every
    // try); the emulator's own per-direction measurement below is held to 10% alone.
    let added = rtt.saturating_sub(base).as_secs_f64() * 1e3;
    let slack = (0.1 * 2.0 * delay_ms).max(0.6);
    if (added - 2.0 * delay_ms).abs() > slack {
        return Err(format!("round trip grew by {added:.3} ms (base {base:?})"));
    }
    // As the emulator measured it, each direction.
    for (name, d) in [("upstream", &stats.upstream), ("downstream", &stats.downstream)] {
        let p50 = d.added_delay.p50_ms;
        if (p50 - delay_ms).abs() > 0.1 * delay_ms {
            return Err(format!("{name} measured {p50:.3} ms at p50"));
        }
    }
    Ok(())
}

#[test]
fn delay_is_added_within_ten_percent() {
    let _cpu = exclusive();
    let stop = Arc::new(AtomicBool::new(false));
    let echo = echo_server(stop.clone());
    let base = median_rtt(echo, 30);
    for delay_ms in [2.0f64, 10.0] {
        // The build machine is shared: a burst of other work can delay a wake-up by more
        // than the 0.2 ms that 10% of 2 ms allows. Three tries; one must be clean.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match check_delay(echo, base, delay_ms) {
                Ok(()) => break,
                Err(e) => failures.push(e),
            }
        }
        assert!(
            failures.len() < 3,
            "delay {delay_ms} ms each way, configured +-10% (end to end at least +-0.6 ms): {failures:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn rate_is_held_within_ten_percent_and_the_queue_tail_drops() {
    let _cpu = exclusive();
    let rate_bps = 40_000_000u64;
    let sink = UdpSocket::bind(localhost()).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let link = LinkConfig { rate_bps: Some(rate_bps), queue_bytes: 128_000, ..LinkConfig::default() };
    let netem =
        Netem::start(NetemConfig::symmetric(localhost(), sink.local_addr().unwrap(), link, 1)).unwrap();
    let to = netem.listen_addr();
    // Offer about twice the rate for 0.6 s.
    let sender = std::thread::spawn(move || {
        let sock = UdpSocket::bind(localhost()).unwrap();
        let payload = [7u8; 1200];
        let t = Instant::now();
        let mut sent = 0u64;
        while t.elapsed() < Duration::from_millis(600) {
            let due = (t.elapsed().as_secs_f64() * 2.0 * rate_bps as f64 / 8.0) as u64;
            while sent < due {
                let _ = sock.send_to(&payload, to);
                sent += payload.len() as u64;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    let mut buf = [0u8; 2048];
    let (mut first, mut last, mut bytes, mut first_len) = (None, Instant::now(), 0u64, 0u64);
    while let Ok(n) = sink.recv(&mut buf) {
        let now = Instant::now();
        if first.is_none() {
            first = Some(now);
            first_len = n as u64;
        }
        last = now;
        bytes += n as u64;
    }
    sender.join().unwrap();
    let stats = netem.stop();
    let secs = (last - first.expect("datagrams arrived")).as_secs_f64();
    let got = (bytes - first_len) as f64 * 8.0 / secs;
    assert!(secs > 0.4, "only {secs:.3} s of traffic");
    assert!(
        (got - rate_bps as f64).abs() <= 0.1 * rate_bps as f64,
        "rate {:.2} Mbit/s, configured {:.2}",
        got / 1e6,
        rate_bps as f64 / 1e6
    );
    let up = &stats.upstream;
    assert!(up.dropped_queue > 0, "twice the rate must overflow the queue: {up:?}");
    assert!(up.max_queue_bytes <= 128_000);
    assert_eq!(
        up.packets_in,
        up.packets_delivered + up.dropped_queue + up.dropped_loss + up.dropped_send + up.in_flight
    );
}

/// Sends `n` numbered datagrams through `link` to a sink and returns the numbers in the
/// order they arrived, with the emulator's counters.
fn numbered_through(
    link: LinkConfig,
    seed: u64,
    n: u32,
) -> (Vec<u32>, shardlm_client::lab::netem::NetemStats) {
    let sink = UdpSocket::bind(localhost()).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let netem =
        Netem::start(NetemConfig::symmetric(localhost(), sink.local_addr().unwrap(), link, seed)).unwrap();
    // Read while sending: a sink that waits could overflow its socket buffer.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while let Ok(m) = sink.recv(&mut buf) {
            if m == 4 {
                got.push(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
        }
        got
    });
    let sock = UdpSocket::bind(localhost()).unwrap();
    for i in 0..n {
        sock.send_to(&i.to_le_bytes(), netem.listen_addr()).unwrap();
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    let got = reader.join().unwrap();
    (got, netem.stop())
}

#[test]
fn jitter_keeps_order_reorder_breaks_it_and_loss_is_seeded() {
    let jitter = LinkConfig {
        delay: Duration::from_millis(3),
        jitter: Duration::from_millis(2),
        ..LinkConfig::default()
    };
    let (got, stats) = numbered_through(jitter, 1, 300);
    assert_eq!(got, (0..300).collect::<Vec<_>>(), "jitter alone must keep the link FIFO");
    assert!(stats.upstream.added_delay.max_ms >= 3.0);

    let reorder = LinkConfig { delay: Duration::from_millis(3), reorder: 0.3, ..LinkConfig::default() };
    let (got, stats) = numbered_through(reorder, 1, 300);
    assert_eq!(got.len(), 300);
    assert!(got.windows(2).any(|w| w[0] > w[1]), "30% reorder produced no reordering");
    let r = stats.upstream.reordered as f64 / 300.0;
    assert!((0.2..0.4).contains(&r), "reordered fraction {r}");

    let lossy = LinkConfig { loss: 0.2, ..LinkConfig::default() };
    let (a, sa) = numbered_through(lossy.clone(), 7, 500);
    let (b, _) = numbered_through(lossy.clone(), 7, 500);
    let (c, _) = numbered_through(lossy, 8, 500);
    assert_eq!(a, b, "the same seed drops the same datagrams");
    assert_ne!(a, c);
    let kept = a.len() as f64 / 500.0;
    assert!((0.72..0.88).contains(&kept), "kept {kept} at 20% loss: {}", sa.render());
    assert_eq!(sa.upstream.dropped_loss + sa.upstream.packets_delivered, 500);
}

#[test]
fn datagrams_over_the_link_mtu_are_dropped_and_counted() {
    let sink = UdpSocket::bind(localhost()).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let link = LinkConfig { mtu: 1500, ..LinkConfig::default() };
    let netem =
        Netem::start(NetemConfig::symmetric(localhost(), sink.local_addr().unwrap(), link, 1)).unwrap();
    let sock = UdpSocket::bind(localhost()).unwrap();
    // 1472 = 1500 - 28 header bytes fits; 1473 and a jumbo datagram do not.
    for len in [1472usize, 1473, 8000, 100] {
        sock.send_to(&vec![7u8; len], netem.listen_addr()).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = sink.recv(&mut buf) {
        got.push(n);
    }
    let stats = netem.stop();
    assert_eq!(got, vec![1472, 100]);
    assert_eq!(stats.upstream.dropped_mtu, 2, "{}", stats.render());
}

// ---- through real parties --------------------------------------------------------

fn bins() -> Binaries {
    Binaries::beside_client(env!("CARGO_BIN_EXE_shardlm-client"))
}

fn client() -> Command {
    bins().client()
}

struct Setup {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    client_id: PathBuf,
    server_fp: String,
    server: Server,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let (sid, cid) = (tmp.path().join("server-id"), tmp.path().join("client-id"));
    let server_fp = shardlm_transport::keygen(&sid, "shardlm-server").unwrap();
    let client_fp = shardlm_transport::keygen(&cid, "shardlm-client").unwrap();
    let model = tiny_model(tmp.path());
    let server = bins().start_server(&model, &sid, &client_fp, &[]);
    Setup { _tmp: tmp, model, client_id: cid, server_fp, server }
}

fn generate(s: &Setup, through: Option<SocketAddr>, timeouts: &[&str]) -> std::process::Output {
    let mut c = client();
    c.args(["generate", "-p", "hello there", "--max-tokens", "6", "--model-dir"]).arg(&s.model);
    match through {
        None => c.arg("--local"),
        Some(addr) => c
            .args(["-s", &addr.to_string(), "--server-fingerprint", &s.server_fp, "--identity"])
            .arg(&s.client_id)
            .args(timeouts),
    };
    c.output().unwrap()
}

#[test]
fn lossy_link_retransmits_and_the_session_completes_with_correct_output() {
    let _cpu = exclusive();
    let s = setup();
    let local = generate(&s, None, &[]);
    assert!(local.status.success());
    let link = LinkConfig { delay: Duration::from_millis(1), loss: 0.05, ..LinkConfig::default() };
    let netem =
        Netem::start(NetemConfig::symmetric(localhost(), s.server.addr.parse().unwrap(), link, 42)).unwrap();
    let out = generate(&s, Some(netem.listen_addr()), &["--idle-timeout", "10", "--recv-timeout", "30"]);
    let stats = netem.stop();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.stdout, local.stdout,
        "the private output through a 5% lossy link differs from the plaintext engine's"
    );
    let lost = stats.upstream.dropped_loss + stats.downstream.dropped_loss;
    assert!(lost > 0, "5% loss dropped nothing: {}", stats.render());
    // Datagrams were dropped both ways and the output is still exact: QUIC resent what
    // was lost (the relay never drops silently: every datagram in is counted out).
    assert!(stats.upstream.dropped_loss > 0 && stats.downstream.dropped_loss > 0, "{}", stats.render());
    for d in [&stats.upstream, &stats.downstream] {
        assert_eq!(
            d.packets_in,
            d.packets_delivered
                + d.dropped_mtu
                + d.dropped_loss
                + d.dropped_queue
                + d.dropped_send
                + d.in_flight
        );
    }
    // QUIC's path MTU discovery probed past the emulated Ethernet MTU and the link
    // dropped those probes, as a real path would; the session did not depend on them.
    assert!(stats.upstream.dropped_mtu + stats.downstream.dropped_mtu > 0, "{}", stats.render());
}

#[test]
fn dead_link_fails_with_a_timeout_naming_the_peer() {
    let s = setup();
    let link = LinkConfig { loss: 1.0, ..LinkConfig::default() };
    let netem =
        Netem::start(NetemConfig::symmetric(localhost(), s.server.addr.parse().unwrap(), link, 1)).unwrap();
    let t = Instant::now();
    let out = generate(
        &s,
        Some(netem.listen_addr()),
        &["--connect-timeout", "2", "--idle-timeout", "2", "--recv-timeout", "2"],
    );
    let took = t.elapsed();
    let stats = netem.stop();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(err.contains("timed out"), "{err}");
    assert!(err.contains(&stats.listen), "the error should name the peer {}: {err}", stats.listen);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(stats.upstream.packets_delivered, 0);
    assert!(stats.upstream.dropped_loss > 0);
}

#[test]
fn link_dying_mid_session_fails_with_a_timeout_naming_the_peer() {
    let _cpu = exclusive();
    let s = setup();
    let link = LinkConfig { delay: Duration::from_millis(5), ..LinkConfig::default() };
    let netem =
        Netem::start(NetemConfig::symmetric(localhost(), s.server.addr.parse().unwrap(), link.clone(), 1))
            .unwrap();
    let mut c = client();
    c.args(["generate", "-p", "hello there", "--max-tokens", "200", "--model-dir"]).arg(&s.model);
    c.args(["-s", &netem.listen_addr().to_string(), "--server-fingerprint", &s.server_fp, "--identity"])
        .arg(&s.client_id);
    c.args(["--idle-timeout", "2", "--recv-timeout", "3"]);
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until tokens stream out (the session is past its prefill), then cut the link
    // both ways.
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = tx.send(());
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("the session streams tokens");
    let dead = LinkConfig { loss: 1.0, ..link };
    netem.set_links(dead.clone(), dead).unwrap();
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let streamed = reader.join().unwrap();
    assert!(!streamed.is_empty());
    let took = t.elapsed();
    let stats = netem.stop();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the session cannot finish over a dead link: {err}");
    assert!(took < Duration::from_secs(15), "took {took:?} after the link died");
    assert!(err.contains("timed out"), "{err}");
    assert!(err.contains(&stats.listen), "the error should name the peer {}: {err}", stats.listen);
    assert!(!err.contains("panicked"), "{err}");
    assert!(stats.upstream.dropped_loss > 0);
}

#[test]
fn netem_command_parses_its_flags_and_reports_counters() {
    let bad = client()
        .args(["netem", "--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9", "--delay", "2 weeks"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("2ms"), "{err}");
    let bad = client()
        .args(["netem", "--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9", "--rate", "fast"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("100mbit"));

    let stop = Arc::new(AtomicBool::new(false));
    let echo = echo_server(stop.clone());
    let tmp = tempfile::tempdir().unwrap();
    let stats_path = tmp.path().join("stats.json");
    let mut child = client()
        .args([
            "netem",
            "--listen",
            "127.0.0.1:0",
            "--forward",
            &echo.to_string(),
            "--delay",
            "2ms",
            "--rate",
            "100mbit",
        ])
        .args(["--loss", "0%", "--duration", "1s", "--stats-json"])
        .arg(&stats_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr =
        line.split_whitespace().nth(3).unwrap().parse().unwrap_or_else(|_| panic!("{line}"));
    let rtt = median_rtt(addr, 10);
    assert!(rtt >= Duration::from_millis(4), "{rtt:?}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream"));
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_path).unwrap()).unwrap();
    assert_eq!(stats["upstream"]["packets_delivered"], 10);
    stop.store(true, Ordering::Relaxed);
}

/// The synthetic tiny model (seed 5) in `dir/tiny`.
fn tiny_model(dir: &std::path::Path) -> std::path::PathBuf {
    let model = dir.join("tiny");
    shardlm_model::synth::write_synthetic_model(
        &shardlm_configs::ModelConfig::preset("tiny").unwrap(),
        &model,
        5,
    )
    .unwrap();
    model
}

#[test]
fn sweep_of_two_points_writes_results_table_and_plots() {
    let _cpu = exclusive();
    let _ = bins(); // asserts the server binary is built
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let out_dir = tmp.path().join("sweep");
    let out = client()
        .args(["experiment", "--variants", "v2,v3", "--rtt", "2ms,10ms", "--rate", "1gbit"])
        .args([
            "--prompt-tokens",
            "12",
            "--max-new-tokens",
            "3",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--model-dir",
        ])
        .arg(&model)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap()).unwrap();
    let points = results["points"].as_array().unwrap();
    // Two variants x two RTTs x one rate.
    let v3 = points.iter().filter(|p| p["variant"] == "v3" && p["error"].is_null()).count();
    assert_eq!(v3, 2, "v3 points: {points:?}");
    let v2: Vec<&serde_json::Value> = points.iter().filter(|p| p["variant"] == "v2").collect();
    assert_eq!(v2.len(), 2);
    for p in &v2 {
        assert!(p["error"].is_null(), "{p}");
        assert_eq!(p["prompt_tokens"], 12);
        assert!(p["rounds"].as_u64().unwrap() > 0 && p["bytes_sent"].as_u64().unwrap() > 0);
        assert!(p["prefill_ms"]["mean"].as_f64().unwrap() > 0.0);
        let (want, got) = (p["rtt_ms"].as_f64().unwrap(), p["measured_rtt_ms"].as_f64().unwrap());
        // The mean includes time in the rate stage's queue and wake-ups on a busy machine.
        assert!(got >= want * 0.9 && got <= want + 5.0, "measured RTT {got} for {want}");
        assert!(p["predicted_total_ms"].as_f64().is_some());
    }
    // More RTT costs time: rounds x 8 ms more at least, give or take noise.
    let (a, b) = (v2[0]["total_ms"]["mean"].as_f64().unwrap(), v2[1]["total_ms"]["mean"].as_f64().unwrap());
    let rounds = v2[0]["rounds"].as_f64().unwrap();
    assert!(b - a > 0.5 * rounds * 8.0, "2 ms: {a} ms, 10 ms: {b} ms, {rounds} rounds");
    let md = std::fs::read_to_string(out_dir.join("results.md")).unwrap();
    assert!(
        md.contains("| variant | RTT |") && md.contains("| v2 | 2 ms | 1gbit |") && md.contains("Cost model"),
        "{md}"
    );
    for svg in ["latency-v2.svg", "latency-v3.svg", "bytes.svg"] {
        let text = std::fs::read_to_string(out_dir.join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "{svg}");
        assert!(text.contains("<polyline") || text.contains("<path"), "{svg} has no lines");
        assert_eq!(text.matches("<svg").count(), text.matches("</svg>").count());
    }
    assert!(Path::new(&out_dir.join("logs")).is_dir());
    // Listed variant by variant, but run link by link with the variants in turn (so a
    // drifting machine cannot favour one variant): each point's report is written as it
    // ends.
    let listed: Vec<(&str, f64)> =
        points.iter().map(|p| (p["variant"].as_str().unwrap(), p["rtt_ms"].as_f64().unwrap())).collect();
    assert_eq!(listed, [("v2", 2.0), ("v2", 10.0), ("v3", 2.0), ("v3", 10.0)]);
    let ended = |name: &str| {
        std::fs::metadata(out_dir.join("logs").join(format!("{name}.report.json")))
            .unwrap()
            .modified()
            .unwrap()
    };
    let ran = ["v2-rtt2ms-1gbit", "v3-rtt2ms-1gbit", "v2-rtt10ms-1gbit", "v3-rtt10ms-1gbit"].map(ended);
    assert!(ran.windows(2).all(|w| w[0] <= w[1]), "points did not run link by link: {ran:?}");
}

#[test]
fn sweep_deals_each_fully_private_point_its_own_bundle() {
    let _cpu = exclusive();
    let _ = bins(); // asserts the server binary is built

    // Every fully private variant this build has (v3-mpc, v3-ot).
    let variants: Vec<&str> = shardlm_variants::registry::VARIANTS
        .iter()
        .filter(|s| s.implemented && s.material == shardlm_variants::registry::MaterialNeed::BothParties)
        .map(|s| s.variant.name())
        .collect();
    assert!(variants.contains(&"v3-mpc"), "{variants:?}");
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let out_dir = tmp.path().join("sweep");
    let out = client()
        .args(["experiment", "--variants", &variants.join(","), "--rtt", "2ms", "--rate", "1gbit"])
        .args(["--prompt-tokens", "8", "--max-new-tokens", "2", "--runs", "1", "--warmup", "1"])
        .arg("--model-dir")
        .arg(&model)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap()).unwrap();
    let points = results["points"].as_array().unwrap();
    assert_eq!(points.len(), variants.len(), "{points:?}");
    for (v, p) in variants.iter().zip(points) {
        assert_eq!(p["variant"], *v);
        assert!(p["error"].is_null(), "{p}");
        assert!(p["rounds"].as_u64().unwrap() > 0 && p["bytes_sent"].as_u64().unwrap() > 0, "{p}");
        // A dealer of its own dealt the point's bundle; each party was handed its part.
        let logs = out_dir.join("logs");
        let dealer = std::fs::read_to_string(logs.join(format!("{v}-rtt2ms-1gbit.dealer.log"))).unwrap();
        assert!(
            dealer.contains(&format!("for {v}")) && dealer.contains("independent of both parties"),
            "{dealer}"
        );
        let server = std::fs::read_to_string(logs.join(format!("{v}-rtt2ms-1gbit.server.log"))).unwrap();
        assert!(server.contains("material: bundle") && server.contains(&format!("for {v},")), "{server}");
    }
    // The one-time material is gone with its points.
    assert!(!out_dir.join("material").exists());
}

//! Bulk `u64` throughput over QUIC against TLS 1.3 over TCP, on loopback, in one run.
//!
//! Not a timed test: run
//!
//! ```text
//! cargo bench -p shardlm-transport --bench throughput
//! ```
//!
//! and read the table. Every row moves the same `u64` payload (default 1 GiB) one way
//! and counts from the first send to the receiver's one-byte acknowledgement, with the
//! same per-message work on both sides: encode the `u64`s to little-endian bytes before
//! sending, decode them after receiving.
//!
//! * `quic`: [`QuicChannel`] (quinn 0.11 + rustls 0.23 `ring`, mutual TLS 1.3), one
//!   lane = one QUIC stream, `send_u64s` / `recv_u64s`.
//! * `quic striped k lanes`: the messages dealt round robin over `k` lanes of one
//!   connection (`k` streams).
//! * `quic striped k conns`: the same over `k` connections (each its own runtime).
//! * `tls/tcp`: tokio + tokio-rustls with the same `ring` provider, TLS 1.3 only, a
//!   self-signed certificate, the cipher suite the two sides negotiate (printed), one
//!   TCP connection with `TCP_NODELAY`, one tokio runtime with the same number of
//!   workers as one QUIC endpoint.
//! * `tcp` (plain, no encryption): a reference for what the loopback itself costs.
//!
//! The ratio column is `MiB/s / tls-tcp MiB/s`; the goal of issue 3 is >= 0.8 for one
//! QUIC connection. `CPU s/GiB` is the whole process's CPU time (both ends, user and
//! kernel) per GiB moved: on a machine with few or busy cores it, not the link, sets the
//! rate, and unlike wall time it barely moves with other load. Ping-pong latency of an
//! 8-byte message follows.
//!
//! Environment:
//! * `SHARDLM_BENCH_MIB`: payload per row in MiB (default 1024).
//! * `SHARDLM_BENCH_MSG_MIB`: message size in MiB (default 16).
//! * `SHARDLM_BENCH_STRIPES`: comma-separated stripe counts (default `2,4`; empty: none).
//! * `SHARDLM_BENCH_WORKERS`: runtime worker threads per endpoint (default: QuicConfig's).
//! * `SHARDLM_BENCH_UDP`: MTU discovery upper bound, bytes (default: QuicConfig's, 6500;
//!   1452 shows what Ethernet-sized packets cost).
//! * `SHARDLM_BENCH_PING=0`: skip the ping-pong rows.

use shardlm_transport::{
    le_bytes_to_u64s, u64s_to_le_bytes, Channel, Identity, Lane, QuicChannel, QuicClient, QuicConfig,
    QuicServer,
};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PINGS: usize = 2000;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// `SHARDLM_BENCH_WORKERS` and `SHARDLM_BENCH_UDP` override the defaults.
fn config() -> QuicConfig {
    // A stream of 16 MiB messages: room for several in flight, as a session's budget
    // for messages this large would give.
    let mut cfg = QuicConfig { recv_budget: 256 << 20, ..QuicConfig::default() };
    if let Some(w) = env("SHARDLM_BENCH_WORKERS") {
        cfg.worker_threads = w;
    }
    if let Some(u) = env("SHARDLM_BENCH_UDP") {
        cfg.max_udp_payload = u;
    }
    cfg
}

/// CPU time (user + system) of this whole process so far, from `/proc/self/stat`
/// (clock ticks, assumed 100 per second); `None` where unavailable.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Measures `f`'s process CPU time alongside whatever it returns.
fn with_cpu<T>(f: impl FnOnce() -> T) -> (T, Option<Duration>) {
    let c0 = process_cpu();
    let out = f();
    let cpu = match (c0, process_cpu()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    (out, cpu)
}

/// One measured row.
struct Row {
    name: String,
    bytes: usize,
    time: Duration,
    /// Process CPU time (all threads, both ends) spent in the row, setup included.
    cpu: Option<Duration>,
    /// Wire bytes over payload, when known.
    note: String,
}

impl Row {
    fn mib_s(&self) -> f64 {
        mib_per_s(self.bytes, self.time)
    }

    /// CPU seconds per GiB moved, formatted.
    fn cpu_per_gib(&self) -> String {
        match self.cpu {
            Some(c) => format!("{:.2}", c.as_secs_f64() / (self.bytes as f64 / (1u64 << 30) as f64)),
            None => "-".into(),
        }
    }
}

/// The `u64` payload of one message.
fn message(words: usize) -> Vec<u64> {
    (0..words as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect()
}

// ---------------------------------------------------------------------------------------
// QUIC

fn quic_pair() -> (QuicChannel, QuicChannel) {
    let server_id = Identity::generate("bench-server").expect("keygen");
    let client_id = Identity::generate("bench-client").expect("keygen");
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = QuicServer::bind(addr, &server_id, &[client_id.fingerprint()], config()).expect("bind");
    let client = QuicClient::connect(server.local_addr(), &client_id, server.fingerprint(), config())
        .expect("connect");
    let srv = server.accept().expect("server open").expect("accept");
    // The server endpoint may go: accepted channels keep the runtime alive.
    (client, srv)
}

/// `total_mib` over `conns` connections with `lanes` lanes each, messages dealt round
/// robin over every (connection, lane).
fn quic_bulk(total_mib: usize, msg_mib: usize, conns: usize, lanes: usize) -> Row {
    let pairs: Vec<_> = (0..conns).map(|_| quic_pair()).collect();
    let (mut clients, mut servers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    let words = (msg_mib << 20) / 8;
    let n_msgs = total_mib / msg_mib;
    let data = message(words);
    let slots: Vec<(usize, Lane)> =
        (0..conns).flat_map(|c| (0..lanes).map(move |l| (c, Lane::Masked(l as u8)))).collect();
    let recv_slots = slots.clone();
    let receiver = std::thread::spawn(move || {
        for i in 0..n_msgs {
            let (c, lane) = recv_slots[i % recv_slots.len()];
            let v = servers[c].recv_u64s(lane, words).expect("recv");
            std::hint::black_box(&v);
        }
        servers[0].send_u64s(Lane::Control, &[1]).expect("ack");
        servers
    });
    let t0 = Instant::now();
    for i in 0..n_msgs {
        let (c, lane) = slots[i % slots.len()];
        clients[c].send_u64s(lane, &data).expect("send");
    }
    clients[0].recv_u64s(Lane::Control, 1).expect("ack");
    let time = t0.elapsed();
    let _servers = receiver.join().expect("receiver");
    let udp: u64 = clients.iter().map(|c| c.udp_bytes().0).sum();
    let framing: u64 = clients.iter().map(|c| c.counters().framing_bytes_sent).sum();
    let bytes = n_msgs * (msg_mib << 20);
    let name = match (conns, lanes) {
        (1, 1) => format!("quic 1 stream, {msg_mib} MiB msgs"),
        (1, l) => format!("quic striped {l} lanes, {msg_mib} MiB msgs"),
        (c, 1) => format!("quic striped {c} conns, {msg_mib} MiB msgs"),
        (c, l) => format!("quic {c} conns x {l} lanes, {msg_mib} MiB msgs"),
    };
    Row {
        name,
        bytes,
        time,
        cpu: None,
        note: format!("UDP +{:.2}% (framing {framing} B)", (udp as f64 / bytes as f64 - 1.0) * 100.0),
    }
}

fn quic_ping_pong() -> Duration {
    let (mut c, mut s) = quic_pair();
    let echo = std::thread::spawn(move || {
        for _ in 0..PINGS + 100 {
            let v = s.recv_bytes(Lane::Openings).expect("recv");
            s.send_vec(Lane::Openings, v).expect("send");
        }
        s
    });
    for _ in 0..100 {
        c.send_u64s(Lane::Openings, &[7]).expect("send");
        c.recv_u64s(Lane::Openings, 1).expect("recv");
    }
    let t0 = Instant::now();
    for i in 0..PINGS {
        c.send_u64s(Lane::Openings, &[i as u64]).expect("send");
        c.recv_u64s(Lane::Openings, 1).expect("recv");
    }
    let d = t0.elapsed();
    let _s = echo.join().expect("echo");
    d / PINGS as u32
}

// ---------------------------------------------------------------------------------------
// TLS 1.3 over TCP: tokio + tokio-rustls, ring provider, self-signed certificate

struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn tls_configs() -> Tls {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ck = rcgen::generate_simple_self_signed(vec!["bench-server".to_string()]).expect("rcgen");
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server cert");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls { server: Arc::new(server), client: Arc::new(client) }
}

fn tls_bulk(total_mib: usize, msg_mib: usize, workers: usize) -> (Row, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    let tls = tls_configs();
    let words = (msg_mib << 20) / 8;
    let n_msgs = total_mib / msg_mib;
    let data = message(words);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            tcp.set_nodelay(true).expect("nodelay");
            let mut s = acceptor.accept(tcp).await.expect("tls accept");
            let mut buf = vec![0u8; words * 8];
            for _ in 0..n_msgs {
                s.read_exact(&mut buf).await.expect("read");
                let v = le_bytes_to_u64s(&buf);
                std::hint::black_box(&v);
            }
            s.write_all(&[1]).await.expect("ack");
            s.flush().await.expect("flush");
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let connector = tokio_rustls::TlsConnector::from(tls.client);
        let name = rustls::pki_types::ServerName::try_from("bench-server").expect("name");
        let mut c = connector.connect(name, tcp).await.expect("tls connect");
        let suite =
            c.get_ref().1.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
        let t0 = Instant::now();
        for _ in 0..n_msgs {
            let bytes = u64s_to_le_bytes(&data);
            c.write_all(&bytes).await.expect("write");
        }
        c.flush().await.expect("flush");
        let mut ack = [0u8; 1];
        c.read_exact(&mut ack).await.expect("ack");
        let time = t0.elapsed();
        server.await.expect("server");
        (
            Row {
                name: format!("tls/tcp (tokio-rustls), {msg_mib} MiB writes"),
                bytes: n_msgs * (msg_mib << 20),
                time,
                cpu: None,
                note: suite.clone(),
            },
            suite,
        )
    })
}

// ---------------------------------------------------------------------------------------
// Plain TCP (no encryption), std threads

fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    a.set_nodelay(true).expect("nodelay");
    b.set_nodelay(true).expect("nodelay");
    (a, b)
}

fn tcp_bulk(total_mib: usize, msg_mib: usize) -> Row {
    let (mut a, mut b) = tcp_pair();
    let words = (msg_mib << 20) / 8;
    let n_msgs = total_mib / msg_mib;
    let data = message(words);
    let receiver = std::thread::spawn(move || {
        let mut buf = vec![0u8; words * 8];
        for _ in 0..n_msgs {
            b.read_exact(&mut buf).expect("read");
            std::hint::black_box(le_bytes_to_u64s(&buf));
        }
        b.write_all(&[1]).expect("ack");
    });
    let t0 = Instant::now();
    for _ in 0..n_msgs {
        a.write_all(&u64s_to_le_bytes(&data)).expect("write");
    }
    let mut ack = [0u8; 1];
    a.read_exact(&mut ack).expect("ack");
    let time = t0.elapsed();
    receiver.join().expect("receiver");
    Row {
        name: format!("tcp plain (reference), {msg_mib} MiB writes"),
        bytes: n_msgs * (msg_mib << 20),
        time,
        cpu: None,
        note: "no encryption".into(),
    }
}

fn tcp_ping_pong() -> Duration {
    let (mut a, mut b) = tcp_pair();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        for _ in 0..PINGS + 100 {
            b.read_exact(&mut buf).expect("read");
            b.write_all(&buf).expect("write");
        }
    });
    let mut buf = [0u8; 8];
    for _ in 0..100 {
        a.write_all(&buf).expect("write");
        a.read_exact(&mut buf).expect("read");
    }
    let t0 = Instant::now();
    for _ in 0..PINGS {
        a.write_all(&buf).expect("write");
        a.read_exact(&mut buf).expect("read");
    }
    let d = t0.elapsed();
    echo.join().expect("echo");
    d / PINGS as u32
}

fn main() {
    let total: usize = env("SHARDLM_BENCH_MIB").unwrap_or(1024);
    let msg: usize = env::<usize>("SHARDLM_BENCH_MSG_MIB").unwrap_or(16).max(1);
    let stripes: Vec<usize> = std::env::var("SHARDLM_BENCH_STRIPES")
        .unwrap_or_else(|_| "2,4".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&k| k > 1)
        .collect();
    let cfg = config();
    println!(
        "loopback, {} CPUs, {} runtime workers per endpoint, QUIC max UDP payload {}, {} MiB of u64 per row in {} MiB messages",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cfg.worker_threads,
        cfg.max_udp_payload,
        total,
        msg
    );

    // TLS/TCP first and again last, so a change of machine load shows in the spread.
    let measured = |f: &dyn Fn() -> Row| {
        let (mut row, cpu) = with_cpu(f);
        row.cpu = cpu;
        row
    };
    let suite = std::cell::RefCell::new(String::new());
    let tls = || {
        let (row, s) = tls_bulk(total, msg, cfg.worker_threads);
        *suite.borrow_mut() = s;
        row
    };
    let tls_first = measured(&tls);
    let mut rows = vec![measured(&|| quic_bulk(total, msg, 1, 1))];
    for &k in &stripes {
        rows.push(measured(&|| quic_bulk(total, msg, 1, k)));
    }
    for &k in &stripes {
        rows.push(measured(&|| quic_bulk(total, msg, k, 1)));
    }
    let tls_last = measured(&tls);
    rows.push(measured(&|| tcp_bulk(total, msg)));
    let suite = suite.into_inner();
    let tls_mib_s = (tls_first.mib_s() + tls_last.mib_s()) / 2.0;
    let mut all = vec![tls_first, tls_last];
    all.append(&mut rows);

    println!("TLS/TCP cipher suite negotiated: {suite}; QUIC uses the same rustls ring provider, TLS 1.3");
    println!();
    println!(
        "| {:<40} | {:>9} | {:>7} | {:>9} | {:>11} | {:<30} |",
        "path", "MiB/s", "s", "CPU s/GiB", "x TLS/TCP", "note"
    );
    println!("|{:-<42}|{:-<11}|{:-<9}|{:-<11}|{:-<13}|{:-<32}|", "", "", "", "", "", "");
    for r in &all {
        println!(
            "| {:<40} | {:>9.1} | {:>7.2} | {:>9} | {:>11.2} | {:<30} |",
            r.name,
            r.mib_s(),
            r.time.as_secs_f64(),
            r.cpu_per_gib(),
            r.mib_s() / tls_mib_s,
            r.note
        );
    }
    println!(
        "(x TLS/TCP: over the mean of the two TLS/TCP rows, {tls_mib_s:.1} MiB/s. CPU s/GiB: CPU time of"
    );
    println!(" the whole process, both ends and the kernel's share, per GiB, setup included: the cost that");
    println!(" decides the rate on a machine with few or busy cores)");

    if env::<u32>("SHARDLM_BENCH_PING") != Some(0) {
        println!();
        println!("| {:<40} | {:>12} |", "ping-pong, 8 B each way", "us per round");
        println!("|{:-<42}|{:-<14}|", "", "");
        println!("| {:<40} | {:>12.1} |", "quic (lane Openings)", quic_ping_pong().as_secs_f64() * 1e6);
        println!("| {:<40} | {:>12.1} |", "tcp plain", tcp_ping_pong().as_secs_f64() * 1e6);
    }
}

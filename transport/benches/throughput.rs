//! Bulk `u64` throughput and ping-pong latency over QUIC loopback, next to a plain TCP
//! loopback copy for reference. Not a timed test: run
//! `cargo bench -p shardlm-transport --bench throughput` and read the printout.
//! `SHARDLM_BENCH_MIB` sets the bulk size (default 256).

use shardlm_transport::{Channel, Identity, Lane, QuicClient, QuicConfig, QuicServer};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const PINGS: usize = 2000;

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// `SHARDLM_BENCH_WORKERS` (runtime threads per endpoint) and `SHARDLM_BENCH_UDP`
/// (MTU discovery upper bound) override the defaults.
fn config() -> QuicConfig {
    let mut cfg = QuicConfig::default();
    if let Some(w) = std::env::var("SHARDLM_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.worker_threads = w;
    }
    if let Some(u) = std::env::var("SHARDLM_BENCH_UDP")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.max_udp_payload = u;
    }
    cfg
}

fn quic_pair() -> (
    shardlm_transport::QuicChannel,
    shardlm_transport::QuicChannel,
) {
    let server_id = Identity::generate("bench-server").expect("keygen");
    let client_id = Identity::generate("bench-client").expect("keygen");
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let server =
        QuicServer::bind(addr, &server_id, &[client_id.fingerprint()], config()).expect("bind");
    let client = QuicClient::connect(
        server.local_addr(),
        &client_id,
        server.fingerprint(),
        config(),
    )
    .expect("connect");
    let srv = server.accept().expect("server open").expect("accept");
    // The server endpoint may go: accepted channels keep the runtime alive.
    (client, srv)
}

fn quic_bulk(total_mib: usize, msg_mib: usize) {
    let (mut c, mut s) = quic_pair();
    let words = (msg_mib << 20) / 8;
    let n_msgs = total_mib / msg_mib;
    let data: Vec<u64> = (0..words as u64).collect();
    let receiver = std::thread::spawn(move || {
        for _ in 0..n_msgs {
            let v = s.recv_u64s(Lane::Masked(0), words).expect("recv");
            std::hint::black_box(&v);
        }
        s.send_u64s(Lane::Control, &[1]).expect("ack");
        s
    });
    let t0 = Instant::now();
    for _ in 0..n_msgs {
        c.send_u64s(Lane::Masked(0), &data).expect("send");
    }
    c.recv_u64s(Lane::Control, 1).expect("ack");
    let d = t0.elapsed();
    let _s = receiver.join().expect("receiver");
    let framing = c.counters().framing_bytes_sent;
    let udp_sent = c.udp_bytes().0;
    println!(
        "quic  bulk {total_mib} MiB in {msg_mib} MiB messages: {:8.1} MiB/s  ({:.2} s, framing {framing} B, UDP {:.2}% over payload)",
        mib_per_s(total_mib << 20, d),
        d.as_secs_f64(),
        (udp_sent as f64 / (total_mib << 20) as f64 - 1.0) * 100.0
    );
}

fn quic_ping_pong() {
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
    println!(
        "quic  ping-pong 8 B: {:8.1} us per round trip ({PINGS} rounds)",
        d.as_secs_f64() * 1e6 / PINGS as f64
    );
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    a.set_nodelay(true).expect("nodelay");
    b.set_nodelay(true).expect("nodelay");
    (a, b)
}

fn tcp_bulk(total_mib: usize, msg_mib: usize) {
    let (mut a, mut b) = tcp_pair();
    let n_msgs = total_mib / msg_mib;
    let data: Vec<u8> = (0..msg_mib << 20).map(|i| i as u8).collect();
    let receiver = std::thread::spawn(move || {
        let mut buf = vec![0u8; msg_mib << 20];
        for _ in 0..n_msgs {
            b.read_exact(&mut buf).expect("read");
        }
        b.write_all(&[1]).expect("ack");
    });
    let t0 = Instant::now();
    for _ in 0..n_msgs {
        a.write_all(&data).expect("write");
    }
    let mut ack = [0u8; 1];
    a.read_exact(&mut ack).expect("ack");
    let d = t0.elapsed();
    receiver.join().expect("receiver");
    println!(
        "tcp   bulk {total_mib} MiB in {msg_mib} MiB writes:   {:8.1} MiB/s  ({:.2} s)",
        mib_per_s(total_mib << 20, d),
        d.as_secs_f64()
    );
}

fn tcp_ping_pong() {
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
    println!(
        "tcp   ping-pong 8 B: {:8.1} us per round trip ({PINGS} rounds)",
        d.as_secs_f64() * 1e6 / PINGS as f64
    );
}

fn main() {
    let total: usize = std::env::var("SHARDLM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let cfg = config();
    println!(
        "loopback, {} CPUs, {} runtime workers per endpoint, max UDP payload {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cfg.worker_threads,
        cfg.max_udp_payload
    );
    quic_bulk(total, 1);
    quic_bulk(total, 16);
    quic_bulk(total, 64);
    quic_ping_pong();
    tcp_bulk(total, 16);
    tcp_ping_pong();
}

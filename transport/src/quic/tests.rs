//! QUIC loopback tests (127.0.0.1 only, short deadlines).

use super::*;
use crate::handshake::{
    client_handshake, server_handshake, ClientHello, Request, ServerInfo, PROTOCOL_VERSION,
};
use crate::ChannelExt;

pub(super) fn cfg() -> QuicConfig {
    QuicConfig::with_timeouts(Timeouts {
        connect: Duration::from_secs(5),
        handshake: Duration::from_secs(5),
        idle: Duration::from_secs(2),
        recv: Duration::from_secs(10),
    })
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

struct Setup {
    server: QuicServer,
    client_id: Identity,
}

fn setup(cfg: QuicConfig) -> Setup {
    let server_id = Identity::generate("server").unwrap();
    let client_id = Identity::generate("client").unwrap();
    let server = QuicServer::bind(localhost(), &server_id, &[client_id.fingerprint()], cfg).unwrap();
    Setup { server, client_id }
}

fn connect(s: &Setup, cfg: QuicConfig) -> (QuicChannel, QuicChannel) {
    let client =
        QuicClient::connect(s.server.local_addr(), &s.client_id, s.server.fingerprint(), cfg).unwrap();
    let server = s.server.accept_within(Duration::from_secs(5)).unwrap().unwrap();
    (client, server)
}

#[test]
fn lanes_round_trip_concurrently_with_exact_counters() {
    let s = setup(cfg());
    let (mut c, mut srv) = connect(&s, cfg());
    assert_eq!(srv.peer_fingerprint(), s.client_id.fingerprint());
    assert_eq!(c.peer_fingerprint(), s.server.fingerprint());
    let lanes = [Lane::Control, Lane::Openings, Lane::Ot, Lane::Masked(0), Lane::Masked(200)];
    let sizes = [0usize, 1, 7, 1000, 100_000];

    // Server: echo every message back on the same lane, receiving lanes in reverse order.
    let server = std::thread::spawn(move || {
        for lane in lanes.iter().rev() {
            for _ in sizes {
                let m = srv.recv_bytes(*lane).unwrap();
                srv.send_vec(*lane, m).unwrap();
            }
        }
        srv
    });
    for (i, lane) in lanes.iter().enumerate() {
        for n in sizes {
            let payload: Vec<u8> = (0..n).map(|j| (i * 7 + j) as u8).collect();
            c.send_bytes(*lane, &payload).unwrap();
        }
    }
    for (i, lane) in lanes.iter().enumerate() {
        for n in sizes {
            let expect: Vec<u8> = (0..n).map(|j| (i * 7 + j) as u8).collect();
            assert_eq!(c.recv_bytes(*lane).unwrap(), expect);
        }
    }
    let srv = server.join().unwrap();
    let total: u64 = sizes.iter().map(|&n| n as u64).sum();
    let (cc, sc) = (c.counters(), srv.counters());
    for lane in lanes {
        let l = cc.lane(lane);
        assert_eq!(
            (l.bytes_sent, l.bytes_received, l.messages_sent, l.messages_received),
            (total, total, 5, 5)
        );
        assert_eq!(sc.lane(lane), l);
    }
    // One frame per message (all below the cap), 2 preamble bytes per lane opened.
    let framing = (lanes.len() * sizes.len() * HEADER_LEN + lanes.len() * LANE_PREAMBLE_LEN) as u64;
    assert_eq!(cc.framing_bytes_sent, framing);
    assert_eq!(sc.framing_bytes_sent, framing);
    assert_eq!(cc.rounds, 1, "the client sent everything, then waited once");
    // The server echoes each message, so every receive but the first follows a send.
    assert_eq!(sc.rounds, (lanes.len() * sizes.len()) as u64 - 1);
}

#[test]
fn large_payload_is_chunked_and_reassembled() {
    let mut config = cfg();
    config.limits.max_frame = 4 << 20;
    config.recv_budget = 128 << 20; // a session that declared 64 MiB messages
    let s = setup(config.clone());
    let (mut c, mut srv) = connect(&s, config);
    let n = (64usize << 20) / 8;
    let values: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
    let expected = values.clone();
    let receiver = std::thread::spawn(move || {
        let got = srv.recv_u64s(Lane::Masked(1), n).unwrap();
        (got, srv)
    });
    c.send_u64s(Lane::Masked(1), &values).unwrap();
    let (got, srv) = receiver.join().unwrap();
    assert!(got == expected, "64 MiB payload differs after reassembly");
    let frames = 16; // 64 MiB / 4 MiB
    assert_eq!(c.counters().framing_bytes_sent, (frames * HEADER_LEN + LANE_PREAMBLE_LEN) as u64);
    assert_eq!(srv.counters().lane(Lane::Masked(1)).bytes_received, 64 << 20);
    // Loopback carries large datagrams: path MTU discovery climbs past Ethernet's 1452
    // toward MAX_UDP_PAYLOAD while the 64 MiB move (a stuck-at-1200 regression fails here).
    let mtu = c.path_mtu();
    assert!(mtu > 1452 && mtu <= MAX_UDP_PAYLOAD, "path MTU after 64 MiB on loopback: {mtu}");
    drop(srv);
}

#[test]
fn several_clients_at_once() {
    let s = setup(cfg());
    let addr = s.server.local_addr();
    let fp = s.server.fingerprint().to_string();
    let clients: Vec<_> = (0..3u64)
        .map(|k| {
            let id = s.client_id.clone();
            let fp = fp.clone();
            std::thread::spawn(move || {
                let mut c = QuicClient::connect(addr, &id, &fp, cfg()).unwrap();
                c.send_u64s(Lane::Openings, &[k]).unwrap();
                assert_eq!(c.recv_u64s(Lane::Openings, 1).unwrap(), vec![k + 100]);
            })
        })
        .collect();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let mut ch = s.server.accept_within(Duration::from_secs(5)).unwrap().unwrap();
        servers.push(std::thread::spawn(move || {
            let v = ch.recv_u64s(Lane::Openings, 1).unwrap();
            ch.send_u64s(Lane::Openings, &[v[0] + 100]).unwrap();
            // Wait for the client to finish and leave.
            let e = ch.recv_bytes(Lane::Control).unwrap_err();
            assert!(matches!(e, TransportError::PeerGone { .. }), "{e}");
        }));
    }
    for t in clients.into_iter().chain(servers) {
        t.join().unwrap();
    }
}

#[test]
fn wrong_client_certificate_is_rejected_on_both_sides() {
    let s = setup(cfg());
    let stranger = Identity::generate("stranger").unwrap();
    let client_side =
        match QuicClient::connect(s.server.local_addr(), &stranger, s.server.fingerprint(), cfg()) {
            Err(e) => e.to_string(),
            Ok(mut c) => {
                // TLS 1.3: the client may finish before the server checks its certificate.
                client_handshake(&mut c, &ClientHello::new(Request::Health), Duration::from_secs(5))
                    .unwrap_err()
                    .to_string()
            }
        };
    let server_side = s.server.accept_within(Duration::from_secs(5)).unwrap().unwrap_err().to_string();
    eprintln!("client: {client_side}\nserver: {server_side}");
    assert!(
        client_side.contains("rejected our certificate") && client_side.contains(&stranger.fingerprint()),
        "{client_side}"
    );
    assert!(
        server_side.contains(&stranger.fingerprint()) && server_side.contains("not an allowed client"),
        "{server_side}"
    );
    assert!(server_side.contains(&s.client_id.fingerprint()), "{server_side}");
}

#[test]
fn wrong_server_fingerprint_is_rejected_on_both_sides() {
    let s = setup(cfg());
    let expected = Identity::generate("someone else").unwrap().fingerprint();
    let err =
        QuicClient::connect(s.server.local_addr(), &s.client_id, &expected, cfg()).unwrap_err().to_string();
    assert!(err.contains(&format!("presented certificate {}", s.server.fingerprint())), "{err}");
    assert!(err.contains(&format!("we expected {expected}")), "{err}");
    let server_side = s.server.accept_within(Duration::from_secs(5)).unwrap().unwrap_err().to_string();
    eprintln!("client: {err}\nserver: {server_side}");
    assert!(server_side.contains("rejected our certificate"), "{server_side}");
}

pub(super) fn server_info() -> ServerInfo {
    ServerInfo {
        model: "tiny".into(),
        architecture: "Qwen2ForCausalLM".into(),
        fingerprint: "blake3:1111".into(),
        variants: vec!["v2".into(), "v3".into()],
        devices: vec!["cpu".into()],
        version: "0.1.0".into(),
        protocol_version: PROTOCOL_VERSION,
        attestation: vec![],
        ring_gemm: None,
    }
}

#[test]
fn handshake_over_quic_accepts_and_rejects() {
    let s = setup(cfg());
    let t = Duration::from_secs(5);

    let (mut c, mut srv) = connect(&s, cfg());
    let slots = crate::handshake::SessionSlots::new(4);
    let sl = slots.clone();
    let server = std::thread::spawn(move || {
        server_handshake(&mut srv, &server_info(), t, &sl, &|_| Ok(())).map(|h| (h.0, srv))
    });
    let info = client_handshake(&mut c, &ClientHello::new(Request::Info), t).unwrap();
    assert_eq!(info, server_info());
    let (hello, _srv) = server.join().unwrap().unwrap();
    assert_eq!(hello.request, Request::Info);

    let (mut c, mut srv) = connect(&s, cfg());
    let server = std::thread::spawn(move || {
        server_handshake(&mut srv, &server_info(), t, &slots, &|_| Ok(())).map(|_| ())
    });
    let hello = ClientHello::new(Request::Session {
        variant: "v2".into(),
        model_fingerprint: "blake3:2222".into(),
        session_id: [1; 16],
        params: crate::handshake::SessionParams { prompt_tokens: 1, max_new_tokens: 1, all_rows: false },
        material: None,
    });
    let client_err = client_handshake(&mut c, &hello, t).unwrap_err();
    let server_err = server.join().unwrap().unwrap_err();
    eprintln!("client: {client_err}\nserver: {server_err}");
    for e in [&client_err, &server_err] {
        assert!(matches!(e, TransportError::Handshake(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("model fingerprint differs: server has blake3:1111, client has blake3:2222"),
            "{e}"
        );
    }
    // The connection is closed with the handshake code: later receives say why.
    let later = c.recv_bytes(Lane::Control).unwrap_err();
    assert!(later.to_string().contains("model fingerprint differs"), "{later}");
}

#[test]
fn dropped_peer_is_an_error_promptly() {
    let s = setup(cfg());
    let (mut c, srv) = connect(&s, cfg());
    c.send_msg(Lane::Control, &"hi").unwrap();
    drop(srv);
    let t0 = Instant::now();
    let e = c.recv_bytes(Lane::Openings).unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, TransportError::PeerGone { .. }), "{e:?}");
    assert!(e.to_string().contains("channel dropped"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(c.send_bytes(Lane::Openings, b"x").is_err());
}

#[test]
fn vanished_peer_is_an_error_within_the_idle_timeout() {
    let s = setup(cfg());
    let (c, mut srv) = connect(&s, cfg());
    let t0 = Instant::now();
    c.crash();
    let e = srv.recv_bytes(Lane::Control).unwrap_err();
    let waited = t0.elapsed();
    eprintln!("after {waited:?}: {e}");
    assert!(matches!(e, TransportError::Timeout { .. } | TransportError::PeerGone { .. }), "{e:?}");
    // Within the idle timeout of the last packet (QUIC's restart of its timer on the
    // next keep-alive included), plus scheduling slack.
    assert!(waited < Duration::from_millis(2500), "idle timeout is 2 s, waited {waited:?}");
}

#[test]
fn receive_timeout_leaves_the_channel_usable() {
    let s = setup(cfg());
    let (mut c, mut srv) = connect(&s, cfg());
    let t0 = Instant::now();
    let e = c.recv_bytes_within(Lane::Ot, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e:?}");
    assert!(t0.elapsed() >= Duration::from_millis(300) && t0.elapsed() < Duration::from_secs(2));
    srv.send_u64s(Lane::Ot, &[5, 6]).unwrap();
    assert_eq!(c.recv_u64s(Lane::Ot, 2).unwrap(), vec![5, 6]);
}

#[test]
fn bad_setup_inputs_are_clear_errors() {
    let id = Identity::generate("x").unwrap();
    let e = QuicServer::bind(localhost(), &id, &[], cfg()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("no client fingerprint is allowed"), "{e}");
    let e = QuicClient::connect(localhost(), &id, "not-a-fingerprint", cfg()).unwrap_err().to_string();
    assert!(e.contains("is not a certificate fingerprint"), "{e}");
    let jumbo = QuicConfig { max_udp_payload: 8952, ..cfg() };
    let e = QuicServer::bind(localhost(), &id, &[id.fingerprint().to_string()], jumbo)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("between 1200 and 6500 bytes, not 8952"), "{e}");
    assert_eq!(resolve_addr("quic://127.0.0.1:4433").unwrap(), SocketAddr::from(([127, 0, 0, 1], 4433)));
}

#[test]
fn sends_wait_for_room_in_a_small_send_buffer() {
    let mut config = cfg();
    config.send_buffer = 1 << 20;
    let s = setup(config.clone());
    let (mut c, mut srv) = connect(&s, config);
    let msg = vec![0xABu8; 256 << 10];
    for _ in 0..40 {
        c.send_bytes(Lane::Masked(9), &msg).unwrap();
    }
    // A message larger than the whole buffer still goes, alone.
    c.send_bytes(Lane::Masked(9), &vec![1u8; 3 << 20]).unwrap();
    for _ in 0..40 {
        assert_eq!(srv.recv_bytes(Lane::Masked(9)).unwrap(), msg);
    }
    assert_eq!(srv.recv_bytes(Lane::Masked(9)).unwrap().len(), 3 << 20);
}

#[test]
fn endpoint_types_can_move_between_threads() {
    fn send<T: Send>() {}
    fn shared<T: Send + Sync>() {}
    send::<QuicChannel>();
    shared::<QuicServer>();
}

/// A raw QUIC client with a valid certificate that writes `bytes` on one lane stream.
fn raw_peer_writes(s: &Setup, bytes: Vec<u8>) -> (QuicChannel, Arc<Rt>, Connection) {
    let rt = Arc::new(Rt::new(1).unwrap());
    let transport = Arc::new(transport_config(&cfg()).unwrap());
    let (client_cfg, _) = client_config(&s.client_id, s.server.fingerprint(), transport).unwrap();
    let socket = udp_socket(localhost(), 1 << 20).unwrap();
    let addr = s.server.local_addr();
    let conn = rt
        .run(async move {
            let endpoint = new_endpoint(socket, None, MAX_UDP_PAYLOAD).unwrap();
            let conn = endpoint.connect_with(client_cfg, addr, SERVER_NAME).unwrap().await.unwrap();
            let mut stream = conn.open_uni().await.unwrap();
            stream.write_all(&bytes).await.unwrap();
            stream.finish().unwrap();
            conn
        })
        .unwrap();
    let srv = s.server.accept_within(Duration::from_secs(5)).unwrap().unwrap();
    (srv, rt, conn)
}

#[test]
fn framing_violations_close_the_connection_with_a_named_error() {
    let s = setup(cfg());
    // Unknown lane id.
    let (mut srv, rt, conn) = raw_peer_writes(&s, 3u16.to_le_bytes().to_vec());
    let e = srv.recv_bytes(Lane::Control).unwrap_err();
    assert!(
        matches!(e, TransportError::Protocol { .. }) && e.to_string().contains("unknown lane id 3"),
        "{e}"
    );
    let closed = rt.run(async move { conn.closed().await }).unwrap();
    assert!(
        matches!(&closed, ConnectionError::ApplicationClosed(ac) if ac.error_code == VarInt::from_u32(close_code::PROTOCOL_VIOLATION)),
        "{closed:?}"
    );

    // Sequence gap on a valid lane.
    let mut bytes = Lane::Openings.id().to_le_bytes().to_vec();
    bytes.extend(FrameHeader::decode(&[5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]).encode());
    bytes.push(42);
    let (mut srv, _rt, _conn) = raw_peer_writes(&s, bytes);
    let e = srv.recv_bytes(Lane::Openings).unwrap_err();
    assert!(
        matches!(e, TransportError::Malformed { lane: Lane::Openings, .. })
            && e.to_string().contains("expected frame 0, got frame 5"),
        "{e}"
    );

    // An oversized frame: the header announces more than the frame cap.
    let mut bytes = Lane::Masked(1).id().to_le_bytes().to_vec();
    let mut header = vec![0u8; 8];
    header.extend(u32::MAX.to_le_bytes());
    header.push(0);
    bytes.extend(header);
    let (mut srv, _rt, _conn) = raw_peer_writes(&s, bytes);
    let e = srv.recv_bytes(Lane::Masked(1)).unwrap_err();
    assert!(e.to_string().contains("above the frame cap"), "{e}");

    // Garbage on a valid lane (not a frame header at all).
    let mut bytes = Lane::Masked(2).id().to_le_bytes().to_vec();
    bytes.extend((0..64u8).map(|i| i.wrapping_mul(151).wrapping_add(7)));
    let (mut srv, _rt, _conn) = raw_peer_writes(&s, bytes);
    let e = srv.recv_bytes(Lane::Masked(2)).unwrap_err();
    assert!(matches!(e, TransportError::Malformed { .. } | TransportError::Protocol { .. }), "{e}");

    // A stream that ends inside a chunked message.
    let mut bytes = Lane::Ot.id().to_le_bytes().to_vec();
    bytes.extend(FrameEncoder::new(4).encode_to_vec(&[1, 2, 3, 4, 5, 6]));
    bytes.truncate(bytes.len() - HEADER_LEN - 2);
    let (mut srv, _rt, _conn) = raw_peer_writes(&s, bytes);
    let e = srv.recv_bytes(Lane::Ot).unwrap_err();
    assert!(e.to_string().contains("ended in the middle of a chunked message"), "{e}");
}

#[test]
fn nobody_listening_is_a_connect_timeout() {
    let mut config = cfg();
    config.timeouts.connect = Duration::from_millis(500);
    let id = Identity::generate("x").unwrap();
    // A bound but silent UDP socket: nothing answers.
    let silent = std::net::UdpSocket::bind(localhost()).unwrap();
    let t0 = Instant::now();
    let e = QuicClient::connect(silent.local_addr().unwrap(), &id, &id.fingerprint(), config).unwrap_err();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("is the server running"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn both_parties_send_bulk_before_receiving_without_deadlock() {
    let mut config = cfg();
    config.send_buffer = 1 << 20; // sends block on the network, not on the peer's receives
    config.recv_budget = 32 << 20; // each party holds the other's 24 MiB before reading it
    let s = setup(config.clone());
    let (c, srv) = connect(&s, config);
    let n = (8usize << 20) / 8;
    let party = |mut ch: QuicChannel, seed: u64| {
        std::thread::spawn(move || {
            let mine: Vec<u64> = (0..n as u64).map(|i| i ^ seed).collect();
            for lane in [Lane::Masked(0), Lane::Masked(1), Lane::Openings] {
                ch.send_u64s(lane, &mine).unwrap();
            }
            let mut theirs = Vec::new();
            for lane in [Lane::Openings, Lane::Masked(1), Lane::Masked(0)] {
                theirs.push(ch.recv_u64s(lane, n).unwrap());
            }
            (ch, theirs)
        })
    };
    let (a, b) = (party(c, 1), party(srv, 2));
    let ((_c, from_server), (_s, from_client)) = (a.join().unwrap(), b.join().unwrap());
    for v in from_server {
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 ^ 2));
    }
    for v in from_client {
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 ^ 1));
    }
}

/// A message larger than the session's receive budget is refused as its header arrives
/// (nothing is allocated for it); smaller messages beyond the budget in total are held
/// back by flow control and all arrive; a peer that fills the budget on a lane nobody
/// reads is disconnected with an error naming the lanes.
#[test]
fn receive_budget_bounds_what_a_peer_can_queue() {
    let mut config = cfg();
    config.recv_budget = 1 << 20;
    let s = setup(config.clone());

    // 16 messages of 256 KiB (4 MiB in all) through a 1 MiB budget, read in order.
    let (mut c, mut srv) = connect(&s, config.clone());
    let msgs: Vec<Vec<u64>> = (0..16u64).map(|i| vec![i; 32 << 10]).collect();
    let want = msgs.clone();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300)); // let the sender run ahead
        (0..16).map(|_| srv.recv_u64s(Lane::Masked(0), 32 << 10).unwrap()).collect::<Vec<_>>()
    });
    for m in &msgs {
        c.send_u64s(Lane::Masked(0), m).unwrap();
    }
    assert_eq!(reader.join().unwrap(), want);

    // One message over the budget.
    let (mut c, mut srv) = connect(&s, config.clone());
    c.send_u64s(Lane::Masked(0), &vec![7u64; (2 << 20) / 8]).unwrap();
    let e = srv.recv_bytes(Lane::Masked(0)).unwrap_err();
    assert!(matches!(e, TransportError::Protocol { .. }), "{e:?}");
    assert!(e.to_string().contains("receive budget of 1048576 bytes"), "{e}");

    // A flood on a lane the receiver never reads while it waits on another.
    let (mut c, mut srv) = connect(&s, config);
    let flood = std::thread::spawn(move || {
        for _ in 0..8 {
            if c.send_u64s(Lane::Ot, &vec![1u64; (256 << 10) / 8]).is_err() {
                break;
            }
        }
        c
    });
    let t = Instant::now();
    let e = srv.recv_bytes(Lane::Control).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "noticed after {:?}", t.elapsed());
    let msg = e.to_string();
    assert!(msg.contains("receive budget") && msg.contains("Ot") && msg.contains("Control"), "{msg}");
    drop(flood.join());
}

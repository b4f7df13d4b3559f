//! The network [`Channel`]: QUIC (quinn 0.11) with mutual TLS 1.3 (rustls 0.23, `ring`
//! provider) and pinned self-signed certificates.
//!
//! **Who talks to whom.** The server party (P1) binds a [`QuicServer`] and accepts
//! connections; the client party (P0) dials with [`QuicClient::connect`]. Both present a
//! certificate ([`Identity`]) and accept exactly the peer fingerprints they were given;
//! ALPN is [`ALPN`]. A wrong certificate fails on both sides with an error naming the
//! expected and the presented fingerprint.
//!
//! **What flows where.** Each [`Lane`] is one unidirectional QUIC stream per direction,
//! opened on the first send; its first two bytes are the lane id, then frames as in
//! [`crate::frame`]. On the receiving side one task accepts streams and one task per
//! stream reassembles messages into a per-lane queue that `recv_bytes` pops, so lanes
//! never block each other and the peer's sends never wait for our receives (received
//! messages are held until taken; each is capped by `limits.max_message`). Sends hand
//! the framed message (header + zero-copy payload slices) to a per-lane writer task and
//! return at once, unless `send_buffer` bytes are already waiting for the network; QUIC
//! flow control (windows sized for 10 Gbit/s x 10 ms and more) paces the writer. Counters are exactly those of the in-memory pair, plus the
//! framing bytes (13 per frame, 2 per lane opened).
//!
//! **Threads.** The [`Channel`] API is synchronous. Each endpoint owns a small tokio
//! runtime; connection setup runs on it while the caller waits on a std channel, and
//! receives wait on a condition variable, so no caller thread ever enters the runtime.
//! Do not call these blocking functions from inside an async task.
//!
//! **Deadlines.** Connecting is bounded by `timeouts.connect`, each receive by
//! `timeouts.recv`, and a silent peer is detected by the QUIC idle timeout
//! (`timeouts.idle`, with keep-alives at a quarter of it): a vanished peer is an error
//! within `timeouts.idle` of its last packet, never a hang.

mod service;
mod verify;

#[cfg(test)]
mod tests;

use crate::frame::{FrameEncoder, FrameHeader, FrameLimits, Reassembler, HEADER_LEN, LANE_PREAMBLE_LEN};
use crate::identity::{cert_fingerprint, normalize_fingerprint, Identity};
use crate::{close_code, Channel, Counters, Lane, Result, TransportError};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, Endpoint, EndpointConfig, TransportConfig, VarInt};
use shardlm_configs::Timeouts;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use verify::PinnedVerifier;

/// The ALPN protocol id both sides require.
pub const ALPN: &[u8] = b"shardlm/1";
/// The TLS server name the client sends; certificates are pinned, so it is not checked.
const SERVER_NAME: &str = "shardlm";

/// Network settings of one endpoint.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// Connect, handshake, idle and receive deadlines.
    pub timeouts: Timeouts,
    /// Frame and message caps (both parties must agree on the frame cap).
    pub limits: FrameLimits,
    /// Per-stream receive window, bytes (default 32 MiB: > 10 Gbit/s x 10 ms).
    pub stream_window: u32,
    /// Per-connection receive window, bytes (default 64 MiB, room for two busy lanes).
    pub connection_window: u32,
    /// Unacknowledged bytes the sender keeps in flight per connection (default 64 MiB).
    pub send_window: u64,
    /// UDP socket send and receive buffer request, bytes (best effort; default 8 MiB).
    pub socket_buffer: usize,
    /// Largest UDP payload path MTU discovery probes for, and the largest we accept
    /// (default and maximum [`MAX_UDP_PAYLOAD`]). Discovery starts at 1200 bytes and climbs
    /// only as far as the path carries probes: 1452 on Ethernet, [`MAX_UDP_PAYLOAD`] on
    /// loopback and jumbo-frame links, where the larger packets halve quinn's CPU cost per
    /// byte (measured: 1 GiB on loopback at 0.54x of TLS/TCP with 1452, 0.7-0.9x with 6500).
    pub max_udp_payload: u16,
    /// Worker threads of the endpoint's tokio runtime (default 2).
    pub worker_threads: usize,
    /// Sent bytes a channel may hold before the network takes them; a send waits for
    /// room beyond this (default 256 MiB). One larger message is always accepted alone.
    pub send_buffer: usize,
    /// Congestion window a new connection starts with, bytes. QUIC's recommended 10
    /// packets (~14 KB) suits a path shared with strangers; a two-party session is one
    /// burst-heavy flow on a provisioned link, and every session opens a new connection,
    /// so slow start would add round trips to every prefill (measured: ~25 RTTs instead of
    /// 9 for a 98-token prefill at 20-80 ms). Default 1 MiB (0.8 ms at 10 Gbit/s); lower it
    /// on paths shared with other traffic.
    pub initial_window: u64,
    /// Received payload bytes a connection holds unread before its readers stop taking
    /// data from the network (backpressure through QUIC flow control). A single message
    /// above it is a protocol violation, and a peer that fills it on lanes this party is
    /// not reading (while it waits on another) is told so and disconnected. The default
    /// covers the handshake; a session raises it to what its declared shape needs
    /// ([`QuicChannel::set_recv_budget`]).
    pub recv_budget: usize,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            timeouts: Timeouts::default(),
            limits: FrameLimits::default(),
            stream_window: 32 << 20,
            connection_window: 64 << 20,
            send_window: 64 << 20,
            socket_buffer: 8 << 20,
            max_udp_payload: MAX_UDP_PAYLOAD,
            worker_threads: 2,
            send_buffer: 256 << 20,
            initial_window: 1 << 20,
            recv_budget: DEFAULT_RECV_BUDGET,
        }
    }
}

/// [`QuicConfig::recv_budget`]'s default: 16 MiB.
pub const DEFAULT_RECV_BUDGET: usize = 16 << 20;

impl QuicConfig {
    /// The defaults with the given deadlines.
    pub fn with_timeouts(timeouts: Timeouts) -> Self {
        QuicConfig { timeouts, ..Default::default() }
    }
}

/// Parses a server address as users type it: `host:port` or `quic://host:port`,
/// resolving host names.
pub fn resolve_addr(text: &str) -> Result<SocketAddr> {
    let hostport = text.trim().strip_prefix("quic://").unwrap_or(text.trim()).trim_end_matches('/');
    let mut addrs = hostport.to_socket_addrs().map_err(|e| {
        TransportError::Setup(format!("cannot resolve server address {text:?} (expected host:port): {e}"))
    })?;
    addrs.next().ok_or_else(|| TransportError::Setup(format!("server address {text:?} resolves to nothing")))
}

// ---------------------------------------------------------------------------------------
// Runtime

/// The endpoint's tokio runtime. Dropped without blocking, so dropping the last handle
/// from any thread is safe.
struct Rt {
    handle: tokio::runtime::Handle,
    rt: Option<tokio::runtime::Runtime>,
}

impl Rt {
    fn new(workers: usize) -> Result<Rt> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("shardlm-quic")
            .enable_all()
            .build()
            .map_err(|e| TransportError::Setup(format!("cannot start the network runtime: {e}")))?;
        Ok(Rt { handle: rt.handle().clone(), rt: Some(rt) })
    }

    /// Runs `fut` on the runtime and waits for it on this (non-runtime) thread.
    fn run<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| TransportError::Setup("the network runtime stopped".into()))
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Configuration helpers

fn setup_err(what: &str) -> impl Fn(String) -> TransportError + '_ {
    move |e| TransportError::Setup(format!("{what}: {e}"))
}

/// The largest UDP payload ShardLM lets QUIC use: quinn sends up to 10 packets per
/// `sendmsg` with UDP segmentation offload, and the kernel refuses a batch over 65,507
/// bytes, so a larger packet size would lose whole batches (measured: 7,000 stalls, 8,952
/// collapses to 5 MiB/s); quinn also panics on long-header packets of 16,384 bytes or more.
pub const MAX_UDP_PAYLOAD: u16 = 6_500;

fn transport_config(cfg: &QuicConfig) -> Result<TransportConfig> {
    if !(1200..=MAX_UDP_PAYLOAD).contains(&cfg.max_udp_payload) {
        return Err(TransportError::Setup(format!(
            "the largest UDP payload must be between 1200 and {MAX_UDP_PAYLOAD} bytes, not {}",
            cfg.max_udp_payload
        )));
    }
    let mut t = TransportConfig::default();
    t.max_concurrent_uni_streams(VarInt::from_u32(512))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(cfg.stream_window))
        .receive_window(VarInt::from_u32(cfg.connection_window))
        .send_window(cfg.send_window);
    // QUIC restarts its idle timer when the first ack-eliciting packet goes out after a
    // receive (RFC 9000, 10.1), and a keep-alive is one: a peer that vanished is noticed
    // up to one keep-alive interval after the timeout QUIC runs. Run it that much shorter,
    // so that a peer silent for `timeouts.idle` is declared gone by then (and after at
    // least three quarters of it).
    let keep_alive = cfg.timeouts.idle / 4;
    let idle = quinn::IdleTimeout::try_from(cfg.timeouts.idle - keep_alive).map_err(|e| {
        TransportError::Setup(format!("idle timeout {:?} is out of range: {e}", cfg.timeouts.idle))
    })?;
    t.max_idle_timeout(Some(idle)).keep_alive_interval(Some(keep_alive));
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(cfg.initial_window.max(14720));
    t.congestion_controller_factory(Arc::new(cubic));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(cfg.max_udp_payload);
    t.mtu_discovery_config(Some(mtu));
    Ok(t)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

type Seen = Arc<Mutex<Option<String>>>;

fn server_config(
    identity: &Identity,
    allowed: &[String],
    transport: Arc<TransportConfig>,
) -> Result<(quinn::ServerConfig, Seen)> {
    let provider = provider();
    let verifier = PinnedVerifier::new(allowed.to_vec(), provider.signature_verification_algorithms);
    let seen = verifier.seen();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup_err("TLS configuration")(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![identity.cert().clone()], identity.key())
        .map_err(|e| setup_err("server certificate")(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| setup_err("QUIC TLS configuration")(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(transport);
    Ok((sc, seen))
}

fn client_config(
    identity: &Identity,
    server_fp: &str,
    transport: Arc<TransportConfig>,
) -> Result<(quinn::ClientConfig, Seen)> {
    let provider = provider();
    let verifier =
        PinnedVerifier::new(vec![server_fp.to_string()], provider.signature_verification_algorithms);
    let seen = verifier.seen();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup_err("TLS configuration")(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![identity.cert().clone()], identity.key())
        .map_err(|e| setup_err("client certificate")(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| setup_err("QUIC TLS configuration")(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(transport);
    Ok((cc, seen))
}

/// A UDP socket with enlarged buffers (best effort: the kernel may cap them).
fn udp_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |e: std::io::Error| {
        TransportError::Setup(format!(
            "cannot bind UDP {addr}: {e} (is another process using the port? choose another one)"
        ))
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind_err)?;
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        tracing::debug!("cannot raise the UDP receive buffer to {buffer} bytes: {e}");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer) {
        tracing::debug!("cannot raise the UDP send buffer to {buffer} bytes: {e}");
    }
    socket.bind(&addr.into()).map_err(bind_err)?;
    tracing::debug!(
        "UDP {addr}: receive buffer {:?}, send buffer {:?} bytes (asked for {buffer}; raise net.core.rmem_max/wmem_max for more)",
        socket.recv_buffer_size().ok(),
        socket.send_buffer_size().ok()
    );
    Ok(socket.into())
}

fn new_endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    max_udp_payload: u16,
) -> Result<Endpoint> {
    // What we accept, advertised to the peer: quinn's default (1472) would cap the peer's
    // packets below what discovery may find.
    let mut ep = EndpointConfig::default();
    ep.max_udp_payload_size(max_udp_payload.max(1472))
        .map_err(|e| TransportError::Setup(format!("largest UDP payload {max_udp_payload}: {e:?}")))?;
    Endpoint::new(ep, server, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|e| TransportError::Setup(format!("cannot start the QUIC endpoint: {e}")))
}

fn peer_fingerprint(conn: &Connection) -> Option<String> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| cert_fingerprint(c))
}

/// TLS alerts a peer sends when it refuses our certificate.
fn is_certificate_alert(code: quinn::TransportErrorCode) -> bool {
    use rustls::AlertDescription as A;
    [A::AccessDenied, A::BadCertificate, A::CertificateUnknown, A::CertificateRequired, A::UnknownCA]
        .into_iter()
        .any(|a| code == quinn::TransportErrorCode::crypto(u8::from(a)))
}

// ---------------------------------------------------------------------------------------
// Server

/// A connection whose TLS handshake completed, waiting for `accept`.
struct Connected {
    conn: Connection,
    peer_fingerprint: String,
}

/// The server party's endpoint: accepts any number of concurrent client connections.
pub struct QuicServer {
    rt: Arc<Rt>,
    endpoint: Endpoint,
    local_addr: SocketAddr,
    fingerprint: String,
    cfg: QuicConfig,
    accepted: Mutex<std::sync::mpsc::Receiver<Result<Connected>>>,
}

impl QuicServer {
    /// Binds `addr` (UDP) and starts accepting clients whose certificate fingerprint is in
    /// `allowed_clients` (as printed by `keygen`; `blake3:` prefix optional).
    pub fn bind(
        addr: SocketAddr,
        identity: &Identity,
        allowed_clients: &[String],
        cfg: QuicConfig,
    ) -> Result<QuicServer> {
        let allowed: Vec<String> =
            allowed_clients.iter().map(|f| normalize_fingerprint(f)).collect::<Result<_>>()?;
        if allowed.is_empty() {
            return Err(TransportError::Setup(
                "no client fingerprint is allowed, so no client could connect: pass the fingerprint that the \
                 client's `keygen` printed"
                    .into(),
            ));
        }
        let rt = Arc::new(Rt::new(cfg.worker_threads)?);
        let transport = Arc::new(transport_config(&cfg)?);
        let (initial, _) = server_config(identity, &allowed, transport.clone())?;
        let socket = udp_socket(addr, cfg.socket_buffer)?;
        let payload = cfg.max_udp_payload;
        let endpoint = rt.run(async move { new_endpoint(socket, Some(initial), payload) })??;
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| TransportError::Setup(format!("cannot read the bound address: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let acceptor = Acceptor {
            identity: identity.clone(),
            allowed,
            transport,
            handshake_timeout: cfg.timeouts.connect,
            idle: cfg.timeouts.idle,
            own_fingerprint: identity.fingerprint(),
        };
        rt.handle.spawn(accept_loop(endpoint.clone(), Arc::new(acceptor), tx));
        tracing::info!(
            "listening on {local_addr} (QUIC, ALPN shardlm/1), fingerprint {}",
            identity.fingerprint()
        );
        Ok(QuicServer {
            rt,
            endpoint,
            local_addr,
            fingerprint: identity.fingerprint(),
            cfg,
            accepted: Mutex::new(rx),
        })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This server's certificate fingerprint, to hand to clients.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Waits for the next client. `None` once the server is closed; `Some(Err(_))` for a
    /// client that failed to connect (wrong certificate, TLS handshake not done within
    /// `timeouts.connect`): log it and keep accepting. TLS handshakes run concurrently in
    /// the background, so a slow client does not hold up others. The channel is `Send`:
    /// move it to its own thread.
    pub fn accept(&self) -> Option<Result<QuicChannel>> {
        let next = lock(&self.accepted).recv().ok()?;
        Some(next.map(|c| self.channel(c)))
    }

    /// Like [`QuicServer::accept`], giving up after `timeout` with
    /// `Some(Err(TransportError::Timeout))`.
    pub fn accept_within(&self, timeout: Duration) -> Option<Result<QuicChannel>> {
        match lock(&self.accepted).recv_timeout(timeout) {
            Ok(next) => Some(next.map(|c| self.channel(c))),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Some(Err(TransportError::Timeout {
                peer: "any client".into(),
                what: "a connection".into(),
                after: timeout,
            })),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Stops accepting and closes every connection of this endpoint.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(close_code::NORMAL), b"server shutting down");
    }

    fn channel(&self, c: Connected) -> QuicChannel {
        let peer = format!("client {} ({})", c.conn.remote_address(), short_fp(&c.peer_fingerprint));
        QuicChannel::new(
            self.rt.clone(),
            None,
            c.conn,
            &self.cfg,
            peer,
            c.peer_fingerprint,
            self.fingerprint.clone(),
        )
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        // Refuse new clients; connections already accepted live on in their channels.
        self.endpoint.set_server_config(None);
    }
}

struct Acceptor {
    identity: Identity,
    allowed: Vec<String>,
    transport: Arc<TransportConfig>,
    handshake_timeout: Duration,
    /// The QUIC idle timeout (what a handshake's `TimedOut` means).
    idle: Duration,
    own_fingerprint: String,
}

async fn accept_loop(
    endpoint: Endpoint,
    acceptor: Arc<Acceptor>,
    tx: std::sync::mpsc::Sender<Result<Connected>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            // Failures are logged once, by whoever takes them from the channel.
            let _ = tx.send(accept_one(incoming, &acceptor).await);
        });
    }
}

async fn accept_one(incoming: quinn::Incoming, a: &Acceptor) -> Result<Connected> {
    let remote = incoming.remote_address();
    let (config, seen) = server_config(&a.identity, &a.allowed, a.transport.clone())?;
    let connecting = incoming
        .accept_with(Arc::new(config))
        .map_err(|e| TransportError::Setup(format!("cannot accept the connection from {remote}: {e}")))?;
    match tokio::time::timeout(a.handshake_timeout, connecting).await {
        Err(_) => Err(TransportError::Timeout {
            peer: format!("client {remote}"),
            what: "the QUIC/TLS handshake".into(),
            after: a.handshake_timeout,
        }),
        Ok(Err(e)) => {
            let seen = lock(&seen).clone();
            Err(match seen {
                Some(fp) if !a.allowed.contains(&fp) => TransportError::Setup(format!(
                    "client {remote} presented certificate {fp}, which is not an allowed client (allowed: {}); \
                     if this client is legitimate, add its fingerprint (printed by its `keygen`) to the server's \
                     allowed clients",
                    a.allowed.join(", ")
                )),
                _ => connect_error(&e, &format!("client {remote}"), &a.own_fingerprint, a.idle),
            })
        }
        Ok(Ok(conn)) => {
            let peer_fingerprint = peer_fingerprint(&conn).unwrap_or_else(|| "unknown certificate".into());
            Ok(Connected { conn, peer_fingerprint })
        }
    }
}

/// A connection-level failure during setup, as a user-facing error. QUIC times a
/// handshake out when no packet came for `idle` (the idle timeout).
fn connect_error(e: &ConnectionError, peer: &str, own_fp: &str, idle: Duration) -> TransportError {
    match e {
        ConnectionError::ConnectionClosed(cc) if is_certificate_alert(cc.error_code) => {
            TransportError::Setup(format!(
                "{peer} rejected our certificate {own_fp}: ask its operator to allow this fingerprint"
            ))
        }
        ConnectionError::TimedOut => TransportError::Timeout {
            peer: peer.into(),
            what: "the QUIC handshake (is the server running and is UDP reachable?)".into(),
            after: idle,
        },
        other => TransportError::Setup(format!("QUIC connection with {peer} failed: {other}")),
    }
}

fn short_fp(fp: &str) -> String {
    fp.chars().take(7 + 12).collect::<String>() + "…"
}

// ---------------------------------------------------------------------------------------
// Client

/// The client party's side: dials a server.
#[derive(Debug)]
pub struct QuicClient;

impl QuicClient {
    /// Connects to `addr`, accepting only a server whose certificate fingerprint is
    /// `server_fingerprint` (as printed by the server's `keygen`; `blake3:` optional), and
    /// presenting `identity` as the client certificate. Bounded by `timeouts.connect`.
    pub fn connect(
        addr: SocketAddr,
        identity: &Identity,
        server_fingerprint: &str,
        cfg: QuicConfig,
    ) -> Result<QuicChannel> {
        let expected = normalize_fingerprint(server_fingerprint)?;
        let rt = Arc::new(Rt::new(cfg.worker_threads)?);
        let transport = Arc::new(transport_config(&cfg)?);
        let (client_cfg, seen) = client_config(identity, &expected, transport)?;
        let local: SocketAddr =
            if addr.is_ipv6() { SocketAddr::from(([0u16; 8], 0)) } else { SocketAddr::from(([0u8; 4], 0)) };
        let socket = udp_socket(local, cfg.socket_buffer)?;
        let (timeout, idle) = (cfg.timeouts.connect, cfg.timeouts.idle);
        let payload = cfg.max_udp_payload;
        let outcome = rt.run(async move {
            let endpoint = new_endpoint(socket, None, payload)?;
            let connecting = endpoint
                .connect_with(client_cfg, addr, SERVER_NAME)
                .map_err(|e| TransportError::Setup(format!("cannot connect to {addr}: {e}")))?;
            let result = tokio::time::timeout(timeout, connecting).await;
            if !matches!(result, Ok(Ok(_))) {
                // Let our CONNECTION_CLOSE (e.g. the certificate alert) reach the server
                // before the runtime goes, so its log says why.
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            Ok::<_, TransportError>((endpoint, result))
        })??;
        let own_fp = identity.fingerprint();
        match outcome {
            (_, Err(_)) => Err(TransportError::Timeout {
                peer: format!("server {addr}"),
                what: "the QUIC/TLS handshake (is the server running and is UDP reachable?)".into(),
                after: timeout,
            }),
            (_, Ok(Err(e))) => {
                let seen = lock(&seen).clone();
                Err(match seen {
                    Some(fp) if fp != expected => TransportError::Setup(format!(
                        "server {addr} presented certificate {fp}, but we expected {expected}: check the server \
                         fingerprint you were given (the server prints its own at startup), or someone is \
                         intercepting the connection"
                    )),
                    _ => connect_error(&e, &format!("server {addr}"), &own_fp, idle),
                })
            }
            (endpoint, Ok(Ok(conn))) => {
                let peer = format!("server {addr}");
                Ok(QuicChannel::new(rt, Some(endpoint), conn, &cfg, peer, expected, own_fp))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Channel

/// Why the connection is no longer usable; turned into a [`TransportError`] per call.
#[derive(Clone, Debug)]
enum Gone {
    Closed { code: u64, reason: String },
    Local(String),
    IdleTimeout(Duration),
    Protocol(String),
    Malformed { lane: Lane, problem: String },
    CertRejected(String),
    Other(String),
}

impl Gone {
    fn from_connection(e: &ConnectionError, idle: Duration, own_fp: &str) -> Gone {
        match e {
            ConnectionError::ApplicationClosed(ac) => Gone::Closed {
                code: ac.error_code.into_inner(),
                reason: String::from_utf8_lossy(&ac.reason).into_owned(),
            },
            ConnectionError::TimedOut => Gone::IdleTimeout(idle),
            ConnectionError::LocallyClosed => Gone::Local("this side closed the connection".into()),
            ConnectionError::Reset => {
                Gone::Other("the peer reset the connection (it probably restarted)".into())
            }
            ConnectionError::ConnectionClosed(cc) if is_certificate_alert(cc.error_code) => {
                Gone::CertRejected(own_fp.to_string())
            }
            other => Gone::Other(format!("connection failed: {other}")),
        }
    }

    fn from_transport(e: TransportError) -> Gone {
        match e {
            TransportError::Malformed { lane, problem } => Gone::Malformed { lane, problem },
            other => Gone::Protocol(other.to_string()),
        }
    }

    fn to_error(&self, peer: &str) -> TransportError {
        let peer = peer.to_string();
        match self.clone() {
            Gone::Closed { code, reason } => crate::closed_by_peer(peer, code, &reason),
            Gone::Local(reason) | Gone::Other(reason) => TransportError::PeerGone { peer, reason },
            Gone::IdleTimeout(after) => {
                TransportError::Timeout { peer, what: "any packet (QUIC idle timeout)".into(), after }
            }
            Gone::Protocol(problem) => TransportError::Protocol { peer, problem },
            Gone::Malformed { lane, problem } => TransportError::Malformed { lane, problem },
            Gone::CertRejected(own_fp) => TransportError::Setup(format!(
                "{peer} rejected our certificate {own_fp}: ask its operator to allow this fingerprint"
            )),
        }
    }
}

#[derive(Default)]
struct Inbox {
    lanes: HashMap<Lane, VecDeque<Vec<u8>>>,
    open_lanes: Vec<Lane>,
    gone: Option<Gone>,
    /// Payload bytes handed to writer tasks and not yet written to QUIC.
    queued_send: usize,
    /// Received payload bytes queued and not yet read.
    queued_recv: usize,
    /// Reader tasks waiting for room under the receive budget: their lane and how many
    /// bytes they need.
    stalled: Vec<(Lane, usize)>,
}

/// State shared by the channel (consumer) and its reader/writer tasks (producers).
struct Shared {
    inbox: Mutex<Inbox>,
    ready: Condvar,
    /// [`QuicConfig::recv_budget`], as the session set it.
    recv_budget: std::sync::atomic::AtomicUsize,
    /// Signalled when the consumer takes a message (room under the budget).
    room: tokio::sync::Notify,
}

impl Shared {
    fn new(recv_budget: usize) -> Self {
        Shared {
            inbox: Mutex::default(),
            ready: Condvar::new(),
            recv_budget: recv_budget.into(),
            room: tokio::sync::Notify::new(),
        }
    }

    fn budget(&self) -> usize {
        self.recv_budget.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `need` more bytes fit under the receive budget. A message that can
    /// never fit is a protocol violation.
    async fn room_for(&self, lane: Lane, need: usize) -> Result<(), Gone> {
        let mut waiting = false;
        loop {
            let budget = self.budget();
            if need > budget {
                return Err(Gone::Protocol(format!(
                    "lane {lane:?} carries a message of at least {need} bytes, more than this session's receive budget of {budget} bytes"
                )));
            }
            {
                let mut inbox = lock(&self.inbox);
                if inbox.gone.is_some() || inbox.queued_recv + need <= budget {
                    if waiting {
                        if let Some(i) = inbox.stalled.iter().position(|w| *w == (lane, need)) {
                            inbox.stalled.swap_remove(i);
                        }
                    }
                    return Ok(());
                }
                if !waiting {
                    inbox.stalled.push((lane, need));
                    waiting = true;
                }
            }
            // Wake a consumer that may be waiting on another lane: it reports the flood.
            self.ready.notify_all();
            let _ = tokio::time::timeout(Duration::from_millis(20), self.room.notified()).await;
        }
    }

    fn set_gone(&self, gone: Gone) {
        let mut inbox = lock(&self.inbox);
        if inbox.gone.is_none() {
            inbox.gone = Some(gone);
        }
        drop(inbox);
        self.ready.notify_all();
    }

    fn gone(&self) -> Option<Gone> {
        lock(&self.inbox).gone.clone()
    }

    fn release_send(&self, len: usize) {
        let mut inbox = lock(&self.inbox);
        inbox.queued_send = inbox.queued_send.saturating_sub(len);
        drop(inbox);
        self.ready.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct LaneWriter {
    encoder: FrameEncoder,
    tx: mpsc::UnboundedSender<(Vec<Bytes>, usize)>,
    task: tokio::task::JoinHandle<()>,
}

/// One end of a QUIC connection, as a [`Channel`].
pub struct QuicChannel {
    conn: Connection,
    shared: Arc<Shared>,
    writers: HashMap<Lane, LaneWriter>,
    counters: Counters,
    timeouts: Timeouts,
    max_frame: u32,
    send_buffer: usize,
    peer: String,
    peer_fingerprint: String,
    own_fingerprint: String,
    closed: bool,
    /// The client's own endpoint (drained on close); `None` on the server side.
    endpoint: Option<Endpoint>,
    /// Last: the runtime must outlive every handle above.
    rt: Arc<Rt>,
}

impl std::fmt::Debug for QuicChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicChannel")
            .field("peer", &self.peer)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl QuicChannel {
    fn new(
        rt: Arc<Rt>,
        endpoint: Option<Endpoint>,
        conn: Connection,
        cfg: &QuicConfig,
        peer: String,
        peer_fingerprint: String,
        own_fingerprint: String,
    ) -> QuicChannel {
        let shared = Arc::new(Shared::new(cfg.recv_budget));
        rt.handle.spawn(demux(
            conn.clone(),
            shared.clone(),
            cfg.limits,
            cfg.timeouts.idle,
            own_fingerprint.clone(),
        ));
        QuicChannel {
            conn,
            shared,
            writers: HashMap::new(),
            counters: Counters::default(),
            timeouts: cfg.timeouts,
            max_frame: cfg.limits.max_frame,
            send_buffer: cfg.send_buffer,
            peer,
            peer_fingerprint,
            own_fingerprint,
            closed: false,
            endpoint,
            rt,
        }
    }

    /// Sets the receive budget ([`QuicConfig::recv_budget`]): what a session's declared
    /// shape needs at most. Readers waiting for room re-check at once.
    pub fn set_recv_budget(&mut self, bytes: usize) {
        self.shared.recv_budget.store(bytes, std::sync::atomic::Ordering::SeqCst);
        self.shared.room.notify_waiters();
    }

    /// The peer's certificate fingerprint.
    pub fn peer_fingerprint(&self) -> &str {
        &self.peer_fingerprint
    }

    /// The peer's UDP address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The current smoothed round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// The UDP payload size the connection currently sends (path MTU discovery's result
    /// so far, within [`QuicConfig::max_udp_payload`]).
    pub fn path_mtu(&self) -> u16 {
        self.conn.stats().path.current_mtu
    }

    /// UDP bytes (sent, received) on this connection so far, including QUIC, TLS and
    /// retransmissions: the real wire cost next to [`Counters`]' payload and framing.
    pub fn udp_bytes(&self) -> (u64, u64) {
        let stats = self.conn.stats();
        (stats.udp_tx.bytes, stats.udp_rx.bytes)
    }

    /// Waits until `len` more bytes fit in the send buffer, and reserves them.
    fn reserve_send(&self, lane: Lane, len: usize) -> Result<()> {
        let deadline = Instant::now() + self.timeouts.recv;
        let mut inbox = lock(&self.shared.inbox);
        loop {
            if let Some(g) = &inbox.gone {
                return Err(g.to_error(&self.peer));
            }
            if inbox.queued_send == 0 || inbox.queued_send + len <= self.send_buffer {
                inbox.queued_send += len;
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TransportError::Timeout {
                    peer: self.peer.clone(),
                    what: format!(
                        "the network to take {} queued bytes before a send on lane {lane:?}",
                        inbox.queued_send
                    ),
                    after: self.timeouts.recv,
                });
            }
            inbox = self
                .shared
                .ready
                .wait_timeout(inbox, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.closed {
            return Err(TransportError::PeerGone {
                peer: self.peer.clone(),
                reason: "this side already closed the channel".into(),
            });
        }
        match self.shared.gone() {
            Some(g) => Err(g.to_error(&self.peer)),
            None => Ok(()),
        }
    }

    /// Flushes what was sent (bounded by the idle timeout), then closes the connection
    /// with `code` (see [`close_code`]) and `reason`; the peer's receives fail with both.
    pub fn close(&mut self, code: u32, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Before the connection closes, so our own receives report this reason rather
        // than a bare "locally closed" (a reason the peer gave first is kept).
        self.shared.set_gone(Gone::Local(format!("this side closed the channel ({reason})")));
        let tasks: Vec<_> = self
            .writers
            .drain()
            .map(|(_, w)| {
                drop(w.tx);
                w.task
            })
            .collect();
        let conn = self.conn.clone();
        let endpoint = self.endpoint.clone();
        let linger = self.timeouts.idle;
        let reason_bytes = reason.as_bytes().to_vec();
        let _ = self.rt.run(async move {
            let _ = tokio::time::timeout(linger, async {
                for t in tasks {
                    let _ = t.await;
                }
            })
            .await;
            conn.close(VarInt::from_u32(code), &reason_bytes);
            if let Some(ep) = endpoint {
                let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
            }
        });
    }

    /// Test hook: stop the network runtime without closing, as if the process died.
    #[cfg(test)]
    fn crash(mut self) {
        self.closed = true;
        if let Some(rt) = Arc::get_mut(&mut self.rt).and_then(|r| r.rt.take()) {
            rt.shutdown_background();
        }
    }
}

impl Channel for QuicChannel {
    fn send_bytes(&mut self, lane: Lane, payload: &[u8]) -> Result<()> {
        self.send_vec(lane, payload.to_vec())
    }

    fn send_vec(&mut self, lane: Lane, payload: Vec<u8>) -> Result<()> {
        self.check_usable()?;
        let len = payload.len();
        self.reserve_send(lane, len)?;
        let (writer, opened) = match self.writers.entry(lane) {
            Entry::Occupied(o) => (o.into_mut(), false),
            Entry::Vacant(v) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let task = self.rt.handle.spawn(write_lane(
                    self.conn.clone(),
                    lane,
                    rx,
                    self.shared.clone(),
                    self.timeouts.idle,
                    self.own_fingerprint.clone(),
                ));
                (v.insert(LaneWriter { encoder: FrameEncoder::new(self.max_frame), tx, task }), true)
            }
        };
        let msg = writer.encoder.encode(Bytes::from(payload));
        let framing = msg.framing_len + if opened { LANE_PREAMBLE_LEN } else { 0 };
        if writer.tx.send((msg.chunks, len)).is_err() {
            // The writer stopped: it recorded why.
            return Err(self
                .shared
                .gone()
                .unwrap_or(Gone::Other("lane writer stopped".into()))
                .to_error(&self.peer));
        }
        self.counters.on_send(lane, len, framing);
        Ok(())
    }

    fn recv_bytes(&mut self, lane: Lane) -> Result<Vec<u8>> {
        self.recv_bytes_within(lane, self.timeouts.recv)
    }

    fn recv_bytes_within(&mut self, lane: Lane, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut inbox = lock(&self.shared.inbox);
        loop {
            if let Some(msg) = inbox.lanes.get_mut(&lane).and_then(VecDeque::pop_front) {
                inbox.queued_recv = inbox.queued_recv.saturating_sub(msg.len());
                drop(inbox);
                self.shared.room.notify_waiters();
                self.counters.on_recv(lane, msg.len());
                return Ok(msg);
            }
            if let Some(g) = &inbox.gone {
                return Err(g.to_error(&self.peer));
            }
            let (queued, budget) = (inbox.queued_recv, self.shared.budget());
            if !inbox.stalled.is_empty() && inbox.stalled.iter().all(|(_, need)| queued + need > budget) {
                // The budget is full of messages on lanes we are not reading, and we
                // read nothing else until `lane` has data: no progress is possible.
                let unread: Vec<String> = inbox
                    .lanes
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(l, q)| format!("{l:?}: {} bytes", q.iter().map(Vec::len).sum::<usize>()))
                    .collect();
                let problem = format!(
                    "the peer filled this session's receive budget of {budget} bytes with messages nobody reads ({}) while this party waits on lane {lane:?}",
                    unread.join(", ")
                );
                drop(inbox);
                self.shared.set_gone(Gone::Protocol(problem.clone()));
                self.conn.close(VarInt::from_u32(close_code::PROTOCOL_VIOLATION), problem.as_bytes());
                return Err(TransportError::Protocol { peer: self.peer.clone(), problem });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TransportError::Timeout {
                    peer: self.peer.clone(),
                    what: format!("a message on lane {lane:?}"),
                    after: timeout,
                });
            }
            inbox = self
                .shared
                .ready
                .wait_timeout(inbox, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn counters(&self) -> Counters {
        self.counters.clone()
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }

    fn close(&mut self, code: u32, reason: &str) {
        QuicChannel::close(self, code, reason);
    }

    fn set_recv_budget(&mut self, bytes: usize) {
        QuicChannel::set_recv_budget(self, bytes);
    }
}

impl Drop for QuicChannel {
    fn drop(&mut self) {
        self.close(close_code::DROPPED, "channel dropped");
    }
}

/// Accepts the peer's lane streams and spawns a reader per stream; records why the
/// connection ended.
async fn demux(conn: Connection, shared: Arc<Shared>, limits: FrameLimits, idle: Duration, own_fp: String) {
    loop {
        match conn.accept_uni().await {
            Ok(stream) => {
                tokio::spawn(read_lane(stream, conn.clone(), shared.clone(), limits, idle, own_fp.clone()));
            }
            Err(e) => {
                shared.set_gone(Gone::from_connection(&e, idle, &own_fp));
                return;
            }
        }
    }
}

async fn read_lane(
    mut stream: quinn::RecvStream,
    conn: Connection,
    shared: Arc<Shared>,
    limits: FrameLimits,
    idle: Duration,
    own_fp: String,
) {
    if let Err(gone) = read_lane_inner(&mut stream, &shared, limits, idle, &own_fp).await {
        if let Gone::Protocol(p) | Gone::Malformed { problem: p, .. } = &gone {
            let reason = format!("protocol violation: {p}");
            shared.set_gone(gone.clone());
            conn.close(VarInt::from_u32(close_code::PROTOCOL_VIOLATION), reason.as_bytes());
        } else {
            shared.set_gone(gone);
        }
    }
}

fn read_error(e: quinn::ReadError, lane: Option<Lane>, idle: Duration, own_fp: &str) -> Gone {
    match e {
        quinn::ReadError::ConnectionLost(c) => Gone::from_connection(&c, idle, own_fp),
        quinn::ReadError::Reset(code) => {
            Gone::Protocol(format!("the peer reset lane {lane:?} with code {code}"))
        }
        other => Gone::Other(format!("reading lane {lane:?}: {other}")),
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean end of stream before the first
/// byte.
async fn read_full(
    stream: &mut quinn::RecvStream,
    buf: &mut [u8],
    lane: Option<Lane>,
    idle: Duration,
    own_fp: &str,
) -> std::result::Result<bool, Gone> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]).await {
            Ok(Some(n)) => filled += n,
            Ok(None) if filled == 0 => return Ok(false),
            Ok(None) => {
                return Err(Gone::Protocol(format!(
                    "lane {lane:?} ended inside a frame ({filled} of {} bytes)",
                    buf.len()
                )))
            }
            Err(e) => return Err(read_error(e, lane, idle, own_fp)),
        }
    }
    Ok(true)
}

async fn read_lane_inner(
    stream: &mut quinn::RecvStream,
    shared: &Shared,
    limits: FrameLimits,
    idle: Duration,
    own_fp: &str,
) -> std::result::Result<(), Gone> {
    let mut id = [0u8; LANE_PREAMBLE_LEN];
    if !read_full(stream, &mut id, None, idle, own_fp).await? {
        return Ok(());
    }
    let id = u16::from_le_bytes(id);
    let lane =
        Lane::from_id(id).ok_or_else(|| Gone::Protocol(format!("stream opened for unknown lane id {id}")))?;
    {
        let mut inbox = lock(&shared.inbox);
        if inbox.open_lanes.contains(&lane) {
            return Err(Gone::Protocol(format!("a second stream was opened for lane {lane:?}")));
        }
        inbox.open_lanes.push(lane);
    }
    let mut reassembler = Reassembler::new(lane, limits);
    let mut header = [0u8; HEADER_LEN];
    loop {
        if !read_full(stream, &mut header, Some(lane), idle, own_fp).await? {
            if reassembler.mid_message() {
                return Err(Gone::Protocol(format!(
                    "lane {lane:?} ended in the middle of a chunked message"
                )));
            }
            return Ok(());
        }
        let h = FrameHeader::decode(&header);
        reassembler.check(&h).map_err(Gone::from_transport)?;
        // Room under the receive budget before anything is allocated for the payload.
        shared.room_for(lane, reassembler.partial_len() + h.len as usize).await?;
        reassembler.begin_frame(&h).map_err(Gone::from_transport)?;
        while reassembler.frame_remaining() > 0 {
            match stream.read_chunk(reassembler.frame_remaining(), true).await {
                Ok(Some(chunk)) => {
                    reassembler.extend(&chunk.bytes);
                }
                Ok(None) => {
                    return Err(Gone::Protocol(format!(
                        "lane {lane:?} ended inside the payload of frame {}",
                        h.seq
                    )))
                }
                Err(e) => return Err(read_error(e, Some(lane), idle, own_fp)),
            }
        }
        if let Some(msg) = reassembler.finish_frame() {
            let mut inbox = lock(&shared.inbox);
            inbox.queued_recv += msg.len();
            inbox.lanes.entry(lane).or_default().push_back(msg);
            drop(inbox);
            shared.ready.notify_all();
        }
    }
}

async fn write_lane(
    conn: Connection,
    lane: Lane,
    mut rx: mpsc::UnboundedReceiver<(Vec<Bytes>, usize)>,
    shared: Arc<Shared>,
    idle: Duration,
    own_fp: String,
) {
    let write_err = |e: quinn::WriteError| match e {
        quinn::WriteError::ConnectionLost(c) => Gone::from_connection(&c, idle, &own_fp),
        quinn::WriteError::Stopped(code) => {
            Gone::Protocol(format!("the peer stopped reading lane {lane:?} (code {code})"))
        }
        other => Gone::Other(format!("writing lane {lane:?}: {other}")),
    };
    let result = async {
        let mut stream = conn.open_uni().await.map_err(|e| Gone::from_connection(&e, idle, &own_fp))?;
        stream.write_all(&lane.id().to_le_bytes()).await.map_err(write_err)?;
        while let Some((mut chunks, len)) = rx.recv().await {
            stream.write_all_chunks(&mut chunks).await.map_err(write_err)?;
            shared.release_send(len);
        }
        // The channel is closing: end the stream and wait until the peer has everything.
        if stream.finish().is_ok() {
            let _ = stream.stopped().await;
        }
        Ok::<(), Gone>(())
    }
    .await;
    if let Err(gone) = result {
        shared.set_gone(gone);
    }
}

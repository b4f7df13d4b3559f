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

mod channel;
mod endpoint;
mod service;
mod verify;

pub use channel::QuicChannel;
pub use endpoint::{QuicClient, QuicServer};

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

/// Locks `m`, taking the data of a poisoned lock (a panicked holder cannot leave these
/// queues half-updated).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

//! The endpoints: [`QuicServer`] (the server party binds it, accepts connections, admits
//! or refuses each session) and [`QuicClient`] (the client party dials, with `info` and
//! `health` as one-shot calls).

use super::*;

/// A connection whose TLS handshake completed, waiting for `accept`.
pub(super) struct Connected {
    conn: Connection,
    peer_fingerprint: String,
}

/// The server party's endpoint: accepts any number of concurrent client connections.
pub struct QuicServer {
    pub(super) rt: Arc<Rt>,
    pub(super) endpoint: Endpoint,
    pub(super) local_addr: SocketAddr,
    pub(super) fingerprint: String,
    pub(super) cfg: QuicConfig,
    pub(super) accepted: Mutex<std::sync::mpsc::Receiver<Result<Connected>>>,
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

//! The server's accept loop and the client's three requests, so `serve`, `info`,
//! `health` and session setup in the binaries are one call each.
//!
//! Server: [`QuicServer::serve`] accepts clients, runs [`server_handshake`] for each on its
//! own thread, answers `Info`/`Health` itself, and hands each accepted `Session` to the
//! handler. Client: [`QuicClient::info`], [`QuicClient::health`], [`QuicClient::session`]
//! connect, handshake, and either close or return the open channel.

use super::{QuicChannel, QuicClient, QuicConfig, QuicServer};
use crate::handshake::{
    client_handshake, server_handshake, ClientHello, Mismatch, Request, ServerInfo, SessionSlots,
};
use crate::{close_code, Identity, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections served at once beyond the session cap: `info`, `health` and handshakes
/// in progress. Anything over the cap is closed at once with [`close_code::BUSY`].
pub const CONTROL_CONNECTIONS: u32 = 16;

/// Characters of peer-supplied text a log line keeps: room for this side's own longest
/// diagnostics (a failed session's error, which quotes peer text, runs to about 250),
/// while a peer still cannot fill the log.
pub const PEER_TEXT_MAX: usize = 480;

/// Escapes peer-supplied text for a log line: control characters and quotes as escapes,
/// at most [`PEER_TEXT_MAX`] characters. A remote peer never writes raw text into our logs.
pub fn escape_peer_text(text: &str) -> String {
    let mut out: String = text.chars().flat_map(char::escape_debug).take(PEER_TEXT_MAX).collect();
    if text.chars().flat_map(char::escape_debug).nth(PEER_TEXT_MAX).is_some() {
        out.push('…');
    }
    out
}

/// A log line budget: at most `per_second` lines, then one summary of what was
/// suppressed when lines are allowed again.
struct RateLimit {
    per_second: u32,
    window: std::sync::Mutex<(Instant, u32, u64)>,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        RateLimit { per_second, window: std::sync::Mutex::new((Instant::now(), 0, 0)) }
    }

    /// Whether a line may be logged now, and how many were suppressed before it.
    fn allow(&self) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.0.elapsed() >= Duration::from_secs(1) {
            *w = (Instant::now(), 0, w.2);
        }
        if w.1 >= self.per_second {
            w.2 += 1;
            return None;
        }
        w.1 += 1;
        Some(std::mem::take(&mut w.2))
    }

    fn warn(&self, line: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.allow() {
            if suppressed > 0 {
                tracing::warn!("{suppressed} more failed connections were not logged (rate limit)");
            }
            tracing::warn!("{line}");
        }
    }
}

impl QuicServer {
    /// Serves until the server is closed: every client gets its own thread, which runs
    /// the handshake against `info` (bounded by `timeouts.handshake`), answers `Info` and
    /// `Health` and closes, and passes an accepted `Session` to `handler` with the open
    /// channel and the session slot (held until the handler returns). At most
    /// `max_sessions` sessions run at once (others are answered `Busy`), and at most
    /// [`CONTROL_CONNECTIONS`] more connections are being served; beyond that a
    /// connection is closed at once as busy. The handler should [`QuicChannel::close`]
    /// with [`close_code::NORMAL`] when done. `admit` decides, before the handshake is
    /// answered, whether the application takes the hello from a client with that
    /// certificate fingerprint. Failures are logged once each, escaped and rate-limited,
    /// and do not stop the loop.
    pub fn serve<A, F, E>(&self, info: &ServerInfo, max_sessions: u32, admit: A, handler: F)
    where
        A: Fn(&ClientHello, &str) -> std::result::Result<(), Mismatch> + Send + Sync + 'static,
        F: Fn(QuicChannel, ClientHello) -> Result<(), E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        let handler = Arc::new(handler);
        let admit = Arc::new(admit);
        let info = Arc::new(info.clone());
        let slots = SessionSlots::new(max_sessions);
        let connections = SessionSlots::new(max_sessions.saturating_add(CONTROL_CONNECTIONS));
        let log = Arc::new(RateLimit::new(10));
        let handshake_timeout = self.cfg.timeouts.handshake;
        while let Some(accepted) = self.accept() {
            let mut chan = match accepted {
                Ok(chan) => chan,
                Err(e) => {
                    log.warn(format_args!("connection refused: {}", escape_peer_text(&e.to_string())));
                    continue;
                }
            };
            let Some(conn_slot) = connections.try_take() else {
                log.warn(format_args!(
                    "{}: too many connections at once, closed as busy",
                    chan.remote_addr()
                ));
                chan.close(close_code::BUSY, "busy");
                continue;
            };
            let (handler, admit, info, slots, log) =
                (handler.clone(), admit.clone(), info.clone(), slots.clone(), log.clone());
            let name = format!("shardlm-peer-{}", chan.remote_addr());
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let _conn_slot = conn_slot;
                let peer = crate::Channel::peer(&chan);
                let client_fp = chan.peer_fingerprint().to_string();
                let admit = |h: &ClientHello| admit(h, &client_fp);
                let (hello, slot) =
                    match server_handshake(&mut chan, &info, handshake_timeout, &slots, &admit) {
                        Ok(h) => h,
                        Err(e) => {
                            log.warn(format_args!(
                                "handshake with {peer} failed: {}",
                                escape_peer_text(&e.to_string())
                            ));
                            return;
                        }
                    };
                match hello.request {
                    Request::Info | Request::Health => {
                        tracing::debug!("answered {:?} from {peer}", hello.request);
                        // The client closes once it has read the answer. Closing first
                        // could overtake the answer still in flight (a connection close
                        // discards unread stream data), so wait for that, bounded.
                        let _ = crate::Channel::recv_bytes_within(
                            &mut chan,
                            crate::Lane::Control,
                            handshake_timeout,
                        );
                        chan.close(close_code::NORMAL, "done");
                    }
                    Request::Session { ref variant, .. } => {
                        tracing::info!("session with {peer}: {}", escape_peer_text(variant));
                        let _slot = slot;
                        if let Err(e) = handler(chan, hello) {
                            log.warn(format_args!(
                                "session with {peer} failed: {}",
                                escape_peer_text(&e.to_string())
                            ));
                        }
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!("cannot start a thread for a client: {e}");
            }
        }
    }
}

impl QuicClient {
    /// Connects, asks for the server's [`ServerInfo`], and closes.
    pub fn info(
        addr: SocketAddr,
        identity: &Identity,
        server_fingerprint: &str,
        cfg: QuicConfig,
    ) -> Result<ServerInfo> {
        Self::request(addr, identity, server_fingerprint, cfg, Request::Info).map(|(_, info)| info)
    }

    /// Connects, sends a `Health` request, closes, and returns how long the whole
    /// exchange took (connection, TLS and handshake).
    pub fn health(
        addr: SocketAddr,
        identity: &Identity,
        server_fingerprint: &str,
        cfg: QuicConfig,
    ) -> Result<Duration> {
        let t0 = Instant::now();
        Self::request(addr, identity, server_fingerprint, cfg, Request::Health)?;
        Ok(t0.elapsed())
    }

    /// Connects and opens a two-party session (`request` is a [`Request::Session`]);
    /// returns the open channel and what the server serves. A mismatch (variant, model
    /// fingerprint, protocol version, shape, bundle) is
    /// [`crate::TransportError::Handshake`] naming the field; a full server is
    /// [`crate::TransportError::Busy`].
    pub fn session(
        addr: SocketAddr,
        identity: &Identity,
        server_fingerprint: &str,
        cfg: QuicConfig,
        request: Request,
    ) -> Result<(QuicChannel, ServerInfo)> {
        Self::request(addr, identity, server_fingerprint, cfg, request)
    }

    fn request(
        addr: SocketAddr,
        identity: &Identity,
        server_fingerprint: &str,
        cfg: QuicConfig,
        request: Request,
    ) -> Result<(QuicChannel, ServerInfo)> {
        let timeout = cfg.timeouts.handshake;
        let keep_open = matches!(request, Request::Session { .. });
        let mut chan = QuicClient::connect(addr, identity, server_fingerprint, cfg)?;
        let info = client_handshake(&mut chan, &ClientHello::new(request), timeout)?;
        if !keep_open {
            chan.close(close_code::NORMAL, "done");
        }
        Ok((chan, info))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cfg, server_info};
    use super::*;
    use crate::{Channel, Lane, TransportError};

    fn session(variant: &str, id: [u8; 16]) -> Request {
        Request::Session {
            variant: variant.into(),
            model_fingerprint: "blake3:1111".into(),
            session_id: id,
            params: crate::handshake::SessionParams { prompt_tokens: 1, max_new_tokens: 1, all_rows: false },
            material: None,
        }
    }

    #[test]
    fn peer_text_is_escaped_and_bounded() {
        assert_eq!(escape_peer_text("bad\nline\u{1b}[31m"), "bad\\nline\\u{1b}[31m");
        let long = "x".repeat(1000);
        assert_eq!(escape_peer_text(&long).chars().count(), PEER_TEXT_MAX + 1);
        let limit = RateLimit::new(2);
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
    }

    #[test]
    fn serve_answers_info_health_and_sessions() {
        let server_id = Identity::generate("server").unwrap();
        let client_id = Identity::generate("client").unwrap();
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        let server =
            Arc::new(QuicServer::bind(localhost, &server_id, &[client_id.fingerprint()], cfg()).unwrap());
        let (addr, fp) = (server.local_addr(), server.fingerprint().to_string());
        let srv = server.clone();
        let serving = std::thread::spawn(move || {
            srv.serve(
                &server_info(),
                4,
                |_, _| Ok(()),
                |mut chan, _hello| -> Result<()> {
                    let v = chan.recv_u64s(Lane::Openings, 2)?;
                    chan.send_u64s(Lane::Openings, &[v[0] + v[1]])?;
                    chan.recv_bytes(Lane::Control)?; // the client's goodbye
                    chan.close(close_code::NORMAL, "session done");
                    Ok(())
                },
            )
        });

        assert_eq!(QuicClient::info(addr, &client_id, &fp, cfg()).unwrap(), server_info());
        assert!(QuicClient::health(addr, &client_id, &fp, cfg()).unwrap() < Duration::from_secs(5));

        let (mut chan, info) =
            QuicClient::session(addr, &client_id, &fp, cfg(), session("v3", [9; 16])).unwrap();
        assert_eq!(info.model, "tiny");
        chan.send_u64s(Lane::Openings, &[40, 2]).unwrap();
        assert_eq!(chan.recv_u64s(Lane::Openings, 1).unwrap(), vec![42]);
        chan.send_bytes(Lane::Control, b"bye").unwrap();
        let e = chan.recv_bytes(Lane::Control).unwrap_err();
        assert!(e.to_string().contains("session done"), "{e}");

        let e = QuicClient::session(addr, &client_id, &fp, cfg(), session("v3-ot", [1; 16])).unwrap_err();
        assert!(matches!(e, TransportError::Handshake(_)), "{e:?}");
        assert!(e.to_string().contains("variant differs"), "{e}");

        server.close();
        serving.join().unwrap();
    }
}

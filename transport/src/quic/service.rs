//! The server's accept loop and the client's three requests, so `serve`, `info`,
//! `health` and session setup in the binaries are one call each.
//!
//! Server: [`QuicServer::serve`] accepts clients, runs [`server_handshake`] for each on its
//! own thread, answers `Info`/`Health` itself, and hands each accepted `Session` to the
//! handler. Client: [`QuicClient::info`], [`QuicClient::health`], [`QuicClient::session`]
//! connect, handshake, and either close or return the open channel.

use super::{QuicChannel, QuicClient, QuicConfig, QuicServer};
use crate::handshake::{client_handshake, server_handshake, ClientHello, Request, ServerInfo};
use crate::{close_code, Identity, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl QuicServer {
    /// Serves until the server is closed: every client gets its own thread, which runs
    /// the handshake against `info` (bounded by `timeouts.handshake`), answers `Info` and
    /// `Health` and closes, and passes an accepted `Session` to `handler` with the open
    /// channel. The handler should [`QuicChannel::close`] with
    /// [`close_code::NORMAL`] when done. Failed connections, refused handshakes and
    /// handler errors are logged (tracing) and do not stop the loop.
    pub fn serve<F, E>(&self, info: &ServerInfo, handler: F)
    where
        F: Fn(QuicChannel, ClientHello) -> Result<(), E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        let handler = Arc::new(handler);
        let info = Arc::new(info.clone());
        let handshake_timeout = self.cfg.timeouts.handshake;
        while let Some(accepted) = self.accept() {
            let mut chan = match accepted {
                Ok(chan) => chan,
                Err(e) => {
                    tracing::warn!("connection refused: {e}");
                    continue;
                }
            };
            let (handler, info) = (handler.clone(), info.clone());
            let name = format!("shardlm-peer-{}", chan.remote_addr());
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let peer = crate::Channel::peer(&chan);
                let hello = match server_handshake(&mut chan, &info, handshake_timeout) {
                    Ok(hello) => hello,
                    Err(e) => {
                        tracing::warn!("handshake with {peer} failed: {e}");
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
                    Request::Session { .. } => {
                        tracing::info!("session with {peer}: {:?}", hello.request);
                        if let Err(e) = handler(chan, hello) {
                            tracing::warn!("session with {peer} failed: {e}");
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

    /// Connects and opens a two-party session; returns the open channel and what the
    /// server serves. A mismatch (variant, model fingerprint, protocol version) is
    /// [`crate::TransportError::Handshake`] naming the field.
    pub fn session(
        addr: SocketAddr,
        identity: &Identity,
        server_fingerprint: &str,
        cfg: QuicConfig,
        variant: &str,
        model_fingerprint: &str,
        session_id: [u8; 16],
    ) -> Result<(QuicChannel, ServerInfo)> {
        let request = Request::Session {
            variant: variant.to_string(),
            model_fingerprint: model_fingerprint.to_string(),
            session_id,
        };
        let (chan, info) = Self::request(addr, identity, server_fingerprint, cfg, request)?;
        Ok((chan, info))
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
            srv.serve(&server_info(), |mut chan, _hello| -> Result<()> {
                let v = chan.recv_u64s(Lane::Openings, 2)?;
                chan.send_u64s(Lane::Openings, &[v[0] + v[1]])?;
                chan.recv_bytes(Lane::Control)?; // the client's goodbye
                chan.close(close_code::NORMAL, "session done");
                Ok(())
            })
        });

        assert_eq!(QuicClient::info(addr, &client_id, &fp, cfg()).unwrap(), server_info());
        assert!(QuicClient::health(addr, &client_id, &fp, cfg()).unwrap() < Duration::from_secs(5));

        let (mut chan, info) =
            QuicClient::session(addr, &client_id, &fp, cfg(), "v3", "blake3:1111", [9; 16]).unwrap();
        assert_eq!(info.model, "tiny");
        chan.send_u64s(Lane::Openings, &[40, 2]).unwrap();
        assert_eq!(chan.recv_u64s(Lane::Openings, 1).unwrap(), vec![42]);
        chan.send_bytes(Lane::Control, b"bye").unwrap();
        let e = chan.recv_bytes(Lane::Control).unwrap_err();
        assert!(e.to_string().contains("session done"), "{e}");

        let e =
            QuicClient::session(addr, &client_id, &fp, cfg(), "v3-ot", "blake3:1111", [1; 16]).unwrap_err();
        assert!(matches!(e, TransportError::Handshake(_)), "{e:?}");
        assert!(e.to_string().contains("variant differs"), "{e}");

        server.close();
        serving.join().unwrap();
    }
}

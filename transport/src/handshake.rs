//! The application handshake, on [`Lane::Control`] right after the connection is up.
//!
//! ```text
//! P0 (client) -- ClientHello { protocol_version, request } -->  P1 (server)
//! P0          <-- ServerHello::Accepted(ServerInfo) | Rejected(Mismatch) --  P1
//! ```
//!
//! `Request::Session` asks for a two-party session: the server checks the protocol
//! version, that it serves the variant, and that both parties loaded the same checkpoint
//! (model fingerprint, DESIGN.md 1). `Info` and `Health` only need the protocol version.
//! On a mismatch the server answers `Rejected`, closes the channel with
//! [`close_code::HANDSHAKE_REJECTED`] and a message naming the field, and both sides
//! return [`TransportError::Handshake`] with that message.
//!
//! [`check_hello`] is the pure decision; [`client_handshake`] and [`server_handshake`]
//! drive it over any [`Channel`].

use crate::{close_code, Channel, ChannelExt, Lane, Result, TransportError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The wire protocol version; bump on any incompatible change of frames or messages.
pub const PROTOCOL_VERSION: u32 = 3;

/// The public shape of a session, declared by the client before anything else: the
/// server checks every size the client later announces against it, before allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParams {
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// Forward passes after the prefill, plus one: the session's token budget.
    pub max_new_tokens: u32,
    /// Whether the prefill asks for logits at every position (else the last only).
    pub all_rows: bool,
}

/// Which session of which dealt bundle the client is about to use (variants whose
/// server holds material): both parties must stand at the same place of the same
/// bundle before any material is consumed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterialBinding {
    /// The bundle id (from the manifest both parts carry).
    pub bundle_id: String,
    /// The session index within the bundle.
    pub session: u64,
}

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A two-party session.
    Session {
        /// Protocol variant name (`v2`, `v3-mpc`, ...).
        variant: String,
        /// blake3 fingerprint of the client's config + weights.
        model_fingerprint: String,
        /// Random id chosen by the client (material bookkeeping, logs).
        session_id: [u8; 16],
        /// The session's public shape.
        params: SessionParams,
        /// The bundle session the client will use, for variants whose server holds
        /// material.
        material: Option<MaterialBinding>,
    },
    /// The server's [`ServerInfo`], then close.
    Info,
    /// Liveness check, then close.
    Health,
}

/// The client's first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// [`PROTOCOL_VERSION`] of the client.
    pub protocol_version: u32,
    /// What it asks for.
    pub request: Request,
}

impl ClientHello {
    /// A hello at this build's [`PROTOCOL_VERSION`].
    pub fn new(request: Request) -> Self {
        ClientHello { protocol_version: PROTOCOL_VERSION, request }
    }
}

/// What a server serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Model name (e.g. `qwen2.5-0.5b`).
    pub model: String,
    /// Architecture (e.g. `Qwen2ForCausalLM`).
    pub architecture: String,
    /// blake3 fingerprint of config + weights.
    pub fingerprint: String,
    /// Variant names served.
    pub variants: Vec<String>,
    /// Compute devices (e.g. `cuda:0 NVIDIA H100`).
    pub devices: Vec<String>,
    /// Server software version.
    pub version: String,
    /// The server's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The providers that attest the server for v3-cc (`sev-snp`, `nvidia`, `software`,
    /// ...); empty when it does not serve v3-cc.
    pub attestation: Vec<String>,
    /// What the server's exact ring GEMM costs, measured when it started; v3 clients
    /// cut their passes into chunks with it. `None`: not measured.
    pub ring_gemm: Option<GemmCost>,
}

/// The measured cost of the server's exact ring GEMM per weight element: a call on `r`
/// rows of a `d_out x d_in` weight takes about `d_out d_in (fixed + r row)` picoseconds
/// (`fixed`: one pass over the weights; `row`: the arithmetic per input row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmCost {
    /// Picoseconds per weight element per call.
    pub fixed_ps: u64,
    /// Picoseconds per weight element per input row.
    pub row_ps: u64,
}

/// Why a server refused a client: one field, both values, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// The field that differs (`protocol version`, `variant`, `model fingerprint`).
    pub field: String,
    /// The server's value.
    pub server: String,
    /// The client's value.
    pub client: String,
    /// What to do about it.
    pub hint: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} differs: server has {}, client has {}; {}",
            self.field, self.server, self.client, self.hint
        )
    }
}

/// Why a handshake failed: the message, and the field that differs when the server
/// said which (a client can act on some, e.g. a bundle session it is behind on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// What happened and what to do.
    pub message: String,
    /// The server's answer, when it sent one.
    pub mismatch: Option<Box<Mismatch>>,
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for HandshakeFailure {
    fn from(message: String) -> Self {
        HandshakeFailure { message, mismatch: None }
    }
}

impl From<Mismatch> for HandshakeFailure {
    fn from(m: Mismatch) -> Self {
        HandshakeFailure { message: m.to_string(), mismatch: Some(Box::new(m)) }
    }
}

/// The server's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerHello {
    /// Go ahead; here is what the server serves.
    Accepted(ServerInfo),
    /// Incompatible; the connection closes next.
    Rejected(Mismatch),
    /// Every session slot is in use; the connection closes next. Try again later.
    Busy {
        /// Sessions running.
        active: u32,
        /// The server's cap (`--max-sessions`).
        max: u32,
    },
}

/// Decides whether `server` can serve `hello`. Pure.
pub fn check_hello(hello: &ClientHello, server: &ServerInfo) -> Result<(), Mismatch> {
    if hello.protocol_version != server.protocol_version {
        return Err(Mismatch {
            field: "protocol version".into(),
            server: server.protocol_version.to_string(),
            client: hello.protocol_version.to_string(),
            hint: "run the same ShardLM release on both hosts".into(),
        });
    }
    if let Request::Session { variant, model_fingerprint, .. } = &hello.request {
        if !server.variants.iter().any(|v| v == variant) {
            return Err(Mismatch {
                field: "variant".into(),
                server: format!("[{}]", server.variants.join(", ")),
                client: variant.clone(),
                hint: match variant.as_str() {
                    "v3-mpc" => "choose a variant the server serves, or start a server with `--material DIR/p1` of a v3-mpc bundle (a server holds one bundle, so one fully private variant)",
                    "v3-ot" => "choose a variant the server serves, or start a server with `--material DIR/p1` of a v3-ot bundle (a server holds one bundle, so one fully private variant)",
                    "v3-cc" => "choose a variant the server serves, or start the server with `--cc-provider` (confidential hardware)",
                    _ => "choose a variant the server serves, or start the server with it enabled",
                }
                .into(),
            });
        }
        if model_fingerprint != &server.fingerprint {
            return Err(Mismatch {
                field: "model fingerprint".into(),
                server: server.fingerprint.clone(),
                client: model_fingerprint.clone(),
                hint: format!("both parties must load the same checkpoint (server serves {})", server.model),
            });
        }
    }
    Ok(())
}

/// Client side: sends `hello`, waits up to `timeout` for the answer, and returns the
/// server's info. A rejection closes the channel and becomes
/// [`TransportError::Handshake`] naming the field.
pub fn client_handshake<C: Channel + ?Sized>(
    chan: &mut C,
    hello: &ClientHello,
    timeout: Duration,
) -> Result<ServerInfo> {
    chan.send_msg(Lane::Control, hello)?;
    let bytes = chan.recv_bytes_within(Lane::Control, timeout)?;
    let answer: ServerHello = crate::decode_msg(&bytes).map_err(|e| TransportError::Protocol {
        peer: chan.peer(),
        problem: format!(
            "cannot decode the server's handshake answer ({e}); is it a ShardLM server of a compatible release?"
        ),
    })?;
    match answer {
        ServerHello::Accepted(info) => {
            // A server of an older release might not check; refuse locally too.
            if let Err(m) = check_hello(hello, &info) {
                chan.close(close_code::HANDSHAKE_REJECTED, &m.to_string());
                return Err(TransportError::Handshake(m.into()));
            }
            Ok(info)
        }
        ServerHello::Rejected(m) => {
            chan.close(close_code::HANDSHAKE_REJECTED, &m.to_string());
            Err(TransportError::Handshake(m.into()))
        }
        ServerHello::Busy { active, max } => {
            chan.close(close_code::BUSY, "busy");
            Err(TransportError::Busy { peer: chan.peer(), active, max })
        }
    }
}

/// A server's cap on concurrent sessions: a session holds a [`SessionSlot`] from its
/// handshake until it ends.
#[derive(Debug)]
pub struct SessionSlots {
    max: u32,
    active: std::sync::atomic::AtomicU32,
}

/// One taken session slot, given back when dropped.
#[derive(Debug)]
pub struct SessionSlot(std::sync::Arc<SessionSlots>);

impl SessionSlots {
    /// At most `max` sessions at once (at least 1).
    pub fn new(max: u32) -> std::sync::Arc<Self> {
        std::sync::Arc::new(SessionSlots { max: max.max(1), active: Default::default() })
    }

    /// Sessions running now.
    pub fn active(&self) -> u32 {
        self.active.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The cap.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// A slot, or `None` when all are taken.
    pub fn try_take(self: &std::sync::Arc<Self>) -> Option<SessionSlot> {
        use std::sync::atomic::Ordering::SeqCst;
        self.active.fetch_update(SeqCst, SeqCst, |a| (a < self.max).then_some(a + 1)).ok()?;
        Some(SessionSlot(self.clone()))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Server side: waits up to `timeout` for the client's hello, checks it against `ours`
/// and then with `admit` (the application's own checks: the declared shape, the
/// material binding), takes a session slot for a `Session` (answering `Busy` when none
/// is free), answers,
/// and returns the hello with the slot (the caller then serves the request; for `Info`
/// and `Health` it just closes). A mismatch is answered with `Rejected`, the channel is
/// closed, and the result is [`TransportError::Handshake`] naming the field.
pub fn server_handshake<C: Channel + ?Sized>(
    chan: &mut C,
    ours: &ServerInfo,
    timeout: Duration,
    slots: &std::sync::Arc<SessionSlots>,
    admit: &dyn Fn(&ClientHello) -> std::result::Result<(), Mismatch>,
) -> Result<(ClientHello, Option<SessionSlot>)> {
    let bytes = chan.recv_bytes_within(Lane::Control, timeout)?;
    let hello: ClientHello = match crate::decode_msg(&bytes) {
        Ok(h) => h,
        Err(e) => {
            let problem = format!(
                "cannot decode the client's hello ({e}); is it a ShardLM client of a compatible release?"
            );
            chan.close(close_code::PROTOCOL_VIOLATION, &problem);
            return Err(TransportError::Protocol { peer: chan.peer(), problem });
        }
    };
    match check_hello(&hello, ours).and_then(|()| admit(&hello)) {
        Ok(()) => {
            let slot = match hello.request {
                Request::Session { .. } => match slots.try_take() {
                    Some(slot) => Some(slot),
                    None => {
                        let (active, max) = (slots.active(), slots.max());
                        let _ = chan.send_msg(Lane::Control, &ServerHello::Busy { active, max });
                        chan.close(close_code::BUSY, "busy");
                        // For this server's own log ("handshake with CLIENT failed: ...").
                        return Err(TransportError::Busy { peer: "this server".into(), active, max });
                    }
                },
                _ => None,
            };
            chan.send_msg(Lane::Control, &ServerHello::Accepted(ours.clone()))?;
            Ok((hello, slot))
        }
        Err(m) => {
            let message = m.to_string();
            // Best effort: the close below carries the same message if this is lost.
            let _ = chan.send_msg(Lane::Control, &ServerHello::Rejected(m));
            chan.close(close_code::HANDSHAKE_REJECTED, &message);
            Err(TransportError::Handshake(message.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    pub(crate) fn info() -> ServerInfo {
        ServerInfo {
            model: "tiny".into(),
            architecture: "Qwen2ForCausalLM".into(),
            fingerprint: "blake3:aaaa".into(),
            variants: vec!["v2".into(), "v3-mpc".into()],
            devices: vec!["cpu".into()],
            version: "0.1.0".into(),
            protocol_version: PROTOCOL_VERSION,
            attestation: vec![],
            ring_gemm: None,
        }
    }

    fn session(variant: &str, fp: &str) -> ClientHello {
        ClientHello::new(Request::Session {
            variant: variant.into(),
            model_fingerprint: fp.into(),
            session_id: [7; 16],
            params: SessionParams { prompt_tokens: 3, max_new_tokens: 2, all_rows: false },
            material: None,
        })
    }

    /// The hellos' wire format is bincode 1's legacy one (fixed-width little-endian
    /// integers, u64 length prefixes, u32 enum tags), byte for byte; the bounded decoder
    /// must not change it.
    #[test]
    fn hello_encoding_is_unchanged() {
        let hello = session("v3-mpc", "blake3:aaaa");
        let mut want = vec![3, 0, 0, 0, 0, 0, 0, 0]; // protocol_version 3, Request::Session
        want.extend([6, 0, 0, 0, 0, 0, 0, 0]);
        want.extend(b"v3-mpc");
        want.extend([11, 0, 0, 0, 0, 0, 0, 0]);
        want.extend(b"blake3:aaaa");
        want.extend([7; 16]);
        want.extend([3, 0, 0, 0, 2, 0, 0, 0, 0]); // params: 3 prompt tokens, 2 new, last row
        want.push(0); // material: None
        assert_eq!(crate::encode_msg(&hello).unwrap(), want);
        assert_eq!(bincode::serialize(&hello).unwrap(), want);
        assert_eq!(crate::decode_msg::<ClientHello>(&want).unwrap(), hello);
        let answer = ServerHello::Accepted(info());
        let bytes = crate::encode_msg(&answer).unwrap();
        assert_eq!(bytes, bincode::serialize(&answer).unwrap());
        assert_eq!(&bytes[..12], &[0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]); // Accepted, "tiny"
        assert_eq!(crate::decode_msg::<ServerHello>(&bytes).unwrap(), answer);
        // Trailing bytes are still allowed, as bincode::deserialize allowed them.
        want.push(0xAA);
        assert_eq!(crate::decode_msg::<ClientHello>(&want).unwrap(), hello);
    }

    #[test]
    fn check_names_the_field() {
        assert!(check_hello(&session("v2", "blake3:aaaa"), &info()).is_ok());
        assert!(check_hello(&ClientHello::new(Request::Health), &info()).is_ok());
        let m = check_hello(&session("v3-ot", "blake3:aaaa"), &info()).unwrap_err();
        assert_eq!(m.field, "variant");
        let m = check_hello(&session("v2", "blake3:bbbb"), &info()).unwrap_err();
        assert_eq!(
            m.to_string(),
            "model fingerprint differs: server has blake3:aaaa, client has blake3:bbbb; \
             both parties must load the same checkpoint (server serves tiny)"
        );
        let mut old = ClientHello::new(Request::Info);
        old.protocol_version = 0;
        assert_eq!(check_hello(&old, &info()).unwrap_err().field, "protocol version");
    }

    #[test]
    fn drivers_over_memory_pair() {
        let t = Duration::from_secs(5);
        let (mut c, mut s) = memory::pair();
        let slots = SessionSlots::new(1);
        let s1 = slots.clone();
        let server = std::thread::spawn(move || server_handshake(&mut s, &info(), t, &s1, &|_| Ok(())));
        let got = client_handshake(&mut c, &session("v3-mpc", "blake3:aaaa"), t).unwrap();
        assert_eq!(got, info());
        let (hello, slot) = server.join().unwrap().unwrap();
        assert_eq!(hello, session("v3-mpc", "blake3:aaaa"));
        // The only slot is taken: the next session is told the server is busy.
        let (mut c2, mut s2) = memory::pair();
        let s1 = slots.clone();
        let server = std::thread::spawn(move || server_handshake(&mut s2, &info(), t, &s1, &|_| Ok(())));
        let e = client_handshake(&mut c2, &session("v2", "blake3:aaaa"), t).unwrap_err();
        assert!(matches!(e, TransportError::Busy { active: 1, max: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("busy") && e.to_string().contains("--max-sessions"), "{e}");
        assert!(server.join().unwrap().is_err());
        drop(slot);
        assert_eq!(slots.active(), 0);

        let (mut c, mut s) = memory::pair();
        let server = std::thread::spawn(move || {
            server_handshake(&mut s, &info(), t, &SessionSlots::new(4), &|_| Ok(()))
        });
        let cerr = client_handshake(&mut c, &session("v2", "blake3:bbbb"), t).unwrap_err().to_string();
        let serr = server.join().unwrap().unwrap_err().to_string();
        for e in [&cerr, &serr] {
            assert!(
                e.contains("model fingerprint differs: server has blake3:aaaa, client has blake3:bbbb"),
                "{e}"
            );
        }
    }
}

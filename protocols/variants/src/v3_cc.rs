//! v3-cc: the plaintext engine inside attested confidential-computing hardware
//! (DESIGN.md section 3, "Confidential computing"; the attestation itself is
//! [`shardlm_attest`]). The client trusts the hardware vendors' roots instead of a
//! second party: the server party's process runs the model in the clear, inside a
//! confidential VM whose memory the host cannot read, and the client sends its tokens
//! encrypted to a key that was made inside that VM and never left it.
//!
//! On the session's channel (after the mutual-TLS QUIC handshake):
//!
//! ```text
//! client -> server  CcHello { nonce }                          Lane::Control
//! server -> client  CcEvidence { public_key, evidence }        Lane::Control
//!   client: verify(evidence, H("shardlm-cc-v1" || nonce || public_key || model fp),
//!                  its policy, its pinned roots); fail closed, naming the check
//! client -> server  CcOpen { enc }  (HPKE encapsulation)       Lane::Control
//! client -> server  seal(Step { tokens, start, all_rows })     Lane::Masked(0), per pass
//! server -> client  seal(logits, f32 LE)                       Lane::Masked(0)
//! client -> server  seal(End)                                  Lane::Masked(0)
//! ```
//!
//! The server checks every step against the declared shape before running it. What
//! protects the user is the hardware, and only when a hardware provider attested the
//! session: a session attested by the software provider is said to have no protection
//! in everything it prints.

use crate::limits::{check_pass, unit_rows};
use crate::plan::SessionShape;
use crate::session::{ClientSession, SessionEnd, SessionError};
use serde::{Deserialize, Serialize};
use shardlm_attest::providers::Collector;
use shardlm_attest::seal::{ClientSeal, SessionKey};
use shardlm_attest::{verify, AttestError, Binding, Evidence, Policy, Trust, Verdict};
use shardlm_configs::{ModelConfig, Variant};
use shardlm_gpu::Backend;
use shardlm_model::qwen2::forward;
use shardlm_model::timing::PhaseTimes;
use shardlm_model::{EngineError, Linear, Logits, PlainEngine, Rows, Weights};
use shardlm_transport::{close_code, Channel, ChannelExt, Counters, Lane, TransportError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The lane v3-cc's sealed steps travel on.
pub const CC_LANE: Lane = Lane::Masked(0);

/// Errors of a v3-cc session.
#[derive(Debug, thiserror::Error)]
pub enum CcError {
    /// The channel failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Attestation or the sealed channel failed.
    #[error(transparent)]
    Attest(#[from] AttestError),
    /// The plaintext engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The peer sent something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// The client's first message: a fresh nonce.
#[derive(Serialize, Deserialize)]
struct CcHello {
    nonce: [u8; 32],
}

/// The server's evidence for this session's key.
#[derive(Serialize, Deserialize)]
struct CcEvidence {
    public_key: Vec<u8>,
    evidence: Evidence,
}

/// The client's HPKE encapsulation to the attested key.
#[derive(Serialize, Deserialize)]
struct CcOpen {
    enc: Vec<u8>,
}

/// A sealed request.
#[derive(Serialize, Deserialize)]
enum CcRequest {
    /// One forward pass.
    Step { tokens: Vec<u32>, start: u32, all_rows: bool },
    /// The session is over.
    End,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, CcError> {
    shardlm_transport::decode_msg(bytes).map_err(|e| CcError::Protocol(format!("cannot decode {what}: {e}")))
}

fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CcError> {
    shardlm_transport::encode_msg(msg).map_err(|e| CcError::Protocol(e.to_string()))
}

/// What a client trusts for v3-cc: its policy and, for testing only, the software
/// provider's CA.
#[derive(Clone, Debug)]
pub struct CcTrust {
    /// The attestation policy.
    pub policy: Policy,
    /// Extra trust (the software CA, only with the explicit insecure flag).
    pub trust: Trust,
}

/// The client side of a v3-cc session.
pub struct CcClient<C> {
    chan: C,
    seal: ClientSeal,
    vocab: usize,
    verdict: Verdict,
    policy_digest: String,
    phases: PhaseTimes,
}

impl<C: Channel> CcClient<C> {
    /// Runs the attestation exchange on `chan` (handshake done) for a model with
    /// `model_fingerprint` and opens the sealed channel; refuses, naming the check, if
    /// the evidence does not verify.
    pub fn open(
        mut chan: C,
        config: &ModelConfig,
        model_fingerprint: &str,
        trust: &CcTrust,
    ) -> Result<Self, CcError> {
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        chan.send_msg(Lane::Control, &CcHello { nonce })?;
        let ev: CcEvidence = chan.recv_msg(Lane::Control)?;
        let binding =
            Binding { nonce, public_key: ev.public_key.clone(), model_fingerprint: model_fingerprint.into() };
        let verdict = verify(&ev.evidence, &binding, &trust.policy, &trust.trust, SystemTime::now())?;
        let (enc, seal) = ClientSeal::open(&ev.public_key, &binding.report_data())?;
        chan.send_msg(Lane::Control, &CcOpen { enc })?;
        Ok(CcClient {
            chan,
            seal,
            vocab: config.vocab_size,
            verdict,
            policy_digest: trust.policy.digest(),
            phases: PhaseTimes::default(),
        })
    }

    /// What the evidence established.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    fn step(&mut self, tokens: &[u32], start: usize, rows: Rows) -> Result<Logits, CcError> {
        let t = Instant::now();
        let req = CcRequest::Step {
            tokens: tokens.to_vec(),
            start: u32::try_from(start).map_err(|_| CcError::Protocol("position beyond u32".into()))?,
            all_rows: rows == Rows::All,
        };
        let sealed = self.seal.seal(&encode(&req)?)?;
        self.chan.send_vec(CC_LANE, sealed)?;
        let answer = self.seal.open_answer(self.chan.recv_bytes(CC_LANE)?)?;
        let want = match rows {
            Rows::All => tokens.len(),
            Rows::Last => 1,
        } * self.vocab;
        if answer.len() != 4 * want {
            return Err(CcError::Protocol(format!(
                "logits of {} bytes, expected {}",
                answer.len(),
                4 * want
            )));
        }
        let data = answer.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        *self.phases.by_op.entry("v3-cc step").or_default() += t.elapsed();
        Ok(Logits { vocab: self.vocab, data })
    }

    fn end(mut self) -> Result<SessionEnd, CcError> {
        let sealed = self.seal.seal(&encode(&CcRequest::End)?)?;
        self.chan.send_vec(CC_LANE, sealed)?;
        let counters = self.chan.counters();
        let _ = self.chan.recv_bytes_within(Lane::Control, Duration::from_secs(5));
        self.chan.close(close_code::NORMAL, "done");
        Ok(SessionEnd { counters, material: None })
    }
}

impl<C: Channel> ClientSession for CcClient<C> {
    fn variant(&self) -> Variant {
        Variant::V3Cc
    }
    fn forward(&mut self, tokens: &[u32], start: usize, rows: Rows) -> Result<Logits, SessionError> {
        Ok(self.step(tokens, start, rows)?)
    }
    fn counters(&self) -> Counters {
        self.chan.counters()
    }
    fn phases(&self) -> &PhaseTimes {
        &self.phases
    }
    fn notes(&self) -> Vec<String> {
        let mut notes = vec![self.verdict.summary(), format!("policy {}", self.policy_digest)];
        notes.extend(self.verdict.lines.iter().cloned());
        notes
    }
    fn finish(self: Box<Self>) -> Result<SessionEnd, SessionError> {
        Ok(self.end()?)
    }
}

/// The server side of v3-cc: the plaintext engine, attested by `collector`.
pub struct CcServer {
    weights: Arc<Weights>,
    backend: Arc<dyn Backend>,
    collector: Arc<Collector>,
    fingerprint: String,
}

impl CcServer {
    /// A server for the model of `weights` (fingerprint `fingerprint`) computing on
    /// `backend`, attested by `collector`.
    pub fn new(
        weights: Arc<Weights>,
        backend: Arc<dyn Backend>,
        collector: Arc<Collector>,
        fingerprint: String,
    ) -> Self {
        CcServer { weights, backend, collector, fingerprint }
    }

    /// The providers attesting this server, for `info`.
    pub fn providers(&self) -> Vec<String> {
        self.collector.kinds().iter().map(|k| k.to_string()).collect()
    }

    /// Serves one session of `shape` on `chan` until the client ends it; returns the
    /// forward passes run.
    pub fn serve<C: Channel>(&self, chan: &mut C, shape: SessionShape) -> Result<u64, CcError> {
        let hello: CcHello = chan.recv_msg(Lane::Control)?;
        let key = SessionKey::generate();
        let binding = Binding {
            nonce: hello.nonce,
            public_key: key.public_key().to_vec(),
            model_fingerprint: self.fingerprint.clone(),
        };
        let evidence = self.collector.collect(&binding)?;
        chan.send_msg(Lane::Control, &CcEvidence { public_key: key.public_key().to_vec(), evidence })?;
        let open: CcOpen = chan.recv_msg(Lane::Control)?;
        let mut seal = key.accept(&open.enc, &binding.report_data())?;
        let config = self.weights.config.clone();
        let mut engine = PlainEngine::new(self.weights.clone(), self.backend.clone());
        let mut passes = 0u64;
        loop {
            let request = seal.open(&chan.recv_bytes(CC_LANE)?)?;
            let (tokens, start, all_rows) = match decode::<CcRequest>(&request, "a v3-cc request")? {
                CcRequest::End => return Ok(passes),
                CcRequest::Step { tokens, start, all_rows } => (tokens, start as usize, all_rows),
            };
            check_step(shape, passes as usize, &tokens, start, all_rows)?;
            let rows = if all_rows { Rows::All } else { Rows::Last };
            let logits = forward(&mut engine, &config, &tokens, start, rows)?
                .ok_or_else(|| CcError::Protocol("the engine revealed no logits".into()))?;
            let bytes: Vec<u8> = logits.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            chan.send_vec(CC_LANE, seal.seal(bytes)?)?;
            passes += 1;
        }
    }
}

/// A step must be what the declared shape allows at pass `pass`: the prompt first,
/// then one token at the next position, all-row logits only where declared, never
/// beyond the budget.
fn check_step(
    shape: SessionShape,
    pass: usize,
    tokens: &[u32],
    start: usize,
    all_rows: bool,
) -> Result<(), CcError> {
    let want = if pass == 0 { shape.prompt_tokens } else { 1 };
    let want_start = if pass == 0 { 0 } else { shape.prompt_tokens + pass - 1 };
    let head_rows = unit_rows(shape, Linear::LmHead, pass);
    check_pass(shape, pass).map_err(CcError::Protocol)?;
    if tokens.len() != want || start != want_start || (all_rows && head_rows != tokens.len()) {
        return Err(CcError::Protocol(format!(
            "step {pass} has {} tokens at position {start}{}; the declared shape allows {want} at {want_start}",
            tokens.len(),
            if all_rows { " with all-row logits" } else { "" }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Both parties in one process over the in-memory channel, attested by the software
    //! provider with a throwaway CA; the adversarial cases play a dishonest server.
    use super::*;
    use shardlm_attest::software::{make_ca, SoftwareProvider, NO_PROTECTION};
    use shardlm_attest::ProviderKind;
    use shardlm_model::ModelDir;
    use shardlm_testkit::fixtures;
    use shardlm_transport::memory::{pair, MemoryChannel};

    struct Fixture {
        weights: Arc<Weights>,
        config: ModelConfig,
        ca_pem: String,
        collector: Arc<Collector>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let md = ModelDir::open(&fixtures::tiny_bytes()).unwrap();
        let weights = Arc::new(md.load_weights().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca(dir.path()).unwrap();
        let provider = SoftwareProvider::load(dir.path(), Duration::from_secs(600)).unwrap();
        let collector = Arc::new(Collector::new(&[ProviderKind::Software], Some(provider)).unwrap());
        Fixture {
            config: md.config.clone(),
            weights,
            ca_pem: std::fs::read_to_string(ca).unwrap(),
            collector,
            _dir: dir,
        }
    }

    fn trust(ca_pem: &str) -> CcTrust {
        CcTrust { policy: Policy::software_only(), trust: Trust { software_ca: Some(ca_pem.to_string()) } }
    }

    fn server(f: &Fixture, fingerprint: &str) -> CcServer {
        let backend: Arc<dyn Backend> = Arc::new(shardlm_gpu::CpuBackend::new());
        CcServer::new(f.weights.clone(), backend, f.collector.clone(), fingerprint.into())
    }

    const FP: &str = "blake3:tiny-bytes";

    #[test]
    fn logits_equal_the_plaintext_engine_and_the_session_says_software() {
        let f = fixture();
        let prompt = [72u32, 101, 108, 108, 111];
        let shape = SessionShape::new(prompt.len(), 3, Rows::All);
        let (mut c0, mut c1) = pair();
        let srv = server(&f, FP);
        let (got, passes) = std::thread::scope(|s| {
            let h = s.spawn(|| srv.serve(&mut c1, shape));
            let mut client = CcClient::open(&mut c0, &f.config, FP, &trust(&f.ca_pem)).unwrap();
            let notes = client.notes();
            assert!(notes[0].contains(NO_PROTECTION), "{notes:?}");
            let mut got = vec![client.step(&prompt, 0, Rows::All).unwrap()];
            got.push(client.step(&[33], prompt.len(), Rows::Last).unwrap());
            got.push(client.step(&[10], prompt.len() + 1, Rows::Last).unwrap());
            client.end().unwrap();
            (got, h.join().unwrap().unwrap())
        });
        assert_eq!(passes, 3);
        let backend: Arc<dyn Backend> = Arc::new(shardlm_gpu::CpuBackend::new());
        let mut plain = PlainEngine::new(f.weights.clone(), backend);
        let want = [
            forward(&mut plain, &f.config, &prompt, 0, Rows::All).unwrap().unwrap(),
            forward(&mut plain, &f.config, &[33], prompt.len(), Rows::Last).unwrap().unwrap(),
            forward(&mut plain, &f.config, &[10], prompt.len() + 1, Rows::Last).unwrap().unwrap(),
        ];
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.data, w.data, "v3-cc runs the plaintext engine: bit-identical logits");
        }
    }

    /// Plays a server that answers the hello with `evidence` for `public_key`.
    fn dishonest(chan: &mut MemoryChannel, public_key: Vec<u8>, evidence: Evidence) {
        let _: CcHello = chan.recv_msg(Lane::Control).unwrap();
        chan.send_msg(Lane::Control, &CcEvidence { public_key, evidence }).unwrap();
    }

    fn refusal(f: &Fixture, trust: &CcTrust, public_key: Vec<u8>, evidence: Evidence) -> String {
        let (mut c0, mut c1) = pair();
        std::thread::scope(|s| {
            s.spawn(move || dishonest(&mut c1, public_key, evidence));
            match CcClient::open(&mut c0, &f.config, FP, trust) {
                Ok(_) => panic!("the client accepted a dishonest server"),
                Err(e) => e.to_string(),
            }
        })
    }

    #[test]
    fn replayed_substituted_or_untrusted_evidence_is_refused_naming_the_check() {
        let f = fixture();
        let key = SessionKey::generate();
        let old =
            Binding { nonce: [7; 32], public_key: key.public_key().to_vec(), model_fingerprint: FP.into() };
        let recorded = f.collector.collect(&old).unwrap();
        // Evidence recorded in an earlier session (another nonce): refused.
        let e = refusal(&f, &trust(&f.ca_pem), key.public_key().to_vec(), recorded.clone());
        assert!(e.contains("nonce binding"), "{e}");
        // Another key substituted for the attested one: the binding no longer holds.
        let other = SessionKey::generate().public_key().to_vec();
        let e = refusal(&f, &trust(&f.ca_pem), other, recorded.clone());
        assert!(e.contains("nonce binding"), "{e}");
        // Signed by a CA the client does not trust.
        let dir = tempfile::tempdir().unwrap();
        let foreign = std::fs::read_to_string(make_ca(dir.path()).unwrap()).unwrap();
        let e = refusal(&f, &trust(&foreign), key.public_key().to_vec(), recorded.clone());
        assert!(e.contains("attestation check"), "{e}");
        // Software evidence without the insecure opt-in, and a policy wanting hardware.
        let no_opt_in = CcTrust { policy: Policy::software_only(), trust: Trust::default() };
        let e = refusal(&f, &no_opt_in, key.public_key().to_vec(), recorded.clone());
        assert!(e.contains("--insecure-software-attestation"), "{e}");
        let hw = CcTrust {
            policy: Policy::parse(r#"{"require": ["sev-snp"], "sev_snp": {"measurements": []}}"#).unwrap(),
            trust: Trust { software_ca: Some(f.ca_pem.clone()) },
        };
        let e = refusal(&f, &hw, key.public_key().to_vec(), recorded);
        assert!(e.contains("requires sev-snp"), "{e}");
    }

    #[test]
    fn a_server_with_another_model_is_refused() {
        let f = fixture();
        let (mut c0, mut c1) = pair();
        let srv = server(&f, "blake3:another-model");
        std::thread::scope(|s| {
            let h = s.spawn(|| srv.serve(&mut c1, SessionShape::new(2, 1, Rows::Last)));
            let e = CcClient::open(&mut c0, &f.config, FP, &trust(&f.ca_pem)).err().expect("refused");
            assert!(e.to_string().contains("nonce binding"), "{e}");
            c0.close(close_code::NORMAL, "refused");
            assert!(h.join().unwrap().is_err());
        });
    }

    #[test]
    fn tampered_and_out_of_shape_steps_end_the_session() {
        let f = fixture();
        let srv = server(&f, FP);
        let shape = SessionShape::new(3, 2, Rows::Last);
        // A sealed step with one bit flipped.
        let (mut c0, mut c1) = pair();
        std::thread::scope(|s| {
            let h = s.spawn(|| srv.serve(&mut c1, shape));
            let mut client = CcClient::open(&mut c0, &f.config, FP, &trust(&f.ca_pem)).unwrap();
            let req = CcRequest::Step { tokens: vec![1, 2, 3], start: 0, all_rows: false };
            let mut sealed = client.seal.seal(&encode(&req).unwrap()).unwrap();
            let last = sealed.len() - 1;
            sealed[last] ^= 1;
            client.chan.send_vec(CC_LANE, sealed).unwrap();
            let e = h.join().unwrap().unwrap_err().to_string();
            assert!(e.contains("sealed channel"), "{e}");
        });
        // A step the declared shape does not allow.
        let (mut c0, mut c1) = pair();
        std::thread::scope(|s| {
            let h = s.spawn(|| srv.serve(&mut c1, shape));
            let mut client = CcClient::open(&mut c0, &f.config, FP, &trust(&f.ca_pem)).unwrap();
            let req = CcRequest::Step { tokens: vec![1, 2, 3, 4], start: 0, all_rows: false };
            let sealed = client.seal.seal(&encode(&req).unwrap()).unwrap();
            client.chan.send_vec(CC_LANE, sealed).unwrap();
            let e = h.join().unwrap().unwrap_err().to_string();
            assert!(e.contains("declared shape allows 3 at 0"), "{e}");
        });
    }

    #[test]
    fn steps_follow_the_declared_shape() {
        let shape = SessionShape::new(4, 3, Rows::Last);
        assert!(check_step(shape, 0, &[1, 2, 3, 4], 0, false).is_ok());
        assert!(check_step(shape, 1, &[5], 4, false).is_ok());
        assert!(check_step(shape, 2, &[6], 5, false).is_ok());
        assert!(check_step(shape, 3, &[7], 6, false).is_err(), "beyond the budget");
        assert!(check_step(shape, 1, &[5], 7, false).is_err(), "wrong position");
        assert!(check_step(shape, 0, &[1, 2, 3, 4], 0, true).is_err(), "all rows not declared");
        let all = SessionShape::new(4, 3, Rows::All);
        assert!(check_step(all, 0, &[1, 2, 3, 4], 0, true).is_ok());
    }
}

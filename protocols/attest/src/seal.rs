//! The sealed channel to the attested key (RFC 9180 HPKE, base mode,
//! X25519-HKDF-SHA256 / HKDF-SHA256 / ChaCha20-Poly1305), inside the mutual-TLS QUIC
//! session. TLS authenticates the server *process*; this binds the requests to a key
//! that was made inside the attested boundary and never left it.
//!
//! * Requests: the client's HPKE sender context seals each one (AAD: a direction label
//!   and the message number); only the holder of the CVM's private key opens them.
//! * Answers: both sides export a 32-byte key from the context
//!   (`"shardlm-cc-v1 answers"`) and seal with ChaCha20-Poly1305, nonce = message number.
//!   A replayed, reordered or tampered message fails to open.
//!
//! The HPKE `info` is the session's [`crate::Binding::report_data`], so the context is
//! bound to the same nonce, key and model as the evidence.

use crate::AttestError;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

type Kem = X25519HkdfSha256;
type Aead = ChaCha20Poly1305;
type Kdf = HkdfSha256;

const ANSWER_KEY_LABEL: &[u8] = b"shardlm-cc-v1 answers";

fn seal_err(what: &str) -> impl Fn(hpke::HpkeError) -> AttestError + '_ {
    move |e| AttestError::Seal(format!("{what}: {e}"))
}

/// The server's ephemeral key pair, made inside the boundary for one session.
pub struct SessionKey {
    secret: <Kem as hpke::Kem>::PrivateKey,
    public: Vec<u8>,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKey(public {})", crate::hex(&self.public))
    }
}

impl SessionKey {
    /// A fresh key pair from the OS's randomness.
    pub fn generate() -> SessionKey {
        let (secret, public) = Kem::gen_keypair();
        SessionKey { secret, public: public.to_bytes().to_vec() }
    }

    /// The public key, as bound into the evidence.
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// Accepts the client's encapsulation for this session.
    pub fn accept(&self, enc: &[u8], report_data: &[u8; 64]) -> Result<ServerSeal, AttestError> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
            .map_err(seal_err("the client's encapsulated key"))?;
        let ctx = hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &self.secret, &enc, report_data)
            .map_err(seal_err("opening the HPKE context"))?;
        let answers = answer_key(|out| ctx.export(ANSWER_KEY_LABEL, out))?;
        Ok(ServerSeal { ctx, answers, requests: 0, sent: 0 })
    }
}

fn answer_key(
    export: impl FnOnce(&mut [u8]) -> Result<(), hpke::HpkeError>,
) -> Result<LessSafeKey, AttestError> {
    let mut k = [0u8; 32];
    export(&mut k).map_err(seal_err("exporting the answer key"))?;
    let key = UnboundKey::new(&CHACHA20_POLY1305, &k).map_err(|_| AttestError::Seal("answer key".into()))?;
    Ok(LessSafeKey::new(key))
}

fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

fn aad(label: &[u8], n: u64) -> Vec<u8> {
    [label, &n.to_le_bytes()].concat()
}

/// The client's side of the sealed channel.
pub struct ClientSeal {
    ctx: hpke::aead::AeadCtxS<Aead, Kdf, Kem>,
    answers: LessSafeKey,
    sent: u64,
    received: u64,
}

impl std::fmt::Debug for ClientSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientSeal(sent {}, received {})", self.sent, self.received)
    }
}

impl ClientSeal {
    /// Encapsulates to the server's attested `public_key`; returns the encapsulation to
    /// send and the channel.
    pub fn open(public_key: &[u8], report_data: &[u8; 64]) -> Result<(Vec<u8>, ClientSeal), AttestError> {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(public_key)
            .map_err(seal_err("the server's public key"))?;
        let (enc, ctx) = hpke::setup_sender::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, report_data)
            .map_err(seal_err("setting up the HPKE context"))?;
        let answers = answer_key(|out| ctx.export(ANSWER_KEY_LABEL, out))?;
        Ok((enc.to_bytes().to_vec(), ClientSeal { ctx, answers, sent: 0, received: 0 }))
    }

    /// Seals the next request.
    pub fn seal(&mut self, request: &[u8]) -> Result<Vec<u8>, AttestError> {
        let ct =
            self.ctx.seal(request, &aad(b"request", self.sent)).map_err(seal_err("sealing a request"))?;
        self.sent += 1;
        Ok(ct)
    }

    /// Opens the next answer.
    pub fn open_answer(&mut self, mut answer: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        let n = self.received;
        let plain = self.answers.open_in_place(nonce(n), Aad::from(aad(b"answer", n)), &mut answer).map_err(
            |_| AttestError::Seal(format!("answer {n} does not open: tampered, replayed or out of order")),
        )?;
        let len = plain.len();
        answer.truncate(len);
        self.received += 1;
        Ok(answer)
    }
}

/// The server's side of the sealed channel.
pub struct ServerSeal {
    ctx: hpke::aead::AeadCtxR<Aead, Kdf, Kem>,
    answers: LessSafeKey,
    requests: u64,
    sent: u64,
}

impl std::fmt::Debug for ServerSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerSeal(requests {}, sent {})", self.requests, self.sent)
    }
}

impl ServerSeal {
    /// Opens the next request.
    pub fn open(&mut self, request: &[u8]) -> Result<Vec<u8>, AttestError> {
        let n = self.requests;
        let plain = self.ctx.open(request, &aad(b"request", n)).map_err(|_| {
            AttestError::Seal(format!("request {n} does not open: tampered, replayed or out of order"))
        })?;
        self.requests += 1;
        Ok(plain)
    }

    /// Seals the next answer.
    pub fn seal(&mut self, mut answer: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        let n = self.sent;
        self.answers
            .seal_in_place_append_tag(nonce(n), Aad::from(aad(b"answer", n)), &mut answer)
            .map_err(|_| AttestError::Seal("sealing an answer".into()))?;
        self.sent += 1;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_and_refuse_tampering_and_replay() {
        let rd = [7u8; 64];
        let key = SessionKey::generate();
        let (enc, mut client) = ClientSeal::open(key.public_key(), &rd).unwrap();
        let mut server = key.accept(&enc, &rd).unwrap();
        for i in 0..3u8 {
            let req = client.seal(&[i; 10]).unwrap();
            assert_eq!(server.open(&req).unwrap(), vec![i; 10]);
            let ans = server.seal(vec![i; 1000]).unwrap();
            assert_eq!(client.open_answer(ans).unwrap(), vec![i; 1000]);
        }
        // A tampered request, then a replayed one: neither opens.
        let mut req = client.seal(b"tokens").unwrap();
        req[0] ^= 1;
        assert!(server.open(&req).is_err());
        // An answer replayed (answer 3 again) does not open as answer 4.
        let a3 = server.seal(b"x".to_vec()).unwrap();
        assert!(client.open_answer(a3.clone()).is_ok());
        assert!(client.open_answer(a3).is_err());
        // Another binding (report data) gives another context: nothing opens.
        let (enc2, mut other) = ClientSeal::open(key.public_key(), &[8u8; 64]).unwrap();
        let mut server2 = key.accept(&enc2, &rd).unwrap();
        assert!(server2.open(&other.seal(b"tokens").unwrap()).is_err());
    }
}

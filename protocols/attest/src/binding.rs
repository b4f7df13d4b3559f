//! The binding every piece of evidence carries: it ties the hardware's statement to this
//! session (the client's fresh nonce, so evidence cannot be replayed), to the key the
//! client will encrypt to (made inside the boundary), and to the model served.
//!
//! `report_data = SHA-512("shardlm-cc-v1" || len(nonce) || nonce || len(pk) || pk ||
//! len(fp) || fp)` (lengths as u64 LE): the 64 bytes of an SEV-SNP report's
//! `REPORT_DATA` or a TDX quote's `REPORTDATA`. A GPU report takes a 32-byte nonce:
//! `SHA-256("shardlm-cc-v1/gpu" || report_data)`.

use sha2::{Digest, Sha256, Sha512};

/// The domain separator of the binding.
pub const CONTEXT: &[u8] = b"shardlm-cc-v1";

/// What one session's evidence is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The client's fresh nonce.
    pub nonce: [u8; 32],
    /// The server's ephemeral public key (HPKE, X25519).
    pub public_key: Vec<u8>,
    /// The model fingerprint both parties compared in the handshake.
    pub model_fingerprint: String,
}

impl Binding {
    /// The 64 bytes a CPU report must carry.
    pub fn report_data(&self) -> [u8; 64] {
        let mut h = Sha512::new();
        h.update(CONTEXT);
        for part in [&self.nonce[..], &self.public_key, self.model_fingerprint.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    /// The 32-byte nonce a GPU report must carry.
    pub fn gpu_nonce(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"shardlm-cc-v1/gpu");
        h.update(self.report_data());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_binding() {
        let b = Binding { nonce: [1; 32], public_key: vec![2; 32], model_fingerprint: "blake3:aa".into() };
        let mut other = b.clone();
        other.nonce[0] ^= 1;
        assert_ne!(b.report_data(), other.report_data());
        let mut other = b.clone();
        other.public_key[31] ^= 1;
        assert_ne!(b.report_data(), other.report_data());
        let mut other = b.clone();
        other.model_fingerprint.push('b');
        assert_ne!(b.report_data(), other.report_data());
        assert_ne!(b.gpu_nonce(), other.gpu_nonce());
        // Length prefixes: moving a byte between fields changes it too.
        let a = Binding { nonce: [0; 32], public_key: vec![1, 2], model_fingerprint: "3".into() };
        let c = Binding { nonce: [0; 32], public_key: vec![1], model_fingerprint: "\u{2}3".into() };
        assert_ne!(a.report_data(), c.report_data());
    }
}

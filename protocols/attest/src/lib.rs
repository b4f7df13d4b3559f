//! shardlm-attest: confidential-computing attestation for the v3-cc variant (DESIGN.md
//! section 3, "Confidential computing"), knowing nothing of models or shares.
//!
//! The server party runs the plaintext engine inside a confidential VM whose GPU is in
//! CC mode; the client trusts the hardware vendors' roots instead of a second party.
//! One session:
//!
//! ```text
//! client                                        server (inside the CVM)
//!   nonce (32 random bytes)            ---->
//!                                               fresh HPKE key pair (X25519)
//!                                               binding = H("shardlm-cc-v1" || nonce || pk || model fp)
//!                                      <----    pk, Evidence (each provider's report carries `binding`)
//!   verify every part against pinned roots (never a root the server sends) and the
//!   policy (measurements, minimum TCB / firmware / driver, debug off, CC mode on)
//!   enc = HPKE encapsulation to pk      ---->
//!   requests sealed to the HPKE context ---->   opened only by the CVM's key
//!                                      <----    answers under a key exported from the context
//! ```
//!
//! * [`binding`]: what every piece of evidence must carry.
//! * [`evidence`]: the evidence on the wire, one [`Part`] per provider.
//! * [`policy`]: the client's policy file and its digest.
//! * [`verify`]: checks evidence against the binding, the policy and the pinned roots;
//!   fails closed, each failure naming its check ([`AttestError::Check`]).
//! * [`seal`]: HPKE (RFC 9180) requests and exporter-keyed answers.
//! * [`software`]: the same evidence shape signed by a local test CA: **no isolation**,
//!   accepted only when the client explicitly allows it, and every output then says so.
//! * [`providers`]: collecting evidence on the server (hardware providers talk to the
//!   platform; where the platform is absent they say so).
#![deny(missing_docs)]

pub mod binding;
pub mod evidence;
pub mod policy;
pub mod providers;
pub mod seal;
pub mod software;
pub mod verify;

pub use binding::Binding;
pub use evidence::{Evidence, Part, ProviderKind};
pub use policy::Policy;
pub use verify::{verify, Trust, Verdict};

/// What can go wrong with attestation. Every variant says which check failed and what
/// to do; verification fails closed.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// A verification check failed.
    #[error("attestation check `{check}` failed: {detail}")]
    Check {
        /// The check (`nonce binding`, `certificate chain`, `measurement`, ...).
        check: &'static str,
        /// What was found and what to do.
        detail: String,
    },
    /// Evidence or a policy that cannot be parsed.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was malformed.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The provider cannot run here (no such platform, library or device).
    #[error("attestation provider {provider} is not available here: {detail}")]
    Unavailable {
        /// The provider.
        provider: ProviderKind,
        /// Why, and what to do.
        detail: String,
    },
    /// Encryption to or from the attested key failed.
    #[error("sealed channel: {0}")]
    Seal(String),
    /// File IO (policy, CA files).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A failed check.
pub(crate) fn check(check: &'static str, detail: impl Into<String>) -> AttestError {
    AttestError::Check { check, detail: detail.into() }
}

/// Hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of hex (tests: the vendors' vectors).
#[cfg(test)]
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

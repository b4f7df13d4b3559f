//! tdx: evidence collection (server) and verification (client). Filled in by the
//! attestation work of issue 17; until then this build can neither collect nor verify
//! tdx evidence and says so.

use crate::policy::Policy;
use crate::{AttestError, Part, ProviderKind};
use std::time::SystemTime;

fn missing() -> AttestError {
    AttestError::Unavailable { provider: PROVIDER, detail: "this build has no tdx support yet".into() }
}

const PROVIDER: ProviderKind = ProviderKind::Tdx;

/// Whether this host can produce tdx evidence.
pub fn available() -> Result<(), AttestError> {
    Err(missing())
}

/// Evidence bound to `binding`.
pub fn collect(_binding: &[u8]) -> Result<Part, AttestError> {
    Err(missing())
}

/// Verifies a tdx part against the pinned roots and `policy`; returns a line saying what it attested.
pub fn verify(
    _evidence: &[u8],
    _aux: &(impl AsRef<[u8]> + ?Sized),
    _binding: &[u8],
    _policy: &Policy,
    _now: SystemTime,
) -> Result<String, AttestError> {
    Err(missing())
}

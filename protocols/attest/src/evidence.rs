//! Evidence on the wire: one [`Part`] per provider that attests the server party.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An attestation provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// AMD SEV-SNP: an attestation report signed by the chip's VCEK (or VLEK), chained
    /// to AMD's ARK.
    SevSnp,
    /// Intel TDX: a quote verified with Intel's collateral, chained to Intel's SGX root.
    Tdx,
    /// An NVIDIA GPU in CC mode: an SPDM measurement report signed by the GPU's
    /// attestation key, chained to NVIDIA's device identity CA.
    Nvidia,
    /// A local test CA: the same shape, **no hardware protection**.
    Software,
    /// No attestation at all.
    None,
}

impl ProviderKind {
    /// Every provider.
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::SevSnp,
        ProviderKind::Tdx,
        ProviderKind::Nvidia,
        ProviderKind::Software,
        ProviderKind::None,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::SevSnp => "sev-snp",
            ProviderKind::Tdx => "tdx",
            ProviderKind::Nvidia => "nvidia",
            ProviderKind::Software => "software",
            ProviderKind::None => "none",
        }
    }

    /// Whether evidence of this provider is rooted in hardware.
    pub fn is_hardware(self) -> bool {
        matches!(self, ProviderKind::SevSnp | ProviderKind::Tdx | ProviderKind::Nvidia)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ProviderKind::ALL.iter().copied().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<_> = ProviderKind::ALL.iter().map(|p| p.name()).collect();
            format!("unknown attestation provider {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// One provider's evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    /// An SEV-SNP attestation report (0x4A0 bytes) and the VCEK or VLEK certificate
    /// (DER) that signed it. The ASK and ARK come from the client's pinned roots.
    SevSnp {
        /// The raw report.
        report: Vec<u8>,
        /// The chip endorsement key's certificate, DER.
        vcek: Vec<u8>,
    },
    /// A TDX quote (v4 or v5) and its collateral (the PCCS's JSON), all signed back to
    /// Intel's root.
    Tdx {
        /// The raw quote.
        quote: Vec<u8>,
        /// `QuoteCollateralV3` as JSON.
        collateral: String,
    },
    /// An NVIDIA GPU attestation report (SPDM GET_MEASUREMENTS request and signed
    /// response) and the GPU's attestation certificate chain (PEM, leaf first).
    Nvidia {
        /// The raw report.
        report: Vec<u8>,
        /// The certificate chain, PEM, leaf first.
        cert_chain: String,
    },
    /// A statement signed by a local test CA ([`crate::software`]).
    Software {
        /// The statement, JSON.
        statement: Vec<u8>,
        /// ECDSA P-256 SHA-256 signature of the statement by the leaf key, ASN.1 DER.
        signature: Vec<u8>,
        /// The certificate chain, DER, leaf first (the root is the client's, never this).
        chain: Vec<Vec<u8>>,
    },
}

impl Part {
    /// The provider of this part.
    pub fn provider(&self) -> ProviderKind {
        match self {
            Part::SevSnp { .. } => ProviderKind::SevSnp,
            Part::Tdx { .. } => ProviderKind::Tdx,
            Part::Nvidia { .. } => ProviderKind::Nvidia,
            Part::Software { .. } => ProviderKind::Software,
        }
    }
}

/// Everything the server party presents for one session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// One part per provider.
    pub parts: Vec<Part>,
}

impl Evidence {
    /// The providers present.
    pub fn providers(&self) -> Vec<ProviderKind> {
        self.parts.iter().map(Part::provider).collect()
    }
}

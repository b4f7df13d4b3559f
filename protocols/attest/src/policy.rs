//! The client's policy: which providers must attest the server party, and what their
//! evidence must say. A JSON file (`--cc-policy FILE`); its digest (blake3 of the
//! canonical JSON) is shown by `info` and recorded in every report, so two runs can be
//! compared for what they trusted.
//!
//! ```json
//! {
//!   "require": ["sev-snp", "nvidia"],
//!   "sev_snp": { "measurements": ["<48-byte hex>"], "min_tcb": { "bootloader": 3, "tee": 0, "snp": 8, "microcode": 115 } },
//!   "tdx": { "mr_td": ["<48-byte hex>"], "allowed_status": ["UpToDate"] },
//!   "nvidia": { "min_driver": "550.90.07", "measurements": { "2": "<48-byte hex>" } },
//!   "software": { "measurements": [] }
//! }
//! ```
//!
//! Debug-enabled guests and GPUs not in CC mode (or in CC dev-tools mode) are always
//! refused; there is no switch for that.

use crate::{AttestError, ProviderKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A minimum SEV-SNP TCB: each component at least this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpTcb {
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// CPU microcode SVN.
    pub microcode: u8,
    /// FMC SVN (Turin and later; absent: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

/// What SEV-SNP evidence must say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SevSnpPolicy {
    /// Allowed launch measurements (48-byte hex); empty allows none.
    pub measurements: Vec<String>,
    /// Minimum reported TCB.
    #[serde(default)]
    pub min_tcb: SnpTcb,
}

/// What TDX evidence must say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxPolicy {
    /// Allowed MRTD values (48-byte hex); empty allows none.
    pub mr_td: Vec<String>,
    /// Allowed TCB statuses from Intel's collateral (default: `UpToDate` only).
    #[serde(default = "up_to_date")]
    pub allowed_status: Vec<String>,
}

/// The TCB statuses of Intel's collateral a policy may allow.
pub const TDX_STATUSES: [&str; 6] = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
];

fn up_to_date() -> Vec<String> {
    vec!["UpToDate".into()]
}

/// What NVIDIA GPU evidence must say. Measurements are required: a policy that pins no
/// block is refused at verification (NVIDIA's golden values come from its RIMs for the
/// driver and VBIOS deployed; this crate does not fetch them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvidiaPolicy {
    /// Minimum driver version (dotted, compared numerically; empty: no minimum).
    #[serde(default)]
    pub min_driver: String,
    /// Required measurement blocks: index -> 48-byte hex (golden values).
    #[serde(default)]
    pub measurements: BTreeMap<u8, String>,
}

/// What software (test CA) evidence must say: allowed measurements of the server binary
/// (blake3 hex); empty allows any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftwarePolicy {
    /// Allowed measurements.
    #[serde(default)]
    pub measurements: Vec<String>,
}

/// The client's attestation policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Providers whose evidence must be present and verify.
    pub require: Vec<ProviderKind>,
    /// SEV-SNP requirements.
    #[serde(default)]
    pub sev_snp: Option<SevSnpPolicy>,
    /// TDX requirements.
    #[serde(default)]
    pub tdx: Option<TdxPolicy>,
    /// NVIDIA requirements.
    #[serde(default)]
    pub nvidia: Option<NvidiaPolicy>,
    /// Software-provider requirements.
    #[serde(default)]
    pub software: Option<SoftwarePolicy>,
}

impl Policy {
    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Policy, AttestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AttestError::Io { path: path.to_path_buf(), source })?;
        Policy::parse(&text)
    }

    /// Parses a policy, refusing unknown fields and a requirement without its section.
    pub fn parse(text: &str) -> Result<Policy, AttestError> {
        let p: Policy = serde_json::from_str(text)
            .map_err(|e| AttestError::Malformed { what: "attestation policy", detail: e.to_string() })?;
        for r in &p.require {
            let present = match r {
                ProviderKind::SevSnp => p.sev_snp.is_some(),
                ProviderKind::Tdx => p.tdx.is_some(),
                ProviderKind::Nvidia => p.nvidia.is_some(),
                ProviderKind::Software => true,
                ProviderKind::None => false,
            };
            if !present {
                return Err(AttestError::Malformed {
                    what: "attestation policy",
                    detail: format!(
                        "requires {r} but has no `{}` section saying what its evidence must show",
                        section(*r)
                    ),
                });
            }
        }
        if p.require.is_empty() {
            return Err(AttestError::Malformed {
                what: "attestation policy",
                detail: "`require` names no provider: a policy that requires nothing attests nothing".into(),
            });
        }
        p.check_values()?;
        Ok(p)
    }

    /// Refuses values that could never match: measurements that are not 48 bytes of hex,
    /// TCB statuses Intel does not define (or `Revoked`), a driver that is no version.
    fn check_values(&self) -> Result<(), AttestError> {
        let bad = |detail: String| AttestError::Malformed { what: "attestation policy", detail };
        let digest = |field: &str, v: &str| {
            if v.len() == 96 && v.bytes().all(|c| c.is_ascii_hexdigit()) {
                Ok(())
            } else {
                Err(bad(format!("{field}: {v:?} is not a 48-byte hex digest")))
            }
        };
        if let Some(s) = &self.sev_snp {
            s.measurements.iter().try_for_each(|m| digest("sev_snp.measurements", m))?;
        }
        if let Some(t) = &self.tdx {
            t.mr_td.iter().try_for_each(|m| digest("tdx.mr_td", m))?;
            for status in &t.allowed_status {
                if !TDX_STATUSES.contains(&status.as_str()) {
                    return Err(bad(format!(
                        "tdx.allowed_status: {status:?} is not one of {} (Revoked is never allowed)",
                        TDX_STATUSES.join(", ")
                    )));
                }
            }
        }
        if let Some(n) = &self.nvidia {
            n.measurements.iter().try_for_each(|(i, m)| digest(&format!("nvidia.measurements.{i}"), m))?;
            let dotted =
                n.min_driver.split('.').all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
            if !n.min_driver.is_empty() && !dotted {
                return Err(bad(format!("nvidia.min_driver: {:?} is not a dotted version", n.min_driver)));
            }
        }
        Ok(())
    }

    /// A policy requiring only the software provider (tests and demos: no protection).
    pub fn software_only() -> Policy {
        Policy {
            require: vec![ProviderKind::Software],
            software: Some(SoftwarePolicy::default()),
            ..Policy::default()
        }
    }

    /// blake3 of the canonical JSON, `blake3:<hex>`.
    pub fn digest(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        format!("blake3:{}", blake3::hash(&canonical).to_hex())
    }
}

fn section(p: ProviderKind) -> &'static str {
    match p {
        ProviderKind::SevSnp => "sev_snp",
        ProviderKind::Tdx => "tdx",
        ProviderKind::Nvidia => "nvidia",
        ProviderKind::Software => "software",
        ProviderKind::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_strictly_and_digest_stably() {
        let p = Policy::parse(r#"{"require": ["software"], "software": {"measurements": []}}"#).unwrap();
        assert_eq!(p, Policy::software_only());
        assert_eq!(p.digest(), Policy::software_only().digest());
        assert!(p.digest().starts_with("blake3:"));
        let e = Policy::parse(r#"{"require": ["sev-snp"]}"#).unwrap_err().to_string();
        assert!(e.contains("sev_snp"), "{e}");
        assert!(Policy::parse(r#"{"require": []}"#).is_err());
        assert!(Policy::parse(r#"{"require": ["software"], "unknown": 1}"#).is_err());
        assert!(Policy::parse(r#"{"require": ["tdx"], "tdx": {"mr_td": [], "allow_debug": true}}"#).is_err());
    }

    #[test]
    fn values_that_could_never_match_are_refused() {
        let m = "ab".repeat(48);
        let ok = format!(
            r#"{{"require": ["sev-snp", "tdx", "nvidia"],
                "sev_snp": {{"measurements": ["{m}"], "min_tcb": {{"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}}}},
                "tdx": {{"mr_td": ["{m}"], "allowed_status": ["UpToDate", "SWHardeningNeeded"]}},
                "nvidia": {{"min_driver": "550.90.07", "measurements": {{"2": "{m}"}}}}}}"#
        );
        let p = Policy::parse(&ok).unwrap();
        assert_eq!(p.nvidia.as_ref().unwrap().measurements[&2], m);
        assert_eq!(p.sev_snp.as_ref().unwrap().min_tcb.fmc, None);
        // An absent FMC SVN does not change the digest of older policies.
        assert!(!serde_json::to_string(&p).unwrap().contains("fmc"));
        for (from, to) in [
            (m.as_str(), "abcd"),
            (m.as_str(), &"zz".repeat(48)),
            ("\"UpToDate\", \"SWH", "\"Revoked\", \"SWH"),
            ("\"UpToDate\", \"SWH", "\"uptodate\", \"SWH"),
            ("550.90.07", "latest"),
            ("550.90.07", "550..07"),
        ] {
            let e = Policy::parse(&ok.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(e.contains("attestation policy"), "{from} -> {to}: {e}");
        }
    }
}

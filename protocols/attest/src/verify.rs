//! Verification of a server party's evidence, on the client: every part is checked
//! against the session's [`Binding`], the client's pinned roots (never a root the server
//! sends) and the [`Policy`]; every provider the policy requires must be present. Fails
//! closed: the first failed check ends it, naming the check.

use crate::binding::Binding;
use crate::policy::Policy;
use crate::software::{self, NO_PROTECTION};
use crate::{check, AttestError, Evidence, Part, ProviderKind};
use std::time::SystemTime;

/// What the client trusts beyond the vendors' roots built into this binary.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// The software provider's test CA (PEM), given only with the explicit insecure
    /// flag; `None` refuses software evidence.
    pub software_ca: Option<String>,
}

/// What verified evidence established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The providers whose evidence verified.
    pub providers: Vec<ProviderKind>,
    /// Whether every verified provider is hardware (no software provider among them).
    pub hardware: bool,
    /// One line per provider: what it attested (measurement, TCB, driver), or the
    /// software provider's warning.
    pub lines: Vec<String>,
}

impl Verdict {
    /// One line for reports: the providers, and the warning when nothing is hardware.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.providers.iter().map(|p| p.name()).collect();
        if self.hardware {
            format!("attested by {}", names.join(" + "))
        } else {
            format!("{NO_PROTECTION} ({})", names.join(" + "))
        }
    }
}

/// Verifies `evidence` for the session `binding` under `policy` and `trust`, at `now`.
pub fn verify(
    evidence: &Evidence,
    binding: &Binding,
    policy: &Policy,
    trust: &Trust,
    now: SystemTime,
) -> Result<Verdict, AttestError> {
    let present = evidence.providers();
    for required in &policy.require {
        if !present.contains(required) {
            return Err(check(
                "required provider",
                format!(
                    "the policy requires {required} evidence but the server sent {}",
                    if present.is_empty() { "none".to_string() } else { names(&present) }
                ),
            ));
        }
    }
    let mut seen = Vec::new();
    for p in &present {
        if seen.contains(p) {
            return Err(check("evidence format", format!("two {p} parts")));
        }
        seen.push(*p);
    }
    let report_data = binding.report_data();
    let mut lines = Vec::new();
    let mut verified = Vec::new();
    for part in &evidence.parts {
        // A server attested by more providers than this client asks for (a CVM with a
        // CC GPU, and a client that only pins the CPU) is fine: the parts the policy
        // does not name are not relied on, so they are neither verified nor reported.
        if !policy.require.contains(&part.provider()) {
            continue;
        }
        lines.push(verify_part(part, binding, &report_data, policy, trust, now)?);
        verified.push(part.provider());
    }
    Ok(Verdict { hardware: verified.iter().all(|p| p.is_hardware()), providers: verified, lines })
}

/// The policy's section for a provider (present whenever the policy requires it, as
/// [`Policy::parse`] checks; a policy built in code might lack it).
fn section<'p, T>(s: Option<&'p T>, name: &str) -> Result<&'p T, AttestError> {
    s.ok_or_else(|| {
        check("policy", format!("the policy has no `{name}` section saying what this evidence must show"))
    })
}

fn names(p: &[ProviderKind]) -> String {
    p.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

fn verify_part(
    part: &Part,
    binding: &Binding,
    report_data: &[u8; 64],
    policy: &Policy,
    trust: &Trust,
    now: SystemTime,
) -> Result<String, AttestError> {
    match part {
        Part::Software { statement, signature, chain } => {
            let ca = trust.software_ca.as_deref().ok_or_else(|| {
                check(
                    "software attestation",
                    "the server attests with the software provider, which gives no hardware protection; accept it only for testing, with --insecure-software-attestation and the test CA",
                )
            })?;
            let m = software::verify_part(statement, signature, chain, ca, report_data, policy, now)?;
            Ok(format!("software: server binary {m}; {NO_PROTECTION}"))
        }
        Part::SevSnp { report, vcek } => {
            let p = section(policy.sev_snp.as_ref(), "sev_snp")?;
            crate::providers::sev_snp::verify(report, vcek, report_data, p, now)
        }
        Part::Tdx { quote, collateral } => {
            let p = section(policy.tdx.as_ref(), "tdx")?;
            crate::providers::tdx::verify(quote, collateral, report_data, p, now)
        }
        Part::Nvidia { report, cert_chain } => {
            let p = section(policy.nvidia.as_ref(), "nvidia")?;
            crate::providers::nvidia::verify(report, cert_chain, &binding.gpu_nonce(), p, now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn software_evidence_needs_the_insecure_trust_and_the_policy() {
        let (ca, p) = crate::software::tests::provider(Duration::from_secs(3600));
        let b = Binding { nonce: [9; 32], public_key: vec![1; 32], model_fingerprint: "blake3:aa".into() };
        let ev = Evidence { parts: vec![p.evidence(&b.report_data()).unwrap()] };
        let now = SystemTime::now();
        let policy = Policy::software_only();
        let e = verify(&ev, &b, &policy, &Trust::default(), now).unwrap_err().to_string();
        assert!(e.contains("software attestation") && e.contains("--insecure-software-attestation"), "{e}");
        let trust = Trust { software_ca: Some(ca) };
        let v = verify(&ev, &b, &policy, &trust, now).unwrap();
        assert!(!v.hardware && v.summary().contains(NO_PROTECTION), "{v:?}");
        // Replayed evidence from an earlier session (another nonce) is refused.
        let mut later = b.clone();
        later.nonce = [10; 32];
        let e = verify(&ev, &later, &policy, &trust, now).unwrap_err().to_string();
        assert!(e.contains("nonce binding"), "{e}");
        // A policy that requires hardware refuses software evidence, naming the provider.
        let hw = Policy::parse(r#"{"require": ["sev-snp"], "sev_snp": {"measurements": []}}"#).unwrap();
        let e = verify(&ev, &b, &hw, &trust, now).unwrap_err().to_string();
        assert!(e.contains("requires sev-snp"), "{e}");
        // Evidence the policy does not ask for is not relied on: a policy requiring only
        // software ignores an extra part rather than refusing a well-attested server.
        let mut two = ev.clone();
        two.parts.push(Part::Tdx { quote: vec![0; 16], collateral: String::new() });
        let v = verify(&two, &b, &policy, &trust, now).unwrap();
        assert_eq!(v.providers, vec![ProviderKind::Software]);
        // No evidence at all.
        let e = verify(&Evidence::default(), &b, &policy, &trust, now).unwrap_err().to_string();
        assert!(e.contains("sent none"), "{e}");
    }

    /// Real vendor evidence from sessions that are not this one: the dispatcher hands
    /// each part to its verifier with the policy's section, which verifies the hardware's
    /// signatures and then refuses the binding.
    #[test]
    fn real_hardware_evidence_is_bound_to_its_own_session() {
        use crate::policy::{NvidiaPolicy, SevSnpPolicy, SnpTcb, TdxPolicy};
        use crate::{hex, unhex};
        let b = Binding { nonce: [9; 32], public_key: vec![1; 32], model_fingerprint: "blake3:aa".into() };
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let refuse = |part: Part, policy: Policy, now: SystemTime| -> (&'static str, String) {
            match verify(&Evidence { parts: vec![part] }, &b, &policy, &Trust::default(), now) {
                Err(AttestError::Check { check, detail }) => (check, detail),
                other => panic!("{other:?}"),
            }
        };

        let sev = Part::SevSnp {
            report: unhex(include_str!("../testdata/sev/report_milan.hex").trim()),
            vcek: include_bytes!("../testdata/sev/vcek_milan.der").to_vec(),
        };
        let sev_policy = SevSnpPolicy {
            measurements: vec!["7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f".into()],
            min_tcb: SnpTcb { bootloader: 3, tee: 0, snp: 8, microcode: 115, fmc: None },
        };
        let policy =
            Policy { require: vec![ProviderKind::SevSnp], sev_snp: Some(sev_policy), ..Policy::default() };
        assert_eq!(refuse(sev.clone(), policy, at(1_767_225_600)).0, "nonce binding");
        // A policy made in code without the provider's section.
        let bare = Policy { require: vec![ProviderKind::SevSnp], ..Policy::default() };
        assert_eq!(refuse(sev, bare, at(1_767_225_600)).0, "policy");

        let tdx = Part::Tdx {
            quote: include_bytes!("../testdata/tdx/tdx_quote").to_vec(),
            collateral: include_str!("../testdata/tdx/tdx_quote_collateral.json").into(),
        };
        let tdx_policy = TdxPolicy {
            mr_td: vec!["91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7".into()],
            allowed_status: vec!["UpToDate".into()],
        };
        let policy = Policy { require: vec![ProviderKind::Tdx], tdx: Some(tdx_policy), ..Policy::default() };
        assert_eq!(refuse(tdx, policy, at(1_751_328_000)).0, "nonce binding");

        let report = unhex(include_str!("../testdata/nvidia/hopperAttestationReport.txt").trim());
        let parsed = crate::providers::nvidia::parse_report(&report).unwrap();
        let nvidia = Part::Nvidia {
            report,
            cert_chain: include_str!("../testdata/nvidia/hopperCertChain.txt").into(),
        };
        let nvidia_policy = NvidiaPolicy {
            min_driver: "550.90.07".into(),
            measurements: [(1, hex(&parsed.measurements[&1]))].into_iter().collect(),
        };
        let policy =
            Policy { require: vec![ProviderKind::Nvidia], nvidia: Some(nvidia_policy), ..Policy::default() };
        assert_eq!(refuse(nvidia, policy, at(1_767_225_600)).0, "nonce binding");
    }
}

//! The software provider: the same evidence shape as the hardware providers, signed by a
//! local test CA. **It protects nothing** (the server's operator holds the CA key and
//! can sign anything); it exists so that the v3-cc protocol, its checks and its tooling
//! can be run and tested where no confidential hardware is. A client accepts it only
//! with an explicit insecure flag and its own copy of the CA certificate (never one the
//! server sends), and every output then says "software attestation: no hardware
//! protection".
//!
//! The statement (JSON) carries the binding, a measurement of the server binary (blake3
//! of its executable), `debug: false` and the time it was made; the leaf key (ECDSA
//! P-256, certified by the CA for this process) signs it.

use crate::policy::Policy;
use crate::{check, hex, AttestError, Part};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The warning every output of a session attested by the software provider carries.
pub const NO_PROTECTION: &str = "software attestation: no hardware protection";

const CA_NAME: &str = "ShardLM software attestation test CA (no hardware protection)";

/// What the software provider signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// Always `shardlm-cc-v1 software`.
    pub format: String,
    /// The binding's report data, hex.
    pub report_data: String,
    /// blake3 of the server executable, hex.
    pub measurement: String,
    /// Whether the server runs with debugging enabled.
    pub debug: bool,
    /// Seconds since the Unix epoch when it was signed.
    pub issued_at: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AttestError + '_ {
    move |source| AttestError::Io { path: path.to_path_buf(), source }
}

fn rc(what: &'static str) -> impl Fn(rcgen::Error) -> AttestError {
    move |e| AttestError::Malformed { what, detail: e.to_string() }
}

fn ca_params() -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, CA_NAME);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2100, 1, 1);
    p
}

/// Makes a test CA in `dir`: `ca.pem` (give it to clients that accept software
/// attestation) and `ca.key` (0600, the server's).
pub fn make_ca(dir: &Path) -> Result<PathBuf, AttestError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key_path = dir.join("ca.key");
    if key_path.exists() {
        return Err(AttestError::Malformed {
            what: "test CA directory",
            detail: format!(
                "{} already exists; refusing to replace a CA clients may trust",
                key_path.display()
            ),
        });
    }
    let key = rcgen::KeyPair::generate().map_err(rc("CA key"))?;
    let cert = ca_params().self_signed(&key).map_err(rc("CA certificate"))?;
    let cert_path = dir.join("ca.pem");
    std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(&key_path).map_err(io(&key_path))?;
    std::io::Write::write_all(&mut f, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
    Ok(cert_path)
}

/// The server side: signs statements with a leaf key certified by the CA.
pub struct SoftwareProvider {
    leaf_key: ring::signature::EcdsaKeyPair,
    chain: Vec<Vec<u8>>,
    measurement: String,
}

impl std::fmt::Debug for SoftwareProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SoftwareProvider(measurement {})", self.measurement)
    }
}

impl SoftwareProvider {
    /// Loads the CA of `dir` (from [`make_ca`]) and certifies a fresh leaf key for this
    /// process, valid for `validity`.
    pub fn load(dir: &Path, validity: Duration) -> Result<SoftwareProvider, AttestError> {
        let key_path = dir.join("ca.key");
        let pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let ca_key = rcgen::KeyPair::from_pem(&pem).map_err(rc("CA key"))?;
        let ca = ca_params().self_signed(&ca_key).map_err(rc("CA certificate"))?;
        let measurement = std::env::current_exe()
            .and_then(std::fs::read)
            .map(|b| blake3::hash(&b).to_hex().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self::with_ca(&ca, &ca_key, validity, measurement)
    }

    fn with_ca(
        ca: &rcgen::Certificate,
        ca_key: &rcgen::KeyPair,
        validity: Duration,
        measurement: String,
    ) -> Result<SoftwareProvider, AttestError> {
        let leaf = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc("leaf key"))?;
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, "ShardLM software attestation key");
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(60)).into();
        p.not_after = (now + validity).into();
        let cert = p.signed_by(&leaf, ca, ca_key).map_err(rc("leaf certificate"))?;
        let rng = ring::rand::SystemRandom::new();
        let leaf_key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &leaf.serialize_der(),
            &rng,
        )
        .map_err(|e| AttestError::Malformed { what: "leaf key", detail: e.to_string() })?;
        Ok(SoftwareProvider { leaf_key, chain: vec![cert.der().to_vec()], measurement })
    }

    /// Signs a statement for `report_data`.
    pub fn evidence(&self, report_data: &[u8; 64]) -> Result<Part, AttestError> {
        let statement = Statement {
            format: "shardlm-cc-v1 software".into(),
            report_data: hex(report_data),
            measurement: self.measurement.clone(),
            debug: false,
            issued_at: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        let statement = serde_json::to_vec(&statement)
            .map_err(|e| AttestError::Malformed { what: "statement", detail: e.to_string() })?;
        let signature = self
            .leaf_key
            .sign(&ring::rand::SystemRandom::new(), &statement)
            .map_err(|_| AttestError::Seal("signing the statement".into()))?
            .as_ref()
            .to_vec();
        Ok(Part::Software { statement, signature, chain: self.chain.clone() })
    }
}

/// Checks a software part: the chain ends in the client's `ca` (PEM), the leaf signed
/// the statement, the statement carries `report_data`, debug is off and the measurement
/// is allowed. Returns the measurement.
pub fn verify_part(
    statement: &[u8],
    signature: &[u8],
    chain: &[Vec<u8>],
    ca_pem: &str,
    report_data: &[u8; 64],
    policy: &Policy,
    now: SystemTime,
) -> Result<String, AttestError> {
    use rustls_pki_types::pem::PemObject;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| {
        check("certificate chain", format!("the client's software CA is not a PEM certificate ({e})"))
    })?;
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| {
        check("certificate chain", format!("the client's software CA cannot be a trust anchor ({e})"))
    })?;
    let leaf =
        chain.first().ok_or_else(|| check("certificate chain", "the evidence carries no certificate"))?;
    let leaf = CertificateDer::from(leaf.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| check("certificate chain", format!("the leaf certificate is malformed ({e})")))?;
    let intermediates: Vec<CertificateDer<'_>> =
        chain[1..].iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &intermediates,
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::required_if_present(EKU_ANY),
        None,
        None,
    )
    .map_err(|e| {
        check(
            "certificate chain",
            format!("the chain does not lead to this client's software CA, or a certificate is expired or invalid ({e:?})"),
        )
    })?;
    ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, statement, signature).map_err(|e| {
        check("evidence signature", format!("the statement is not signed by the certified key ({e:?})"))
    })?;
    let s: Statement = serde_json::from_slice(statement)
        .map_err(|e| AttestError::Malformed { what: "software statement", detail: e.to_string() })?;
    if s.format != "shardlm-cc-v1 software" {
        return Err(check("evidence format", format!("statement format {:?}", s.format)));
    }
    if s.report_data != hex(report_data) {
        return Err(check(
            "nonce binding",
            "the evidence is bound to another nonce, key or model (a replay of an earlier session?)",
        ));
    }
    if s.debug {
        return Err(check("debug", "the server runs with debugging enabled"));
    }
    let allowed = policy.software.as_ref().map(|p| p.measurements.as_slice()).unwrap_or_default();
    if !allowed.is_empty() && !allowed.contains(&s.measurement) {
        return Err(check(
            "measurement",
            format!("server binary {} is not in the policy's list", s.measurement),
        ));
    }
    Ok(s.measurement)
}

/// anyExtendedKeyUsage (2.5.29.37.0): the leaf has no EKU extension, so any usage passes.
const EKU_ANY: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA and a provider in memory, for tests across the crate.
    pub(crate) fn provider(validity: Duration) -> (String, SoftwareProvider) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params().self_signed(&ca_key).unwrap();
        let p = SoftwareProvider::with_ca(&ca, &ca_key, validity, "m1".into()).unwrap();
        (ca.pem(), p)
    }

    fn parts(p: &Part) -> (&[u8], &[u8], &[Vec<u8>]) {
        match p {
            Part::Software { statement, signature, chain } => (statement, signature, chain),
            _ => unreachable!(),
        }
    }

    #[test]
    fn software_evidence_verifies_and_every_change_is_refused() {
        let (ca, p) = provider(Duration::from_secs(3600));
        let rd = [3u8; 64];
        let part = p.evidence(&rd).unwrap();
        let (st, sig, chain) = parts(&part);
        let policy = Policy::software_only();
        let now = SystemTime::now();
        assert_eq!(verify_part(st, sig, chain, &ca, &rd, &policy, now).unwrap(), "m1");
        let err = |r: Result<String, AttestError>| r.unwrap_err().to_string();
        // Wrong nonce (another binding): named.
        assert!(err(verify_part(st, sig, chain, &ca, &[4u8; 64], &policy, now)).contains("nonce binding"));
        // Tampered statement.
        let mut t = st.to_vec();
        t[10] ^= 1;
        assert!(err(verify_part(&t, sig, chain, &ca, &rd, &policy, now)).contains("evidence signature"));
        // A chain ending in another CA (one the server made itself).
        let (other_ca, _) = provider(Duration::from_secs(3600));
        assert!(err(verify_part(st, sig, chain, &other_ca, &rd, &policy, now)).contains("certificate chain"));
        // Expired leaf.
        let later = now + Duration::from_secs(7200);
        assert!(err(verify_part(st, sig, chain, &ca, &rd, &policy, later)).contains("expired or invalid"));
        // Malformed certificate.
        assert!(err(verify_part(st, sig, &[vec![0x30, 0x03, 1, 2, 3]], &ca, &rd, &policy, now))
            .contains("malformed"));
        // Measurement outside the policy.
        let mut strict = Policy::software_only();
        strict.software.as_mut().unwrap().measurements = vec!["m2".into()];
        assert!(err(verify_part(st, sig, chain, &ca, &rd, &strict, now)).contains("measurement"));
    }
}

//! NVIDIA GPUs in confidential-computing mode (Hopper): the GPU's SPDM measurement
//! report, signed by its attestation key.
//!
//! **Verification (client).** The report (the SPDM 1.1 GET_MEASUREMENTS request, 37
//! bytes, then the signed response) and the attestation certificate chain (PEM, leaf
//! first) come from the server; the root is NVIDIA's Device Identity CA, built into this
//! binary (`roots/nvidia-device-identity-ca.pem`, checked against its SHA-256), never a
//! root the server sends. Checks, each failure naming its check:
//!
//! * `certificate chain`: leaf -> ... -> the pinned root (rustls-webpki: signatures,
//!   names, basic constraints, key usage, every certificate valid at `now`), the leaf an
//!   ECDSA P-384 key.
//! * `evidence format`: the report parses (SPDM 1.1, signature requested, measurement
//!   blocks and opaque data within bounds, 96-byte signature at the end).
//! * `report signature`: ECDSA P-384 / SHA-384 over `report[..len - 96]`, r || s
//!   big-endian, with the leaf's key.
//! * `nonce binding`: the requester nonce (`report[4..36]`) equals the session's GPU
//!   nonce (the signature covers it).
//! * `driver`: the driver version in the opaque data (type 3) at least the policy's.
//! * `measurement`: every block the policy pins (index -> 48-byte hex golden value) is
//!   present with that value; a policy that pins none is refused.
//!
//! **What the report alone cannot show.** It carries no CC-mode or dev-tools field: those
//! are GPU settings that NVIDIA's golden measurements (RIMs) reflect, so a policy pinning
//! measurements taken from a GPU in CC mode with dev tools off refuses other settings
//! only as far as they change the pinned blocks. The server checks both through NVML
//! before it collects ([`available`]), which the client cannot take on trust.
//!
//! **Not checked** (needs the network): OCSP revocation of the chain and NVIDIA's RIM
//! service (golden measurements come from the policy instead).
//!
//! **Collection (server).** NVML (`nvml-wrapper`, which loads `libnvidia-ml` at run time,
//! so the build needs no NVIDIA library): the GPU's attestation report for the nonce and
//! its attestation certificate chain. Seen on an H200 (driver 580.159.04) with CC mode
//! off: NVML reports CC off and both calls fail with NVML's "Unknown Error", so
//! [`available`] refuses first, naming CC mode.

use crate::policy::NvidiaPolicy;
use crate::{check, hex, AttestError, Part, ProviderKind};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::BTreeMap;
use std::time::SystemTime;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;

const PROVIDER: ProviderKind = ProviderKind::Nvidia;

/// NVIDIA's Device Identity CA, the root of every GPU's attestation chain.
const ROOT_PEM: &[u8] = include_bytes!("../../roots/nvidia-device-identity-ca.pem");
/// SHA-256 of its DER.
const ROOT_SHA256: &str = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48";

/// The SPDM GET_MEASUREMENTS request that starts a report.
const REQUEST_LEN: usize = 37;
/// The signature at the end of a report: r || s, big-endian, P-384.
const SIGNATURE_LEN: usize = 96;
/// SPDM 1.1, the version of Hopper's reports.
const SPDM_1_1: u8 = 0x11;
/// The opaque-data types this verifier reads.
const OPAQUE_DRIVER_VERSION: u16 = 3;
const OPAQUE_VBIOS_VERSION: u16 = 6;

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// anyExtendedKeyUsage (2.5.29.37.0): these chains carry no EKU, so any usage passes.
const EKU_ANY: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

/// A parsed GPU attestation report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The requester's nonce (what the server passed to NVML).
    pub nonce: [u8; 32],
    /// Measurement blocks: index -> DMTF measurement value.
    pub measurements: BTreeMap<u8, Vec<u8>>,
    /// Opaque data fields: type -> value (the first of each type).
    pub opaque: BTreeMap<u16, Vec<u8>>,
}

impl Report {
    /// The driver version (opaque type 3), without its NUL padding.
    pub fn driver_version(&self) -> Option<String> {
        self.opaque.get(&OPAQUE_DRIVER_VERSION).map(|v| text(v))
    }

    /// The VBIOS version (opaque type 6) as NVIDIA prints it (`96.00.9F.00.01`).
    pub fn vbios_version(&self) -> Option<String> {
        let v = self.opaque.get(&OPAQUE_VBIOS_VERSION)?;
        if v.len() != 8 {
            return None;
        }
        // Read as a little-endian number; NVIDIA prints bytes 3, 2, 1, 0 and then 4.
        let parts = [v[3], v[2], v[1], v[0], v[4]];
        Some(parts.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join("."))
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).trim_end_matches('\0').to_string()
}

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], AttestError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len()).ok_or_else(|| {
            check("evidence format", format!("the GPU report ends inside its {what} (at byte {})", self.at))
        })?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, AttestError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, AttestError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u24(&mut self, what: &str) -> Result<usize, AttestError> {
        let b = self.take(3, what)?;
        Ok(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }
}

/// Parses a GPU attestation report (SPDM 1.1 GET_MEASUREMENTS request || response).
pub fn parse_report(report: &[u8]) -> Result<Report, AttestError> {
    let bad = |d: String| check("evidence format", d);
    if report.len() < REQUEST_LEN + 8 + SIGNATURE_LEN {
        return Err(bad(format!("a GPU report of {} bytes is too short", report.len())));
    }
    let req = &report[..REQUEST_LEN];
    if req[0] != SPDM_1_1 || req[1] != 0xE0 || req[2] & 0x01 == 0 {
        return Err(bad(format!(
            "the report does not start with an SPDM 1.1 GET_MEASUREMENTS request asking for a signature (version {:#04x}, code {:#04x}, param1 {:#04x})",
            req[0], req[1], req[2]
        )));
    }
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(&req[4..36]);
    let resp = &report[REQUEST_LEN..report.len() - SIGNATURE_LEN];
    let mut c = Cursor { data: resp, at: 0 };
    let head = c.take(4, "response header")?;
    if head[0] != SPDM_1_1 || head[1] != 0x60 {
        return Err(bad(format!(
            "the response is not an SPDM 1.1 MEASUREMENTS response (version {:#04x}, code {:#04x})",
            head[0], head[1]
        )));
    }
    let blocks = c.u8("block count")?;
    let record_len = c.u24("record length")?;
    let record = c.take(record_len, "measurement record")?;
    let mut r = Cursor { data: record, at: 0 };
    let mut measurements = BTreeMap::new();
    for _ in 0..blocks {
        let index = r.u8("block index")?;
        let spec = r.u8("block specification")?;
        let size = usize::from(r.u16("block size")?);
        let block = r.take(size, "measurement block")?;
        if spec != 1 {
            return Err(bad(format!(
                "measurement block {index} is not a DMTF measurement (specification {spec})"
            )));
        }
        let mut b = Cursor { data: block, at: 0 };
        let _kind = b.u8("DMTF value type")?;
        let len = usize::from(b.u16("DMTF value size")?);
        let value = b.take(len, "DMTF value")?;
        if b.at != block.len() {
            return Err(bad(format!("measurement block {index} has bytes after its value")));
        }
        if measurements.insert(index, value.to_vec()).is_some() {
            return Err(bad(format!("measurement block {index} appears twice")));
        }
    }
    if r.at != record.len() {
        return Err(bad("the measurement record is longer than its blocks".into()));
    }
    c.take(32, "responder nonce")?;
    let opaque_len = usize::from(c.u16("opaque length")?);
    let opaque_data = c.take(opaque_len, "opaque data")?;
    if c.at != resp.len() {
        return Err(bad(format!("{} bytes between the opaque data and the signature", resp.len() - c.at)));
    }
    let mut o = Cursor { data: opaque_data, at: 0 };
    let mut opaque = BTreeMap::new();
    while o.at < opaque_data.len() {
        let kind = o.u16("opaque field type")?;
        let len = usize::from(o.u16("opaque field size")?);
        let value = o.take(len, "opaque field")?;
        opaque.entry(kind).or_insert_with(|| value.to_vec());
    }
    Ok(Report { nonce, measurements, opaque })
}

/// The pinned root, DER, after checking its fingerprint.
fn pinned_root() -> Result<CertificateDer<'static>, AttestError> {
    use sha2::{Digest, Sha256};
    let der = CertificateDer::from_pem_slice(ROOT_PEM)
        .map_err(|e| check("certificate chain", format!("the built-in NVIDIA root does not parse ({e})")))?;
    if hex(&Sha256::digest(der.as_ref())) != ROOT_SHA256 {
        return Err(check(
            "certificate chain",
            "the built-in NVIDIA root is not the certificate this binary pins",
        ));
    }
    Ok(der)
}

/// Chains the PEM certificates (leaf first) to the pinned root at `now`; returns the
/// leaf's public key (an uncompressed P-384 point).
pub fn verify_chain(cert_chain_pem: &str, now: SystemTime) -> Result<Vec<u8>, AttestError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| check("certificate chain", format!("the GPU certificate chain is not PEM ({e})")))?;
    let leaf =
        certs.first().ok_or_else(|| check("certificate chain", "the GPU certificate chain is empty"))?;
    let root = pinned_root()?;
    let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|e| {
        check("certificate chain", format!("the built-in NVIDIA root is no trust anchor ({e:?})"))
    })?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
        check("certificate chain", format!("the GPU's leaf certificate is malformed ({e:?})"))
    })?;
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &certs[1..],
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::required_if_present(EKU_ANY),
        None,
        None,
    )
    .map_err(|e| {
        check(
            "certificate chain",
            format!("the GPU's certificates do not lead to NVIDIA's Device Identity CA, or one is expired, not yet valid or malformed ({e:?})"),
        )
    })?;
    let parsed = x509_cert::Certificate::from_der(leaf.as_ref())
        .map_err(|e| check("certificate chain", format!("the GPU's leaf certificate is malformed ({e})")))?;
    let spki = &parsed.tbs_certificate.subject_public_key_info;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY || curve != Some(OID_SECP384R1) {
        return Err(check("certificate chain", "the GPU's attestation key is not an ECDSA P-384 key"));
    }
    Ok(spki.subject_public_key.raw_bytes().to_vec())
}

/// Checks the report's signature with the leaf's key.
pub fn verify_report_signature(report: &[u8], leaf_key: &[u8]) -> Result<(), AttestError> {
    if report.len() <= SIGNATURE_LEN {
        return Err(check("evidence format", "the GPU report is shorter than its signature"));
    }
    let (signed, sig) = report.split_at(report.len() - SIGNATURE_LEN);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, leaf_key)
        .verify(signed, sig)
        .map_err(|_| {
            check(
                "report signature",
                "the GPU report is not signed by the certified attestation key (tampered?)",
            )
        })
}

/// A dotted version (`550.90.07`) as numbers.
fn version(v: &str) -> Option<Vec<u64>> {
    v.trim().split('.').map(|p| p.parse::<u64>().ok()).collect()
}

/// `a >= b`, numerically, missing components counting as 0.
fn version_at_least(a: &[u64], b: &[u64]) -> bool {
    let n = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..n).map(|i| (at(a, i), at(b, i))).find(|(x, y)| x != y).is_none_or(|(x, y)| x > y)
}

/// The policy checks on a parsed report: driver at least the minimum, pinned blocks equal.
pub fn check_policy(report: &Report, policy: &NvidiaPolicy) -> Result<(), AttestError> {
    if !policy.min_driver.is_empty() {
        let min = version(&policy.min_driver).ok_or_else(|| AttestError::Malformed {
            what: "attestation policy",
            detail: format!("nvidia.min_driver {:?} is not a dotted version", policy.min_driver),
        })?;
        let got = report.driver_version().unwrap_or_default();
        match version(&got) {
            Some(v) if version_at_least(&v, &min) => {}
            _ => {
                return Err(check(
                    "driver",
                    format!("GPU driver {got:?} is older than the policy's minimum {}", policy.min_driver),
                ))
            }
        }
    }
    if policy.measurements.is_empty() {
        return Err(check(
            "measurement",
            "the policy pins no GPU measurement block (golden values, e.g. from NVIDIA's RIMs for this driver and VBIOS)",
        ));
    }
    for (index, want) in &policy.measurements {
        match report.measurements.get(index) {
            Some(got) if hex(got).eq_ignore_ascii_case(want) => {}
            Some(got) => {
                return Err(check(
                    "measurement",
                    format!("GPU measurement block {index} is {}, not the policy's {want}", hex(got)),
                ))
            }
            None => {
                return Err(check("measurement", format!("the GPU report has no measurement block {index}")))
            }
        }
    }
    Ok(())
}

/// Verifies a GPU report and its certificate chain (PEM, leaf first) against the pinned
/// NVIDIA root, the session's `gpu_nonce` and `policy`, at `now`. Returns one line
/// saying what it attested.
pub fn verify(
    report: &[u8],
    cert_chain_pem: &str,
    gpu_nonce: &[u8; 32],
    policy: &NvidiaPolicy,
    now: SystemTime,
) -> Result<String, AttestError> {
    let key = verify_chain(cert_chain_pem, now)?;
    let parsed = parse_report(report)?;
    verify_report_signature(report, &key)?;
    if parsed.nonce != *gpu_nonce {
        return Err(check(
            "nonce binding",
            "the GPU report answers another nonce (a replay of an earlier session, or another key or model)",
        ));
    }
    check_policy(&parsed, policy)?;
    Ok(format!(
        "nvidia: driver {}, VBIOS {}, {} measurement blocks, {} pinned and equal",
        parsed.driver_version().unwrap_or_else(|| "unknown".into()),
        parsed.vbios_version().unwrap_or_else(|| "unknown".into()),
        parsed.measurements.len(),
        policy.measurements.len()
    ))
}

fn unavailable(detail: impl Into<String>) -> AttestError {
    AttestError::Unavailable { provider: PROVIDER, detail: detail.into() }
}

fn device<'n>(nvml: &'n nvml_wrapper::Nvml, index: u32) -> Result<nvml_wrapper::Device<'n>, AttestError> {
    let dev = nvml.device_by_index(index).map_err(|e| unavailable(format!("no GPU {index} ({e})")))?;
    match dev.is_cc_enabled() {
        Ok(true) => {}
        Ok(false) => {
            return Err(unavailable("the GPU is not in confidential-computing mode (CC mode is off)"));
        }
        Err(e) => return Err(unavailable(format!("NVML cannot tell whether CC mode is on ({e})"))),
    }
    match dev.is_cc_dev_mode_enabled() {
        Ok(false) => Ok(dev),
        Ok(true) => Err(unavailable("the GPU's CC dev-tools mode is on (debugging allowed): not attestable")),
        Err(e) => Err(unavailable(format!("NVML cannot tell whether CC dev-tools mode is on ({e})"))),
    }
}

fn nvml() -> Result<nvml_wrapper::Nvml, AttestError> {
    nvml_wrapper::Nvml::init().map_err(|e| {
        unavailable(format!(
            "NVML (libnvidia-ml) cannot be loaded or initialised: no NVIDIA driver here? ({e})"
        ))
    })
}

/// Whether this host has an NVIDIA GPU (`index`) in CC mode, dev tools off.
pub fn available(index: u32) -> Result<(), AttestError> {
    device(&nvml()?, index).map(|_| ())
}

/// GPU `index`'s attestation report for `nonce` and its attestation certificate chain.
pub fn collect(nonce: &[u8; 32], index: u32) -> Result<Part, AttestError> {
    let nvml = nvml()?;
    let dev = device(&nvml, index)?;
    let report = dev
        .confidential_compute_gpu_attestation_report(*nonce)
        .map_err(|e| unavailable(format!("NVML's attestation report failed ({e})")))?;
    let certs = dev
        .confidential_compute_gpu_certificate()
        .map_err(|e| unavailable(format!("NVML's attestation certificate chain failed ({e})")))?;
    let cert_chain = String::from_utf8(certs.attestation_cert_chain)
        .map_err(|_| unavailable("NVML's attestation certificate chain is not PEM text"))?;
    Ok(Part::Nvidia { report: report.attestation_report, cert_chain })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unhex;
    use std::time::Duration;

    const HOPPER_REPORT: &str = include_str!("../../testdata/nvidia/hopperAttestationReport.txt");
    const HOPPER_CHAIN: &str = include_str!("../../testdata/nvidia/hopperCertChain.txt");
    const EVIDENCES: &str = include_str!("../../testdata/nvidia/gpu_evidence.json");
    /// 2026-01-01T00:00:00Z: inside every certificate's validity (2020/2022 to 9999).
    const T: u64 = 1_767_225_600;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn unbase64(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
        for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
            acc = acc << 6 | A.iter().position(|a| *a == c).unwrap() as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    /// The hopper sample, its nonce and a policy pinning three of its blocks.
    fn hopper() -> (Vec<u8>, [u8; 32], NvidiaPolicy) {
        let report = unhex(HOPPER_REPORT.trim());
        let parsed = parse_report(&report).unwrap();
        (report, parsed.nonce, policy_for(&parsed, "550.90.07"))
    }

    fn policy_for(parsed: &Report, min_driver: &str) -> NvidiaPolicy {
        let measurements = [1u8, 2, 3].iter().map(|i| (*i, hex(&parsed.measurements[i]))).collect();
        NvidiaPolicy { min_driver: min_driver.into(), measurements }
    }

    fn err(r: Result<impl std::fmt::Debug, AttestError>) -> (&'static str, String) {
        match r.unwrap_err() {
            AttestError::Check { check, detail } => (check, detail),
            other => panic!("not a check failure: {other}"),
        }
    }

    #[test]
    fn the_real_hopper_report_verifies() {
        let (report, nonce, policy) = hopper();
        assert_eq!(hex(&nonce), "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb");
        let line = verify(&report, HOPPER_CHAIN, &nonce, &policy, at(T)).unwrap();
        assert_eq!(
            line,
            "nvidia: driver 550.90.07, VBIOS 96.00.9F.00.01, 64 measurement blocks, 3 pinned and equal"
        );
        pinned_root().unwrap();
    }

    #[test]
    fn the_eight_real_ppcie_evidences_verify() {
        let list: Vec<serde_json::Value> = serde_json::from_str(EVIDENCES).unwrap();
        assert_eq!(list.len(), 8);
        for e in &list {
            let report = unbase64(e["evidence"].as_str().unwrap());
            let chain = String::from_utf8(unbase64(e["certificate"].as_str().unwrap())).unwrap();
            let nonce: [u8; 32] = unhex(e["nonce"].as_str().unwrap()).try_into().unwrap();
            let parsed = parse_report(&report).unwrap();
            assert_eq!(parsed.driver_version().unwrap(), e["driver_version"].as_str().unwrap());
            assert_eq!(parsed.vbios_version().unwrap(), e["vbios_version"].as_str().unwrap());
            let policy = policy_for(&parsed, "590.12");
            let line = verify(&report, &chain, &nonce, &policy, at(T)).unwrap();
            assert!(line.starts_with("nvidia: driver 590.12, VBIOS 96.00.A5.00.01"), "{line}");
        }
    }

    #[test]
    fn a_tampered_report_is_refused() {
        let (report, nonce, policy) = hopper();
        // The request's nonce, a measurement, the driver version, the signature.
        for offset in [4, REQUEST_LEN + 8 + 20, report.len() - 200, report.len() - 1] {
            let mut bad = report.clone();
            bad[offset] ^= 0x01;
            let (c, d) = err(verify(&bad, HOPPER_CHAIN, &nonce, &policy, at(T)));
            assert_eq!(c, "report signature", "offset {offset}: {d}");
        }
        assert_eq!(err(verify(&report[..100], HOPPER_CHAIN, &nonce, &policy, at(T))).0, "evidence format");
        let mut bad = report.clone();
        bad[REQUEST_LEN + 5] ^= 0x10; // the record length
        assert_eq!(err(verify(&bad, HOPPER_CHAIN, &nonce, &policy, at(T))).0, "evidence format");
    }

    #[test]
    fn evidence_for_another_nonce_is_refused() {
        let (report, mut nonce, policy) = hopper();
        nonce[0] ^= 1;
        assert_eq!(err(verify(&report, HOPPER_CHAIN, &nonce, &policy, at(T))).0, "nonce binding");
    }

    #[test]
    fn a_driver_below_the_policy_is_refused() {
        let (report, nonce, mut policy) = hopper();
        for min in ["550.90.08", "550.91", "551", "555.42.02"] {
            policy.min_driver = min.into();
            let (c, d) = err(verify(&report, HOPPER_CHAIN, &nonce, &policy, at(T)));
            assert_eq!(c, "driver", "{min}: {d}");
        }
        for min in ["550.90.07", "550.90", "550.54.15", "535.104.05", ""] {
            policy.min_driver = min.into();
            verify(&report, HOPPER_CHAIN, &nonce, &policy, at(T)).unwrap();
        }
        policy.min_driver = "latest".into();
        assert!(matches!(
            verify(&report, HOPPER_CHAIN, &nonce, &policy, at(T)),
            Err(AttestError::Malformed { .. })
        ));
    }

    #[test]
    fn a_measurement_mismatch_is_refused() {
        let (report, nonce, mut policy) = hopper();
        policy.measurements.insert(2, "00".repeat(48));
        assert_eq!(err(verify(&report, HOPPER_CHAIN, &nonce, &policy, at(T))).0, "measurement");
        let (_, _, mut policy) = hopper();
        policy.measurements.insert(200, "00".repeat(48));
        let (c, d) = err(verify(&report, HOPPER_CHAIN, &nonce, &policy, at(T)));
        assert_eq!(c, "measurement");
        assert!(d.contains("no measurement block 200"), "{d}");
        policy.measurements.clear();
        assert_eq!(err(verify(&report, HOPPER_CHAIN, &nonce, &policy, at(T))).0, "measurement");
    }

    /// A self-made "NVIDIA Device Identity CA" and a leaf whose key really signed the
    /// report: only the chain can refuse it.
    #[test]
    fn a_chain_ending_in_another_root_is_refused() {
        let (report, nonce, policy) = hopper();
        let mut ca = rcgen::CertificateParams::default();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name.push(rcgen::DnType::CommonName, "NVIDIA Device Identity CA");
        ca.distinguished_name.push(rcgen::DnType::OrganizationName, "NVIDIA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut leaf = rcgen::CertificateParams::default();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, "GH100 A01 GSP FMC LF");
        let leaf = leaf.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &leaf_key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let mut forged = report.clone();
        let n = forged.len() - SIGNATURE_LEN;
        let sig = signer.sign(&ring::rand::SystemRandom::new(), &forged[..n]).unwrap();
        forged[n..].copy_from_slice(sig.as_ref());
        verify_report_signature(&forged, leaf_key.public_key_raw()).unwrap();
        let chain = format!("{}{}", leaf.pem(), ca.pem());
        let (c, d) = err(verify(&forged, &chain, &nonce, &policy, at(T)));
        assert_eq!(c, "certificate chain", "{d}");
        // A real chain whose last certificate is swapped for the self-made root still
        // verifies: the root the server sends is never what is trusted.
        let mut certs: Vec<&str> = HOPPER_CHAIN.split_inclusive("-----END CERTIFICATE-----").collect();
        certs.retain(|c| c.contains("BEGIN"));
        let swapped = format!("{}\n{}", certs[..4].concat(), ca.pem());
        verify(&report, &swapped, &nonce, &policy, at(T)).unwrap();
        // Without the intermediates, the leaf leads nowhere.
        assert_eq!(err(verify(&report, certs[0], &nonce, &policy, at(T))).0, "certificate chain");
    }

    #[test]
    fn expired_and_malformed_certificates_are_refused() {
        let (report, nonce, policy) = hopper();
        // After 9999-12-31T23:59:59Z, every notAfter.
        let (c, d) = err(verify(&report, HOPPER_CHAIN, &nonce, &policy, at(253_402_300_800)));
        assert_eq!(c, "certificate chain");
        assert!(d.contains("Expired"), "{d}");
        // 2020-01-01: before every notBefore.
        let (c, d) = err(verify(&report, HOPPER_CHAIN, &nonce, &policy, at(1_577_836_800)));
        assert_eq!(c, "certificate chain");
        assert!(d.contains("NotValidYet"), "{d}");
        let garbled = HOPPER_CHAIN.replacen("MII", "MIJ", 1);
        let (c, d) = err(verify(&report, &garbled, &nonce, &policy, at(T)));
        assert_eq!(c, "certificate chain");
        assert!(d.contains("malformed"), "{d}");
        assert_eq!(err(verify(&report, "", &nonce, &policy, at(T))).0, "certificate chain");
        let torn = &HOPPER_CHAIN[..HOPPER_CHAIN.len() / 3];
        assert_eq!(err(verify(&report, torn, &nonce, &policy, at(T))).0, "certificate chain");
    }

    #[test]
    fn collection_needs_nvml() {
        // This build machine has no NVIDIA driver: NVML does not load, and says so.
        if nvml_wrapper::Nvml::init().is_err() {
            let e = available(0).unwrap_err().to_string();
            assert!(e.contains("NVML"), "{e}");
            assert!(collect(&[0; 32], 0).is_err());
        }
    }

    /// On a host with an NVIDIA GPU (`cargo test -- --ignored nvidia_hardware`): what
    /// NVML says about CC mode, and, where the GPU hands out a report and chain (CC mode
    /// on, or a driver that attests without it), that this verifier accepts them for the
    /// nonce asked, pinning the report's own blocks and driver.
    #[test]
    #[ignore = "needs an NVIDIA GPU and its driver"]
    fn nvidia_hardware() {
        let nvml = nvml_wrapper::Nvml::init().expect("NVML loads");
        println!("driver {:?}, {} GPU(s)", nvml.sys_driver_version(), nvml.device_count().unwrap());
        let dev = nvml.device_by_index(0).unwrap();
        println!("GPU 0: {:?}", dev.name());
        println!("CC mode on: {:?}; dev-tools mode: {:?}", dev.is_cc_enabled(), dev.is_cc_dev_mode_enabled());
        println!("available(0): {:?}", available(0));
        let nonce = [0x5a; 32];
        let report = dev.confidential_compute_gpu_attestation_report(nonce);
        let certs = dev.confidential_compute_gpu_certificate();
        println!(
            "report: {:?}; chain: {:?}",
            report.as_ref().map(|r| r.attestation_report.len()),
            certs.as_ref().map(|c| c.attestation_cert_chain.len())
        );
        let (Ok(report), Ok(certs)) = (report, certs) else { return };
        let chain = String::from_utf8(certs.attestation_cert_chain).unwrap();
        let parsed = parse_report(&report.attestation_report).unwrap();
        let policy = policy_for(&parsed, &parsed.driver_version().unwrap());
        let line = verify(&report.attestation_report, &chain, &nonce, &policy, SystemTime::now()).unwrap();
        println!("{line}");
        let mut other = nonce;
        other[0] ^= 1;
        assert_eq!(
            err(verify(&report.attestation_report, &chain, &other, &policy, SystemTime::now())).0,
            "nonce binding"
        );
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s: &str| version(s).unwrap();
        assert!(version_at_least(&v("550.90.07"), &v("550.90.07")));
        assert!(version_at_least(&v("550.100"), &v("550.90.07")));
        assert!(!version_at_least(&v("550.9"), &v("550.90")));
        assert!(version_at_least(&v("590.12"), &v("590.12.0")));
        assert!(version("550.x").is_none());
    }
}

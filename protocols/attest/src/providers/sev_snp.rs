//! AMD SEV-SNP: the guest's attestation report, signed by the chip's VCEK.
//!
//! **Verification (client).** The report (0x4A0 bytes) and the VCEK certificate (DER) come
//! from the server; the ARK and ASK come from the `sev` crate's built-in Milan, Genoa and
//! Turin certificates, pinned here by their SHA-256 (never a certificate the server sends).
//! The product is the one whose ASK is the VCEK's issuer. Checks, each failure naming its
//! check:
//!
//! * `certificate chain`: ARK self-signed, ARK -> ASK -> VCEK (RSA-PSS SHA-384, by `sev`),
//!   names chained, every certificate valid at `now`, the VCEK an ECDSA P-384 key, its
//!   product name of the chosen line, its TCB extensions (blSPL, teeSPL, snpSPL, ucodeSPL,
//!   and fmcSPL on Turin) equal to the report's REPORTED_TCB and its hwID equal to CHIP_ID.
//! * `report signature`: ECDSA P-384 / SHA-384 over the raw bytes `[0, 0x2A0)` (our own
//!   check, on the bytes received rather than a re-serialisation), r and s little-endian
//!   in 72-byte slots; SIGNATURE_ALGO 1; signing key VCEK.
//! * `nonce binding`: REPORT_DATA equals the session's report data.
//! * `debug`: the guest policy's DEBUG bit (19) clear; `vmpl`: VMPL 0.
//! * `measurement`: MEASUREMENT in the policy's list; `tcb`: REPORTED_TCB at least the
//!   policy's minimum, component by component.
//!
//! **VLEK** (a key AMD issues to a cloud provider instead of per chip) chains
//! ARK -> ASVK -> VLEK; the `sev` crate pins no ASVK, so VLEK-signed reports are refused
//! (`certificate chain`). Supporting them means pinning AMD's ASVK certificates here.
//!
//! **Not checked** (needs the network): revocation (AMD KDS's CRL for the ASK/VCEK).
//!
//! **Collection (server).** `/dev/sev-guest` and the extended report, whose certificate
//! table the host fills with the VCEK; where the device is absent, [`available`] says so.

use crate::policy::{SevSnpPolicy, SnpTcb};
use crate::{check, hex, AttestError, Part, ProviderKind};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sev::certs::snp::{builtin, ca, Certificate as SevCertificate, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use std::time::SystemTime;
use x509_cert::der::asn1::{Ia5StringRef, ObjectIdentifier};
use x509_cert::der::Decode;
use x509_cert::Certificate;

const PROVIDER: ProviderKind = ProviderKind::SevSnp;

/// The length of an attestation report.
pub const REPORT_LEN: usize = 0x4A0;
/// The signed part of a report: `[0, SIGNED_LEN)`.
const SIGNED_LEN: usize = 0x2A0;
/// Where r and s start; each is little-endian in a 72-byte slot.
const SIG_R: usize = 0x2A0;
const SIG_S: usize = 0x2E8;
const SIG_SLOT: usize = 72;

/// An AMD EPYC product line whose ARK and ASK this binary pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// EPYC 7003.
    Milan,
    /// EPYC 9004.
    Genoa,
    /// EPYC 9005.
    Turin,
}

impl Product {
    /// Every product line.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The name AMD uses (KDS paths, the VCEK's product-name extension).
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// The built-in ARK and ASK (PEM), from the `sev` crate.
    fn pems(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Product::Milan => (builtin::milan::ARK, builtin::milan::ASK),
            Product::Genoa => (builtin::genoa::ARK, builtin::genoa::ASK),
            Product::Turin => (builtin::turin::ARK, builtin::turin::ASK),
        }
    }

    /// SHA-256 of the ARK's and the ASK's DER: pinned, so that an update of the `sev`
    /// crate cannot change what this binary trusts without failing here.
    fn pinned_sha256(self) -> (&'static str, &'static str) {
        match self {
            Product::Milan => (
                "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
                "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
            ),
            Product::Genoa => (
                "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
                "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
            ),
            Product::Turin => (
                "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
                "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
            ),
        }
    }
}

/// The pinned ARK and ASK of `product`, DER, after checking their fingerprints.
fn pinned_roots(product: Product) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
    use sha2::{Digest, Sha256};
    let (ark_pem, ask_pem) = product.pems();
    let (ark_pin, ask_pin) = product.pinned_sha256();
    let mut out = Vec::with_capacity(2);
    for (what, pem, pin) in [("ARK", ark_pem, ark_pin), ("ASK", ask_pem, ask_pin)] {
        let der = CertificateDer::from_pem_slice(pem).map_err(|e| {
            check("certificate chain", format!("the built-in {} {what} does not parse ({e})", product.name()))
        })?;
        if hex(&Sha256::digest(der.as_ref())) != pin {
            return Err(check(
                "certificate chain",
                format!("the built-in {} {what} is not the certificate this binary pins", product.name()),
            ));
        }
        out.push(der.to_vec());
    }
    let ask = out.pop().unwrap_or_default();
    let ark = out.pop().unwrap_or_default();
    Ok((ark, ask))
}

fn unix_secs(now: SystemTime) -> Result<u64, AttestError> {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| check("certificate chain", "the clock is before 1970"))
}

/// Checks that `cert` is valid at `now` (seconds since the epoch).
fn check_validity(cert: &Certificate, what: &str, now: u64) -> Result<(), AttestError> {
    let v = &cert.tbs_certificate.validity;
    let (from, until) = (v.not_before.to_unix_duration().as_secs(), v.not_after.to_unix_duration().as_secs());
    if now < from || now > until {
        return Err(check(
            "certificate chain",
            format!(
                "the {what} is not valid at {now} (Unix time): valid from {} to {} (expired or not yet valid)",
                v.not_before, v.not_after
            ),
        ));
    }
    Ok(())
}

fn parse_der(der: &[u8], what: &str) -> Result<Certificate, AttestError> {
    Certificate::from_der(der)
        .map_err(|e| check("certificate chain", format!("the {what} certificate is malformed ({e})")))
}

/// AMD's VCEK extensions (1.3.6.1.4.1.3704.1.*).
const OID_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
const OID_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const OID_HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

fn extension(cert: &Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

fn spl(cert: &Certificate, oid: ObjectIdentifier, name: &str) -> Result<Option<u8>, AttestError> {
    match extension(cert, oid) {
        None => Ok(None),
        Some(v) => u8::from_der(v).map(Some).map_err(|e| {
            check("certificate chain", format!("the VCEK's {name} extension is not a small INTEGER ({e})"))
        }),
    }
}

/// Verifies an SEV-SNP report and its VCEK against the pinned AMD roots, the session's
/// `report_data` and `policy`, at `now`. Returns one line saying what it attested.
pub fn verify(
    report: &[u8],
    vcek_der: &[u8],
    report_data: &[u8; 64],
    policy: &SevSnpPolicy,
    now: SystemTime,
) -> Result<String, AttestError> {
    let parsed = parse_report(report)?;
    let product = verify_chain(vcek_der, now)?;
    let vcek = parse_der(vcek_der, "VCEK")?;
    check_vcek_matches_report(&vcek, &parsed, product)?;
    verify_report_signature(report, &parsed, &vcek)?;
    if parsed.report_data[..] != report_data[..] {
        return Err(check(
            "nonce binding",
            "the report's REPORT_DATA is bound to another nonce, key or model (a replay of an earlier session?)",
        ));
    }
    check_policy(&parsed, policy)?;
    let t = parsed.reported_tcb;
    Ok(format!(
        "sev-snp: measurement {}…, TCB {}.{}.{}.{}, firmware {}.{} ({}, VCEK)",
        &hex(&parsed.measurement)[..16],
        t.bootloader,
        t.tee,
        t.snp,
        t.microcode,
        parsed.current.major,
        parsed.current.minor,
        product.name()
    ))
}

/// Parses a raw report (exactly 0x4A0 bytes).
pub fn parse_report(report: &[u8]) -> Result<AttestationReport, AttestError> {
    if report.len() != REPORT_LEN {
        return Err(check(
            "evidence format",
            format!("an SEV-SNP report is {REPORT_LEN} bytes, not {}", report.len()),
        ));
    }
    AttestationReport::from_bytes(report)
        .map_err(|e| check("evidence format", format!("the SEV-SNP report does not parse ({e})")))
}

/// Chains the VCEK (DER) to the pinned ARK/ASK of its product line, every certificate
/// valid at `now`. Returns the product line.
pub fn verify_chain(vcek_der: &[u8], now: SystemTime) -> Result<Product, AttestError> {
    let now = unix_secs(now)?;
    let vcek = parse_der(vcek_der, "VCEK")?;
    let issuer = &vcek.tbs_certificate.issuer;
    let mut found = None;
    for p in Product::ALL {
        let (ark, ask) = pinned_roots(p)?;
        let ask_cert = parse_der(&ask, "built-in ASK")?;
        if &ask_cert.tbs_certificate.subject == issuer {
            found = Some((p, ark, ask, ask_cert));
            break;
        }
    }
    let Some((product, ark, ask, ask_cert)) = found else {
        let vlek = issuer.to_string().contains("VLEK");
        return Err(check(
            "certificate chain",
            if vlek {
                format!("the report is signed by a VLEK (issuer {issuer}); this build pins no AMD ASVK and accepts VCEK-signed reports only")
            } else {
                format!("the VCEK's issuer ({issuer}) is not the ASK of any AMD product line this binary pins (Milan, Genoa, Turin)")
            },
        ));
    };
    let ark_cert = parse_der(&ark, "built-in ARK")?;
    if ask_cert.tbs_certificate.issuer != ark_cert.tbs_certificate.subject {
        return Err(check("certificate chain", "the built-in ASK is not issued by the built-in ARK"));
    }
    check_validity(&ark_cert, &format!("{} ARK", product.name()), now)?;
    check_validity(&ask_cert, &format!("{} ASK", product.name()), now)?;
    check_validity(&vcek, "VCEK", now)?;
    let sev_cert = |der: &[u8], what: &str| {
        SevCertificate::from_der(der)
            .map_err(|e| check("certificate chain", format!("the {what} certificate is malformed ({e})")))
    };
    let chain = ca::Chain { ark: sev_cert(&ark, "ARK")?, ask: sev_cert(&ask, "ASK")? };
    let ask = chain.verify().map_err(|e| {
        check(
            "certificate chain",
            format!("the built-in {} ARK -> ASK chain does not verify ({e})", product.name()),
        )
    })?;
    let vcek_sev = sev_cert(vcek_der, "VCEK")?;
    (ask, &vcek_sev).verify().map_err(|e| {
        check(
            "certificate chain",
            format!(
                "the VCEK is not signed by AMD's {} ASK (a certificate from another CA?): {e}",
                product.name()
            ),
        )
    })?;
    let spki = &vcek.tbs_certificate.subject_public_key_info;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY || curve != Some(OID_SECP384R1) {
        return Err(check("certificate chain", "the VCEK's key is not an ECDSA P-384 key"));
    }
    Ok(product)
}

/// The VCEK belongs to this chip at this TCB: its product name is of `product`, its TCB
/// extensions equal REPORTED_TCB and its hwID equals CHIP_ID.
fn check_vcek_matches_report(
    vcek: &Certificate,
    report: &AttestationReport,
    product: Product,
) -> Result<(), AttestError> {
    if let Some(v) = extension(vcek, OID_PRODUCT_NAME) {
        let name = Ia5StringRef::from_der(v).map(|s| s.as_str().to_string()).unwrap_or_default();
        if !name.starts_with(product.name()) {
            return Err(check(
                "certificate chain",
                format!("the VCEK names product {name:?} but chains to the {} ASK", product.name()),
            ));
        }
    }
    let t = report.reported_tcb;
    let mut pairs = vec![
        ("blSPL", spl(vcek, OID_BL_SPL, "blSPL")?, Some(t.bootloader)),
        ("teeSPL", spl(vcek, OID_TEE_SPL, "teeSPL")?, Some(t.tee)),
        ("snpSPL", spl(vcek, OID_SNP_SPL, "snpSPL")?, Some(t.snp)),
        ("ucodeSPL", spl(vcek, OID_UCODE_SPL, "ucodeSPL")?, Some(t.microcode)),
    ];
    if product == Product::Turin {
        pairs.push(("fmcSPL", spl(vcek, OID_FMC_SPL, "fmcSPL")?, t.fmc));
    }
    for (name, cert, reported) in pairs {
        if cert.is_none() || cert != reported {
            return Err(check(
                "certificate chain",
                format!(
                    "the VCEK's {name} ({}) differs from the report's REPORTED_TCB ({}): the VCEK was issued for another TCB",
                    cert.map_or("absent".into(), |v| v.to_string()),
                    reported.map_or("absent".into(), |v| v.to_string())
                ),
            ));
        }
    }
    let hwid = extension(vcek, OID_HW_ID)
        .ok_or_else(|| check("certificate chain", "the VCEK carries no hwID extension"))?;
    let chip = &report.chip_id;
    let matches = !hwid.is_empty()
        && hwid.len() <= chip.len()
        && chip[..hwid.len()] == *hwid
        && chip[hwid.len()..].iter().all(|b| *b == 0);
    if !matches {
        return Err(check(
            "certificate chain",
            "the VCEK's hwID is not the report's CHIP_ID: the VCEK belongs to another chip (or the guest masks its chip ID)",
        ));
    }
    Ok(())
}

/// Checks the report's signature over its raw bytes with the VCEK's key.
pub fn verify_report_signature(
    raw: &[u8],
    report: &AttestationReport,
    vcek: &Certificate,
) -> Result<(), AttestError> {
    if report.sig_algo != 1 {
        return Err(check(
            "report signature",
            format!("signature algorithm {} (only 1, ECDSA P-384 with SHA-384, is defined)", report.sig_algo),
        ));
    }
    if report.key_info.mask_chip_key() || report.key_info.signing_key() != 0 {
        return Err(check(
            "report signature",
            format!(
                "the report is not signed by a VCEK (KEY_INFO signing key {}, chip key masked: {}); only VCEK-signed reports are accepted",
                report.key_info.signing_key(),
                report.key_info.mask_chip_key()
            ),
        ));
    }
    if raw.len() != REPORT_LEN {
        return Err(check("evidence format", "an SEV-SNP report is 0x4A0 bytes"));
    }
    let mut sig = [0u8; 96];
    for (slot, out) in [(SIG_R, 0), (SIG_S, 48)] {
        let le = &raw[slot..slot + SIG_SLOT];
        if le[48..].iter().any(|b| *b != 0) {
            return Err(check("report signature", "the signature's r or s does not fit in 48 bytes"));
        }
        for (i, b) in le[..48].iter().rev().enumerate() {
            sig[out + i] = *b;
        }
    }
    let point = vcek.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, point)
        .verify(&raw[..SIGNED_LEN], &sig)
        .map_err(|_| {
            check(
                "report signature",
                "the report is not signed by the VCEK's key (tampered, or another chip's report)",
            )
        })
}

/// The policy checks on a parsed report: debug off, VMPL 0, measurement allowed, TCB at
/// least the minimum.
pub fn check_policy(report: &AttestationReport, policy: &SevSnpPolicy) -> Result<(), AttestError> {
    if report.policy.debug_allowed() {
        return Err(check(
            "debug",
            "the guest policy allows debugging (the hypervisor can read the guest's memory)",
        ));
    }
    if report.vmpl != 0 {
        return Err(check(
            "vmpl",
            format!(
                "the report was requested at VMPL {} (only VMPL 0, the guest kernel, is accepted)",
                report.vmpl
            ),
        ));
    }
    let m = hex(&report.measurement);
    if !policy.measurements.iter().any(|a| a.eq_ignore_ascii_case(&m)) {
        return Err(check("measurement", format!("launch measurement {m} is not in the policy's list")));
    }
    let t = report.reported_tcb;
    let min = policy.min_tcb;
    let mut below: Vec<String> = [
        ("bootloader", t.bootloader, min.bootloader),
        ("tee", t.tee, min.tee),
        ("snp", t.snp, min.snp),
        ("microcode", t.microcode, min.microcode),
    ]
    .iter()
    .filter(|(_, got, want)| got < want)
    .map(|(n, got, want)| format!("{n} {got} < {want}"))
    .collect();
    if let Some(want) = min.fmc {
        match t.fmc {
            Some(got) if got >= want => {}
            got => below.push(format!("fmc {} < {want}", got.map_or("absent".into(), |g| g.to_string()))),
        }
    }
    if !below.is_empty() {
        return Err(check(
            "tcb",
            format!(
                "the reported TCB is below the policy's minimum ({}): the platform needs a firmware update",
                below.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The reported TCB as the policy spells it (to write a policy from a known-good report).
pub fn reported_tcb(report: &AttestationReport) -> SnpTcb {
    let t = report.reported_tcb;
    SnpTcb { bootloader: t.bootloader, tee: t.tee, snp: t.snp, microcode: t.microcode, fmc: t.fmc }
}

const DEVICE: &str = "/dev/sev-guest";

fn unavailable(detail: impl Into<String>) -> AttestError {
    AttestError::Unavailable { provider: PROVIDER, detail: detail.into() }
}

/// Whether this host is an SEV-SNP guest that can produce reports.
pub fn available() -> Result<(), AttestError> {
    if !std::path::Path::new(DEVICE).exists() {
        return Err(unavailable(format!(
            "{DEVICE} is absent: this is not an SEV-SNP guest, or the sev-guest driver is not loaded (modprobe sev-guest)"
        )));
    }
    open().map(|_| ())
}

#[cfg(target_os = "linux")]
fn open() -> Result<sev::firmware::guest::Firmware, AttestError> {
    sev::firmware::guest::Firmware::open()
        .map_err(|e| unavailable(format!("cannot open {DEVICE} ({e}); the server needs read access to it")))
}

#[cfg(not(target_os = "linux"))]
fn open() -> Result<(), AttestError> {
    Err(unavailable("SEV-SNP guest reports are only implemented on Linux"))
}

/// A report bound to `report_data` (at VMPL 0) and the VCEK the host supplies in the
/// extended report's certificate table.
#[cfg(target_os = "linux")]
pub fn collect(report_data: &[u8; 64]) -> Result<Part, AttestError> {
    use sev::firmware::host::CertType;
    let mut fw = open()?;
    let (report, certs) = fw
        .get_ext_report(None, Some(*report_data), Some(0))
        .map_err(|e| unavailable(format!("the extended report request failed ({e})")))?;
    let certs = certs.unwrap_or_default();
    if certs.iter().any(|c| c.cert_type == CertType::VLEK) {
        return Err(unavailable(
            "the host supplies a VLEK: this build verifies VCEK-signed reports only (no AMD ASVK is pinned)",
        ));
    }
    let vcek = certs.into_iter().find(|c| c.cert_type == CertType::VCEK).ok_or_else(|| {
        unavailable(
            "the host supplies no VCEK in the extended report's certificate table (load it on the host, e.g. `snphost import`); this build does not fetch it from AMD's KDS",
        )
    })?;
    Ok(Part::SevSnp { report, vcek: vcek.data })
}

/// A report bound to `report_data`: only on Linux.
#[cfg(not(target_os = "linux"))]
pub fn collect(_report_data: &[u8; 64]) -> Result<Part, AttestError> {
    Err(unavailable("SEV-SNP guest reports are only implemented on Linux"))
}

/// Sets or clears the DEBUG bit (19) of a raw report's guest policy (at 0x08); the
/// signature then no longer verifies.
#[cfg(test)]
fn with_debug(raw: &[u8], debug: bool) -> Vec<u8> {
    const POLICY_OFFSET: usize = 0x08;
    const POLICY_DEBUG_BIT: u32 = 19;
    let mut r = raw.to_vec();
    let byte = POLICY_OFFSET + (POLICY_DEBUG_BIT / 8) as usize;
    let mask = 1u8 << (POLICY_DEBUG_BIT % 8);
    if debug {
        r[byte] |= mask;
    } else {
        r[byte] &= !mask;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unhex;
    use std::time::Duration;

    const REPORT_HEX: &str = include_str!("../../testdata/sev/report_milan.hex");
    const VCEK: &[u8] = include_bytes!("../../testdata/sev/vcek_milan.der");
    /// 2026-01-01T00:00:00Z, inside the VCEK's validity (2023-04-03 to 2030-04-03).
    const T: u64 = 1_767_225_600;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn sample() -> (Vec<u8>, [u8; 64], SevSnpPolicy) {
        let raw = unhex(REPORT_HEX.trim());
        let parsed = parse_report(&raw).unwrap();
        let policy =
            SevSnpPolicy { measurements: vec![hex(&parsed.measurement)], min_tcb: reported_tcb(&parsed) };
        (raw, parsed.report_data, policy)
    }

    fn err(r: Result<impl std::fmt::Debug, AttestError>) -> (&'static str, String) {
        match r.unwrap_err() {
            AttestError::Check { check, detail } => (check, detail),
            other => panic!("not a check failure: {other}"),
        }
    }

    #[test]
    fn the_real_milan_report_verifies() {
        let (raw, rd, policy) = sample();
        let parsed = parse_report(&raw).unwrap();
        assert_eq!(parsed.version, 2);
        assert_eq!(
            hex(&parsed.measurement),
            "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
        );
        assert_eq!(
            reported_tcb(&parsed),
            SnpTcb { bootloader: 3, tee: 0, snp: 8, microcode: 115, fmc: None }
        );
        let line = verify(&raw, VCEK, &rd, &policy, at(T)).unwrap();
        assert_eq!(
            line,
            "sev-snp: measurement 7a1e5c266c0108db…, TCB 3.0.8.115, firmware 1.52 (Milan, VCEK)"
        );
    }

    #[test]
    fn the_pinned_roots_are_amds() {
        for p in Product::ALL {
            let (ark, ask) = pinned_roots(p).unwrap();
            let ark = parse_der(&ark, "ARK").unwrap();
            let ask = parse_der(&ask, "ASK").unwrap();
            assert!(ark.tbs_certificate.subject.to_string().contains(&format!("ARK-{}", p.name())));
            assert!(ask.tbs_certificate.subject.to_string().contains(&format!("SEV-{}", p.name())));
        }
    }

    #[test]
    fn a_tampered_report_is_refused() {
        let (raw, rd, policy) = sample();
        for offset in [0x90, 0x1A0, 0x2A0] {
            let mut bad = raw.clone();
            bad[offset] ^= 0x01; // the measurement, the chip ID, the signature's r
            let (c, _) = err(verify(&bad, VCEK, &rd, &policy, at(T)));
            assert!(c == "report signature" || c == "certificate chain", "offset {offset:#x}: {c}");
        }
        let mut bad = raw.clone();
        bad[0x90] ^= 0x01;
        assert_eq!(err(verify(&bad, VCEK, &rd, &policy, at(T))).0, "report signature");
        assert_eq!(err(verify(&raw[..0x49F], VCEK, &rd, &policy, at(T))).0, "evidence format");
    }

    #[test]
    fn evidence_for_another_nonce_is_refused() {
        // A replayed report from an earlier session: it verifies, but carries other data.
        let (raw, mut rd, policy) = sample();
        rd[0] ^= 1;
        let (c, d) = err(verify(&raw, VCEK, &rd, &policy, at(T)));
        assert_eq!(c, "nonce binding", "{d}");
    }

    #[test]
    fn a_measurement_outside_the_policy_is_refused() {
        let (raw, rd, mut policy) = sample();
        policy.measurements = vec!["00".repeat(48)];
        assert_eq!(err(verify(&raw, VCEK, &rd, &policy, at(T))).0, "measurement");
        policy.measurements.clear();
        assert_eq!(err(verify(&raw, VCEK, &rd, &policy, at(T))).0, "measurement");
    }

    #[test]
    fn a_tcb_below_the_policy_is_refused() {
        let (raw, rd, mut policy) = sample();
        policy.min_tcb.microcode = 116;
        let (c, d) = err(verify(&raw, VCEK, &rd, &policy, at(T)));
        assert_eq!(c, "tcb");
        assert!(d.contains("microcode 115 < 116"), "{d}");
        let (raw, rd, mut policy) = sample();
        policy.min_tcb.snp = 9;
        assert_eq!(err(verify(&raw, VCEK, &rd, &policy, at(T))).0, "tcb");
        // A minimum FMC SVN refuses a part that reports none (Milan has no FMC).
        let (raw, rd, mut policy) = sample();
        policy.min_tcb.fmc = Some(0);
        let (c, d) = err(verify(&raw, VCEK, &rd, &policy, at(T)));
        assert_eq!(c, "tcb");
        assert!(d.contains("fmc absent < 0"), "{d}");
    }

    #[test]
    fn debug_is_refused() {
        let (raw, rd, policy) = sample();
        let debug = with_debug(&raw, true);
        // Setting the bit breaks AMD's signature ...
        assert_eq!(err(verify(&debug, VCEK, &rd, &policy, at(T))).0, "report signature");
        // ... and the policy check refuses a report that says debug, by itself.
        let parsed = parse_report(&debug).unwrap();
        assert!(parsed.policy.debug_allowed());
        assert_eq!(err(check_policy(&parsed, &policy)).0, "debug");
        let parsed = parse_report(&with_debug(&debug, false)).unwrap();
        check_policy(&parsed, &policy).unwrap();
        // VMPL other than 0, likewise.
        let mut p = parse_report(&raw).unwrap();
        p.vmpl = 1;
        assert_eq!(err(check_policy(&p, &policy)).0, "vmpl");
    }

    /// A self-made CA named like AMD's Milan ASK, and a "VCEK" it signed, with a P-384
    /// key that really signed the report: only the chain can refuse it.
    #[test]
    fn a_vcek_from_a_server_supplied_ca_is_refused() {
        let (raw, rd, policy) = sample();
        let real = parse_der(VCEK, "VCEK").unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        // The same names, in the same order and string types, as AMD's Milan ASK.
        let utf8 = |v: &str| rcgen::DnValue::Utf8String(v.into());
        for (k, v) in [
            (rcgen::DnType::OrganizationalUnitName, utf8("Engineering")),
            (rcgen::DnType::CountryName, rcgen::DnValue::PrintableString("US".try_into().unwrap())),
            (rcgen::DnType::LocalityName, utf8("Santa Clara")),
            (rcgen::DnType::StateOrProvinceName, utf8("CA")),
            (rcgen::DnType::OrganizationName, utf8("Advanced Micro Devices")),
            (rcgen::DnType::CommonName, utf8("SEV-Milan")),
        ] {
            ca.distinguished_name.push(k, v);
        }
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut leaf = rcgen::CertificateParams::default();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, "SEV-VCEK");
        for ext in real.tbs_certificate.extensions.as_ref().unwrap() {
            let oid: Vec<u64> = ext.extn_id.arcs().map(u64::from).collect();
            leaf.custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(&oid, ext.extn_value.as_bytes().to_vec()));
        }
        let fake_vcek = leaf.signed_by(&leaf_key, &ca, &ca_key).unwrap().der().to_vec();
        // The report, re-signed by the fake VCEK's key.
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &leaf_key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let sig = signer.sign(&ring::rand::SystemRandom::new(), &raw[..SIGNED_LEN]).unwrap();
        let mut forged = raw.clone();
        for (slot, part) in [(SIG_R, &sig.as_ref()[..48]), (SIG_S, &sig.as_ref()[48..])] {
            forged[slot..slot + SIG_SLOT].fill(0);
            for (i, b) in part.iter().rev().enumerate() {
                forged[slot + i] = *b;
            }
        }
        let fake = parse_der(&fake_vcek, "fake VCEK").unwrap();
        verify_report_signature(&forged, &parse_report(&forged).unwrap(), &fake).unwrap();
        let (c, d) = err(verify(&forged, &fake_vcek, &rd, &policy, at(T)));
        assert_eq!(c, "certificate chain", "{d}");
        assert!(d.contains("not signed by AMD's Milan ASK"), "{d}");
        // The real VCEK does not vouch for the forged signature either.
        assert_eq!(err(verify(&forged, VCEK, &rd, &policy, at(T))).0, "report signature");
    }

    #[test]
    fn expired_and_malformed_certificates_are_refused() {
        let (raw, rd, policy) = sample();
        // 2031-01-01: after the VCEK's notAfter (2030-04-03).
        let (c, d) = err(verify(&raw, VCEK, &rd, &policy, at(1_924_992_000)));
        assert_eq!(c, "certificate chain");
        assert!(d.contains("VCEK is not valid") && d.contains("expired"), "{d}");
        // 2023-01-01: before its notBefore.
        assert_eq!(err(verify(&raw, VCEK, &rd, &policy, at(1_672_531_200))).0, "certificate chain");
        let (c, d) = err(verify(&raw, &VCEK[..VCEK.len() - 10], &rd, &policy, at(T)));
        assert_eq!(c, "certificate chain");
        assert!(d.contains("malformed"), "{d}");
        assert_eq!(err(verify(&raw, b"not a certificate", &rd, &policy, at(T))).0, "certificate chain");
    }
}

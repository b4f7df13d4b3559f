//! Intel TDX: a TD quote (v4 or v5), verified with Intel's collateral.
//!
//! **Verification (client).** The quote and its collateral (the PCCS's answer as
//! `QuoteCollateralV3` JSON: TCB info, QE identity, CRLs and their issuer chains) come
//! from the server; everything in them is signed back to Intel's SGX root CA, which is
//! built in (`roots/intel-sgx-root-ca.der`, the bytes of `dcap-qvl`'s
//! `TRUSTED_ROOT_CA_DER`, checked against its SHA-256), never a root the server sends. Checks, each failure naming its check:
//!
//! * `collateral`: the TCB info and QE identity are current at `now` (issueDate <= now
//!   <= nextUpdate): stale collateral would hide a TCB recovery Intel has published.
//! * `quote verification`: `dcap-qvl` (Intel's QVL logic in Rust): the PCK chain to the
//!   pinned root, the PCK CRL and root CA CRL in the collateral (revocation, offline),
//!   the QE report and its identity, the attestation key's signature over the quote, the
//!   TCB level matched in the TCB info; debug and service-TD bindings refused.
//! * `tcb status`: the status (`UpToDate`, `SWHardeningNeeded`, ...) in the policy's list.
//! * `nonce binding`: REPORTDATA equals the session's report data.
//! * `debug`: the TD's attributes say debug off (checked again here: TUD bit 0).
//! * `measurement`: MRTD in the policy's list.
//!
//! **Collection (server).** The quote comes from the kernel's configfs-tsm interface
//! (`/sys/kernel/config/tsm/report`, Linux 6.7+ with `tdx_guest`; the host's quote
//! generation service signs it). The collateral cannot be fetched here (no network in
//! this crate): the server is given a file holding the collateral JSON for its platform
//! (`CollectOptions::tdx_collateral`, the `--cc-tdx-collateral FILE` flag), fetched from
//! the provider's PCCS (e.g. `dcap-qvl`'s `get_collateral`) and refreshed before its
//! `nextUpdate`; it is read at every collection, so a refresh needs no restart.

use super::CollectOptions;
use crate::policy::TdxPolicy;
use crate::{check, hex, AttestError, Part, ProviderKind};
use dcap_qvl::quote::{Report, TDReport10};
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::QuoteCollateralV3;
use serde::Deserialize;
use std::path::Path;
use std::time::SystemTime;

const PROVIDER: ProviderKind = ProviderKind::Tdx;

/// SHA-256 of Intel's SGX Root CA (DER), the root of every quote's PCK chain and of the
/// collateral's signing chains.
const INTEL_ROOT_SHA256: &str = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";

/// Verifies a TDX quote and its collateral (JSON) against Intel's pinned root, the
/// session's `report_data` and `policy`, at `now`. Returns one line saying what it
/// attested.
pub fn verify(
    quote: &[u8],
    collateral_json: &str,
    report_data: &[u8; 64],
    policy: &TdxPolicy,
    now: SystemTime,
) -> Result<String, AttestError> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| check("collateral", "the clock is before 1970"))?;
    let collateral = parse_collateral(collateral_json)?;
    check_freshness(&collateral, now)?;
    let root = pinned_root()?;
    let verified = QuoteVerifier::new(root).verify(quote, &collateral, now).map_err(|e| {
        check(
            "quote verification",
            format!("the quote does not verify against Intel's root and the collateral: {e:#}"),
        )
    })?;
    if !policy.allowed_status.contains(&verified.status) {
        return Err(check(
            "tcb status",
            format!(
                "Intel's collateral rates this platform {} (advisories: {}); the policy allows {}",
                verified.status,
                advisories(&verified.advisory_ids),
                policy.allowed_status.join(", ")
            ),
        ));
    }
    let (td, kind) = td_report(&verified.report)?;
    if td.report_data[..] != report_data[..] {
        return Err(check(
            "nonce binding",
            "the quote's REPORTDATA is bound to another nonce, key or model (a replay of an earlier session?)",
        ));
    }
    check_policy(td, policy)?;
    Ok(format!(
        "tdx: MRTD {}…, TCB {} (advisories: {}), {kind}",
        &hex(&td.mr_td)[..16],
        verified.status,
        advisories(&verified.advisory_ids)
    ))
}

fn advisories(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(" ")
    }
}

/// Intel's SGX Root CA as built into this binary (the same bytes as `dcap-qvl`'s
/// `TRUSTED_ROOT_CA_DER`, which the crate does not export), checked against its SHA-256.
const INTEL_ROOT_DER: &[u8] = include_bytes!("../../roots/intel-sgx-root-ca.der");

fn pinned_root() -> Result<Vec<u8>, AttestError> {
    use sha2::{Digest, Sha256};
    if hex(&Sha256::digest(INTEL_ROOT_DER)) != INTEL_ROOT_SHA256 {
        return Err(check(
            "quote verification",
            "the built-in Intel root is not the certificate this binary pins",
        ));
    }
    Ok(INTEL_ROOT_DER.to_vec())
}

/// Parses the collateral JSON.
pub fn parse_collateral(json: &str) -> Result<QuoteCollateralV3, AttestError> {
    serde_json::from_str(json).map_err(|e| {
        check("evidence format", format!("the TDX collateral is not QuoteCollateralV3 JSON ({e})"))
    })
}

#[derive(Deserialize)]
struct Dates {
    #[serde(rename = "issueDate")]
    issue_date: String,
    #[serde(rename = "nextUpdate")]
    next_update: String,
}

/// The TCB info and the QE identity are current at `now`.
fn check_freshness(c: &QuoteCollateralV3, now: u64) -> Result<(), AttestError> {
    for (what, json) in [("TCB info", &c.tcb_info), ("QE identity", &c.qe_identity)] {
        let d: Dates = serde_json::from_str(json).map_err(|e| {
            check("collateral", format!("the collateral's {what} has no issue/next-update dates ({e})"))
        })?;
        let (from, until) = (rfc3339(&d.issue_date)?, rfc3339(&d.next_update)?);
        if now < from || now > until {
            return Err(check(
                "collateral",
                format!(
                    "the collateral's {what} is valid from {} to {}, not at {now} (Unix time): the server must send fresh collateral from its PCCS",
                    d.issue_date, d.next_update
                ),
            ));
        }
    }
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2025-06-19T10:16:03Z`, optional
/// fraction).
fn rfc3339(s: &str) -> Result<u64, AttestError> {
    let bad = || check("collateral", format!("{s:?} is not an RFC 3339 UTC time"));
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let tail = &s[19..];
    let fraction_ok = tail == "Z"
        || (tail.starts_with('.')
            && tail.ends_with('Z')
            && tail.len() > 2
            && tail[1..tail.len() - 1].bytes().all(|c| c.is_ascii_digit()));
    if !fraction_ok {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, AttestError> {
        let t = &s[r];
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse::<i64>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (y, mo, d, h, mi, se) =
        (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3_600 + mi * 60 + se).map_err(|_| bad())
}

/// The TD report of a verified quote (TDX 1.0, 1.5 or 1.5 extended), and its kind.
fn td_report(r: &Report) -> Result<(&TDReport10, &'static str), AttestError> {
    match r {
        Report::TD10(td) => Ok((td, "TD 1.0")),
        Report::TD15(td) => Ok((&td.base, "TD 1.5")),
        Report::TD15Ex(td) => Ok((&td.base.base, "TD 1.5")),
        Report::SgxEnclave(_) => Err(check("evidence format", "an SGX enclave quote, not a TD quote")),
    }
}

/// The policy checks on a TD report: debug off, MRTD allowed.
pub fn check_policy(td: &TDReport10, policy: &TdxPolicy) -> Result<(), AttestError> {
    // TD_ATTRIBUTES byte 0 is the TUD group; bit 0 is DEBUG.
    if td.td_attributes[0] & 0x01 != 0 {
        return Err(check("debug", "the TD runs in debug mode (the host can read and change its state)"));
    }
    let m = hex(&td.mr_td);
    if !policy.mr_td.iter().any(|a| a.eq_ignore_ascii_case(&m)) {
        return Err(check("measurement", format!("MRTD {m} is not in the policy's list")));
    }
    Ok(())
}

/// The kernel's configfs-tsm report interface.
const TSM_REPORT: &str = "/sys/kernel/config/tsm/report";

fn unavailable(detail: impl Into<String>) -> AttestError {
    AttestError::Unavailable { provider: PROVIDER, detail: detail.into() }
}

/// Whether this host is a TD that can produce quotes, and has collateral to send.
pub fn available(options: &CollectOptions) -> Result<(), AttestError> {
    if !Path::new(TSM_REPORT).is_dir() {
        return Err(unavailable(format!(
            "{TSM_REPORT} is absent: this is not a TDX guest, or the kernel lacks configfs-tsm (Linux 6.7+, tdx_guest, configfs mounted)"
        )));
    }
    read_collateral(options).map(|_| ())
}

fn read_collateral(options: &CollectOptions) -> Result<String, AttestError> {
    let path = options.tdx_collateral.as_deref().ok_or_else(|| {
        unavailable(
            "TDX evidence needs Intel's collateral for this platform, fetched from the provider's PCCS: give it with --cc-tdx-collateral FILE (QuoteCollateralV3 JSON, refreshed before its nextUpdate)",
        )
    })?;
    let json = std::fs::read_to_string(path)
        .map_err(|e| unavailable(format!("the TDX collateral {}: {e}", path.display())))?;
    parse_collateral(&json).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    Ok(json)
}

/// A quote bound to `report_data` (configfs-tsm) and the collateral file's contents.
pub fn collect(report_data: &[u8; 64], options: &CollectOptions) -> Result<Part, AttestError> {
    let collateral = read_collateral(options)?;
    let quote = tsm_quote(Path::new(TSM_REPORT), report_data)?;
    Ok(Part::Tdx { quote, collateral })
}

/// One configfs-tsm report: a fresh entry, `inblob` = report data, `outblob` = quote.
fn tsm_quote(root: &Path, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = root.join(format!("shardlm-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let io =
        |what: &str, e: std::io::Error| unavailable(format!("configfs-tsm {what} ({}): {e}", dir.display()));
    std::fs::create_dir(&dir).map_err(|e| io("new report", e))?;
    let result = (|| {
        let provider = std::fs::read_to_string(dir.join("provider")).map_err(|e| io("provider", e))?;
        if provider.trim() != "tdx_guest" {
            return Err(unavailable(format!(
                "configfs-tsm's provider is {:?}, not tdx_guest",
                provider.trim()
            )));
        }
        std::fs::write(dir.join("inblob"), report_data).map_err(|e| io("inblob", e))?;
        let quote = std::fs::read(dir.join("outblob")).map_err(|e| io("outblob", e))?;
        // One write, one generation: another writer in between would make the quote
        // answer other data.
        let generation = std::fs::read_to_string(dir.join("generation")).map_err(|e| io("generation", e))?;
        if generation.trim() != "1" {
            return Err(unavailable("configfs-tsm: the report entry was written concurrently; retry"));
        }
        Ok(quote)
    })();
    let _ = std::fs::remove_dir(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const QUOTE: &[u8] = include_bytes!("../../testdata/tdx/tdx_quote");
    const COLLATERAL: &str = include_str!("../../testdata/tdx/tdx_quote_collateral.json");
    /// 2025-07-01T00:00:00Z, inside the collateral's window (2025-06-19T10:32:27Z to
    /// 2025-07-19T10:00:35Z).
    const T: u64 = 1_751_328_000;
    /// Where the TD report starts in a v4 quote (after the 48-byte header).
    const BODY: usize = 48;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn sample() -> ([u8; 64], TdxPolicy) {
        let q = dcap_qvl::quote::Quote::parse(QUOTE).unwrap();
        let (td, _) = td_report(&q.report).unwrap();
        (td.report_data, TdxPolicy { mr_td: vec![hex(&td.mr_td)], allowed_status: vec!["UpToDate".into()] })
    }

    fn err(r: Result<impl std::fmt::Debug, AttestError>) -> (&'static str, String) {
        match r.unwrap_err() {
            AttestError::Check { check, detail } => (check, detail),
            other => panic!("not a check failure: {other}"),
        }
    }

    #[test]
    fn the_real_quote_verifies_up_to_date() {
        let (rd, policy) = sample();
        assert_eq!(
            policy.mr_td[0],
            "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
        );
        let line = verify(QUOTE, COLLATERAL, &rd, &policy, at(T)).unwrap();
        assert_eq!(line, "tdx: MRTD 91eb2b44d141d4ec…, TCB UpToDate (advisories: none), TD 1.0");
        // The built-in root is the one dcap-qvl ships: its own verifier agrees.
        pinned_root().unwrap();
        let col = parse_collateral(COLLATERAL).unwrap();
        assert_eq!(QuoteVerifier::new_prod().verify(QUOTE, &col, T).unwrap().status, "UpToDate");
    }

    #[test]
    fn a_tampered_quote_is_refused() {
        let (rd, policy) = sample();
        // MRTD, REPORTDATA, the header's QE vendor ID, the attestation key's signature,
        // the attestation key, the QE report, the PCK certificate (base64 from 1258) and
        // the intermediate CA (from 3031). (The PEM's line breaks are not data.)
        for offset in [BODY + 136, BODY + 520, 20, 636, 710, 800, 2001, 3231] {
            let mut bad = QUOTE.to_vec();
            bad[offset] ^= 0x01;
            let (c, d) = err(verify(&bad, COLLATERAL, &rd, &policy, at(T)));
            assert_eq!(c, "quote verification", "offset {offset}: {d}");
        }
        assert_eq!(err(verify(&QUOTE[..1000], COLLATERAL, &rd, &policy, at(T))).0, "quote verification");
    }

    #[test]
    fn evidence_for_another_nonce_is_refused() {
        let (mut rd, policy) = sample();
        rd[63] ^= 1;
        assert_eq!(err(verify(QUOTE, COLLATERAL, &rd, &policy, at(T))).0, "nonce binding");
    }

    #[test]
    fn an_mrtd_outside_the_policy_is_refused() {
        let (rd, mut policy) = sample();
        policy.mr_td = vec!["00".repeat(48)];
        assert_eq!(err(verify(QUOTE, COLLATERAL, &rd, &policy, at(T))).0, "measurement");
        policy.mr_td.clear();
        assert_eq!(err(verify(QUOTE, COLLATERAL, &rd, &policy, at(T))).0, "measurement");
    }

    #[test]
    fn a_status_outside_the_policy_is_refused() {
        let (rd, mut policy) = sample();
        policy.allowed_status = vec!["SWHardeningNeeded".into()];
        let (c, d) = err(verify(QUOTE, COLLATERAL, &rd, &policy, at(T)));
        assert_eq!(c, "tcb status");
        assert!(d.contains("UpToDate"), "{d}");
        policy.allowed_status.clear();
        assert_eq!(err(verify(QUOTE, COLLATERAL, &rd, &policy, at(T))).0, "tcb status");
    }

    #[test]
    fn collateral_outside_its_window_is_refused() {
        let (rd, policy) = sample();
        // 2025-08-01: after every nextUpdate; 2025-06-01: before the issue dates.
        for t in [1_754_006_400, 1_748_736_000, 1_795_000_000] {
            let (c, d) = err(verify(QUOTE, COLLATERAL, &rd, &policy, at(t)));
            assert_eq!(c, "collateral", "{d}");
        }
        // 2025-07-19T10:05:00Z: the TCB info and QE identity are current but the PCK
        // CRL (next update 10:00:35Z) is not; dcap-qvl refuses.
        assert_eq!(err(verify(QUOTE, COLLATERAL, &rd, &policy, at(1_752_919_500))).0, "quote verification");
        assert_eq!(err(verify(QUOTE, "{}", &rd, &policy, at(T))).0, "evidence format");
    }

    #[test]
    fn a_debug_td_is_refused() {
        let (_, policy) = sample();
        let q = dcap_qvl::quote::Quote::parse(QUOTE).unwrap();
        let (td, _) = td_report(&q.report).unwrap();
        check_policy(td, &policy).unwrap();
        let mut debug = *td;
        debug.td_attributes[0] |= 0x01;
        assert_eq!(err(check_policy(&debug, &policy)).0, "debug");
        // The same bit in the quote itself breaks Intel's signature.
        let (rd, _) = sample();
        let mut bad = QUOTE.to_vec();
        bad[BODY + 120] |= 0x01;
        assert_eq!(err(verify(&bad, COLLATERAL, &rd, &policy, at(T))).0, "quote verification");
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(rfc3339("2025-07-01T00:00:00Z").unwrap(), T);
        assert_eq!(rfc3339("2025-07-19T10:00:35.123Z").unwrap(), 1_752_919_235);
        assert_eq!(rfc3339("2000-02-29T12:00:00Z").unwrap(), 951_825_600);
        for bad in
            ["", "2025-07-01", "2025-07-01T00:00:00", "2025-13-01T00:00:00Z", "2025-07-01T00:00:00+02:00"]
        {
            assert!(rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn collection_says_what_is_missing() {
        let e = available(&CollectOptions::default()).unwrap_err().to_string();
        assert!(e.contains("tsm") || e.contains("--cc-tdx-collateral"), "{e}");
        let e = read_collateral(&CollectOptions::default()).unwrap_err().to_string();
        assert!(e.contains("--cc-tdx-collateral"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collateral.json");
        std::fs::write(&path, COLLATERAL).unwrap();
        let options = CollectOptions { tdx_collateral: Some(path.clone()), ..CollectOptions::default() };
        assert_eq!(read_collateral(&options).unwrap(), COLLATERAL);
        std::fs::write(&path, "{}").unwrap();
        assert!(read_collateral(&options).unwrap_err().to_string().contains("QuoteCollateralV3"));
        // No configfs-tsm entry can be made under a plain directory's missing subtree.
        let e = tsm_quote(&dir.path().join("absent"), &[0; 64]).unwrap_err().to_string();
        assert!(e.contains("configfs-tsm new report"), "{e}");
    }
}

//! A party's TLS identity: a self-signed certificate and its private key, and the
//! fingerprint the other party pins.
//!
//! There is no certificate authority. Each party runs `keygen` once, which writes
//! `cert.pem` and `key.pem` (mode 0600 on unix) and prints the fingerprint; the
//! operators exchange fingerprints out of band, and each side accepts exactly the
//! fingerprints it was given (see [`crate::quic`]).
//!
//! **Fingerprint** = blake3 of the certificate's DER bytes, printed `blake3:` followed by
//! 64 lowercase hex digits. [`normalize_fingerprint`] also accepts the bare hex and
//! upper case, so a pasted value works either way.

use crate::{Result, TransportError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fmt;
use std::io::Write;
use std::path::Path;

/// File name of the certificate in an identity directory.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the private key in an identity directory.
pub const KEY_FILE: &str = "key.pem";
const FINGERPRINT_PREFIX: &str = "blake3:";

/// A certificate and its private key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh self-signed certificate (ECDSA P-256) for `common_name`.
    pub fn generate(common_name: &str) -> Result<Identity> {
        let ck = rcgen::generate_simple_self_signed(vec![common_name.to_string()]).map_err(|e| {
            TransportError::Setup(format!("cannot generate a certificate for {common_name:?}: {e}"))
        })?;
        Ok(Identity {
            cert: ck.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der())),
        })
    }

    /// Writes `cert.pem` and `key.pem` into `dir` (created if missing). Refuses to
    /// overwrite an existing identity. The key file is created with mode 0600 on unix.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| {
            TransportError::Setup(format!("cannot create identity directory {}: {e}", dir.display()))
        })?;
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(TransportError::Setup(format!(
                    "{} already exists; refusing to overwrite an identity (delete it or choose another --out)",
                    p.display()
                )));
            }
        }
        let key_pem = pem_encode("PRIVATE KEY", self.key.secret_der());
        write_new(&key_path, key_pem.as_bytes(), 0o600)?;
        let cert_pem = pem_encode("CERTIFICATE", self.cert.as_ref());
        write_new(&cert_path, cert_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Loads the identity in `dir`.
    pub fn load(dir: &Path) -> Result<Identity> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if !cert_path.exists() && !key_path.exists() {
            return Err(TransportError::Setup(format!(
                "no identity in {}: run `shardlm-server keygen --out {}` (or `shardlm-client keygen`)",
                dir.display(),
                dir.display()
            )));
        }
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| {
            TransportError::Setup(format!("cannot read certificate {}: {e}", cert_path.display()))
        })?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
            TransportError::Setup(format!("cannot read private key {}: {e}", key_path.display()))
        })?;
        Ok(Identity { cert, key })
    }

    /// The certificate's fingerprint, `blake3:<64 hex>`.
    pub fn fingerprint(&self) -> String {
        cert_fingerprint(&self.cert)
    }

    /// The certificate (DER).
    pub(crate) fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key (DER).
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// Generates an identity for `name`, writes it into `out_dir`, and returns its
/// fingerprint: the whole of a `keygen` subcommand.
pub fn keygen(out_dir: &Path, name: &str) -> Result<String> {
    let id = Identity::generate(name)?;
    id.write(out_dir)?;
    Ok(id.fingerprint())
}

/// The fingerprint of a DER certificate, `blake3:<64 hex>`.
pub fn cert_fingerprint(cert_der: &[u8]) -> String {
    format!("{FINGERPRINT_PREFIX}{}", blake3::hash(cert_der).to_hex())
}

/// Parses a fingerprint as a user may type it (`blake3:` optional, any case) into the
/// canonical `blake3:<64 lowercase hex>`.
pub fn normalize_fingerprint(text: &str) -> Result<String> {
    let t = text.trim();
    let hex = t
        .strip_prefix(FINGERPRINT_PREFIX)
        .or_else(|| t.strip_prefix("BLAKE3:"))
        .unwrap_or(t)
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TransportError::Setup(format!(
            "{text:?} is not a certificate fingerprint: expected `blake3:` and 64 hex digits, as printed by `keygen`"
        )));
    }
    Ok(format!("{FINGERPRINT_PREFIX}{hex}"))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(path)
        .map_err(|e| TransportError::Setup(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| TransportError::Setup(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_load_round_trip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let fp = keygen(dir.path(), "shardlm-test").unwrap();
        assert!(fp.starts_with("blake3:") && fp.len() == 7 + 64, "{fp}");
        let id = Identity::load(dir.path()).unwrap();
        assert_eq!(id.fingerprint(), fp);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = keygen(dir.path(), "again").unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
    }

    #[test]
    fn missing_identity_says_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = Identity::load(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(err.contains("no identity in") && err.contains("keygen --out"), "{err}");
    }

    #[test]
    fn fingerprints_normalize() {
        let id = Identity::generate("x").unwrap();
        let fp = id.fingerprint();
        let bare = fp.trim_start_matches("blake3:").to_ascii_uppercase();
        assert_eq!(normalize_fingerprint(&bare).unwrap(), fp);
        assert_eq!(normalize_fingerprint(&format!(" {fp}\n")).unwrap(), fp);
        assert!(normalize_fingerprint("sha256:abc").is_err());
        assert_ne!(Identity::generate("x").unwrap().fingerprint(), fp);
    }
}

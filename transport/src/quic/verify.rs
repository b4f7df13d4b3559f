//! Certificate pinning for mutual TLS: each side accepts exactly the peer fingerprints
//! it was given (no CA, no names, no validity dates; the certificates are self-signed
//! and long-lived). The TLS 1.3 handshake signature is still verified with the crypto
//! provider's algorithms, so the peer must hold the pinned certificate's private key.
//!
//! Each verifier records the fingerprint it saw, so a failed connection can tell the
//! operator what was expected and what arrived.

use crate::identity::cert_fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::{Arc, Mutex};

/// Pins peer certificates by fingerprint, for either role.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    allowed: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
    seen: Arc<Mutex<Option<String>>>,
}

impl PinnedVerifier {
    /// Accepts certificates whose fingerprint is in `allowed` (canonical form).
    pub(crate) fn new(allowed: Vec<String>, algorithms: WebPkiSupportedAlgorithms) -> Self {
        PinnedVerifier { allowed, algorithms, seen: Arc::new(Mutex::new(None)) }
    }

    /// Where the fingerprint of the presented certificate is recorded.
    pub(crate) fn seen(&self) -> Arc<Mutex<Option<String>>> {
        self.seen.clone()
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        let fp = cert_fingerprint(end_entity);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fp.clone());
        }
        if self.allowed.contains(&fp) {
            Ok(())
        } else {
            Err(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PinnedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

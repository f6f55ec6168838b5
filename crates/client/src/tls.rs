//! The rustls client configuration for FTPS (RFC 4217).
//!
//! One [`ClientConfig`] is built per run and shared by the control connection and every data
//! connection, so its in-memory session store lets rustls resume the control connection's TLS
//! session on each data connection (servers such as vsftpd require that). Certificates are
//! trusted from `--cacert FILE` (PEM), or not checked at all with `--insecure`; there is no
//! system trust store here. This module opens no sockets.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// How to check the server's certificate.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM file with the certificates to trust.
    pub cacert: Option<PathBuf>,
    /// Accept any certificate (testing only: anyone on the path can read the session).
    pub insecure: bool,
}

/// Builds the shared client configuration.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let (roots, pinned) = roots(opts)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("TLS setup: {e}"))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedOrChain { pinned, chain: verifier }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// A failed handshake in words a user can act on (`host`: the name the certificate must give).
pub fn explain(err: &std::io::Error, host: &str) -> String {
    use rustls::{CertificateError as C, Error as E};
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return err.to_string();
    };
    let trust = "give --cacert FILE (the CA's certificate, or the server's own), or --insecure \
                 to skip the check";
    match tls {
        E::InvalidCertificate(C::UnknownIssuer) => {
            format!("the server's certificate is not signed by a CA this client trusts; {trust}")
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("the server's certificate does not name {host}")
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet (is this machine's clock right?)".into()
        }
        E::InvalidCertificate(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            format!("the server presents a CA certificate as its own; {trust}")
        }
        E::InvalidCertificate(other) => format!("the server's certificate is refused ({other:?})"),
        E::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => "the server did not \
            answer in TLS: a plain FTP port? (ftps:// is implicit TLS; ftp:// with --tls is \
            AUTH TLS)"
            .into(),
        E::AlertReceived(alert) => format!("the server refused the TLS handshake ({alert:?})"),
        other => format!("TLS: {other}"),
    }
}

/// The server name rustls checks the certificate against and keys resumed sessions by.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("bad TLS server name {host:?}: {e}"))
}

/// The trust anchors, and the certificates of `--cacert` themselves (a server may present one
/// of them as its own: the usual self-signed certificate, which OpenSSL marks CA:TRUE).
fn roots(opts: &TlsOptions) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), String> {
    let Some(path) = opts.cacert.as_ref() else {
        return Ok((system_roots()?, Vec::new()));
    };
    let mut store = RootCertStore::empty();
    let mut pinned = Vec::new();
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        store.add(cert.clone()).map_err(|e| format!("{}: {e}", path.display()))?;
        pinned.push(cert);
    }
    if store.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok((store, pinned))
}

/// Trusts a server that presents exactly one of the `--cacert` certificates (the operator
/// named that certificate: curl and lftp accept it too), and otherwise verifies the chain to
/// the trust anchors as rustls does. A pinned certificate is trusted as itself: whoever
/// presents it must hold its key, which the handshake signature proves.
#[derive(Debug)]
struct PinnedOrChain {
    pinned: Vec<CertificateDer<'static>>,
    chain: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedOrChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return Ok(ServerCertVerified::assertion());
        }
        self.chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The system's CA store.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
        return Err(format!(
            "no system CA certificates found{why}; give --cacert FILE, or --insecure to skip verification"
        ));
    }
    Ok(store)
}

/// A verifier that accepts any certificate but still checks handshake signatures.
struct AcceptAnyCert(Arc<CryptoProvider>);

impl fmt::Debug for AcceptAnyCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AcceptAnyCert")
    }
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

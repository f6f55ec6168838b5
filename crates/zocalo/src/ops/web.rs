//! The HTTP client settings every outgoing call shares (the HTTP account source, webhooks):
//! `ureq` with rustls, no redirects, one timeout for the whole call, and the system's CA
//! store or the certificates of a PEM file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// An agent that trusts `ca_file`'s certificates (or the system's), answering every status
/// as a response (the caller decides what a 4xx or 5xx means).
pub fn agent(ca_file: Option<&Path>, timeout: Duration) -> Result<ureq::Agent, String> {
    let roots = match ca_file {
        None => ureq::tls::RootCerts::PlatformVerifier,
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>();
            if certs.is_empty() {
                return Err(format!("{}: no certificate in it", path.display()));
            }
            ureq::tls::RootCerts::Specific(Arc::new(certs))
        }
    };
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into())
}

//! `kind = "ldap"`: accounts from a directory (OpenLDAP, Active Directory), the standard way:
//! bind as the service account, search for the user with the configured filter (the name
//! escaped as RFC 4515 says, so `*)(uid=*` is a name and not a filter), then bind as the DN
//! found with the user's password. An empty password is refused before any bind (a simple bind
//! with an empty password is an unauthenticated bind, which servers accept). Each URL is tried
//! in turn while the directory cannot be reached. `ldap://` URLs upgrade with StartTLS unless
//! `starttls = false`; TLS is verified against the system's CA store or `ca-file`.
//!
//! The `ldap3` crate runs a Tokio runtime inside its blocking `LdapConn`; a lookup is login
//! work, so that runtime only ever runs on a thread that may block (ARCHITECTURE.md).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConn, LdapConnSettings, Scope, SearchEntry};
use serde::{Deserialize, Serialize};
use zocalo_proto::Login;

use crate::state::policy::{Policy, FIELDS};
use crate::state::source::{Lookup, Source};

/// `kind = "ldap"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://HOST:PORT` or `ldaps://HOST:PORT`, tried in order while one cannot be reached.
    pub urls: Vec<String>,
    /// Where users are searched (the whole subtree).
    pub base: String,
    /// The search filter, with `{user}` where the (escaped) user name goes.
    #[serde(default = "default_filter")]
    pub filter: String,
    /// The service account that searches; none: an anonymous search.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// A file holding the service account's password (never a flag, never logged).
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// Upgrade `ldap://` connections with StartTLS.
    #[serde(default = "yes")]
    pub starttls: bool,
    /// PEM file of the certificates to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds each connection and operation may take.
    #[serde(default = "super::source::default_timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "super::source::default_cache")]
    pub cache_seconds: u64,
    /// Which attribute holds each policy field: `home = "homeDirectory"`, ...
    #[serde(default)]
    pub attributes: HashMap<String, String>,
}

fn default_filter() -> String {
    "(uid={user})".into()
}

fn yes() -> bool {
    true
}

/// The directory source.
pub struct Ldap {
    name: String,
    /// Each connection's and each operation's bound.
    timeout: Duration,
    config: LdapConfig,
    bind_password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Ldap {
    pub fn new(config: &LdapConfig) -> Result<Self, String> {
        if config.urls.is_empty() {
            return Err("an ldap source needs at least one URL in urls".into());
        }
        if !config.filter.contains("{user}") {
            return Err(format!("the ldap filter {:?} has no {{user}}", config.filter));
        }
        for field in config.attributes.keys() {
            if !FIELDS.contains(&field.as_str()) {
                return Err(format!(
                    "attributes: unknown field {field:?} (known: {})",
                    FIELDS.join(", ")
                ));
            }
        }
        let bind_password = match (&config.bind_dn, &config.bind_password_file) {
            (Some(_), None) => {
                // An empty password would be an unauthenticated bind that many directories
                // accept as anonymous (RFC 4513 5.1.2): say so at start instead.
                return Err("bind-dn needs bind-password-file (an empty password is never sent)"
                    .to_string());
            }
            (None, Some(_)) => return Err("bind-password-file needs bind-dn".to_string()),
            (_, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            (None, None) => None,
        };
        let tls = match &config.ca_file {
            Some(path) => Some(client_config(path)?),
            None => None,
        };
        let name = format!("ldap {}", config.urls.join(","));
        let timeout = Duration::from_secs(config.timeout_seconds.max(1));
        Ok(Ldap { name, timeout, config: config.clone(), bind_password, tls })
    }

    fn settings(&self) -> LdapConnSettings {
        let settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.config.starttls);
        match &self.tls {
            Some(tls) => settings.set_config(tls.clone()),
            None => settings,
        }
    }

    /// Connects to the first URL that answers, bound as the service account.
    fn connect(&self) -> Result<LdapConn, String> {
        let mut last = String::from("no URL");
        for url in &self.config.urls {
            let conn = LdapConn::with_settings(self.settings(), url);
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            let bound = match (&self.config.bind_dn, &self.bind_password) {
                (Some(dn), Some(pw)) => conn.with_timeout(self.timeout).simple_bind(dn, pw),
                _ => return Ok(conn),
            };
            match bound.and_then(|r| r.success()) {
                Ok(_) => return Ok(conn),
                Err(e) => return Err(format!("{url}: the service bind failed: {e}")),
            }
        }
        Err(last)
    }
}

impl Source for Ldap {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, login: &Login<'_>) -> Lookup {
        let mut conn = match self.connect() {
            Ok(c) => c,
            Err(e) => return Lookup::Down(e),
        };
        let filter = self.config.filter.replace("{user}", &ldap3::ldap_escape(login.user));
        let attrs: Vec<&str> = self.config.attributes.values().map(String::as_str).collect();
        let found = conn
            .with_timeout(self.timeout)
            .search(&self.config.base, Scope::Subtree, &filter, attrs)
            .and_then(|r| r.success());
        let entries = match found {
            Ok((entries, _)) => entries,
            Err(e) => return Lookup::Down(format!("the search failed: {e}")),
        };
        let entry = match entries.len() {
            0 => return Lookup::Unknown,
            1 => SearchEntry::construct(entries.into_iter().next().expect("one entry")),
            n => {
                return Lookup::Down(format!(
                    "{n} entries match {filter:?}; the filter must find one"
                ))
            }
        };
        // Never an empty password: that simple bind is anonymous, and servers accept it.
        if login.password.is_empty() {
            let _ = conn.unbind();
            return Lookup::Refused;
        }
        let bound = conn.with_timeout(self.timeout).simple_bind(&entry.dn, login.password);
        let _ = conn.unbind();
        match bound {
            Ok(r) if r.rc == 0 => {}
            // invalidCredentials: the wrong password.
            Ok(r) if r.rc == 49 => return Lookup::Refused,
            Ok(r) => return Lookup::Down(format!("the user's bind answered {}", r.rc)),
            Err(e) => return Lookup::Down(format!("the user's bind failed: {e}")),
        }
        let mut policy = Policy::default();
        for (field, attribute) in &self.config.attributes {
            let values = entry.attrs.get(attribute).or_else(|| {
                // Attribute names are case-insensitive.
                entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(attribute)).map(|(_, v)| v)
            });
            let Some(value) = values.and_then(|v| v.first()) else {
                continue;
            };
            // LDAP writes booleans as TRUE and FALSE.
            let value = match field.as_str() {
                "tls_required" | "disabled" => value.to_ascii_lowercase(),
                _ => value.clone(),
            };
            if let Err(e) = policy.set(field, &value) {
                return Lookup::Down(format!("attribute {attribute} ({field}): {e}"));
            }
        }
        Lookup::Found(policy)
    }
}

/// A rustls client configuration trusting the certificates of `path`.
fn client_config(path: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

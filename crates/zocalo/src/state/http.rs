//! `kind = "http"`: an external account hook (SFTPGo's `external_auth_hook`, Pure-FTPd's
//! `pure-authd`): each login is POSTed as JSON; see [`crate::state::sources`] for the answer.

use std::collections::HashMap;
use std::path::PathBuf;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use zocalo_proto::Login;

use crate::state::policy::Policy;
use crate::state::source::{Lookup, Source};

/// `kind = "http"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpConfig {
    /// Where each login is POSTed (https:// is verified against the system's CA store or
    /// `ca-file`).
    pub url: String,
    /// PEM file of the certificates to trust for `url`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds the hook has to answer.
    #[serde(default = "super::source::default_timeout")]
    pub timeout_seconds: u64,
    /// Seconds a positive answer is kept.
    #[serde(default = "super::source::default_cache")]
    pub cache_seconds: u64,
}

/// The HTTP hook.
pub struct Http {
    name: String,
    url: String,
    agent: ureq::Agent,
}

impl Http {
    pub fn new(config: &HttpConfig) -> Result<Self, String> {
        let timeout = Duration::from_secs(config.timeout_seconds.max(1));
        let agent = crate::ops::web::agent(config.ca_file.as_deref(), timeout)?;
        let name = format!("http {}", config.url);
        Ok(Http { name, url: config.url.clone(), agent })
    }
}

/// The hook's answer.
#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default = "yes")]
    known: bool,
    #[serde(flatten)]
    fields: HashMap<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

impl Source for Http {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, login: &Login<'_>) -> Lookup {
        let request = serde_json::json!({
            "user": login.user,
            "password": login.password,
            "client": login.client.ip().to_string(),
            "local": login.local.ip().to_string(),
            "tls": login.tls,
        });
        let sent = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(request.to_string());
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return Lookup::Down(e.to_string()),
        };
        let status = response.status();
        if !status.is_success() {
            return Lookup::Down(format!("answered {status}"));
        }
        let body = match response.body_mut().with_config().limit(64 * 1024).read_to_string() {
            Ok(b) => b,
            Err(e) => return Lookup::Down(format!("reading the answer: {e}")),
        };
        let answer: Answer = match serde_json::from_str(&body) {
            Ok(a) => a,
            Err(e) => return Lookup::Down(format!("a malformed answer: {e}")),
        };
        match (answer.ok, answer.known) {
            (false, false) => Lookup::Unknown,
            (false, true) => Lookup::Refused,
            (true, _) => match policy_of(&answer.fields) {
                Ok(policy) => Lookup::Found(policy),
                Err(e) => Lookup::Down(format!("a malformed answer: {e}")),
            },
        }
    }
}

/// The policy fields of a JSON answer; strings, numbers and booleans are all read as text.
fn policy_of(fields: &HashMap<String, serde_json::Value>) -> Result<Policy, String> {
    let mut policy = Policy::default();
    for (key, value) in fields {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => continue,
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => value.to_string(),
            _ => return Err(format!("{key} is not a string, number or boolean")),
        };
        policy.set(key, &text)?;
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_policies() {
        let fields: HashMap<String, serde_json::Value> = serde_json::from_str(
            r#"{"home": "bob", "perm": "w", "rate_down": 1024, "tls_required": true}"#,
        )
        .unwrap();
        let p = policy_of(&fields).unwrap();
        assert_eq!(p.home.as_deref(), Some("bob"));
        assert_eq!(p.rate_down, Some(1024));
        assert!(p.tls_required);
        let bad: HashMap<String, serde_json::Value> =
            serde_json::from_str(r#"{"perm": ["rw"]}"#).unwrap();
        assert!(policy_of(&bad).is_err());
    }
}

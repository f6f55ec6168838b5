//! An account's policy: the same fields, under the same names, from every account source (a
//! users-file line's `key=value` pairs, an HTTP hook's JSON answer, and the directory and
//! database sources): `home`, `perm`, `rate_up`, `rate_down`, `max_sessions`, `quota_bytes`,
//! `quota_files`, `allow`, `deny`, `tls_required`, `disabled`. Every source hands its values over as text to [`Policy::set`],
//! so a value means the same wherever it comes from.
//!
//! `max_sessions` counts the sessions of this node ([`crate::state::seats`]); `quota_bytes` and
//! `quota_files` are held by [`crate::state::quota`].

use std::fmt::Write as _;
use std::str::FromStr;

use zocalo_proto::{Denial, Login};

use crate::sys::net::Cidr;

/// What an account may do with files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
    /// Upload only (a drop box): no listing, no download.
    Write,
}

impl Perm {
    pub fn readable(self) -> bool {
        self != Perm::Write
    }

    pub fn writable(self) -> bool {
        self != Perm::Read
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Read => "r",
            Perm::ReadWrite => "rw",
            Perm::Write => "w",
        }
    }
}

impl FromStr for Perm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "r" => Ok(Perm::Read),
            "rw" => Ok(Perm::ReadWrite),
            "w" => Ok(Perm::Write),
            _ => Err(format!("perm is r, rw or w, not {s:?}")),
        }
    }
}

/// The fields of a policy, as every source names them.
pub const FIELDS: [&str; 11] = [
    "home",
    "perm",
    "rate_up",
    "rate_down",
    "max_sessions",
    "quota_bytes",
    "quota_files",
    "allow",
    "deny",
    "tls_required",
    "disabled",
];

/// One account's policy. `None` and empty: the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The home directory (relative to `--root`, or a prefix of the bucket).
    pub home: Option<String>,
    pub perm: Option<Perm>,
    /// Bytes per second for uploads and downloads.
    pub rate_up: Option<u64>,
    pub rate_down: Option<u64>,
    /// Sessions at once (on this node).
    pub max_sessions: Option<u32>,
    /// Bytes and files the account may hold.
    pub quota: crate::state::quota::Quota,
    /// Client addresses allowed (none: all) and denied; deny is looked at first.
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// The control connection must be TLS.
    pub tls_required: bool,
    pub disabled: bool,
}

impl Policy {
    /// Sets `key` from its text (a size may take a unit: `rate_down = 10M`; address lists are
    /// comma-separated CIDRs; flags are true or false).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let value = value.trim();
        let cidrs = |v: &str| -> Result<Vec<Cidr>, String> {
            v.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::parse).collect()
        };
        let flag = |v: &str| match v {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            _ => Err(format!("{key} is true or false, not {v:?}")),
        };
        let rate = |v: &str| parse_size(v).map(|n| Some(n).filter(|n| *n > 0));
        match key {
            "home" => self.home = Some(value.to_string()).filter(|h| !h.is_empty()),
            "perm" => self.perm = Some(value.parse()?),
            "rate_up" => self.rate_up = rate(value)?,
            "rate_down" => self.rate_down = rate(value)?,
            "quota_bytes" => self.quota.bytes = rate(value)?,
            "quota_files" => {
                let n = value.parse().map_err(|_| format!("quota_files is a count, not {value:?}"));
                self.quota.files = Some(n?).filter(|_| !value.is_empty());
            }
            "max_sessions" => {
                let n =
                    value.parse().map_err(|_| format!("max_sessions is a count, not {value:?}"));
                self.max_sessions = Some(n?).filter(|_| !value.is_empty());
            }
            "allow" => self.allow = cidrs(value)?,
            "deny" => self.deny = cidrs(value)?,
            "tls_required" => self.tls_required = flag(value)?,
            "disabled" => self.disabled = flag(value)?,
            k => return Err(format!("unknown field {k:?} (known: {})", FIELDS.join(", "))),
        }
        Ok(())
    }

    /// Whether this login may go ahead (the credentials were right): disabled first, then
    /// the denied addresses, the allowed ones, and TLS.
    pub fn check(&self, login: &Login<'_>) -> Result<(), Denial> {
        let ip = login.client.ip();
        if self.disabled {
            return Err(Denial::Disabled);
        }
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Err(Denial::AddressNotAllowed);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)) {
            return Err(Denial::AddressNotAllowed);
        }
        if self.tls_required && !login.tls {
            return Err(Denial::TlsRequired);
        }
        Ok(())
    }

    /// The fields beyond home and perm, as `key=value` pairs separated by spaces (a users
    /// file's last field); empty when all are defaults.
    pub fn extra_pairs(&self) -> String {
        let mut out = String::new();
        let mut pair = |k: &str, v: String| {
            let _ = write!(out, "{}{k}={v}", if out.is_empty() { "" } else { " " });
        };
        let list = |cidrs: &[Cidr]| cidrs.iter().map(Cidr::to_string).collect::<Vec<_>>().join(",");
        if let Some(r) = self.rate_up {
            pair("rate_up", r.to_string());
        }
        if let Some(r) = self.rate_down {
            pair("rate_down", r.to_string());
        }
        if let Some(n) = self.max_sessions {
            pair("max_sessions", n.to_string());
        }
        if let Some(n) = self.quota.bytes {
            pair("quota_bytes", n.to_string());
        }
        if let Some(n) = self.quota.files {
            pair("quota_files", n.to_string());
        }
        if !self.allow.is_empty() {
            pair("allow", list(&self.allow));
        }
        if !self.deny.is_empty() {
            pair("deny", list(&self.deny));
        }
        if self.tls_required {
            pair("tls_required", "true".into());
        }
        if self.disabled {
            pair("disabled", "true".into());
        }
        out
    }
}

/// A size with an optional unit: a plain number of bytes, `K`, `M`, `G`, `T` or `KiB`, `MiB`,
/// `GiB`, `TiB` for powers of 1024 (as curl and rclone read `10M`), `kB`, `MB`, `GB`, `TB` for
/// powers of 1000, `B` for bytes; a decimal number is allowed (`1.5G`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a size"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "T" | "t" | "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!("unknown unit {other:?} in {text:?} (use K, M, G, KiB, MB, ...)"))
        }
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(client: &str, tls: bool) -> Login<'static> {
        let client = client.parse().unwrap();
        Login {
            user: "bob",
            password: "pw",
            client,
            local: "127.0.0.1:21".parse().unwrap(),
            tls,
            session: 0,
        }
    }

    #[test]
    fn fields_parse_and_are_checked_in_order() {
        let mut p = Policy::default();
        p.set("allow", "10.0.0.0/8, 127.0.0.1").unwrap();
        p.set("deny", "10.9.0.0/16").unwrap();
        p.set("rate_down", "1M").unwrap();
        p.set("perm", "w").unwrap();
        assert_eq!(p.rate_down, Some(1 << 20));
        assert!(p.check(&login("127.0.0.1:5", false)).is_ok());
        assert!(p.check(&login("10.1.2.3:5", false)).is_ok());
        assert_eq!(p.check(&login("10.9.2.3:5", false)), Err(Denial::AddressNotAllowed));
        assert_eq!(p.check(&login("192.0.2.1:5", false)), Err(Denial::AddressNotAllowed));
        p.set("tls_required", "true").unwrap();
        assert_eq!(p.check(&login("127.0.0.1:5", false)), Err(Denial::TlsRequired));
        assert!(p.check(&login("127.0.0.1:5", true)).is_ok());
        p.set("disabled", "yes").unwrap();
        assert_eq!(p.check(&login("127.0.0.1:5", true)), Err(Denial::Disabled));
        assert!(!Perm::Write.readable() && Perm::Write.writable());
    }

    #[test]
    fn unknown_and_unenforced_fields_are_refused() {
        let mut p = Policy::default();
        assert!(p.set("colour", "red").unwrap_err().contains("known:"));
        p.set("quota_bytes", "1G").unwrap();
        assert_eq!(p.quota.bytes, Some(1 << 30));
        assert!(p.set("max_sessions", "two").is_err());
        p.set("max_sessions", "2").unwrap();
        assert_eq!(p.max_sessions, Some(2));
        assert!(p.set("perm", "x").is_err());
        assert!(p.set("allow", "nonsense").is_err());
    }

    #[test]
    fn extra_pairs_read_back() {
        let mut p = Policy::default();
        p.set("rate_up", "2048").unwrap();
        p.set("deny", "192.0.2.0/24").unwrap();
        p.set("disabled", "true").unwrap();
        let mut q = Policy::default();
        for pair in p.extra_pairs().split(' ') {
            let (k, v) = pair.split_once('=').unwrap();
            q.set(k, v).unwrap();
        }
        assert_eq!(p, q);
    }
}

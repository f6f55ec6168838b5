//! zocalo's FTP/FTPS client and benchmark engine.
//!
//! - [`url`]: `ftp://` and `ftps://` URLs (credentials, IPv6 literals, percent-decoding).
//! - [`reply`]: the RFC 959 reply parser (multi-line replies), shared by both clients below.
//! - [`listing`]: LIST (Unix and DOS styles) and MLSD line parsing.
//! - [`tls`]: the rustls client configuration (system-less: `--cacert` or `--insecure`).
//! - [`ftp`]: a blocking client over one control connection: login, passive or active data
//!   connections, transfers with restart, listings, explicit and implicit FTPS.
//! - [`ops`]: what `zocalo get/put/ls/mirror` do, with progress bars and exit codes.
//! - [`bench`]: `zocalo bench`: scenarios, an event-driven load generator, tables, JSON and SVG.
//!
//! What this crate does *not* do: parse command-line flags (the `zocalo` binary does), serve
//! anything, or spawn threads for load (the load generator is one thread over a poller).

pub mod bench;
pub mod credentials;
pub mod ftp;
pub mod listing;
pub mod ops;
pub mod reply;
pub mod tls;
pub mod url;

pub use ftp::{Client, ClientOptions, DataMode, FtpError};
pub use ops::{
    exit_code, get, ls, mirror, mirror_up, put, MirrorSummary, OpError, OpOptions, Progress,
};

pub use url::{FtpUrl, Scheme};

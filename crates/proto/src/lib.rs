//! The FTP protocol core of zocalo.
//!
//! This crate contains no networking code, spawns no threads and reads no clock of its own: it
//! turns command lines and events into replies and actions (see [`session`] for the polling
//! order). Everything that touches a socket lives in the drivers of the `zocalo` crate; files
//! are reached only through the [`storage::Storage`] and [`auth::Authenticator`] providers.
//!
//! - [`line`]: control bytes to command lines, with a hard memory cap;
//! - [`command`]: one line to a typed [`command::Command`];
//! - [`session`]: the state machine;
//! - [`path`], [`listing`], [`ascii`]: virtual paths, listing formats, TYPE A conversion;
//! - [`reply`]: every reply's bytes, for the session and the drivers' refusals;
//! - [`proxy`]: the PROXY protocol header a load balancer sends first;
//! - [`storage`], [`auth`]: the provider traits; [`memory`]: an in-memory storage for tests.

pub mod ascii;
pub mod auth;
pub mod command;
pub mod hash;
pub mod line;
pub mod listing;
pub mod memory;
pub mod path;
pub mod proxy;
pub mod reply;
pub mod session;
pub mod storage;
pub mod work;

pub use auth::{Account, AuthError, Authenticator, Denial, Login};
pub use session::{
    Action, Body, Config, Endpoint, Event, LoginRefusal, Outcome, Session, TlsPolicy, Transfer,
};
pub use storage::{DirEntry, FileHandle, FileKind, Metadata, Storage, WriteMode};

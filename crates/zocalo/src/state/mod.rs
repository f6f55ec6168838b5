//! What the server knows across connections, shared by the drivers and the services:
//!
//! - [`users`]: accounts and their storage, from `--user`, the users file and the account
//!   [`sources`] of `[[auth]]` ([`http`], [`ldap`], [`postgres`], each behind the cache of
//!   [`source`]), each account with its [`policy`] and its [`seats`]; [`passwords`]: hashes;
//!   [`hashes`]: a bound on password hashes at once, across forks; [`quota`] and [`checks`]:
//!   an account's storage held to its quota and its uploads to their check;
//! - [`limits`]: connection counts and login lock-outs; [`shared`]: the same across a cluster,
//!   in Redis (with its sync loop);
//! - [`registry`]: the session table; [`reload`]: what SIGHUP and `ctl reload` refresh.

pub mod checks;
pub mod hashes;
pub mod http;
pub mod ldap;
pub mod limits;
pub mod passwords;
pub mod policy;
pub mod postgres;
pub mod quota;
pub mod registry;
pub mod reload;
pub mod seats;
pub mod shared;
pub mod source;
pub mod sources;
pub mod users;

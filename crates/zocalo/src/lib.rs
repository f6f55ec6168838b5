//! zocalo: the drivers around the sans-IO core of `zocalo-proto`.
//!
//! - [`models`]: the server models (iterative, process, thread, pool, select/poll/epoll) and the
//!   shared accept loop;
//! - [`drivers`]: the blocking driver, the event loop, the data channel, PROXY headers;
//! - [`storage`]: the local file system (S3 is the `zocalo-s3` crate); [`users`]: accounts;
//! - [`ops`]: limits, shared state, the session table, the admin channel, logs, metrics,
//!   systemd;
//! - [`net`], [`tls`]: sockets and TLS streams; [`shutdown`]: SIGTERM/SIGINT and reloads;
//! - [`cli`], [`serve`]: the command line; [`commands`]: the client side; [`tftp`].

pub mod cli;
pub mod commands;
pub mod drivers;
pub mod models;
pub mod net;
pub mod ops;
pub mod serve;
pub mod shutdown;
pub mod storage;
pub mod tftp;
pub mod tls;
pub mod users;

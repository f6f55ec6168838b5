//! zocalo: the drivers around the sans-IO core of `zocalo-proto`.
//!
//! - [`models`]: the server models (iterative, process, thread, pool, select/poll/epoll);
//! - [`conn`]: the per-connection driver of the blocking models; [`data`]: the data channel;
//! - [`fs`]: the kernel-confined local storage; [`users`]: accounts; [`limits`]: shared limits;
//! - [`proxy`]: PROXY protocol headers from a balancer; [`shared`]: the cluster's state in
//!   Redis; [`agent`]: HAProxy's agent check;
//! - [`net`]: sockets; [`shutdown`]: SIGTERM/SIGINT; [`cli`] and [`serve`]: the command line.

pub mod admin;
pub mod agent;
pub mod cli;
pub mod commands;
pub mod conn;
pub mod data;
pub mod fs;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod models;
pub mod net;
pub mod observe;
pub mod proxy;
pub mod registry;
pub mod serve;
pub mod shared;
pub mod shm;
pub mod shutdown;
pub mod systemd;
pub mod tftp;
pub mod tls;
pub mod users;
pub mod xferlog;

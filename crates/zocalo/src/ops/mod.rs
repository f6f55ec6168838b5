//! Running the server: what spans connections and what operators see.
//!
//! - [`limits`]: connection counts and login lock-outs; [`shared`]: the same across a cluster,
//!   in Redis; [`registry`]: the session table; [`admin`]: the `zocalo ctl` channel;
//!   [`agent`]: HAProxy's agent check;
//! - [`observe`]: session events to logs and metrics; [`logs`], [`metrics`], [`xferlog`];
//! - [`hashes`]: a bound on password hashes at once, across forks;
//! - [`systemd`]: readiness notification and socket activation; [`shm`]: memory shared across
//!   the `process` model's forks.

pub mod admin;
pub mod agent;
pub mod hashes;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod observe;
pub mod registry;
pub mod shared;
pub mod shm;
pub mod systemd;
pub mod xferlog;

//! The ground floor of what operators see: counters, logs and notifications, which every other
//! part may report to and which import nothing of the crate above them.
//!
//! - [`metrics`]: the counter table (served by [`crate::services::metrics_http`]);
//! - [`observe`]: session events to logs and metrics; [`logs`], [`xferlog`]; [`recent`]: the
//!   last events, for the console; [`status`]: what the console shows of this node;
//! - [`hooks`]: events out to programs and URLs, and upload checks; [`web`]: the HTTP
//!   client settings they and the HTTP account source share;
//! - [`systemd`]: readiness notification and socket activation; [`shm`]: memory shared across
//!   the `process` model's forks.

pub mod hooks;
pub mod logs;
pub mod metrics;
pub mod observe;
pub mod recent;
pub mod shm;
pub mod status;
pub mod systemd;
pub mod web;
pub mod xferlog;

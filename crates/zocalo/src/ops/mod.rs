//! The ground floor of what operators see: counters, logs and notifications, which every other
//! part may report to and which import nothing of the crate above them.
//!
//! - [`metrics`]: the counter table (served by [`crate::services::metrics_http`]);
//! - [`observe`]: session events to logs and metrics; [`logs`], [`xferlog`];
//! - [`systemd`]: readiness notification and socket activation; [`shm`]: memory shared across
//!   the `process` model's forks.

pub mod logs;
pub mod metrics;
pub mod observe;
pub mod shm;
pub mod systemd;
pub mod xferlog;

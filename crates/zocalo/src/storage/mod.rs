//! Where files live. [`local`]: a directory, confined by the kernel; object storage (S3) is the
//! `zocalo-s3` crate. Both implement the core's `Storage` trait.

pub mod local;

//! s3warden: serves objects from a private S3 bucket to browsers — a JWT and access rules
//! decide, s3warden signs its own S3 requests (SigV4) and keeps objects in memory so that
//! repeated reads cost no S3 transfer.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cache;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod error;
pub mod memfile;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod response;
pub mod route;
pub mod s3;
pub mod server;
pub mod sign;

pub use proxy::App;

/// The connection limits a config asks for.
pub fn limits(config: &config::Config) -> server::Limits {
    let s = &config.server;
    server::Limits {
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        max_connections: s.max_connections,
        max_header_size: s.max_header_size.bytes() as usize,
        shutdown_grace: s.shutdown_grace,
    }
}

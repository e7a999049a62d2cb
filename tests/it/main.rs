//! Integration tests: s3warden against a real in-process S3 with real tokens. One test binary
//! (modules below) so the suite links once.

mod admin;
mod auth;
mod browser;
mod cache;
#[allow(dead_code)]
mod common;
mod config_files;
mod content;
mod credentials;
mod daemon;
mod demo;
mod exhaustion;
mod fleet;
mod foundation;
mod protection;
mod signing;
mod stores;
mod upload;

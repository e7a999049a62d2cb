//! s3warden: serves objects from a private S3 bucket to browsers — a JWT and access rules
//! decide, s3warden signs its own S3 requests (SigV4) and keeps objects in memory so that
//! repeated reads cost no S3 transfer.
#![forbid(unsafe_code)]

// What the binary, the tests and the benchmarks use is public; the rest is the crate's own.
pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod buffers;
pub mod cache;
pub mod config;
pub mod daemon;
pub mod demo;
pub(crate) mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod memfile;
pub mod metrics;
pub mod policy;
pub(crate) mod proxy;
pub(crate) mod response;
pub(crate) mod route;
pub mod s3;
pub(crate) mod server;
pub(crate) mod urls;

pub use admin::{ReloadRequest, purge_fleet, reload_daemon};
pub use auth::mint_hs256;
pub use memfile::raise_descriptor_limit;
pub use proxy::{App, AppError, Clock};
pub use server::{Body, TlsError};
pub use urls::{CliRequest, sign_for_cli};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use admin::Admin;
use config::Config;
use server::{Limits, Server, Tls};

/// What the components need of the config's sections: the rules and bucket aliases, token
/// verification, CORS, S3 addressing. Pass it to [`Config::load`] and friends.
pub fn check_config(config: &Config, v: &mut config::Validator) {
    policy::check(config, v);
    auth::check(config, v);
    proxy::cors::check(config, v);
    proxy::client::check(config, v);
    s3::check(config, v);
}

/// Where each store's S3 credentials come from, one line per store, for `check-config`: the
/// default chain is asked once (never the keys themselves).
pub async fn describe_credentials(config: &Config) -> Vec<String> {
    let stores = s3::Stores::new(config, None).await;
    let mut lines: Vec<String> = (stores.iter())
        .map(|(id, store)| match store.keyring.describe() {
            Ok(source) => format!("{id}: S3 credentials from {source}"),
            Err(why) => format!("{id}: warning: {why}"),
        })
        .collect();
    lines.sort();
    lines
}

/// A running s3warden: the app, its public listeners (TLS when configured) and its admin
/// listener. `serve`, `demo` and the tests all start it here.
pub struct Running {
    app: App,
    tls: Tls,
    public: Server,
    admin: Server,
    reloads: admin::Reloads,
}

/// s3warden could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The app could not be built.
    #[error(transparent)]
    App(#[from] proxy::AppError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] server::TlsError),
}

impl Running {
    /// Builds the app from `config` (on `clock`, or the system's) and serves `public` and
    /// `admin`.
    pub async fn start(
        config: Config,
        public: Vec<TcpListener>,
        admin: TcpListener,
        clock: Option<Clock>,
    ) -> Result<Running, StartError> {
        let tls = Tls::default();
        tls.store(tls_of(&config)?.map(Arc::new));
        let limits = limits(&config);
        let app = match clock {
            Some(clock) => App::with_clock(config, clock).await?,
            None => App::new(config).await?,
        };
        let public = Server::start_tls(public, app.clone(), limits.clone(), tls.clone());
        let reloads = admin::Reloads::default();
        let handler = Admin {
            app: app.clone(),
            reloads: reloads.clone(),
        };
        let admin_limits = Limits {
            proxy_protocol: false,
            ..limits
        };
        let admin = Server::start(vec![admin], handler, admin_limits);
        Ok(Running {
            app,
            tls,
            public,
            admin,
            reloads,
        })
    }

    /// Reloads asked for on the admin listener (`POST /reload`, which `s3warden reload` sends)
    /// arrive here from now on; the caller carries each out and answers with the outcome.
    /// Until this is called, the admin listener answers them 404.
    pub fn accept_reloads(&self) -> tokio::sync::mpsc::Receiver<ReloadRequest> {
        self.reloads.accept()
    }

    /// The app being served.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The public listeners' addresses.
    pub fn public_addrs(&self) -> &[SocketAddr] {
        self.public.local_addrs()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addrs()[0]
    }

    /// Replaces rules, keys, secrets, S3 settings, cache lifetimes and the TLS certificate with
    /// those of `config`; nothing changes when any of them cannot be used.
    pub async fn reload(&self, config: Config) -> Result<(), StartError> {
        let tls = tls_of(&config)?;
        self.app.reload(config).await?;
        self.tls.store(tls.map(Arc::new));
        Ok(())
    }

    /// Stops accepting and drains in-flight requests (up to `server.shutdown_grace`); the
    /// admin listener answers `/readyz` with 503 meanwhile.
    pub async fn shutdown(self) {
        self.app.start_draining();
        self.public.shutdown().await;
        self.admin.shutdown().await;
    }
}

/// The TLS settings a config names, if any.
fn tls_of(config: &Config) -> Result<Option<server::TlsConfig>, server::TlsError> {
    config
        .secrets
        .tls
        .as_ref()
        .map(|(cert, key)| server::tls_config(cert, key))
        .transpose()
}

/// The connection limits a config asks for.
fn limits(config: &Config) -> Limits {
    let s = &config.server;
    Limits {
        proxy_protocol: s.proxy_protocol,
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        max_connections: s.max_connections,
        max_header_size: s.max_header_size.bytes() as usize,
        shutdown_grace: s.shutdown_grace,
    }
}

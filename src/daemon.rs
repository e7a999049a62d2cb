//! The daemon's life: bind the listeners, serve, and drain on SIGTERM/SIGINT.

use tokio::net::TcpListener;

use crate::App;
use crate::admin::Admin;
use crate::config::Config;
use crate::server::Server;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The app could not be built.
    #[error(transparent)]
    App(#[from] crate::proxy::AppError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs until SIGTERM or SIGINT, then drains in-flight requests and returns.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let mut public = Vec::new();
    for &addr in &config.server.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Bind { addr, source })?;
        public.push(listener);
    }
    let admin_addr = config.admin.listen;
    let admin = TcpListener::bind(admin_addr)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: admin_addr,
            source,
        })?;
    let limits = crate::limits(&config);
    let app = App::new(config).await?;
    let public = Server::start(public, app.clone(), limits.clone());
    let admin = Server::start(vec![admin], Admin(app.clone()), limits);
    tracing::info!(listen = ?public.local_addrs(), admin = ?admin.local_addrs(), "s3warden ready");

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
    public.shutdown().await;
    admin.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

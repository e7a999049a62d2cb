//! The daemon's life under systemd (or not): listeners bound or passed in (socket activation),
//! `READY=1` once everything is loaded, watchdog pings, `SIGHUP` reloads, `SIGTERM`/`SIGINT`
//! drain and exit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::Running;
use crate::config::{Config, Environment};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A listener could not be bound or taken over.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The address or passed socket.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The app could not be built or served.
    #[error(transparent)]
    Start(#[from] crate::StartError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs until SIGTERM or SIGINT, then drains in-flight requests and returns.
pub async fn run(config: Config, path: PathBuf) -> Result<(), DaemonError> {
    let public = public_listeners(&config).await?;
    let admin_addr = config.admin.listen;
    let admin = TcpListener::bind(admin_addr)
        .await
        .map_err(|source| DaemonError::Listen {
            what: admin_addr.to_string(),
            source,
        })?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let running = Running::start(config, public, admin, None).await?;
    let mut reload_requests = running.accept_reloads();
    tracing::info!(listen = ?running.public_addrs(), admin = %running.admin_addr(), "s3warden ready");
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    let watchdog = start_watchdog();

    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = reload(&running, &path).await;
            }
            Some(reply) = reload_requests.recv() => {
                let _ = reply.send(reload(&running, &path).await);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    tracing::info!("shutting down: draining in-flight requests (a second signal stops at once)");
    tokio::select! {
        _ = running.shutdown() => {}
        _ = term.recv() => tracing::warn!("second signal: stopping without waiting for the drain"),
        _ = int.recv() => tracing::warn!("second signal: stopping without waiting for the drain"),
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The sockets systemd passed (`LISTEN_FDS`), or the configured addresses, bound now.
async fn public_listeners(config: &Config) -> Result<Vec<TcpListener>, DaemonError> {
    let mut passed = listenfd::ListenFd::from_env();
    if passed.len() > 0 {
        let mut listeners = Vec::new();
        for i in 0..passed.len() {
            let listen_err = |source| DaemonError::Listen {
                what: format!("passed socket {i}"),
                source,
            };
            let Some(std_listener) = passed.take_tcp_listener(i).map_err(listen_err)? else {
                continue;
            };
            std_listener.set_nonblocking(true).map_err(listen_err)?;
            listeners.push(TcpListener::from_std(std_listener).map_err(listen_err)?);
        }
        tracing::info!(sockets = listeners.len(), "using sockets passed by systemd");
        return Ok(listeners);
    }
    let mut listeners = Vec::new();
    for &addr in &config.server.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen {
                what: addr.to_string(),
                source,
            })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Re-reads the config file; a bad one is logged (and returned) and the running config stays.
async fn reload(running: &Running, path: &Path) -> Result<(), String> {
    notify(&[
        NotifyState::Reloading,
        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("reloading")),
    ]);
    let result = async {
        let config = Config::load(path, &Environment::from_process(), &crate::check_config)
            .map_err(|e| e.to_string())?;
        running.reload(config).await.map_err(|e| e.to_string())
    }
    .await;
    match &result {
        Ok(()) => {
            tracing::info!("configuration reloaded");
            notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the previous configuration stays in force");
            notify(&[
                NotifyState::Ready,
                NotifyState::Status("serving; the last reload was refused (see the logs)"),
            ]);
        }
    }
    result
}

/// Pings the systemd watchdog at half its interval from the runtime itself, so a wedged
/// runtime stops pinging and gets restarted.
fn start_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    // As sd_watchdog_enabled(3): WATCHDOG_USEC, unless WATCHDOG_PID names another process.
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    if usec == 0 || pid.is_some_and(|p| p.parse::<u32>().ok() != Some(std::process::id())) {
        return None;
    }
    let every = Duration::from_micros(usec) / 2;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    }))
}

/// Tells systemd (when it is listening) how the service is doing.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

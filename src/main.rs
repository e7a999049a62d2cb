//! The `s3warden` command: CLI parsing and wiring only.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use s3warden::config::{Config, DEFAULT_CONFIG_PATH, Environment, LogFormat, Needs};

#[derive(Parser)]
#[command(
    name = "s3warden",
    version,
    about = "Serve files from a private S3 bucket to browsers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `-c PATH` / `--config PATH`, else `S3WARDEN_CONFIG`, else the default path.
#[derive(clap::Args)]
struct ConfigPath {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        env = "S3WARDEN_CONFIG",
        default_value = DEFAULT_CONFIG_PATH
    )]
    path: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        #[command(flatten)]
        config: ConfigPath,
    },
    /// Reload the running daemon's configuration and wait for the outcome: exits non-zero, with
    /// the reasons, when the new configuration is refused (the old one keeps serving). For
    /// systemd's ExecReload.
    Reload {
        #[command(flatten)]
        config: ConfigPath,
    },
    /// Validate a configuration file and exit (0 when valid).
    CheckConfig {
        #[command(flatten)]
        config: ConfigPath,
    },
    /// Run s3warden in front of an embedded S3 with sample objects, on this machine.
    Demo {
        /// Address of the public listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the admin listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Print signed URLs for objects (no rules are checked: this is for operators and scripts).
    Sign {
        #[command(flatten)]
        config: ConfigPath,
        /// `proxy` (served by s3warden) or `s3` (pre-signed S3 URL).
        #[arg(long, default_value = "proxy", value_parser = ["proxy", "s3"])]
        kind: String,
        /// The method the URL is for.
        #[arg(long, default_value = "GET", value_parser = ["GET", "PUT", "DELETE"])]
        method: String,
        /// PUT: the type uploads are stored with (default: guessed from the key).
        #[arg(long)]
        content_type: Option<String>,
        /// PUT: the ACL uploads get (default: upload.default_acl).
        #[arg(long, value_parser = ["private", "public-read"])]
        acl: Option<String>,
        /// Objects as `BUCKET/KEY` (the bucket alias from the config).
        #[arg(required = true, value_name = "BUCKET/KEY")]
        objects: Vec<String>,
    },
    /// Drop objects from the caches of running instances (through their admin listeners).
    Purge {
        /// (Its admin listener is purged when no --fleet is given.)
        #[command(flatten)]
        config: ConfigPath,
        /// Admin URL of an instance (repeat for every instance of a fleet).
        #[arg(long = "fleet", value_name = "ADMIN_URL")]
        fleet: Vec<String>,
        /// File holding the admin token (default: the config's admin.token_file, if any).
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// Purge everything instead of the objects named.
        #[arg(long)]
        all: bool,
        /// Objects as `BUCKET/KEY`.
        #[arg(value_name = "BUCKET/KEY", required_unless_present = "all")]
        objects: Vec<String>,
    },
    /// Mint a development token with the configured HMAC secret.
    Token {
        #[command(flatten)]
        config: ConfigPath,
        /// The token's subject.
        #[arg(long)]
        sub: String,
        /// Extra claims, `NAME=VALUE` (repeat a name to make an array).
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
        /// Lifetime, like `1h` or `30m`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    s3warden::raise_descriptor_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Serve {
            config: ConfigPath { path },
        } => {
            let config = load(&path, Needs::ALL)?;
            init_logging(config.log.format, &config.log.level);
            s3warden::daemon::run(config, path).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload {
            config: ConfigPath { path },
        } => {
            // The same checks the daemon makes first: a config it would refuse is refused here,
            // with every problem, and the daemon is not asked.
            let config = match load(&path, Needs::ALL) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("reload refused: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let admin = admin_url(config.admin.listen);
            let token = config.secrets.admin_token.as_deref();
            match s3warden::reload_daemon(&admin, token).await {
                Ok(()) => {
                    println!("{}: reloaded", path.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(why) => {
                    eprintln!("{why}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::CheckConfig {
            config: ConfigPath { path },
        } => match load(&path, Needs::ALL) {
            Ok(config) => {
                for line in s3warden::describe_credentials(&config).await {
                    println!("{line}");
                }
                println!("{}: ok", path.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Demo { listen, admin } => {
            init_logging(LogFormat::Text, "warn,access=info");
            s3warden::demo::run(listen, admin).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign {
            config: ConfigPath { path: config },
            kind,
            method,
            content_type,
            acl,
            objects,
        } => {
            // Proxy URLs need the URL keys; S3 URLs the S3 credentials.
            let needs = Needs {
                s3: kind == "s3",
                url_keys: kind != "s3",
                ..Needs::NOTHING
            };
            let config = load(&config, needs)?;
            let request = s3warden::CliRequest {
                kind: &kind,
                method: &method,
                content_type: content_type.as_deref(),
                acl: acl.as_deref(),
            };
            for url in s3warden::sign_for_cli(&config, &request, &objects).await? {
                println!("{url}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Purge {
            config: ConfigPath { path: config },
            fleet,
            token_file,
            all,
            objects,
        } => {
            // The config names the admin listener and its token; with --fleet and
            // --token-file it is not needed.
            let parsed = load(&config, Needs::NOTHING).map_err(|e| e.to_string());
            let admins = if fleet.is_empty() {
                vec![admin_url(
                    parsed.as_ref().map_err(Clone::clone)?.admin.listen,
                )]
            } else {
                fleet
            };
            let token_file = token_file.or_else(|| parsed.ok()?.admin.token_file);
            let token = match token_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            match s3warden::purge_fleet(&admins, token.as_deref(), &objects, all).await {
                Ok(lines) => {
                    lines.iter().for_each(|l| println!("{l}"));
                    Ok(ExitCode::SUCCESS)
                }
                Err(lines) => {
                    lines.iter().for_each(|l| eprintln!("{l}"));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Token {
            config: ConfigPath { path: config },
            sub,
            claims,
            ttl,
        } => {
            let needs = Needs {
                tokens: true,
                ..Needs::NOTHING
            };
            let config = load(&config, needs)?;
            let secret = config.secrets.hmac_secret.as_deref().ok_or(
                "no HMAC secret configured (auth.hmac_secret_file or auth.hmac_secret_env)",
            )?;
            let mut map = serde_json::Map::new();
            map.insert("sub".into(), sub.into());
            if let Some(iss) = &config.auth.issuer {
                map.insert("iss".into(), iss.clone().into());
            }
            if let Some(aud) = &config.auth.audience {
                map.insert("aud".into(), aud.clone().into());
            }
            for claim in claims {
                let (name, value) = claim
                    .split_once('=')
                    .ok_or_else(|| format!("--claim {claim:?}: expected NAME=VALUE"))?;
                match map.get_mut(name) {
                    Some(serde_json::Value::Array(items)) => items.push(value.into()),
                    Some(existing) => {
                        let first = existing.take();
                        *existing = serde_json::Value::Array(vec![first, value.into()]);
                    }
                    None => {
                        map.insert(name.into(), value.into());
                    }
                }
            }
            println!(
                "{}",
                s3warden::mint_hs256(secret, serde_json::Value::Object(map), ttl)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The config at `path`, checked by every component, with the secrets `needs` names read.
fn load(path: &std::path::Path, needs: Needs) -> Result<Config, s3warden::config::ConfigError> {
    Config::load_needing(
        path,
        &Environment::from_process(),
        &s3warden::check_config,
        needs,
    )
}

/// The URL this machine reaches its admin listener at (a wildcard address by loopback).
fn admin_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// Where the one line that says `RUST_LOG` overrides `log.level` is logged; always shown.
const LOG_SETUP: &str = "s3warden::log_setup";

/// Logs to stdout at `level`, or at `RUST_LOG`'s when that is set (which the first line says);
/// colours only on a terminal, never into the journal.
fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty() && EnvFilter::try_new(v).is_ok());
    let filter = EnvFilter::try_new(from_env.as_deref().unwrap_or(level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            format!("{LOG_SETUP}=info")
                .parse()
                .expect("a valid directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if let Some(rust_log) = from_env {
        tracing::info!(target: LOG_SETUP, %rust_log, "RUST_LOG is set: it overrides log.level");
    }
}

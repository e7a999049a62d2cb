//! `s3warden demo`: an embedded S3 on loopback holding sample objects, s3warden in front of it,
//! and a printed token with commands to try — no setup, no network.

pub mod s3;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{Config, ConfigError, Environment};
use crate::{Running, auth};
use s3::EmbeddedS3;

/// The demo config, as shipped in `config/demo.toml`.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// The S3 bucket the demo serves.
pub const DEMO_BUCKET: &str = "demo-bucket";

const SAMPLES: &[(&str, &[u8])] = &[
    ("photos/alice.png", include_bytes!("assets/alice.png")),
    ("photos/bob.png", include_bytes!("assets/bob.png")),
    ("photos/carol.png", include_bytes!("assets/carol.png")),
    ("photos/dave.png", include_bytes!("assets/dave.png")),
    ("photos/erin.png", include_bytes!("assets/erin.png")),
    ("public/logo.png", include_bytes!("assets/logo.png")),
    (
        "public/welcome.txt",
        b"Welcome to the s3warden demo. Anyone may read this file.\n",
    ),
    (
        "private/salaries.csv",
        b"name,salary\nalice,72000\nbob,68000\ncarol,91000\n",
    ),
    (
        "users/alice/notes.txt",
        b"Alice's own notes: only alice can read them.\n",
    ),
];

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Files or sockets.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The demo config did not load.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// s3warden did not start.
    #[error("{0}")]
    Start(#[from] crate::StartError),
}

/// A running demo.
pub struct Demo {
    /// The embedded S3.
    pub s3: EmbeddedS3,
    /// s3warden serving it.
    pub running: Running,
    /// A token for `alice` (an employee).
    pub alice_token: String,
    /// A token for an admin.
    pub admin_token: String,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Starts the embedded S3 and s3warden on `listen` / `admin` (port 0 picks free ports).
    pub async fn start(listen: SocketAddr, admin: SocketAddr) -> Result<Demo, DemoError> {
        let dir = tempfile::Builder::new()
            .prefix("s3warden-demo")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        let data = dir.path().join("s3");
        std::fs::create_dir_all(&data)?;
        let access_key = "DEMOACCESSKEY";
        let secret_key = random_hex(20);
        let s3 = EmbeddedS3::start(
            &data,
            "127.0.0.1:0".parse().expect("addr"),
            access_key,
            &secret_key,
        )
        .await?;
        s3.create_bucket(DEMO_BUCKET)?;
        for (key, bytes) in SAMPLES {
            s3.put(DEMO_BUCKET, key, bytes)?;
        }
        let jwt_secret = random_hex(32);
        write_secret(dir.path(), "jwt-secret", &jwt_secret)?;
        write_secret(dir.path(), "url-key", &random_hex(32))?;

        let bind = |addr: SocketAddr| async move {
            (TcpListener::bind(addr).await).map_err(|source| DemoError::Listen { addr, source })
        };
        let public_listener = bind(listen).await?;
        let admin_listener = bind(admin).await?;
        let public_addr = public_listener.local_addr()?;
        let text = DEMO_CONFIG
            .replace("http://127.0.0.1:9000", &s3.endpoint())
            .replace("127.0.0.1:8080", &public_addr.to_string())
            .replace("127.0.0.1:9901", &admin_listener.local_addr()?.to_string());
        let env = Environment::from_pairs([
            ("AWS_ACCESS_KEY_ID", access_key),
            ("AWS_SECRET_ACCESS_KEY", secret_key.as_str()),
        ]);
        let config = Config::from_toml(&text, dir.path(), &env, &crate::check_config)?;
        let running = Running::start(config, vec![public_listener], admin_listener, None).await?;

        let day = Duration::from_secs(12 * 3600);
        let claims = |sub: &str, roles: &[&str]| {
            serde_json::json!({
                "sub": sub,
                "iss": "s3warden-demo",
                "aud": "files",
                "roles": roles,
            })
        };
        let alice_token =
            auth::mint_hs256(jwt_secret.as_bytes(), claims("alice", &["employee"]), day);
        let admin_token = auth::mint_hs256(jwt_secret.as_bytes(), claims("admin", &["admin"]), day);
        Ok(Demo {
            s3,
            running,
            alice_token,
            admin_token,
            _dir: dir,
        })
    }

    /// The base URL of the public listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.running.public_addrs()[0])
    }

    /// The base URL of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.running.admin_addr())
    }

    /// What to try, with the tokens filled in.
    pub fn instructions(&self) -> String {
        let url = self.url();
        let admin = self.admin_url();
        let alice = &self.alice_token;
        let boss = &self.admin_token;
        format!(
            "s3warden demo is running.\n\
             \n\
             Embedded S3 (private bucket {DEMO_BUCKET:?}): {s3}\n\
             s3warden:                                 {url}\n\
             admin (metrics, purge):                   {admin}\n\
             \n\
             A token for alice (an employee, valid 12h):\n\
             \x20 TOKEN={alice}\n\
             \n\
             Try:\n\
             \x20 # a private photo, with the token: 200 (X-Cache: MISS, then HIT)\n\
             \x20 curl -i -H \"Authorization: Bearer $TOKEN\" {url}/employees/photos/alice.png -o /dev/null\n\
             \x20 # the same photo without a token: 401\n\
             \x20 curl -i {url}/employees/photos/alice.png\n\
             \x20 # a public file needs no token\n\
             \x20 curl -i {url}/employees/public/welcome.txt\n\
             \x20 # alice's own folder: 200; the admin-only file: 403\n\
             \x20 curl -i -H \"Authorization: Bearer $TOKEN\" {url}/employees/users/alice/notes.txt\n\
             \x20 curl -i -H \"Authorization: Bearer $TOKEN\" {url}/employees/private/salaries.csv\n\
             \x20 # the first 10 bytes only: 206\n\
             \x20 curl -i -H \"Authorization: Bearer $TOKEN\" -H 'Range: bytes=0-9' {url}/employees/public/welcome.txt\n\
             \x20 # metrics: cache hits, bytes fetched from S3 vs sent to clients\n\
             \x20 curl -s {admin}/metrics | grep -E 'cache_(hits|misses)|bytes'\n\
             \n\
             An admin token (may read private/):\n\
             \x20 ADMIN={boss}\n\
             \x20 curl -i -H \"Authorization: Bearer $ADMIN\" {url}/employees/private/salaries.csv\n\
             \n\
             Press Ctrl-C to stop.\n",
            s3 = self.s3.endpoint(),
        )
    }

    /// Stops s3warden (draining requests) and the embedded S3.
    pub async fn stop(self) {
        self.running.shutdown().await;
        self.s3.stop();
    }
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: SocketAddr, admin: SocketAddr) -> Result<(), DemoError> {
    let demo = Demo::start(listen, admin).await?;
    println!("{}", demo.instructions());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping…");
    demo.stop().await;
    Ok(())
}

/// Writes a secret readable by this user only (`0600`; the demo's directory is `0700`).
fn write_secret(dir: &Path, name: &str, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(name))?
        .write_all(value.as_bytes())
}

/// `n` random bytes as hex.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_are_readable_by_their_owner_only() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let demo = Demo::start(any, any).await.unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(demo._dir.path()), 0o700);
        for name in ["jwt-secret", "url-key"] {
            assert_eq!(mode(&demo._dir.path().join(name)), 0o600, "{name}");
        }
        demo.stop().await;
    }
}

//! One s3warden process under the soak: its config, its systemd notifications (a reload is
//! done when READY=1 comes back), and what it holds (resident memory, memory files, descriptors).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio::sync::watch;

/// What the daemons share: files in the work directory, and the servers around them.
pub struct Shared {
    pub dir: PathBuf,
    pub s3: SocketAddr,
    pub jwks_url: String,
    pub credentials_url: String,
    pub fixtures: PathBuf,
}

/// A running daemon.
pub struct Daemon {
    pub name: &'static str,
    pub base: String,
    pub admin: String,
    pub pid: u32,
    /// Prefix of its keys inside the bucket.
    pub prefix: &'static str,
    pub log: PathBuf,
    child: std::sync::Mutex<Child>,
    readies: watch::Receiver<u64>,
    /// Peak of resident anonymous memory plus the bytes of its memory files: what the daemon
    /// holds. Resident file pages (its code, mostly) are shared and can be dropped at any time,
    /// and differ between builds, so they are reported, not counted.
    pub peak_memory: AtomicU64,
    /// What the peak was made of: resident anonymous memory, resident file pages (the code) at
    /// that moment, memory files, cached bytes.
    pub peak_parts: std::sync::Mutex<[u64; 4]>,
    pub peak_fds: AtomicU64,
    pub capacity: u64,
}

pub const BUCKET: &str = "soak-bucket";
pub const CAPACITY_MIB: u64 = 16;

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

impl Daemon {
    /// Starts s3warden `bin` serving keys under `prefix`, over TLS when `tls`, and waits for
    /// READY=1.
    pub async fn start(
        bin: &Path,
        shared: &Shared,
        name: &'static str,
        prefix: &'static str,
        tls: bool,
    ) -> Arc<Daemon> {
        let addr = free_port();
        let admin = free_port();
        let scheme = if tls { "https" } else { "http" };
        let tls_section = if tls {
            format!(
                "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                shared.fixtures.join("tls_cert.pem").display(),
                shared.fixtures.join("tls_key.pem").display()
            )
        } else {
            String::new()
        };
        let config = format!(
            r#"[server]
listen = ["{addr}"]
public_url = "{scheme}://{addr}"
header_read_timeout = "5s"
idle_timeout = "20s"
{tls_section}
[admin]
listen = "{admin}"
probe_interval = "2s"

[s3]
endpoint = "http://{s3}"
region = "us-east-1"
addressing = "path"
connect_timeout = "1s"
timeout = "2s"
retries = 1

[buckets.soak]
bucket = "{BUCKET}"
prefix = "{prefix}"

[auth]
algorithms = ["HS256", "RS256"]
hmac_secret_file = "hmac"
jwks_url = "{jwks}"
jwks_refresh = "30s"
jwks_cooldown = "1s"
cookie = "s3warden_token"

[cache]
capacity = "{CAPACITY_MIB}MiB"
max_object_size = "1MiB"
ttl = "3s"
stale_if_error = "1m"
negative_ttl = "2s"

[signing]
secret_files = ["url-key-0", "url-key-1"]
window = "1h"
grace = "10m"

[upload]
max_size = "4MiB"
buffer_memory = "16MiB"

[log]
format = "json"
level = "warn"
{rules}"#,
            s3 = shared.s3,
            jwks = shared.jwks_url,
            rules = super::model::RULES,
        );
        let config_path = shared.dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).expect("config");
        let socket_path = shared.dir.join(format!("{name}.notify"));
        let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
        let (tx, readies) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.lines().any(|l| l == "READY=1") {
                    tx.send_modify(|n| *n += 1);
                }
            }
        });
        let log = shared.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let home = shared.dir.join("home");
        std::fs::create_dir_all(&home).expect("home");
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_clear()
            .envs(unit_environment(
                &shared.fixtures.join("../../systemd/s3warden.service"),
            ))
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_BACKTRACE", "1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{}/container", shared.credentials_url),
            )
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start s3warden");
        let daemon = Arc::new(Daemon {
            name,
            base: format!("{scheme}://{addr}"),
            admin: format!("http://{admin}"),
            pid: child.id(),
            prefix,
            log,
            child: std::sync::Mutex::new(child),
            readies,
            peak_memory: AtomicU64::new(0),
            peak_parts: Default::default(),
            peak_fds: AtomicU64::new(0),
            capacity: CAPACITY_MIB << 20,
        });
        daemon
            .wait_ready(0, Duration::from_secs(60))
            .await
            .expect("s3warden did not start");
        daemon
    }

    async fn wait_ready(&self, after: u64, within: Duration) -> Result<(), String> {
        let mut readies = self.readies.clone();
        tokio::time::timeout(within, readies.wait_for(|n| *n > after))
            .await
            .map_err(|_| format!("{}: no READY=1 within {within:?}", self.name))?
            .map_err(|_| format!("{}: notify socket closed", self.name))?;
        Ok(())
    }

    /// Sends SIGHUP and waits until the reload is done.
    pub async fn reload(&self) -> Result<(), String> {
        let before = *self.readies.borrow();
        self.signal("HUP");
        self.wait_ready(before, Duration::from_secs(20)).await
    }

    fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .status();
    }

    /// Sends SIGTERM and waits for the exit; `Err` unless it exits 0 within `grace`.
    pub async fn stop(&self, grace: Duration) -> Result<(), String> {
        self.signal("TERM");
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .try_wait()
                .map_err(|e| e.to_string())?
            {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("{}: exited with {status}", self.name))
                };
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.child.lock().unwrap().kill();
                return Err(format!(
                    "{}: still running {grace:?} after SIGTERM",
                    self.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resident memory in bytes: (anonymous, file pages).
    pub fn rss(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        (field("RssAnon:") + field("RssShmem:"), field("RssFile:"))
    }

    /// Open descriptors, and how many of them are connections to the S3 endpoint (its
    /// connection pool keeps idle ones for a while).
    pub fn descriptors(&self, s3: SocketAddr) -> (u64, u64) {
        let s3_inodes = socket_inodes_to(s3.port());
        let mut all = 0;
        let mut to_s3 = 0;
        for entry in std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .into_iter()
            .flatten()
            .flatten()
        {
            all += 1;
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                && s3_inodes.iter().any(|i| i == inode)
            {
                to_s3 += 1;
            }
        }
        (all, to_s3)
    }

    /// What its descriptors are, counted by kind (sockets by state and local port).
    pub fn describe_descriptors(&self) -> String {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let mut kinds = std::collections::BTreeMap::<String, u64>::new();
        for entry in std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .into_iter()
            .flatten()
            .flatten()
        {
            let target = std::fs::read_link(entry.path())
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let kind = match target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                Some(inode) => table
                    .lines()
                    .map(|l| l.split_whitespace().collect::<Vec<_>>())
                    .find(|f| f.get(9) == Some(&inode))
                    .map_or("socket (not TCP)".to_owned(), |f| {
                        format!("tcp local {} remote {} state {}", f[1], f[2], f[3])
                    }),
                None => target,
            };
            *kinds.entry(kind).or_default() += 1;
        }
        kinds
            .into_iter()
            .map(|(k, n)| format!("{n}x {k}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Bytes held in memory files, and bytes cached, from its metrics.
    pub async fn held(&self, http: &reqwest::Client) -> (u64, u64) {
        let Ok(response) = http.get(format!("{}/metrics", self.admin)).send().await else {
            return (0, 0);
        };
        let text = response.text().await.unwrap_or_default();
        (
            metric(&text, "s3warden_memory_file_bytes"),
            metric(&text, "s3warden_cache_bytes"),
        )
    }

    /// Samples memory and descriptors, keeping the peaks.
    pub async fn sample(&self, http: &reqwest::Client) {
        let (anon, file) = self.rss();
        let (files, cached) = self.held(http).await;
        let memory = anon + files;
        if memory > self.peak_memory.fetch_max(memory, Ordering::Relaxed) {
            *self.peak_parts.lock().unwrap() = [anon, file, files, cached];
        }
        let (fds, _) = self.descriptors(SocketAddr::from(([127, 0, 0, 1], 0)));
        self.peak_fds.fetch_max(fds, Ordering::Relaxed);
    }

    /// Asks the admin listener to drop one key, or everything.
    pub async fn purge(&self, http: &reqwest::Client, key: Option<&str>) -> bool {
        let request = match key {
            Some(key) => http.delete(format!("{}/cache/soak/{key}", self.admin)),
            None => http.post(format!("{}/cache/purge", self.admin)),
        };
        request.send().await.is_ok_and(|r| r.status().is_success())
    }
}

impl Drop for Daemon {
    /// A soak that ends early (a panic in the harness) leaves no daemon behind.
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `Environment=` settings of the systemd unit: the daemon runs as deployed.
fn unit_environment(unit: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(unit).expect("systemd/s3warden.service");
    text.lines()
        .filter_map(|line| line.strip_prefix("Environment="))
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// A metric's value in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .map_or(0, |v| v as u64)
}

/// Inodes of the TCP sockets (IPv4) whose remote port is `port`.
fn socket_inodes_to(port: u16) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port_hex = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2)?.ends_with(&port_hex)).then(|| fields.get(9).map(|s| (*s).to_owned()))?
        })
        .collect()
}

//! `s3warden serve` as systemd runs it: a separate process, its notify protocol, socket
//! activation, SIGHUP reloads, SIGTERM drains, and what ends up in its logs and environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use s3warden::demo::s3::EmbeddedS3;
use tokio::net::UnixDatagram;

use crate::common::faults::{Fault, FaultyUpstream};
use crate::common::process::tools_installed;
use crate::common::*;

/// From Debian's `systemd` package.
const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";
/// From Debian's `util-linux` package.
const PRLIMIT: &str = "/usr/bin/prlimit";
const UNSHARE: &str = "/usr/bin/unshare";

/// A running `s3warden serve` and the S3 it talks to.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) url: String,
    pub(crate) admin_url: String,
    pub(crate) s3: Arc<EmbeddedS3>,
    log: PathBuf,
}

pub(crate) struct Launch {
    setup: Setup,
    env: Vec<(String, String)>,
    /// Run under `systemd-socket-activate -l 127.0.0.1:PORT`.
    socket_activated: bool,
    /// Run under `prlimit --nofile=SOFT:HARD`.
    descriptor_limit: Option<(u64, u64)>,
    /// Run with `/proc` mounted as the unit's `ProcSubset=pid` mounts it (needs root).
    proc_subset_pid: bool,
}

impl Launch {
    pub(crate) fn new(setup: Setup) -> Launch {
        Launch {
            setup,
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ],
            socket_activated: false,
            descriptor_limit: None,
            proc_subset_pid: false,
        }
    }

    pub(crate) fn env(mut self, k: &str, v: &str) -> Launch {
        self.env.retain(|(name, _)| name != k);
        self.env.push((k.into(), v.into()));
        self
    }

    pub(crate) fn without_env(mut self, k: &str) -> Launch {
        self.env.retain(|(name, _)| name != k);
        self
    }

    pub(crate) async fn start(self) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("s3");
        std::fs::create_dir_all(&data).unwrap();
        let s3 = Arc::new(
            EmbeddedS3::start(
                &data,
                "127.0.0.1:0".parse().unwrap(),
                ACCESS_KEY,
                SECRET_KEY,
            )
            .await
            .unwrap(),
        );
        s3.create_bucket(BUCKET).unwrap();
        self.start_with(dir, s3).await
    }

    pub(crate) async fn start_with(self, dir: tempfile::TempDir, s3: Arc<EmbeddedS3>) -> Daemon {
        let (port, admin, configured) = (free_port(), free_port(), free_port());
        // Socket activation: systemd holds `port`; the config names another one, never bound.
        let listen = if self.socket_activated {
            configured
        } else {
            port
        };
        let text = self
            .setup
            .render_for_daemon(dir.path(), &s3.endpoint(), listen, admin)
            .replace(
                &format!("http://127.0.0.1:{listen}\""),
                &format!("http://127.0.0.1:{port}\""),
            );
        let config = dir.path().join("s3warden.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("s3warden.log");
        let out = std::fs::File::create(&log).unwrap();
        let bin = env!("CARGO_BIN_EXE_s3warden");
        let mut command = if self.socket_activated {
            let mut c = Command::new(SOCKET_ACTIVATE);
            c.arg("-l").arg(format!("127.0.0.1:{port}"));
            for (k, v) in &self.env {
                c.arg("-E").arg(format!("{k}={v}"));
            }
            c.arg(bin);
            c
        } else if let Some((soft, hard)) = self.descriptor_limit {
            let mut c = Command::new(PRLIMIT);
            c.arg(format!("--nofile={soft}:{hard}")).arg("--").arg(bin);
            c
        } else if self.proc_subset_pid {
            // A mount namespace of its own, whose /proc shows only processes.
            let mut c = Command::new(UNSHARE);
            c.args(["--mount", "--", "sh", "-c"])
                .arg("mount -t proc -o subset=pid proc /proc && exec \"$0\" \"$@\"")
                .arg(bin);
            c
        } else {
            Command::new(bin)
        };
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = command.spawn().unwrap();
        let daemon = Daemon {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
            admin_url: format!("http://127.0.0.1:{admin}"),
            s3,
            log,
        };
        let http = client();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // The public listener (whose first connection starts a socket-activated daemon), or
            // the admin one (plain HTTP even when the public one is TLS; it starts last).
            let answers = |url: String| {
                let request = http.get(url).send();
                async move { request.await.is_ok_and(|r| r.status() == StatusCode::OK) }
            };
            if answers(format!("{}/_health", daemon.url)).await
                || answers(format!("{}/healthz", daemon.admin_url)).await
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not start:\n{}",
                daemon.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.socket_activated {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", configured)).is_err(),
                "server.listen is ignored when systemd passes a socket"
            );
        }
        daemon
    }
}

impl Daemon {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("s3warden.toml")
    }

    pub(crate) fn object_url(&self, key: &str) -> String {
        format!("{}/files/{}", self.url, encode_key(key))
    }

    /// Waits for the process to exit; its exit status.
    fn wait(mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon still running:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn recv(socket: &UnixDatagram, within: Duration) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, socket.recv(&mut buf))
        .await
        .expect("a notification in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Receives notifications until one contains `needle`.
async fn expect_notification(socket: &UnixDatagram, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let message = recv(socket, deadline.saturating_duration_since(Instant::now())).await;
        if message.contains(needle) {
            return message;
        }
    }
}

#[tokio::test]
async fn notify_protocol_ready_watchdog_reloading_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let daemon = Launch::new(Setup::default())
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .start()
        .await;
    let ready = expect_notification(&socket, "READY=1").await;
    assert!(ready.contains("READY=1"), "{ready}");
    // Pings at half the interval.
    let started = Instant::now();
    expect_notification(&socket, "WATCHDOG=1").await;
    expect_notification(&socket, "WATCHDOG=1").await;
    assert!(started.elapsed() < Duration::from_secs(2));

    daemon.signal("HUP");
    let reloading = expect_notification(&socket, "RELOADING=1").await;
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    expect_notification(&socket, "READY=1").await;

    daemon.signal("TERM");
    expect_notification(&socket, "STOPPING=1").await;
    assert!(daemon.wait(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn socket_activation_serves_the_passed_socket() {
    if !tools_installed(&[SOCKET_ACTIVATE]) {
        return;
    }
    let mut launch = Launch::new(Setup::default());
    launch.socket_activated = true;
    let daemon = launch.start().await;
    daemon.s3.put(BUCKET, "photos/a.png", b"activated").unwrap();
    let r = get_as_alice(&client(), &daemon.object_url("photos/a.png")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "activated");
    assert!(
        daemon.logs().contains("sockets passed by systemd"),
        "{}",
        daemon.logs()
    );
}

#[tokio::test]
async fn memory_files_leave_descriptors_for_connections() {
    if !tools_installed(&[PRLIMIT]) {
        return;
    }
    // The soft limit is raised to the hard one at start; memory files then take at most half.
    let (soft, hard) = (64, 256);
    let mut launch = Launch::new(Setup::default());
    launch.descriptor_limit = Some((soft, hard));
    let daemon = launch.start().await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = open_files.split_whitespace().collect();
    assert_eq!(fields[3..5], ["256", "256"], "{open_files}");

    // More large objects than the descriptor limit, each read until cached.
    let objects = 300;
    let body = |i: usize| vec![(i % 251) as u8; 40 * 1024];
    for i in 0..objects {
        daemon
            .s3
            .put(BUCKET, &format!("photos/{i}.bin"), &body(i))
            .unwrap();
    }
    let http = client();
    let get = |http: &reqwest::Client, i: usize| {
        let req = http
            .get(daemon.object_url(&format!("photos/{i}.bin")))
            .bearer_auth(token("alice"));
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "object {i}");
            let cache = r.headers()["x-cache"].to_str().unwrap().to_owned();
            (cache, r.bytes().await.unwrap())
        }
    };
    for i in 0..objects {
        let (_, bytes) = get(&http, i).await;
        assert!(bytes == body(i), "object {i}");
    }
    // All cached, all intact, and there are still descriptors for a crowd of new connections.
    let crowd = 64;
    let answers = futures_util::future::join_all((0..crowd).map(|i| {
        let http = client();
        async move { get(&http, i * objects / crowd).await }
    }))
    .await;
    for (n, (cache, bytes)) in answers.into_iter().enumerate() {
        let i = n * objects / crowd;
        assert_eq!(cache, "HIT", "object {i}");
        assert!(bytes == body(i), "object {i}");
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.child.id()))
        .unwrap()
        .count();
    assert!(fds < hard as usize, "{fds} descriptors open");
}

fn rewrite_config(daemon: &Daemon, from: &str, to: &str) {
    let path = daemon.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in config");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

#[tokio::test]
async fn sighup_applies_new_rules_and_keeps_the_cache() {
    let daemon = Launch::new(Setup::default()).start().await;
    daemon
        .s3
        .put(BUCKET, "photos/team.png", b"team photo")
        .unwrap();
    let http = client();
    let get = |t: String| {
        let req = http
            .get(daemon.object_url("photos/team.png"))
            .bearer_auth(t);
        async move { req.send().await.unwrap() }
    };
    assert_eq!(get(token("alice")).await.headers()["x-cache"], "MISS");
    assert_eq!(get(token("alice")).await.headers()["x-cache"], "HIT");

    // photos/ becomes admin-only.
    rewrite_config(
        &daemon,
        "prefix = \"photos/\"\nmethods = [\"GET\"]\nallow = \"authenticated\"",
        "prefix = \"photos/\"\nmethods = [\"GET\"]\nallow = { claims = { roles = \"admin\" } }",
    );
    // And settings only a restart applies: the reload says which.
    rewrite_config(&daemon, "[server]\n", "[server]\nidle_timeout = \"61s\"\n");
    let path = daemon.config_path();
    let text = std::fs::read_to_string(&path).unwrap() + "\n[log]\nlevel = \"warn\"\n";
    std::fs::write(&path, text).unwrap();
    daemon.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(token("alice")).await.status() != StatusCode::FORBIDDEN {
        assert!(
            Instant::now() < deadline,
            "reload not applied:\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = get(admin_token()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["x-cache"],
        "HIT",
        "the cache survived the reload"
    );
    assert_eq!(
        daemon.s3.log().requests("GET", BUCKET, "photos/team.png"),
        1
    );
    let logs = daemon.logs();
    assert!(logs.contains("configuration reloaded"));
    let later = (logs.lines())
        .find(|l| l.contains("WARN") && l.contains("next restart"))
        .unwrap_or_else(|| panic!("no warning:\n{logs}"));
    assert!(
        later.contains("server.idle_timeout (for idle connections), [log]")
            && !later.contains("server.listen"),
        "{later}"
    );
}

#[tokio::test]
async fn sighup_with_a_broken_config_keeps_the_old_one() {
    let daemon = Launch::new(Setup::default()).start().await;
    daemon.s3.put(BUCKET, "photos/a.png", b"a").unwrap();
    let http = client();
    let status = || {
        let req = http
            .get(daemon.object_url("photos/a.png"))
            .bearer_auth(token("alice"));
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(status().await, StatusCode::OK);
    for broken in [
        "this is [not toml".to_owned(),
        std::fs::read_to_string(daemon.config_path())
            .unwrap()
            .replace(
                "hmac_secret_file = \"hmac-secret\"",
                "hmac_secret_file = \"missing-file\"",
            ),
    ] {
        let before = daemon.logs().matches("reload refused").count();
        std::fs::write(daemon.config_path(), broken).unwrap();
        daemon.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while daemon.logs().matches("reload refused").count() == before {
            assert!(Instant::now() < deadline, "{}", daemon.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            status().await,
            StatusCode::OK,
            "the old rules and keys still serve"
        );
    }
}

/// A daemon serving a 3 MiB download that stalls after its first MiB (until `up.release()`),
/// with a first chunk of it already received.
async fn slow_download(setup: Setup) -> (FaultyUpstream, Daemon, reqwest::Response, usize) {
    let up = FaultyUpstream::start(Fault::StallMidBody {
        total: SLOW_TOTAL,
        first: 1024 * 1024,
    })
    .await;
    let setup = setup
        .endpoint(&up.endpoint())
        .set("s3.timeout", "\"20s\"")
        .set("cache.max_object_size", "\"64KiB\"");
    let daemon = Launch::new(setup).start().await;
    let mut r = get_as_alice(&client(), &daemon.object_url("photos/slow.bin")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let received = r.chunk().await.unwrap().unwrap().len();
    (up, daemon, r, received)
}

const SLOW_TOTAL: usize = 3 * 1024 * 1024;

#[tokio::test]
async fn sigterm_lets_a_slow_download_finish() {
    let (up, daemon, mut r, mut received) = slow_download(Setup::default()).await;
    daemon.signal("TERM");
    // New connections are refused while the download drains.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(daemon.url.trim_start_matches("http://")).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Balancers that ask are told to send requests elsewhere; the process is still alive.
    let admin = |path: &str| client().get(format!("{}{path}", daemon.admin_url)).send();
    let ready = admin("/readyz").await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().await.unwrap().contains("shutting down"));
    assert_eq!(admin("/healthz").await.unwrap().status(), StatusCode::OK);
    up.release();
    while let Some(chunk) = r.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert_eq!(received, SLOW_TOTAL, "the in-flight download completed");
    assert!(daemon.wait(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn a_second_signal_stops_without_waiting_for_the_drain() {
    let setup = Setup::default().set("server.shutdown_grace", "\"60s\"");
    let (_up, daemon, _r, _) = slow_download(setup).await;
    daemon.signal("TERM");
    let logged = |what: &'static str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !daemon.logs().contains(what) {
            assert!(Instant::now() < deadline, "{}", daemon.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    logged("draining");
    daemon.signal("INT");
    logged("second signal");
    // The download is still stalled, and the grace is a minute.
    assert!(daemon.wait(Duration::from_secs(5)).success());
}

/// A refusal's message may quote what the client sent (a JSON body's words, a form's): a line
/// break in it is written escaped, so a client cannot start a forged line in the text log.
#[tokio::test]
async fn words_a_client_sent_cannot_start_a_log_line() {
    let setup = Setup::default().set("log.level", "\"debug\"");
    let daemon = Launch::new(setup).start().await;
    let forged = "FORGED access line";
    let body = serde_json::json!({
        "bucket": "files",
        "keys": ["photos/a.png"],
        "kind": format!("proxy\n{forged}\r\n{forged}"),
    });
    let r = client()
        .post(format!("{}/_sign", daemon.url))
        .bearer_auth(token("alice"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = daemon.logs();
    assert!(logs.contains(forged), "the refusal is logged:\n{logs}");
    for line in logs.lines() {
        assert!(!line.trim_start().starts_with(forged), "{line}");
    }
}

#[tokio::test]
async fn logs_never_hold_tokens_signatures_or_secrets() {
    let setup = Setup::default()
        .set("auth.query_param", "\"access_token\"")
        .set("log.level", "\"debug\"")
        .set("log.format", "\"json\"");
    let daemon = Launch::new(setup).start().await;
    daemon.s3.put(BUCKET, "photos/a.png", b"a").unwrap();
    let http = client();
    let good = token("alice");
    let expired = hs256(&claims_with(
        "alice",
        serde_json::json!({"exp": now() - 3600}),
    ));
    let object = daemon.object_url("photos/a.png");
    for request in [
        http.get(&object).bearer_auth(&good),
        http.get(&object).bearer_auth(&expired),
        http.get(&object)
            .header("cookie", format!("s3warden_token={good}")),
        http.get(format!("{object}?access_token={good}")),
    ] {
        let _ = request.send().await.unwrap();
    }
    let signed = sign_urls(
        &daemon.url,
        &good,
        serde_json::json!({"bucket": "files", "keys": ["photos/a.png"]}),
    )
    .await;
    let url = signed["items"][0]["url"].as_str().unwrap().to_owned();
    let sig = url.split("sig=").nth(1).unwrap().to_owned();
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    let _ = http.get(url.replace(&sig, "AAAA")).send().await.unwrap();
    // An upstream failure logs too.
    let _ = http
        .get(daemon.object_url("photos/missing.png"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = daemon.logs();
    assert!(
        logs.contains("\"target\":\"access\""),
        "json access log lines:\n{logs}"
    );
    assert!(logs.contains("/files/photos/a.png"));
    for secret in [
        good.as_str(),
        &expired,
        &sig,
        HMAC_SECRET,
        SECRET_KEY,
        URL_KEY_1,
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
    // Token payloads are not logged in pieces either.
    let payload = good.split('.').nth(1).unwrap();
    assert!(!logs.contains(payload));
    // Fields keep their types: the duration is a number.
    let line = (logs.lines())
        .find(|l| l.contains("\"target\":\"access\""))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(line["fields"]["ms"].is_f64(), "{line}");
    assert!(line["fields"]["status"].is_u64(), "{line}");
}

#[tokio::test]
async fn rust_log_overrides_the_level_and_says_so_and_logs_have_no_colour() {
    let setup = Setup::default().set("log.level", "\"info\"");
    let daemon = Launch::new(setup).env("RUST_LOG", "warn").start().await;
    let _ = client()
        .get(daemon.object_url("photos/none.png"))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = daemon.logs();
    assert!(
        logs.contains("RUST_LOG is set: it overrides log.level"),
        "{logs}"
    );
    assert!(
        !logs.contains("s3warden ready"),
        "info lines are off:\n{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "no ANSI colour into files or the journal:\n{logs}"
    );
}

#[tokio::test]
async fn secrets_from_credential_files_stay_out_of_the_environment() {
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("aws_access_key_id"), ACCESS_KEY).unwrap();
    std::fs::write(creds.path().join("aws_secret_access_key"), SECRET_KEY).unwrap();
    let creds_dir = creds.path().to_str().unwrap().to_owned();
    let setup = Setup::default().set(
        "auth.hmac_secret_file",
        &format!("\"{}\"", Path::new(&creds_dir).join("jwt").display()),
    );
    std::fs::write(creds.path().join("jwt"), HMAC_SECRET).unwrap();
    let daemon = Launch::new(setup)
        .without_env("AWS_ACCESS_KEY_ID")
        .without_env("AWS_SECRET_ACCESS_KEY")
        .env("CREDENTIALS_DIRECTORY", &creds_dir)
        .start()
        .await;
    daemon.s3.put(BUCKET, "photos/a.png", b"a").unwrap();
    let r = get_as_alice(&client(), &daemon.object_url("photos/a.png")).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "S3 credentials came from the files"
    );
    let environ = std::fs::read(format!("/proc/{}/environ", daemon.child.id())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for secret in [SECRET_KEY, HMAC_SECRET, URL_KEY_1] {
        assert!(
            !environ.contains(secret),
            "{secret} is in the process environment"
        );
    }
    assert!(environ.contains("CREDENTIALS_DIRECTORY="));
}

#[tokio::test]
async fn admin_endpoints() {
    let daemon = Launch::new(Setup::default()).start().await;
    let http = client();
    let get = |path: &str| {
        let req = http.get(format!("{}{path}", daemon.admin_url));
        async move { req.send().await.unwrap() }
    };
    assert_eq!(get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(get("/readyz").await.status(), StatusCode::OK);
    let _ = http
        .get(format!("{}/files/photos/none", daemon.url))
        .send()
        .await;
    let metrics = get("/metrics").await.text().await.unwrap();
    for name in [
        "s3warden_requests_total{route=\"object\",status=\"401\"}",
        "s3warden_in_flight_requests",
        "s3warden_connections",
        "s3warden_s3_request_duration_seconds_bucket",
        "s3warden_cache_hits_total",
        // Units before `_total`, as Prometheus names them.
        "s3warden_client_sent_bytes_total ",
        "s3warden_client_sendfile_bytes_total ",
        "s3warden_s3_fetched_bytes_total ",
        "s3warden_request_duration_seconds_bucket{le=",
        "s3warden_request_duration_seconds_count{route=\"object\",cache=\"-\"} 1",
        &format!(
            "s3warden_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        "s3warden_memory_files ",
        "s3warden_memory_file_bytes ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
        "process_start_time_seconds ",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert_eq!(metrics.matches("# EOF").count(), 1);
    for old in [
        "client_bytes_sent",
        "s3_bytes_fetched",
        "client_bytes_sendfile",
    ] {
        assert!(!metrics.contains(old), "{old} is renamed");
    }
    // The resident memory is this process's, in bytes.
    let rss: f64 = (metrics.lines())
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    let rss_kib = crate::common::h2raw::rss_kib(daemon.pid()) as f64;
    assert!(
        (rss / 1024.0 - rss_kib).abs() < rss_kib * 0.5,
        "{rss} vs {rss_kib} KiB"
    );
    let head = http
        .head(format!("{}/metrics", daemon.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(get("/nothing").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn process_metrics_survive_the_units_proc_subset() {
    // The unit's `ProcSubset=pid` hides /proc/uptime, /proc/stat and the like.
    if !tools_installed(&[UNSHARE]) {
        return;
    }
    // Mounting needs root and a machine (or container) that allows mount namespaces.
    let probe = Command::new(UNSHARE)
        .args([
            "--mount",
            "--",
            "mount",
            "-t",
            "proc",
            "-o",
            "subset=pid",
            "proc",
            "/proc",
        ])
        .output()
        .unwrap();
    if !probe.status.success() {
        eprintln!(
            "skipped: cannot mount /proc here: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        return;
    }
    let mut launch = Launch::new(Setup::default());
    launch.proc_subset_pid = true;
    let daemon = launch.start().await;
    let metrics = metrics_at(&daemon.admin_url).await;
    let value = |name: &str| -> f64 {
        (metrics.lines())
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") > 0.0);
    assert!(value("process_cpu_seconds_total") >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        (now - 60.0..=now + 1.0).contains(&started),
        "started at {started}, now {now}"
    );
}

#[tokio::test]
async fn readiness_comes_from_a_background_probe_never_from_s3_per_probe() {
    let setup = Setup::default().set("admin.probe_interval", "\"300ms\"");
    let daemon = Launch::new(setup).start().await;
    let http = client();
    let ready = || {
        let req = http.get(format!("{}/readyz", daemon.admin_url));
        async move { req.send().await.unwrap().status() }
    };
    let probes = || daemon.s3.log().total("PROBE");
    assert_eq!(ready().await, StatusCode::OK);
    let before = probes();
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(ready().await, StatusCode::OK);
    }
    // The background probe's own, one per 300 ms (and one more at either end), whatever the
    // checks asked.
    let allowed = 2 + started.elapsed().as_millis() as u64 / 300;
    assert!(
        probes() - before <= allowed,
        "100 readiness checks in {:?}, {} bucket probes",
        started.elapsed(),
        probes() - before
    );
    // By default an S3 outage does not make the instance unready: it can serve what it has.
    daemon.s3.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ready().await, StatusCode::OK);
}

#[tokio::test]
async fn a_bucket_in_another_region_is_named_in_the_log_and_readyz() {
    // What AWS answers a request sent to the wrong region's endpoint.
    let up = FaultyUpstream::start(Fault::Answer(
        "HTTP/1.1 301 Moved Permanently\r\nx-amz-bucket-region: eu-west-1\r\n\
         content-length: 0\r\n\r\n",
    ))
    .await;
    let setup = Setup::default()
        .endpoint(&up.endpoint())
        .set("admin.probe_interval", "\"200ms\"");
    let daemon = Launch::new(setup).start().await;
    let ready = client()
        .get(format!("{}/readyz", daemon.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let why = ready.text().await.unwrap();
    assert!(why.contains("region eu-west-1, not us-east-1"), "{why}");
    let r = get_as_alice(&client(), &daemon.object_url("photos/a.png")).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    // Said once at warning level, however many rounds the probe fails.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let logs = daemon.logs();
    let warnings = (logs.lines())
        .filter(|l| l.contains("WARN") && l.contains("bucket probe failed"))
        .count();
    assert_eq!(warnings, 1, "{logs}");
    assert!(logs.contains("set the store's region"), "{logs}");
}

#[tokio::test]
async fn a_bad_request_that_names_no_region_error_is_not_blamed_on_the_region() {
    // A store that labels its answers with a region of its own and refuses a GET with a
    // body that is not an S3 error: S3 said 400, nothing about regions.
    let up = FaultyUpstream::start(Fault::Answer(
        "HTTP/1.1 400 Bad Request\r\nx-amz-bucket-region: garage\r\n\
         content-type: text/plain\r\ncontent-length: 11\r\n\r\nbad request",
    ))
    .await;
    let daemon = Launch::new(Setup::default().endpoint(&up.endpoint()))
        .start()
        .await;
    let r = get_as_alice(&client(), &daemon.object_url("photos/a.png")).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let logs = daemon.logs();
    let line = (logs.lines())
        .find(|l| l.contains("request failed"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("S3 answered 400"), "{line}");
    assert!(!line.contains("region"), "{line}");
}

#[tokio::test]
async fn an_s3_outage_makes_the_instance_unready_when_configured() {
    let setup = Setup::default()
        .set("admin.probe_interval", "\"200ms\"")
        .set("admin.unready_on_s3_outage", "true");
    let daemon = Launch::new(setup).start().await;
    let http = client();
    let ready = || {
        let req = http.get(format!("{}/readyz", daemon.admin_url));
        async move { req.send().await.unwrap() }
    };
    assert_eq!(ready().await.status(), StatusCode::OK);
    daemon.s3.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let r = ready().await;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "still ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer.contains("bucket test-bucket"), "{answer}");
}

#[tokio::test]
async fn an_instance_whose_buckets_never_answered_is_not_ready() {
    let up = FaultyUpstream::start(Fault::ServiceUnavailable).await;
    let h = Setup::default()
        .endpoint(&up.endpoint())
        .set("s3.retries", "0")
        .start()
        .await;
    let r = h
        .http
        .get(format!("{}/readyz", h.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.requests(), 0, "the probe's GETs are not object requests");
    assert!(up.probes() > 0);
}

/// An S3 error answer with `code`.
fn s3_error(status: &str, code: &str) -> &'static str {
    let body = format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code></Error>");
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    Box::leak(answer.into_boxed_str())
}

#[tokio::test]
async fn the_readiness_probe_needs_only_the_access_reads_need_and_names_s3s_refusal() {
    // A key that need not exist, under the alias's prefix, where the reads' access is.
    let h = Setup::default()
        .set("buckets.files.prefix", "\"shared/\"")
        .start()
        .await;
    let r = (h.http.get(format!("{}/readyz", h.admin_url)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let probe = format!("shared/{}", s3warden::s3::PROBE_KEY);
    assert!(h.s3_log().requests("PROBE", BUCKET, &probe) > 0);
    assert_eq!(h.s3_log().all(), 0);

    let readiness = |answer: &'static str| async move {
        let up = FaultyUpstream::start(Fault::Answer(answer)).await;
        let h = Setup::default().endpoint(&up.endpoint()).start().await;
        let r = (h.http.get(format!("{}/readyz", h.admin_url)))
            .send()
            .await
            .unwrap();
        assert_eq!(up.requests(), 0);
        assert!(up.probes() > 0);
        (r.status(), r.text().await.unwrap())
    };
    // Credentials for objects alone (no s3:ListBucket, GCS's object roles): S3 will not say
    // whether the key exists, but it took the keys, the region, the clock and the bucket.
    let (status, _) = readiness(s3_error("403 Forbidden", "AccessDenied")).await;
    assert_eq!(status, StatusCode::OK);
    // What went wrong is S3's own code, which a bucket HEAD's empty answer never carried.
    for (answer, code) in [
        (
            s3_error("403 Forbidden", "SignatureDoesNotMatch"),
            "SignatureDoesNotMatch",
        ),
        (
            s3_error("403 Forbidden", "InvalidAccessKeyId"),
            "InvalidAccessKeyId",
        ),
        (s3_error("404 Not Found", "NoSuchBucket"), "NoSuchBucket"),
    ] {
        let (status, why) = readiness(answer).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{code}");
        assert!(why.contains(code), "{code}: {why}");
    }
}

#[tokio::test]
async fn s3_refusing_our_clock_is_503_with_one_log_line_naming_the_skew() {
    // What S3 answers a request signed half an hour late: its own time in the body, and in Date.
    let server_time = SystemTime::now() - Duration::from_secs(1800);
    let rfc3339 = humantime::format_rfc3339_seconds(server_time).to_string();
    let date = httpdate::fmt_http_date(server_time);
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>RequestTimeTooSkewed</Code>\
         <Message>The difference between the request time and the current time is too large.\
         </Message><RequestTime>20261130T120000Z</RequestTime><ServerTime>{rfc3339}</ServerTime>\
         <MaxAllowedSkewMilliseconds>900000</MaxAllowedSkewMilliseconds><RequestId>R</RequestId>\
         <HostId>H</HostId></Error>"
    );
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\ndate: {date}\r\ncontent-type: application/xml\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let up = FaultyUpstream::start(Fault::Answer(Box::leak(answer.into_boxed_str()))).await;
    // Probe rounds over more than a second: S3's time stands still in this answer, so the
    // skew each round measures grows, and that is still the same failure.
    let setup =
        (Setup::default().endpoint(&up.endpoint())).set("admin.probe_interval", "\"200ms\"");
    let daemon = Launch::new(setup).start().await;
    let http = client();
    let r = http
        .get(daemon.object_url("photos/a.png"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "unavailable");
    assert_eq!(up.requests(), 1, "a clock error is not retried");
    // A HEAD's 403 has no body: S3's Date says the same.
    let r = http
        .head(daemon.object_url("photos/b.png"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let logs = daemon.logs();
    let clock = |l: &&str| l.contains("clock");
    let lines: Vec<&str> = (logs.lines().filter(clock))
        .filter(|l| l.contains("request failed"))
        .collect();
    assert_eq!(lines.len(), 2, "one line per request:\n{logs}");
    // And one from the bucket probe, however many rounds it has failed.
    let probe = logs.lines().filter(clock).filter(|l| l.contains("probe"));
    assert_eq!(probe.count(), 1, "{logs}");
    assert!(up.probes() >= 8, "{} bucket probes", up.probes());
    for line in lines {
        let seconds: i64 = line
            .split("clock is ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no skew in {line}"));
        assert!((1795..=1805).contains(&seconds), "{line}");
        assert!(
            line.contains("ahead of S3's") && line.contains("NTP"),
            "{line}"
        );
    }
}

#[test]
fn a_busy_listen_address_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let text =
        Setup::default().render_for_daemon(dir.path(), "http://127.0.0.1:9", port, free_port());
    let config = dir.path().join("s3warden.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_s3warden"))
        .args(["serve", "-c"])
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    let stderr = stderr_of_failure(&out);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}: ")),
        "{stderr}"
    );
}

/// The unit's `ExecReload=` command, pointed at this build and `config`.
fn exec_reload(config: &Path) -> tokio::process::Command {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/s3warden.service"),
    )
    .unwrap();
    let line = (unit.lines())
        .find_map(|l| l.strip_prefix("ExecReload="))
        .expect("the unit reloads");
    let mut words = line.split_whitespace().map(|w| {
        w.replace("/usr/local/bin/s3warden", env!("CARGO_BIN_EXE_s3warden"))
            .replace("/etc/s3warden/s3warden.toml", config.to_str().unwrap())
    });
    let mut command = tokio::process::Command::new(words.next().unwrap());
    command
        .args(words)
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    command
}

#[tokio::test]
async fn systemctl_reload_fails_when_the_new_config_is_refused() {
    let daemon = Launch::new(Setup::default()).start().await;
    daemon.s3.put(BUCKET, "photos/a.png", b"a").unwrap();
    daemon.s3.put(BUCKET, "team/a.png", b"t").unwrap();
    let http = client();
    let status = |key: &'static str| {
        let req = http.get(daemon.object_url(key)).bearer_auth(token("alice"));
        async move { req.send().await.unwrap().status() }
    };
    let config = daemon.config_path();
    let good = std::fs::read_to_string(&config).unwrap();
    assert_eq!(status("team/a.png").await, StatusCode::FORBIDDEN);

    // A good config: applied, and the command says so.
    let with_team = format!(
        "{good}\n[[rules]]\nbucket = \"files\"\nprefix = \"team/\"\nmethods = [\"GET\"]\nallow = \"authenticated\"\n"
    );
    std::fs::write(&config, &with_team).unwrap();
    let out = exec_reload(&config).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status("team/a.png").await, StatusCode::OK);

    // A config check-config refuses: non-zero, every reason, the daemon never asked.
    let missing = with_team.replace(
        "hmac_secret_file = \"hmac-secret\"",
        "hmac_secret_file = \"missing-file\"",
    );
    std::fs::write(&config, missing).unwrap();
    let out = exec_reload(&config).output().await.unwrap();
    let stderr = stderr_of_failure(&out);
    assert!(stderr.contains("auth.hmac_secret_file"), "{stderr}");

    // A config only the daemon can refuse (a certificate that does not parse): non-zero with
    // the daemon's reason, which the journal gets too; the old config keeps serving.
    std::fs::write(daemon.dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(daemon.dir.path().join("key.pem"), "not a key").unwrap();
    let bad_tls =
        format!("{with_team}\n[server.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n");
    std::fs::write(&config, bad_tls).unwrap();
    let out = exec_reload(&config).output().await.unwrap();
    let stderr = stderr_of_failure(&out);
    assert!(stderr.starts_with("reload refused: "), "{stderr}");
    assert!(
        daemon.logs().contains("reload refused"),
        "{}",
        daemon.logs()
    );
    assert_eq!(status("team/a.png").await, StatusCode::OK);
    assert_eq!(status("photos/a.png").await, StatusCode::OK);
}

#[tokio::test]
async fn readyz_answers_while_s3_hangs() {
    // S3 accepts and never answers; an S3 call per probe would take the whole 30 s timeout.
    let up = FaultyUpstream::start(Fault::Hang).await;
    let h = Setup::default()
        .endpoint(&up.endpoint())
        .set("s3.timeout", "\"30s\"")
        .start()
        .await;
    for _ in 0..5 {
        let asked = Instant::now();
        let r = h
            .http
            .get(format!("{}/readyz", h.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "answered after {:?}",
            asked.elapsed()
        );
        let why = r.text().await.unwrap();
        assert!(why.contains("not been probed yet"), "{why}");
    }
}

/// The access-log line (JSON) of the request that carried `user_agent`.
fn access_line(daemon: &Daemon, user_agent: &str) -> serde_json::Value {
    let logs = daemon.logs();
    let line = (logs.lines())
        .filter(|l| l.contains("\"target\":\"access\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["fields"]["user_agent"] == user_agent);
    line.unwrap_or_else(|| panic!("no access line for {user_agent}:\n{logs}"))["fields"].clone()
}

#[tokio::test]
async fn forwarded_addresses_and_request_ids_count_only_from_trusted_proxies() {
    for trusted in [true, false] {
        let mut setup = Setup::default().set("log.format", "\"json\"");
        if trusted {
            setup = setup.set(
                "server.trusted_proxies",
                "[\"127.0.0.1/32\", \"10.0.0.0/8\"]",
            );
        }
        let daemon = Launch::new(setup).start().await;
        let agent = format!("test-agent/{trusted}");
        let r = client()
            .get(daemon.object_url("public/none.txt"))
            .header("user-agent", &agent)
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.0.0.5")
            .header("x-request-id", "req-42")
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let line = access_line(&daemon, &agent);
        if trusted {
            // The first hop from the right that is not a trusted proxy; its id kept.
            assert_eq!(line["client"], "203.0.113.7", "{line}");
            assert_eq!(id, "req-42");
        } else {
            assert_eq!(line["client"], "127.0.0.1", "{line}");
            assert_ne!(id, "req-42");
        }
        assert_eq!(line["request_id"], id.as_str(), "{line}");
    }
}

/// Sends `bytes` on a new connection to `daemon` and reads what comes back until it closes.
async fn exchange(daemon: &Daemon, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = daemon.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client_and_a_connection_without_is_refused() {
    let setup = Setup::default()
        .set("log.format", "\"json\"")
        .set("server.proxy_protocol", "true");
    let daemon = Launch::new(setup).start().await;
    daemon.s3.put(BUCKET, "public/p.txt", b"public").unwrap();
    let request = |agent: &str| {
        format!(
            "GET /files/public/p.txt HTTP/1.1\r\nHost: x\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n"
        )
    };
    // v1, as `send-proxy` writes it.
    let v1 = format!(
        "PROXY TCP4 203.0.113.9 10.0.0.1 56324 8080\r\n{}",
        request("proxy-v1")
    );
    let answer = exchange(&daemon, v1.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("public"), "{answer}");
    // v2, binary, as `send-proxy-v2` writes it: an IPv6 client.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend([0x21, 0x21]); // version 2, PROXY; TCP over IPv6
    v2.extend(36u16.to_be_bytes());
    v2.extend(
        "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v2.extend(
        "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v2.extend(40000u16.to_be_bytes());
    v2.extend(8080u16.to_be_bytes());
    v2.extend(request("proxy-v2").as_bytes());
    let answer = exchange(&daemon, &v2).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(access_line(&daemon, "proxy-v1")["client"], "203.0.113.9");
    assert_eq!(access_line(&daemon, "proxy-v2")["client"], "2001:db8::7");
    // Without the header: closed, unanswered.
    let answer = exchange(&daemon, request("no-header").as_bytes()).await;
    assert_eq!(answer, "", "a connection without a PROXY header is refused");
    assert!(!daemon.logs().contains("no-header"));
}

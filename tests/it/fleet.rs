//! Three s3warden instances behind a consistent-hash balancer (nginx, then HAProxy), each
//! started from its shipped recipe in `deploy/`, against one real S3: each object is cached once
//! fleet-wide and fetched from S3 once. Skipped only where the balancer is not installed (CI
//! installs both).

use std::path::{Path, PathBuf};
use std::process::Command;

use http::StatusCode;

use crate::common::process::{Process, tools_installed};
use crate::common::*;

const NGINX: &str = "/usr/sbin/nginx";
const HAPROXY: &str = "/usr/sbin/haproxy";
const OBJECTS: usize = 200;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nginx,
    Haproxy,
}

/// A balancer running a shipped recipe, pointed at local instances.
struct Balancer {
    _process: Process,
    url: String,
    _dir: tempfile::TempDir,
}

/// The text of a recipe in `deploy/`.
fn recipe(path: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "deploy", path]
        .iter()
        .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`; `from` must be there, so a changed recipe fails loudly.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the recipe no longer has {from:?}");
    text.replace(from, to)
}

impl Balancer {
    /// The recipe of `kind`, listening on loopback, with its three example instances
    /// (`10.0.0.11:8080` …) replaced by the local ones on `ports`.
    async fn start(kind: Kind, ports: &[u16; 3]) -> Balancer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (mut text, listen) = match kind {
            Kind::Nginx => (
                recipe("nginx/s3warden-fleet.conf"),
                (
                    "listen 80;".to_string(),
                    format!("listen 127.0.0.1:{port};"),
                ),
            ),
            Kind::Haproxy => (
                recipe("haproxy/haproxy.cfg"),
                ("bind :80".to_string(), format!("bind 127.0.0.1:{port}")),
            ),
        };
        text = substitute(&text, &listen.0, &listen.1);
        for (i, p) in ports.iter().enumerate() {
            text = substitute(
                &text,
                &format!("10.0.0.1{}:8080", i + 1),
                &format!("127.0.0.1:{p}"),
            );
        }
        let mut command = match kind {
            Kind::Nginx => nginx_command(dir.path(), &text),
            Kind::Haproxy => {
                let path = dir.path().join("haproxy.cfg");
                std::fs::write(&path, text).unwrap();
                let mut command = Command::new(HAPROXY);
                command.arg("-db").arg("-f").arg(path);
                command
            }
        };
        let url = format!("http://127.0.0.1:{port}");
        let what = format!("{kind:?}");
        let process = Process::start(&mut command, &format!("{url}/_health"), &what).await;
        Balancer {
            _process: process,
            url,
            _dir: dir,
        }
    }
}

/// nginx in the foreground with the recipe included in a minimal `http` block, all its files in
/// `dir`.
fn nginx_command(dir: &Path, recipe: &str) -> Command {
    let d = dir.display();
    std::fs::write(dir.join("s3warden-fleet.conf"), recipe).unwrap();
    let main = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n    access_log off;\n\
         client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
         include {d}/s3warden-fleet.conf;\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    let mut command = Command::new(NGINX);
    command
        .args(["-e", "stderr", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(path);
    command
}

fn key(i: usize) -> String {
    format!("photos/fleet-{i:03}.png")
}

/// Reads every object through the balancer; all must be 200 with the right bytes.
async fn read_all(lb: &Balancer, t: &str) {
    let http = client();
    for chunk in (0..OBJECTS).collect::<Vec<_>>().chunks(20) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let req = http
                .get(format!("{}/files/{}", lb.url, key(i)))
                .bearer_auth(t);
            tasks.push(tokio::spawn(async move {
                let r = req.send().await.unwrap();
                (i, r.status(), r.bytes().await.unwrap())
            }));
        }
        for task in tasks {
            let (i, status, body) = task.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{}", key(i));
            assert_eq!(body, format!("object {i}").as_bytes());
        }
    }
}

fn gets(h: &Harness) -> u64 {
    (0..OBJECTS)
        .map(|i| h.s3_log().requests("GET", BUCKET, &key(i)))
        .sum()
}

#[tokio::test]
async fn a_fleet_behind_nginx_fetches_each_object_once() {
    if tools_installed(&[NGINX]) {
        fleet_behind(Kind::Nginx).await;
    }
}

#[tokio::test]
async fn a_fleet_behind_haproxy_fetches_each_object_once() {
    if tools_installed(&[HAPROXY]) {
        fleet_behind(Kind::Haproxy).await;
    }
}

async fn fleet_behind(kind: Kind) {
    // As the recipes say: HAProxy sends PROXY v2 headers; nginx sends X-Forwarded-For and
    // X-Request-Id, which instances believe from it.
    let setup = || match kind {
        Kind::Haproxy => Setup::default().set("server.proxy_protocol", "true"),
        Kind::Nginx => Setup::default().set("server.trusted_proxies", "[\"127.0.0.1\"]"),
    };
    let a = setup().start().await;
    let mut b = setup().start_with(a.s3.clone()).await;
    let c = setup().start_with(a.s3.clone()).await;
    for i in 0..OBJECTS {
        a.put(&key(i), format!("object {i}").as_bytes());
    }
    let lb = Balancer::start(kind, &[a.addr.port(), b.addr.port(), c.addr.port()]).await;
    let t = token("alice");

    // The request id comes from nginx (its 32 hex digits) or from the instance (20).
    let r = client()
        .get(format!("{}/files/{}", lb.url, key(0)))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap();
    let expected = match kind {
        Kind::Nginx => 32,
        Kind::Haproxy => 20,
    };
    assert_eq!(id.len(), expected, "{id}");
    // Twice through the balancer: 200 objects, 200 S3 GETs in all.
    read_all(&lb, &t).await;
    read_all(&lb, &t).await;
    assert_eq!(
        gets(&a),
        OBJECTS as u64,
        "each object fetched once fleet-wide"
    );
    let owned: Vec<u64> = [&a, &b, &c]
        .iter()
        .map(|h| h.app.cache().size_now().1)
        .collect();
    let mut misses = Vec::new();
    for h in [&a, &b, &c] {
        misses.push(h.metric("s3warden_cache_misses_total").await.unwrap_or(0));
    }
    let (ma, mb, mc) = (misses[0], misses[1], misses[2]);
    assert_eq!(ma + mb + mc, OBJECTS as u64);
    assert!(
        ma > 0 && mb > 0 && mc > 0,
        "the ring spreads objects: {ma} {mb} {mc} ({owned:?})"
    );
    eprintln!(
        "fleet behind {kind:?}: 400 reads of {OBJECTS} objects, {} S3 GETs; instances own {ma}, {mb}, {mc}",
        gets(&a)
    );

    // A URL signed by one instance is served through the balancer, whichever instance owns it.
    let signed = sign_urls(
        &lb.url,
        &t,
        serde_json::json!({"bucket": "files", "keys": [key(7), key(8), key(9)]}),
    )
    .await;
    for item in signed["items"].as_array().unwrap() {
        // Each instance's public_url is its own address here; a fleet would share one.
        let mut url = item["url"].as_str().unwrap().to_owned();
        for h in [&a, &b, &c] {
            url = url.replace(&h.url, &lb.url);
        }
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}");
    }

    // Fleet-wide purge through the admin listeners.
    // The CLI talks to the in-process admin listeners, so it must not block this runtime.
    let mut purge = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3warden"));
    purge
        .args([
            "purge",
            "--fleet",
            &a.admin_url,
            "--fleet",
            &b.admin_url,
            "--fleet",
            &c.admin_url,
        ])
        .arg(format!("files/{}", key(7)));
    let purge = purge.output().await.unwrap();
    assert!(
        purge.status.success(),
        "{}",
        String::from_utf8_lossy(&purge.stderr)
    );
    let r = client()
        .get(format!("{}/files/{}", lb.url, key(7)))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "MISS", "purged on its owner");
    assert_eq!(a.s3_log().requests("GET", BUCKET, &key(7)), 2);

    // One instance goes away: its objects move to the others, at most one extra GET each.
    let before = gets(&a);
    b.shutdown().await;
    read_all(&lb, &t).await;
    let moved = gets(&a) - before;
    assert!(
        moved <= mb,
        "only B's {mb} objects moved, fetched {moved} times"
    );
    for i in 0..OBJECTS {
        let n = a.s3_log().requests("GET", BUCKET, &key(i));
        assert!(n <= 3, "{} fetched {n} times", key(i));
    }
    // And once moved, they are cached on their new owners.
    let settled = gets(&a);
    read_all(&lb, &t).await;
    assert_eq!(gets(&a), settled);
    eprintln!(
        "fleet behind {kind:?}: after stopping one instance, {moved} extra S3 GETs for its {mb} objects"
    );
}

#[tokio::test]
async fn an_s3_outage_behind_nginx_is_not_retried_on_another_instance() {
    if !tools_installed(&[NGINX]) {
        return;
    }
    // Every instance's S3 answers 503: an instance's own retries are all S3 should see.
    let s3 = crate::common::faults::FaultyUpstream::start(
        crate::common::faults::Fault::ServiceUnavailable,
    )
    .await;
    let setup = || {
        Setup::default()
            .endpoint(&s3.endpoint())
            .set("s3.retries", "1")
    };
    let (a, b, c) = (
        setup().start().await,
        setup().start().await,
        setup().start().await,
    );
    let lb = Balancer::start(Kind::Nginx, &[a.addr.port(), b.addr.port(), c.addr.port()]).await;
    let r = client()
        .get(format!("{}/files/{}", lb.url, key(1)))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        s3.requests(),
        2,
        "one instance asked S3 (a try and a retry); no second instance was sent to S3 again"
    );
}

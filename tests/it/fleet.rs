//! Three s3warden instances behind nginx with consistent hashing on the path, against one real
//! S3: each object is cached once fleet-wide and fetched from S3 once. Skipped only where nginx
//! is not installed (CI installs it).

use std::process::Command;

use http::StatusCode;

use crate::common::process::{Process, tools_installed};
use crate::common::*;

const NGINX: &str = "/usr/sbin/nginx";
const OBJECTS: usize = 200;

/// nginx as a consistent-hash balancer in front of `ports`, from the shipped recipe's settings.
struct Balancer {
    _process: Process,
    url: String,
    _dir: tempfile::TempDir,
}

impl Balancer {
    async fn start(ports: &[u16]) -> Balancer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let servers: String = ports
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;\n"))
            .collect();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n    access_log off;\n\
             client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
             upstream s3warden_fleet {{\n        hash $uri consistent;\n{servers}        keepalive 16;\n    }}\n\
             server {{\n        listen 127.0.0.1:{port};\n        client_max_body_size 0;\n\
             proxy_request_buffering off;\n        proxy_buffering off;\n\
             location / {{\n            proxy_pass http://s3warden_fleet;\n\
             proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n\
             proxy_set_header Host $host;\n            proxy_next_upstream error timeout http_502 http_503;\n\
             proxy_next_upstream_tries 2;\n            proxy_connect_timeout 2s;\n        }}\n    }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let mut command = Command::new(NGINX);
        command
            .args(["-e", "stderr", "-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(&path);
        let process = Process::start(&mut command, &format!("{url}/_health"), "nginx").await;
        Balancer {
            _process: process,
            url,
            _dir: dir,
        }
    }
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
async fn a_fleet_behind_consistent_hashing_fetches_each_object_once() {
    if !tools_installed(&[NGINX]) {
        return;
    }
    let a = Setup::default().start().await;
    let mut b = Setup::default().start_with(a.s3.clone()).await;
    let c = Setup::default().start_with(a.s3.clone()).await;
    for i in 0..OBJECTS {
        a.put(&key(i), format!("object {i}").as_bytes());
    }
    let lb = Balancer::start(&[a.addr.port(), b.addr.port(), c.addr.port()]).await;
    let t = token("alice");

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
    let misses = |h: &Harness| {
        h.app
            .metrics()
            .render()
            .lines()
            .find(|l| l.starts_with("s3warden_cache_misses_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (ma, mb, mc) = (misses(&a), misses(&b), misses(&c));
    assert_eq!(ma + mb + mc, OBJECTS as u64);
    assert!(
        ma > 0 && mb > 0 && mc > 0,
        "the ring spreads objects: {ma} {mb} {mc} ({owned:?})"
    );
    eprintln!(
        "fleet: 400 reads of {OBJECTS} objects, {} S3 GETs; instances own {ma}, {mb}, {mc}",
        gets(&a)
    );

    // A URL signed by instance A is served through the balancer, whichever instance owns it.
    let signed: serde_json::Value = a
        .http
        .post(format!("{}/_sign", a.url))
        .bearer_auth(&t)
        .json(&serde_json::json!({"bucket": "files", "keys": [key(7), key(8), key(9)]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for item in signed["items"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap().replace(&a.url, &lb.url);
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
    eprintln!("fleet: after stopping one instance, {moved} extra S3 GETs for its {mb} objects");
}

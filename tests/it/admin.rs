//! The admin listener: no browser may drive it, and with `admin.token_file` only the token's
//! holder reads metrics or purges; probes stay open.

use http::StatusCode;

use crate::common::*;

async fn call(
    h: &Harness,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = h.http.request(method, format!("{}{path}", h.admin_url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn browser_requests_are_refused_even_without_a_token() {
    let h = Setup::default().start().await;
    h.put("photos/a.png", b"cached");
    assert_eq!(
        h.get("photos/a.png", Some(&token("alice"))).await.status(),
        200
    );
    // What a cross-site page can make a browser send: a "simple" POST with an Origin, or a
    // navigation that carries Sec-Fetch-Site.
    for headers in [
        &[
            ("origin", "https://evil.example"),
            ("content-type", "text/plain"),
        ][..],
        &[("origin", "null")],
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[("sec-fetch-site", "same-origin")],
    ] {
        let r = call(&h, http::Method::POST, "/cache/purge", headers).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let r = call(&h, http::Method::GET, "/metrics", headers).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{headers:?}");
    }
    let r = h.get("photos/a.png", Some(&token("alice"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT", "nothing was purged");
    // A page whose own host name an attacker points at 127.0.0.1 (DNS rebinding) sends
    // neither header on a same-origin fetch, but it names its own host.
    for host in ["rebind.test:9901", "attacker.example"] {
        let r = call(&h, http::Method::GET, "/metrics", &[("host", host)]).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{host}");
        let r = call(&h, http::Method::POST, "/cache/purge", &[("host", host)]).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{host}");
    }
    let r = call(
        &h,
        http::Method::GET,
        "/metrics",
        &[("host", "localhost:9901")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A typed URL (Sec-Fetch-Site: none), curl and scrapers are served.
    let r = call(
        &h,
        http::Method::GET,
        "/metrics",
        &[("sec-fetch-site", "none")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = call(&h, http::Method::POST, "/cache/purge", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn with_a_token_file_metrics_and_purges_need_the_token() {
    let h = Setup::default()
        .set("admin.token_file", "\"admin-token\"")
        .start()
        .await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let wrong = format!("Bearer {ADMIN_TOKEN}x");
    let short = "Bearer admin-token";
    for (method, path) in [
        (http::Method::GET, "/metrics"),
        (http::Method::POST, "/cache/purge"),
        (http::Method::DELETE, "/cache/files/photos/a.png"),
    ] {
        for headers in [
            &[][..],
            &[("authorization", wrong.as_str())],
            &[("authorization", short)],
            &[("authorization", "Basic YWRtaW46YWRtaW4=")],
        ] {
            let r = call(&h, method.clone(), path, headers).await;
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} {headers:?}"
            );
            assert!(r.headers().contains_key("www-authenticate"));
        }
        let r = call(&h, method.clone(), path, &[("authorization", &bearer)]).await;
        assert_eq!(r.status(), StatusCode::OK, "{method} {path}");
        // The token does not excuse a browser.
        let r = call(
            &h,
            method.clone(),
            path,
            &[
                ("authorization", &bearer),
                ("origin", "https://evil.example"),
            ],
        )
        .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    // With a token, any host name may reach the listener (it may be off loopback).
    let r = call(
        &h,
        http::Method::GET,
        "/metrics",
        &[
            ("authorization", &bearer),
            ("host", "s3warden-1.internal:9901"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Probes need nothing.
    assert_eq!(
        call(&h, http::Method::GET, "/healthz", &[]).await.status(),
        200
    );
    assert_eq!(
        call(&h, http::Method::GET, "/readyz", &[]).await.status(),
        200
    );
}

#[tokio::test]
async fn the_purge_command_sends_the_token() {
    let h = Setup::default()
        .set("admin.token_file", "\"admin-token\"")
        .start()
        .await;
    h.put("photos/a.png", b"cached");
    assert_eq!(
        h.get("photos/a.png", Some(&token("alice"))).await.status(),
        200
    );
    let purge = |with_token: bool| {
        // tokio's Command: the test's own runtime must keep serving while the command runs.
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3warden"));
        command.args(["purge", "--fleet", &h.admin_url]);
        if with_token {
            command
                .arg("--token-file")
                .arg(h.dir.path().join("admin-token"));
        }
        command.args(["--config", "/nonexistent", "files/photos/a.png"]);
        command.output()
    };
    let out = purge(false).await.unwrap();
    let stderr = stderr_of_failure(&out);
    assert!(
        stderr.contains(&format!(
            "{}: files/photos/a.png: refused, 401 Unauthorized: the admin token is missing or wrong",
            h.admin_url
        )),
        "{stderr}"
    );
    let r = h.get("photos/a.png", Some(&token("alice"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT", "nothing was purged");
    let out = purge(true).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = h.get("photos/a.png", Some(&token("alice"))).await;
    assert_eq!(r.headers()["x-cache"], "MISS", "purged");
}

#[test]
fn purge_errors_name_the_instance_and_the_cause() {
    // Nothing listens there: the line names the URL and says the connection was refused.
    let port = free_port();
    let admin = format!("http://127.0.0.1:{port}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_s3warden"))
        .args([
            "purge",
            "--fleet",
            &admin,
            "-c",
            "/nonexistent",
            "files/a.png",
        ])
        .output()
        .unwrap();
    let stderr = stderr_of_failure(&out);
    assert!(
        stderr.contains(&format!("{admin}: files/a.png: ")),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[tokio::test]
async fn metrics_read_by_a_prometheus_parser() {
    let h = Setup::default().start().await;
    h.put("photos/a.png", b"png");
    for _ in 0..2 {
        let r = h.get("photos/a.png", Some(&token("alice"))).await;
        assert_eq!(r.status(), 200);
    }
    let text = h.metrics_text().await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let sample = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"))
            .value
            .clone()
    };
    let value = |v: prometheus_parse::Value| match v {
        prometheus_parse::Value::Counter(n)
        | prometheus_parse::Value::Gauge(n)
        | prometheus_parse::Value::Untyped(n) => n,
        other => panic!("not a single value: {other:?}"),
    };
    for s in &scrape.samples {
        // Units come before `_total`, never after.
        assert!(!s.metric.contains("_total_"), "{}", s.metric);
        for unit in ["_bytes_", "_seconds_"] {
            if let Some((_, after)) = s.metric.split_once(unit) {
                assert!(
                    ["total", "sum", "count", "bucket"].contains(&after),
                    "{}",
                    s.metric
                );
            }
        }
    }
    assert_eq!(value(sample("s3warden_client_sent_bytes_total", &[])), 6.0);
    assert_eq!(value(sample("s3warden_s3_fetched_bytes_total", &[])), 3.0);
    assert_eq!(value(sample("s3warden_cache_hits_total", &[])), 1.0);
    assert_eq!(
        value(sample(
            "s3warden_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )),
        1.0
    );
    assert!(value(sample("process_resident_memory_bytes", &[])) > 1e6);
    assert!(value(sample("process_open_fds", &[])) > 0.0);
    assert!(value(sample("process_start_time_seconds", &[])) > 1.7e9);
    match sample(
        "s3warden_request_duration_seconds",
        &[("route", "object"), ("cache", "HIT")],
    ) {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().unwrap().count, 1.0, "{buckets:?}");
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

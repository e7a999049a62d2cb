//! Signing throughput: one `POST /_sign` of 1,000 keys, for both kinds, answered in-process by
//! the same `App` the daemon runs. "cold" batches use keys never signed before; "warm" ones
//! repeat a batch within its window (a page reload). The baseline is the same 1,000-key call
//! with every key denied: parsing, token check and rules, without any signing.
//! Prints one JSON line per case (median of the runs).
//!
//! `cargo run --release --example sign_batch -- [runs]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use s3warden::App;
use s3warden::config::{Config, Environment};

const CONFIG: &str = r#"
[s3]
endpoint = "http://127.0.0.1:9"
region = "us-east-1"
addressing = "path"
[buckets.employees]
bucket = "bench-bucket"
[auth]
hmac_secret_env = "BENCH_HMAC"
[signing]
secret_files = ["url-key"]
[[rules]]
bucket = "employees"
prefix = "photos/"
allow = "authenticated"
"#;

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("url-key"),
        "bench-url-signing-key-0123456789abcdef",
    )
    .unwrap();
    let secret = "bench-hmac-secret-0123456789abcdef0123";
    let env = Environment::from_pairs([
        ("AWS_ACCESS_KEY_ID", "BENCHKEY"),
        ("AWS_SECRET_ACCESS_KEY", "bench-secret"),
        ("BENCH_HMAC", secret),
    ]);
    let config = Config::from_toml(CONFIG, dir.path(), &env, &s3warden::check_config).unwrap();
    let app = App::new(config).await.unwrap();
    let token = s3warden::mint_hs256(
        secret.as_bytes(),
        serde_json::json!({"sub": "bench"}),
        Duration::from_secs(3600),
    );
    let batch = |prefix: &str, run: usize| -> Vec<String> {
        (0..1000)
            .map(|i| format!("{prefix}/run-{run}/employee-{i:04}.jpg"))
            .collect()
    };
    for (case, kind, prefix, cold) in [
        ("baseline_1000_denied", "proxy", "private", false),
        ("proxy_1000", "proxy", "photos", true),
        ("s3_1000_cold", "s3", "photos", true),
        ("s3_1000_warm", "s3", "photos", false),
    ] {
        let mut times = Vec::with_capacity(runs);
        for run in 0..runs {
            let keys = batch(prefix, if cold { run } else { 0 });
            let body =
                serde_json::json!({"bucket": "employees", "keys": keys, "kind": kind}).to_string();
            let request = http::Request::post("/_sign")
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let started = Instant::now();
            let response = app.handle(request).await;
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            times.push(started.elapsed());
            assert!(bytes.len() > 1000);
        }
        times.sort();
        let median = times[runs / 2];
        let p99 = times[(runs * 99 / 100).min(runs - 1)];
        println!(
            "{{\"case\": \"{case}\", \"median_ms\": {:.3}, \"p99_ms\": {:.3}, \"runs\": {runs}}}",
            median.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
}

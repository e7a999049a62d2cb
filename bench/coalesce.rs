//! 1,000 concurrent requests for one cold key through a running s3warden, then the number of
//! S3 GETs it made for them (from its own metrics). Prints one JSON line.
//!
//! `cargo run --release --example coalesce -- URL TOKEN ADMIN_URL`

use std::time::Instant;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(token), Some(admin)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: coalesce URL TOKEN ADMIN_URL");
        std::process::exit(2);
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1000)
        .build()
        .unwrap();
    let metrics = format!("{admin}/metrics");
    let before = s3_gets(&client, &metrics).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let req = client.get(&url).bearer_auth(&token);
            tokio::spawn(async move {
                let r = req.send().await.unwrap();
                (r.status().as_u16(), r.bytes().await.unwrap().len())
            })
        })
        .collect();
    let mut ok = 0;
    let mut bytes = 0;
    for t in tasks {
        let (status, len) = t.await.unwrap();
        ok += usize::from(status == 200);
        bytes = len;
    }
    let took = started.elapsed();
    let after = s3_gets(&client, &metrics).await;
    println!(
        "{{\"requests\": 1000, \"ok\": {ok}, \"body_bytes\": {bytes}, \"s3_gets\": {}, \"ms\": {:.1}}}",
        after - before,
        took.as_secs_f64() * 1e3
    );
}

/// GETs s3warden has sent to S3 so far, from its admin `/metrics`.
async fn s3_gets(client: &reqwest::Client, metrics: &str) -> u64 {
    let text = client
        .get(metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("s3warden_s3_requests_total{method=\"GET\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

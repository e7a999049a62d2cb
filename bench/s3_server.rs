//! The embedded S3 (the one `s3warden demo` runs) as its own process, for benchmarks:
//! `cargo run --release --example s3_server -- ROOT ADDR BUCKET [anonymous]`. Credentials come
//! from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`; with `anonymous`, unsigned requests are
//! accepted (for nginx, which cannot sign). Prints `ready http://ADDR` and serves until killed.
//! With `S3_STATS_FILE` set, it writes the body bytes its GETs answered with to that file,
//! ten times a second (what a deployment pays S3 for).

use s3warden::demo::s3::EmbeddedS3;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(addr), Some(bucket)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: s3_server ROOT ADDR BUCKET");
        std::process::exit(2);
    };
    let anonymous = args.next().as_deref() == Some("anonymous");
    let access = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
    let credentials = (!anonymous).then_some((access.as_str(), secret.as_str()));
    let root = std::path::PathBuf::from(root);
    std::fs::create_dir_all(&root).expect("root");
    let s3 = EmbeddedS3::start_with(&root, addr.parse().expect("addr"), credentials)
        .await
        .expect("start");
    s3.create_bucket(&bucket).expect("bucket");
    println!("ready {}", s3.endpoint());
    let Some(stats) = std::env::var_os("S3_STATS_FILE") else {
        std::future::pending::<()>().await;
        return;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        let _ = std::fs::write(&stats, s3.log().sent_bytes().to_string());
    }
}

//! The chaos soak: two s3warden daemons (HTTP/1.1 plain, HTTP/2 over TLS) against the embedded
//! S3 behind a fault-injecting proxy, with rotating temporary credentials, many clients, and
//! faults, reloads and purges all the time. Every answer is checked; it prints what happened
//! and exits 1 on any violation.
//!
//! `cargo run --example soak -- --bin target/debug/s3warden --duration 10m` (bench/soak.sh
//! builds and runs it).

mod daemon;
mod faults;
mod model;
mod secrets;
mod traffic;

// The loopback credentials endpoint and JWKS server of the integration tests.
#[path = "../../tests/it/common"]
#[allow(dead_code)]
mod common {
    pub mod credentials;
    pub mod jwks;
}

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::credentials::{CredentialsServer, Issuer};
use common::jwks::JwksServer;
use daemon::{BUCKET, Daemon, Shared};
use faults::Faults;
use model::Versions;
use secrets::Secrets;
use traffic::{Tally, Target, World};

/// Clients per daemon.
const CLIENTS: usize = 8;

/// How far over the cache's capacity a daemon's memory (anonymous resident memory and memory
/// files) may go.
const MEMORY_HEADROOM: u64 = 32 << 20;

struct Args {
    bin: PathBuf,
    duration: Duration,
    /// Where to copy the daemons' logs and configs at the end.
    keep: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut bin = PathBuf::from("target/debug/s3warden");
    let mut duration = Duration::from_secs(600);
    let mut keep = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--bin" => bin = PathBuf::from(value),
            "--keep" => keep = Some(PathBuf::from(value)),
            "--duration" => {
                duration =
                    humantime::parse_duration(&value).map_err(|e| format!("--duration: {e}"))?
            }
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(Args {
        bin,
        duration,
        keep,
    })
}

fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("soak: {e}\nusage: soak [--bin PATH] [--duration 10m] [--keep DIR]");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let violations = runtime.block_on(run(args));
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(args: Args) -> usize {
    let started = Instant::now();
    let work = tempfile::tempdir().expect("work dir");
    let dir = work.path().to_owned();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");

    // Temporary credentials: a new key every 20 s, each valid for 40 s.
    let issuer = Issuer::new(Duration::from_secs(20), Duration::from_secs(40));
    let credentials = CredentialsServer::start(issuer.clone()).await;
    let s3_root = dir.join("s3");
    std::fs::create_dir_all(&s3_root).expect("s3 root");
    let s3 = s3warden::demo::s3::EmbeddedS3::start_with_auth(
        &s3_root,
        "127.0.0.1:0".parse().unwrap(),
        issuer.clone(),
    )
    .await
    .expect("embedded S3");
    s3.create_bucket(BUCKET).expect("bucket");
    let (faults, proxy) = Faults::start(s3.addr(), Duration::from_secs(3)).await;
    // Up until the end: a key published during the last rotation may be fetched only by the
    // final reads.
    let jwks = Arc::new(
        JwksServer::start(Some(
            include_str!("../../tests/fixtures/jwks.json").to_owned(),
        ))
        .await,
    );
    let secrets = Arc::new(Secrets::new(dir.clone(), &fixtures));
    let shared = Shared {
        dir: dir.clone(),
        s3: proxy,
        jwks_url: jwks.url(),
        credentials_url: credentials.url(),
        fixtures: fixtures.clone(),
    };

    let seeds = std::sync::atomic::AtomicU64::new(1);
    // Each daemon reads its own part of the bucket, written only through it.
    let mut targets = Vec::new();
    for (name, prefix, tls) in [("h1", "h1/", false), ("h2", "h2/", true)] {
        let versions = Versions::default();
        let seeded_at = Instant::now();
        for key in traffic::keys() {
            let body = traffic::new_body(&seeds);
            s3.put(BUCKET, &format!("{prefix}{key}"), &body.bytes())
                .expect("seed object");
            versions.seed(&key, Some(body), seeded_at);
        }
        let daemon = Daemon::start(&args.bin, &shared, name, prefix, tls).await;
        let http = client(tls, &fixtures);
        targets.push(Arc::new(Target {
            daemon,
            http,
            versions,
            made: Default::default(),
            etags: Default::default(),
            signed: Default::default(),
            chunked: tokio::sync::Semaphore::new(2),
        }));
    }
    let world = Arc::new(World {
        targets: targets.clone(),
        faults: faults.clone(),
        secrets: secrets.clone(),
        tally: Tally::default(),
        seed: seeds,
    });
    let admin_http = reqwest::Client::new();
    let baselines: Vec<u64> = targets
        .iter()
        .map(|t| {
            let (all, to_s3) = t.daemon.descriptors(proxy);
            all - to_s3
        })
        .collect();

    println!(
        "soak: {} with {} clients on each of 2 daemons (HTTP/1.1 plain, HTTP/2 over TLS)",
        humantime::format_duration(args.duration),
        CLIENTS
    );
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut clients = tokio::task::JoinSet::new();
    for target in &targets {
        for _ in 0..CLIENTS {
            clients.spawn(world.clone().client(target.clone(), deadline));
        }
    }
    let chaos = tokio::spawn(chaos(world.clone(), jwks.clone(), deadline));
    let sampler = tokio::spawn(sample(targets.clone(), admin_http.clone()));
    while clients.join_next().await.is_some() {}
    let events = chaos.await.expect("chaos task");

    // Faults stop; after one cache ttl every key must serve its latest version.
    faults.on.store(false, Ordering::SeqCst);
    faults.burst.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    for target in &targets {
        final_reads(&world, target).await;
    }
    sampler.abort();
    for target in &targets {
        target.daemon.sample(&admin_http).await;
    }

    // Nothing left open: with the cache purged and the clients' connections timed out,
    // descriptors return to where they were (the S3 connection pool aside).
    let mut fds_end = Vec::new();
    for (target, baseline) in targets.iter().zip(&baselines) {
        target.daemon.purge(&admin_http, None).await;
        let wait = Instant::now();
        let left = loop {
            let (all, to_s3) = target.daemon.descriptors(proxy);
            if all - to_s3 <= *baseline || wait.elapsed() > Duration::from_secs(30) {
                break (all - to_s3, to_s3);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if left.0 > *baseline {
            let metrics = admin_http
                .get(format!("{}/metrics", target.daemon.admin))
                .send()
                .await;
            let text = match metrics {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            world.tally.violation(format!(
                "{}: {} descriptors open at the end, {baseline} at the start: {} (memory files {}, cache entries {})",
                target.daemon.name,
                left.0,
                target.daemon.describe_descriptors(),
                daemon::metric(&text, "s3warden_memory_files"),
                daemon::metric(&text, "s3warden_cache_entries"),
            ));
        }
        fds_end.push(left);
    }
    for target in &targets {
        let memory = target.daemon.peak_memory.load(Ordering::Relaxed);
        if memory > target.daemon.capacity + MEMORY_HEADROOM {
            world.tally.violation(format!(
                "{}: peak memory {} MiB over the cache capacity + {} MiB",
                target.daemon.name,
                memory >> 20,
                MEMORY_HEADROOM >> 20
            ));
        }
        if let Err(e) = target.daemon.stop(Duration::from_secs(30)).await {
            world.tally.violation(e);
        }
        for problem in log_problems(&target.daemon.log) {
            world
                .tally
                .violation(format!("{} log: {problem}", target.daemon.name));
        }
    }

    report(
        &world, &events, &targets, &baselines, &fds_end, &issuer, started,
    );
    if let Some(keep) = &args.keep {
        std::fs::create_dir_all(keep).expect("--keep");
        for target in &targets {
            for ext in ["log", "toml"] {
                let name = format!("{}.{ext}", target.daemon.name);
                let _ = std::fs::copy(dir.join(&name), keep.join(&name));
            }
        }
    }
    world.tally.violations().len()
}

/// An HTTP client for a daemon: HTTP/1.1 for the plain one, HTTP/2 for the TLS one.
fn client(tls: bool, fixtures: &std::path::Path) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .no_proxy();
    let builder = if tls {
        let pem = std::fs::read(fixtures.join("tls_cert.pem")).expect("cert");
        builder
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("cert"))
            .http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    builder.build().expect("client")
}

/// What the chaos task did.
#[derive(Default)]
struct Events {
    bursts: u64,
    hmac: u64,
    signing: u64,
    jwks: u64,
    purges: u64,
    purge_all: u64,
}

/// Faults, reloads and purges until `deadline`.
async fn chaos(world: Arc<World>, jwks: Arc<JwksServer>, deadline: tokio::time::Instant) -> Events {
    let mut events = Events::default();
    let admin = reqwest::Client::new();
    let mut next_burst = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut next_rotation = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut rotation = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        if now >= next_burst {
            world.faults.burst.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(fastrand::u64(500..2000))).await;
            world.faults.burst.store(false, Ordering::SeqCst);
            events.bursts += 1;
            next_burst = now + Duration::from_secs(fastrand::u64(8..16));
        }
        if now >= next_rotation {
            let reload_all = || async {
                for target in &world.targets {
                    target.daemon.reload().await?;
                }
                Ok(())
            };
            let result = match rotation % 3 {
                0 => {
                    events.hmac += 1;
                    world.secrets.rotate_hmac(reload_all).await
                }
                1 => {
                    events.signing += 1;
                    world.secrets.rotate_signing(reload_all).await
                }
                _ => {
                    events.jwks += 1;
                    world
                        .secrets
                        .rotate_rsa(|doc| jwks.set(Some(doc.to_owned())))
                        .await;
                    Ok(())
                }
            };
            if let Err(e) = result {
                world.tally.violation(format!("reload: {e}"));
            }
            rotation += 1;
            next_rotation = tokio::time::Instant::now() + Duration::from_secs(fastrand::u64(5..9));
        }
        let target = &world.targets[fastrand::usize(..world.targets.len())];
        let keys = traffic::keys();
        if target
            .daemon
            .purge(&admin, Some(&keys[fastrand::usize(..keys.len())]))
            .await
        {
            events.purges += 1;
        }
        if fastrand::u8(0..40) == 0 && target.daemon.purge(&admin, None).await {
            events.purge_all += 1;
        }
        for target in &world.targets {
            target.versions.prune(Duration::from_secs(90));
        }
    }
    events
}

/// Samples every daemon's memory and descriptors four times a second.
async fn sample(targets: Vec<Arc<Target>>, http: reqwest::Client) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        for target in &targets {
            target.daemon.sample(&http).await;
        }
    }
}

/// Reads every key once, faults off: each must be its latest version.
async fn final_reads(world: &World, target: &Target) {
    let mut keys = traffic::keys();
    keys.extend(target.made.lock().unwrap().iter().cloned());
    for key in keys {
        let user = model::USERS
            .into_iter()
            .find(|u| u.may("GET", &key))
            .expect("a reader");
        let token = world.secrets.token(user);
        let mut request = target
            .http
            .get(format!("{}/soak/{key}", target.daemon.base));
        if let Some(token) = &token {
            request = request.bearer_auth(&token.jwt);
        }
        let from = Instant::now();
        let answer = request.send().await;
        let name = target.daemon.name;
        let (status, body) = match answer {
            Ok(r) => (r.status(), r.bytes().await),
            Err(e) => {
                world
                    .tally
                    .violation(format!("{name} final GET {key}: {e}"));
                continue;
            }
        };
        let to = Instant::now();
        let Ok(body) = body else {
            world
                .tally
                .violation(format!("{name} final GET {key}: body cut off"));
            continue;
        };
        let seen = match status.as_u16() {
            200 => model::Seen::Whole(&body),
            404 => model::Seen::Missing,
            _ => {
                world
                    .tally
                    .violation(format!("{name} final GET {key}: {status} with faults off"));
                continue;
            }
        };
        if let Err(e) = target.versions.check(&key, from, to, seen) {
            world.tally.violation(format!("{name} final: {e}"));
        }
    }
}

/// Panics and errors in a daemon's log (JSON lines).
fn log_problems(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|line| {
            line.contains("panicked")
                || serde_json::from_str::<serde_json::Value>(line)
                    .map_or(!line.trim().is_empty(), |v| v["level"] == "ERROR")
        })
        .map(|line| line.chars().take(300).collect())
        .collect()
}

fn report(
    world: &World,
    events: &Events,
    targets: &[Arc<Target>],
    baselines: &[u64],
    fds_end: &[(u64, u64)],
    issuer: &Issuer,
    started: Instant,
) {
    let ops = world.tally.ops();
    let total: u64 = ops.values().sum();
    let list = |m: Vec<(String, u64)>| {
        m.into_iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "ran {} in all",
        humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
    );
    println!(
        "requests: {total} ({})",
        list(ops.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    );
    println!(
        "statuses: {}",
        list(
            world
                .tally
                .statuses()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        )
    );
    println!(
        "faults injected: {} ({} bursts of 503); S3 requests passed untouched: {}",
        list(
            world
                .faults
                .record
                .counts()
                .into_iter()
                .map(|(k, v)| (format!("{k:?}").to_lowercase(), v))
                .collect()
        ),
        events.bursts,
        world.faults.record.forwarded.load(Ordering::Relaxed)
    );
    println!(
        "rotations: HS256 secret {}, URL-signing secret {}, JWKS key {}, S3 credentials {} keys used; purges: {} keys, {} whole caches",
        events.hmac,
        events.signing,
        events.jwks,
        issuer.used().len(),
        events.purges,
        events.purge_all
    );
    println!(
        "errors explained by a fault or a rotation: {}",
        world.tally.explained.load(Ordering::Relaxed)
    );
    for ((target, baseline), (end, pool)) in targets.iter().zip(baselines).zip(fds_end) {
        let mib = |b: u64| b as f64 / 1048576.0;
        let [anon, file, files, cached] = *target.daemon.peak_parts.lock().unwrap();
        println!(
            "{}: peak memory (anonymous resident + memory files) {:.1} MiB (bound {} MiB: anonymous {:.1}, memory files {:.1}; {:.1} cached; code and other file pages {:.1}, not counted); descriptors {} at the start, peak {}, {} at the end (+{} pooled S3 connections)",
            target.daemon.name,
            mib(target.daemon.peak_memory.load(Ordering::Relaxed)),
            (target.daemon.capacity + MEMORY_HEADROOM) >> 20,
            mib(anon),
            mib(files),
            mib(cached),
            mib(file),
            baseline,
            target.daemon.peak_fds.load(Ordering::Relaxed),
            end,
            pool
        );
    }
    let violations = world.tally.violations();
    println!("violations: {}", violations.len());
    for v in violations.iter().take(30) {
        println!("  {v}");
    }
}

//! A hand-written upstream that misbehaves on purpose: hangs, resets mid-body, answers 503.
//! Used only where a real S3 cannot be made to fail the way a test needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Accept, read the request, never answer.
    Hang,
    /// Answer 503 with an S3 error body.
    ServiceUnavailable,
    /// Announce `total` bytes, send `sent`, then close the connection.
    ResetMidBody { total: usize, sent: usize },
    /// Announce `total` bytes, send `first`, wait for `release`, then send the rest.
    StallMidBody { total: usize, first: usize },
    /// Answer every request with exactly these bytes.
    Answer(&'static str),
}

pub struct FaultyUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    /// Readiness probes, which `requests` leaves out.
    pub probes: Arc<AtomicU64>,
    /// When each request's head arrived.
    pub arrivals: Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
    release: Arc<Release>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyUpstream {
    pub async fn start(fault: Fault) -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let probes = Arc::new(AtomicU64::new(0));
        let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let release = Arc::new(Release::default());
        let counts = (requests.clone(), probes.clone());
        let (a, n) = (arrivals.clone(), release.clone());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (c, a, n) = (counts.clone(), a.clone(), n.clone());
                tokio::spawn(serve(socket, fault, c, a, n));
            }
        });
        FaultyUpstream {
            addr,
            requests,
            probes,
            arrivals,
            release,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Bucket probes answered so far.
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::SeqCst)
    }

    /// Lets every stalled (and future) response finish.
    pub fn release(&self) {
        self.release.done.store(true, Ordering::SeqCst);
        self.release.notify.notify_waiters();
    }
}

#[derive(Default)]
struct Release {
    done: AtomicBool,
    notify: Notify,
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut socket: TcpStream,
    fault: Fault,
    (requests, probes): (Arc<AtomicU64>, Arc<AtomicU64>),
    arrivals: Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
    release: Arc<Release>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    // The readiness probe's GET is answered like the rest, but not counted: the tests count
    // object requests.
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or_default();
    let probe = path.ends_with(&format!("/{}", s3warden::s3::PROBE_KEY));
    if probe {
        probes.fetch_add(1, Ordering::SeqCst);
    } else {
        requests.fetch_add(1, Ordering::SeqCst);
        arrivals.lock().unwrap().push(std::time::Instant::now());
    }
    let ok_head = |total: usize| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {total}\r\ncontent-type: application/octet-stream\r\n\
             etag: \"fault\"\r\nlast-modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n"
        )
    };
    match fault {
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Fault::ServiceUnavailable => {
            let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>secret detail at s3.internal</Message></Error>";
            let response = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
        Fault::ResetMidBody { total, sent } => {
            let _ = socket.write_all(ok_head(total).as_bytes()).await;
            let _ = socket.write_all(&vec![b'x'; sent]).await;
            let _ = socket.flush().await;
            drop(socket);
        }
        Fault::Answer(response) => {
            let _ = socket.write_all(response.as_bytes()).await;
        }
        Fault::StallMidBody { total, first } => {
            let _ = socket.write_all(ok_head(total).as_bytes()).await;
            let _ = socket.write_all(&vec![b'x'; first]).await;
            let _ = socket.flush().await;
            let released = release.notify.notified();
            if !release.done.load(Ordering::SeqCst) {
                released.await;
            }
            let _ = socket.write_all(&vec![b'y'; total - first]).await;
        }
    }
}

type ProxyError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A proxy in front of a real S3 that fails each write (PUT, POST, DELETE) the first time it
/// sees it, as S3 asks to be retried (503 `SlowDown`; a CompleteMultipartUpload gets S3's 200
/// with an `InternalError` body), and forwards everything else untouched, `Host` included, so
/// SigV4 signatures still verify.
pub struct FlakyWrites {
    pub addr: SocketAddr,
    state: Arc<Flaky>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Flaky {
    /// Writes failed so far.
    failed: AtomicU64,
    /// Where the rest goes.
    target: std::sync::OnceLock<String>,
    /// The writes seen, by method and target.
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Fail writes after S3 took them (their answers lost), not before.
    lose_answers: std::sync::atomic::AtomicBool,
    http: reqwest::Client,
}

impl FlakyWrites {
    pub async fn start() -> FlakyWrites {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Flaky::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = shared.clone();
                let service = hyper::service::service_fn(move |req| flaky(req, state.clone()));
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(socket);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        FlakyWrites { addr, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where requests that are not failed go.
    pub fn forward_to(&self, endpoint: &str) {
        self.state
            .target
            .set(endpoint.to_owned())
            .expect("set once");
    }

    /// From now on a failed write first reaches S3, and only its answer is lost (503).
    pub fn lose_answers(&self) {
        self.state.lose_answers.store(true, Ordering::SeqCst);
    }

    /// Writes failed so far.
    pub fn failed(&self) -> u64 {
        self.state.failed.load(Ordering::SeqCst)
    }
}

impl Drop for FlakyWrites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn flaky(
    req: hyper::Request<hyper::body::Incoming>,
    state: Arc<Flaky>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, ProxyError> {
    use http_body_util::{BodyExt, Full};
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let write = parts.method != http::Method::GET && parts.method != http::Method::HEAD;
    let first = (state.seen.lock().unwrap()).insert(format!("{} {target}", parts.method));
    let fail = write && first;
    let lose = state.lose_answers.load(Ordering::SeqCst);
    let failure = |status, code| {
        state.failed.fetch_add(1, Ordering::SeqCst);
        let xml = format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code></Error>");
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/xml")
            .body(Full::new(bytes::Bytes::from(xml)))
    };
    if fail && !lose {
        let completing = parts.method == http::Method::POST && target.contains("uploadId=");
        return Ok(if completing {
            failure(200, "InternalError")?
        } else {
            failure(503, "SlowDown")?
        });
    }
    let url = format!("{}{target}", state.target.get().expect("forward_to"));
    let mut forwarded = state.http.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        forwarded = forwarded.header(name, value);
    }
    let answer = forwarded.send().await?;
    let mut out = hyper::Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != http::header::TRANSFER_ENCODING {
            out = out.header(name, value);
        }
    }
    let bytes = answer.bytes().await?;
    if fail {
        return Ok(failure(503, "SlowDown")?);
    }
    Ok(out.body(Full::new(bytes))?)
}

//! The S3 the daemons see: a proxy in front of the embedded S3 that forwards each request
//! as it came (SigV4 signs the Host header, so nothing is rewritten) and breaks some of them:
//! 503 bursts, hangs past the daemons' S3 timeout, bodies cut off halfway, slow bodies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// 503 SlowDown, not forwarded (during a burst, and now and then alone).
    Unavailable,
    /// Read, never answered: past the daemon's S3 timeout.
    Hang,
    /// Forwarded; the body stops halfway and the connection closes.
    Reset,
    /// Forwarded; the body comes in pieces with pauses (each under the timeout).
    Slow,
}

/// What the proxy did, and when, per object key (a daemon's 502/503/504 is explained by a
/// fault on its key in the seconds before and during its request).
#[derive(Default)]
pub struct Record {
    /// Faults by S3 path (`/bucket/key`).
    by_path: Mutex<HashMap<String, Vec<(Instant, Kind)>>>,
    /// Fault counts by kind.
    counts: Mutex<HashMap<Kind, u64>>,
    /// Requests forwarded untouched.
    pub forwarded: std::sync::atomic::AtomicU64,
}

impl Record {
    fn note(&self, path: &str, kind: Kind) {
        let now = Instant::now();
        self.by_path
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .push((now, kind));
        *self.counts.lock().unwrap().entry(kind).or_default() += 1;
    }

    /// Whether a fault hit `path` between `from` and `to` (of one of `kinds`, if given).
    pub fn hit(&self, path: &str, from: Instant, to: Instant, kinds: Option<&[Kind]>) -> bool {
        let by_path = self.by_path.lock().unwrap();
        by_path.get(path).is_some_and(|faults| {
            faults
                .iter()
                .any(|(t, k)| *t >= from && *t <= to && kinds.is_none_or(|kinds| kinds.contains(k)))
        })
    }

    /// Faults injected, by kind.
    pub fn counts(&self) -> Vec<(Kind, u64)> {
        let mut counts: Vec<_> = self
            .counts
            .lock()
            .unwrap()
            .iter()
            .map(|(k, n)| (*k, *n))
            .collect();
        counts.sort();
        counts
    }
}

/// The proxy's switches.
pub struct Faults {
    pub record: Record,
    /// Faults are injected while this is on.
    pub on: AtomicBool,
    /// Every request is answered 503 while this is on.
    pub burst: AtomicBool,
    /// How long a hang lasts (longer than the daemons' S3 timeout).
    pub hang: Duration,
    upstream: SocketAddr,
}

type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

impl Faults {
    /// Listens on a loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, hang: Duration) -> (Arc<Faults>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let faults = Arc::new(Faults {
            record: Record::default(),
            on: AtomicBool::new(true),
            burst: AtomicBool::new(false),
            hang,
            upstream,
        });
        let f = faults.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, Infallible>(f.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        (faults, addr)
    }

    fn choose(&self, req: &Request<Incoming>) -> Option<Kind> {
        let path = req.uri().path();
        // The readiness probe (a HEAD of the bucket) passes: only object requests break.
        let is_object = path.trim_matches('/').contains('/');
        if !self.on.load(Ordering::Relaxed) || !is_object {
            return None;
        }
        if self.burst.load(Ordering::Relaxed) {
            return Some(Kind::Unavailable);
        }
        let roll = fastrand::u32(0..1000);
        let read = req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD;
        // Writes break only before they reach S3, so the soak knows they were not stored.
        match (read, roll) {
            (_, 0..10) => Some(Kind::Unavailable),
            (true, 10..20) => Some(Kind::Hang),
            (true, 20..40) if req.method() == hyper::Method::GET => Some(Kind::Reset),
            (true, 40..70) if req.method() == hyper::Method::GET => Some(Kind::Slow),
            _ => None,
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let fault = self.choose(&req);
        let path = req.uri().path().to_owned();
        if let Some(kind) = fault {
            self.record.note(&path, kind);
        }
        match fault {
            Some(Kind::Unavailable) => {
                // Read the request's body first, as S3 does, so the connection stays usable.
                let _ = req.into_body().collect().await;
                return unavailable();
            }
            Some(Kind::Hang) => {
                tokio::time::sleep(self.hang).await;
                return unavailable();
            }
            _ => {}
        }
        let Some(response) = self.forward(req).await else {
            return unavailable();
        };
        if fault.is_none() {
            self.record.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        let (parts, body) = response.into_parts();
        let body: ProxyBody = match fault {
            Some(Kind::Reset) => {
                let len = (parts.headers.get(hyper::header::CONTENT_LENGTH))
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(0);
                Cut {
                    inner: body,
                    left: len / 2,
                }
                .boxed()
            }
            Some(Kind::Slow) => Slow {
                inner: body,
                pause: None,
            }
            .boxed(),
            _ => body.map_err(|e| Box::new(e) as _).boxed(),
        };
        Response::from_parts(parts, body)
    }

    /// Sends the request to the embedded S3 on a new connection, as it came.
    async fn forward(&self, req: Request<Incoming>) -> Option<Response<Incoming>> {
        let stream = TcpStream::connect(self.upstream).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        sender.send_request(req).await.ok()
    }
}

fn unavailable() -> Response<ProxyBody> {
    let body =
        "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>injected</Message></Error>";
    Response::builder()
        .status(503)
        .header("content-type", "application/xml")
        .body(
            http_body_util::Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed(),
        )
        .expect("response")
}

/// A body that ends with an error after `left` bytes: hyper then closes the connection
/// without finishing the message.
struct Cut {
    inner: Incoming,
    left: u64,
}

impl hyper::body::Body for Cut {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(Some(Err("injected reset".into())));
        }
        match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let keep = (data.len() as u64).min(self.left);
                    self.left -= keep;
                    data.truncate(keep as usize);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => Poll::Ready(None),
        }
    }
}

/// A body that pauses 20–200 ms before each piece.
struct Slow {
    inner: Incoming,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for Slow {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let pause = self.pause.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep(Duration::from_millis(fastrand::u64(
                20..200,
            ))))
        });
        std::task::ready!(pause.as_mut().poll(cx));
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        self.pause = None;
        Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(e) as _)))
    }
}

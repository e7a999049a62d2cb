//! Listeners, the accept loop and graceful drain. Knows nothing of JWTs or S3: it hands each
//! request to a handler and keeps connections within their limits and timeouts.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use arc_swap::ArcSwapOption;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::body::Body;
use crate::framing::{FrameScan, FramingWatch};
use crate::sendfile::{self, Sink};

/// The TLS settings of a listener; a reload swaps them for new connections.
pub type Tls = Arc<ArcSwapOption<rustls::ServerConfig>>;

/// A certificate and key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// A rustls server config from PEM files' contents, offering HTTP/2 and HTTP/1.1 (ALPN).
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError("the certificate file holds no certificate".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError(format!("key file: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Scratch space that lives as long as one client connection, handed to the handler with each
/// request: a handler may remember things there about the connection (what it proved).
#[derive(Clone, Default)]
pub struct ConnectionLocal(Arc<std::sync::Mutex<http::Extensions>>);

impl ConnectionLocal {
    /// Runs `f` on the connection's extensions.
    pub fn with<R>(&self, f: impl FnOnce(&mut http::Extensions) -> R) -> R {
        f(&mut self.0.lock().expect("lock not poisoned"))
    }
}

/// What a connection runs on.
enum Transport {
    /// Plain TCP: large cached bodies go out with `sendfile`.
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Connection limits and timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to receive a complete request head.
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections beyond this are answered 503 and closed.
    pub max_connections: usize,
    /// Largest request head.
    pub max_header_size: usize,
    /// How long in-flight requests may finish after shutdown starts.
    pub shutdown_grace: Duration,
}

/// Something that answers requests.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Answers one request.
    fn call(
        &self,
        request: Request<Incoming>,
        connection: ConnectionLocal,
    ) -> impl Future<Output = Response<Body>> + Send;
    /// Called when a connection is opened (+1) or closed (-1), and when one is shed.
    fn connections(&self, _delta: i64) {}
    /// Called when a connection is refused at the limit.
    fn shed(&self) {}
}

/// A running listener set; `shutdown` starts the drain.
pub struct Server {
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
}

impl Server {
    /// Starts accepting on every listener, in plain HTTP.
    pub fn start<H: Handler>(listeners: Vec<TcpListener>, handler: H, limits: Limits) -> Server {
        Self::start_tls(listeners, handler, limits, Tls::default())
    }

    /// Starts accepting on every listener, with TLS whenever `tls` holds a config.
    pub fn start_tls<H: Handler>(
        listeners: Vec<TcpListener>,
        handler: H,
        limits: Limits,
        tls: Tls,
    ) -> Server {
        let (shutdown, watcher) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let local_addrs = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let tasks = listeners
            .into_iter()
            .map(|listener| {
                tokio::spawn(accept_loop(
                    listener,
                    handler.clone(),
                    limits.clone(),
                    slots.clone(),
                    watcher.clone(),
                    tls.clone(),
                ))
            })
            .collect();
        Server {
            shutdown,
            tasks,
            local_addrs,
        }
    }

    /// The addresses being served.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), and returns
    /// when every connection is closed.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// hyper's connection settings: both protocols for plain TCP (HTTP/2 by prior knowledge),
/// or only the one a TLS client negotiated with ALPN.
struct Builders {
    either: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Builders {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // No hyper timer for HTTP/1: the header timeout is enforced by `Activity::head_overdue`,
        // a few checks per timeout instead of a timer armed and cancelled on every request.
        builder
            .http1()
            // The read buffer bounds the request head: a larger head is answered 431.
            .max_buf_size(limits.max_header_size.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(limits.max_header_size as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Builders {
            http1: builder.clone().http1_only(),
            http2: builder.clone().http2_only(),
            either: builder,
        }
    }

    /// The builder for a TLS connection that negotiated `alpn`: HTTP/2 only for `h2`,
    /// HTTP/1.1 only otherwise (RFC 9113 §3.3: HTTP/2 over TLS is negotiated, never guessed).
    fn for_alpn(&self, alpn: Option<&[u8]>) -> &auto::Builder<TokioExecutor> {
        if alpn == Some(b"h2") {
            &self.http2
        } else {
            &self.http1
        }
    }
}

/// Streams per HTTP/2 connection.
const MAX_STREAMS: u32 = 128;

/// Connections over the limit that may be being refused at once; past this they are closed
/// without an answer.
const MAX_REFUSING: usize = 256;

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    tls: Tls,
) {
    let graceful = GracefulShutdown::new();
    let builders = Arc::new(Builders::new(&limits));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, _peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            handler.shed();
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                let (builders, tls) = (builders.clone(), tls.load_full());
                tokio::spawn(async move {
                    refuse(stream, tls, &builders).await;
                    drop(permit);
                });
            }
            continue;
        };
        let connection = Connection {
            handler: handler.clone(),
            builders: builders.clone(),
            limits: limits.clone(),
            watcher: graceful.watcher(),
        };
        let (tls, handler) = (tls.load_full(), handler.clone());
        tokio::spawn(async move {
            handler.connections(1);
            connection.serve(stream, tls).await;
            handler.connections(-1);
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

/// One accepted client connection and what serving it needs.
struct Connection<H> {
    handler: H,
    builders: Arc<Builders>,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
}

impl<H: Handler> Connection<H> {
    /// Serves the connection until it ends, goes idle, or misses its header timeout.
    async fn serve(self, stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>) {
        let (idle_timeout, head_timeout) =
            (self.limits.idle_timeout, self.limits.header_read_timeout);
        let max_head = self.limits.max_header_size.max(8192);
        let (stream, builder, framing) = match tls {
            None => (
                Transport::Plain(stream),
                &self.builders.either,
                FramingWatch::new(max_head),
            ),
            Some(config) => {
                let Some(tls) = handshake(stream, config, head_timeout).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol();
                let framing = if alpn == Some(b"h2") {
                    FramingWatch::http2(max_head)
                } else {
                    FramingWatch::http1(max_head)
                };
                let builder = self.builders.for_alpn(alpn);
                (Transport::Tls(Box::new(tls)), builder, framing)
            }
        };
        let framing = Arc::new(std::sync::Mutex::new(framing));
        let io = IdleIo::new(stream, framing.clone());
        let activity = io.activity.clone();
        let sink = io.sink.clone();
        let local = ConnectionLocal::default();
        let service = {
            let (handler, activity, framing) =
                (self.handler.clone(), activity.clone(), framing.clone());
            service_fn(move |mut request: Request<Incoming>| {
                if let Some(sink) = &sink
                    && request.version() < http::Version::HTTP_2
                {
                    request.extensions_mut().insert(sink.clone());
                }
                let local = local.clone();
                let handler = handler.clone();
                let busy = activity.busy();
                let ambiguous = framing.lock().expect("lock").next_is_ambiguous();
                async move {
                    if ambiguous {
                        return Ok(smuggling_refused());
                    }
                    let response = handler.call(request, local).await;
                    drop(busy);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::select! {
            result = self.watcher.watch(connection) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            _ = activity.idle_for(idle_timeout) => {
                tracing::debug!("closing idle connection");
            }
            _ = activity.head_overdue(&framing, head_timeout) => {
                tracing::debug!("closing a connection whose request head is overdue");
            }
        }
    }
}

/// A TLS handshake that must finish within `timeout`.
async fn handshake(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// 400 for an ambiguous request, closing the connection so nothing after it is read.
fn smuggling_refused() -> Response<Body> {
    const BODY: &str = "{\"error\":\"bad_request\",\"message\":\"ambiguous request framing\"}";
    let mut response = Response::new(Body::full(Bytes::from_static(BODY.as_bytes())));
    *response.status_mut() = http::StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// How long answering a connection over the limit may take.
const REFUSE_WITHIN: Duration = Duration::from_secs(2);

/// Answers a connection over the limit with 503 and closes it: a bare HTTP/1.1 answer on
/// plain TCP; on TLS, after the handshake, in the protocol the client negotiated (TLS clients
/// could not read a plain-text answer: they would see a broken handshake).
async fn refuse(
    mut stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    builders: &Builders,
) {
    let Some(config) = tls else {
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nretry-after: 1\r\nx-content-type-options: nosniff\r\n\
             connection: close\r\n\r\n{}",
            TOO_MANY.len(),
            TOO_MANY
        );
        let _ = tokio::time::timeout(REFUSE_WITHIN, async {
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
        return;
    };
    let _ = tokio::time::timeout(REFUSE_WITHIN, async {
        let tls = handshake(stream, config, REFUSE_WITHIN).await?;
        let builder = builders.for_alpn(tls.get_ref().1.alpn_protocol());
        let service = service_fn(|_request: Request<Incoming>| async {
            Ok::<_, Infallible>(too_many_connections())
        });
        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        Some(())
    })
    .await;
}

const TOO_MANY: &str = "{\"error\":\"unavailable\",\"message\":\"too many connections\"}";

fn too_many_connections() -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from_static(TOO_MANY.as_bytes())));
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    for (name, value) in [
        (http::header::CONTENT_TYPE, "application/json"),
        (http::header::RETRY_AFTER, "1"),
        (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (http::header::CONNECTION, "close"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    response
}

/// Whether a connection makes progress (every byte on HTTP/1; heads and data on HTTP/2), and
/// whether a handler is working on a request (a connection waiting for its answer is not
/// idle). Counting, not timestamps: no clock is read on the I/O path.
#[derive(Clone, Default)]
struct Activity(Arc<Counters>);

#[derive(Default)]
struct Counters {
    /// Reads and writes that made progress.
    moved: AtomicU64,
    /// Writes that made progress.
    sent: AtomicU64,
    /// Handlers running.
    busy: AtomicU64,
}

/// Marks a connection busy while a handler runs.
struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The idle and head checks look this many times per timeout; a connection is closed after
/// between `timeout` and `timeout * (1 + 1/QUIET_CHECKS)`.
const QUIET_CHECKS: u32 = 4;

impl Activity {
    fn touch(&self) {
        self.0.moved.fetch_add(1, Ordering::Relaxed);
    }

    fn sent(&self) {
        self.0.sent.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    fn busy(&self) -> Busy {
        self.0.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn answering(&self) -> bool {
        self.0.busy.load(Ordering::Relaxed) > 0
    }

    /// Resolves once nothing has moved for `timeout` while no handler was running.
    async fn idle_for(&self, timeout: Duration) {
        unchanged_for(timeout, || {
            (!self.answering()).then(|| self.0.moved.load(Ordering::Relaxed))
        })
        .await
    }

    /// Resolves once the connection has waited `timeout` for an HTTP/1 request head — its
    /// first, the next one on a kept-alive connection, or one trickling in (slowloris) — with no
    /// handler running and no answer going out.
    async fn head_overdue(&self, framing: &std::sync::Mutex<FramingWatch>, timeout: Duration) {
        unchanged_for(timeout, || {
            let framing = framing.lock().expect("lock");
            (!self.answering() && framing.awaiting_head())
                .then(|| (framing.heads(), self.0.sent.load(Ordering::Relaxed)))
        })
        .await
    }
}

/// Resolves once `probe` has given the same `Some` for `timeout`; `None` restarts the wait.
async fn unchanged_for<T: PartialEq>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) {
    let tick = timeout / QUIET_CHECKS;
    let mut seen = probe();
    let mut quiet = 0;
    loop {
        tokio::time::sleep(tick).await;
        let now = probe();
        if now.is_none() || now != seen {
            seen = now;
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet >= QUIET_CHECKS {
            return;
        }
    }
}

/// A stream that records when a connection makes progress (for the idle and header timeouts)
/// and follows request framing (for the smuggling check and the header timeout).
struct IdleIo {
    inner: Transport,
    activity: Activity,
    framing: Arc<std::sync::Mutex<FramingWatch>>,
    /// File ranges waiting to be sent with `sendfile` (plain TCP only).
    sink: Option<Sink>,
    /// On HTTP/2, the frames written: only heads and data are progress.
    written: Option<FrameScan>,
}

impl IdleIo {
    fn new(inner: Transport, framing: Arc<std::sync::Mutex<FramingWatch>>) -> Self {
        let written = framing
            .lock()
            .expect("lock")
            .is_http2()
            .then(FrameScan::default);
        IdleIo {
            sink: matches!(inner, Transport::Plain(_)).then(Sink::default),
            inner,
            framing,
            activity: Activity::default(),
            written,
        }
    }

    /// Records that the first `n` bytes of `bufs` went out.
    fn wrote(&mut self, bufs: &[std::io::IoSlice<'_>], mut n: usize) {
        let Some(scan) = &mut self.written else {
            if n > 0 {
                self.activity.sent();
            }
            return;
        };
        let mut progress = false;
        for buf in bufs {
            if n == 0 {
                break;
            }
            let take = n.min(buf.len());
            progress |= scan.scan(&buf[..take]).progress;
            n -= take;
        }
        if progress {
            self.activity.sent();
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, data),
            Transport::Tls(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Writes the first non-empty slice of `bufs` when a placeholder is among them: bytes before a
/// placeholder go out with `MSG_MORE` (so the head and the body share packets), a placeholder's
/// file range with `sendfile`.
fn poll_write_files(
    tcp: &TcpStream,
    sink: &Sink,
    cx: &mut Context<'_>,
    bufs: &[std::io::IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    use rustix::net::SendFlags;
    let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
        return Poll::Ready(Ok(0));
    };
    let slice: &[u8] = &bufs[first];
    let file = if sendfile::is_placeholder(slice) {
        Some(sink.locate(slice)?)
    } else {
        None
    };
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        let written = tcp.try_io(tokio::io::Interest::WRITABLE, || match &file {
            Some((file, offset)) => {
                let mut offset = *offset;
                let n = rustix::fs::sendfile(tcp, &**file, Some(&mut offset), slice.len())?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                Ok(n)
            }
            None => Ok(rustix::net::send(
                tcp,
                slice,
                SendFlags::MORE | SendFlags::NOSIGNAL,
            )?),
        });
        match written {
            Ok(n) => {
                if file.is_some() {
                    sink.advance(n);
                }
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let (progress, http2) = {
                let mut framing = self.framing.lock().expect("lock");
                (framing.feed(&buf.filled()[before..]), framing.is_http2())
            };
            if http2 && self.written.is_none() {
                // HTTP/2 by prior knowledge: the server writes nothing before the preface.
                self.written = Some(FrameScan::default());
            }
            if progress {
                self.activity.touch();
            }
        }
        result
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if sendfile::is_placeholder(data) {
            return self.poll_write_vectored(cx, &[std::io::IoSlice::new(data)]);
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result {
            self.wrote(&[std::io::IoSlice::new(data)], n);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = match (&this.inner, &this.sink) {
            (Transport::Plain(tcp), Some(sink))
                if bufs.iter().any(|b| sendfile::is_placeholder(b)) =>
            {
                poll_write_files(tcp, sink, cx, bufs)
            }
            _ => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        };
        if let Poll::Ready(Ok(n)) = result {
            self.wrote(bufs, n);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A handler around an `App` and its admin counterpart.
impl Handler for crate::App {
    fn call(
        &self,
        request: Request<Incoming>,
        connection: ConnectionLocal,
    ) -> impl Future<Output = Response<Body>> + Send {
        let app = self.clone();
        async move { app.handle_on(request, Some(&connection)).await }
    }
    fn connections(&self, delta: i64) {
        self.metrics().connections().inc_by(delta);
    }
    fn shed(&self) {
        self.metrics().shed();
    }
}

/// Bytes, for handlers that build small bodies.
pub fn text(status: http::StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::full(body.into()));
    *response.status_mut() = status;
    response
}

//! One client connection: the protocol it speaks (ALPN on TLS, detected on plain TCP), the
//! stream that watches its bytes (framing for the smuggling check, progress for the idle and
//! header timeouts), and the timers that close it.

use std::convert::Infallible;
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
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::framing::{FrameScan, FramingWatch};
use super::sendfile::{self, Sink, poll_write_files};
use super::streams::WithStreams;
use super::tls::handshake;
use super::{Body, Builders, Handler, Limits};

/// One accepted client connection and what serving it needs.
pub(super) struct Connection<H> {
    pub(super) handler: H,
    pub(super) builders: Arc<Builders>,
    pub(super) limits: Limits,
    pub(super) watcher: hyper_util::server::graceful::Watcher,
}

impl<H: Handler> Connection<H> {
    /// Serves the connection until it ends, goes idle, or misses its header timeout.
    pub(super) async fn serve(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
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
        let cork = io.cork.clone();
        let local = self.handler.open(peer);
        let service = {
            let (handler, activity, framing) =
                (self.handler.clone(), activity.clone(), framing.clone());
            service_fn(move |mut request: Request<Incoming>| {
                if request.version() >= http::Version::HTTP_2 {
                    request.extensions_mut().insert(sendfile::Http2);
                } else if let Some(sink) = &sink {
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
                    super::streams::answered();
                    drop(busy);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let connection = builder.serve_connection(TokioIo::new(io), service);
        // The connection before the timers: a request that arrived by the time a timer fired is
        // read (and the timer starts over), not dropped unanswered with the connection.
        tokio::select! {
            biased;
            result = WithStreams::new(Box::pin(self.watcher.watch(connection)), cork, idle_timeout) => {
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

/// What a connection runs on.
enum Transport {
    /// Plain TCP: large cached bodies go out with `sendfile`.
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
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
    /// While set (HTTP/2 only), writes are held in `held` and flushes wait ([`Cork`]).
    cork: Cork,
    /// Held bytes (from `held_from` on), in a reused buffer while there are any.
    held: Vec<u8>,
    held_from: usize,
    /// Once shut down for writing: until when, and how much more, the client's bytes are read
    /// and dropped ([`LINGER_FOR`]).
    linger: Option<(Pin<Box<tokio::time::Sleep>>, u64)>,
}

/// After an HTTP/1 connection is shut down for writing, what the client still sends is read
/// and dropped for this long, up to [`LINGER_BYTES`], as nginx's lingering close does. Closing
/// with unread bytes makes the kernel reset the connection, and a client still sending a body
/// that was answered early (a bad token, too large, S3 failing) gets the reset instead of the
/// answer. (HTTP/2 answers a stream early with a reset of that stream only.)
const LINGER_FOR: Duration = Duration::from_secs(2);
const LINGER_BYTES: u64 = 4 << 20;

/// Set while a connection's task runs its HTTP/2 streams: their answers are held and leave
/// together, in one write (and TLS record), when the task is done with them.
pub(super) type Cork = Arc<std::sync::atomic::AtomicBool>;

/// The most bytes a cork holds: one TLS record. Past it, they go out with the write that would
/// overflow it.
const HELD_AT_MOST: usize = crate::buffers::SIZE;

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
            cork: Cork::default(),
            held: Vec::new(),
            held_from: 0,
            linger: None,
        }
    }

    /// Whether writes are held back now.
    fn corked(&self) -> bool {
        self.written.is_some() && self.cork.load(Ordering::Relaxed)
    }

    /// Whether a write must go through the held bytes: held back now, or some still held.
    fn holding(&self) -> bool {
        self.corked() || !self.held().is_empty()
    }

    /// The bytes held and not yet written.
    fn held(&self) -> &[u8] {
        &self.held[self.held_from..]
    }

    /// Holds `bufs` (they fit), taking a buffer for them if none is held yet.
    fn hold(&mut self, bufs: &[std::io::IoSlice<'_>]) {
        if self.held.capacity() == 0 {
            self.held = crate::buffers::take();
        }
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
    }

    /// Writes the held bytes, and with them as much of `bufs` as the transport takes; returns
    /// how much of `bufs` was written, once nothing is held any more (the buffer goes back for
    /// reuse: an idle connection keeps none).
    fn poll_write_held(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        const SLICES: usize = 8;
        while !self.held().is_empty() {
            let held = self.held().len();
            let mut slices = [std::io::IoSlice::new(&[]); SLICES];
            slices[0] = std::io::IoSlice::new(&self.held[self.held_from..]);
            let more = bufs.len().min(SLICES - 1);
            slices[1..=more].copy_from_slice(&bufs[..more]);
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..=more])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            if n < held {
                self.held_from += n;
                continue;
            }
            crate::buffers::give_back(std::mem::take(&mut self.held));
            self.held_from = 0;
            return Poll::Ready(Ok(n - held));
        }
        Poll::Ready(Ok(0))
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
        if sendfile::is_placeholder(data) || self.holding() {
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
        if this.holding() {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            if this.corked() && this.held.len() + total <= HELD_AT_MOST {
                this.hold(bufs);
                this.wrote(bufs, total);
                return Poll::Ready(Ok(total));
            }
            let written = std::task::ready!(this.poll_write_held(cx, bufs))?;
            if written > 0 {
                this.wrote(bufs, written);
                return Poll::Ready(Ok(written));
            }
        }
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
        if self.corked() {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(self.poll_write_held(cx, &[]))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_write_held(cx, &[]))?;
        if self.linger.is_none() {
            std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            if self.written.is_some() {
                return Poll::Ready(Ok(()));
            }
            self.linger = Some((Box::pin(tokio::time::sleep(LINGER_FOR)), 0));
        }
        // Until the client closes too, or the time or byte allowance runs out.
        let this = &mut *self;
        let Some((deadline, read)) = &mut this.linger else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 8192];
        while *read < LINGER_BYTES && deadline.as_mut().poll(cx).is_pending() {
            let mut buf = ReadBuf::new(&mut scratch);
            match std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => *read += buf.filled().len() as u64,
                _ => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/2 `IdleIo` on one end of a loopback TCP connection, and the other end.
    async fn http2_pair() -> (IdleIo, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let framing = Arc::new(std::sync::Mutex::new(FramingWatch::http2(8192)));
        (IdleIo::new(Transport::Plain(server), framing), client)
    }

    /// What has arrived at `client` within a short wait.
    async fn arrived(client: &mut TcpStream) -> Vec<u8> {
        let mut got = vec![0; 1 << 20];
        match tokio::time::timeout(Duration::from_millis(100), client.read(&mut got)).await {
            Ok(Ok(n)) => got.truncate(n),
            _ => got.clear(),
        }
        got
    }

    #[tokio::test]
    async fn corked_writes_are_held_until_the_flush_after_the_cork() {
        let (mut io, mut client) = http2_pair().await;
        io.cork.store(true, Ordering::Relaxed);
        for piece in [&b"one "[..], b"two ", b"three "] {
            assert_eq!(io.write(piece).await.unwrap(), piece.len());
        }
        // A flush while corked sends nothing.
        io.flush().await.unwrap();
        assert_eq!(arrived(&mut client).await, b"");
        io.cork.store(false, Ordering::Relaxed);
        io.flush().await.unwrap();
        assert_eq!(arrived(&mut client).await, b"one two three ");
        // Its buffer went back for reuse: an idle connection holds none.
        assert_eq!(io.held.capacity(), 0);
    }

    #[tokio::test]
    async fn a_write_past_what_a_cork_holds_goes_out_after_the_held_bytes() {
        let (mut io, mut client) = http2_pair().await;
        io.cork.store(true, Ordering::Relaxed);
        io.write_all(b"head ").await.unwrap();
        let large = vec![b'x'; HELD_AT_MOST];
        io.write_all(&large).await.unwrap();
        io.cork.store(false, Ordering::Relaxed);
        io.flush().await.unwrap();
        let mut got = Vec::new();
        while got.len() < 5 + large.len() {
            let more = arrived(&mut client).await;
            assert!(!more.is_empty(), "only {} bytes arrived", got.len());
            got.extend(more);
        }
        assert_eq!(&got[..5], b"head ");
        assert!(got[5..].iter().all(|b| *b == b'x'));
        // Nothing is held any more: a write with the cork off goes straight out.
        io.write_all(b"tail").await.unwrap();
        assert_eq!(arrived(&mut client).await, b"tail");
    }

    #[tokio::test]
    async fn http1_is_never_corked() {
        let (mut io, mut client) = http2_pair().await;
        io.written = None;
        io.cork.store(true, Ordering::Relaxed);
        io.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert_eq!(arrived(&mut client).await, b"HTTP/1.1 200 OK\r\n");
    }
}

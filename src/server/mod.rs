//! The transport: listeners, the accept loop and graceful drain, TLS, each connection's I/O
//! with its timers and framing watch, and `sendfile` for large cached bodies. Knows nothing of
//! JWTs, rules or S3: it hands each request to a [`Handler`] and keeps connections within their
//! limits and timeouts.

mod body;
mod connection;
pub(crate) mod framing;
mod sendfile;
mod streams;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::rustls;

pub use body::{Body, BoxError, ByteStream};
pub use tls::{Tls, TlsError, tls_config};
/// A TLS server configuration (rustls).
pub type TlsConfig = rustls::ServerConfig;

use connection::Connection;
use streams::StreamExecutor;
use tls::handshake;

/// Connection limits and timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Every connection starts with a PROXY protocol (v1 or v2) header naming the client; one
    /// without is closed.
    pub proxy_protocol: bool,
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
    /// What the handler keeps for as long as one connection lives (its peer, what it proved);
    /// each request on the connection is handed a clone.
    type Connection: Clone + Send + Sync + 'static;
    /// A new connection from `peer`.
    fn open(&self, peer: SocketAddr) -> Self::Connection;
    /// Answers one request.
    fn call(
        &self,
        request: Request<Incoming>,
        connection: Self::Connection,
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
    either: auto::Builder<StreamExecutor>,
    http1: auto::Builder<StreamExecutor>,
    http2: auto::Builder<StreamExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Builders {
        let mut builder = auto::Builder::new(StreamExecutor);
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
    fn for_alpn(&self, alpn: Option<&[u8]>) -> &auto::Builder<StreamExecutor> {
        if alpn == Some(b"h2") {
            &self.http2
        } else {
            &self.http1
        }
    }
}

/// PROXY protocol headers (HAProxy's `send-proxy`/`send-proxy-v2`): who the client is, sent by
/// the load balancer before anything else on the connection.
mod proxy {
    use std::net::SocketAddr;
    use std::time::Duration;

    use ppp::{HeaderResult, PartialResult, v1, v2};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    /// A v1 header is at most 107 bytes; a v2 one is 16 plus addresses and TLVs, which this
    /// bounds (HAProxy sends well under it).
    const MAX_HEADER: usize = 4096;

    /// Reads the header, and only it; the client's address, or `peer` for a `LOCAL` (health
    /// check) or `UNKNOWN` one.
    pub(super) async fn read_header(
        stream: &mut TcpStream,
        peer: SocketAddr,
        within: Duration,
    ) -> Result<SocketAddr, &'static str> {
        tokio::time::timeout(within, read(stream, peer))
            .await
            .unwrap_or(Err("no PROXY header in time"))
    }

    async fn read(stream: &mut TcpStream, peer: SocketAddr) -> Result<SocketAddr, &'static str> {
        let mut buf = vec![0u8; MAX_HEADER];
        loop {
            // Look without taking: only the header's own bytes are consumed below.
            let seen = stream.peek(&mut buf).await.map_err(|_| "read failed")?;
            if seen == 0 {
                return Err("closed");
            }
            let parsed = HeaderResult::parse(&buf[..seen]);
            if parsed.is_incomplete() {
                if seen == MAX_HEADER {
                    return Err("PROXY header too long");
                }
                // The rest of the header is still on its way.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let (len, client) = match parsed {
                HeaderResult::V1(Ok(header)) => (header.header.len(), v1_client(&header)),
                HeaderResult::V2(Ok(header)) => (header.len(), v2_client(&header)),
                _ => return Err("not a PROXY header"),
            };
            stream
                .read_exact(&mut buf[..len])
                .await
                .map_err(|_| "read failed")?;
            return Ok(client.unwrap_or(peer));
        }
    }

    fn v1_client(header: &v1::Header<'_>) -> Option<SocketAddr> {
        match header.addresses {
            v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
            v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
            v1::Addresses::Unknown => None,
        }
    }

    fn v2_client(header: &v2::Header<'_>) -> Option<SocketAddr> {
        if header.command != v2::Command::Proxy {
            return None;
        }
        match header.addresses {
            v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
            v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
            _ => None,
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
        let (stream, peer) = match accepted {
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
        let (proxy_protocol, head_timeout) = (limits.proxy_protocol, limits.header_read_timeout);
        tokio::spawn(async move {
            let mut stream = stream;
            let peer = if proxy_protocol {
                match proxy::read_header(&mut stream, peer, head_timeout).await {
                    Ok(client) => client,
                    Err(why) => {
                        tracing::debug!(%peer, reason = why, "connection refused: no PROXY header");
                        return;
                    }
                }
            } else {
                peer
            };
            handler.connections(1);
            connection.serve(stream, peer, tls).await;
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

/// Bytes, for handlers that build small bodies.
pub fn text(status: http::StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::full(body.into()));
    *response.status_mut() = status;
    response
}

//! The ceiling: what this HTTP stack (hyper 1.x + hyper-util, and rustls for TLS, as s3warden
//! uses them) does at all on one core, serving a fixed in-memory body to every request.
//!
//! `cargo run --release --example ceiling -- ADDR SIZE_BYTES [CERT_PEM KEY_PEM]`
//!
//! With a certificate and key it serves TLS, offering HTTP/2 and HTTP/1.1 by ALPN with
//! hyper's default settings for each.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:19200".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let tls = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => Some(acceptor(&cert, &key)),
        _ => None,
    };
    let body = Bytes::from(vec![b'x'; size]);
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("ready {scheme}://{addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                serve(stream, auto::Builder::new(TokioExecutor::new()), body).await;
                return;
            };
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                builder.http2_only()
            } else {
                builder.http1_only()
            };
            serve(stream, builder, body).await;
        });
    }
}

async fn serve(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    builder: auto::Builder<TokioExecutor>,
    body: Bytes,
) {
    let service = service_fn(move |_request| {
        let body = body.clone();
        async move {
            let mut response = Response::new(Full::new(body));
            response
                .headers_mut()
                .insert("content-type", "application/octet-stream".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// rustls with the provider s3warden uses (aws-lc-rs), TLS 1.2 and 1.3, ALPN h2 and http/1.1.
fn acceptor(cert: &str, key: &str) -> TlsAcceptor {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

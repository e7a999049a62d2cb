//! Hand-made HTTP/2: frames and HPACK blocks written byte by byte, for clients that break the
//! rules (floods, resets) in ways a real client library will not. Plus the TLS plumbing to
//! offer exactly the ALPN protocols a test wants, and what the kernel says about a process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_util::io::InspectReader;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix whose other bits are `flags` (RFC 7541 §5.1).
pub fn int(flags: u8, n: u32, mut value: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![flags | value as u8];
    }
    let mut out = vec![flags | max as u8];
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
    out
}

/// A string literal, not Huffman-coded.
pub fn string(s: &[u8]) -> Vec<u8> {
    [int(0, 7, s.len()), s.to_vec()].concat()
}

/// A header literal with incremental indexing and a new name (§6.2.1): it enters the dynamic
/// table, where index 62 then names it.
pub fn indexed_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    [vec![0x40], string(name), string(value)].concat()
}

/// A header literal without indexing, with a new name (§6.2.2).
pub fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    [vec![0x00], string(name), string(value)].concat()
}

/// `GET {path}` on authority `x`, scheme `http`.
pub fn get(path: &str) -> Vec<u8> {
    // :method GET (2), :scheme http (6), :path and :authority with indexed names (4, 1).
    [
        vec![0x82, 0x86, 0x04],
        string(path.as_bytes()),
        vec![0x01],
        string(b"x"),
    ]
    .concat()
}

/// Reads frames until the connection closes or `limit` passes; their (type, flags, payload).
pub async fn read_frames<R: AsyncRead + Unpin>(
    stream: &mut R,
    limit: std::time::Duration,
) -> Vec<(u8, u8, Vec<u8>)> {
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut chunk = vec![0u8; 65536];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len =
            (bytes[at] as usize) << 16 | (bytes[at + 1] as usize) << 8 | bytes[at + 2] as usize;
        let end = (at + 9 + len).min(bytes.len());
        frames.push((bytes[at + 3], bytes[at + 4], bytes[at + 9..end].to_vec()));
        at += 9 + len;
    }
    frames
}

/// The error code of the first GOAWAY among `frames`.
pub fn goaway(frames: &[(u8, u8, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|(kind, _, payload)| *kind == GOAWAY && payload.len() >= 8)
        .map(|(_, _, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
}

/// A TLS connection to `addr` that offers exactly `alpn` (nothing when empty), trusting the
/// test certificate for `localhost`.
pub async fn tls(
    addr: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_over(TcpStream::connect(addr).await.unwrap(), alpn).await
}

/// [`tls`] over a connection the caller made.
pub async fn tls_over<IO: AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: IO,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<IO> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = super::fixture_bytes("tls_cert.pem");
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, io)
        .await
        .unwrap()
}

/// `io`, counting in `count` the TLS records the server sends over it (their 5-byte headers
/// are not encrypted) before TLS reads them.
pub fn count_records<IO: AsyncRead>(
    io: IO,
    count: Arc<AtomicUsize>,
) -> InspectReader<IO, impl FnMut(&[u8])> {
    // Bytes of the current record's header seen so far, and of its body still to come.
    let (mut header, mut left) = (Vec::with_capacity(5), 0usize);
    InspectReader::new(io, move |mut bytes: &[u8]| {
        while !bytes.is_empty() {
            let n = if left > 0 {
                let n = left.min(bytes.len());
                left -= n;
                n
            } else {
                let n = (5 - header.len()).min(bytes.len());
                header.extend_from_slice(&bytes[..n]);
                if header.len() == 5 {
                    left = u16::from_be_bytes([header[3], header[4]]) as usize;
                    count.fetch_add(1, Ordering::Relaxed);
                    header.clear();
                }
                n
            };
            bytes = &bytes[n..];
        }
    })
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

//! Connection-level protection: timeouts, header limits, smuggling, the connection cap, TLS.

use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// The status codes of the HTTP/1.1 answers in `text`, in order.
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect()
}

/// Reads until the server closes the connection; returns what came and how long it took.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut chunk),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
    (buf, started.elapsed())
}

#[tokio::test]
async fn slowloris_heads_are_cut_off_at_the_header_timeout() {
    let h = Setup::default()
        .set("server.header_read_timeout", "\"1s\"")
        .set("server.idle_timeout", "\"30s\"")
        .start()
        .await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    // A head that trickles in, a byte at a time, never finishing.
    let trickle = async {
        for b in b"GET /files/photos/a.png HTTP/1.1\r\nHost: x\r\nX-Slow: " {
            if stream.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    };
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "closed");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_slow_reader_gets_a_whole_answer_that_outlasts_the_header_timeout() {
    let h = Setup::default()
        .set("server.header_read_timeout", "\"1s\"")
        .start()
        .await;
    let object: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    h.put("photos/big.bin", &object);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(h.addr).await.unwrap();
    let head = format!(
        "GET /files/photos/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        token("alice")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // About 3 s to read 8 MiB: the answer is still being written after the header timeout.
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = |answer: &[u8]| {
        answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
    };
    while head_end(&answer).is_none_or(|end| answer.len() < end + object.len()) {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {} bytes", answer.len());
        answer.extend_from_slice(&chunk[..n]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let head_end = head_end(&answer).unwrap();
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert!(answer[head_end..] == object[..], "the whole object");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let h = Setup::default()
        .set("server.header_read_timeout", "\"1s\"")
        .start()
        .await;
    // Connected, silent.
    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    let (_, took) = until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Keep-alive after a request: closed while waiting for the next one.
    let mut kept = TcpStream::connect(h.addr).await.unwrap();
    kept.write_all(b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, took) = until_closed(&mut kept, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn a_body_that_stops_moving_is_cut_off_at_the_idle_timeout() {
    let h = Setup::default()
        .set("server.idle_timeout", "\"1s\"")
        .start()
        .await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "PUT /files/users/alice/slow.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\nfirst bytes",
        token("alice")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (answer, took) = until_closed(&mut stream, Duration::from_secs(6)).await;
    assert!(took < Duration::from_secs(4), "{took:?}");
    let text = String::from_utf8_lossy(&answer);
    // A body that stops is the slowest body there is: 408, as for one below min_body_rate.
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert!(!h.s3.exists(BUCKET, "users/alice/slow.bin"));
}

#[tokio::test]
async fn a_64_kib_header_is_431() {
    let h = Setup::default().start().await;
    let big = "b".repeat(64 * 1024);
    let r = raw::get(h.addr, "/_health", &format!("X-Big: {big}\r\n")).await;
    assert_eq!(r.status, 431);
    // Many small headers adding up to the same.
    let many: String = (0..2000)
        .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(30)))
        .collect();
    let r = raw::get(h.addr, "/_health", &many).await;
    assert_eq!(r.status, 431);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let h = Setup::default().start().await;
    let smuggle = format!(
        "PUT /files/users/alice/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         0\r\n\r\nGET /files/private/secret HTTP/1.1\r\nHost: x\r\n\r\n",
        token("alice")
    );
    let r = raw::send(h.addr, smuggle.as_bytes()).await;
    assert_eq!(r.status, 400);
    assert_eq!(h.s3_log().all(), 0);
    // Two Content-Length values are refused too.
    let r = raw::send(
        h.addr,
        b"PUT /files/users/alice/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde",
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn connections_over_the_cap_get_503() {
    let h = Setup::default()
        .set("server.max_connections", "2")
        .set("server.header_read_timeout", "\"10s\"")
        .start()
        .await;
    let _a = TcpStream::connect(h.addr).await.unwrap();
    let _b = TcpStream::connect(h.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = raw::get(h.addr, "/_health", "").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(h.metric("s3warden_connections_shed_total").await, Some(1));
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = raw::get(h.addr, "/_health", "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn tls_with_http2() {
    let h = Setup::default().tls().start().await;
    h.put("photos/a.png", b"over TLS");
    let client = tls_client(reqwest::Client::builder());
    let url = format!("https://localhost:{}/files/photos/a.png", h.addr.port());
    let r = get_as_alice(&client, &url).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "over TLS");
    // HTTP/1.1 clients are served too.
    let client = tls_client(reqwest::Client::builder().http1_only());
    let r = get_as_alice(&client, &url).await;
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(r.status(), StatusCode::OK);
    // Plain HTTP on the TLS port gets nowhere.
    assert!(
        h.http
            .get(format!("http://127.0.0.1:{}/_health", h.addr.port()))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_long_chunk_line_split_across_reads_does_not_blind_the_smuggling_check() {
    let h = Setup::default().start().await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "PUT /files/users/alice/chunked.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n5;ext=",
        token("alice")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A chunk extension longer than one read, sent in two.
    stream.write_all(&[b'e'; 3000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&[b'e'; 3000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The body ends, then a request framed two ways.
    stream
        .write_all(
            b"\r\nhello\r\n0\r\n\r\n\
              GET /_health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let (answer, _) = until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&answer);
    let statuses = statuses(&text);
    assert_eq!(statuses, ["201", "400"], "{text}");
    assert!(text.contains("ambiguous request framing"), "{text}");
}

#[tokio::test]
async fn tls_serves_only_the_protocol_alpn_chose() {
    use crate::common::h2raw::{self, frame, tls};
    let h = Setup::default().tls().start().await;
    // Negotiated http/1.1, then spoken HTTP/2: not served as HTTP/2.
    let mut stream = tls(h.addr, &[b"http/1.1"]).await;
    let opening = [h2raw::PREFACE, &frame(h2raw::SETTINGS, 0, 0, &[])].concat();
    stream.write_all(&opening).await.unwrap();
    let (answer, _) = until_closed_tls(&mut stream).await;
    // An HTTP/1.1 refusal or nothing, not the server's HTTP/2 SETTINGS.
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // Negotiated h2, then spoken HTTP/1.1: no HTTP/1.1 answer.
    let mut stream = tls(h.addr, &[b"h2"]).await;
    stream
        .write_all(b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = until_closed_tls(&mut stream).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // No ALPN at all: HTTP/1.1, which every TLS client speaks.
    let mut stream = tls(h.addr, &[]).await;
    stream
        .write_all(b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = until_closed_tls(&mut stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// Reads a TLS stream until the server closes it (or 5 s pass).
async fn until_closed_tls(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    (buf, started.elapsed())
}

#[tokio::test]
async fn tls_connections_over_the_cap_get_a_503_they_can_read() {
    let h = Setup::default()
        .tls()
        .set("server.max_connections", "2")
        .set("server.header_read_timeout", "\"10s\"")
        .start()
        .await;
    let _a = TcpStream::connect(h.addr).await.unwrap();
    let _b = TcpStream::connect(h.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!("https://localhost:{}/_health", h.addr.port());
    for client in [
        tls_client(reqwest::Client::builder()),
        tls_client(reqwest::Client::builder().http1_only()),
    ] {
        let r = client
            .get(&url)
            .send()
            .await
            .expect("a clean answer, not a TLS error");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"],
            "unavailable"
        );
    }
}

/// Sends a PUT head for `len` body bytes, then `chunk` bytes every `every`, until the server
/// answers; the answer and how long it took.
async fn trickle_put(
    h: &Harness,
    key: &str,
    len: usize,
    chunk: usize,
    every: Duration,
) -> (String, Duration) {
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "PUT /files/{key} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n",
        token("alice")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let writing = async {
        let mut sent = 0;
        while sent < len {
            let n = chunk.min(len - sent);
            if writer.write_all(&vec![b'x'; n]).await.is_err() {
                break;
            }
            sent += n;
            tokio::time::sleep(every).await;
        }
        std::future::pending::<()>().await;
    };
    let mut answer = Vec::new();
    let reading = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut answer));
    tokio::select! {
        _ = reading => {}
        _ = writing => {}
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn bodies_below_the_minimum_rate_are_408_and_leave_nothing() {
    let h = Setup::default()
        .set("server.idle_timeout", "\"2s\"")
        .set("server.min_body_rate", "\"1KiB\"")
        .start()
        .await;
    // 500 bytes a second: never stalls, never keeps up.
    let (answer, took) = trickle_put(
        &h,
        "users/alice/slow.bin",
        100_000,
        100,
        Duration::from_millis(200),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(!h.s3.exists(BUCKET, "users/alice/slow.bin"));
    // 20 KiB a second is fine.
    let (answer, _) = trickle_put(
        &h,
        "users/alice/ok.bin",
        60_000,
        4096,
        Duration::from_millis(200),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert_eq!(
        h.s3.read(BUCKET, "users/alice/ok.bin").unwrap().len(),
        60_000
    );
}

#[tokio::test]
async fn a_bare_lf_in_the_trailers_does_not_hide_the_next_request_from_the_smuggling_check() {
    let h = Setup::default().start().await;
    let json = r#"{"bucket":"files","keys":[]}"#;
    let request = format!(
        "POST /_sign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{json}\r\n0\r\nX: a\n\r\n\
         GET /fake HTTP/1.1\r\n\r\n\
         GET /_health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        token("alice"),
        json.len()
    );
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let (answer, _) = until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&answer);
    let statuses = statuses(&text);
    // hyper reads `GET /fake` as a trailer; the CL+TE request after it is refused.
    assert_eq!(statuses, ["200", "400"], "{text}");
    assert!(text.contains("ambiguous request framing"), "{text}");
}

//! Clients that never finish: HTTP/2 streams that never get flow-control window, connections
//! kept open by PINGs, TLS readers that stall, floods of resets and header blocks. Each runs
//! against a separate `s3warden serve` process whose resident memory and descriptors are read
//! from /proc.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::common::h2raw::{self, frame, open_fds, rss_kib, tls};
use crate::common::*;
use crate::daemon::{Daemon, Launch};

const MIB: u64 = 1024;

/// A TLS daemon with `big.bin` (`size` bytes) cached under photos/.
async fn tls_daemon(setup: Setup, size: usize) -> Daemon {
    let daemon = Launch::new(setup.tls()).start().await;
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    daemon.s3.put(BUCKET, "photos/big.bin", &body).unwrap();
    let client = tls_client(reqwest::Client::builder());
    let r = get_as_alice(&client, &https_url(&daemon, "photos/big.bin")).await;
    assert_eq!(r.bytes().await.unwrap().len(), size);
    let r = get_as_alice(&client, &https_url(&daemon, "photos/big.bin")).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    daemon
}

fn https_url(daemon: &Daemon, key: &str) -> String {
    daemon.url.replace("http://127.0.0.1", "https://localhost") + "/files/" + key
}

fn addr(daemon: &Daemon) -> std::net::SocketAddr {
    daemon.url.trim_start_matches("http://").parse().unwrap()
}

/// An HTTP/2 client over TLS that grants the server no stream window
/// (SETTINGS_INITIAL_WINDOW_SIZE = 0) and never sends a WINDOW_UPDATE.
async fn stingy_h2(
    daemon: &Daemon,
) -> (
    h2::client::SendRequest<Bytes>,
    h2::PingPong,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let io = tls(addr(daemon), &[b"h2"]).await;
    let (send, mut connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(io)
        .await
        .unwrap();
    let ping = connection.ping_pong().unwrap();
    (send, ping, tokio::spawn(connection))
}

/// Sends a PING every 200 ms, forever.
async fn keep_pinging(ping: &mut h2::PingPong) {
    loop {
        let _ = ping.ping(h2::Ping::opaque()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `handle` finishes (the server closed the connection); how long that took.
async fn closed_within(
    handle: &mut tokio::task::JoinHandle<Result<(), h2::Error>>,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(limit, handle)
        .await
        .ok()
        .map(|_| started.elapsed())
}

#[tokio::test]
async fn http2_streams_without_window_hold_no_memory_and_close_when_idle() {
    let daemon = tls_daemon(
        Setup::default().set("server.idle_timeout", "\"3s\""),
        1 << 20,
    )
    .await;
    let pid = daemon.pid();
    let (rss_before, fds_before) = (rss_kib(pid), open_fds(pid));
    let url = https_url(&daemon, "photos/big.bin");
    let (mut senders, mut pings, mut handles) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..4 {
        let (send, ping, handle) = stingy_h2(&daemon).await;
        let mut answers = Vec::new();
        for _ in 0..128 {
            let mut send = send.clone().ready().await.unwrap();
            let request = http::Request::get(&url)
                .header("authorization", format!("Bearer {}", token("alice")))
                .body(())
                .unwrap();
            answers.push(send.send_request(request, true).unwrap().0);
        }
        for answer in answers {
            // The heads come (they need no window); the bodies cannot.
            assert_eq!(answer.await.unwrap().status(), StatusCode::OK);
        }
        senders.push(send);
        pings.push(ping);
        handles.push(handle);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_kib(pid).saturating_sub(rss_before);
    // 512 streams of a 1 MiB object: one 16 KiB frame each at most, not the object.
    assert!(grown < 24 * MIB, "resident memory grew by {grown} KiB");

    // PINGs are no progress: the stalled connections are closed after idle_timeout.
    let pinger = async {
        loop {
            for ping in pings.iter_mut() {
                let _ = ping.ping(h2::Ping::opaque()).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let closed = async {
        let mut took = Vec::new();
        for handle in handles.iter_mut() {
            took.push(closed_within(handle, Duration::from_secs(8)).await);
        }
        took
    };
    let took = tokio::select! {
        took = closed => took,
        _ = pinger => unreachable!(),
    };
    assert!(took.iter().all(Option::is_some), "still open: {took:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds = open_fds(pid);
    assert!(
        fds <= fds_before + 2,
        "descriptors: {fds_before} before, {fds} after"
    );
}

/// An answer that gets no window is reset after one to two `idle_timeout`s without progress, as
/// nginx's `send_timeout` resets one: however busy its client keeps the connection with other
/// streams, a stalled answer (and the object it reads from) is not kept. An upload beside it,
/// whose handler is still running, is not cut off, and neither is the connection.
#[tokio::test]
async fn http2_answers_that_get_no_window_are_reset_and_uploads_beside_them_finish() {
    let daemon = tls_daemon(
        Setup::default().set("server.idle_timeout", "\"2s\""),
        256 * 1024,
    )
    .await;
    let io = tls(addr(&daemon), &[b"h2"]).await;
    let (send, connection) = h2::client::handshake(io).await.unwrap();
    let connection = tokio::spawn(connection);
    let bearer = format!("Bearer {}", token("alice"));
    // A download whose body is never taken: its window (64 KiB) fills and stays full.
    let request = http::Request::get(https_url(&daemon, "photos/big.bin"))
        .header("authorization", &bearer)
        .body(())
        .unwrap();
    let (answer, _) = send
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    let mut stalled = answer.await.unwrap().into_body();
    let started = Instant::now();
    // An upload beside it that takes 5 s.
    let upload = tokio::spawn(async move {
        let request = http::Request::put(https_url(&daemon, "users/alice/slow.bin"))
            .header("authorization", &bearer)
            .body(())
            .unwrap();
        let mut ready = send.ready().await.unwrap();
        let (answer, mut body) = ready.send_request(request, false).unwrap();
        for _ in 0..10 {
            body.send_data(Bytes::from(vec![b'u'; 4096]), false)
                .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        body.send_data(Bytes::new(), true).unwrap();
        (answer.await.unwrap().status(), daemon)
    });
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match stalled.data().await {
                Some(Ok(_)) => {} // taken, but no window given back
                other => return other.map(|r| r.map(drop)),
            }
        }
    })
    .await
    .expect("still stalled after 8 s");
    let took = started.elapsed();
    let reset = ended
        .expect("a reset, not the end of the body")
        .unwrap_err();
    assert_eq!(reset.reason(), Some(h2::Reason::CANCEL), "{reset}");
    assert!(took < Duration::from_millis(5500), "{took:?}");
    let (status, _daemon) = upload.await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert!(!connection.is_finished());
}

#[tokio::test]
async fn idle_http2_connections_close_however_often_they_ping() {
    let daemon = tls_daemon(
        Setup::default()
            .set("server.header_read_timeout", "\"1s\"")
            .set("server.idle_timeout", "\"2s\""),
        64 * 1024,
    )
    .await;
    // Never a request: the header timeout applies to HTTP/2's first head too.
    let (_send, mut ping, mut never_asked) = stingy_h2(&daemon).await;
    let pinger = keep_pinging(&mut ping);
    let took = tokio::select! {
        took = closed_within(&mut never_asked, Duration::from_secs(5)) => took,
        _ = pinger => unreachable!(),
    };
    let took = took.expect("closed");
    assert!(took < Duration::from_millis(2500), "{took:?}");

    // One request answered, then only PINGs: closed after idle_timeout.
    let io = tls(addr(&daemon), &[b"h2"]).await;
    let (send, mut connection) = h2::client::handshake(io).await.unwrap();
    let mut ping = connection.ping_pong().unwrap();
    let mut handle = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::get(https_url(&daemon, "photos/big.bin"))
        .header("authorization", format!("Bearer {}", token("alice")))
        .body(())
        .unwrap();
    let (answer, _) = send.send_request(request, true).unwrap();
    let mut body = answer.await.unwrap().into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let pinger = keep_pinging(&mut ping);
    let took = tokio::select! {
        took = closed_within(&mut handle, Duration::from_secs(6)) => took,
        _ = pinger => unreachable!(),
    };
    let took = took.expect("closed");
    assert!(
        took > Duration::from_millis(1500) && took < Duration::from_millis(3500),
        "{took:?}"
    );
}

#[tokio::test]
async fn tls_http1_readers_that_stall_hold_little_memory() {
    let daemon = tls_daemon(
        Setup::default().set("server.idle_timeout", "\"3s\""),
        4 << 20,
    )
    .await;
    let pid = daemon.pid();
    let (rss_before, fds_before) = (rss_kib(pid), open_fds(pid));
    let head = format!(
        "GET /files/photos/big.bin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
        token("alice")
    );
    let mut readers = Vec::new();
    for _ in 0..40 {
        let mut stream = tls(addr(&daemon), &[b"http/1.1"]).await;
        stream.write_all(head.as_bytes()).await.unwrap();
        readers.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(
        grown < 12 * MIB,
        "40 stalled readers: resident memory grew by {grown} KiB"
    );
    // They make no progress: closed after idle_timeout (once the socket buffers are full),
    // descriptors given back.
    let released = eventually(Duration::from_secs(8), || open_fds(pid) <= fds_before + 2).await;
    assert!(
        released,
        "descriptors: {fds_before} before, {} after",
        open_fds(pid)
    );
}

/// A plain-TCP HTTP/2 connection (prior knowledge) that has sent its preface and SETTINGS.
async fn raw_h2(daemon: &Daemon) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr(daemon)).await.unwrap();
    let opening = [h2raw::PREFACE, &frame(h2raw::SETTINGS, 0, 0, &[])].concat();
    stream.write_all(&opening).await.unwrap();
    stream
}

/// After an attack: the daemon still answers, and holds no more than `slack` KiB and a couple
/// of descriptors beyond what it held before.
async fn still_healthy(daemon: &Daemon, before: (u64, usize), slack: u64) {
    let pid = daemon.pid();
    let r = client()
        .get(format!("{}/_health", daemon.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let grown = rss_kib(pid).saturating_sub(before.0);
    assert!(grown < slack, "resident memory grew by {grown} KiB");
    let released = eventually(Duration::from_secs(5), || open_fds(pid) <= before.1 + 2).await;
    assert!(
        released,
        "descriptors: {} before, {} after",
        before.1,
        open_fds(pid)
    );
}

#[tokio::test]
async fn floods_of_resets_continuations_and_hpack_references_are_refused() {
    let daemon = Launch::new(Setup::default()).start().await;
    let pid = daemon.pid();
    let before = (rss_kib(pid), open_fds(pid));
    // The same frames, kept small, are served: the floods below are refused for their size.
    let served = |frames: &[(u8, u8, Vec<u8>)]| {
        frames
            .iter()
            .any(|(kind, _, payload)| *kind == h2raw::HEADERS && payload.first() == Some(&0x88))
    };
    let mut control = h2raw::get("/_health");
    control.extend(h2raw::indexed_literal(b"x-bomb", &[b'b'; 4000]));
    control.extend(std::iter::repeat_n(0x80 | 62, 3));
    let mut stream = raw_h2(&daemon).await;
    let (first, rest) = control.split_at(20);
    let opening = [
        frame(h2raw::HEADERS, h2raw::END_STREAM, 1, first),
        frame(h2raw::CONTINUATION, h2raw::END_HEADERS, 1, rest),
    ]
    .concat();
    stream.write_all(&opening).await.unwrap();
    let frames = h2raw::read_frames(&mut stream, Duration::from_millis(500)).await;
    assert!(served(&frames), "{frames:?}");

    // Rapid reset (CVE-2023-44487): open a stream and cancel it at once, thousands of times.
    let mut stream = raw_h2(&daemon).await;
    let mut batch = Vec::new();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        batch.extend(frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            id,
            &h2raw::get("/_health"),
        ));
        batch.extend(frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = stream.write_all(&batch).await;
    let frames = h2raw::read_frames(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(h2raw::goaway(&frames), Some(0xb), "ENHANCE_YOUR_CALM");
    let answered = metric_at(
        &daemon.admin_url,
        "s3warden_requests_total{route=\"health\",status=\"200\"}",
    )
    .await
    .unwrap_or(0);
    assert!(answered < 500, "most streams were never served: {answered}");

    // CONTINUATION flood (CVE-2024-27316): one header block that never ends.
    let mut stream = raw_h2(&daemon).await;
    let _ = stream
        .write_all(&frame(h2raw::HEADERS, 0, 1, &h2raw::get("/_health")))
        .await;
    let junk = frame(
        h2raw::CONTINUATION,
        0,
        1,
        &h2raw::literal(b"x-flood", &[b'a'; 16_000]),
    );
    let mut sent = 0;
    for _ in 0..2000 {
        if stream.write_all(&junk).await.is_err() {
            break;
        }
        sent += junk.len();
    }
    assert!(
        sent < 8 << 20,
        "the server took {sent} bytes of one header block"
    );
    let frames = h2raw::read_frames(&mut stream, Duration::from_secs(3)).await;
    assert!(
        h2raw::goaway(&frames).is_some() || frames.is_empty(),
        "{frames:?}"
    );

    // HPACK bomb: a 4 KB header in the dynamic table, referenced thousands of times.
    let mut stream = raw_h2(&daemon).await;
    let mut block = h2raw::get("/_health");
    block.extend(h2raw::indexed_literal(b"x-bomb", &[b'b'; 4000]));
    block.extend(std::iter::repeat_n(0x80 | 62, 4000));
    let _ = stream
        .write_all(&frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            1,
            &block,
        ))
        .await;
    let frames = h2raw::read_frames(&mut stream, Duration::from_secs(3)).await;
    assert!(
        !served(&frames),
        "a 16 MB header list was served: {frames:?}"
    );

    still_healthy(&daemon, before, 16 * MIB).await;
}

/// A chunked PUT (length unknown, so it is buffered in parts) that sends `bytes` of its body
/// from a task of its own, then holds the connection open (until `finish`) without ending it.
struct HeldUpload {
    reader: tokio::net::tcp::OwnedReadHalf,
    writer: tokio::task::JoinHandle<tokio::net::tcp::OwnedWriteHalf>,
}

impl HeldUpload {
    async fn start(daemon: &Daemon, key: &str, bytes: usize) -> HeldUpload {
        Self::start_as(daemon, "alice", key, bytes).await
    }

    async fn start_as(daemon: &Daemon, sub: &str, key: &str, bytes: usize) -> HeldUpload {
        let stream = tokio::net::TcpStream::connect(addr(daemon)).await.unwrap();
        let (reader, mut writer) = stream.into_split();
        let head = format!(
            "PUT /files/{key} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            token(sub)
        );
        let writer = tokio::spawn(async move {
            let _ = writer.write_all(head.as_bytes()).await;
            let chunk = [
                format!("{:x}\r\n", 64 * 1024).as_bytes(),
                &[b'u'; 64 * 1024],
                b"\r\n",
            ]
            .concat();
            for _ in 0..bytes / (64 * 1024) {
                if writer.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            writer
        });
        HeldUpload { reader, writer }
    }

    /// The start of the answer, if one comes within `limit`.
    async fn answer(&mut self, limit: Duration) -> Option<String> {
        Some(first_answer(&mut self.reader, limit).await).filter(|a| !a.is_empty())
    }

    /// Ends the body.
    async fn finish(&mut self) {
        let writer = (&mut self.writer).await.unwrap();
        let mut writer = writer;
        writer.write_all(b"0\r\n\r\n").await.unwrap();
        self.writer = tokio::spawn(async move { writer });
    }
}

#[tokio::test]
async fn uploads_of_unknown_length_share_one_memory_budget() {
    let daemon = Launch::new(
        Setup::default()
            .set("upload.buffer_memory", "\"24MiB\"")
            .set("server.idle_timeout", "\"30s\""),
    )
    .start()
    .await;
    let pid = daemon.pid();
    let rss_before = rss_kib(pid);
    // Twelve uploads send 6 MiB each, then hold on: 72 MiB of buffers if nothing said no.
    let mut uploads = Vec::new();
    for i in 0..12 {
        uploads
            .push(HeldUpload::start(&daemon, &format!("users/alice/held{i}.bin"), 6 << 20).await);
    }
    // Resident memory stays within the budget (plus the process's own slack) all along.
    let sampling = async {
        let mut most = 0;
        for _ in 0..40 {
            most = most.max(rss_kib(pid).saturating_sub(rss_before));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        most
    };
    // Those that find no room within 5 s get 503 and store nothing.
    let answering = futures_util::future::join_all(
        uploads
            .iter_mut()
            .map(|u| u.answer(Duration::from_secs(10))),
    );
    let (grown, answers) = tokio::join!(sampling, answering);
    assert!(grown < 40 * MIB, "resident memory grew by {grown} KiB");
    let mut refused = 0;
    for text in answers.into_iter().flatten() {
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("retry-after: 5"),
            "{text}"
        );
        refused += 1;
    }
    // At most three can hold a 6 MiB part buffer (8 MiB each) in 24 MiB.
    assert!(refused >= 4, "{refused} of 12 uploads refused");
    assert!(
        daemon.s3.keys(BUCKET).is_empty(),
        "{:?}",
        daemon.s3.keys(BUCKET)
    );
    // When the holders go, the room comes back.
    drop(uploads);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut upload = HeldUpload::start(&daemon, "users/alice/after.bin", 1 << 20).await;
    upload.finish().await;
    let text = upload
        .answer(Duration::from_secs(10))
        .await
        .unwrap_or_default();
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
}

#[tokio::test]
async fn data_for_no_stream_keeps_no_http2_connection_open() {
    let daemon = Launch::new(Setup::default().set("server.idle_timeout", "\"2s\""))
        .start()
        .await;
    let mut stream = raw_h2(&daemon).await;
    let request = frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        1,
        &h2raw::get("/_health"),
    );
    stream.write_all(&request).await.unwrap();
    // The answer comes (and the stream closes on both sides).
    let answered = h2raw::read_frames(&mut stream, Duration::from_millis(500)).await;
    assert!(
        answered.iter().any(|(kind, ..)| *kind == h2raw::HEADERS),
        "{answered:?}"
    );
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    // Every 300 ms: DATA on the closed stream 1, all padding (PADDED, pad length 0), then one
    // byte of data. The server answers each with RST_STREAM; none of it is progress.
    let feeding = async {
        loop {
            let _ = writer.write_all(&frame(h2raw::DATA, 0x8, 1, &[0])).await;
            let _ = writer.write_all(&frame(h2raw::DATA, 0, 1, b"x")).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let closed = h2raw::read_frames(&mut reader, Duration::from_secs(6));
    tokio::select! {
        _ = closed => {},
        _ = feeding => unreachable!(),
    };
    let took = started.elapsed();
    assert!(took < Duration::from_millis(3500), "closed after {took:?}");
}

#[tokio::test]
async fn forms_cannot_make_the_parser_hold_what_comes_before_the_file() {
    let daemon = Launch::new(Setup::default()).start().await;
    let pid = daemon.pid();
    let rss_before = rss_kib(pid);
    // Before any boundary, and inside the file part's headers: 20 MiB that never end either.
    let preludes: [&[u8]; 2] = [
        b"",
        b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nX-Pad: ",
    ];
    let mut streams = Vec::new();
    for i in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(addr(&daemon)).await.unwrap();
        let head = format!(
            "POST /files/users/alice/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: {}\r\n\r\n",
            token("alice"),
            21 << 20
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(preludes[i % 2]).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let filler = tokio::spawn(async move {
            let block = vec![b'A'; 1 << 20];
            for _ in 0..20 {
                if writer.write_all(&block).await.is_err() {
                    break;
                }
            }
            writer
        });
        let answer = first_answer(&mut reader, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("before its file field"), "{answer}");
        streams.push((reader, filler));
    }
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown < 8 * MIB, "resident memory grew by {grown} KiB");
    assert!(daemon.s3.keys(BUCKET).is_empty());
}

/// The first bytes the server sends back (within `limit`), as text.
async fn first_answer(reader: &mut tokio::net::tcp::OwnedReadHalf, limit: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = vec![0u8; 4096];
    match tokio::time::timeout(limit, reader.read(&mut answer)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&answer[..n]).into_owned(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn one_uploader_cannot_take_the_whole_upload_memory() {
    let daemon = Launch::new(
        Setup::default()
            .set("upload.buffer_memory", "\"64MiB\"")
            .set("server.idle_timeout", "\"30s\""),
    )
    .start()
    .await;
    // alice: eight uploads that each grow a part buffer to 8 MiB and hold on (64 MiB: all of
    // it). Her share is a quarter, 16 MiB: at most two of them can hold on, so at least six are
    // refused at once. Which ones, and whether a seventh is, depends on how the eight buffers'
    // doublings interleave: a buffer that asks while the others' growing buffers fill her share
    // is refused, even if one of those is refused a moment later.
    let mut held = Vec::new();
    for i in 0..8 {
        let key = format!("users/alice/held{i}.bin");
        held.push(HeldUpload::start(&daemon, &key, (4 << 20) + (64 << 10)).await);
    }
    let answers =
        futures_util::future::join_all(held.iter_mut().map(|u| u.answer(Duration::from_secs(3))))
            .await;
    let refused = answers
        .iter()
        .flatten()
        .filter(|a| a.starts_with("HTTP/1.1 503"))
        .count();
    assert!((6..=7).contains(&refused), "{refused} refused: {answers:?}");
    // bob's upload finds room while alice's two still hold theirs.
    let started = Instant::now();
    let mut bob = HeldUpload::start_as(&daemon, "bob", "users/bob/mine.bin", 1 << 20).await;
    bob.finish().await;
    let text = bob
        .answer(Duration::from_secs(10))
        .await
        .unwrap_or_default();
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

//! Uploads and deletes against the real S3: ACLs, forms, limits, broken bodies, invalidation.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

async fn put(
    h: &Harness,
    key: &str,
    body: &'static [u8],
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = h
        .http
        .put(h.object_url(key))
        .bearer_auth(token("alice"))
        .body(body);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// PUT with a chunked body (no Content-Length) as alice.
async fn put_chunked(h: &Harness, key: &str, chunks: Vec<Vec<u8>>) -> reqwest::Response {
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    h.http
        .put(h.object_url(key))
        .bearer_auth(token("alice"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap()
}

/// Objects left in the bucket under `prefix`.
fn stored(h: &Harness, prefix: &str) -> Vec<String> {
    h.s3.keys(BUCKET)
        .into_iter()
        .filter(|k| k.starts_with(prefix))
        .collect()
}

#[tokio::test]
async fn an_upload_refused_before_its_body_was_read_still_gets_its_answer() {
    // The answer comes before the body is read (a bad token here; also too large, or S3
    // failing). Closing at once with the body unread would make the kernel reset the
    // connection under a client that is still sending: s3warden keeps reading and dropping
    // what comes for a while after its answer, so the client gets the answer, not a reset.
    let h = Setup::default().start().await;
    let mut socket = TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "PUT /files/users/alice/big.bin HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer not-a-token\r\n\
         Content-Length: {}\r\n\r\n",
        h.addr,
        8 << 20
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = socket.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // The client goes on with its body, as one that writes before it reads does.
    let chunk = vec![b'x'; 64 * 1024];
    for i in 0..32 {
        socket
            .write_all(&chunk)
            .await
            .unwrap_or_else(|e| panic!("write {i} after the answer: {e}"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn private_upload_then_read_back() {
    let h = Setup::default().start().await;
    let r = put(
        &h,
        "users/alice/notes.txt",
        b"my notes",
        &[("content-type", "text/plain")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["bucket"], "files");
    assert_eq!(v["key"], "users/alice/notes.txt");
    assert_eq!(v["acl"], "private");
    assert_eq!(v["url"], format!("{}/files/users/alice/notes.txt", h.url));
    assert_eq!(v["url"], location.as_str());
    assert!(v["etag"].as_str().unwrap().starts_with('"'));
    // Private is what S3 makes a new object without an ACL, so none is sent.
    assert_eq!(h.s3_log().acl(BUCKET, "users/alice/notes.txt"), None);
    let r = h.get("users/alice/notes.txt", Some(&token("alice"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "my notes");
    // Nobody else may read it.
    assert_eq!(
        h.get("users/alice/notes.txt", Some(&token("bob")))
            .await
            .status(),
        403
    );
}

#[tokio::test]
async fn public_upload_records_the_acl_and_returns_the_public_url() {
    let h = Setup::default().start().await;
    for header in ["x-amz-acl", "x-acl"] {
        let key = format!("users/alice/{header}.png");
        let mut req = h
            .http
            .put(h.object_url(&key))
            .bearer_auth(token("alice"))
            .body("png");
        req = req.header(header, "public-read");
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["acl"], "public-read");
        assert_eq!(v["url"], format!("{}/{BUCKET}/{key}", h.s3.endpoint()));
        assert_eq!(h.s3_log().acl(BUCKET, &key).as_deref(), Some("public-read"));
        // The content type was guessed from the key.
        let r = h.get(&key, Some(&token("alice"))).await;
        assert_eq!(r.headers()["content-type"], "image/png");
    }
    let r = put(
        &h,
        "users/alice/x",
        b"x",
        &[("x-amz-acl", "authenticated-read")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = put(
        &h,
        "users/alice/x",
        b"x",
        &[("x-amz-acl", "private"), ("x-acl", "public-read")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A tab is whitespace to the media-type grammar, but SigV4 signers and S3s fold it
    // differently in a signed header: refused here, not turned into S3's signature error.
    let tab = [("content-type", "text/plain;\tcharset=utf-8")];
    let r = put(&h, "users/alice/x", b"x", &tab).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(!h.s3.exists(BUCKET, "users/alice/x"));
}

/// Browsers' `MediaRecorder` names its recordings `video/webm;codecs=vp8,opus`, commas left
/// unquoted, and `fetch` uploads them so: taken, stored with the list quoted, and played
/// inline. Two types in one value stay refused.
#[tokio::test]
async fn recordings_typed_by_browsers_are_taken_and_played_inline() {
    let h = Setup::default().start().await;
    for (i, t) in [
        "video/webm;codecs=vp8,opus",
        "video/x-matroska;codecs=avc1,opus",
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("users/alice/recording{i}");
        let r = put(&h, &key, b"webm", &[("content-type", t)]).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{t}");
        let (essence, codecs) = t.split_once(";codecs=").unwrap();
        let stored = format!("{essence};codecs=\"{codecs}\"");
        for _ in 0..2 {
            let r = h.get(&key, Some(&token("alice"))).await;
            assert_eq!(r.headers()["content-type"], stored.as_str());
            assert!(r.headers().get("content-disposition").is_none(), "{t}");
        }
    }
    // Stored by another road as the recorder named it: served with the list quoted.
    put_to_s3(
        &h.s3,
        "users/alice/direct.webm",
        b"webm",
        &[("content-type", b"video/webm;codecs=vp9,opus")],
    )
    .await;
    let r = h
        .get("users/alice/direct.webm", Some(&token("alice")))
        .await;
    assert_eq!(
        r.headers()["content-type"],
        "video/webm;codecs=\"vp9,opus\""
    );
    assert!(r.headers().get("content-disposition").is_none());
    let two = [("content-type", "video/webm, text/html")];
    let r = put(&h, "users/alice/two", b"x", &two).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn buckets_without_acls_take_private_uploads_and_refuse_public_ones() {
    // AWS's default for new buckets: ACLs disabled, and any ACL refused, `private` included.
    let h = Setup::default().start().await;
    h.s3_log().disable_acls();
    for named in [&[][..], &[("x-amz-acl", "private")]] {
        let r = put(&h, "users/alice/a.txt", b"a", named).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{named:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["acl"], "private");
        assert_eq!(h.s3_log().acl(BUCKET, "users/alice/a.txt"), None);
    }

    let r = put(
        &h,
        "users/alice/p.png",
        b"p",
        &[("x-amz-acl", "public-read")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "acl_not_supported");
    assert!(
        e["message"].as_str().unwrap().contains("bucket policy"),
        "{e}"
    );
    assert!(!h.s3.exists(BUCKET, "users/alice/p.png"));

    // `none`, which configurations named for such buckets before, still means private.
    let h = Setup::default()
        .set("upload.default_acl", "\"none\"")
        .start_with(h.s3.clone())
        .await;
    let r = put(&h, "users/alice/b.txt", b"b", &[]).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["acl"], "private");
    assert_eq!(h.s3_log().acl(BUCKET, "users/alice/b.txt"), None);
}

#[tokio::test]
async fn stores_without_acls_refuse_public_uploads_by_their_own_codes_and_take_private_ones() {
    // R2 answers a request naming an ACL `NotImplemented`; GCS with uniform bucket-level
    // access answers `InvalidArgument`.
    for code in [
        s3s::S3ErrorCode::NotImplemented,
        s3s::S3ErrorCode::InvalidArgument,
    ] {
        let h = Setup::default().start().await;
        h.s3_log().refuse_acls_with(code.clone());
        let r = put(&h, "users/alice/a.txt", b"a", &[]).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{code:?}");

        let public = [("x-amz-acl", "public-read")];
        let r = put(&h, "users/alice/p.png", b"p", &public).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{code:?}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "acl_not_supported", "{code:?}");
        assert!(e["message"].as_str().unwrap().contains("R2"), "{e}");
        assert!(!h.s3.exists(BUCKET, "users/alice/p.png"));
        // A refusal for good (501 included) is not sent again.
        let puts = h.s3_log().requests("PUT", BUCKET, "users/alice/p.png");
        assert_eq!(puts, 1, "{code:?}");
    }
}

fn form(boundary: &str, filename: &str, content_type: &str, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nA photo\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[tokio::test]
async fn a_large_form_sent_fast_over_http2_is_stored_whole() {
    // HTTP/2 hands the body over in frames that are all ready at once; a form whose file field
    // starts at once is taken however much of the file comes with its first bytes.
    let h = Setup::default().start().await;
    let data: Vec<u8> = (0..600 * 1024).map(|i| (i % 251) as u8).collect();
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = http2
        .post(format!("{}/files/users/alice/", h.url))
        .bearer_auth(token("alice"))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(form("XyZ", "big.bin", "application/octet-stream", &data))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let v: Value = r.json().await.unwrap();
    let r = h
        .get(v["key"].as_str().unwrap(), Some(&token("alice")))
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), data);
}

/// A client that resets its HTTP/2 stream mid-upload has the request dropped where it stands,
/// S3 calls included: the multipart upload begun for it is aborted all the same, so its parts
/// are not kept (and billed) in the bucket.
#[tokio::test]
async fn an_upload_whose_http2_stream_is_reset_is_aborted() {
    let h = Setup::default().start().await;
    let key = "users/alice/cancelled.bin";
    // A part on its way: the upload's ID is known.
    let begun = || h.s3_log().requests("PART", BUCKET, key) >= 1;
    reset_upload_when(&h, key, begun).await;
    let aborted = || h.s3_log().requests("ABORT", BUCKET, key) == 1;
    assert!(eventually(Duration::from_secs(10), aborted).await);
    assert!(stored(&h, "users/").is_empty());
}

/// A client that gives up while S3 has not answered CreateMultipartUpload yet: the multipart
/// upload S3 then begins is aborted all the same, not left behind with nothing to abort it.
#[tokio::test]
async fn an_upload_dropped_while_its_multipart_upload_begins_is_aborted() {
    let h = Setup::default().start().await;
    h.s3_log()
        .delay_multipart_creates(Duration::from_millis(500));
    let key = "users/alice/dropped.bin";
    let asked = || h.s3_log().requests("MULTIPART", BUCKET, key) == 1;
    reset_upload_when(&h, key, asked).await;
    let aborted = || h.s3_log().requests("ABORT", BUCKET, key) == 1;
    assert!(eventually(Duration::from_secs(10), aborted).await);
    assert_eq!(h.s3_log().requests("PART", BUCKET, key), 0);
    assert!(stored(&h, "users/").is_empty());
}

/// Streams 9 MiB of unknown length to `key` over HTTP/2, and resets the stream once `when`
/// holds.
async fn reset_upload_when(h: &Harness, key: &str, when: impl Fn() -> bool) {
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let chunks = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let request = http2
        .put(h.object_url(key))
        .bearer_auth(token("alice"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send();
    let request = tokio::spawn(request);
    for _ in 0..9 {
        tx.send(Ok(vec![b'c'; 1024 * 1024])).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(10), when).await);
    request.abort();
    let _ = request.await;
}

#[tokio::test]
async fn form_uploads_get_a_generated_key() {
    let h = Setup::default().start().await;
    let png = b"\x89PNG\r\n\x1a\nnot really a png";
    let r = h
        .http
        .post(format!("{}/files/users/alice/", h.url))
        .bearer_auth(token("alice"))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(form("XyZ", "holiday.PNG", "image/png", png))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    let key = v["key"].as_str().unwrap();
    let uuid = key
        .strip_prefix("users/alice/")
        .unwrap()
        .strip_suffix(".png")
        .unwrap();
    assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{key}");
    assert_eq!(location, format!("{}/files/{key}", h.url));
    let r = h.get(key, Some(&token("alice"))).await;
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.unwrap().as_ref(), png);

    // A raw body: the extension comes from the content type.
    let r = h
        .http
        .post(format!("{}/files/users/alice/", h.url))
        .bearer_auth(token("alice"))
        .header("content-type", "image/jpeg")
        .body("jpeg bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert!(v["key"].as_str().unwrap().ends_with(".jpg"), "{v}");

    // Another user's prefix, or a form without a file: refused, nothing stored.
    let before = stored(&h, "users/").len();
    let r = h
        .http
        .post(format!("{}/files/users/bob/", h.url))
        .bearer_auth(token("alice"))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(form("XyZ", "a.png", "image/png", b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = h
        .http
        .post(format!("{}/files/users/alice/", h.url))
        .bearer_auth(token("alice"))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body("--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--XyZ--\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(stored(&h, "users/").len(), before);
}

#[tokio::test]
async fn oversize_by_header_is_413_before_reading() {
    let h = Setup::default()
        .set("upload.max_size", "\"64KiB\"")
        .start()
        .await;
    // Only the head is sent: the answer must not wait for the body.
    let request = format!(
        "PUT /files/users/alice/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 100000\r\nConnection: close\r\n\r\n",
        token("alice")
    );
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    let response = raw::parse(&buf[..n]);
    assert_eq!(response.status, 413);
    assert_eq!(h.s3_log().all(), 0);
    assert!(stored(&h, "users/").is_empty());
}

#[tokio::test]
async fn oversize_by_stream_is_413_and_leaves_nothing() {
    let h = Setup::default()
        .set("upload.max_size", "\"64KiB\"")
        .start()
        .await;
    let r = put_chunked(
        &h,
        "users/alice/stream.bin",
        (0..20).map(|_| vec![b'z'; 10_000]).collect(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(stored(&h, "users/").is_empty());
}

#[tokio::test]
async fn oversize_during_a_multipart_upload_aborts_it() {
    // 20 MiB allowed, 30 MiB sent without a length: parts go up, then the upload is aborted.
    let h = Setup::default()
        .set("upload.max_size", "\"20MiB\"")
        .start()
        .await;
    let r = put_chunked(
        &h,
        "users/alice/huge.bin",
        (0..30).map(|_| vec![b'q'; 1024 * 1024]).collect(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        h.s3_log()
            .requests("MULTIPART", BUCKET, "users/alice/huge.bin"),
        1
    );
    assert_eq!(
        h.s3_log().requests("ABORT", BUCKET, "users/alice/huge.bin"),
        1
    );
    assert!(stored(&h, "users/").is_empty());

    // Within the limit, the same path completes.
    let chunks = (0..18).map(|i| vec![b'a' + i; 1024 * 1024]).collect();
    let r = put_chunked(&h, "users/alice/large.bin", chunks).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let stored = h.s3.read(BUCKET, "users/alice/large.bin").unwrap();
    assert_eq!(stored.len(), 18 * 1024 * 1024);
    assert!(stored[..1024 * 1024].iter().all(|&b| b == b'a'));
    assert!(stored[17 * 1024 * 1024..].iter().all(|&b| b == b'a' + 17));
}

#[tokio::test]
async fn a_truncated_body_leaves_nothing() {
    let h = Setup::default().start().await;
    // A small body is held until it is whole and never reaches S3; a larger one streams to S3
    // and is cut off there.
    for (key, length, puts) in [("held.bin", 100_000, 0), ("cut.bin", 2_000_000, 1)] {
        let request = format!(
            "PUT /files/users/alice/{key} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Length: {length}\r\n\r\n",
            token("alice")
        );
        let mut stream = TcpStream::connect(h.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(&[b'c'; 30_000]).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.shutdown().await.unwrap(); // the client vanishes mid-body
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        let key = format!("users/alice/{key}");
        assert!(
            eventually(Duration::from_secs(5), || h
                .s3_log()
                .requests("PUT", BUCKET, &key)
                == puts)
            .await,
            "{key}: {puts} PutObject expected"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(h.s3_log().requests("PUT", BUCKET, &key), puts);
        assert!(!h.s3.exists(BUCKET, &key));
    }
    assert!(stored(&h, "users/").is_empty());
}

#[tokio::test]
async fn an_unauthorized_upload_is_refused_before_its_body_is_read() {
    let h = Setup::default().start().await;
    for auth in [
        String::new(),
        format!("Authorization: Bearer {}\r\n", token("bob")),
    ] {
        let request = format!(
            "PUT /files/users/alice/x.bin HTTP/1.1\r\nHost: x\r\n{auth}Expect: 100-continue\r\n\
             Content-Length: 1000000\r\nConnection: close\r\n\r\n"
        );
        let mut stream = TcpStream::connect(h.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(!text.contains("100 Continue"), "{text}");
        let response = raw::parse(&buf);
        assert!(matches!(response.status, 401 | 403), "{text}");
    }
    assert_eq!(h.s3_log().all(), 0);
}

#[tokio::test]
async fn an_overwrite_is_seen_at_once() {
    let h = Setup::default().start().await;
    let t = token("alice");
    assert_eq!(
        put(&h, "users/alice/v.txt", b"version 1", &[])
            .await
            .status(),
        201
    );
    assert_eq!(
        h.get("users/alice/v.txt", Some(&t))
            .await
            .text()
            .await
            .unwrap(),
        "version 1"
    );
    assert_eq!(
        h.get("users/alice/v.txt", Some(&t)).await.headers()["x-cache"],
        "HIT"
    );
    assert_eq!(
        put(&h, "users/alice/v.txt", b"version 2", &[])
            .await
            .status(),
        201
    );
    let r = h.get("users/alice/v.txt", Some(&t)).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(r.text().await.unwrap(), "version 2");
}

#[tokio::test]
async fn delete_then_404() {
    let h = Setup::default().start().await;
    let t = token("alice");
    put(&h, "users/alice/gone.txt", b"soon gone", &[]).await;
    assert_eq!(h.get("users/alice/gone.txt", Some(&t)).await.status(), 200);
    let r = h
        .http
        .delete(h.object_url("users/alice/gone.txt"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(h.get("users/alice/gone.txt", Some(&t)).await.status(), 404);
    assert!(!h.s3.exists(BUCKET, "users/alice/gone.txt"));
    // Someone else's object: refused.
    h.put("users/bob/keep.txt", b"bob's");
    let r = h
        .http
        .delete(h.object_url("users/bob/keep.txt"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(h.s3.exists(BUCKET, "users/bob/keep.txt"));
}

#[tokio::test]
async fn uploaded_active_content_is_served_as_a_sandboxed_attachment() {
    let h = Setup::default().start().await;
    let svg =
        b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(document.cookie)</script></svg>";
    let html = b"<html><script>alert(1)</script></html>";
    assert_eq!(
        put(&h, "users/alice/evil.svg", svg, &[]).await.status(),
        201
    );
    assert_eq!(
        put(
            &h,
            "users/alice/evil.html",
            html,
            &[("content-type", "text/html")]
        )
        .await
        .status(),
        201
    );
    assert_eq!(
        put(&h, "users/alice/evil.js", b"alert(1)", &[])
            .await
            .status(),
        201
    );
    for key in [
        "users/alice/evil.svg",
        "users/alice/evil.html",
        "users/alice/evil.js",
    ] {
        let r = h.get(key, Some(&token("alice"))).await;
        assert_eq!(r.headers()["content-disposition"], "attachment", "{key}");
        assert_eq!(r.headers()["content-security-policy"], "sandbox", "{key}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{key}");
    }
}

#[tokio::test]
async fn cookie_uploads_need_an_allowed_origin() {
    let h = Setup::default()
        .set("cors.allowed_origins", "[\"https://app.example.com\"]")
        .start()
        .await;
    let cookie = format!("s3warden_token={}", token("alice"));
    let send = |origin: Option<&'static str>| {
        let mut req = h
            .http
            .put(h.object_url("users/alice/c.txt"))
            .header("cookie", &cookie)
            .body("c");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(
        send(Some("https://evil.example")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(None).await, StatusCode::FORBIDDEN);
    assert_eq!(
        send(Some("https://app.example.com")).await,
        StatusCode::CREATED
    );
    // s3warden's own origin counts as same-site.
    let own = Box::leak(h.url.clone().into_boxed_str());
    assert_eq!(send(Some(own)).await, StatusCode::CREATED);
    // A bearer token is not ambient: no Origin needed.
    assert_eq!(put(&h, "users/alice/d.txt", b"d", &[]).await.status(), 201);
}

#[tokio::test]
async fn uploads_through_a_proxy_signed_put_url() {
    let h = Setup::default().start().await;
    let v = sign_urls(
        &h.url,
        &token("alice"),
        serde_json::json!({"bucket": "files", "keys": ["users/alice/signed.txt"], "method": "PUT"}),
    )
    .await;
    let url = v["items"][0]["url"].as_str().unwrap();
    let r = h
        .http
        .put(url)
        .body("uploaded with a signed URL")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        h.s3.read(BUCKET, "users/alice/signed.txt").unwrap(),
        b"uploaded with a signed URL"
    );
    // The same URL does not write another key.
    let other = url.replace("signed.txt", "other.txt");
    assert_eq!(
        h.http.put(other).body("x").send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_key_too_long_for_s3_with_the_bucket_prefix_is_refused_before_s3() {
    let h = Setup::default()
        .set("buckets.files.prefix", "\"tenant-1/\"")
        .start()
        .await;
    let dir = "users/alice/";
    // 1,024 bytes: a valid key, but not once `tenant-1/` is put before it.
    let key = format!("{dir}{}", "k".repeat(1024 - dir.len()));
    let r = put(&h, &key, b"x", &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert!(e["message"].as_str().unwrap().contains("prefix"), "{e}");
    assert_eq!(
        h.get(&key, Some(&token("alice"))).await.status(),
        StatusCode::BAD_REQUEST
    );
    let r = h
        .http
        .post(format!("{}/_sign", h.url))
        .bearer_auth(token("alice"))
        .json(&serde_json::json!({"bucket": "files", "keys": [key]}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["items"][0]["error"], "invalid_key");
    for op in ["GET", "HEAD", "PUT"] {
        assert_eq!(h.s3_log().total(op), 0, "a {op} reached S3");
    }
}

#[tokio::test]
async fn an_upload_completed_with_its_answer_lost_is_found_stored() {
    // Every write reaches S3 and its answer is lost once. Sent again, CompleteMultipartUpload
    // finds the upload gone (`NoSuchUpload`, as MinIO answers), and the object it left stands.
    let (proxy, h) = flaky_writes(true).await;
    let v = put_two_parts(&h, &proxy, "users/alice/lost.bin").await;
    assert!(v["etag"].as_str().unwrap().ends_with("-2\""), "{v}");
}

/// Checks that an upload was answered 201 and stored `key` as `bytes`.
async fn assert_created(h: &Harness, r: reqwest::Response, key: &str, bytes: &[u8]) {
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(h.s3.read(BUCKET, key).unwrap(), bytes);
}

/// s3warden behind a store whose every write fails once (with its answer lost when `lose`).
async fn flaky_writes(lose: bool) -> (crate::common::faults::FlakyWrites, Harness) {
    let proxy = crate::common::faults::FlakyWrites::start().await;
    if lose {
        proxy.lose_answers();
    }
    let h = Setup::default()
        .endpoint(&proxy.endpoint())
        .set("s3.retries", "2")
        .start()
        .await;
    proxy.forward_to(&h.s3.endpoint());
    (proxy, h)
}

/// Uploads 9 MiB of unknown length (two parts) through failing writes: the
/// CreateMultipartUpload, both parts and the CompleteMultipartUpload fail once each, and the
/// upload is stored whole, not aborted. The answer's JSON.
async fn put_two_parts(
    h: &Harness,
    proxy: &crate::common::faults::FlakyWrites,
    key: &str,
) -> Value {
    let chunks: Vec<Vec<u8>> = (0..9).map(|i| vec![b'a' + i; 1024 * 1024]).collect();
    let r = put_chunked(h, key, chunks).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let stored_bytes = h.s3.read(BUCKET, key).unwrap();
    assert_eq!(stored_bytes.len(), 9 * 1024 * 1024);
    assert!(stored_bytes[8 * 1024 * 1024..].iter().all(|&b| b == b'i'));
    assert_eq!(proxy.failed(), 4);
    assert_eq!(h.s3_log().requests("ABORT", BUCKET, key), 0);
    v
}

#[tokio::test]
async fn writes_held_in_memory_are_retried_when_s3_asks() {
    // Every write fails once: the CreateMultipartUpload, both parts and the
    // CompleteMultipartUpload (200 with an InternalError inside) of an upload of unknown length.
    let (proxy, h) = flaky_writes(false).await;
    put_two_parts(&h, &proxy, "users/alice/parts.bin").await;

    // A small body of unknown length is held whole and sent in one PutObject: retried too.
    let r = put_chunked(&h, "users/alice/small.txt", vec![b"small".to_vec()]).await;
    assert_created(&h, r, "users/alice/small.txt", b"small").await;
    assert_eq!(proxy.failed(), 5);

    // And a delete.
    let r = (h.http.delete(h.object_url("users/alice/small.txt")))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(!h.s3.exists(BUCKET, "users/alice/small.txt"));
    assert_eq!(proxy.failed(), 6);

    // A small body with a Content-Length is held whole too.
    let r = put(&h, "users/alice/known.txt", b"known", &[]).await;
    assert_created(&h, r, "users/alice/known.txt", b"known").await;
    assert_eq!(proxy.failed(), 7);

    // A larger one streams to S3 as it arrives and cannot be sent twice: the client gets S3's
    // refusal and nothing is stored.
    let r = (h.http.put(h.object_url("users/alice/streamed.bin")))
        .bearer_auth(token("alice"))
        .body(vec![b's'; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(!h.s3.exists(BUCKET, "users/alice/streamed.bin"));
    assert_eq!(proxy.failed(), 8);
}

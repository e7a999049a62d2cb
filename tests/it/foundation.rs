//! Reading objects through s3warden from a real S3: keys, ranges, conditionals, errors,
//! streaming and the first cut of access control.

use std::time::{Duration, Instant};

use http::StatusCode;
use reqwest::Method;
use s3warden::config::{AwsCredentials, AwsSource};
use s3warden::s3::credentials::Keys;
use s3warden::s3::sigv4::{Payload, Signer};
use serde_json::json;

use crate::common::faults::{Fault, FaultyUpstream};
use crate::common::*;

#[tokio::test]
async fn the_test_s3_rejects_wrong_signatures() {
    let h = Setup::default().start().await;
    h.put("keys/a.txt", b"hello");
    let url = reqwest::Url::parse(&format!("{}/{BUCKET}/keys/a.txt", h.s3.endpoint())).unwrap();
    let send = |secret: &'static str, tamper: bool| {
        let url = url.clone();
        let http = h.http.clone();
        async move {
            let keys = Keys::from_config(
                &AwsCredentials {
                    access_key_id: ACCESS_KEY.into(),
                    secret_access_key: secret.into(),
                    session_token: None,
                },
                "test",
            );
            let mut headers = http::HeaderMap::new();
            headers.insert("range", "bytes=0-1".parse().unwrap());
            Signer::new("us-east-1")
                .sign_headers(
                    &keys,
                    &Method::GET,
                    &url,
                    &mut headers,
                    Payload::Bytes(b""),
                    std::time::SystemTime::now(),
                )
                .unwrap();
            if tamper {
                headers.insert("range", "bytes=0-3".parse().unwrap());
            }
            http.get(url)
                .headers(headers)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(send(SECRET_KEY, false).await, StatusCode::PARTIAL_CONTENT);
    assert_eq!(send("a-wrong-secret", false).await, StatusCode::FORBIDDEN);
    assert_eq!(send(SECRET_KEY, true).await, StatusCode::FORBIDDEN);
    // Unsigned: refused too.
    assert_eq!(
        h.http.get(url).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn wrong_s3_credentials_are_a_502_without_detail() {
    let h = Setup::default().start().await;
    h.put("keys/a.txt", b"hello");
    // A second app, same S3, wrong secret.
    let mut config = (*h.app.config()).clone();
    let credentials = AwsCredentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: "wrong".into(),
        session_token: None,
    };
    (config.secrets.aws).insert(
        "s3".into(),
        AwsSource::Keys {
            credentials,
            origin: "test",
        },
    );
    let app = s3warden::App::new(config).await.unwrap();
    let request = http::Request::get("/files/keys/a.txt")
        .header("authorization", format!("Bearer {}", token("alice")))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = app.handle(request).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "upstream_error");
    let text = body.to_string();
    assert!(
        !text.contains("Signature") && !text.contains("127.0.0.1") && !text.contains(ACCESS_KEY)
    );
}

#[tokio::test]
async fn keys_with_special_characters_round_trip() {
    let h = Setup::default().start().await;
    let t = token("alice");
    let keys = [
        "keys/with space.txt",
        "keys/plus+sign.txt",
        "keys/percent%41literal.txt",
        "keys/tilde~.txt",
        "keys/a=b.txt",
        "keys/quote'.txt",
        "keys/(parens).txt",
        "keys/[brackets].txt",
        "keys/bang!.txt",
        "keys/star*.txt",
        "keys/amp&.txt",
        "keys/dollar$.txt",
        "keys/at@.txt",
        "keys/comma,.txt",
        "keys/semi;.txt",
        "keys/back\\slash.txt",
        "keys/%2e%2e",
        "keys/caf\u{e9}.txt",
        "keys/cafe\u{301}.txt",
        "keys/\u{65e5}\u{672c}\u{8a9e}/\u{1f600}.txt",
        "keys/deep/a/b/c/d/e/f/g/h.txt",
        "keys/...dots/..a",
    ];
    for (i, key) in keys.iter().enumerate() {
        h.put(key, format!("body {i} of {key}").as_bytes());
    }
    for (i, key) in keys.iter().enumerate() {
        let response = h.get(key, Some(&t)).await;
        assert_eq!(response.status(), StatusCode::OK, "{key}");
        assert_eq!(
            response.text().await.unwrap(),
            format!("body {i} of {key}"),
            "{key}"
        );
    }
    // NFC and NFD are different keys, each with its own body.
    assert_ne!(keys[17], keys[18]);
}

#[tokio::test]
async fn hostile_paths_are_400_and_never_reach_s3() {
    let h = Setup::default().start().await;
    h.put("keys/secret.txt", b"x");
    let t = token("alice");
    let auth = format!("Authorization: Bearer {t}\r\n");
    for path in [
        "/files/keys/../keys/secret.txt",
        "/files/keys/%2e%2e/keys/secret.txt",
        "/files/keys/%2E%2E",
        "/files/keys/a%2F..%2Fsecret.txt",
        "/files/keys//secret.txt",
        "/files/keys/./secret.txt",
        "/files/keys/a%00b",
        "/files/keys/a%0d%0ab",
        "/files/keys/a%1fb",
        "/files/keys/a%7fb",
        "/files/keys/%",
        "/files/keys/a%2",
        "/files/keys/%zz",
        "/files/keys/%c0%ae",
        "/files/keys/%ff",
        "/files/keys/",
    ] {
        let response = raw::get(h.addr, path, &auth).await;
        assert_eq!(response.status, 400, "{path}");
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"], "bad_request", "{path}");
    }
    let long = format!("/files/keys/{}", "a".repeat(1020));
    assert_eq!(raw::get(h.addr, &long, &auth).await.status, 400);
    assert_eq!(h.s3_log().all(), 0, "no hostile path reached S3");
}

#[tokio::test]
async fn decoding_happens_once() {
    let h = Setup::default().start().await;
    let t = token("alice");
    // %252e%252e is the literal key "%2e%2e", never the parent directory.
    h.put("keys/%2e%2e", b"literal percent key");
    h.put("secret.txt", b"outside the prefix");
    let auth = format!("Authorization: Bearer {t}\r\n");
    let response = raw::get(h.addr, "/files/keys/%252e%252e", &auth).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"literal percent key");
    assert_eq!(h.s3_log().requests("GET", BUCKET, "keys/%2e%2e"), 1);
    // %252F is a literal "%2F" inside one segment, not a slash.
    let response = raw::get(h.addr, "/files/keys/%252F..%252Fsecret.txt", &auth).await;
    assert_eq!(response.status, 404);
    assert_eq!(
        h.s3_log()
            .requests("GET", BUCKET, "keys/%2F..%2Fsecret.txt"),
        1
    );
    // A backslash is an ordinary character.
    let response = raw::get(h.addr, "/files/keys/..%5Csecret.txt", &auth).await;
    assert_eq!(response.status, 404);
    assert_eq!(h.s3_log().requests("GET", BUCKET, "secret.txt"), 0);
}

#[tokio::test]
async fn ranges() {
    let h = Setup::default().start().await;
    let t = token("alice");
    let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    h.put("keys/r.bin", &body);
    let get = |range: &'static str| {
        let req = h
            .http
            .get(h.object_url("keys/r.bin"))
            .bearer_auth(&t)
            .header("range", range);
        async move { req.send().await.unwrap() }
    };
    let r = get("bytes=0-9").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 0-9/1000");
    assert_eq!(r.headers()["content-length"], "10");
    assert_eq!(r.bytes().await.unwrap(), body[0..10]);

    let r = get("bytes=-100").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 900-999/1000");
    assert_eq!(r.bytes().await.unwrap(), body[900..]);

    let r = get("bytes=990-").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 990-999/1000");
    assert_eq!(r.bytes().await.unwrap(), body[990..]);

    let r = get("bytes=995-5000").await;
    assert_eq!(r.headers()["content-range"], "bytes 995-999/1000");

    let r = get("bytes=1000-1010").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */1000");
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "range_not_satisfiable");

    // Multiple ranges: the whole object.
    let r = get("bytes=0-1,5-6").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), body);

    // Malformed: ignored, the whole object.
    let r = get("bytes=abc").await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn head_errors_carry_no_body_over_http2_either() {
    // An HTTP/2 client resets a HEAD stream that brings data; HTTP/1 drops it on its own.
    let h = Setup::default().start().await;
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (key, status) in [
        ("users/alice/missing", StatusCode::NOT_FOUND),
        ("users/bob/x", StatusCode::FORBIDDEN),
    ] {
        let head = http2
            .head(h.object_url(key))
            .bearer_auth(token("alice"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.version(), reqwest::Version::HTTP_2);
        assert_eq!(head.status(), status);
        assert_eq!(head.bytes().await.unwrap().len(), 0, "{key}");
    }
}

#[tokio::test]
async fn head_has_get_headers_and_no_body() {
    let h = Setup::default().start().await;
    let t = token("alice");
    h.put("keys/page.html", b"<script>alert(1)</script>");
    let get = h.get("keys/page.html", Some(&t)).await;
    let head = h
        .http
        .head(h.object_url("keys/page.html"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    for name in [
        "etag",
        "last-modified",
        "content-type",
        "content-length",
        "accept-ranges",
        "x-content-type-options",
        "content-disposition",
        "content-security-policy",
        "cache-control",
    ] {
        assert_eq!(head.headers().get(name), get.headers().get(name), "{name}");
        assert!(get.headers().contains_key(name), "{name}");
    }
    assert_eq!(get.headers()["content-disposition"], "attachment");
    assert_eq!(get.headers()["content-security-policy"], "sandbox");
    assert_eq!(get.headers()["x-content-type-options"], "nosniff");
    assert_eq!(get.headers()["content-type"], "text/html");
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn conditional_requests_answer_304() {
    let h = Setup::default().start().await;
    let t = token("alice");
    h.put("keys/c.txt", b"conditional");
    let first = h.get("keys/c.txt", Some(&t)).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let modified = first.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_owned();

    let r = h
        .http
        .get(h.object_url("keys/c.txt"))
        .bearer_auth(&t)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    let r = h
        .http
        .get(h.object_url("keys/c.txt"))
        .bearer_auth(&t)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = h
        .http
        .get(h.object_url("keys/c.txt"))
        .bearer_auth(&t)
        .header("if-modified-since", &modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    let r = h
        .http
        .get(h.object_url("keys/c.txt"))
        .bearer_auth(&t)
        .header("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn missing_objects_are_404() {
    let h = Setup::default().start().await;
    let r = h.get("keys/nothing-here", Some(&token("alice"))).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        e,
        json!({"error": "not_found", "message": "no such object"})
    );
}

/// An object in an S3 Glacier storage class that was not restored: S3 refuses the GET with
/// `InvalidObjectState`, and the client is told so, not that the store failed.
#[tokio::test]
async fn an_archived_object_is_403_and_says_why() {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidObjectState</Code>\
                <Message>The operation is not valid for the object's storage class</Message>\
                <StorageClass>GLACIER</StorageClass></Error>";
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let up = FaultyUpstream::start(Fault::Answer(Box::leak(answer.into_boxed_str()))).await;
    let h = Setup::default().endpoint(&up.endpoint()).start().await;
    let t = token("alice");
    for _ in 0..2 {
        let r = h.get("photos/old.jpg", Some(&t)).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"], "object_archived");
        assert!(e["message"].as_str().unwrap().contains("restored"), "{e}");
    }
}

#[tokio::test]
async fn s3_down_is_502() {
    // A port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let h = Setup::default()
        .endpoint(&format!("http://127.0.0.1:{port}"))
        .start()
        .await;
    let r = h.get("keys/a", Some(&token("alice"))).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "upstream_error");
    assert!(!e.to_string().contains(&port.to_string()));
}

#[tokio::test]
async fn s3_errors_are_502_after_retries_without_their_body() {
    let up = FaultyUpstream::start(Fault::ServiceUnavailable).await;
    let h = Setup::default().endpoint(&up.endpoint()).start().await;
    let r = h.get("keys/a", Some(&token("alice"))).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("SlowDown") && !text.contains("s3.internal"),
        "{text}"
    );
    assert_eq!(up.requests(), 3, "one try and s3.retries = 2 retries");
}

#[tokio::test]
async fn retries_are_spread_by_full_jitter() {
    let up = FaultyUpstream::start(Fault::ServiceUnavailable).await;
    let h = Setup::default()
        .endpoint(&up.endpoint())
        .set("s3.timeout", "\"5s\"")
        .start()
        .await;
    let requests = 16;
    for i in 0..requests {
        let r = h.get(&format!("keys/{i}"), Some(&token("alice"))).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
    let arrivals = up.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), requests * 3);
    // The pause before each request's first retry: random between 0 and 100 ms, not a step.
    let pauses: Vec<Duration> = arrivals.chunks(3).map(|a| a[1] - a[0]).collect();
    let (min, max) = (pauses.iter().min().unwrap(), pauses.iter().max().unwrap());
    assert!(*max < Duration::from_millis(150), "{pauses:?}");
    assert!(*max - *min > Duration::from_millis(40), "{pauses:?}");
}

#[tokio::test]
async fn s3_hanging_is_504_within_the_timeout() {
    let up = FaultyUpstream::start(Fault::Hang).await;
    let h = Setup::default()
        .endpoint(&up.endpoint())
        .set("s3.timeout", "\"1s\"")
        .start()
        .await;
    let started = Instant::now();
    let r = h.get("keys/a", Some(&token("alice"))).await;
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_reset_mid_body_aborts_the_response() {
    let up = FaultyUpstream::start(Fault::ResetMidBody {
        total: 100_000,
        sent: 10_000,
    })
    .await;
    // Too large to cache, so it streams.
    let h = Setup::default()
        .endpoint(&up.endpoint())
        .set("cache.max_object_size", "\"64KiB\"")
        .start()
        .await;
    let r = h.get("keys/big.bin", Some(&token("alice"))).await;
    // The head went out before the failure; the body must not complete.
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "100000");
    assert!(
        r.bytes().await.is_err(),
        "a short body must be an error, never a short 200"
    );
}

#[tokio::test]
async fn a_reset_while_filling_the_cache_is_a_502_and_stores_nothing() {
    let up = FaultyUpstream::start(Fault::ResetMidBody {
        total: 100_000,
        sent: 10_000,
    })
    .await;
    let h = Setup::default().endpoint(&up.endpoint()).start().await;
    for _ in 0..2 {
        let r = h.get("keys/big.bin", Some(&token("alice"))).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
    assert_eq!(h.app.cache().size().await.1, 0, "no truncated entry");
    assert!(
        up.requests() >= 2,
        "nothing was cached, so S3 is asked again"
    );
}

#[tokio::test]
async fn bodies_stream_before_s3_has_sent_everything() {
    let total = 4 * 1024 * 1024;
    let up = FaultyUpstream::start(Fault::StallMidBody {
        total,
        first: 1024 * 1024,
    })
    .await;
    let h = Setup::default()
        .endpoint(&up.endpoint())
        .set("s3.timeout", "\"10s\"")
        .set("cache.max_object_size", "\"1MiB\"")
        .start()
        .await;
    let mut r = h.get("keys/big.bin", Some(&token("alice"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Bytes arrive while S3 is still holding back the rest of the object.
    let mut received = 0;
    while received < 512 * 1024 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), r.chunk())
            .await
            .expect("first bytes arrive while the upstream stalls")
            .unwrap()
            .unwrap();
        received += chunk.len();
    }
    up.release();
    while let Some(chunk) = r.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert_eq!(received, total);
}

#[tokio::test]
async fn client_headers_and_query_never_reach_s3() {
    // A fake S3 that records the request head it receives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 65536];
            let n = socket.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            // The readiness probe's HEAD of the bucket is not the request under test.
            if head.starts_with("HEAD ") {
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                continue;
            }
            *record.lock().unwrap() = head;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\netag: \"e\"\r\n\r\nok")
                .await;
        }
    });
    let h = Setup::default()
        .endpoint(&format!("http://{addr}"))
        .start()
        .await;
    let r = h
        .http
        .get(format!(
            "{}?acl&response-content-type=text/html&x-id=CopyObject&versionId=1",
            h.object_url("keys/a.txt")
        ))
        .bearer_auth(token("alice"))
        .header("x-amz-copy-source", "other-bucket/secret")
        .header("x-amz-acl", "public-read")
        .header("x-amz-server-side-encryption-customer-key", "k")
        .header("x-forwarded-host", "evil.example")
        .header("cookie", "tracking=abc")
        .header("range", "bytes=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen = seen.lock().unwrap().clone().to_ascii_lowercase();
    let request_line = seen.lines().next().unwrap();
    assert_eq!(request_line, format!("get /{BUCKET}/keys/a.txt http/1.1"));
    for needle in [
        "copy-source",
        "x-amz-acl",
        "customer-key",
        "forwarded",
        "cookie",
        "tracking",
        "bearer ",
        "response-content-type",
        "acl",
    ] {
        let count = seen.matches(needle).count();
        assert_eq!(count, 0, "{needle} leaked into {seen}");
    }
    // The normalized range is forwarded: that one is ours.
    assert!(seen.contains("range: bytes=0-1"));
    assert!(seen.contains("authorization: aws4-hmac-sha256"));
}

#[tokio::test]
async fn token_checks() {
    let h = Setup::default().start().await;
    h.put("photos/a.png", b"png");
    let status = |t: Option<String>| {
        let h = &h;
        async move { h.get("photos/a.png", t.as_deref()).await }
    };
    // valid HS256, RS256, ES256
    assert_eq!(status(Some(token("alice"))).await.status(), 200);
    let rs = sign(
        jsonwebtoken::Algorithm::RS256,
        &rsa_key(),
        None,
        &claims("alice"),
    );
    assert_eq!(status(Some(rs)).await.status(), 200);
    let es = sign(
        jsonwebtoken::Algorithm::ES256,
        &ec_key(),
        None,
        &claims("alice"),
    );
    assert_eq!(status(Some(es)).await.status(), 200);
    // The hand-made signer signs what jsonwebtoken's does.
    let plain = hs256_with_header(&json!({"alg": "HS256", "typ": "JWT"}), &claims("alice"));
    assert_eq!(status(Some(plain)).await.status(), 200);
    // An expiry at the end of time is a valid one, asked for twice (the second from memory).
    let forever = hs256(&claims_with("alice", json!({"exp": u64::MAX})));
    for _ in 0..2 {
        assert_eq!(status(Some(forever.clone())).await.status(), 200);
    }

    let refused = [
        // expired beyond the leeway
        hs256(&claims_with("alice", json!({"exp": now() - 60}))),
        // wrong signature
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims("alice"),
            &jsonwebtoken::EncodingKey::from_secret(b"another-secret-that-is-long-enough!!"),
        )
        .unwrap(),
        // alg: none
        handmade(&json!({"alg": "none", "typ": "JWT"}), &claims("alice"), b""),
        // a critical extension nobody here understands (RFC 7515 §4.1.11)
        hs256_with_header(
            &json!({"alg": "HS256", "crit": ["x"], "x": 1}),
            &claims("alice"),
        ),
        // wrong issuer, wrong audience
        hs256(&claims_with("alice", json!({"iss": "https://evil.test/"}))),
        hs256(&claims_with("alice", json!({"aud": "other"}))),
        // garbage
        "not-a-token".to_owned(),
    ];
    for t in refused {
        let r = status(Some(t.clone())).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{t}");
        let www = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            www.starts_with("Bearer ") && www.contains("error=\"invalid_token\""),
            "{www}"
        );
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"], "invalid_token");
    }
    // No token: 401 with a bare challenge.
    let r = status(None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"s3warden\"");
}

#[tokio::test]
async fn public_rules_need_no_token_and_unruled_keys_are_denied() {
    let h = Setup::default().start().await;
    h.put("public/logo.png", b"logo");
    h.put("elsewhere/x.txt", b"x");
    let r = h.get("public/logo.png", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "public, max-age=3600");
    // No rule covers elsewhere/: anonymous → 401, with a token → 403.
    assert_eq!(
        h.get("elsewhere/x.txt", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = h.get("elsewhere/x.txt", Some(&token("alice"))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "forbidden");
    // Private objects are private to browsers.
    h.put("photos/p.png", b"p");
    let r = h.get("photos/p.png", Some(&token("alice"))).await;
    assert_eq!(r.headers()["cache-control"], "private, max-age=3600");
    assert_eq!(h.s3_log().requests("GET", BUCKET, "elsewhere/x.txt"), 0);
}

#[tokio::test]
async fn unknown_buckets_and_routes_are_404_and_health_is_200() {
    let h = Setup::default().start().await;
    let status = |path: &str| {
        let request = h
            .http
            .get(format!("{}{path}", h.url))
            .bearer_auth(token("a"));
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(status("/nope/a.txt").await, StatusCode::NOT_FOUND);
    assert_eq!(status("/_health").await, StatusCode::OK);
    assert_eq!(status("/_nothing").await, StatusCode::NOT_FOUND);
    let r = h.http.patch(h.object_url("keys/a")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h.s3_log().all(), 0);
}

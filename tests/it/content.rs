//! Content safety: whatever type S3 has stored, nothing runs as script on s3warden's origin.
//! Objects are stored straight through S3's API, as other programs (and pre-signed PUTs) do.

use std::time::Duration;

use http::StatusCode;

use crate::common::*;

/// Types a browser may run script from, or that it cannot be trusted to read one way.
const HOSTILE: &[&str] = &[
    "text/html",
    "TEXT/HTML; charset=utf-8",
    "text/html ",
    "application/xhtml+xml",
    "image/svg+xml",
    "image/svg+xml; charset=utf-8",
    "text/xml",
    "application/xml",
    "text/xsl",
    "text/xsl; charset=utf-8",
    "application/xslt+xml",
    "application/vnd.acme.report+xml",
    "multipart/x-mixed-replace; boundary=frame",
    "application/javascript",
    "text/javascript; charset=utf-8",
    "application/x-shockwave-flash",
    "text/cache-manifest",
    "text/vtt",
    "*/*",
];

/// Values that are not one well-formed media type: served as `application/octet-stream`.
const MALFORMED: &[&str] = &[
    "text/plain, text/html",
    "image/png,text/html",
    "text/plain; charset=utf-8, text/html",
    "application/pdf, text/html",
    "text/plain;text/html",
    "text/ html",
    "text",
    ";",
    "text/plain; charset",
];

/// Shown inline, as before.
const PASSIVE: &[&str] = &[
    "image/png",
    "image/jpeg",
    "text/plain; charset=utf-8",
    "application/pdf",
    "video/mp4",
    "application/json",
];

const SCRIPT: &[u8] = b"<html><script>fetch('/_sign',{method:'POST'})</script></html>";

fn assert_sandboxed(r: &reqwest::Response, what: &str) {
    let h = r.headers();
    assert_eq!(
        h.get("content-disposition").map(|v| v.as_bytes()),
        Some(&b"attachment"[..]),
        "{what}: {h:?}"
    );
    assert_eq!(
        h.get("content-security-policy").map(|v| v.as_bytes()),
        Some(&b"sandbox"[..]),
        "{what}: {h:?}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
}

fn assert_inline(r: &reqwest::Response, what: &str) {
    let h = r.headers();
    assert!(h.get("content-disposition").is_none(), "{what}: {h:?}");
    assert!(h.get("content-security-policy").is_none(), "{what}: {h:?}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
}

/// Every way an object leaves s3warden: MISS, HIT, HEAD, a range cut from memory, 304, a ranged
/// miss, a streamed (uncached) object with its HEAD, range and 304, and a STALE answer.
async fn every_path(
    h: &Harness,
    key: &str,
    big: &str,
    fresh: &str,
    check: &dyn Fn(&reqwest::Response, &str),
) {
    let t = token("alice");
    let get = |key: String, extra: Vec<(&'static str, String)>, head: bool| {
        let t = t.clone();
        let url = h.object_url(&key);
        let client = h.http.clone();
        async move {
            let mut req = if head {
                client.head(url)
            } else {
                client.get(url)
            };
            req = req.bearer_auth(t);
            for (k, v) in extra {
                req = req.header(k, v);
            }
            req.send().await.unwrap()
        }
    };
    let r = get(key.into(), vec![], false).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-cache"], "MISS");
    check(&r, &format!("{key} MISS"));
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = get(key.into(), vec![], false).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    check(&r, &format!("{key} HIT"));
    let r = get(key.into(), vec![], true).await;
    check(&r, &format!("{key} HEAD"));
    let r = get(key.into(), vec![("range", "bytes=0-3".into())], false).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    check(&r, &format!("{key} range"));
    let r = get(key.into(), vec![("if-none-match", etag.clone())], false).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    check(&r, &format!("{key} 304"));

    let r = get(fresh.into(), vec![("range", "bytes=0-3".into())], false).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["x-cache"], "BYPASS");
    check(&r, &format!("{fresh} ranged miss"));

    let r = get(big.into(), vec![], false).await;
    assert_eq!(r.headers()["x-cache"], "BYPASS");
    check(&r, &format!("{big} streamed"));
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let _ = r.bytes().await;
    let r = get(big.into(), vec![], true).await;
    check(&r, &format!("{big} HEAD"));
    let r = get(big.into(), vec![("range", "bytes=10-20".into())], false).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    check(&r, &format!("{big} streamed range"));
    let r = get(big.into(), vec![("if-none-match", etag)], false).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    check(&r, &format!("{big} streamed 304"));
}

async fn harness() -> Harness {
    Setup::default()
        .set("cache.max_object_size", "\"4KiB\"")
        .set("cache.ttl", "\"1s\"")
        .set("s3.timeout", "\"500ms\"")
        .start()
        .await
}

#[tokio::test]
async fn hostile_types_stored_in_s3_are_sandboxed_attachments_on_every_path() {
    let h = harness().await;
    let big = SCRIPT.repeat(100);
    let mut cached = Vec::new();
    for (i, t) in HOSTILE.iter().chain(MALFORMED).enumerate() {
        // Keys whose extension alone would look harmless: the stored type is what is judged.
        let (key, big_key, fresh) = (
            format!("photos/h{i}.png"),
            format!("photos/big{i}.txt"),
            format!("photos/fresh{i}.txt"),
        );
        h.put_typed(&key, SCRIPT, t.as_bytes()).await;
        h.put_typed(&big_key, &big, t.as_bytes()).await;
        h.put_typed(&fresh, SCRIPT, t.as_bytes()).await;
        let malformed = MALFORMED.contains(t);
        let check = move |r: &reqwest::Response, what: &str| {
            assert_sandboxed(r, &format!("{what} ({t:?})"));
            if malformed && r.status() != StatusCode::NOT_MODIFIED {
                assert_eq!(
                    r.headers()["content-type"],
                    "application/octet-stream",
                    "{t:?}"
                );
            }
        };
        every_path(&h, &key, &big_key, &fresh, &check).await;
        cached.push((key, *t));
    }
    // A type S3 has empty: guessed from the key, and `.html` is no picture.
    h.put_typed("photos/empty.html", SCRIPT, b"").await;
    h.put_typed("photos/empty-big.html", &big, b"").await;
    h.put_typed("photos/empty-fresh.html", SCRIPT, b"").await;
    every_path(
        &h,
        "photos/empty.html",
        "photos/empty-big.html",
        "photos/empty-fresh.html",
        &|r: &reqwest::Response, what: &str| assert_sandboxed(r, what),
    )
    .await;

    // STALE: the entries outlive their ttl while S3 is down.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.s3.stop();
    for (key, t) in &cached {
        let r = h.get(key, Some(&token("alice"))).await;
        assert_eq!(r.headers()["x-cache"], "STALE", "{key}");
        assert_sandboxed(&r, &format!("{key} STALE ({t:?})"));
    }
}

/// Several stores keep the `aws-chunked` coding of an SDK's streaming upload with the object
/// (S3 keeps an empty one): it says how the upload was sent, not how the bytes are stored, and
/// a client told it fails to decode them. A real coding stays.
#[tokio::test]
async fn upload_codings_stored_with_an_object_are_not_passed_on() {
    let h = harness().await;
    let big = vec![b'z'; 8 * 1024];
    let cases: [(&str, &[u8], Option<&str>); 3] = [
        ("chunked", b"aws-chunked", None),
        ("both", b"aws-chunked,gzip", Some("gzip")),
        ("empty", b"", None),
    ];
    for (name, coding, expected) in cases {
        for (key, bytes) in [
            (format!("photos/{name}.bin"), &b"small"[..]),
            (format!("photos/{name}-big.bin"), &big[..]),
        ] {
            put_to_s3(&h.s3, &key, bytes, &[("content-encoding", coding)]).await;
            for head in [false, true, false] {
                let url = h.object_url(&key);
                let req = if head {
                    h.http.head(url)
                } else {
                    h.http.get(url)
                };
                let r = req.bearer_auth(token("alice")).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK, "{key}");
                let sent = r.headers().get("content-encoding");
                let what = format!("{key} {:?}", r.headers().get("x-cache"));
                assert_eq!(sent.map(|v| v.to_str().unwrap()), expected, "{what}");
                if !head {
                    assert_eq!(r.bytes().await.unwrap(), bytes, "{what}");
                }
            }
        }
    }
}

#[tokio::test]
async fn passive_types_stay_inline() {
    let h = harness().await;
    let big = vec![b'x'; 8 * 1024];
    for (i, t) in PASSIVE.iter().enumerate() {
        let (key, big_key, fresh) = (
            format!("photos/p{i}.html"),
            format!("photos/pbig{i}.html"),
            format!("photos/pfresh{i}.html"),
        );
        h.put_typed(&key, b"passive bytes", t.as_bytes()).await;
        h.put_typed(&big_key, &big, t.as_bytes()).await;
        h.put_typed(&fresh, b"passive bytes", t.as_bytes()).await;
        let check = move |r: &reqwest::Response, what: &str| {
            // S3's own 304 for a streamed object names no type: s3warden's says what its 200
            // said, since a browser merges a 304's headers into the copy it keeps.
            assert_inline(r, &format!("{what} ({t:?})"));
            if r.status() != StatusCode::NOT_MODIFIED {
                assert_eq!(r.headers()["content-type"], *t);
            }
        };
        every_path(&h, &key, &big_key, &fresh, &check).await;
    }
}

#[tokio::test]
async fn two_content_types_from_the_store_are_one_too_many() {
    let up = crate::common::faults::FaultyUpstream::start(crate::common::faults::Fault::Answer(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\
             content-type: text/html\r\netag: \"two\"\r\n\r\nhello",
    ))
    .await;
    let h = Setup::default().endpoint(&up.endpoint()).start().await;
    let r = h.get("photos/two.txt", Some(&token("alice"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_sandboxed(&r, "two types");
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
}

#[tokio::test]
async fn every_answer_says_nosniff() {
    let h = Setup::default()
        .set("cors.allowed_origins", "[\"https://app.test\"]")
        .start()
        .await;
    let t = token("alice");
    let answers = [
        h.http
            .get(format!("{}/_health", h.url))
            .send()
            .await
            .unwrap(),
        h.http
            .request(http::Method::OPTIONS, h.object_url("photos/a.png"))
            .header("origin", "https://app.test")
            .header("access-control-request-method", "GET")
            .send()
            .await
            .unwrap(),
        h.http
            .post(format!("{}/_sign", h.url))
            .bearer_auth(&t)
            .json(&serde_json::json!({"bucket": "files", "keys": ["photos/a.png"]}))
            .send()
            .await
            .unwrap(),
        h.http
            .put(h.object_url("users/alice/n.txt"))
            .bearer_auth(&t)
            .body("n")
            .send()
            .await
            .unwrap(),
        h.get("photos/missing.png", Some(&t)).await,
        h.get("photos/a.png", None).await,
    ];
    for r in answers {
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{} {:?}",
            r.status(),
            r.headers()
        );
    }
}

//! The cache against the real in-process S3, counting every request S3 receives.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::common::faults::{Fault, FaultyUpstream};
use crate::common::*;

fn x_cache(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn concurrent_cold_reads_make_one_s3_request() {
    let h = Setup::default().start().await;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    h.put("photos/cold.bin", &body);
    let t = token("alice");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let req = h.http.get(h.object_url("photos/cold.bin")).bearer_auth(&t);
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), body);
    }
    assert_eq!(h.s3_log().requests("GET", BUCKET, "photos/cold.bin"), 1);
    assert_eq!(h.metric("s3warden_cache_misses_total").await, Some(1));
    let hits = h.metric("s3warden_cache_hits_total").await.unwrap();
    let waited = h
        .metric("s3warden_cache_coalesced_waits_total")
        .await
        .unwrap();
    assert_eq!(hits + waited, 99, "every other request waited or hit");
}

#[tokio::test]
async fn a_second_read_is_a_hit_without_s3() {
    let h = Setup::default().start().await;
    h.put("photos/a.png", b"a photo");
    let t = token("alice");
    let first = h.get("photos/a.png", Some(&t)).await;
    assert_eq!(x_cache(&first), "MISS");
    let second = h.get("photos/a.png", Some(&t)).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.headers()["etag"], first.headers()["etag"]);
    assert_eq!(second.text().await.unwrap(), "a photo");
    // Another user with the same rights shares the entry.
    let third = h.get("photos/a.png", Some(&token("bob"))).await;
    assert_eq!(x_cache(&third), "HIT");
    assert_eq!(h.s3_log().all(), 1);
}

#[tokio::test]
async fn after_ttl_an_unchanged_object_costs_one_conditional_request_and_no_body() {
    let h = Setup::default().set("cache.ttl", "\"1s\"").start().await;
    let body = vec![7u8; 100_000];
    h.put("photos/a.bin", &body);
    let t = token("alice");
    assert_eq!(x_cache(&h.get("photos/a.bin", Some(&t)).await), "MISS");
    let fetched = h.app.metrics().s3_bytes_total();
    assert_eq!(fetched, 100_000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = h.get("photos/a.bin", Some(&t)).await;
    assert_eq!(x_cache(&r), "REVALIDATED");
    assert_eq!(r.bytes().await.unwrap(), body);
    assert_eq!(h.s3_log().requests("GET304", BUCKET, "photos/a.bin"), 1);
    assert_eq!(h.s3_log().requests("GET", BUCKET, "photos/a.bin"), 2);
    assert_eq!(
        h.app.metrics().s3_bytes_total(),
        fetched,
        "a 304 moves no body"
    );
    // Fresh again: the next read is a plain hit.
    assert_eq!(x_cache(&h.get("photos/a.bin", Some(&t)).await), "HIT");
    assert_eq!(h.s3_log().requests("GET", BUCKET, "photos/a.bin"), 2);
}

#[tokio::test]
async fn a_changed_object_is_fetched_again_after_ttl() {
    let h = Setup::default().set("cache.ttl", "\"1s\"").start().await;
    h.put("photos/a.txt", b"version one");
    let t = token("alice");
    assert_eq!(
        h.get("photos/a.txt", Some(&t)).await.text().await.unwrap(),
        "version one"
    );
    h.put("photos/a.txt", b"version two!");
    // Still fresh: the old bytes.
    assert_eq!(
        h.get("photos/a.txt", Some(&t)).await.text().await.unwrap(),
        "version one"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = h.get("photos/a.txt", Some(&t)).await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(r.text().await.unwrap(), "version two!");
    assert_eq!(x_cache(&h.get("photos/a.txt", Some(&t)).await), "HIT");
    let metrics = h.app.metrics().render();
    assert!(
        metrics.contains("s3warden_cache_revalidations_changed_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn stale_entries_are_served_while_s3_is_down_within_stale_if_error() {
    let h = Setup::default()
        .set("cache.ttl", "\"200ms\"")
        .set("cache.stale_if_error", "\"1s\"")
        .set("s3.timeout", "\"500ms\"")
        .start()
        .await;
    h.put("photos/a.txt", b"still here");
    let t = token("alice");
    assert_eq!(
        h.get("photos/a.txt", Some(&t)).await.status(),
        StatusCode::OK
    );
    h.s3.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = h.get("photos/a.txt", Some(&t)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(x_cache(&r), "STALE");
    assert_eq!(r.text().await.unwrap(), "still here");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = h.get("photos/a.txt", Some(&t)).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_requester_that_leaves_mid_transfer_does_not_poison_the_entry() {
    // Real S3: the first client reads part of the body and hangs up.
    let h = Setup::default().start().await;
    let body: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
    h.put("photos/big.bin", &body);
    let t = token("alice");
    let mut r = h.get("photos/big.bin", Some(&t)).await;
    let _ = r.chunk().await.unwrap();
    drop(r);
    let again = h.get("photos/big.bin", Some(&t)).await;
    assert_eq!(x_cache(&again), "HIT");
    assert_eq!(again.bytes().await.unwrap(), body);

    // Faulty upstream: the first client gives up while S3 is still sending.
    let (up, h, first) = stalled_fill().await;
    let second = {
        let req = h.http.get(h.object_url("photos/slow.bin")).bearer_auth(&t);
        tokio::spawn(async move { req.send().await.unwrap().bytes().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.abort();
    up.release();
    let bytes = second.await.unwrap();
    assert_eq!(bytes.len(), STALLED_TOTAL);
    assert!(
        bytes[..100_000].iter().all(|&b| b == b'x') && bytes[100_000..].iter().all(|&b| b == b'y')
    );
    let third = h.get("photos/slow.bin", Some(&t)).await;
    assert_eq!(x_cache(&third), "HIT");
    assert_eq!(third.bytes().await.unwrap(), bytes);
}

/// Length of the object `stalled_fill` asks for.
const STALLED_TOTAL: usize = 300_000;

/// A daemon whose S3 sends the first 100,000 of 300,000 bytes and waits for `release`, and a
/// GET of `photos/slow.bin` it is sending.
async fn stalled_fill() -> (
    FaultyUpstream,
    Harness,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let up = FaultyUpstream::start(Fault::StallMidBody {
        total: STALLED_TOTAL,
        first: 100_000,
    })
    .await;
    let h = Setup::default().endpoint(&up.endpoint()).start().await;
    let first = {
        let req = h.http.get(h.object_url("photos/slow.bin"));
        let req = req.bearer_auth(token("alice"));
        tokio::spawn(async move { req.send().await })
    };
    assert!(eventually(Duration::from_secs(5), || up.requests() == 1).await);
    (up, h, first)
}

/// A fill in progress is discarded only when its own key is invalidated: a user who may delete
/// some key, deleting it (or a key that does not exist) in a loop, cannot keep the cache from
/// storing anything else.
#[tokio::test]
async fn invalidating_one_key_does_not_discard_the_fill_of_another() {
    let (up, h, first) = stalled_fill().await;
    let object = |key: &str| s3warden::s3::S3Object {
        store: "s3".into(),
        bucket: BUCKET.into(),
        key: key.into(),
    };
    for _ in 0..100 {
        h.app
            .cache()
            .invalidate(&object("users/alice/missing"))
            .await;
    }
    up.release();
    let body = first.await.unwrap().unwrap().bytes().await.unwrap();
    assert_eq!(body.len(), STALLED_TOTAL);
    let again = h.get("photos/slow.bin", Some(&token("alice"))).await;
    assert_eq!(x_cache(&again), "HIT");
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn objects_over_max_object_size_stream_and_are_never_cached() {
    let h = Setup::default()
        .set("cache.max_object_size", "\"64KiB\"")
        .start()
        .await;
    let body = vec![1u8; 200_000];
    h.put("photos/large.bin", &body);
    let t = token("alice");
    for _ in 0..3 {
        let r = h.get("photos/large.bin", Some(&t)).await;
        assert_eq!(x_cache(&r), "BYPASS");
        assert_eq!(r.bytes().await.unwrap(), body);
    }
    assert_eq!(h.s3_log().requests("GET", BUCKET, "photos/large.bin"), 3);
    let (bytes, _) = h.app.cache().size().await;
    assert!(bytes < 4096, "only a small marker, not the body: {bytes}");
}

/// A download resumed with `Range` and `If-Range` on an object too large to cache (or not
/// cached yet) gets the rest when the object is unchanged, and all of it when it changed.
#[tokio::test]
async fn if_range_on_a_streamed_object_resumes_what_is_unchanged() {
    let h = Setup::default()
        .set("cache.max_object_size", "\"64KiB\"")
        .start()
        .await;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    h.put("photos/resume.bin", &body);
    let t = token("alice");
    let first = h.get("photos/resume.bin", Some(&t)).await;
    assert_eq!(x_cache(&first), "BYPASS");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let modified = first.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_owned();
    let resume = |range: &'static str, if_range: String| {
        let req = h.http.get(h.object_url("photos/resume.bin"));
        let req = req.bearer_auth(&t).header("range", range);
        async move { req.header("if-range", if_range).send().await.unwrap() }
    };
    for validator in [etag.clone(), modified] {
        let r = resume("bytes=150000-", validator.clone()).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{validator}");
        assert_eq!(r.headers()["content-range"], "bytes 150000-199999/200000");
        assert_eq!(r.bytes().await.unwrap(), body[150_000..]);
    }
    // A changed object, or a weak tag (If-Range needs a strong one): all of it.
    for validator in ["\"changed\"".to_owned(), format!("W/{etag}")] {
        let r = resume("bytes=150000-", validator.clone()).await;
        assert_eq!(r.status(), StatusCode::OK, "{validator}");
        assert_eq!(r.bytes().await.unwrap(), body);
    }
    let r = resume("bytes=300000-", "\"changed\"".into()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), body);
    let r = resume("bytes=300000-", etag).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */200000");
}

/// A daemon whose cache holds 1 MiB, of objects up to 256 KiB.
async fn small_cache() -> Harness {
    Setup::default()
        .set("cache.capacity", "\"1MiB\"")
        .set("cache.max_object_size", "\"256KiB\"")
        .start()
        .await
}

#[tokio::test]
async fn cached_bytes_never_exceed_capacity() {
    let capacity = 1024 * 1024;
    let h = small_cache().await;
    let t = token("alice");
    let object = vec![3u8; 100_000];
    for i in 0..32 {
        h.put(&format!("photos/{i}.bin"), &object);
    }
    // 3.2 MB read, twice over, against a 1 MiB cache.
    for round in 0..2 {
        for i in 0..32 {
            let r = h.get(&format!("photos/{i}.bin"), Some(&t)).await;
            assert_eq!(r.status(), StatusCode::OK, "round {round} object {i}");
            assert_eq!(r.bytes().await.unwrap().len(), object.len());
            let (bytes, _) = h.app.cache().size_now();
            assert!(bytes <= capacity, "{bytes} cached bytes > {capacity}");
        }
    }
    let (bytes, entries) = h.app.cache().size().await;
    assert!(
        bytes <= capacity && entries >= 5,
        "{bytes} bytes in {entries} entries"
    );
    let cached = h.metric("s3warden_cache_bytes").await.unwrap();
    assert!(cached > 0 && cached <= capacity);
}

#[tokio::test]
async fn a_pass_over_cold_objects_does_not_push_the_hot_ones_out_of_a_full_cache() {
    let h = small_cache().await;
    let t = token("alice");
    let object = vec![7u8; 100_000];
    for i in 0..8 {
        h.put(&format!("photos/hot{i}.bin"), &object);
    }
    for i in 0..40 {
        h.put(&format!("photos/cold{i}.bin"), &object);
    }
    let read = |key: String| {
        let (h, t) = (&h, &t);
        async move {
            let r = h.get(&key, Some(t)).await;
            assert_eq!(r.status(), StatusCode::OK, "{key}");
            let state = r.headers()["x-cache"].to_str().unwrap().to_owned();
            assert_eq!(r.bytes().await.unwrap().len(), 100_000);
            state
        }
    };
    // The hot set, read often: 800 KB of a 1 MiB cache.
    for _ in 0..4 {
        for i in 0..8 {
            read(format!("photos/hot{i}.bin")).await;
        }
    }
    // One pass over 4 MB of objects nobody asks for again: the cache is full, and they are
    // served (from S3) without being stored.
    for i in 0..40 {
        assert_eq!(read(format!("photos/cold{i}.bin")).await, "MISS");
    }
    for i in 0..8 {
        let key = format!("photos/hot{i}.bin");
        assert_eq!(read(key.clone()).await, "HIT", "{key}");
        assert_eq!(h.s3_log().requests("GET", BUCKET, &key), 1, "{key}");
    }
    let (bytes, _) = h.app.cache().size().await;
    assert!(bytes <= 1024 * 1024, "{bytes}");
}

#[tokio::test]
async fn ranges_conditionals_and_head_on_hits_are_answered_from_memory() {
    let h = Setup::default().start().await;
    let body: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    h.put("photos/r.bin", &body);
    let t = token("alice");
    let warm = h.get("photos/r.bin", Some(&t)).await;
    let etag = warm.headers()["etag"].to_str().unwrap().to_owned();
    let modified = warm.headers()["last-modified"].to_str().unwrap().to_owned();
    let send = |name: &'static str, value: String| {
        let req = h
            .http
            .get(h.object_url("photos/r.bin"))
            .bearer_auth(&t)
            .header(name, value);
        async move { req.send().await.unwrap() }
    };
    let r = send("range", "bytes=10-19".into()).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.headers()["content-range"], "bytes 10-19/1000");
    assert_eq!(r.bytes().await.unwrap(), body[10..20]);
    let r = send("range", "bytes=-10".into()).await;
    assert_eq!(r.bytes().await.unwrap(), body[990..]);
    let r = send("range", "bytes=2000-".into()).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */1000");
    let r = send("if-none-match", etag.clone()).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(x_cache(&r), "HIT");
    let r = send("if-none-match", format!("W/{etag}, \"other\"")).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = send("if-modified-since", modified).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    // If-Range with the current ETag honours the range; with an old one, the whole object.
    let r = h
        .http
        .get(h.object_url("photos/r.bin"))
        .bearer_auth(&t)
        .header("range", "bytes=0-1")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let r = h
        .http
        .get(h.object_url("photos/r.bin"))
        .bearer_auth(&t)
        .header("range", "bytes=0-1")
        .header("if-range", "\"old\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = h
        .http
        .head(h.object_url("photos/r.bin"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.headers()["content-length"], "1000");
    assert_eq!(
        h.s3_log().all(),
        1,
        "everything after the first read came from memory"
    );
}

#[tokio::test]
async fn ranged_and_head_misses_do_not_fill_the_cache() {
    let h = Setup::default().start().await;
    h.put("photos/m.bin", &[9u8; 5000]);
    let t = token("alice");
    let r = h
        .http
        .get(h.object_url("photos/m.bin"))
        .bearer_auth(&t)
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(x_cache(&r), "BYPASS");
    let r = h
        .http
        .head(h.object_url("photos/m.bin"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(x_cache(&r), "BYPASS");
    assert_eq!(h.app.cache().size().await.1, 0);
}

#[tokio::test]
async fn a_cached_object_still_needs_the_rules() {
    let h = Setup::default().start().await;
    h.put("users/alice/doc.txt", b"alice only");
    let alice = token("alice");
    assert_eq!(
        h.get("users/alice/doc.txt", Some(&alice)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        x_cache(&h.get("users/alice/doc.txt", Some(&alice)).await),
        "HIT"
    );
    let r = h.get("users/alice/doc.txt", Some(&token("bob"))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!r.headers().contains_key("x-cache"));
    assert_ne!(r.text().await.unwrap(), "alice only");
    assert_eq!(
        h.get("users/alice/doc.txt", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_expired_token_on_a_cached_key_is_401() {
    let h = Setup::default().start().await;
    h.put("photos/a.png", b"x");
    // Valid for two more seconds (leeway is 5s): verified, cached, then expired.
    let short = hs256(&claims_with("alice", json!({"exp": now() - 3})));
    assert_eq!(
        h.get("photos/a.png", Some(&short)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        x_cache(&h.get("photos/a.png", Some(&token("bob"))).await),
        "HIT"
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = h.get("photos/a.png", Some(&short)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let expired = hs256(&claims_with("carol", json!({"exp": now() - 3600})));
    assert_eq!(
        h.get("photos/a.png", Some(&expired)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn purges_remove_entries() {
    let h = Setup::default().start().await;
    h.put("photos/a.png", b"a");
    h.put("photos/b.png", b"b");
    let t = token("alice");
    h.get("photos/a.png", Some(&t)).await;
    h.get("photos/b.png", Some(&t)).await;
    let r = h
        .http
        .delete(format!("{}/cache/files/photos/a.png", h.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(x_cache(&h.get("photos/a.png", Some(&t)).await), "MISS");
    assert_eq!(x_cache(&h.get("photos/b.png", Some(&t)).await), "HIT");
    let r = h
        .http
        .post(format!("{}/cache/purge", h.admin_url))
        .send()
        .await
        .unwrap();
    let purged: serde_json::Value = r.json().await.unwrap();
    assert_eq!(purged["purged"], 2);
    assert_eq!(h.app.cache().size().await.1, 0);
    assert_eq!(x_cache(&h.get("photos/b.png", Some(&t)).await), "MISS");
    let admin: std::net::SocketAddr = h.admin_url.trim_start_matches("http://").parse().unwrap();
    let r = raw::send(
        admin,
        b"DELETE /cache/files/photos/%2e%2e HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_purge_gives_back_the_memory_its_entries_held() {
    // A daemon of its own: memory files are counted per process, and other tests in this one
    // open theirs at the same time.
    let d = crate::daemon::Launch::new(Setup::default()).start().await;
    let http = reqwest::Client::new();
    let t = token("alice");
    for i in 0..5 {
        let key = format!("photos/large{i}.bin");
        d.s3.put(BUCKET, &key, &vec![b'x'; 100_000]).unwrap();
        let r = http
            .get(d.object_url(&key))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), 100_000);
    }
    assert_eq!(
        metric_at(&d.admin_url, "s3warden_memory_files").await,
        Some(5)
    );
    let r = http
        .post(format!("{}/cache/purge", d.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The bodies are gone at once, not when moka next gets round to them.
    assert_eq!(
        metric_at(&d.admin_url, "s3warden_memory_files").await,
        Some(0)
    );
    assert_eq!(
        metric_at(&d.admin_url, "s3warden_memory_file_bytes").await,
        Some(0)
    );
}

#[tokio::test]
async fn missing_objects_are_remembered_for_negative_ttl() {
    let h = Setup::default()
        .set("cache.negative_ttl", "\"1s\"")
        .start()
        .await;
    let t = token("alice");
    for _ in 0..3 {
        assert_eq!(
            h.get("photos/none.png", Some(&t)).await.status(),
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(h.s3_log().requests("GET", BUCKET, "photos/none.png"), 1);
    h.put("photos/none.png", b"now it exists");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        h.get("photos/none.png", Some(&t)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn transfer_accounting_in_metrics() {
    let h = Setup::default().start().await;
    h.put("photos/a.bin", &[5u8; 10_000]);
    let t = token("alice");
    for _ in 0..5 {
        h.get("photos/a.bin", Some(&t)).await.bytes().await.unwrap();
    }
    let value = |name: &'static str| {
        let h = &h;
        async move {
            h.metric(name)
                .await
                .unwrap_or_else(|| panic!("{name} missing"))
        }
    };
    assert_eq!(value("s3warden_cache_hits_total").await, 4);
    assert_eq!(value("s3warden_cache_misses_total").await, 1);
    assert_eq!(value("s3warden_s3_fetched_bytes_total").await, 10_000);
    assert_eq!(value("s3warden_client_sent_bytes_total").await, 50_000);
    assert_eq!(value("s3warden_cache_entries").await, 1);
    let text = h.metrics_text().await;
    assert!(text.contains("s3warden_s3_request_duration_seconds_bucket"));
}

/// `len` bytes that differ from object to object (`seed`) and from place to place.
fn patterned(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(7).wrapping_add(seed) % 251) as u8)
        .collect()
}

#[tokio::test]
async fn large_objects_go_out_with_sendfile_whole_and_in_ranges() {
    let h = Setup::default().start().await;
    let big = patterned((3 << 20) + 123, 1);
    let medium = patterned(100_000, 2);
    let small = patterned(1_000, 3);
    h.put("photos/big.bin", &big);
    h.put("photos/medium.bin", &medium);
    h.put("photos/small.bin", &small);
    let t = token("alice");
    // One kept-alive HTTP/1.1 connection, answers of both kinds one after another.
    let mut expected_sendfile = 0;
    for (key, body) in [
        ("photos/big.bin", &big),
        ("photos/small.bin", &small),
        ("photos/big.bin", &big),
        ("photos/medium.bin", &medium),
        ("photos/medium.bin", &medium),
        ("photos/small.bin", &small),
        ("photos/big.bin", &big),
    ] {
        let r = h.get(key, Some(&t)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.version(), http::Version::HTTP_11);
        assert!(r.bytes().await.unwrap() == body[..], "{key}");
        if body.len() > 32 * 1024 {
            expected_sendfile += body.len() as u64;
        }
    }
    let r = h
        .http
        .get(h.object_url("photos/big.bin"))
        .bearer_auth(&t)
        .header("range", "bytes=1000001-2500000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(r.bytes().await.unwrap() == big[1_000_001..=2_500_000]);
    expected_sendfile += 1_500_000;
    let r = h
        .http
        .head(h.object_url("photos/big.bin"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-length"],
        big.len().to_string().as_str()
    );
    assert_eq!(h.s3_log().all(), 3);
    assert_eq!(
        h.metric("s3warden_client_sendfile_bytes_total").await,
        Some(expected_sendfile)
    );
}

/// An HTTP/2 client over TLS that counts the TLS records the server sends.
struct RecordCountingH2 {
    client: h2::client::SendRequest<bytes::Bytes>,
    records: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    port: u16,
}

impl RecordCountingH2 {
    async fn connect(h: &Harness) -> RecordCountingH2 {
        let records = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let io = h2raw::count_records(tcp, records.clone());
        let tls = h2raw::tls_over(io, &[b"h2"]).await;
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(8 << 20)
            .initial_connection_window_size(8 << 20)
            .handshake::<_, bytes::Bytes>(tls)
            .await
            .unwrap();
        tokio::spawn(connection);
        RecordCountingH2 {
            client,
            records,
            port: h.addr.port(),
        }
    }

    /// GETs `key` with `token`: the status, the body, and the records that carried them.
    async fn get(&mut self, key: &str, token: &str) -> (StatusCode, Vec<u8>, usize) {
        self.client = self.client.clone().ready().await.unwrap();
        self.records.store(0, Ordering::Relaxed);
        let url = format!("https://localhost:{}/files/{key}", self.port);
        let request = http::Request::get(url)
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        let (answer, _) = self.client.send_request(request, true).unwrap();
        let answer = answer.await.unwrap();
        let status = answer.status();
        let mut body = answer.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            got.extend_from_slice(&chunk);
        }
        (status, got, self.records.load(Ordering::Relaxed))
    }

    /// GETs `key` (1 MiB) and checks that it came whole, in about one TLS record per 16 KiB:
    /// 65 frames of 16,375 bytes, and a few more records for the head and the connection's own
    /// frames. Frames of 16 KiB made about 130.
    async fn assert_whole_records(&mut self, key: &str, token: &str, body: &[u8]) {
        assert_eq!(body.len(), 1 << 20);
        let (status, got, records) = self.get(key, token).await;
        assert_eq!(status, StatusCode::OK);
        assert!(got == body, "{key}");
        assert!(records <= 64 + 8, "{records} records for a 1 MiB hit");
    }
}

#[tokio::test]
async fn http2_over_tls_sends_a_large_hit_in_whole_records() {
    // Each DATA frame and its 9-byte head fill one TLS record: a frame of a full 16 KiB would
    // spill its last 9 bytes into a record of their own, twice the records for the client to
    // decrypt (and a second encryption for the server) per frame.
    let h = Setup::default().tls().start().await;
    let big = patterned(1 << 20, 4);
    h.put("photos/big.bin", &big);
    let t = token("alice");
    let mut client = RecordCountingH2::connect(&h).await;
    // The first read fills the cache; the second is a hit.
    client.get("photos/big.bin", &t).await;
    client
        .assert_whole_records("photos/big.bin", &t, &big)
        .await;
    assert_eq!(h.s3_log().all(), 1, "the second read was a hit");
}

#[tokio::test]
async fn large_objects_are_kept_where_the_listener_sends_them_best() {
    // On plain HTTP/1 large objects live in memory files, for `sendfile`; over TLS, where every
    // answer is copied and encrypted anyway, on the heap (no read out of a file). Objects cached
    // before a reload switched TLS on or off stay where they are, and are served whole there.
    let mut h = Setup::default().tls().start().await;
    let (early, late) = (patterned(1 << 20, 6), patterned(1 << 20, 7));
    h.put("photos/early.bin", &early);
    h.put("photos/late.bin", &late);
    let t = token("alice");
    let mut client = RecordCountingH2::connect(&h).await;
    let (status, got, _) = client.get("photos/early.bin", &t).await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == early);

    // Plain again: the object cached over TLS is on the heap, served without sendfile; one
    // cached now goes to a memory file.
    h.reload(Setup::default()).await;
    for (key, body) in [("photos/early.bin", &early), ("photos/late.bin", &late)] {
        let r = h.get(key, Some(&t)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.bytes().await.unwrap() == body[..], "{key}");
    }
    assert_eq!(h.s3_log().all(), 2, "early.bin was a hit");
    assert_eq!(
        h.metric("s3warden_client_sendfile_bytes_total").await,
        Some(late.len() as u64),
        "only late.bin went out with sendfile"
    );

    // TLS again: the memory file is copied out over HTTP/2 in whole records too.
    h.reload(Setup::default().tls()).await;
    let mut client = RecordCountingH2::connect(&h).await;
    client
        .assert_whole_records("photos/late.bin", &t, &late)
        .await;
    assert_eq!(h.s3_log().all(), 2, "late.bin was a hit");
}

#[tokio::test]
async fn pipelined_answers_from_memory_files_keep_their_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Setup::default().start().await;
    let (a, b) = (patterned(1_500_000, 4), patterned(70_000, 5));
    h.put("photos/a.bin", &a);
    h.put("photos/b.bin", &b);
    let t = token("alice");
    for key in ["photos/a.bin", "photos/b.bin"] {
        h.get(key, Some(&t)).await.bytes().await.unwrap();
    }
    let mut stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let order = ["a", "b", "b", "a", "b"];
    let heads: String = order
        .iter()
        .map(|k| {
            format!(
                "GET /files/photos/{k}.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n"
            )
        })
        .collect();
    stream.write_all(heads.as_bytes()).await.unwrap();
    // Each answer: a head with its Content-Length, then that many bytes.
    let split = |mut rest: &[u8]| {
        let mut bodies = Vec::new();
        while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            let Some(body) = rest.get(end + 4..end + 4 + len) else {
                break;
            };
            bodies.push(body.to_vec());
            rest = &rest[end + 4 + len..];
        }
        bodies
    };
    let mut answers = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    while split(&answers).len() < order.len() {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {} bytes", answers.len());
        answers.extend_from_slice(&chunk[..n]);
    }
    for (k, body) in order.iter().zip(split(&answers)) {
        let expected = if *k == "a" { &a } else { &b };
        assert!(body == expected[..], "answer for {k}");
    }
}

#[tokio::test]
async fn large_objects_over_tls_and_http2_are_copied_from_the_memory_file() {
    let h = Setup::default().tls().start().await;
    let big = patterned((2 << 20) + 5, 6);
    h.put("photos/big.bin", &big);
    let client = tls_client(reqwest::Client::builder());
    let url = format!("https://localhost:{}/files/photos/big.bin", h.addr.port());
    for _ in 0..2 {
        let r = get_as_alice(&client, &url).await;
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert!(r.bytes().await.unwrap() == big[..]);
    }
    assert_eq!(
        h.metric("s3warden_client_sendfile_bytes_total").await,
        Some(0)
    );
}

/// What some stores send for objects they decompress on the way out: no `Content-Length`, a
/// chunked body, and the whole object even when a range was asked for.
const CHUNKED: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\
    etag: \"c\"\r\nlast-modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n\
    5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";

#[tokio::test]
async fn objects_sent_without_a_length_are_served_whole_and_cached() {
    let up = FaultyUpstream::start(Fault::Answer(CHUNKED)).await;
    let h = Setup::default().endpoint(&up.endpoint()).start().await;
    let t = token("alice");
    for state in ["MISS", "HIT"] {
        let r = h.get("photos/chunked.txt", Some(&t)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(x_cache(&r), state);
        assert_eq!(r.headers()["content-length"], "11");
        assert_eq!(r.text().await.unwrap(), "hello world");
    }
    assert_eq!(up.requests(), 1);

    // A ranged miss goes to the store, which ignores the range: the whole object is the
    // answer, streamed as it comes, without a length.
    let r = h
        .http
        .get(h.object_url("photos/ranged.txt"))
        .bearer_auth(&t)
        .header("range", "bytes=0-4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers().get("content-length"), None);
    assert_eq!(r.text().await.unwrap(), "hello world");
    // A HEAD does not claim a length the store did not give.
    let r = h
        .http
        .head(h.object_url("photos/head.txt"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers().get("content-length"), None);

    // Longer than cache.max_object_size: streamed whole, not cached, nothing refused.
    let h = Setup::default()
        .endpoint(&up.endpoint())
        .set("cache.max_object_size", "\"10B\"")
        .start()
        .await;
    let before = up.requests();
    for _ in 0..2 {
        let r = h.get("photos/chunked.txt", Some(&t)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(x_cache(&r), "BYPASS");
        assert_eq!(r.headers().get("content-length"), None);
        assert_eq!(r.text().await.unwrap(), "hello world");
    }
    assert_eq!(up.requests() - before, 2);
}

#[tokio::test]
async fn a_large_object_sent_without_a_length_is_cached_in_a_memory_file() {
    let chunk = "x".repeat(20_000);
    let answer = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\
         etag: \"c\"\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let up = FaultyUpstream::start(Fault::Answer(Box::leak(answer.into_boxed_str()))).await;
    let h = Setup::default().endpoint(&up.endpoint()).start().await;
    let t = token("alice");
    for state in ["MISS", "HIT"] {
        let r = h.get("photos/big.txt", Some(&t)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(x_cache(&r), state);
        assert_eq!(r.headers()["content-length"], "40000");
        assert_eq!(r.text().await.unwrap(), chunk.repeat(2));
    }
    assert_eq!(up.requests(), 1);
    // Both answers went out with sendfile, from the memory file it was stored in.
    assert_eq!(
        h.metric("s3warden_client_sendfile_bytes_total").await,
        Some(80_000)
    );
}

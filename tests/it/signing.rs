//! `POST /_sign`: batches, stable windows, proxy-signed URLs served through the cache, S3
//! pre-signed URLs checked by the real S3, tampering and rotation.

use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// A moment well inside a 24h window (10:00 UTC on some day, real time-ish so S3 accepts it).
fn mid_window() -> u64 {
    now() / 86_400 * 86_400 + 36_000
}

async fn sign(h: &Harness, body: Value, token_: Option<&str>) -> reqwest::Response {
    let mut req = h.http.post(format!("{}/_sign", h.url)).json(&body);
    if let Some(t) = token_ {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn sign_ok(h: &Harness, body: Value) -> Value {
    let r = sign(h, body, Some(&token("alice"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

fn url_of(v: &Value, i: usize) -> String {
    v["items"][i]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no url in {v}"))
        .to_owned()
}

#[tokio::test]
async fn same_urls_within_a_window_and_new_ones_after_it_rolls() {
    let clock = ManualClock::at(mid_window());
    let h = Setup::default().clock(clock.clock()).start().await;
    let body =
        json!({"bucket": "files", "keys": ["photos/a.png", "photos/b c.png"], "kind": "proxy"});
    let first = sign(&h, body.clone(), Some(&token("alice")))
        .await
        .bytes()
        .await
        .unwrap();
    clock.set(mid_window() + 3 * 3600);
    let second = sign(&h, body.clone(), Some(&token("bob")))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        first, second,
        "byte-identical within the window, whoever asks"
    );
    let parsed: Value = serde_json::from_slice(&first).unwrap();
    let day_start = mid_window() / 86_400 * 86_400;
    let expires = day_start + 86_400 + 3600;
    let expected = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires),
    )
    .to_string();
    assert_eq!(parsed["expires"], expected);
    assert!(
        url_of(&parsed, 0).starts_with(&format!("{}/files/photos/a.png?exp={expires}&sig=", h.url))
    );
    assert!(url_of(&parsed, 1).contains("/files/photos/b%20c.png?"));

    clock.set(day_start + 86_400 + 60);
    let third: Value = sign(&h, body.clone(), Some(&token("alice")))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(url_of(&third, 0), url_of(&parsed, 0));
    assert_ne!(third["expires"], parsed["expires"]);

    // The same holds for S3 pre-signed URLs.
    let s3_body = json!({"bucket": "files", "keys": ["photos/a.png"], "kind": "s3"});
    let a = sign_ok(&h, s3_body.clone()).await;
    clock.set(day_start + 86_400 + 7200);
    let b = sign_ok(&h, s3_body.clone()).await;
    assert_eq!(a, b);
    clock.set(day_start + 2 * 86_400 + 1);
    assert_ne!(sign_ok(&h, s3_body).await, a);
}

#[tokio::test]
async fn a_200_key_batch_in_one_call() {
    let h = Setup::default().start().await;
    let keys: Vec<String> = (0..200)
        .map(|i| format!("photos/employee-{i}.png"))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        h.put(k, format!("photo {i}").as_bytes());
    }
    let v = sign_ok(&h, json!({"bucket": "files", "keys": keys})).await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 200);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["key"], keys[i].as_str());
        let r = h
            .http
            .get(item["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), format!("photo {i}"));
    }
}

#[tokio::test]
async fn mixed_allowed_and_denied_keys() {
    let h = Setup::default().start().await;
    let v = sign_ok(
        &h,
        json!({"bucket": "files", "keys": ["photos/a.png", "private/salaries.csv", "users/alice/x", "users/bob/x", "a/../b", ""]}),
    )
    .await;
    let items = v["items"].as_array().unwrap();
    assert!(items[0]["url"].is_string() && items[0].get("error").is_none());
    assert_eq!(
        items[1],
        json!({"key": "private/salaries.csv", "error": "forbidden"})
    );
    assert!(items[2]["url"].is_string());
    assert_eq!(items[3]["error"], "forbidden");
    assert_eq!(items[4]["error"], "invalid_key");
    assert_eq!(items[5]["error"], "invalid_key");
    // Without a token nothing is signed, public keys included: the body is not even read.
    let r = sign(
        &h,
        json!({"bucket": "files", "keys": ["public/a", "photos/a.png"]}),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // An unknown bucket is a 404 for the whole call; a bad token a 401.
    assert_eq!(
        sign(
            &h,
            json!({"bucket": "nope", "keys": ["a"]}),
            Some(&token("a"))
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        sign(
            &h,
            json!({"bucket": "files", "keys": ["a"]}),
            Some("bad.bad.bad")
        )
        .await
        .status(),
        401
    );
}

#[tokio::test]
async fn proxy_signed_urls_are_served_through_the_cache() {
    let h = Setup::default().start().await;
    h.put("photos/a.png", b"signed photo");
    let v = sign_ok(&h, json!({"bucket": "files", "keys": ["photos/a.png"]})).await;
    let url = url_of(&v, 0);
    let first = h.http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-cache"], "MISS");
    let expires: u64 = url
        .split("exp=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let max_age: u64 = first.headers()["cache-control"]
        .to_str()
        .unwrap()
        .strip_prefix("private, max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        max_age <= expires - now() + 1 && max_age + 5 >= expires - now(),
        "{max_age}"
    );
    let second = h.http.get(&url).send().await.unwrap();
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(second.text().await.unwrap(), "signed photo");
    let head = h.http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(h.s3_log().all(), 1);
}

#[tokio::test]
async fn every_single_field_tamper_is_403() {
    let h = Setup::default()
        .set("buckets.other.bucket", &format!("\"{BUCKET}\""))
        .start()
        .await;
    h.put("photos/a.png", b"a");
    h.put("photos/b.png", b"b");
    let v = sign_ok(&h, json!({"bucket": "files", "keys": ["photos/a.png"]})).await;
    let url = url_of(&v, 0);
    let sig = url.split("sig=").nth(1).unwrap().to_owned();
    let exp: u64 = url
        .split("exp=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let flipped = {
        let mut c: Vec<char> = sig.chars().collect();
        c[5] = if c[5] == 'A' { 'B' } else { 'A' };
        c.into_iter().collect::<String>()
    };
    let tampered = [
        url.replace("photos/a.png", "photos/b.png"),
        url.replace("/files/", "/other/"),
        url.replace(&format!("exp={exp}"), &format!("exp={}", exp + 1)),
        url.replace(&format!("exp={exp}"), &format!("exp={}", exp - 1)),
        url.replace(&sig, &flipped),
        url.replace(&sig, &sig[..sig.len() - 1]),
        url.replace(&sig, ""),
        url.replace(&format!("sig={sig}"), &format!("sig={sig}&sig={sig}")),
        url.replace(&format!("&sig={sig}"), ""),
    ];
    for t in tampered {
        let r = h.http.get(&t).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{t}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_signature", "{t}");
    }
    // Even with a valid token alongside, a bad signature is refused.
    let r = h
        .http
        .get(url.replace(&sig, &flipped))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(h.s3_log().all(), 0);
    assert_eq!(
        h.http.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn expired_urls_are_403_expired() {
    let clock = ManualClock::at(mid_window());
    let h = Setup::default()
        .set("signing.window", "\"1h\"")
        .set("signing.grace", "\"10m\"")
        .clock(clock.clock())
        .start()
        .await;
    h.put("photos/a.png", b"a");
    let v = sign_ok(&h, json!({"bucket": "files", "keys": ["photos/a.png"]})).await;
    let url = url_of(&v, 0);
    let exp: u64 = url
        .split("exp=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    clock.set(exp - 1);
    assert_eq!(
        h.http.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    clock.set(exp);
    let r = h.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "expired");
}

#[tokio::test]
async fn rotated_secrets_still_verify() {
    let old = Setup::default().start().await;
    old.put("photos/a.png", b"a");
    let v = sign_ok(&old, json!({"bucket": "files", "keys": ["photos/a.png"]})).await;
    let old_url = url_of(&v, 0);
    // The new instance signs with key 2 and still accepts key 1.
    let new = Setup::default()
        .set("signing.secret_files", "[\"url-key-2\", \"url-key-1\"]")
        .start_with(old.s3.clone())
        .await;
    let moved = old_url.replace(&old.url, &new.url);
    assert_eq!(
        new.http.get(&moved).send().await.unwrap().status(),
        StatusCode::OK
    );
    let v = sign_ok(&new, json!({"bucket": "files", "keys": ["photos/a.png"]})).await;
    let new_url = url_of(&v, 0);
    assert_ne!(new_url.replace(&new.url, ""), old_url.replace(&old.url, ""));
    // An instance that only knows key 1 refuses URLs signed with key 2.
    let back = new_url.replace(&new.url, &old.url);
    assert_eq!(
        old.http.get(&back).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_url_for_get_is_refused_for_put_and_delete() {
    let h = Setup::default().start().await;
    h.put("users/alice/doc.txt", b"original");
    let v = sign_ok(
        &h,
        json!({"bucket": "files", "keys": ["users/alice/doc.txt"], "method": "GET"}),
    )
    .await;
    let url = url_of(&v, 0);
    let r = h.http.put(&url).body("overwritten").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = h.http.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        h.s3.read(BUCKET, "users/alice/doc.txt").unwrap(),
        b"original"
    );
    // And a PUT URL does not read.
    let v = sign_ok(
        &h,
        json!({"bucket": "files", "keys": ["users/alice/doc.txt"], "method": "PUT"}),
    )
    .await;
    let put_url = url_of(&v, 0);
    assert_eq!(
        h.http.get(&put_url).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn s3_urls_work_against_s3_directly_and_tampering_is_caught_by_s3() {
    let h = Setup::default().start().await;
    h.put("photos/a b+c.png", b"straight from S3");
    let v = sign_ok(
        &h,
        json!({"bucket": "files", "keys": ["photos/a b+c.png"], "kind": "s3"}),
    )
    .await;
    let url = url_of(&v, 0);
    assert!(url.starts_with(&h.s3.endpoint()), "{url}");
    assert!(url.contains("X-Amz-Expires=90000"), "{url}");
    let r = h.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "straight from S3");
    // Stable: a second call gives the same URL.
    let again = sign_ok(
        &h,
        json!({"bucket": "files", "keys": ["photos/a b+c.png"], "kind": "s3"}),
    )
    .await;
    assert_eq!(url_of(&again, 0), url);
    // Tampered key or signature: S3 itself refuses.
    h.put("photos/other.png", b"other");
    let tampered = url.replace("a%20b%2Bc.png", "other.png");
    assert_eq!(
        h.http.get(&tampered).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let sig_at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut bad = url.clone();
    let c = if &url[sig_at..sig_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    bad.replace_range(sig_at..sig_at + 1, c);
    assert_eq!(
        h.http.get(&bad).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn batches_over_the_limit_are_413_and_bad_json_is_400() {
    let h = Setup::default().set("signing.max_batch", "5").start().await;
    let keys: Vec<String> = (0..6).map(|i| format!("photos/{i}")).collect();
    let r = sign(
        &h,
        json!({"bucket": "files", "keys": keys}),
        Some(&token("a")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "payload_too_large");
    let huge = "x".repeat(2 * 1024 * 1024);
    let r = h
        .http
        .post(format!("{}/_sign", h.url))
        .bearer_auth(token("a"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    for bad in [
        "{",
        "[]",
        "{\"bucket\": \"files\"}",
        "{\"bucket\": \"files\", \"keys\": [1]}",
        "{\"bucket\": \"files\", \"keys\": [], \"kind\": \"ftp\"}",
        "{\"bucket\": \"files\", \"keys\": [], \"extra\": 1}",
    ] {
        let r = h
            .http
            .post(format!("{}/_sign", h.url))
            .bearer_auth(token("a"))
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "bad_request");
    }
    let r = h.http.get(format!("{}/_sign", h.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_sign_command_prints_working_urls() {
    let h = Setup::default().start().await;
    h.put("photos/cli.png", b"from the CLI");
    let config_path = h.dir.path().join("s3warden.toml");
    std::fs::write(&config_path, h.config_text()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_s3warden"))
        .args(["sign", "--config"])
        .arg(&config_path)
        .args(["files/photos/cli.png"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        h.http.get(&url).send().await.unwrap().text().await.unwrap(),
        "from the CLI"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_s3warden"))
        .args(["sign", "--kind", "s3", "--config"])
        .arg(&config_path)
        .args(["files/photos/cli.png"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(url.starts_with(&h.s3.endpoint()));
    assert_eq!(
        h.http.get(&url).send().await.unwrap().text().await.unwrap(),
        "from the CLI"
    );
}

/// `PUT` through `url` with `headers`; the status.
async fn put_via(
    h: &Harness,
    url: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> StatusCode {
    let mut req = h.http.put(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status()
}

#[tokio::test]
async fn the_signer_fixes_a_put_urls_type_and_acl() {
    let h = Setup::default().start().await;
    let v = sign_ok(
        &h,
        json!({"bucket": "files", "method": "PUT", "keys": [
            "users/alice/default.png",
            {"key": "users/alice/typed.bin", "content_type": "image/png"},
            {"key": "users/alice/public.png", "acl": "public-read"},
        ]}),
    )
    .await;
    assert_eq!(
        v["items"][0]["headers"],
        json!({"content-type": "image/png", "x-amz-acl": "private"})
    );
    let (default, typed, public) = (url_of(&v, 0), url_of(&v, 1), url_of(&v, 2));
    assert!(default.contains("&ct=image%2Fpng&acl=private"), "{default}");

    // The holder cannot publish, nor pick a type that runs script.
    for headers in [
        &[("x-amz-acl", "public-read")][..],
        &[("x-acl", "public-read")],
        &[("content-type", "text/html")],
        &[("content-type", "image/svg+xml")],
    ] {
        assert_eq!(
            put_via(&h, &default, headers, "x").await,
            StatusCode::FORBIDDEN,
            "{headers:?}"
        );
    }
    // Nor rewrite the terms in the URL.
    for (from, to) in [
        ("acl=private", "acl=public-read"),
        ("ct=image%2Fpng", "ct=text%2Fhtml"),
        ("&ct=image%2Fpng&acl=private", ""),
    ] {
        let forged = default.replace(from, to);
        assert_eq!(
            put_via(&h, &forged, &[], "x").await,
            StatusCode::FORBIDDEN,
            "{forged}"
        );
    }
    assert!(!h.s3.exists(BUCKET, "users/alice/default.png"));

    // Repeating the terms, or naming none, uploads under them.
    let status = put_via(
        &h,
        &default,
        &[("content-type", "IMAGE/PNG"), ("x-amz-acl", "private")],
        "png",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // Private is what S3 makes a new object without an ACL, so none is sent.
    assert_eq!(h.s3_log().acl(BUCKET, "users/alice/default.png"), None);
    assert_eq!(put_via(&h, &typed, &[], "png").await, StatusCode::CREATED);
    let r = h.get("users/alice/typed.bin", Some(&token("alice"))).await;
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(put_via(&h, &public, &[], "png").await, StatusCode::CREATED);
    assert_eq!(
        h.s3_log().acl(BUCKET, "users/alice/public.png").as_deref(),
        Some("public-read")
    );
}

#[tokio::test]
async fn publishing_needs_a_rule_that_allows_it() {
    let h = Setup::default()
        .rules(
            r#"
[[rules]]
bucket = "files"
prefix = "users/{sub}/"
methods = ["GET", "PUT"]
allow = "authenticated"

[[rules]]
bucket = "files"
prefix = "users/{sub}/public/"
methods = ["PUT"]
allow = "authenticated"
acls = ["public-read"]
"#,
        )
        .start()
        .await;
    let v = sign_ok(
        &h,
        json!({"bucket": "files", "method": "PUT", "acl": "public-read", "keys": [
            "users/alice/a.png", "users/alice/public/b.png",
            {"key": "users/alice/c.png", "acl": "private"},
            {"key": "users/alice/d.png", "acl": "authenticated-read"},
            {"key": "users/alice/e.png", "content_type": "text/plain, text/html"},
            {"key": "users/alice/f.txt", "content_type": "text/plain;\tcharset=utf-8"},
        ]}),
    )
    .await;
    assert_eq!(v["items"][0]["error"], "acl_not_allowed");
    assert!(url_of(&v, 1).contains("acl=public-read"));
    assert!(url_of(&v, 2).contains("acl=private"));
    assert_eq!(v["items"][3]["error"], "invalid_acl");
    assert_eq!(v["items"][4]["error"], "invalid_content_type");
    assert_eq!(v["items"][5]["error"], "invalid_content_type");

    // Uploads with a token are held to the same rule.
    let put = |key: &'static str, acl: &'static str| {
        h.http
            .put(h.object_url(key))
            .bearer_auth(token("alice"))
            .header("x-amz-acl", acl)
            .body("x")
            .send()
    };
    let r = put("users/alice/a.png", "public-read").await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "acl_not_allowed");
    assert!(!h.s3.exists(BUCKET, "users/alice/a.png"));
    assert_eq!(
        put("users/alice/public/b.png", "public-read")
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        put("users/alice/a.png", "private").await.unwrap().status(),
        StatusCode::CREATED
    );
    // A GET batch names no type or ACL.
    let r = sign(
        &h,
        json!({"bucket": "files", "keys": ["users/alice/a.png"], "acl": "private"}),
        Some(&token("alice")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn s3_put_urls_are_off_unless_allowed_and_then_s3_checks_type_and_acl() {
    let h = Setup::default().start().await;
    let body = json!({"bucket": "files", "method": "PUT", "kind": "s3", "keys": [
        {"key": "users/alice/direct.png", "acl": "public-read"}
    ]});
    let v = sign_ok(&h, body.clone()).await;
    assert_eq!(v["items"][0]["error"], "s3_put_disabled");

    let h = Setup::default()
        .set("signing.allow_s3_put", "true")
        .start()
        .await;
    let v = sign_ok(&h, body).await;
    let url = url_of(&v, 0);
    assert!(url.starts_with(&h.s3.endpoint()), "{url}");
    assert!(
        url.contains("X-Amz-SignedHeaders=content-type%3Bhost%3Bx-amz-acl"),
        "{url}"
    );
    assert_eq!(
        v["items"][0]["headers"],
        json!({"content-type": "image/png", "x-amz-acl": "public-read"})
    );
    // S3 itself refuses another type, another ACL, or none.
    for headers in [
        &[("content-type", "text/html"), ("x-amz-acl", "public-read")][..],
        &[("content-type", "image/png"), ("x-amz-acl", "private")],
        &[("content-type", "image/png")],
    ] {
        assert_eq!(
            put_via(&h, &url, headers, "x").await,
            StatusCode::FORBIDDEN,
            "{headers:?}"
        );
    }
    assert!(!h.s3.exists(BUCKET, "users/alice/direct.png"));
    let status = put_via(
        &h,
        &url,
        &[("content-type", "image/png"), ("x-amz-acl", "public-read")],
        "png",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.s3_log().acl(BUCKET, "users/alice/direct.png").as_deref(),
        Some("public-read")
    );

    // A private S3 PUT URL signs `private`, so its holder cannot publish, even on a store
    // (like this one) that lets a request carry an `x-amz-acl` it did not sign.
    let private = json!({"bucket": "files", "method": "PUT", "kind": "s3",
        "keys": ["users/alice/own.png"]});
    let url = url_of(&sign_ok(&h, private.clone()).await, 0);
    let published = [("content-type", "image/png"), ("x-amz-acl", "public-read")];
    assert_eq!(
        put_via(&h, &url, &published, "x").await,
        StatusCode::FORBIDDEN
    );
    assert!(!h.s3.exists(BUCKET, "users/alice/own.png"));

    // With `upload.default_acl = "none"` (buckets with ACLs disabled) it names no ACL.
    let h = Setup::default()
        .set("signing.allow_s3_put", "true")
        .set("upload.default_acl", "\"none\"")
        .start_with(h.s3.clone())
        .await;
    h.s3_log().disable_acls();
    let v = sign_ok(&h, private).await;
    let url = url_of(&v, 0);
    assert!(
        url.contains("X-Amz-SignedHeaders=content-type%3Bhost&"),
        "{url}"
    );
    assert_eq!(
        v["items"][0]["headers"],
        json!({"content-type": "image/png"})
    );
    let status = put_via(&h, &url, &[("content-type", "image/png")], "png").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.s3_log().acl(BUCKET, "users/alice/own.png"), None);
}

#[tokio::test]
async fn the_sign_command_fixes_put_terms_too() {
    let h = Setup::default().start().await;
    let config_path = h.dir.path().join("s3warden.toml");
    std::fs::write(&config_path, h.config_text()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_s3warden"))
        .args(["sign", "--method", "PUT", "--content-type", "text/plain"])
        .args(["--acl", "public-read", "--config"])
        .arg(&config_path)
        .args(["files/users/alice/cli.txt"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(url.ends_with("&ct=text%2Fplain&acl=public-read"), "{url}");
    assert_eq!(
        put_via(&h, &url, &[("x-amz-acl", "private")], "x").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(put_via(&h, &url, &[], "cli").await, StatusCode::CREATED);
    assert_eq!(
        h.s3_log().acl(BUCKET, "users/alice/cli.txt").as_deref(),
        Some("public-read")
    );
}

#[tokio::test]
async fn sign_without_a_token_is_401_before_the_body_and_a_slow_body_is_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Setup::default()
        .set("server.header_read_timeout", "\"1s\"")
        .start()
        .await;
    // No token: answered at once, though not a byte of the announced body was sent.
    let mut stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    stream
        .write_all(
            b"POST /_sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut answer))
        .await
        .expect("answered before the body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    // A proxy signature is no credential for signing.
    let r = sign(&h, json!({"bucket": "files", "keys": ["photos/a"]}), None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // With a token, the JSON must arrive whole within the header timeout.
    let mut stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let body = br#"{"bucket": "files", "keys": ["photos/a.png"]}"#;
    let head = format!(
        "POST /_sign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {}\r\n\r\n",
        token("alice"),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let trickle = async {
        for b in body {
            if stream.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    trickle.await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn an_ip_endpoint_with_the_default_addressing_serves_and_signs() {
    // The embedded S3 is at http://127.0.0.1:PORT; no `addressing` key: "auto".
    let h = Setup::default().unset("s3.addressing").start().await;
    h.put("photos/ip.png", b"by address");
    let r = h.get("photos/ip.png", Some(&token("alice"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "by address");
    let ready = h
        .http
        .get(format!("{}/readyz", h.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let v = sign_ok(
        &h,
        json!({"bucket": "files", "keys": ["photos/ip.png"], "kind": "s3"}),
    )
    .await;
    let url = url_of(&v, 0);
    assert!(
        url.starts_with(&format!("{}/{BUCKET}/", h.s3.endpoint())),
        "{url}"
    );
    assert_eq!(
        h.http.get(&url).send().await.unwrap().text().await.unwrap(),
        "by address"
    );
    let config_path = h.dir.path().join("s3warden.toml");
    std::fs::write(&config_path, h.config_text()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3warden"))
        .args(["sign", "--kind", "s3", "--config"])
        .arg(&config_path)
        .arg("files/photos/ip.png")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        h.http.get(&url).send().await.unwrap().text().await.unwrap(),
        "by address"
    );
}

#[tokio::test]
async fn token_and_proxy_sign_commands_need_no_s3_credentials() {
    let h = Setup::default().start().await;
    h.put("photos/cli.png", b"no keys needed");
    let config_path = h.dir.path().join("s3warden.toml");
    std::fs::write(&config_path, h.config_text()).unwrap();
    let run = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3warden"));
        command
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        command.output()
    };
    let out = run(&["token", "--sub", "alice"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let r = h.get("photos/cli.png", Some(&minted)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let out = run(&["sign", "files/photos/cli.png"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        h.http.get(&url).send().await.unwrap().text().await.unwrap(),
        "no keys needed"
    );
    // S3 URLs do need S3 credentials, and say so.
    let out = run(&["sign", "--kind", "s3", "files/photos/cli.png"])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no S3 credentials"));
}

//! Authentication and access rules against hostile tokens, paths and headers. Each attack is
//! its own test; every token is really signed (or really forged).

use std::time::Duration;

use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::common::jwks::JwksServer;
use crate::common::*;

/// A harness with a photo any authenticated user may read.
async fn photo_harness() -> Harness {
    let h = Setup::default().start().await;
    h.put("photos/a.png", b"png-bytes");
    h
}

async fn status_with(h: &Harness, token: &str) -> StatusCode {
    h.get("photos/a.png", Some(token)).await.status()
}

/// Asserts a token is refused as `invalid_token`, with the RFC 6750 challenge.
async fn assert_refused(h: &Harness, token: &str) {
    let r = h.get("photos/a.png", Some(token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token}");
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let h = photo_harness().await;
    for alg in ["none", "None", "NONE"] {
        let t = handmade(&json!({"alg": alg, "typ": "JWT"}), &claims("alice"), b"");
        assert_refused(&h, &t).await;
        // Also with a trailing fake signature.
        let t = handmade(&json!({"alg": alg}), &claims("alice"), b"sig");
        assert_refused(&h, &t).await;
    }
}

#[tokio::test]
async fn rs256_to_hs256_confusion_with_the_public_key_as_secret_is_refused() {
    let h = photo_harness().await;
    for secret in [
        fixture_bytes("rsa_public.pem"),
        fixture_bytes("rsa_public.der"),
    ] {
        for alg in [Algorithm::HS256, Algorithm::HS384] {
            let t = sign(
                alg,
                &EncodingKey::from_secret(&secret),
                None,
                &claims("alice"),
            );
            assert_refused(&h, &t).await;
        }
    }
}

#[tokio::test]
async fn algorithms_outside_the_allow_list_are_refused() {
    let h = photo_harness().await;
    // Correctly signed with the configured keys, but HS512 and RS384 are not allowed.
    let hs512 = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
        None,
        &claims("alice"),
    );
    assert_refused(&h, &hs512).await;
    let rs384 = sign(Algorithm::RS384, &rsa_key(), None, &claims("alice"));
    assert_refused(&h, &rs384).await;
    // Unknown algorithm names.
    let t = handmade(&json!({"alg": "HS1"}), &claims("alice"), b"x");
    assert_refused(&h, &t).await;
    // Allowed ones still work, including PS256 and EdDSA.
    let ps = sign(Algorithm::PS256, &rsa_key(), None, &claims("alice"));
    assert_eq!(status_with(&h, &ps).await, StatusCode::OK);
    let ed = sign(Algorithm::EdDSA, &ed_key(), None, &claims("alice"));
    assert_eq!(status_with(&h, &ed).await, StatusCode::OK);
}

#[tokio::test]
async fn es256_with_an_all_zero_signature_is_refused() {
    let h = photo_harness().await;
    let t = handmade(
        &json!({"alg": "ES256", "typ": "JWT"}),
        &claims("alice"),
        &[0u8; 64],
    );
    assert_refused(&h, &t).await;
    // r = s = 0 in DER form too.
    let t = handmade(
        &json!({"alg": "ES256"}),
        &claims("alice"),
        &[0x30, 6, 2, 1, 0, 2, 1, 0],
    );
    assert_refused(&h, &t).await;
}

fn jwks_setup(url: &str) -> Setup {
    Setup::default()
        .unset("auth.public_key_files")
        .unset("auth.hmac_secret_file")
        .set("auth.algorithms", "[\"RS256\", \"ES256\"]")
        .set("auth.jwks_url", &format!("\"{url}\""))
        .set("auth.jwks_cooldown", "\"1s\"")
}

fn jwks_doc(name: &str) -> Option<String> {
    Some(String::from_utf8(fixture_bytes(name)).unwrap())
}

/// An RS256 token for alice, signed with the key `rsa-1` of `jwks.json`.
fn rsa1_token() -> String {
    sign(
        Algorithm::RS256,
        &rsa_key(),
        Some("rsa-1"),
        &claims("alice"),
    )
}

fn rsa2_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture_bytes("rsa2_private.pem")).unwrap()
}

#[tokio::test]
async fn unknown_kid_refetches_the_jwks_once_per_cooldown() {
    let jwks = JwksServer::start(jwks_doc("jwks.json")).await;
    let h = jwks_setup(&jwks.url()).start().await;
    h.put("photos/a.png", b"x");
    assert_eq!(jwks.fetches(), 1, "fetched at start");

    let known = rsa1_token();
    assert_eq!(status_with(&h, &known).await, StatusCode::OK);
    let ec = sign(Algorithm::ES256, &ec_key(), Some("ec-1"), &claims("alice"));
    assert_eq!(status_with(&h, &ec).await, StatusCode::OK);
    assert_eq!(jwks.fetches(), 1, "known kids need no fetch");

    // rsa-2 is not published yet: once the start-up fetch is a cooldown old, one re-fetch,
    // then refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = sign(Algorithm::RS256, &rsa2_key(), Some("rsa-2"), &claims("bob"));
    assert_refused(&h, &rotated).await;
    assert_eq!(jwks.fetches(), 2);
    // Many more unknown-kid requests within the cooldown: no further fetch.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let t = sign(
            Algorithm::RS256,
            &rsa2_key(),
            Some(&format!("nope-{i}")),
            &claims("bob"),
        );
        let req = h.http.get(h.object_url("photos/a.png")).bearer_auth(t);
        tasks.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(jwks.fetches(), 2, "at most one re-fetch per cooldown");

    // The key is published; after the cooldown the next unknown kid fetches it.
    jwks.set(jwks_doc("jwks-rotated.json"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = sign(
        Algorithm::RS256,
        &rsa2_key(),
        Some("rsa-2"),
        &claims("carol"),
    );
    assert_eq!(status_with(&h, &rotated).await, StatusCode::OK);
    assert_eq!(jwks.fetches(), 3);
}

#[tokio::test]
async fn kid_with_path_characters_is_only_a_lookup_key() {
    let jwks = JwksServer::start(jwks_doc("jwks.json")).await;
    let h = jwks_setup(&jwks.url()).start().await;
    h.put("photos/a.png", b"x");
    let fixture_path = fixture("rsa_public.pem").display().to_string();
    for kid in [
        "../../../../etc/passwd",
        fixture_path.as_str(),
        "rsa-1/../rsa-1",
        "rsa-1\u{0}",
        "http://127.0.0.1:1/jwks.json",
    ] {
        // Signed with a key that is not rsa-1's, so only a confused lookup could accept it.
        let t = sign(Algorithm::RS256, &rsa2_key(), Some(kid), &claims("alice"));
        assert_refused(&h, &t).await;
    }
    assert!(jwks.fetches() <= 2, "one cooldown-limited re-fetch at most");
}

#[tokio::test]
async fn jku_and_x5u_headers_are_never_followed() {
    // The attacker's key server publishes the attacker's key.
    let attacker = JwksServer::start(Some(
        std::fs::read_to_string(fixture("jwks-rotated.json")).unwrap(),
    ))
    .await;
    let h = photo_harness().await;
    for which in ["jku", "x5u"] {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-2".into());
        match which {
            "jku" => header.jku = Some(attacker.url()),
            _ => header.x5u = Some(attacker.url()),
        }
        let t = jsonwebtoken::encode(&header, &claims("mallory"), &rsa2_key()).unwrap();
        assert_refused(&h, &t).await;
    }
    // An embedded jwk header is not trusted either.
    let t = handmade(
        &json!({"alg": "HS256", "jwk": {"kty": "oct", "k": b64(b"attacker-chosen-secret-000000000")}}),
        &claims("mallory"),
        b"x",
    );
    assert_refused(&h, &t).await;
    assert_eq!(
        attacker.fetches(),
        0,
        "no request ever reaches a URL from a token"
    );
}

#[tokio::test]
async fn jwks_down_keeps_the_last_good_keys() {
    let jwks = JwksServer::start(jwks_doc("jwks.json")).await;
    let h = jwks_setup(&jwks.url())
        .set("auth.jwks_refresh", "\"200ms\"")
        .start()
        .await;
    h.put("photos/a.png", b"x");
    jwks.set(None);
    let before = jwks.fetches();
    assert!(
        eventually(Duration::from_secs(5), || jwks.fetches() >= before + 2).await,
        "periodic refresh keeps trying"
    );
    let t = rsa1_token();
    assert_eq!(status_with(&h, &t).await, StatusCode::OK);
}

/// A reload while the JWKS cannot be fetched keeps the keys the running config had: tokens
/// that verified before the reload still do (an identity provider's hiccup at the moment of a
/// `SIGHUP` does not log everyone out).
#[tokio::test]
async fn a_reload_while_the_jwks_is_down_keeps_the_last_good_keys() {
    let jwks = JwksServer::start(jwks_doc("jwks.json")).await;
    let mut h = jwks_setup(&jwks.url()).start().await;
    h.put("photos/a.png", b"x");
    let t = rsa1_token();
    assert_eq!(status_with(&h, &t).await, StatusCode::OK);
    jwks.set(None);
    let before = jwks.fetches();
    h.reload(jwks_setup(&jwks.url())).await;
    assert_eq!(jwks.fetches(), before + 1, "the reload fetched, and failed");
    assert_eq!(status_with(&h, &t).await, StatusCode::OK);
}

#[tokio::test]
async fn jwks_never_loaded_fails_closed() {
    let jwks = JwksServer::start(None).await;
    let h = jwks_setup(&jwks.url()).start().await;
    h.put("photos/a.png", b"x");
    let t = rsa1_token();
    assert_refused(&h, &t).await;
    let ready = h
        .http
        .get(format!("{}/readyz", h.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Once the endpoint recovers (and the cooldown has passed), keys load and tokens work.
    jwks.set(jwks_doc("jwks.json"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status_with(&h, &t).await, StatusCode::OK);
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let h = photo_harness().await;
    assert_refused(
        &h,
        &hs256(&claims_with("alice", json!({"exp": now() - 3600}))),
    )
    .await;
}

#[tokio::test]
async fn tokens_without_exp_are_refused() {
    let h = photo_harness().await;
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("exp");
    assert_refused(&h, &hs256(&c)).await;
}

#[tokio::test]
async fn exp_and_nbf_as_strings_are_refused() {
    let h = photo_harness().await;
    let exp = (now() + 3600).to_string();
    assert_refused(&h, &hs256(&claims_with("alice", json!({ "exp": exp })))).await;
    let nbf = (now() - 60).to_string();
    assert_refused(&h, &hs256(&claims_with("alice", json!({ "nbf": nbf })))).await;
    // Other registered claims of the wrong type too.
    assert_refused(&h, &hs256(&claims_with("alice", json!({ "sub": 42 })))).await;
    assert_refused(&h, &hs256(&claims_with("alice", json!({ "exp": 1.5e12 })))).await;
}

#[tokio::test]
async fn nbf_in_the_future_is_refused() {
    let h = photo_harness().await;
    assert_refused(
        &h,
        &hs256(&claims_with("alice", json!({"nbf": now() + 600}))),
    )
    .await;
}

#[tokio::test]
async fn leeway_boundary_on_both_sides() {
    // leeway = 5s in the harness
    let h = photo_harness().await;
    let inside_exp = hs256(&claims_with("a", json!({"exp": now() - 2})));
    assert_eq!(status_with(&h, &inside_exp).await, StatusCode::OK);
    let outside_exp = hs256(&claims_with("b", json!({"exp": now() - 9})));
    assert_refused(&h, &outside_exp).await;
    let inside_nbf = hs256(&claims_with("c", json!({"nbf": now() + 2})));
    assert_eq!(status_with(&h, &inside_nbf).await, StatusCode::OK);
    let outside_nbf = hs256(&claims_with("d", json!({"nbf": now() + 9})));
    assert_refused(&h, &outside_nbf).await;
}

#[tokio::test]
async fn wrong_and_missing_issuer_and_audience_are_refused() {
    let h = photo_harness().await;
    assert_refused(
        &h,
        &hs256(&claims_with("a", json!({"iss": "https://evil.test/"}))),
    )
    .await;
    assert_refused(&h, &hs256(&claims_with("a", json!({"aud": "not-files"})))).await;
    assert_refused(&h, &hs256(&claims_with("a", json!({"aud": ["x", "y"]})))).await;
    for claim in ["iss", "aud"] {
        let mut c = claims("a");
        c.as_object_mut().unwrap().remove(claim);
        assert_refused(&h, &hs256(&c)).await;
    }
    // An audience list that contains ours is fine.
    let ok = hs256(&claims_with("a", json!({"aud": ["other", AUDIENCE]})));
    assert_eq!(status_with(&h, &ok).await, StatusCode::OK);
}

#[tokio::test]
async fn malformed_base64_is_refused() {
    let h = photo_harness().await;
    let good = token("alice");
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = format!("{}!!*", parts[1]);
    assert_refused(&h, &parts.join(".")).await;
    assert_refused(&h, "e30.e30.e30").await;
    assert_refused(&h, "%%%.%%%.%%%").await;
}

#[tokio::test]
async fn four_segments_are_refused() {
    let h = photo_harness().await;
    let good = token("alice");
    assert_refused(&h, &format!("{good}.extra")).await;
    assert_refused(&h, &good.replacen('.', "..", 1)).await;
}

#[tokio::test]
async fn huge_tokens_are_refused_before_decoding_and_huge_headers_get_431() {
    let h = photo_harness().await;
    let verified_before = h.app.metrics().token_verifications();
    // 9 KiB: inside the header limit, over the token limit.
    let big = format!(
        "{}.{}.{}",
        "e".repeat(3000),
        "e".repeat(3000),
        "e".repeat(3200)
    );
    assert_refused(&h, &big).await;
    assert_eq!(
        h.app.metrics().token_verifications(),
        verified_before,
        "never decoded"
    );
    assert_eq!(
        h.metric("s3warden_token_failures_total{reason=\"too_large\"}")
            .await,
        Some(1)
    );
    // 100 KiB: the request head is too large.
    let huge = "a".repeat(100 * 1024);
    let r = raw::get(
        h.addr,
        "/files/photos/a.png",
        &format!("Authorization: Bearer {huge}\r\n"),
    )
    .await;
    assert_eq!(r.status, 431);
    assert_eq!(h.s3_log().all(), 0);
}

#[tokio::test]
async fn a_good_header_token_with_a_bad_query_token_is_refused() {
    let h = Setup::default()
        .set("auth.query_param", "\"access_token\"")
        .start()
        .await;
    h.put("photos/a.png", b"x");
    let r = h
        .http
        .get(format!(
            "{}?access_token=garbage.token.here",
            h.object_url("photos/a.png")
        ))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // And a good cookie with a bad header token.
    let r = h
        .http
        .get(h.object_url("photos/a.png"))
        .bearer_auth("bad.bad.bad")
        .header("cookie", format!("s3warden_token={}", token("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cookie_tokens_work() {
    let h = photo_harness().await;
    let r = h
        .http
        .get(h.object_url("photos/a.png"))
        .header(
            "cookie",
            format!("theme=dark; s3warden_token={}; other=1", token("alice")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Another cookie name is not a token.
    let r = h
        .http
        .get(h.object_url("photos/a.png"))
        .header("cookie", format!("sess={}", token("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // An application's own `session` cookie on the same domain changes nothing: not beside a
    // good header token, not on a public object.
    let r = h
        .http
        .get(h.object_url("photos/a.png"))
        .bearer_auth(token("alice"))
        .header("cookie", "session=the-apps-own-session-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    h.put("public/p.txt", b"p");
    let r = h
        .http
        .get(h.object_url("public/p.txt"))
        .header("cookie", "session=the-apps-own-session-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn query_tokens_only_when_enabled() {
    let off = photo_harness().await;
    let url = format!(
        "{}?access_token={}",
        off.object_url("photos/a.png"),
        token("alice")
    );
    let r = off.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"s3warden\"");

    let on = Setup::default()
        .set("auth.query_param", "\"access_token\"")
        .start()
        .await;
    on.put("photos/a.png", b"x");
    let url = format!(
        "{}?access_token={}",
        on.object_url("photos/a.png"),
        token("alice")
    );
    assert_eq!(
        on.http.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn templated_prefix_serves_its_owner_only() {
    let h = Setup::default().start().await;
    h.put("users/alice/doc.txt", b"alice's");
    h.put("users/bob/doc.txt", b"bob's");
    assert_eq!(
        h.get("users/alice/doc.txt", Some(&token("alice")))
            .await
            .status(),
        200
    );
    assert_eq!(
        h.get("users/bob/doc.txt", Some(&token("alice")))
            .await
            .status(),
        403
    );
    assert_eq!(
        h.get("users/bob/doc.txt", Some(&token("bob")))
            .await
            .status(),
        200
    );
    // A subject that tries to climb or widen the prefix never matches.
    for sub in ["..", "alice/..", "a/b", ""] {
        let t = token(sub);
        assert_eq!(
            h.get("users/bob/doc.txt", Some(&t)).await.status(),
            403,
            "{sub:?}"
        );
    }
    assert_eq!(h.s3_log().requests("GET", BUCKET, "users/bob/doc.txt"), 1);
}

#[tokio::test]
async fn prefixes_match_whole_segments() {
    let rules = r#"
[[rules]]
bucket = "files"
prefix = "team/alpha"
allow = "authenticated"

[[rules]]
bucket = "files"
prefix = "users/{sub}/"
allow = "authenticated"
"#;
    let h = Setup::default().rules(rules).start().await;
    for key in [
        "team/alpha/x",
        "team/alpha2/x",
        "team/alphabet",
        "users/alice/a",
        "users/alice2/a",
    ] {
        h.put(key, b"x");
    }
    let t = token("alice");
    assert_eq!(h.get("team/alpha/x", Some(&t)).await.status(), 200);
    assert_eq!(h.get("team/alpha2/x", Some(&t)).await.status(), 403);
    assert_eq!(h.get("team/alphabet", Some(&t)).await.status(), 403);
    assert_eq!(h.get("users/alice/a", Some(&t)).await.status(), 200);
    assert_eq!(h.get("users/alice2/a", Some(&t)).await.status(), 403);
}

#[tokio::test]
async fn claims_rules_with_arrays_strings_and_scopes() {
    let rules = r#"
[[rules]]
bucket = "files"
prefix = "private/"
allow = { claims = { roles = "admin" } }

[[rules]]
bucket = "files"
prefix = "reports/"
allow = { claims = { scope = "reports:read", org = "acme" } }
"#;
    let h = Setup::default().rules(rules).start().await;
    h.put("private/p.txt", b"p");
    h.put("reports/r.txt", b"r");
    let get = |key: &'static str, extra: serde_json::Value| {
        let h = &h;
        async move {
            h.get(key, Some(&hs256(&claims_with("u", extra))))
                .await
                .status()
        }
    };
    assert_eq!(
        get("private/p.txt", json!({"roles": ["user", "admin"]})).await,
        200
    );
    assert_eq!(get("private/p.txt", json!({"roles": "admin"})).await, 200);
    assert_eq!(get("private/p.txt", json!({"roles": ["user"]})).await, 403);
    assert_eq!(
        get("private/p.txt", json!({"roles": "administrator"})).await,
        403
    );
    assert_eq!(get("private/p.txt", json!({})).await, 403);
    assert_eq!(
        get(
            "reports/r.txt",
            json!({"scope": "openid reports:read", "org": "acme"})
        )
        .await,
        200
    );
    assert_eq!(
        get(
            "reports/r.txt",
            json!({"scope": "openid reports:read", "org": "other"})
        )
        .await,
        403
    );
    assert_eq!(
        get(
            "reports/r.txt",
            json!({"scope": "reports:readwrite", "org": "acme"})
        )
        .await,
        403
    );
}

#[tokio::test]
async fn cors_preflight_allowed_and_refused() {
    let h = Setup::default()
        .set("cors.allowed_origins", "[\"https://app.example.com\"]")
        .start()
        .await;
    h.put("photos/a.png", b"x");
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        let req = h
            .http
            .request(reqwest::Method::OPTIONS, h.object_url("photos/a.png"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers);
        async move { req.send().await.unwrap() }
    };
    let ok = preflight("https://app.example.com", "GET", "authorization, range").await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let hd = ok.headers();
    assert_eq!(hd["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(hd["access-control-allow-credentials"], "true");
    assert!(
        hd["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    assert!(
        hd["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    assert_eq!(hd["vary"], "Origin");
    assert_eq!(hd.get_all("vary").iter().count(), 1, "{hd:?}");

    let refused = preflight("https://evil.example", "GET", "authorization").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let refused = preflight("https://app.example.com", "PATCH", "").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let refused = preflight("https://app.example.com", "GET", "x-amz-copy-source").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // The actual request: CORS headers for the allowed origin only, Vary: Origin always.
    let r = h
        .http
        .get(h.object_url("photos/a.png"))
        .bearer_auth(token("a"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("X-Cache")
    );
    let r = h
        .http
        .get(h.object_url("photos/a.png"))
        .bearer_auth(token("a"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert_eq!(r.headers()["vary"], "Origin");
    assert_eq!(r.headers().get_all("vary").iter().count(), 1);
    assert_eq!(
        h.s3_log().total("GET"),
        1,
        "preflights never reach S3 (and the second GET is a hit)"
    );
}

#[tokio::test]
async fn preflights_allow_common_headers_and_configured_ones() {
    let h = Setup::default()
        .set("cors.allowed_origins", "[\"https://app.example.com\"]")
        .set("cors.allowed_headers", "[\"X-Tenant\"]")
        .start()
        .await;
    let preflight = |headers: &'static str| {
        let req = h
            .http
            .request(reqwest::Method::OPTIONS, h.object_url("photos/a.png"))
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", headers);
        async move { req.send().await.unwrap().status() }
    };
    for asked in [
        "x-requested-with",
        "traceparent, tracestate",
        "x-request-id",
        "authorization, x-tenant",
    ] {
        assert_eq!(preflight(asked).await, StatusCode::NO_CONTENT, "{asked}");
    }
    assert_eq!(preflight("x-other").await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cookie_authenticated_put_without_an_allowed_origin_is_403() {
    let h = Setup::default()
        .set("cors.allowed_origins", "[\"https://app.example.com\"]")
        .start()
        .await;
    let cookie = format!("s3warden_token={}", token("alice"));
    for origin in [None, Some("https://evil.example"), Some("null")] {
        let mut req = h
            .http
            .put(h.object_url("users/alice/new.txt"))
            .header("cookie", &cookie)
            .body("data");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "forbidden");
    }
    // Deletes too.
    let r = h
        .http
        .delete(h.object_url("users/alice/new.txt"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(h.s3_log().all(), 0);
}

#[tokio::test]
async fn forwarded_and_rewrite_headers_change_nothing() {
    let h = Setup::default().start().await;
    h.put("photos/a.png", b"photo");
    h.put("private/secret.txt", b"secret");
    let t = token("alice");
    let spoof = [
        ("x-original-url", "/files/photos/a.png"),
        ("x-rewrite-url", "/files/photos/a.png"),
        ("x-forwarded-host", "admin.internal"),
        ("x-forwarded-prefix", "/files/photos"),
        ("x-forwarded-uri", "/files/photos/a.png"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-real-ip", "127.0.0.1"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=127.0.0.1;host=admin.internal"),
        ("x-http-method-override", "GET"),
    ];
    let mut req = h
        .http
        .get(h.object_url("private/secret.txt"))
        .bearer_auth(&t);
    for (k, v) in spoof {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The other way round: the path decides, not the headers.
    let mut req = h.http.get(h.object_url("photos/a.png")).bearer_auth(&t);
    for (k, _) in spoof {
        req = req.header(k, "/files/private/secret.txt");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "photo");
    assert_eq!(h.s3_log().requests("GET", BUCKET, "private/secret.txt"), 0);
}

#[tokio::test]
async fn each_token_is_verified_once() {
    let h = photo_harness().await;
    let rs = sign(Algorithm::RS256, &rsa_key(), None, &claims("alice"));
    let es = sign(Algorithm::ES256, &ec_key(), None, &claims("bob"));
    let before = h.app.metrics().token_verifications();
    for _ in 0..10 {
        assert_eq!(status_with(&h, &rs).await, StatusCode::OK);
        assert_eq!(status_with(&h, &es).await, StatusCode::OK);
    }
    // RS256 keys are tried before EC ones, so the ES token may cost a failed RSA-family
    // attempt — but never more than once per token.
    let checks = h.app.metrics().token_verifications() - before;
    assert!(checks <= 2, "{checks} signature checks for 20 requests");
}

#[tokio::test]
async fn hmac_secrets_from_the_environment() {
    // The harness reads the secret from a file; this one from an environment variable.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[s3]\nendpoint = \"http://127.0.0.1:9\"\nregion = \"us-east-1\"\n\
         [buckets.files]\nbucket = \"{BUCKET}\"\n[auth]\nhmac_secret_env = \"JWT_SECRET\"\n\
         [[rules]]\nbucket = \"files\"\nallow = \"authenticated\"\n"
    );
    let env = s3warden::config::Environment::from_pairs([
        ("AWS_ACCESS_KEY_ID", "a"),
        ("AWS_SECRET_ACCESS_KEY", "b"),
        ("JWT_SECRET", HMAC_SECRET),
    ]);
    let config =
        s3warden::config::Config::from_toml(&text, dir.path(), &env, &s3warden::check_config)
            .unwrap();
    assert_eq!(
        config.secrets.hmac_secret.as_deref(),
        Some(HMAC_SECRET.as_bytes())
    );
    let short = s3warden::config::Environment::from_pairs([
        ("AWS_ACCESS_KEY_ID", "a"),
        ("AWS_SECRET_ACCESS_KEY", "b"),
        ("JWT_SECRET", "short"),
    ]);
    let e = s3warden::config::Config::from_toml(&text, dir.path(), &short, &s3warden::check_config)
        .unwrap_err();
    assert!(e.to_string().contains("auth.hmac_secret_env"), "{e}");
}

#[tokio::test]
async fn check_config_rejects_rules_that_can_never_match() {
    let base = "[s3]\nendpoint = \"http://127.0.0.1:9\"\nregion = \"us-east-1\"\n[buckets.files]\nbucket = \"b-bucket\"\n";
    for (rule, needle) in [
        (
            "bucket = \"files\"\nprefix = \"u/{sub}/\"\nallow = \"public\"",
            "public rule",
        ),
        (
            "bucket = \"files\"\nprefix = \"u/{user}/\"\nallow = \"authenticated\"",
            "names nothing",
        ),
        (
            "bucket = \"files\"\nprefix = \"u/{claim.}/\"\nallow = \"authenticated\"",
            "names nothing",
        ),
        (
            "bucket = \"files\"\nallow = { claims = { roles = \"\" } }",
            "empty value",
        ),
        (
            "bucket = \"other\"\nallow = \"authenticated\"",
            "no [buckets.*]",
        ),
        (
            "bucket = \"files\"\nmethods = []\nallow = \"authenticated\"",
            "at least one method",
        ),
    ] {
        let text = format!("{base}[[rules]]\n{rule}\n");
        let e = s3warden::config::Config::parse(
            &text,
            std::path::Path::new("."),
            &Default::default(),
            &s3warden::check_config,
        )
        .expect_err(rule)
        .to_string();
        assert!(e.contains(needle), "{rule}: {e}");
    }
}

#[tokio::test]
async fn a_reload_forgets_what_connections_proved() {
    let h = photo_harness().await;
    let t = token("alice");
    // Twice on the same keep-alive connection: the second is answered from its memo.
    assert_eq!(status_with(&h, &t).await, StatusCode::OK);
    assert_eq!(status_with(&h, &t).await, StatusCode::OK);
    // A new HMAC secret: the old token must stop working on that same connection.
    std::fs::write(
        h.dir.path().join("hmac-secret"),
        "a-completely-different-secret-0123456789",
    )
    .unwrap();
    let env = s3warden::config::Environment::from_pairs([
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ]);
    let config = s3warden::config::Config::from_toml(
        h.config_text(),
        h.dir.path(),
        &env,
        &s3warden::check_config,
    )
    .unwrap();
    h.app.reload(config).await.unwrap();
    assert_refused(&h, &t).await;
}

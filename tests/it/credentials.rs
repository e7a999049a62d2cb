//! S3 credentials from the AWS default chain, as on EC2 (instance metadata), ECS (container
//! credentials) and with a profile: temporary keys rotating every two seconds, refreshed in the
//! background before they expire, with the real binary in front of an S3 that accepts each
//! key only until its expiry.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use s3warden::demo::s3::EmbeddedS3;

use crate::common::credentials::{CredentialsServer, Issuer};
use crate::common::*;
use crate::daemon::{Daemon, Launch};

/// Keys rotate this often and each lives this long: several rotations in a few seconds.
const PERIOD: Duration = Duration::from_secs(2);
const LIFETIME: Duration = Duration::from_secs(6);

/// `s3warden serve` with no keys configured anywhere (a private `HOME`, no `AWS_*` keys), so
/// the default chain looks for them, plus `env`; in front of an S3 that accepts `issuer`'s keys.
async fn launch(issuer: &Issuer, env: &[(&str, String)]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("s3");
    std::fs::create_dir_all(&data).unwrap();
    let s3 = EmbeddedS3::start_with_auth(&data, "127.0.0.1:0".parse().unwrap(), issuer.clone())
        .await
        .unwrap();
    s3.create_bucket(BUCKET).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    let mut launch = Launch::new(Setup::default())
        .without_env("AWS_ACCESS_KEY_ID")
        .without_env("AWS_SECRET_ACCESS_KEY")
        .env("HOME", home.to_str().unwrap());
    for (k, v) in env {
        launch = launch.env(k, v);
    }
    launch.start_with(dir, Arc::new(s3)).await
}

/// s3warden on an instance role: keys from an IMDSv2 server.
async fn launch_on_instance_role() -> (Issuer, CredentialsServer, Daemon) {
    let issuer = Issuer::new(PERIOD, LIFETIME);
    let imds = CredentialsServer::start(issuer.clone()).await;
    let d = launch(
        &issuer,
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())],
    )
    .await;
    (issuer, imds, d)
}

/// Reads (each a cache miss, so S3 is asked) and uploads for `span`; what failed.
async fn traffic(d: &Daemon, span: Duration, round: &str) -> (u32, Vec<String>) {
    let http = client();
    let token = token("alice");
    let (mut done, mut failed) = (0, Vec::new());
    let deadline = Instant::now() + span;
    let mut i = 0;
    while Instant::now() < deadline {
        i += 1;
        let body = format!("object {round}-{i}");
        d.s3.put(BUCKET, &format!("keys/{round}-{i}.txt"), body.as_bytes())
            .unwrap();
        let r = http
            .get(d.object_url(&format!("keys/{round}-{i}.txt")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        if status != StatusCode::OK || r.text().await.unwrap() != body {
            failed.push(format!("GET {i}: {status}"));
        }
        let r = http
            .put(d.object_url(&format!("users/alice/{round}-{i}.txt")))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::CREATED {
            failed.push(format!("PUT {i}: {}", r.status()));
        }
        done += 2;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (done, failed)
}

/// Several rotations pass with no failed request, and each key s3warden moves to is in use
/// before the one it replaces expires.
async fn keys_rotate_without_a_failed_request(issuer: &Issuer, d: &Daemon, source: &str) {
    let (done, failed) = traffic(d, Duration::from_secs(9), "rotation").await;
    assert!(failed.is_empty(), "{failed:?} of {done}\n{}", d.logs());
    let used = issuer.used();
    assert!(
        used.len() >= 3,
        "only {} keys used in 9 s of 2 s rotations\n{}",
        used.len(),
        d.logs()
    );
    for pair in used.windows(2) {
        let next_first_use = issuer.first_use(&pair[1].id).unwrap();
        assert!(
            next_first_use < pair[0].expires,
            "{} was first used after {} expired",
            pair[1].id,
            pair[0].id
        );
    }
    assert!(d.logs().contains(source), "{}", d.logs());
}

#[tokio::test]
async fn instance_role_keys_rotate_without_a_failed_request() {
    let (issuer, imds, d) = launch_on_instance_role().await;
    // A reload in the middle keeps the keys and their refresh: nothing fails around it.
    let reload = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        d.signal("HUP");
    };
    let ((), ()) = tokio::join!(
        reload,
        keys_rotate_without_a_failed_request(&issuer, &d, "instance metadata (IMDSv2)")
    );
    let logs = d.logs();
    assert!(logs.contains("configuration reloaded"), "{logs}");
    assert_eq!(
        logs.matches("S3 credentials from the AWS default chain")
            .count(),
        1,
        "the reload kept the keys it had:\n{logs}"
    );
    // check-config says where the keys come from, never the keys.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3warden"))
        .args(["check-config", "--config"])
        .arg(d.dir.path().join("s3warden.toml"))
        .env_clear()
        .env("HOME", d.dir.path().join("home"))
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("s3: S3 credentials from the AWS default chain (instance metadata (IMDSv2)), temporary, expiring at "),
        "{text}"
    );
    assert!(
        !text.contains("ASIAROTATING") && !text.contains("rotating-secret"),
        "{text}"
    );
}

#[tokio::test]
async fn container_credentials_rotate_without_a_failed_request() {
    let issuer = Issuer::new(PERIOD, LIFETIME);
    let ecs = CredentialsServer::start(issuer.clone()).await;
    let d = launch(
        &issuer,
        &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{}/container", ecs.url()),
            ),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ],
    )
    .await;
    keys_rotate_without_a_failed_request(&issuer, &d, "container credentials").await;
}

#[tokio::test]
async fn a_profile_with_a_credential_process_rotates_without_a_failed_request() {
    let issuer = Issuer::new(PERIOD, LIFETIME);
    let profiles = tempfile::tempdir().unwrap();
    let output = profiles.path().join("process.json");
    let writer = issuer.write_process_output(output.clone());
    let config = profiles.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile other]\nregion = us-east-1\n\n[profile warden]\nregion = us-east-1\ncredential_process = /bin/cat {}\n",
            output.display()
        ),
    )
    .unwrap();
    let d = launch(
        &issuer,
        &[
            ("AWS_PROFILE", "warden".into()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap().into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ],
    )
    .await;
    keys_rotate_without_a_failed_request(&issuer, &d, "credential_process").await;
    writer.abort();
}

#[tokio::test]
async fn expired_keys_that_cannot_be_refreshed_are_a_503_and_not_ready_until_they_can() {
    let (issuer, imds, d) = launch_on_instance_role().await;
    let http = client();
    let ready = || {
        let request = http.get(format!("{}/readyz", d.admin_url)).send();
        async move { request.await.unwrap() }
    };
    assert_eq!(ready().await.status(), StatusCode::OK);
    let (_, failed) = traffic(&d, Duration::from_secs(1), "before").await;
    assert!(failed.is_empty(), "{failed:?}");

    // The metadata service goes away: the keys in hand keep working until they expire.
    imds.stop();
    let stopped = SystemTime::now();
    let mut served_after_stop = 0;
    let (first_503, failures) = loop {
        let (_, failed) = traffic(&d, Duration::from_millis(100), "after").await;
        if failed.is_empty() {
            served_after_stop += 1;
        } else {
            assert!(
                failed
                    .iter()
                    .all(|f| f.ends_with("503 Service Unavailable")),
                "{failed:?}"
            );
            break (SystemTime::now(), failed);
        }
        assert!(
            stopped.elapsed().unwrap() < LIFETIME + Duration::from_secs(3),
            "still served long after every key expired\n{}",
            d.logs()
        );
    };
    assert!(
        served_after_stop > 0,
        "nothing served once the service went away"
    );
    let last_key = issuer.used().pop().unwrap();
    // Keys are put aside a second before they expire (no request signed with them may reach
    // S3 after it), so the first 503 comes from then on.
    assert!(
        first_503 + Duration::from_millis(1500) >= last_key.expires,
        "503 before the keys in hand expired: {first_503:?} {last_key:?} {failures:?}\n{}",
        d.logs()
    );
    let r = ready().await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reason = r.text().await.unwrap();
    assert!(reason.contains("credentials"), "{reason}");
    let says_why = "no usable S3 credentials";
    assert!(
        eventually(Duration::from_secs(3), || d.logs().contains(says_why)).await,
        "no line says why:\n{}",
        d.logs()
    );

    // It comes back: so does s3warden, without a restart.
    imds.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready().await.status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "not ready again\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, failed) = traffic(&d, Duration::from_secs(1), "again").await;
    assert!(failed.is_empty(), "{failed:?}");
    let logs = d.logs();
    assert_eq!(logs.matches(says_why).count(), 1, "one line:\n{logs}");
}

#[tokio::test]
async fn s3_urls_signed_with_temporary_keys_say_when_they_stop_working() {
    let (issuer, _imds, d) = launch_on_instance_role().await;
    d.s3.put(BUCKET, "photos/a.png", b"png").unwrap();
    let sign = |kind: &'static str| {
        let body = serde_json::json!({"bucket": "files", "keys": ["photos/a.png"], "kind": kind});
        let url = d.url.clone();
        async move { sign_urls(&url, &token("alice"), body).await }
    };
    let expiry =
        |v: &serde_json::Value| humantime::parse_rfc3339(v["expires"].as_str().unwrap()).unwrap();
    // An S3 URL dies with the session that signed it: the answer says so.
    let s3 = sign("s3").await;
    let url = s3["items"][0]["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Security-Token="), "{url}");
    let key = (issuer.issued().into_iter())
        .find(|k| url.contains(&format!("X-Amz-Credential={}%2F", k.id)))
        .expect("signed with an issued key");
    assert_eq!(expiry(&s3), key.expires, "{s3}");
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), "png");
    // A proxy URL does not depend on S3 keys: it lives to its window's end.
    let proxy = sign("proxy").await;
    assert!(
        expiry(&proxy) > SystemTime::now() + Duration::from_secs(3600),
        "{proxy}"
    );
    assert!(
        d.logs().contains("use kind \"proxy\" URLs with roles"),
        "{}",
        d.logs()
    );
}

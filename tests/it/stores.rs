//! Several S3 stores behind one s3warden: `[s3]` and `[stores.NAME]`, each with its own
//! endpoint, region and keys, picked per bucket alias; both hold a bucket of the same name, and
//! nothing read, written, cached or signed for one reaches the other.

use http::StatusCode;
use s3warden::config::{Config, Environment};
use s3warden::demo::s3::EmbeddedS3;
use serde_json::json;

use crate::common::*;

const OTHER_KEY: &str = "ONPREMACCESSKEY";
const OTHER_SECRET: &str = "onprem-secret-key-0123456789";

const ARCHIVE_RULES: &str = r#"
[[rules]]
bucket = "archive"
prefix = "keys/"
methods = ["GET"]
allow = "authenticated"

[[rules]]
bucket = "archive"
prefix = "users/{sub}/"
methods = ["GET", "PUT", "DELETE"]
allow = "authenticated"
"#;

/// A second store (its own keys, in key files, and region) serving `test-bucket` as the alias
/// `archive`, beside the default store's `files`.
async fn two_stores() -> (Harness, EmbeddedS3, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let other = EmbeddedS3::start(
        &dir.path().join("data"),
        "127.0.0.1:0".parse().unwrap(),
        OTHER_KEY,
        OTHER_SECRET,
    )
    .await
    .unwrap();
    other.create_bucket(BUCKET).unwrap();
    let (id, secret) = (dir.path().join("id"), dir.path().join("secret"));
    std::fs::write(&id, OTHER_KEY).unwrap();
    std::fs::write(&secret, OTHER_SECRET).unwrap();
    let quoted = |p: &std::path::Path| format!("{:?}", p.display().to_string());
    let h = Setup::default()
        .set("stores.onprem.endpoint", &format!("{:?}", other.endpoint()))
        .set("stores.onprem.region", "\"eu-central-1\"")
        .set("stores.onprem.access_key_id_file", &quoted(&id))
        .set("stores.onprem.secret_access_key_file", &quoted(&secret))
        .set("buckets.archive.bucket", &format!("{BUCKET:?}"))
        .set("buckets.archive.store", "\"onprem\"")
        .set("signing.allow_s3_put", "true")
        .rules(&format!("{DEFAULT_RULES}{ARCHIVE_RULES}"))
        .start()
        .await;
    (h, other, dir)
}

async fn read(h: &Harness, path: &str) -> (StatusCode, String) {
    let r = (h.http.get(format!("{}/{path}", h.url)))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test]
async fn each_alias_reads_and_writes_its_own_store() {
    let (h, other, _dir) = two_stores().await;
    // The same bucket and key in both stores, different bytes.
    h.put("keys/same.txt", b"from the default store");
    other.put(BUCKET, "keys/same.txt", b"from onprem").unwrap();
    for _ in 0..2 {
        // The second round comes from the cache: each entry stays with its store.
        assert_eq!(
            read(&h, "files/keys/same.txt").await,
            (StatusCode::OK, "from the default store".into())
        );
        assert_eq!(
            read(&h, "archive/keys/same.txt").await,
            (StatusCode::OK, "from onprem".into())
        );
    }
    assert_eq!(other.log().requests("GET", BUCKET, "keys/same.txt"), 1);

    // Uploads land in the alias's store only.
    let r = (h.http.put(format!("{}/archive/users/alice/up.txt", h.url)))
        .bearer_auth(token("alice"))
        .header("content-type", "text/plain")
        .body("uploaded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        other.read(BUCKET, "users/alice/up.txt").unwrap(),
        b"uploaded"
    );
    assert!(!h.s3.exists(BUCKET, "users/alice/up.txt"));

    // Both kinds of signed URL, for reads and for uploads.
    let base = h.url.clone();
    let sign = |body: serde_json::Value| {
        let base = base.clone();
        async move { sign_urls(&base, &token("alice"), body).await }
    };
    let url = |v: &serde_json::Value| v["items"][0]["url"].as_str().unwrap().to_owned();
    let proxy = sign(json!({"bucket": "archive", "keys": ["keys/same.txt"]})).await;
    let r = h.http.get(url(&proxy)).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "from onprem");
    let s3 = sign(json!({"bucket": "archive", "keys": ["keys/same.txt"], "kind": "s3"})).await;
    let s3_url = url(&s3);
    assert!(s3_url.starts_with(&other.endpoint()), "{s3_url}");
    assert!(s3_url.contains("%2Feu-central-1%2Fs3%2F"), "{s3_url}");
    let r = h.http.get(&s3_url).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "from onprem");
    for kind in ["proxy", "s3"] {
        let body = json!({"bucket": "archive", "method": "PUT", "kind": kind,
            "keys": [format!("users/alice/{kind}.txt")], "content_type": "text/plain"});
        let signed = sign(body).await;
        let mut put = h.http.put(url(&signed)).body(kind);
        for (name, value) in signed["items"][0]["headers"].as_object().unwrap() {
            put = put.header(name, value.as_str().unwrap());
        }
        let status = put.send().await.unwrap().status();
        assert!(status.is_success(), "{kind}: {status}");
        let stored = other
            .read(BUCKET, &format!("users/alice/{kind}.txt"))
            .unwrap();
        assert_eq!(stored, kind.as_bytes());
    }
}

#[tokio::test]
async fn a_reload_moves_an_alias_to_another_store() {
    let (h, other, _dir) = two_stores().await;
    h.put("keys/moved.txt", b"default");
    other.put(BUCKET, "keys/moved.txt", b"onprem").unwrap();
    assert_eq!(read(&h, "archive/keys/moved.txt").await.1, "onprem");
    // The alias now names the default store: reads go there, not to the old store's cache.
    let text = h.config_text().replace("store = \"onprem\"\n", "");
    let env = Environment::from_pairs([
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ]);
    let config = Config::from_toml(&text, h.dir.path(), &env, &s3warden::check_config).unwrap();
    assert_eq!(config.buckets["archive"].store, None);
    h.app.reload(config).await.unwrap();
    assert_eq!(read(&h, "archive/keys/moved.txt").await.1, "default");
}

#[test]
fn check_config_names_unknown_stores_and_incomplete_ones() {
    let text = "[s3]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"us-east-1\"\n\n\
         [stores.eu]\nendpoint = \"http://10.0.0.5:9000\"\nprofile = \"eu\"\n\
         access_key_id_file = \"id\"\nsecret_access_key_file = \"secret\"\n\n\
         [buckets.a]\nbucket = \"bucket-a\"\nstore = \"eu\"\n\n\
         [buckets.b]\nbucket = \"bucket-b\"\nstore = \"nowhere\"\n\n\
         [[rules]]\nbucket = \"a\"\nallow = \"public\"\n";
    let env = Environment::from_pairs([("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
    let e = Config::from_toml(
        text,
        std::path::Path::new("."),
        &env,
        &s3warden::check_config,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("buckets.b.store: unknown store \"nowhere\": define [stores.nowhere]"),
        "{e}"
    );
    assert!(e.contains("stores.eu.region: not set"), "{e}");
    assert!(
        e.contains("stores.eu.profile: the key files would be used, never the profile"),
        "{e}"
    );
    let line = text
        .lines()
        .position(|l| l == "store = \"nowhere\"")
        .unwrap()
        + 1;
    assert!(e.contains(&format!("line {line}: buckets.b.store")), "{e}");
}

//! The test harness: a real S3 (s3s-fs, SigV4 verified) and s3warden, both on 127.0.0.1:0, a
//! config assembled per test, real signed tokens, and a raw HTTP client for paths that URL
//! libraries would normalize.

pub mod credentials;
pub mod faults;
pub mod h2raw;
pub mod jwks;
pub mod process;
pub mod raw;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use s3warden::config::{Config, Environment};
use s3warden::demo::s3::{EmbeddedS3, S3Log};
use s3warden::{App, Running};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const BUCKET: &str = "test-bucket";
pub const ACCESS_KEY: &str = "TESTACCESSKEY";
pub const SECRET_KEY: &str = "test-secret-key-0123456789";
pub const HMAC_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";
pub const ISSUER: &str = "https://idp.test/";
pub const AUDIENCE: &str = "files";

/// The rules most tests run with.
pub const DEFAULT_RULES: &str = r#"
[[rules]]
bucket = "files"
prefix = "public/"
methods = ["GET"]
allow = "public"

[[rules]]
bucket = "files"
prefix = "photos/"
methods = ["GET"]
allow = "authenticated"

[[rules]]
bucket = "files"
prefix = "keys/"
methods = ["GET"]
allow = "authenticated"

[[rules]]
bucket = "files"
prefix = "users/{sub}/"
methods = ["GET", "PUT", "DELETE"]
allow = "authenticated"
acls = ["private", "public-read"]

[[rules]]
bucket = "files"
prefix = "private/"
methods = ["GET", "PUT", "DELETE"]
allow = { claims = { roles = "admin" } }
"#;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

/// Builds a config section by section; values are TOML literals.
pub struct Setup {
    sections: BTreeMap<String, BTreeMap<String, String>>,
    rules: String,
    endpoint: Option<String>,
    clock: Option<s3warden::Clock>,
    port: u16,
}

impl Default for Setup {
    fn default() -> Self {
        let mut s = Setup {
            sections: BTreeMap::new(),
            rules: DEFAULT_RULES.to_owned(),
            endpoint: None,
            clock: None,
            port: 0,
        };
        s = s
            .set("s3.region", "\"us-east-1\"")
            .set("s3.addressing", "\"path\"")
            .set("s3.timeout", "\"2s\"")
            .set("s3.connect_timeout", "\"1s\"")
            .set("buckets.files.bucket", &format!("\"{BUCKET}\""))
            .set("auth.hmac_secret_file", "\"hmac-secret\"")
            .set(
                "auth.public_key_files",
                &format!(
                    "[{:?}, {:?}, {:?}]",
                    fixture("rsa_public.pem").display().to_string(),
                    fixture("ec_public.pem").display().to_string(),
                    fixture("ed_public.pem").display().to_string()
                ),
            )
            .set(
                "auth.algorithms",
                "[\"HS256\", \"HS384\", \"RS256\", \"PS256\", \"ES256\", \"EdDSA\"]",
            )
            .set("auth.issuer", &format!("\"{ISSUER}\""))
            .set("auth.audience", &format!("\"{AUDIENCE}\""))
            .set("auth.leeway", "\"5s\"")
            .set("signing.secret_files", "[\"url-key-1\"]");
        s
    }
}

impl Setup {
    /// Sets `section.key = value` (`value` is a TOML literal); the section may be dotted
    /// (`buckets.files.bucket`).
    pub fn set(mut self, path: &str, value: &str) -> Self {
        let (section, key) = path.rsplit_once('.').expect("section.key");
        self.sections
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Removes a key.
    pub fn unset(mut self, path: &str) -> Self {
        let (section, key) = path.rsplit_once('.').expect("section.key");
        if let Some(s) = self.sections.get_mut(section) {
            s.remove(key);
        }
        self
    }

    /// Replaces the `[[rules]]`.
    pub fn rules(mut self, rules: &str) -> Self {
        self.rules = rules.to_owned();
        self
    }

    /// Sends S3 requests somewhere else (a fault injector).
    pub fn endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = Some(endpoint.to_owned());
        self
    }

    /// Serves HTTPS with the test certificate (for `localhost` and 127.0.0.1).
    pub fn tls(self) -> Self {
        self.set(
            "server.tls.cert_file",
            &format!("{:?}", fixture("tls_cert.pem").display().to_string()),
        )
        .set(
            "server.tls.key_file",
            &format!("{:?}", fixture("tls_key.pem").display().to_string()),
        )
    }

    /// Runs the app on this clock instead of the system's.
    pub fn clock(mut self, clock: s3warden::Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Starts s3warden in front of an S3 that is already running.
    pub async fn start_with(self, s3: Arc<EmbeddedS3>) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        Harness::launch(self, dir, s3).await
    }

    /// The config text for a separate `s3warden serve` process in `dir` (secrets written there),
    /// listening on `port` and `admin`, with S3 at `endpoint` (unless `endpoint()` was set).
    pub fn render_for_daemon(self, dir: &Path, endpoint: &str, port: u16, admin: u16) -> String {
        write_secrets(dir);
        let endpoint = self.endpoint.clone().unwrap_or_else(|| endpoint.to_owned());
        self.set("s3.endpoint", &format!("\"{endpoint}\""))
            .set("server.listen", &format!("[\"127.0.0.1:{port}\"]"))
            .set("server.public_url", &format!("\"http://127.0.0.1:{port}\""))
            .set("admin.listen", &format!("\"127.0.0.1:{admin}\""))
            .render()
    }

    /// The config text and config for S3 at `endpoint`, with secrets in `dir`.
    fn config(self, dir: &Path, endpoint: &str, url: &str) -> (String, Config) {
        let text = self
            .set("s3.endpoint", &format!("\"{endpoint}\""))
            .set("server.public_url", &format!("\"{url}\""))
            .render();
        let env = Environment::from_pairs([
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ]);
        let config = Config::from_toml(&text, dir, &env, &s3warden::check_config)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        (text, config)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (section, keys) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        out.push_str(&self.rules);
        out
    }

    /// Starts S3 and s3warden.
    pub async fn start(self) -> Harness {
        self.start_on(0).await
    }

    /// Starts S3 and s3warden, s3warden on `port` (0: any free one).
    pub async fn start_on(mut self, port: u16) -> Harness {
        self.port = port;
        // Logs show up for failing tests only.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("s3warden=debug,access=info")
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("s3");
        std::fs::create_dir_all(&data).unwrap();
        let s3 = EmbeddedS3::start(
            &data,
            "127.0.0.1:0".parse().unwrap(),
            ACCESS_KEY,
            SECRET_KEY,
        )
        .await
        .expect("embedded S3");
        s3.create_bucket(BUCKET).unwrap();
        Harness::launch(self, dir, Arc::new(s3)).await
    }
}

/// A running s3warden in front of a running S3.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub s3: Arc<EmbeddedS3>,
    pub app: App,
    pub url: String,
    pub admin_url: String,
    pub addr: std::net::SocketAddr,
    pub http: reqwest::Client,
    text: String,
    running: Option<Running>,
}

impl Harness {
    async fn launch(setup: Setup, dir: tempfile::TempDir, s3: Arc<EmbeddedS3>) -> Harness {
        write_secrets(dir.path());
        let public = TcpListener::bind(("127.0.0.1", setup.port)).await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = public.local_addr().unwrap();
        let url = format!("http://{addr}");
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let endpoint = setup.endpoint.clone().unwrap_or_else(|| s3.endpoint());
        let clock = setup.clock.clone();
        let (text, config) = setup.config(dir.path(), &endpoint, &url);
        let running = Running::start(config, vec![public], admin, clock)
            .await
            .expect("s3warden starts");
        Harness {
            dir,
            s3,
            app: running.app().clone(),
            url,
            admin_url,
            addr,
            http: client(),
            text,
            running: Some(running),
        }
    }

    /// Reloads with `setup`'s config, as `s3warden reload` does: the same S3, listeners and
    /// cache.
    pub async fn reload(&mut self, setup: Setup) {
        let endpoint = setup.endpoint.clone().unwrap_or_else(|| self.s3.endpoint());
        let (text, config) = setup.config(self.dir.path(), &endpoint, &self.url);
        let running = self.running.as_ref().expect("running");
        running.reload(config).await.expect("reload");
        self.text = text;
    }

    /// The config file this instance runs with (relative paths are relative to `dir`).
    pub fn config_text(&self) -> &str {
        &self.text
    }

    /// The S3 request log.
    pub fn s3_log(&self) -> &Arc<S3Log> {
        self.s3.log()
    }

    /// Stores an object directly in S3 (not counted as a request).
    pub fn put(&self, key: &str, bytes: &[u8]) {
        self.s3.put(BUCKET, key, bytes).unwrap();
    }

    /// Stores an object through S3's own API (a SigV4-signed PutObject, as another program
    /// would), with `content_type` sent exactly as given.
    pub async fn put_typed(&self, key: &str, bytes: &[u8], content_type: &[u8]) {
        put_to_s3(&self.s3, key, bytes, &[("content-type", content_type)]).await;
    }

    /// `{url}/files/{encoded key}`
    pub fn object_url(&self, key: &str) -> String {
        format!("{}/files/{}", self.url, encode_key(key))
    }

    /// GET with an optional bearer token.
    pub async fn get(&self, key: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.object_url(key));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    /// The admin `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let url = format!("{}/metrics", self.admin_url);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// One sample of the admin `/metrics`, by its full name with labels (`None` if absent).
    pub async fn metric(&self, name: &str) -> Option<u64> {
        metric_at(&self.admin_url, name).await
    }

    /// Stops the listeners (drains).
    pub async fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

pub const URL_KEY_1: &str = "url-signing-key-number-one-0123456789";
pub const URL_KEY_2: &str = "url-signing-key-number-two-0123456789";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// The secret files the test configs name.
pub fn write_secrets(dir: &Path) {
    std::fs::write(dir.join("hmac-secret"), HMAC_SECRET).unwrap();
    std::fs::write(dir.join("url-key-1"), URL_KEY_1).unwrap();
    std::fs::write(dir.join("url-key-2"), URL_KEY_2).unwrap();
    std::fs::write(dir.join("admin-token"), format!("{ADMIN_TOKEN}\n")).unwrap();
}

/// The `/metrics` text of the admin listener at `admin_url`.
pub async fn metrics_at(admin_url: &str) -> String {
    let r = client().get(format!("{admin_url}/metrics")).send().await;
    r.unwrap().text().await.unwrap()
}

/// One sample of the `/metrics` of the admin listener at `admin_url`, by its full name with
/// labels (`None` if absent).
pub async fn metric_at(admin_url: &str, name: &str) -> Option<u64> {
    let text = metrics_at(admin_url).await;
    text.lines()
        .find(|l| l.rsplit_once(' ').is_some_and(|(n, _)| n == name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A free TCP port on loopback (free when asked; tests bind it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A client that trusts the test certificate (HTTP/2 by ALPN unless told otherwise).
pub fn tls_client(builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .no_proxy()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&fixture_bytes("tls_cert.pem")).unwrap(),
        )
        .build()
        .unwrap()
}

/// `GET url` with alice's token, over `client`.
pub async fn get_as_alice(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client
        .get(url)
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap()
}

/// Percent-encodes a key for a URL path (keeping `/`).
pub fn encode_key(key: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(key, SET).to_string()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `POST {base}/_sign` with `body` as `token`'s holder; the answer must be 200.
pub async fn sign_urls(base: &str, token: &str, body: Value) -> Value {
    let r = client()
        .post(format!("{base}/_sign"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    r.json().await.unwrap()
}

/// Standard claims for `sub`, valid for an hour, with the test issuer and audience.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 3600, "iat": now() })
}

/// Claims with extra fields merged in.
pub fn claims_with(sub: &str, extra: Value) -> Value {
    let mut c = claims(sub);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// An HS256 token with the test secret.
pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
        None,
        claims,
    )
}

/// A token for `sub` with the standard claims.
pub fn token(sub: &str) -> String {
    hs256(&claims(sub))
}

/// An admin token.
pub fn admin_token() -> String {
    hs256(&claims_with("root", json!({ "roles": ["admin"] })))
}

pub fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture_bytes("rsa_private.pem")).unwrap()
}

pub fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&fixture_bytes("ec_private.pem")).unwrap()
}

pub fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&fixture_bytes("ed_private.pem")).unwrap()
}

/// Signs `claims` with `alg` and `key`, with an optional `kid`.
pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token assembled by hand from a header and claims, with the given signature bytes.
pub fn handmade(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// An HS256 token with a header of the test's choosing, signed with the test secret.
pub fn hs256_with_header(header: &Value, claims: &Value) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let unsigned = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HMAC_SECRET.as_bytes()).unwrap();
    mac.update(unsigned.as_bytes());
    format!("{unsigned}.{}", b64(&mac.finalize().into_bytes()))
}

/// A clock tests can move.
#[derive(Clone)]
pub struct ManualClock(Arc<std::sync::atomic::AtomicU64>);

impl ManualClock {
    pub fn at(secs: u64) -> ManualClock {
        ManualClock(Arc::new(std::sync::atomic::AtomicU64::new(secs)))
    }
    pub fn set(&self, secs: u64) {
        self.0.store(secs, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn clock(&self) -> s3warden::Clock {
        let secs = self.0.clone();
        Arc::new(move || {
            UNIX_EPOCH + Duration::from_secs(secs.load(std::sync::atomic::Ordering::SeqCst))
        })
    }
}

/// Waits until `f` is true or `timeout` passes.
/// The stderr of a command that must have failed.
pub fn stderr_of_failure(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// A SigV4-signed PutObject straight to the embedded S3, with `headers` sent as given; the
/// answer must be a success.
pub async fn put_to_s3(s3: &EmbeddedS3, key: &str, bytes: &[u8], headers: &[(&str, &[u8])]) {
    use s3warden::s3::sigv4::{Payload, Signer};
    let url =
        reqwest::Url::parse(&format!("{}/{BUCKET}/{}", s3.endpoint(), encode_key(key))).unwrap();
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    map.insert(http::header::CONTENT_LENGTH, bytes.len().into());
    let credentials = s3warden::config::AwsCredentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    };
    let keys = s3warden::s3::credentials::Keys::from_config(&credentials, "test");
    Signer::new("us-east-1")
        .sign_headers(
            &keys,
            &http::Method::PUT,
            &url,
            &mut map,
            Payload::Bytes(bytes),
            SystemTime::now(),
        )
        .unwrap();
    let r = client()
        .put(url)
        .headers(map)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "S3 PutObject: {}", r.status());
}

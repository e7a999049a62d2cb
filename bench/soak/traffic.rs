//! The clients: each picks an operation, a user and a key, makes the request, and checks the
//! answer against the model. Every way an answer can be wrong is a violation, counted and kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, COOKIE, ETAG, IF_NONE_MATCH, RANGE,
};

use super::daemon::{BUCKET, Daemon};
use super::faults::{Faults, Kind};
use super::model::{Body, Outcome, Seen, USERS, User, Versions};
use super::secrets::{Secrets, Token};

/// How long a client waits for a whole answer before calling it lost.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How far back a fault can explain an error: a fill that began waiting on a hung S3 request
/// before this request came, plus the retry.
const FAULT_REACH: Duration = Duration::from_secs(8);

/// One daemon as the clients see it.
pub struct Target {
    pub daemon: Arc<Daemon>,
    pub http: reqwest::Client,
    pub versions: Versions,
    /// Keys made by form uploads (their names come from the daemon).
    pub made: Mutex<Vec<String>>,
    /// ETags seen, by key.
    pub etags: Mutex<BTreeMap<String, (String, Body)>>,
    /// Signed URLs handed out: key, URL, and the signing generations it may have been made
    /// under (lowest, highest), read again later as a browser's cache would.
    pub signed: Mutex<Vec<(String, String, u64, u64)>>,
    /// At most two uploads of unknown length at once (they take multipart buffers).
    pub chunked: tokio::sync::Semaphore,
}

/// Counters and findings.
#[derive(Default)]
pub struct Tally {
    ops: Mutex<BTreeMap<&'static str, u64>>,
    statuses: Mutex<BTreeMap<u16, u64>>,
    violations: Mutex<Vec<String>>,
    pub explained: std::sync::atomic::AtomicU64,
}

impl Tally {
    fn op(&self, name: &'static str) {
        *self.ops.lock().unwrap().entry(name).or_default() += 1;
    }

    fn status(&self, status: StatusCode) {
        *self
            .statuses
            .lock()
            .unwrap()
            .entry(status.as_u16())
            .or_default() += 1;
    }

    /// Records a violation.
    pub fn violation(&self, what: String) {
        eprintln!("VIOLATION {what}");
        self.violations.lock().unwrap().push(what);
    }

    pub fn ops(&self) -> BTreeMap<&'static str, u64> {
        self.ops.lock().unwrap().clone()
    }

    pub fn statuses(&self) -> BTreeMap<u16, u64> {
        self.statuses.lock().unwrap().clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

/// What all clients share.
pub struct World {
    pub targets: Vec<Arc<Target>>,
    pub faults: Arc<Faults>,
    pub secrets: Arc<Secrets>,
    pub tally: Tally,
    pub seed: std::sync::atomic::AtomicU64,
}

/// The keys of the soak: (key, size class), the same on every daemon.
pub fn keys() -> Vec<String> {
    let mut keys = Vec::new();
    keys.extend((0..12).map(|i| format!("public/p{i}")));
    keys.extend((0..24).map(|i| format!("team/t{i}")));
    for user in ["alice", "bob", "carol"] {
        keys.extend((0..6).map(|i| format!("users/{user}/u{i}")));
    }
    keys.extend((0..8).map(|i| format!("secret/s{i}")));
    keys
}

/// A new body: mostly small, some in memory files, a few larger than the cache takes.
pub fn new_body(seeds: &std::sync::atomic::AtomicU64) -> Body {
    let seed = seeds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let len = match fastrand::u32(0..100) {
        0..2 => 0,
        2..60 => fastrand::usize(1..32 * 1024),
        60..92 => fastrand::usize(32 * 1024..400 * 1024),
        _ => fastrand::usize(1024 * 1024..2 * 1024 * 1024),
    };
    Body {
        seed: seed.wrapping_mul(0x2545_f491_4f6c_dd1d),
        len,
    }
}

fn url(target: &Target, key: &str) -> String {
    format!("{}/soak/{key}", target.daemon.base)
}

fn s3_path(target: &Target, key: &str) -> String {
    format!("/{BUCKET}/{}{key}", target.daemon.prefix)
}

/// Adds the token as a bearer header, or now and then as the cookie (reads only).
fn authorize(
    request: reqwest::RequestBuilder,
    token: Option<&Token>,
    cookie_ok: bool,
) -> reqwest::RequestBuilder {
    match token {
        None => request,
        Some(t) if cookie_ok && fastrand::u8(0..4) == 0 => {
            request.header(COOKIE, format!("s3warden_token={}", t.jwt))
        }
        Some(t) => request.header(AUTHORIZATION, format!("Bearer {}", t.jwt)),
    }
}

/// An answer read whole: status, headers, body (or the error that cut it).
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Result<Bytes, String>,
}

async fn send(request: reqwest::RequestBuilder) -> Result<Answer, String> {
    let run = async {
        let response = request
            .send()
            .await
            .map_err(|e| format!("request: {}", chain(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("body: {}", chain(&e)));
        Ok(Answer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(CLIENT_TIMEOUT, run)
        .await
        .map_err(|_| format!("no answer within {CLIENT_TIMEOUT:?}"))?
}

/// The kinds of read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    Whole,
    Head,
    Range,
    Conditional,
}

impl World {
    fn pick_key(&self, target: &Target) -> String {
        let made = target.made.lock().unwrap();
        if !made.is_empty() && fastrand::u8(0..10) == 0 {
            return made[fastrand::usize(..made.len())].clone();
        }
        drop(made);
        let keys = keys();
        keys[fastrand::usize(..keys.len())].clone()
    }

    /// A user allowed to `method` the key, if any (anonymous for public reads now and then).
    fn allowed_user(&self, method: &str, key: &str) -> Option<User> {
        let users: Vec<User> = USERS.into_iter().filter(|u| u.may(method, key)).collect();
        (!users.is_empty()).then(|| users[fastrand::usize(..users.len())])
    }

    fn denied_user(&self, method: &str, key: &str) -> Option<User> {
        let users: Vec<User> = USERS.into_iter().filter(|u| !u.may(method, key)).collect();
        (!users.is_empty()).then(|| users[fastrand::usize(..users.len())])
    }

    /// Whether an error status is explained by a fault on the key or a rotation.
    fn explained(
        &self,
        target: &Target,
        key: &str,
        status: StatusCode,
        from: Instant,
        to: Instant,
        token: Option<&Token>,
    ) -> bool {
        let by_fault = matches!(status.as_u16(), 502..=504)
            && self.faults.record.hit(
                &s3_path(target, key),
                from.checked_sub(FAULT_REACH).unwrap_or(from),
                to,
                None,
            );
        let by_rotation = status == StatusCode::UNAUTHORIZED
            && token.is_some()
            && self.secrets.rotating(from, to);
        if by_fault || by_rotation {
            self.tally
                .explained
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        by_fault || by_rotation
    }

    /// Whether S3 cut off a body of the key during the request (the daemon then cuts the
    /// answer it was streaming: never a short success).
    fn cut_by_s3(&self, target: &Target, key: &str, from: Instant, to: Instant) -> bool {
        let since = from.checked_sub(FAULT_REACH).unwrap_or(from);
        let hit = self
            .faults
            .record
            .hit(&s3_path(target, key), since, to, Some(&[Kind::Reset]));
        if hit {
            self.tally
                .explained
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        hit
    }

    /// Runs operations on `target` until `deadline`.
    pub async fn client(self: Arc<Self>, target: Arc<Target>, deadline: tokio::time::Instant) {
        while tokio::time::Instant::now() < deadline {
            let roll = fastrand::u32(0..100);
            match roll {
                0..30 => self.read(&target, Read::Whole).await,
                30..36 => self.read(&target, Read::Head).await,
                36..46 => self.read(&target, Read::Range).await,
                46..54 => self.read(&target, Read::Conditional).await,
                54..62 => self.denied(&target).await,
                62..72 => self.put(&target, false).await,
                72..75 => self.put(&target, true).await,
                75..77 => self.form_upload(&target).await,
                77..80 => self.delete(&target).await,
                80..87 => self.sign(&target).await,
                87..90 => self.signed_again(&target).await,
                90..95 => self.vanish_reading(&target).await,
                _ => self.vanish_uploading(&target).await,
            }
        }
    }

    /// A read by a user the rules allow, checked against the versions held meanwhile.
    async fn read(&self, target: &Target, kind: Read) {
        let key = self.pick_key(target);
        let Some(user) = self.allowed_user("GET", &key) else {
            return;
        };
        let token = self.secrets.token(user);
        let method = if kind == Read::Head {
            reqwest::Method::HEAD
        } else {
            reqwest::Method::GET
        };
        let mut request = authorize(
            target.http.request(method, url(target, &key)),
            token.as_ref(),
            true,
        );
        let mut range = None;
        let mut condition = None;
        match kind {
            Read::Range => {
                let start = fastrand::usize(0..450 * 1024);
                let end = start + fastrand::usize(0..128 * 1024);
                request = request.header(RANGE, format!("bytes={start}-{end}"));
                range = Some((start, end));
            }
            Read::Conditional => {
                if let Some((etag, body)) = target.etags.lock().unwrap().get(&key).cloned() {
                    request = request.header(IF_NONE_MATCH, etag);
                    condition = Some(body);
                }
            }
            Read::Whole | Read::Head => {}
        }
        self.tally.op(match kind {
            Read::Whole => "read",
            Read::Head => "head",
            Read::Range => "range",
            Read::Conditional => "conditional",
        });
        let from = Instant::now();
        let answer = send(request).await;
        let to = Instant::now();
        self.judge_read(
            target,
            &key,
            from,
            to,
            answer,
            kind,
            range,
            condition,
            token.as_ref(),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn judge_read(
        &self,
        target: &Target,
        key: &str,
        from: Instant,
        to: Instant,
        answer: Result<Answer, String>,
        kind: Read,
        range: Option<(usize, usize)>,
        condition: Option<Body>,
        token: Option<&Token>,
    ) {
        let name = target.daemon.name;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                // A connection cut by the daemon is right when S3 cut the body it was passing on.
                if !self.cut_by_s3(target, key, from, to) {
                    self.tally.violation(format!("{name} GET {key}: {e}"));
                }
                return;
            }
        };
        self.tally.status(answer.status);
        let body = match &answer.body {
            Ok(body) => body.clone(),
            Err(e) => {
                if !self.cut_by_s3(target, key, from, to) {
                    self.tally.violation(format!(
                        "{name} GET {key}: {} then {e} {:?}",
                        answer.status, answer.headers
                    ));
                }
                return;
            }
        };
        let seen = match answer.status.as_u16() {
            200 if kind == Read::Head => {
                let len = header_number(&answer.headers, CONTENT_LENGTH);
                Seen::Head(len.unwrap_or(usize::MAX))
            }
            200 => Seen::Whole(&body),
            206 => {
                let Some((start, end, total)) = content_range(&answer.headers) else {
                    self.tally.violation(format!(
                        "{name} GET {key}: 206 without a valid Content-Range"
                    ));
                    return;
                };
                let Some((asked_start, asked_end)) = range else {
                    self.tally
                        .violation(format!("{name} GET {key}: 206 to a request without Range"));
                    return;
                };
                if start != asked_start || end > asked_end || end - start + 1 != body.len() {
                    self.tally.violation(format!(
                        "{name} GET {key}: 206 bytes {start}-{end}/{total} ({} bytes) for bytes={asked_start}-{asked_end}",
                        body.len()
                    ));
                    return;
                }
                Seen::Part {
                    start,
                    total,
                    bytes: &body,
                }
            }
            304 => match condition {
                Some(body) => Seen::NotModified(body),
                None => {
                    self.tally
                        .violation(format!("{name} GET {key}: 304 without a condition"));
                    return;
                }
            },
            404 => Seen::Missing,
            416 => match range {
                Some((start, _)) => Seen::Unsatisfiable(start),
                None => {
                    self.tally
                        .violation(format!("{name} GET {key}: 416 without a range"));
                    return;
                }
            },
            _ => {
                if !self.explained(target, key, answer.status, from, to, token) {
                    let alg = token.map_or("no token", |t| {
                        if t.hmac_generation.is_some() {
                            "HS256"
                        } else {
                            "RS256"
                        }
                    });
                    self.tally.violation(format!(
                        "{name} GET {key}: unexplained {} ({alg}) {}",
                        answer.status,
                        String::from_utf8_lossy(&body)
                    ));
                }
                return;
            }
        };
        match target.versions.check(key, from, to, seen) {
            Ok(()) => {}
            Err(e) => {
                self.tally.violation(format!(
                    "{name}: {e} [X-Cache {:?}]",
                    answer.headers.get("x-cache")
                ));
                return;
            }
        }
        if answer.status == StatusCode::OK
            && kind == Read::Whole
            && let Some(etag) = answer.headers.get(ETAG).and_then(|v| v.to_str().ok())
            && let Some(found) = target.versions.identify(key, from, to, &body)
        {
            target
                .etags
                .lock()
                .unwrap()
                .insert(key.to_owned(), (etag.to_owned(), found));
        }
    }

    /// Requests the rules refuse: reads (plain and conditional), writes and deletes by users
    /// without the right, and tokens signed with a retired secret. None may succeed.
    async fn denied(&self, target: &Target) {
        self.tally.op("denied");
        let key = self.pick_key(target);
        let method = ["GET", "GET", "PUT", "DELETE"][fastrand::usize(0..4)];
        let (user, token) = if fastrand::u8(0..5) == 0 {
            let Some(user) = self
                .allowed_user(method, &key)
                .filter(|u| *u != User::Anonymous)
            else {
                return;
            };
            let Some((token, _)) = self.secrets.retired_token(user) else {
                return;
            };
            (user, Some(token))
        } else {
            let Some(user) = self.denied_user(method, &key) else {
                return;
            };
            (user, self.secrets.token(user))
        };
        let mut request = match method {
            "GET" => target.http.get(url(target, &key)),
            "PUT" => target
                .http
                .put(url(target, &key))
                .body(Bytes::from_static(b"must never be stored")),
            _ => target.http.delete(url(target, &key)),
        };
        if method == "GET"
            && let Some((etag, _)) = target.etags.lock().unwrap().get(&key).cloned()
        {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let request = authorize(request, token.as_ref(), method == "GET");
        let answer = send(request).await;
        match answer {
            Ok(a) if a.status == StatusCode::UNAUTHORIZED || a.status == StatusCode::FORBIDDEN => {
                self.tally.status(a.status);
            }
            Ok(a) => {
                self.tally.status(a.status);
                self.tally.violation(format!(
                    "{} {method} {key} by {user:?} (not allowed{}): {}",
                    target.daemon.name,
                    if token.as_ref().and_then(|t| t.hmac_generation).is_some() {
                        ", HS256"
                    } else {
                        ""
                    },
                    a.status
                ));
            }
            Err(e) => self
                .tally
                .violation(format!("{} denied {method} {key}: {e}", target.daemon.name)),
        }
    }

    /// An upload with a known length (or, `chunked`, without one), by a user allowed to write.
    async fn put(&self, target: &Target, chunked: bool) {
        let key = self.pick_key(target);
        let Some(user) = self.allowed_user("PUT", &key) else {
            return;
        };
        let _permit = if chunked {
            Some(target.chunked.acquire().await.expect("semaphore"))
        } else {
            None
        };
        self.tally.op(if chunked { "put-chunked" } else { "put" });
        let body = new_body(&self.seed);
        let ticket = target.versions.begin(&key, Some(body)).await;
        let token = self.secrets.token(user);
        let bytes = Bytes::from(body.bytes());
        let request = target.http.put(url(target, &key));
        let request = if chunked {
            let pieces: Vec<Result<Bytes, std::io::Error>> = bytes
                .chunks(16 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            request.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            )))
        } else {
            request.body(bytes)
        };
        let from = Instant::now();
        let answer = send(authorize(request, token.as_ref(), false)).await;
        let to = Instant::now();
        let outcome = self.judge_write(target, &key, "PUT", from, to, answer, token.as_ref());
        target.versions.finish(ticket, outcome);
    }

    /// How a write ended, judged: an unexplained failure is a violation (and may have stored).
    #[allow(clippy::too_many_arguments)]
    fn judge_write(
        &self,
        target: &Target,
        key: &str,
        method: &str,
        from: Instant,
        to: Instant,
        answer: Result<Answer, String>,
        token: Option<&Token>,
    ) -> Outcome {
        let name = target.daemon.name;
        match answer {
            Ok(a) if a.status.is_success() => {
                self.tally.status(a.status);
                Outcome::Confirmed
            }
            Ok(a) if a.status.is_client_error() => {
                self.tally.status(a.status);
                if !self.explained(target, key, a.status, from, to, token) {
                    self.tally
                        .violation(format!("{name} {method} {key}: unexplained {}", a.status));
                }
                Outcome::Never
            }
            Ok(a) => {
                self.tally.status(a.status);
                if !self.explained(target, key, a.status, from, to, token) {
                    self.tally
                        .violation(format!("{name} {method} {key}: unexplained {}", a.status));
                }
                Outcome::Maybe
            }
            Err(e) => {
                self.tally.violation(format!("{name} {method} {key}: {e}"));
                Outcome::Maybe
            }
        }
    }

    /// A form upload (multipart/form-data) into the user's own space.
    async fn form_upload(&self, target: &Target) {
        let user = [User::Alice, User::Bob, User::Carol][fastrand::usize(0..3)];
        let _permit = target.chunked.acquire().await.expect("semaphore");
        self.tally.op("form");
        let body = new_body(&self.seed);
        let boundary = format!("soak{:016x}", fastrand::u64(..));
        let mut form = format!(
            "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\
             content-type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        form.extend_from_slice(&body.bytes());
        form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let token = self.secrets.token(user);
        let request = target
            .http
            .post(format!("{}/soak/users/{}/", target.daemon.base, user.sub()))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(form);
        let from = Instant::now();
        let answer = send(authorize(request, token.as_ref(), false)).await;
        let to = Instant::now();
        let name = target.daemon.name;
        match answer {
            Ok(a) if a.status == StatusCode::CREATED => {
                self.tally.status(a.status);
                let made = a
                    .body
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
                let key = made
                    .as_ref()
                    .and_then(|v| v["key"].as_str())
                    .map(str::to_owned);
                match key {
                    Some(key) => {
                        target.versions.record(&key, Some(body), from, to);
                        target.made.lock().unwrap().push(key);
                    }
                    None => self
                        .tally
                        .violation(format!("{name} form upload: 201 without a key: {made:?}")),
                }
            }
            Ok(a) => {
                self.tally.status(a.status);
                let dir = format!("users/{}/", user.sub());
                if !self.explained(target, &dir, a.status, from, to, token.as_ref())
                    && !a.status.is_server_error()
                {
                    let why = a
                        .body
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    self.tally.violation(format!(
                        "{name} form upload: unexplained {} {why}",
                        a.status
                    ));
                }
            }
            Err(e) => self.tally.violation(format!("{name} form upload: {e}")),
        }
    }

    async fn delete(&self, target: &Target) {
        let key = self.pick_key(target);
        let Some(user) = self.allowed_user("DELETE", &key) else {
            return;
        };
        self.tally.op("delete");
        let ticket = target.versions.begin(&key, None).await;
        let token = self.secrets.token(user);
        let request = authorize(target.http.delete(url(target, &key)), token.as_ref(), false);
        let from = Instant::now();
        let answer = send(request).await;
        let to = Instant::now();
        let outcome = self.judge_write(target, &key, "DELETE", from, to, answer, token.as_ref());
        target.versions.finish(ticket, outcome);
    }

    /// A `/_sign` batch over keys the user may and may not read; the URLs are read at once, and
    /// one is tried on another key.
    async fn sign(&self, target: &Target) {
        self.tally.op("sign");
        let user = [User::Alice, User::Bob, User::Carol, User::Root][fastrand::usize(0..4)];
        let keys: Vec<String> = (0..6).map(|_| self.pick_key(target)).collect();
        let token = self.secrets.token(user);
        let request = target
            .http
            .post(format!("{}/_sign", target.daemon.base))
            .json(&serde_json::json!({ "bucket": "soak", "keys": keys, "kind": "proxy", "method": "GET" }));
        let minted_from = Instant::now();
        let answer = send(authorize(request, token.as_ref(), false)).await;
        let minted_to = Instant::now();
        let name = target.daemon.name;
        let answer = match answer {
            Ok(a) if a.status == StatusCode::OK => a,
            Ok(a) => {
                self.tally.status(a.status);
                if !self.explained(target, "", a.status, minted_from, minted_to, token.as_ref()) {
                    self.tally
                        .violation(format!("{name} /_sign: unexplained {}", a.status));
                }
                return;
            }
            Err(e) => {
                self.tally.violation(format!("{name} /_sign: {e}"));
                return;
            }
        };
        self.tally.status(answer.status);
        let doc: serde_json::Value = answer
            .body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let items = doc["items"].as_array().cloned().unwrap_or_default();
        if items.len() != keys.len() {
            self.tally.violation(format!(
                "{name} /_sign: {} items for {} keys",
                items.len(),
                keys.len()
            ));
            return;
        }
        let (lowest, _) = self.secrets.signing_generation(minted_from);
        let (_, highest) = self.secrets.signing_generation(minted_to);
        let mut urls = Vec::new();
        for (key, item) in keys.iter().zip(&items) {
            let url = item["url"].as_str();
            match (user.may("GET", key), url) {
                (true, Some(url)) => urls.push((key.clone(), url.to_owned())),
                (true, None) => self
                    .tally
                    .violation(format!("{name} /_sign {key} for {user:?}: {item}")),
                (false, Some(_)) => self.tally.violation(format!(
                    "{name} /_sign {key} for {user:?}: signed though not allowed"
                )),
                (false, None) => {}
            }
        }
        for (key, signed) in &urls {
            self.signed_read(target, key, signed, (lowest, highest))
                .await;
        }
        {
            let mut kept = target.signed.lock().unwrap();
            kept.extend(
                urls.iter()
                    .map(|(k, u)| (k.clone(), u.clone(), lowest, highest)),
            );
            let excess = kept.len().saturating_sub(500);
            kept.drain(..excess);
        }
        // The signature of one key does not open another.
        if let Some((key, signed)) = urls.first() {
            let other = self.pick_key(target);
            if other != *key && !urls.iter().any(|(k, _)| *k == other) {
                let forged =
                    signed.replacen(&format!("/soak/{key}?"), &format!("/soak/{other}?"), 1);
                self.tally.op("forged");
                match send(target.http.get(&forged)).await {
                    Ok(a)
                        if a.status == StatusCode::FORBIDDEN
                            || a.status == StatusCode::UNAUTHORIZED =>
                    {
                        self.tally.status(a.status)
                    }
                    Ok(a) => {
                        self.tally.status(a.status);
                        self.tally.violation(format!(
                            "{name} signed URL of {key} used for {other}: {}",
                            a.status
                        ));
                    }
                    Err(e) => self
                        .tally
                        .violation(format!("{name} forged signed URL: {e}")),
                }
            }
        }
    }

    /// Reads a proxy-signed URL minted under signing generation `minted` or later: it must
    /// work while that secret is one of the two configured, and stop once it is retired.
    async fn signed_read(&self, target: &Target, key: &str, signed: &str, minted: (u64, u64)) {
        self.tally.op("signed-read");
        let from = Instant::now();
        let answer = send(target.http.get(signed)).await;
        let to = Instant::now();
        let (retired_by, _) = self.secrets.signing_generation(from);
        let (_, newest) = self.secrets.signing_generation(to);
        let name = target.daemon.name;
        if let Ok(a) = &answer
            && (a.status == StatusCode::FORBIDDEN || a.status == StatusCode::UNAUTHORIZED)
        {
            self.tally.status(a.status);
            if minted.0 + 1 >= newest {
                self.tally.violation(format!(
                    "{name} signed URL of {key} refused while its secret is configured: {}",
                    a.status
                ));
            }
            return;
        }
        // Two rotations after the newest secret it can have been signed with, it is dead.
        if minted.1 + 1 < retired_by {
            self.tally.violation(format!(
                "{name} signed URL of {key} accepted after its secret was retired: {:?}",
                answer.as_ref().map(|a| a.status)
            ));
            return;
        }
        self.judge_read(target, key, from, to, answer, Read::Whole, None, None, None);
    }

    /// A signed URL handed out earlier, read again (rotations may have retired its secret).
    async fn signed_again(&self, target: &Target) {
        let kept = {
            let kept = target.signed.lock().unwrap();
            (!kept.is_empty()).then(|| kept[fastrand::usize(..kept.len())].clone())
        };
        if let Some((key, signed, lowest, highest)) = kept {
            self.signed_read(target, &key, &signed, (lowest, highest))
                .await;
        }
    }

    /// A client that reads part of an answer and goes away.
    async fn vanish_reading(&self, target: &Target) {
        self.tally.op("vanish-read");
        let key = self.pick_key(target);
        let Some(user) = self.allowed_user("GET", &key) else {
            return;
        };
        let token = self.secrets.token(user);
        let request = authorize(target.http.get(url(target, &key)), token.as_ref(), false);
        let read_some = async {
            let response = request.send().await.ok()?;
            let mut stream = response.bytes_stream();
            let _ = stream.next().await;
            Some(())
        };
        let _ = tokio::time::timeout(CLIENT_TIMEOUT, read_some).await;
    }

    /// A client that stops in the middle of its upload: nothing of it may ever be stored.
    async fn vanish_uploading(&self, target: &Target) {
        let key = self.pick_key(target);
        let Some(user) = self.allowed_user("PUT", &key) else {
            return;
        };
        self.tally.op("vanish-upload");
        let mut body = new_body(&self.seed);
        body.len = body.len.max(64 * 1024);
        let ticket = target.versions.begin(&key, Some(body)).await;
        let token = self.secrets.token(user);
        let bytes = Bytes::from(body.bytes());
        let half = bytes.len() / 2;
        let pieces: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(bytes.slice(..half / 2)),
            Ok(bytes.slice(half / 2..half)),
            Err(std::io::Error::other("client went away")),
        ];
        let mut request = target
            .http
            .put(url(target, &key))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            )));
        if fastrand::bool() {
            request = request.header(CONTENT_LENGTH, body.len);
        }
        let answer = send(authorize(request, token.as_ref(), false)).await;
        if let Ok(a) = &answer
            && a.status.is_success()
        {
            self.tally.violation(format!(
                "{} PUT {key}: {} for an upload cut off halfway",
                target.daemon.name, a.status
            ));
        }
        target.versions.finish(ticket, Outcome::Never);
    }
}

/// An error with its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn header_number(
    headers: &reqwest::header::HeaderMap,
    name: reqwest::header::HeaderName,
) -> Option<usize> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

/// `bytes START-END/TOTAL`
fn content_range(headers: &reqwest::header::HeaderMap) -> Option<(usize, usize, usize)> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?, total.parse().ok()?))
}

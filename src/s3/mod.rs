//! The S3 client: builds each upstream request from an allow-list (nothing from the client's
//! request is forwarded), signs it with SigV4, and applies timeouts and retries.

pub mod credentials;
pub mod sigv4;
mod write;
mod xml;

pub use write::{PutOptions, UploadedPart};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use reqwest::Url;

use crate::config::{Addressing, Config, S3Config, Validator};
use crate::metrics::Metrics;
use crate::policy::{Permit, Read};
use crate::route::ByteRange;
use crate::server::{BoxError, ByteStream};
use credentials::Keyring;
use sigv4::{Payload, SignError, Signer};

/// An object's address in S3: the store, the real bucket and the full key (bucket prefix
/// included).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Object {
    /// The store's id (`s3`, `stores.NAME`).
    pub store: Arc<str>,
    /// S3 bucket name.
    pub bucket: Arc<str>,
    /// Full key inside the bucket.
    pub key: Arc<str>,
}

/// Why an S3 call failed. Never shown to clients as is: `error.rs` turns it into a status and a
/// fixed message.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// No response (or no next body chunk) within `s3.timeout`.
    #[error("S3 did not answer within the timeout")]
    Timeout,
    /// Connecting or talking to S3 failed.
    #[error("S3 unreachable: {0}")]
    Unreachable(String),
    /// S3 says the bucket is in another region than the store's `region` (AWS answers such
    /// requests 301 or 400, naming the bucket's region in `x-amz-bucket-region`).
    #[error(
        "S3 answered {status}: the bucket is in region {actual}, not {configured}; set the \
         store's region (and endpoint) to {actual}"
    )]
    WrongRegion {
        /// HTTP status from S3.
        status: StatusCode,
        /// The region the bucket is in.
        actual: String,
        /// The store's configured region.
        configured: String,
    },
    /// S3 answered, but not in a form s3warden can serve.
    #[error("S3's answer could not be used: {0}")]
    Malformed(String),
    /// S3 answered with an error status.
    #[error("S3 answered {status} {}", code.as_deref().unwrap_or("(no code)"))]
    Status {
        /// HTTP status from S3.
        status: StatusCode,
        /// S3's error code (`NoSuchKey`, `AccessDenied`, ...), when it sent one.
        code: Option<String>,
    },
    /// The request could not be signed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// No usable credentials: the default chain has given none yet, or they expired and could
    /// not be refreshed.
    #[error("{0}")]
    NoCredentials(String),
    /// S3 refused the request's time: this machine's clock is off.
    #[error(
        "S3 refused the request time ({code}): this machine's clock is {} S3's; fix the \
         clock (NTP)",
        describe_skew(*skew_secs)
    )]
    ClockSkew {
        /// S3's error code (`RequestTimeTooSkewed`, `RequestExpired`).
        code: String,
        /// Local time minus S3's, in seconds, when S3 said what time it was.
        skew_secs: Option<i64>,
    },
}

/// Error codes that mean S3 does not accept the time a request was signed at.
const CLOCK_ERRORS: [&str; 2] = ["RequestTimeTooSkewed", "RequestExpired"];

/// Error codes with which S3 refuses a request sent to, or signed for, the wrong region.
const REGION_ERRORS: [&str; 3] = [
    "PermanentRedirect",
    "TemporaryRedirect",
    "AuthorizationHeaderMalformed",
];

/// A request body that can be sent again: none, or bytes held in memory, hashed into the
/// signature or sent as `UNSIGNED-PAYLOAD` (parts).
#[derive(Debug, Clone, Copy)]
enum Held<'a> {
    Empty,
    Hashed(&'a bytes::Bytes),
    Unhashed(&'a bytes::Bytes),
}

impl<'a> Held<'a> {
    fn payload(&self) -> Payload<'a> {
        match *self {
            Held::Empty => Payload::Bytes(b""),
            Held::Hashed(bytes) => Payload::Bytes(bytes),
            Held::Unhashed(_) => Payload::Unsigned,
        }
    }

    fn body(&self) -> Option<reqwest::Body> {
        match *self {
            Held::Empty => None,
            Held::Hashed(bytes) | Held::Unhashed(bytes) => Some(reqwest::Body::from(bytes.clone())),
        }
    }
}

/// The key the readiness probe asks for under each bucket alias's prefix; it need not exist.
pub const PROBE_KEY: &str = ".s3warden-probe";

/// S3 refuses requests signed more than 15 minutes away from its own time.
const MAX_SKEW_SECS: i64 = 15 * 60;

fn describe_skew(skew_secs: Option<i64>) -> String {
    match skew_secs {
        Some(s) if s >= 0 => format!("{s} s ahead of"),
        Some(s) => format!("{} s behind", -s),
        None => "out of step with".to_owned(),
    }
}

impl S3Error {
    /// True for failures worth retrying on an idempotent request.
    fn retryable(&self) -> bool {
        match self {
            S3Error::Unreachable(_) => true,
            // 501 is a refusal for good (R2 answers an ACL it does not take so).
            S3Error::Status { status, .. } => {
                (status.is_server_error()
                    && !matches!(
                        *status,
                        StatusCode::NOT_IMPLEMENTED | StatusCode::HTTP_VERSION_NOT_SUPPORTED
                    ))
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            S3Error::Timeout
            | S3Error::Malformed(_)
            | S3Error::WrongRegion { .. }
            | S3Error::Sign(_)
            | S3Error::ClockSkew { .. }
            | S3Error::NoCredentials(_) => false,
        }
    }

    /// S3's error code, when an answer named one.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The error without what differs between two occurrences of the same failure (how far
    /// the clock is off, which S3 measures to the second): the same failure twice has one kind.
    pub fn kind(&self) -> String {
        match self {
            S3Error::ClockSkew { code, .. } => format!("clock refused ({code})"),
            other => other.to_string(),
        }
    }

    /// True when S3 says the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, S3Error::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// True when S3 says the object is archived (an S3 Glacier storage class, or an archive tier
    /// of Intelligent-Tiering) and must be restored before it can be read.
    pub fn is_archived(&self) -> bool {
        matches!(self, S3Error::Status { code: Some(code), .. } if ARCHIVED_ERRORS.contains(&code.as_str()))
    }
}

/// Error codes with which S3 refuses to read an archived object that has not been restored.
const ARCHIVED_ERRORS: [&str; 2] = ["InvalidObjectState", "ObjectNotInActiveTierError"];

/// What s3warden keeps of an object's metadata: the headers it may pass on, already validated.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    /// Total object size in bytes; `None` when S3 did not say (a whole object sent without
    /// `Content-Length`, as some stores send objects they decompress on the way out).
    pub size: Option<u64>,
    /// `ETag` as S3 sent it (quoted).
    pub etag: Option<HeaderValue>,
    /// `Last-Modified`.
    pub last_modified: Option<SystemTime>,
    /// `Last-Modified` as S3 sent it.
    pub last_modified_header: Option<HeaderValue>,
    /// `Content-Type` to serve: as stored in S3, or guessed from the key.
    pub content_type: HeaderValue,
    /// The type is on the passive list: shown inline. Anything else goes out as a sandboxed
    /// attachment.
    pub passive: bool,
    /// `Content-Encoding`, `Content-Language`, `Content-Disposition` as stored.
    pub passthrough: Vec<(HeaderName, HeaderValue)>,
}

impl ObjectMeta {
    /// The ETag as text.
    pub fn etag_str(&self) -> Option<&str> {
        self.etag.as_ref().and_then(|v| v.to_str().ok())
    }
}

/// How S3 answered a GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200: the whole object.
    Whole,
    /// 206: bytes `first..=last` of the object.
    Partial {
        /// First byte.
        first: u64,
        /// Last byte (inclusive).
        last: u64,
    },
    /// 304: the object still has the ETag we asked about.
    NotModified,
}

/// A GET's response: status, metadata and the body still to be read.
pub struct Fetched {
    /// What kind of answer.
    pub answer: Answer,
    /// The object's metadata.
    pub meta: ObjectMeta,
    /// Body bytes to expect, when S3 said.
    pub body_len: Option<u64>,
    /// The body; each chunk must arrive within `s3.timeout`.
    pub body: ByteStream,
}

/// Options of a GET.
#[derive(Debug, Default, Clone)]
pub struct GetOptions {
    /// Ask for this range only.
    pub range: Option<ByteRange>,
    /// Answer 304 if the object still has this ETag.
    pub if_none_match: Option<HeaderValue>,
}

/// Builds object and bucket URLs, path-style or virtual-hosted.
#[derive(Debug, Clone)]
pub struct Addresser {
    endpoint: Url,
    addressing: Addressing,
}

impl Addresser {
    /// From a validated store's settings.
    pub fn new(store: &S3Config) -> Addresser {
        let endpoint = store.endpoint.as_deref().unwrap_or_default();
        Addresser {
            endpoint: Url::parse(endpoint).expect("validated endpoint"),
            addressing: store.addressing,
        }
    }

    /// The URL of an object.
    pub fn object_url(&self, object: &S3Object) -> Url {
        let key = crate::route::encode_path(&object.key);
        let (mut url, style) = self.base(&object.bucket);
        match style {
            Style::Path => url.set_path(&format!("/{}/{key}", object.bucket)),
            Style::Virtual => url.set_path(&format!("/{key}")),
        }
        url
    }

    /// The URL of a bucket.
    pub fn bucket_url(&self, bucket: &str) -> Url {
        self.base(bucket).0
    }

    /// The bucket's URL and how it was addressed. Virtual-hosted only where that works, and
    /// with `auto` only on AWS: other stores answer path-style everywhere,
    /// while `{bucket}.{host}` needs their wildcard DNS and a setting of their own (MinIO's
    /// `MINIO_DOMAIN`, Garage's `root_domain`, Ceph's `rgw_dns_name`). A host name that cannot
    /// be built falls back to path-style rather than failing.
    fn base(&self, bucket: &str) -> (Url, Style) {
        let mut url = self.endpoint.clone();
        let virtual_works = || virtual_host_works(&self.endpoint, bucket).is_ok();
        let wanted = match self.addressing {
            Addressing::Path => Style::Path,
            Addressing::Auto if !is_aws_host(self.endpoint.host_str().unwrap_or_default()) => {
                Style::Path
            }
            Addressing::Virtual | Addressing::Auto if virtual_works() => Style::Virtual,
            Addressing::Virtual | Addressing::Auto => Style::Path,
        };
        if wanted == Style::Virtual {
            let host = format!("{bucket}.{}", url.host_str().unwrap_or_default());
            if url.set_host(Some(&host)).is_ok() {
                return (url, Style::Virtual);
            }
        }
        url.set_path(&format!("/{bucket}"));
        (url, Style::Path)
    }
}

/// How one bucket is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Path,
    Virtual,
}

/// An AWS S3 endpoint (`s3.REGION.amazonaws.com`, China's `amazonaws.com.cn`, FIPS, dual-stack
/// and PrivateLink names), where virtual-hosted URLs always work.
fn is_aws_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")
}

/// Whether `{bucket}.{endpoint host}` can reach the bucket; why not, when it cannot.
fn virtual_host_works(endpoint: &Url, bucket: &str) -> Result<(), &'static str> {
    let host = endpoint.host_str().unwrap_or_default();
    if host.eq_ignore_ascii_case("localhost") {
        return Err("the endpoint is localhost");
    }
    let unbracketed = host.trim_start_matches('[').trim_end_matches(']');
    if unbracketed.parse::<std::net::IpAddr>().is_ok() {
        return Err("the endpoint is an IP address");
    }
    if !is_dns_name(bucket) {
        return Err("the bucket name is not a DNS name");
    }
    if bucket.contains('.') && endpoint.scheme() == "https" {
        return Err("a bucket name with dots cannot match the endpoint's TLS certificate");
    }
    Ok(())
}

/// A bucket name that can be a DNS label sequence: lowercase letters, digits and hyphens in
/// labels joined by single dots, no label starting or ending in a hyphen, and not an IP address.
fn is_dns_name(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket.parse::<std::net::Ipv4Addr>().is_err()
        && bucket.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// What the S3 client needs of the stores and the buckets: `addressing = "virtual"` only where
/// virtual-hosted URLs can reach every bucket of the store.
pub(crate) fn check(config: &Config, v: &mut Validator) {
    for (alias, bucket) in &config.buckets {
        let id = Config::store_of(bucket);
        let Some(store) = config.store(&id) else {
            continue;
        };
        let Some(endpoint) = store.endpoint.as_deref().and_then(|e| Url::parse(e).ok()) else {
            continue;
        };
        if store.addressing != Addressing::Virtual {
            continue;
        }
        if let Err(why) = virtual_host_works(&endpoint, &bucket.bucket) {
            v.problem(
                format!("{id}.addressing"),
                format!(
                    "\"virtual\" cannot reach bucket {:?} (buckets.{alias}): {why}; use \"auto\" \
                     or \"path\"",
                    bucket.bucket
                ),
            );
        }
    }
}

/// One store's way in: where it is, how its buckets are addressed and the keys requests are
/// signed with.
#[derive(Clone)]
pub struct Store {
    /// Builds its object and bucket URLs.
    pub addresser: Addresser,
    /// Signs for its region.
    pub signer: Signer,
    /// Its credentials.
    pub keyring: Keyring,
}

/// Every store of a config by id; built once per config and shared by the S3 client and the
/// URL signer.
#[derive(Clone, Default)]
pub struct Stores(Arc<HashMap<Arc<str>, Store>>);

impl Stores {
    /// The stores of a loaded config (whose secrets include S3 credentials). A store on the
    /// default chain keeps `previous`'s keyring (and its refresh task) when its settings did not
    /// change.
    pub async fn new(config: &Config, previous: Option<&Stores>) -> Stores {
        let mut stores = HashMap::new();
        for (id, settings) in config.stores() {
            let Some(source) = config.secrets.aws.get(&id) else {
                continue;
            };
            let region = settings.region.as_deref().unwrap_or_default();
            let old = previous.and_then(|p| p.get(&id)).map(|s| &s.keyring);
            let keyring = Keyring::new(&id, source, region, old).await;
            match keyring.describe() {
                Ok(source) => tracing::info!(store = %id, credentials = %source, "S3 store"),
                Err(why) => tracing::warn!(store = %id, "{why}"),
            }
            let store = Store {
                addresser: Addresser::new(settings),
                signer: Signer::new(region),
                keyring,
            };
            stores.insert(Arc::from(id), store);
        }
        Stores(Arc::new(stores))
    }

    /// A store by id.
    pub fn get(&self, id: &str) -> Option<&Store> {
        self.0.get(id)
    }

    /// Every store, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Store)> {
        self.0.iter()
    }
}

/// The S3 client, shared by all requests: one upstream per store.
pub struct S3Client {
    upstreams: HashMap<Arc<str>, Upstream>,
}

/// The client of one store.
struct Upstream {
    http: reqwest::Client,
    store: Store,
    timeout: Duration,
    retries: u32,
    metrics: Arc<Metrics>,
}

impl S3Client {
    /// Builds the client for a validated config's `stores`.
    pub fn new(
        config: &Config,
        stores: &Stores,
        metrics: Arc<Metrics>,
    ) -> Result<S3Client, reqwest::Error> {
        let mut upstreams = HashMap::new();
        for (id, store) in stores.iter() {
            let Some(settings) = config.store(id) else {
                continue;
            };
            let http = reqwest::Client::builder()
                .connect_timeout(settings.connect_timeout)
                .pool_idle_timeout(Duration::from_secs(50))
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()?;
            let upstream = Upstream {
                http,
                store: store.clone(),
                timeout: settings.timeout,
                retries: settings.retries,
                metrics: metrics.clone(),
            };
            upstreams.insert(id.clone(), upstream);
        }
        Ok(S3Client { upstreams })
    }

    fn upstream(&self, object: &S3Object) -> Result<&Upstream, S3Error> {
        self.upstreams
            .get(&object.store)
            .ok_or_else(|| S3Error::Unreachable(format!("no store {}", object.store)))
    }

    /// The URL of an object, path-style or virtual-hosted as its store is configured.
    pub fn object_url(&self, object: &S3Object) -> Option<Url> {
        Some(self.upstream(object).ok()?.object_url(object))
    }

    /// GET an object the permit allows reading.
    pub async fn get(
        &self,
        permit: &Permit<Read>,
        options: &GetOptions,
    ) -> Result<Fetched, S3Error> {
        let object = permit.object();
        let mut headers = HeaderMap::new();
        if let Some(range) = options.range {
            let value = HeaderValue::from_str(&range.header_value()).expect("digits only");
            headers.insert(header::RANGE, value);
        }
        if let Some(etag) = &options.if_none_match {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        let up = self.upstream(object)?;
        let response = up
            .send_idempotent(Method::GET, up.object_url(object), headers)
            .await?;
        let status = response.status();
        let meta = meta_from(response.headers(), &object.key);
        let answer = match status {
            // S3's 304 names no type: `meta` then has the one the key suggests.
            StatusCode::NOT_MODIFIED => Answer::NotModified,
            StatusCode::PARTIAL_CONTENT => {
                let (first, last, total) = response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| parse_content_range(v.to_str().ok()?))
                    .ok_or_else(|| S3Error::Malformed("206 without Content-Range".into()))?;
                let meta = ObjectMeta {
                    size: Some(total),
                    ..meta
                };
                let body = up.timed_body(response);
                return Ok(Fetched {
                    answer: Answer::Partial { first, last },
                    meta,
                    body_len: Some(last - first + 1),
                    body,
                });
            }
            _ => Answer::Whole,
        };
        let body = up.timed_body(response);
        let body_len = if answer == Answer::NotModified {
            Some(0)
        } else {
            meta.size
        };
        Ok(Fetched {
            answer,
            meta,
            body_len,
            body,
        })
    }

    /// HEAD an object the permit allows reading.
    pub async fn head(&self, permit: &Permit<Read>) -> Result<ObjectMeta, S3Error> {
        let up = self.upstream(permit.object())?;
        let url = up.object_url(permit.object());
        let response = up
            .send_idempotent(Method::HEAD, url, HeaderMap::new())
            .await?;
        Ok(meta_from(response.headers(), &permit.object().key))
    }

    /// Checks that a store takes the credentials, region and clock s3warden signs with, and
    /// holds the bucket: a GET of its first byte of [`PROBE_KEY`] under `prefix`, the access
    /// reads need (a bucket HEAD needs `s3:ListBucket`, or on GCS `storage.buckets.get`, which
    /// credentials for objects alone lack), answered with an error code S3 names.
    pub async fn probe_bucket(
        &self,
        store: &str,
        bucket: &str,
        prefix: &str,
    ) -> Result<(), S3Error> {
        let up = (self.upstreams.get(store))
            .ok_or_else(|| S3Error::Unreachable(format!("no store {store}")))?;
        let object = S3Object {
            store: store.into(),
            bucket: bucket.into(),
            key: format!("{prefix}{PROBE_KEY}").into(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
        match (up.send_idempotent(Method::GET, up.object_url(&object), headers)).await {
            Ok(_) => Ok(()),
            // The key is absent, and S3 says so (NoSuchKey), or refuses to say to credentials
            // that may not list the bucket (AWS's AccessDenied): it took the request, so the
            // keys, region and clock are right. AccessDenied is also what credentials that may
            // not read the prefix get, and a bucket of another account: reads show those.
            // An empty object cannot be ranged.
            Err(S3Error::Status {
                status,
                code: Some(code),
            }) if matches!(
                (status.as_u16(), code.as_str()),
                (404, "NoSuchKey") | (403, "AccessDenied") | (416, "InvalidRange")
            ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Upstream {
    fn object_url(&self, object: &S3Object) -> Url {
        self.store.addresser.object_url(object)
    }

    /// Sends a signed GET/HEAD, retrying connection failures and 5xx answers while the
    /// `s3.timeout` budget for the first byte lasts.
    async fn send_idempotent(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, S3Error> {
        let deadline = Instant::now() + self.timeout;
        let name = if method == Method::HEAD {
            "HEAD"
        } else {
            "GET"
        };
        let observe = |took, result: &_| self.metrics.observe_s3(name, took, result);
        (self.send_retrying(method, url, headers, Held::Empty, Some(deadline), observe)).await
    }

    /// Sends a write whose body is held in memory (or empty), retrying connection failures, 5xx
    /// and 429 answers up to `s3.retries` times: S3 asks for that (`SlowDown`, `InternalError`),
    /// and some stores answer 503 to a share of writes by design (Backblaze B2).
    async fn send_write(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        held: Held<'_>,
    ) -> Result<reqwest::Response, S3Error> {
        self.send_retrying(method, url, headers, held, None, |_, _| {})
            .await
    }

    /// Sends one request until it succeeds, fails for good, or runs out of retries (or of
    /// `deadline`, when one is set); `observe` sees every attempt.
    async fn send_retrying(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        held: Held<'_>,
        deadline: Option<Instant>,
        observe: impl Fn(Duration, &Result<reqwest::Response, S3Error>),
    ) -> Result<reqwest::Response, S3Error> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let request = self.send(
                method.clone(),
                url.clone(),
                headers.clone(),
                held.payload(),
                held.body(),
            );
            let result = match deadline {
                Some(deadline) => (tokio::time::timeout_at(deadline.into(), request).await)
                    .unwrap_or(Err(S3Error::Timeout)),
                None => request.await,
            };
            observe(started.elapsed(), &result);
            match result {
                Err(e) if e.retryable() && attempt < self.retries => {
                    attempt += 1;
                    let pause = backoff(attempt);
                    if deadline.is_some_and(|deadline| Instant::now() + pause >= deadline) {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, attempt, %method, "retrying S3 request");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// Signs and sends one request; error statuses become `S3Error::Status`.
    async fn send(
        &self,
        method: Method,
        url: Url,
        mut headers: HeaderMap,
        payload: Payload<'_>,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, S3Error> {
        let now = SystemTime::now();
        let keys = (self.store.keyring.current(now)).map_err(S3Error::NoCredentials)?;
        (self.store.signer).sign_headers(&keys, &method, &url, &mut headers, payload, now)?;
        let mut request = self.http.request(method.clone(), url).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                S3Error::Timeout
            } else {
                S3Error::Unreachable(error_chain(e))
            }
        })?;
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        let header_region = response
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let server_date = response
            .headers()
            .get(header::DATE)
            .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
        let answer = if method == Method::HEAD {
            xml::Answer::default()
        } else {
            error_body(response, self.timeout).await
        };
        // The bucket's region, in a header (301 PermanentRedirect) or the error (400
        // AuthorizationHeaderMalformed).
        let region = (header_region.or(answer.region.clone()))
            .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        // A redirect is about the region whatever its body; a 400 only when its code says so,
        // or when it has no body to say it (a HEAD) and names a region, as AWS answers a HEAD
        // signed for the wrong one.
        let about_region = match (status, answer.code.as_deref()) {
            (StatusCode::MOVED_PERMANENTLY | StatusCode::TEMPORARY_REDIRECT, code) => {
                code.is_none_or(|c| REGION_ERRORS.contains(&c))
            }
            (StatusCode::BAD_REQUEST, Some(code)) => REGION_ERRORS.contains(&code),
            (StatusCode::BAD_REQUEST, None) => method == Method::HEAD,
            _ => false,
        };
        if let Some(actual) = region
            && about_region
            && actual != self.store.signer.region()
        {
            return Err(S3Error::WrongRegion {
                status,
                actual,
                configured: self.store.signer.region().to_owned(),
            });
        }
        // S3's own time: the error's ServerTime, else its Date header.
        let server_time = answer
            .server_time
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
            .or(server_date);
        let skew_secs = server_time.map(|t| skew(SystemTime::now(), t));
        let clock_code = match answer.code.as_deref() {
            Some(code) if CLOCK_ERRORS.contains(&code) => Some(code.to_owned()),
            // A HEAD's 403 has no body: a Date this far off tells the same story.
            None if status == StatusCode::FORBIDDEN
                && skew_secs.is_some_and(|s| s.abs() > MAX_SKEW_SECS) =>
            {
                Some("RequestTimeTooSkewed".to_owned())
            }
            _ => None,
        };
        if let Some(code) = clock_code {
            return Err(S3Error::ClockSkew { code, skew_secs });
        }
        let code = answer
            .code
            .filter(|c| c.bytes().all(|b| b.is_ascii_alphanumeric()));
        Err(S3Error::Status { status, code })
    }

    /// The response body as a stream in which every chunk must arrive within `s3.timeout`.
    fn timed_body(&self, response: reqwest::Response) -> ByteStream {
        let timeout = self.timeout;
        let metrics = self.metrics.clone();
        let chunks = response.bytes_stream();
        Box::pin(futures_util::stream::unfold(Some(chunks), move |state| {
            let metrics = metrics.clone();
            async move {
                let mut chunks = state?;
                match tokio::time::timeout(timeout, chunks.next()).await {
                    Ok(Some(Ok(bytes))) => {
                        metrics.s3_body_bytes(bytes.len());
                        Some((Ok(bytes), Some(chunks)))
                    }
                    Ok(Some(Err(e))) => Some((Err(BoxError::from(error_chain(e))), None)),
                    Ok(None) => None,
                    Err(_) => Some((Err(BoxError::from("S3 body chunk timed out")), None)),
                }
            }
        }))
    }
}

/// The first retry waits up to this long; each further one up to twice as long as the last.
const BACKOFF_BASE: Duration = Duration::from_millis(50);

/// The most any one retry waits.
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The pause before retry `attempt` (1-based): "full jitter", a random time between zero and
/// an exponentially growing ceiling, so the retries of many requests that failed together
/// spread out instead of arriving at S3 together again.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    let random = getrandom::u64().unwrap_or(u64::MAX / 2);
    ceiling.mul_f64(random as f64 / u64::MAX as f64)
}

/// An S3 XML error body (at most 8 KiB of it, read within the timeout).
async fn error_body(response: reqwest::Response, timeout: Duration) -> xml::Answer {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    let read = async {
        while let Some(Ok(chunk)) = chunks.next().await {
            body.extend_from_slice(&chunk);
            if body.len() > 8192 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
    xml::answer(&String::from_utf8_lossy(&body))
}

/// `Content-Length`, when the answer has a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// `local - server` in whole seconds.
fn skew(local: SystemTime, server: SystemTime) -> i64 {
    match local.duration_since(server) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(behind) => -(behind.duration().as_secs() as i64),
    }
}

/// Metadata from S3's response headers; only allow-listed headers are kept.
fn meta_from(headers: &HeaderMap, key: &str) -> ObjectMeta {
    let (content_type, passive) =
        crate::response::resolve_type(headers.get_all(header::CONTENT_TYPE).iter(), key);
    let size = content_length(headers);
    let last_modified_header = headers
        .get(header::LAST_MODIFIED)
        .filter(|v| {
            v.to_str()
                .is_ok_and(|s| httpdate::parse_http_date(s).is_ok())
        })
        .cloned();
    let last_modified = last_modified_header
        .as_ref()
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
    let passthrough = [
        header::CONTENT_ENCODING,
        header::CONTENT_LANGUAGE,
        header::CONTENT_DISPOSITION,
    ]
    .into_iter()
    .filter_map(|name| {
        let value = headers.get(&name)?;
        let value = if name == header::CONTENT_ENCODING {
            content_codings(value)?
        } else {
            detached(value)
        };
        Some((name, value))
    })
    .collect();
    ObjectMeta {
        size,
        etag: entity_tag(headers),
        last_modified,
        last_modified_header: last_modified_header.as_ref().map(detached),
        content_type: detached(&content_type),
        passive,
        passthrough,
    }
}

/// A copy of a response header value in an allocation of its own. hyper parses a response's
/// values as slices of its connection's read buffer, which grows to hundreds of KiB on large
/// bodies: a value kept after the response (in a cache entry, beside an upload's parts) would
/// keep that whole buffer alive with it, beyond what the cache's capacity counts.
fn detached(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// The response's `ETag`, quoted as HTTP has it: a few stores send the bare hex, which no
/// client's `If-None-Match` or `If-Range` would then match.
pub(crate) fn entity_tag(headers: &HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(header::ETAG)?;
    let text = value.to_str().ok()?.trim();
    if text.starts_with('"') || text.starts_with("W/\"") {
        return Some(detached(value));
    }
    if text.is_empty() || text.contains('"') {
        return None;
    }
    HeaderValue::from_str(&format!("\"{text}\"")).ok()
}

/// A stored `Content-Encoding` without what describes how the object was uploaded rather than
/// how it is stored: `aws-chunked` (the SDKs' streaming uploads; several stores keep it, and
/// S3 keeps an empty value where it was the only coding), `identity` and empty entries. `None`
/// when nothing is left: a client given `aws-chunked` fails to decode the object.
fn content_codings(value: &HeaderValue) -> Option<HeaderValue> {
    let codings: Vec<&str> = (value.to_str().ok()?.split(','))
        .map(str::trim)
        .filter(|c| {
            !(c.is_empty()
                || c.eq_ignore_ascii_case("aws-chunked")
                || c.eq_ignore_ascii_case("identity"))
        })
        .collect();
    if codings.is_empty() {
        return None;
    }
    HeaderValue::from_str(&codings.join(", ")).ok()
}

/// `bytes first-last/total` → (first, last, total).
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, total) = (first.parse().ok()?, last.parse().ok()?, total.parse().ok()?);
    (first <= last && last < total).then_some((first, last, total))
}

/// An error with its sources, for logs (reqwest's top-level message alone says little).
/// URLs are stripped: they name the endpoint and, for pre-signed ones, carry signatures.
pub(crate) fn error_chain(e: reqwest::Error) -> String {
    credentials::error_text(&e.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Environment;

    fn client(addressing: &str, endpoint: &str) -> Addresser {
        let text = format!(
            "[s3]\nendpoint = \"{endpoint}\"\nregion = \"eu-west-1\"\naddressing = \"{addressing}\"\n\
             [buckets.a]\nbucket = \"my-bucket\"\n[[rules]]\nbucket = \"a\"\nallow = \"public\"\n"
        );
        let env =
            Environment::from_pairs([("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
        let config =
            Config::from_toml(&text, std::path::Path::new("."), &env, &crate::check_config)
                .unwrap();
        Addresser::new(&config.s3)
    }

    #[test]
    fn entity_tags_are_quoted_as_http_has_them() {
        let tag = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ETAG, HeaderValue::from_static(value));
            entity_tag(&headers).map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(tag("\"abc\"").as_deref(), Some("\"abc\""));
        assert_eq!(tag("W/\"abc\"").as_deref(), Some("W/\"abc\""));
        assert_eq!(tag("abc-2").as_deref(), Some("\"abc-2\""));
        assert_eq!(tag(" abc ").as_deref(), Some("\"abc\""));
        assert_eq!(tag(""), None);
        assert_eq!(tag("ab\"c"), None);
    }

    #[test]
    fn kept_metadata_holds_none_of_the_response_buffer() {
        // hyper's header values are slices of the connection's read buffer.
        let text = "\"abc\"|image/png|Wed, 21 Oct 2015 07:28:00 GMT|inline|en";
        let mut raw = text.as_bytes().to_vec();
        raw.resize(256 * 1024, b' ');
        let buffer = bytes::Bytes::from(raw);
        let mut headers = HeaderMap::new();
        let names = [
            header::ETAG,
            header::CONTENT_TYPE,
            header::LAST_MODIFIED,
            header::CONTENT_DISPOSITION,
            header::CONTENT_LANGUAGE,
        ];
        let mut at = 0;
        for (name, part) in names.into_iter().zip(text.split('|')) {
            let value = buffer.slice(at..at + part.len());
            headers.insert(name, HeaderValue::from_maybe_shared(value).unwrap());
            at += part.len() + 1;
        }
        let meta = meta_from(&headers, "a.bin");
        let etag = entity_tag(&headers);
        drop(headers);
        assert!(buffer.is_unique(), "a kept value still shares the buffer");
        assert_eq!(meta.etag_str(), Some("\"abc\""));
        assert_eq!(etag, meta.etag);
        assert_eq!(meta.content_type, "image/png");
        assert!(meta.last_modified.is_some());
        let kept: Vec<_> = meta.passthrough.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(kept, ["en", "inline"]);
    }

    #[test]
    fn upload_codings_are_not_passed_on() {
        let codings = |value: &'static str| {
            content_codings(&HeaderValue::from_static(value))
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(codings("gzip").as_deref(), Some("gzip"));
        assert_eq!(codings("aws-chunked"), None);
        assert_eq!(codings("AWS-Chunked, gzip").as_deref(), Some("gzip"));
        assert_eq!(codings("gzip,aws-chunked").as_deref(), Some("gzip"));
        assert_eq!(codings(""), None);
        assert_eq!(codings(" , identity").as_deref(), None);
        assert_eq!(codings("br, gzip").as_deref(), Some("br, gzip"));
    }

    #[test]
    fn object_urls_for_both_addressing_styles() {
        let object = S3Object {
            store: "s3".into(),
            bucket: "my-bucket".into(),
            key: "dir/a b+c%d~é.txt".into(),
        };
        let path = client("path", "http://127.0.0.1:9000");
        assert_eq!(
            path.object_url(&object).as_str(),
            "http://127.0.0.1:9000/my-bucket/dir/a%20b%2Bc%25d~%C3%A9.txt"
        );
        let virt = client("virtual", "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(
            virt.object_url(&object).as_str(),
            "https://my-bucket.s3.eu-west-1.amazonaws.com/dir/a%20b%2Bc%25d~%C3%A9.txt"
        );
        assert_eq!(
            virt.bucket_url("my-bucket").as_str(),
            "https://my-bucket.s3.eu-west-1.amazonaws.com/"
        );
    }

    #[test]
    fn retries_wait_a_random_time_below_a_growing_ceiling() {
        for attempt in 1..=6 {
            let ceiling = (BACKOFF_BASE * (1 << attempt)).min(BACKOFF_CAP);
            let pauses: Vec<Duration> = (0..200).map(|_| backoff(attempt)).collect();
            assert!(pauses.iter().all(|p| *p <= ceiling), "{attempt}");
            let (min, max) = (pauses.iter().min().unwrap(), pauses.iter().max().unwrap());
            assert!(
                *min < ceiling / 4 && *max > ceiling * 3 / 4,
                "{attempt}: {min:?}..{max:?}"
            );
        }
    }

    #[test]
    fn skew_is_local_minus_server() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(skew(t + Duration::from_secs(1800), t), 1800);
        assert_eq!(skew(t, t + Duration::from_secs(90)), -90);
    }

    fn addresser(endpoint: &str, addressing: Addressing) -> Addresser {
        Addresser {
            endpoint: Url::parse(endpoint).unwrap(),
            addressing,
        }
    }

    fn object(bucket: &str) -> S3Object {
        S3Object {
            store: "s3".into(),
            bucket: bucket.into(),
            key: "k/a.png".into(),
        }
    }

    #[test]
    fn auto_addressing_goes_virtual_only_where_that_works() {
        let url = |endpoint: &str, bucket: &str| {
            addresser(endpoint, Addressing::Auto)
                .object_url(&object(bucket))
                .to_string()
        };
        let aws = "https://s3.eu-west-1.amazonaws.com";
        assert_eq!(
            url(aws, "photos"),
            "https://photos.s3.eu-west-1.amazonaws.com/k/a.png"
        );
        // IP endpoints (MinIO, Garage, Ceph by address) and localhost.
        assert_eq!(
            url("http://10.0.0.5:9000", "photos"),
            "http://10.0.0.5:9000/photos/k/a.png"
        );
        assert_eq!(
            url("http://[::1]:9000", "photos"),
            "http://[::1]:9000/photos/k/a.png"
        );
        assert_eq!(
            url("http://localhost:9000", "photos"),
            "http://localhost:9000/photos/k/a.png"
        );
        // Dots over https cannot match a wildcard certificate; over http they can.
        assert_eq!(
            url(aws, "my.photos"),
            "https://s3.eu-west-1.amazonaws.com/my.photos/k/a.png"
        );
        assert_eq!(
            url("http://s3.cn-north-1.amazonaws.com.cn", "my.photos"),
            "http://my.photos.s3.cn-north-1.amazonaws.com.cn/k/a.png"
        );
        // Other stores by name (a container's service name, a cluster's, a provider's):
        // path-style, which they all answer, while `bucket.host` needs DNS and a setting.
        for endpoint in [
            "http://minio:9000",
            "http://minio.internal:9000",
            "http://garage.storage.svc.cluster.local:3900",
            "https://storage.googleapis.com",
            "https://account.r2.cloudflarestorage.com",
            "https://s3.us-west-004.backblazeb2.com",
        ] {
            assert_eq!(
                url(endpoint, "photos"),
                format!("{endpoint}/photos/k/a.png"),
            );
        }
        // Unless told otherwise.
        assert_eq!(
            addresser("http://minio.internal:9000", Addressing::Virtual)
                .object_url(&object("photos"))
                .as_str(),
            "http://photos.minio.internal:9000/k/a.png"
        );
        // Names that are no DNS names.
        for bucket in ["192.168.1.1", "a..b", "a-.b", "a.-b"] {
            assert!(
                url(aws, bucket).starts_with(&format!("{aws}/{bucket}/")),
                "{bucket}"
            );
        }
    }

    #[test]
    fn virtual_addressing_that_cannot_work_is_a_config_problem_never_a_panic() {
        let problems = |endpoint: &str, bucket: &str| {
            let text = format!(
                "[s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naddressing = \"virtual\"\n\
                 [buckets.a]\nbucket = \"{bucket}\"\n[[rules]]\nbucket = \"a\"\nallow = \"public\"\n"
            );
            let env = Environment::from_pairs([
                ("AWS_ACCESS_KEY_ID", "a"),
                ("AWS_SECRET_ACCESS_KEY", "b"),
            ]);
            match Config::parse(&text, std::path::Path::new("."), &env, &crate::check_config) {
                Ok(_) => Vec::new(),
                Err(crate::config::ConfigError::Invalid { problems, .. }) => {
                    problems.iter().map(ToString::to_string).collect()
                }
                Err(e) => vec![e.to_string()],
            }
        };
        let found = problems("http://10.0.0.5:9000", "photos");
        assert!(
            found
                .iter()
                .any(|p| p.contains("s3.addressing") && p.contains("IP address")),
            "{found:?}"
        );
        assert!(!problems("https://s3.amazonaws.com", "my.photos").is_empty());
        assert!(problems("https://s3.amazonaws.com", "photos").is_empty());
        // Whatever slips through is addressed path-style, not a panic.
        let url =
            addresser("http://10.0.0.5:9000", Addressing::Virtual).object_url(&object("photos"));
        assert_eq!(url.as_str(), "http://10.0.0.5:9000/photos/k/a.png");
    }

    proptest::proptest! {
        /// Object, bucket and pre-signed URLs for any endpoint, bucket name and addressing mode:
        /// no panic, and the bucket is in the host or first in the path.
        #[test]
        fn urls_never_panic(
            scheme in "https?",
            host in "(localhost|[a-z][a-z0-9-]{0,10}(\\.[a-z0-9-]{1,8}){0,3}|[0-9]{1,3}(\\.[0-9]{1,3}){3}|\\[::[0-9a-f]{1,4}\\])",
            port in proptest::option::of(1u16..65535),
            bucket in "[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
            mode in 0usize..3,
        ) {
            let endpoint = match port {
                Some(p) => format!("{scheme}://{host}:{p}"),
                None => format!("{scheme}://{host}"),
            };
            let Ok(endpoint) = Url::parse(&endpoint) else { return Ok(()) };
            let addressing = [Addressing::Auto, Addressing::Virtual, Addressing::Path][mode];
            let addresser = Addresser { endpoint, addressing };
            let url = addresser.object_url(&object(&bucket));
            let in_host = url.host_str().is_some_and(|h| h.starts_with(&format!("{bucket}.")));
            let in_path = url.path().starts_with(&format!("/{bucket}/"));
            proptest::prop_assert!(in_host || in_path, "{}", url);
            let _ = addresser.bucket_url(&bucket);
            let keys = credentials::Keys::from_config(
                &crate::config::AwsCredentials {
                    access_key_id: "a".into(),
                    secret_access_key: "b".into(),
                    session_token: None,
                },
                "test",
            );
            let signer = sigv4::Signer::new("us-east-1");
            let presigned = signer.presign(&keys, &Method::GET, &url, &[], SystemTime::now(), Duration::from_secs(60));
            proptest::prop_assert!(presigned.is_ok());
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(parse_content_range("bytes 9-0/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
    }
}

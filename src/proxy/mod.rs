//! `App::handle`: route → authenticate → authorize → cache → S3 → response, one stage a line.
//! Each stage returns early with a `ProxyError`; `error.rs` turns it into the response.

mod batch;
pub mod client;
pub mod cors;
mod object;
mod upload;

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, header};
use hyper::body::Incoming;

use crate::auth::{Authenticated, ConnectionMemo, Identity, Verifier, find_signature, find_tokens};
use crate::cache::ObjectCache;
use crate::config::{Config, Permission};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::policy::{Action, Delete, Denied, Permit, Policy, Principal, Read, Sign, Write};
use crate::response::ResponseSettings;
use crate::route::{Key, ObjectAction, ObjectRoute, Route, route};
use crate::s3::{S3Client, Stores};
use crate::server::{Body, BoxError, Handler};
use crate::urls::{UrlError, UrlSigner};
use cors::Cors;

/// The request handler with everything it needs; cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Shared>,
}

/// The time source: the system clock, or a fixed one in tests of signing windows.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// What lives as long as the process: the cache survives reloads.
struct Shared {
    live: ArcSwap<Generation>,
    cache: ObjectCache,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// What upload buffers may hold together.
    upload_memory: upload::UploadMemory,
    /// What the background probe of the buckets last found (`None` before its first round).
    probe: tokio::sync::watch::Sender<Option<Probe>>,
    /// Shutting down: in-flight requests are draining, and no new ones should be sent here.
    draining: std::sync::atomic::AtomicBool,
}

/// One round of the background bucket probe.
#[derive(Debug, Clone)]
struct Probe {
    /// The first bucket that did not answer, and why.
    failure: Option<String>,
    /// The same failure without what changes from round to round (a clock skew's seconds),
    /// to tell a new failure from the same one again.
    failure_kind: Option<String>,
    /// Every bucket answered, in this round or an earlier one.
    ever_reached: bool,
}

/// What a reload replaces: everything built from the config.
struct Generation {
    config: Arc<Config>,
    policy: Policy,
    verifier: Verifier,
    stores: Stores,
    s3: S3Client,
    signer: UrlSigner,
    cors: Cors,
    responses: ResponseSettings,
    trusted: client::TrustedProxies,
}

impl Generation {
    /// Everything built from `config`; stores whose credentials come from an unchanged default
    /// chain keep `previous`'s keys.
    async fn new(
        config: Config,
        metrics: &Arc<Metrics>,
        previous: Option<&Generation>,
    ) -> Result<Generation, AppError> {
        let stores = Stores::new(&config, previous.map(|p| &p.stores)).await;
        Ok(Generation {
            policy: Policy::new(&config).map_err(AppError::Rules)?,
            verifier: Verifier::new(&config, metrics.clone(), previous.map(|p| &p.verifier)).await,
            s3: S3Client::new(&config, &stores, metrics.clone())?,
            signer: UrlSigner::new(&config, &stores),
            stores,
            cors: Cors::new(&config),
            trusted: client::TrustedProxies::new(&config),
            responses: ResponseSettings::new(config.cache.browser_max_age),
            config: Arc::new(config),
        })
    }
}

/// The settings that differ between `old` and `new` and that only a restart applies: the
/// listeners' sockets and limits, the memory pools sized at start, and logging.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    [
        ("server.listen", a.listen != b.listen),
        (
            "server.proxy_protocol",
            a.proxy_protocol != b.proxy_protocol,
        ),
        (
            "server.header_read_timeout",
            a.header_read_timeout != b.header_read_timeout,
        ),
        // Request bodies are paced by the new value at once.
        (
            "server.idle_timeout (for idle connections)",
            a.idle_timeout != b.idle_timeout,
        ),
        (
            "server.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "server.max_header_size",
            a.max_header_size != b.max_header_size,
        ),
        (
            "server.shutdown_grace",
            a.shutdown_grace != b.shutdown_grace,
        ),
        ("admin.listen", old.admin.listen != new.admin.listen),
        ("cache.capacity", old.cache.capacity != new.cache.capacity),
        (
            "upload.buffer_memory",
            old.upload.buffer_memory != new.upload.buffer_memory,
        ),
        ("[log]", old.log != new.log),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Probes every bucket of the live config at `admin.probe_interval`, for `/readyz`; stops when
/// the app is dropped.
async fn probe_buckets(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let live = shared.live.load_full();
        let mut failure = None;
        let mut failure_kind = None;
        for b in live.config.buckets.values() {
            let store = Config::store_of(b);
            if let Err(e) = live.s3.probe_bucket(&store, &b.bucket, &b.prefix).await {
                failure = Some(format!("bucket {}: {e}", b.bucket));
                failure_kind = Some(format!("bucket {}: {}", b.bucket, e.kind()));
                break;
            }
        }
        let (reached_before, kind_before) = match shared.probe.borrow().as_ref() {
            Some(p) => (p.ever_reached, p.failure_kind.clone()),
            None => (false, None),
        };
        // Said once when it starts or changes, not every round.
        match (&failure, &kind_before) {
            (Some(why), before) if *before != failure_kind => {
                tracing::warn!(reason = %why, "bucket probe failed");
            }
            (Some(why), _) => tracing::debug!(reason = %why, "bucket probe failed"),
            (None, Some(_)) => tracing::info!("bucket probe succeeded again"),
            (None, None) => {}
        }
        shared.probe.send_replace(Some(Probe {
            ever_reached: reached_before || failure.is_none(),
            failure,
            failure_kind,
        }));
        let interval = live.config.admin.probe_interval;
        drop((live, shared));
        tokio::time::sleep(interval).await;
    }
}

/// One request's view: the shared parts and the config generation it started with (a reload
/// in the middle of a request does not change the rules under it).
struct Exchange<'a> {
    shared: &'a Arc<Shared>,
    live: Arc<Generation>,
    connection: Option<&'a ConnectionMemo>,
}

/// The app could not be built from the config.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The HTTP client for S3 could not be built.
    #[error("cannot build the S3 client: {0}")]
    S3Client(#[from] reqwest::Error),
    /// The rules or bucket aliases cannot be used.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Rules(Vec<crate::config::Problem>),
}

/// What the access log records about a request besides method, path and status.
#[derive(Debug, Default)]
struct AccessRecord {
    route: &'static str,
    /// Who the request's token names (`sub`).
    identity: Option<Arc<Identity>>,
}

impl App {
    /// Builds the app from a validated config (fetching JWKS keys when configured).
    pub async fn new(config: Config) -> Result<App, AppError> {
        Self::with_clock(config, Arc::new(SystemTime::now)).await
    }

    /// Builds the app with its own clock for signing windows and signed-URL expiry.
    pub async fn with_clock(config: Config, clock: Clock) -> Result<App, AppError> {
        let metrics = Arc::new(Metrics::new());
        let cache = ObjectCache::new(&config, metrics.clone());
        let upload_memory = upload::UploadMemory::new(&config.upload);
        let live = Generation::new(config, &metrics, None).await?;
        let inner = Arc::new(Shared {
            live: ArcSwap::from_pointee(live),
            cache,
            metrics,
            clock,
            upload_memory,
            probe: tokio::sync::watch::Sender::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(probe_buckets(Arc::downgrade(&inner)));
        Ok(App { inner })
    }

    /// Replaces rules, keys, signing secrets, S3 settings and cache lifetimes with those of
    /// `config`. The cache and its contents stay; requests in flight finish under the old config.
    pub async fn reload(&self, config: Config) -> Result<(), AppError> {
        let old = self.config();
        let later = restart_only_changes(&old, &config);
        let previous = self.inner.live.load_full();
        // Built first: a config refused here changes nothing, the cache's lifetimes included.
        let live = Generation::new(config, &self.inner.metrics, Some(&previous)).await?;
        self.inner.cache.reconfigure(&live.config);
        self.inner.live.store(Arc::new(live));
        if !later.is_empty() {
            tracing::warn!(
                settings = %later.join(", "),
                "these changes take effect at the next restart; the rest of the config is in use"
            );
        }
        Ok(())
    }

    /// The configuration the app runs with now.
    pub fn config(&self) -> Arc<Config> {
        self.inner.live.load().config.clone()
    }

    /// The app's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Updates gauges that are read rather than counted (cache size) before a scrape.
    pub fn refresh_gauges(&self) {
        let (bytes, entries) = self.inner.cache.size_now();
        self.inner.metrics.cache_size(bytes, entries);
    }

    /// The object cache (sizes, for tests and benchmarks).
    pub fn cache(&self) -> &ObjectCache {
        &self.inner.cache
    }

    /// Empties the cache; returns how many entries were dropped.
    pub async fn purge_all(&self) -> u64 {
        self.inner.cache.purge().await
    }

    /// Drops one object from the cache; `path` is `/{bucket}/{key}` as in the public URL.
    pub async fn purge_path(&self, path: &str) -> Result<(), ProxyError> {
        let Route::Object(object) = route(&http::Method::DELETE, path, &http::HeaderMap::new())?
        else {
            return Err(ProxyError::NotFound);
        };
        let target = self
            .inner
            .live
            .load()
            .policy
            .object_for(&object.alias, &object.key)
            .ok_or(ProxyError::NotFound)?;
        self.inner.cache.invalidate(&target).await;
        Ok(())
    }

    /// From now on the instance is not ready: it is shutting down, and a balancer that asks
    /// should send new requests elsewhere while the ones in flight finish.
    pub fn start_draining(&self) {
        (self.inner.draining).store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// True when token keys are loaded, every configured bucket's store has usable credentials,
    /// and the background probe found every bucket answering (an outage after that counts only
    /// with `admin.unready_on_s3_outage`); false once shutting down. Never calls S3: before
    /// the probe's first round it waits for it, up to a second.
    pub async fn ready(&self) -> Result<(), String> {
        if self
            .inner
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err("shutting down".into());
        }
        let live = self.inner.live.load_full();
        let auth = &live.config.auth;
        let needs_keys = auth.jwks_url.is_some()
            || auth.hmac_secret_file.is_some()
            || auth.hmac_secret_env.is_some()
            || !auth.public_key_files.is_empty();
        if needs_keys && !live.verifier.has_keys() {
            return Err("no token verification keys loaded".into());
        }
        for b in live.config.buckets.values() {
            if let Some(s) = live.stores.get(&Config::store_of(b)) {
                s.keyring.current(SystemTime::now())?;
            }
        }
        let mut probes = self.inner.probe.subscribe();
        let wait = live
            .config
            .s3
            .timeout
            .min(std::time::Duration::from_secs(1));
        let first = tokio::time::timeout(wait, probes.wait_for(Option::is_some));
        let probe = match first.await {
            Ok(Ok(probe)) => probe.clone().expect("waited for one"),
            _ => return Err("the buckets have not been probed yet".into()),
        };
        match probe.failure {
            Some(why) if !probe.ever_reached || live.config.admin.unready_on_s3_outage => Err(why),
            _ => Ok(()),
        }
    }

    /// Answers one request. Never fails: errors become responses here.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.handle_on(request, None).await
    }

    /// Answers one request that came over `connection` (from its peer; what the connection
    /// already proved, such as a verified token, need not be proved again).
    pub async fn handle_on<B>(
        &self,
        request: Request<B>,
        connection: Option<&client::Peer>,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let ctx = Exchange {
            shared: &self.inner,
            live: self.inner.live.load_full(),
            connection: connection.map(|c| &c.memo),
        };
        let metrics = &self.inner.metrics;
        metrics.in_flight().inc();
        let (parts, body) = request.into_parts();
        let peer = connection.map(|c| c.addr.ip());
        let client = client::identify(peer, &parts.headers, &ctx.live.trusted);
        let mut outcome = AccessRecord::default();
        let mut response = match ctx.dispatch(&parts, body, &mut outcome).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
        ctx.live
            .cors
            .decorate(&parts.headers, response.headers_mut());
        // Every answer, not only objects: nothing s3warden sends is to be sniffed into a type
        // that runs script.
        let headers = response.headers_mut();
        headers
            .entry(header::X_CONTENT_TYPE_OPTIONS)
            .or_insert(http::HeaderValue::from_static("nosniff"));
        // Unique to this answer: HTTP/2 sends it as a literal instead of adding it to the
        // connection's HPACK table, where every answer would evict an entry others reuse.
        let mut request_id = client.request_id.clone();
        request_id.set_sensitive(true);
        headers.insert(client::X_REQUEST_ID.clone(), request_id);
        // A HEAD answer has the GET's headers and no content, errors included (HTTP/1 drops the
        // body on its own; HTTP/2 would send it, and clients reset such a stream).
        if parts.method == http::Method::HEAD {
            *response.body_mut() = crate::server::Body::full(bytes::Bytes::new());
        }
        metrics.in_flight().dec();
        let status = response.status().as_u16();
        let cache = crate::response::cache_label(response.headers());
        metrics.request(outcome.route, status, cache, started.elapsed());
        let length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .or_else(|| http_body::Body::size_hint(response.body()).exact())
            .unwrap_or(0);
        if parts.method != http::Method::HEAD {
            metrics.bytes_sent(length);
        }
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return response;
        }
        let user_agent = (parts.headers.get(header::USER_AGENT))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info!(
            target: "access",
            client = %client.addr.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            request_id = client.request_id.to_str().unwrap_or("-"),
            user_agent = &user_agent[..user_agent.floor_char_boundary(256)],
            method = %parts.method,
            path = parts.uri.path(),
            status,
            bytes = length,
            cache,
            // A number in JSON logs, to the microsecond.
            ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            sub = outcome
                .identity
                .as_ref()
                .and_then(|i| i.sub.as_deref())
                .unwrap_or("-"),
        );
        response
    }
}

/// The public listener's handler: each connection remembers the token it proved.
impl Handler for App {
    type Connection = client::Peer;

    fn open(&self, addr: std::net::SocketAddr) -> client::Peer {
        client::Peer {
            addr,
            memo: ConnectionMemo::default(),
        }
    }

    fn call(
        &self,
        request: Request<Incoming>,
        connection: client::Peer,
    ) -> impl Future<Output = Response<Body>> + Send {
        let app = self.clone();
        async move { app.handle_on(request, Some(&connection)).await }
    }
    fn connections(&self, delta: i64) {
        self.metrics().connections().inc_by(delta);
    }
    fn shed(&self) {
        self.metrics().shed();
    }
}

/// Whose upload this is, for their share of the upload buffer memory: a token's subject, one
/// signed URL, or everyone anonymous together.
fn uploader(auth: &Authenticated, permit: &Permit<Write>) -> Arc<str> {
    if auth.signed.is_some() {
        return format!("signed:{}/{}", permit.alias(), permit.key().as_str()).into();
    }
    match auth.identity.as_ref().map(|id| id.sub.as_deref()) {
        Some(Some(sub)) => format!("sub:{sub}").into(),
        Some(None) => "token".into(),
        None => "anonymous".into(),
    }
}

impl Exchange<'_> {
    async fn dispatch<B>(
        &self,
        parts: &Parts,
        body: B,
        outcome: &mut AccessRecord,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        outcome.route = "other";
        let route = route(&parts.method, parts.uri.path(), &parts.headers)?;
        outcome.route = route.name();
        match route {
            Route::Health => return Ok(Response::new(Body::full(Bytes::from_static(b"ok\n")))),
            Route::Preflight => return self.live.cors.preflight(&parts.headers),
            _ => {}
        }
        let auth = self.authenticate(parts, outcome).await?;
        if route.writes() {
            self.check_csrf(parts, &auth)?;
        }
        match route {
            // Answered above, before authentication.
            Route::Health | Route::Preflight => Err(ProxyError::Internal("no such route".into())),
            Route::Object(ObjectRoute { alias, key, action }) => match action {
                ObjectAction::Read(read) => {
                    let permit = self.authorize::<Read>(&auth, &alias, &key)?;
                    self.read_object(&permit, &read, &parts.extensions).await
                }
                ObjectAction::Write => {
                    let permit = self.authorize::<Write>(&auth, &alias, &key)?;
                    let uploader = uploader(&auth, &permit);
                    Box::pin(self.put_object(parts, &permit, uploader, body)).await
                }
                ObjectAction::Delete => {
                    let permit = self.authorize::<Delete>(&auth, &alias, &key)?;
                    Box::pin(self.delete_object(&permit)).await
                }
            },
            Route::Create { alias, prefix } => {
                if auth.signed.is_some() {
                    // A signature names one key; a generated key cannot have been signed.
                    return Err(ProxyError::BadSignature);
                }
                let prefix = prefix.as_ref().map(Key::as_str);
                // The prefix must be writable before a byte of the body is read.
                let probe = Key::parse(&format!(
                    "{}{}",
                    prefix.map_or(String::new(), |p| format!("{p}/")),
                    uuid::Uuid::nil()
                ))?;
                let probe = self.authorize::<Write>(&auth, &alias, &probe)?;
                let uploader = uploader(&auth, &probe);
                let authorize = |key: &str| {
                    let key = Key::parse(key)?;
                    self.authorize::<Write>(&auth, &alias, &key)
                };
                Box::pin(self.create_object(parts, prefix, uploader, body, authorize)).await
            }
            Route::Sign => {
                // Signing needs a token: nobody else gets to send (or trickle) a body.
                if auth.identity.is_none() {
                    return Err(ProxyError::Unauthenticated);
                }
                Box::pin(self.sign_batch(&auth, body)).await
            }
        }
    }

    /// Verifies every token the request carries; any invalid one refuses the request.
    async fn authenticate(
        &self,
        parts: &Parts,
        outcome: &mut AccessRecord,
    ) -> Result<Authenticated, ProxyError> {
        let auth = &self.live.config.auth;
        let found = find_tokens(
            &parts.headers,
            parts.uri.query(),
            &auth.cookie,
            &auth.query_param,
        );
        if found.malformed {
            self.shared.metrics.token_failure("malformed");
            return Err(ProxyError::InvalidToken(crate::auth::TokenError::Malformed));
        }
        let mut result = Authenticated {
            signed: find_signature(parts.uri.query()).map_err(|_| ProxyError::BadSignature)?,
            ..Authenticated::default()
        };
        for (source, token) in found.tokens {
            match self.live.verifier.verify_on(token, self.connection).await {
                Ok(identity) => {
                    if result.identity.is_none() {
                        outcome.identity = Some(identity.clone());
                        result.identity = Some(identity);
                        result.source = Some(source);
                    }
                }
                Err(e) => {
                    self.shared.metrics.token_failure(e.label());
                    return Err(ProxyError::InvalidToken(e));
                }
            }
        }
        Ok(result)
    }

    /// Writes authenticated by a cookie must come from an allowed origin: a cross-site page can
    /// make a browser send the cookie, but not forge the `Origin` header.
    fn check_csrf(&self, parts: &Parts, auth: &Authenticated) -> Result<(), ProxyError> {
        match auth.source {
            Some(source) if source.is_ambient() => {
                self.live.cors.check_cookie_write(&parts.headers)
            }
            _ => Ok(()),
        }
    }

    /// Applies a proxy signature or the rules; the `Permit` is the only way on to the cache and
    /// S3. A signature, when present, decides: it must be valid for exactly this action and key.
    fn authorize<A: Action>(
        &self,
        auth: &Authenticated,
        alias: &str,
        key: &Key,
    ) -> Result<Permit<A>, ProxyError> {
        if let Some(signed) = &auth.signed {
            let now = (self.shared.clock)();
            let terms = self
                .live
                .signer
                .verify(A::METHOD, alias, key, signed, now)
                .map_err(|e| match e {
                    UrlError::BadSignature => ProxyError::BadSignature,
                    UrlError::Expired => ProxyError::Expired,
                })?;
            let left = signed.expires.saturating_sub(crate::urls::unix(now));
            return self
                .live
                .policy
                .permit_signed(alias, key, left, terms)
                .map_err(|_| ProxyError::NotFound);
        }
        let who = principal(auth);
        self.live.policy.authorize(who, alias, key).map_err(refusal)
    }

    /// Whether the rules let the caller have a URL signed for `method` on `key`.
    fn authorize_signing(
        &self,
        auth: &Authenticated,
        alias: &str,
        key: &Key,
        method: Permission,
    ) -> Result<Permit<Sign>, ProxyError> {
        self.live
            .policy
            .authorize_signing(principal(auth), alias, key, method)
            .map_err(refusal)
    }
}

/// Who the rules are asked about.
fn principal(auth: &Authenticated) -> Principal<'_> {
    match &auth.identity {
        Some(identity) => Principal::Token(identity),
        None => Principal::Anonymous,
    }
}

/// A refusal by the rules, as the client sees it.
fn refusal(denied: Denied) -> ProxyError {
    match denied {
        Denied::Unauthenticated => ProxyError::Unauthenticated,
        Denied::Forbidden => ProxyError::Forbidden,
        Denied::UnknownBucket => ProxyError::NotFound,
        Denied::KeyTooLong => ProxyError::BadKey(crate::route::KeyError::Length),
    }
}

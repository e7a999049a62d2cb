//! The admin listener: health, readiness, metrics and cache purges. Loopback by default. It
//! refuses anything a browser sends (a cross-site page must not purge through a visitor's
//! browser), and with `admin.token_file` it wants a bearer token for everything but the probes.

use std::future::Future;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use crate::App;
use crate::server::Body;
use crate::server::{Handler, text};

/// The admin endpoints of one app.
#[derive(Clone)]
pub struct Admin {
    pub(crate) app: App,
    pub(crate) reloads: Reloads,
}

/// A reload asked for on the admin listener (`POST /reload`): the daemon loop carries it out,
/// as for `SIGHUP`, and answers with the outcome.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Where `POST /reload` hands its requests: nowhere until the daemon loop takes them.
#[derive(Clone, Default)]
pub(crate) struct Reloads(Arc<Mutex<Option<mpsc::Sender<ReloadRequest>>>>);

impl Reloads {
    /// From now on, reload requests arrive on the returned receiver.
    pub(crate) fn accept(&self) -> mpsc::Receiver<ReloadRequest> {
        let (sender, receiver) = mpsc::channel(4);
        *self.0.lock().expect("lock not poisoned") = Some(sender);
        receiver
    }

    /// Asks for a reload and waits for its outcome.
    async fn request(&self) -> Option<Result<(), String>> {
        let sender = self.0.lock().expect("lock not poisoned").clone()?;
        let (reply, outcome) = tokio::sync::oneshot::channel();
        sender.send(reply).await.ok()?;
        outcome.await.ok()
    }
}

impl Handler for Admin {
    type Connection = ();

    fn open(&self, _peer: std::net::SocketAddr) {}

    fn call(
        &self,
        request: Request<Incoming>,
        _connection: (),
    ) -> impl Future<Output = Response<Body>> + Send {
        let admin = self.clone();
        async move {
            let mut response = admin
                .handle(request.method(), request.uri(), request.headers())
                .await;
            response.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response
        }
    }
}

impl Admin {
    /// Answers one admin request.
    async fn handle(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response<Body> {
        handle(&self.app, &self.reloads, method, uri, headers).await
    }
}

/// Answers one admin request.
async fn handle(
    app: &App,
    reloads: &Reloads,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response<Body> {
    let token = app.config().secrets.admin_token.clone();
    if from_a_browser(headers) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "browser requests are refused here",
        );
    }
    // Without a token the listener is on loopback, and only loopback names reach it: a page
    // whose own name an attacker points at 127.0.0.1 (DNS rebinding) is refused.
    if token.is_none() && !names_loopback(uri, headers) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "without admin.token_file, only loopback host names are served",
        );
    }
    let path = uri.path();
    let probe = matches!(path, "/healthz" | "/readyz");
    if !probe && !token_matches(token.as_deref(), headers) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs the admin token",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"s3warden-admin\""),
        );
        return response;
    }
    match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => match app.ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        // Probes and scrapers may check with HEAD (hyper sends no body for it).
        (&Method::GET | &Method::HEAD, "/metrics") => {
            app.refresh_gauges();
            let mut response = text(StatusCode::OK, app.metrics().render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::POST, "/reload") => match reloads.request().await {
            Some(Ok(())) => json(StatusCode::OK, serde_json::json!({ "reloaded": true })),
            Some(Err(why)) => error(StatusCode::UNPROCESSABLE_ENTITY, "reload_refused", &why),
            None => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "reloads are served by `s3warden serve` only",
            ),
        },
        (&Method::POST, "/cache/purge") => {
            let n = app.purge_all().await;
            json(StatusCode::OK, serde_json::json!({ "purged": n }))
        }
        (&Method::DELETE, p) if p.starts_with("/cache/") => {
            match app.purge_path(&p["/cache".len()..]).await {
                Ok(()) => json(StatusCode::OK, serde_json::json!({ "purged": 1 })),
                Err(e) => e.into_response(),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

/// Browsers send `Origin` on cross-origin requests (and on same-origin POSTs), and
/// `Sec-Fetch-Site` on every request; `none` means the user typed the URL. Probes, scrapers
/// and `curl` send neither.
fn from_a_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers
            .get_all("sec-fetch-site")
            .iter()
            .any(|v| v.as_bytes() != b"none")
}

/// Whether the request names this machine: `Host` (or the HTTP/2 authority) is a loopback
/// address or `localhost`, with any port. A request with no host at all (HTTP/1.0) passes.
fn names_loopback(uri: &Uri, headers: &HeaderMap) -> bool {
    let host = match headers.get(header::HOST) {
        Some(value) => match value.to_str() {
            Ok(host) => host,
            Err(_) => return false,
        },
        None => match uri.host() {
            Some(host) => host,
            None => return true,
        },
    };
    // `127.0.0.1:9901`, `localhost:9901`, `[::1]:9901`, `[::1]`.
    let name = match host.rsplit_once(':') {
        Some((name, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the request carries the admin token (always, when none is configured). Compared as
/// digests in constant time, so neither the token nor its length leaks through timing.
fn token_matches(expected: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some(given) = value.to_str().ok().and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    }) else {
        return false;
    };
    let (given, expected) = (Sha256::digest(given.trim()), Sha256::digest(expected));
    given.ct_eq(&expected).into()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "error": code, "message": message }),
    )
}

/// How long `s3warden reload` waits for the daemon's answer (a reload may fetch JWKS keys and
/// S3 credentials).
const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `s3warden reload`: asks the daemon whose admin listener is at `admin` to reload its config
/// (`POST /reload`) and waits for the outcome. `Err` says why it was refused or could not be
/// asked.
pub async fn reload_daemon(admin: &str, token: Option<&str>) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(RELOAD_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = http.post(format!("{}/reload", admin.trim_end_matches('/')));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| {
        let why = if e.is_timeout() {
            format!("no answer within {}s", RELOAD_TIMEOUT.as_secs())
        } else {
            crate::s3::error_chain(e)
        };
        format!("{admin}: {why}")
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body["message"].as_str().unwrap_or_default();
    Err(match status {
        StatusCode::UNPROCESSABLE_ENTITY => format!("reload refused: {message}"),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            format!("{admin}: {status}: the admin token is missing or wrong (admin.token_file)")
        }
        _ => format!("{admin}: {status}: {message}"),
    })
}

/// How long `s3warden purge` waits for each instance.
const PURGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `s3warden purge`: drops objects (or everything) from the caches of running instances,
/// through each one's admin listener. Returns one line per instance and object; `Err` when any
/// instance could not be purged.
pub async fn purge_fleet(
    admins: &[String],
    token: Option<&str>,
    objects: &[String],
    all: bool,
) -> Result<Vec<String>, Vec<String>> {
    let http = reqwest::Client::builder()
        .timeout(PURGE_TIMEOUT)
        .build()
        .map_err(|e| vec![e.to_string()])?;
    let mut report = Vec::new();
    let mut failed = false;
    let mut targets = Vec::new();
    for object in objects {
        let (alias, raw) = object
            .split_once('/')
            .ok_or_else(|| vec![format!("{object}: expected BUCKET/KEY")])?;
        let key = crate::route::Key::parse(raw).map_err(|e| vec![format!("{object}: {e}")])?;
        targets.push((object, format!("/cache/{alias}/{}", key.encoded())));
    }
    for admin in admins {
        let admin = admin.trim_end_matches('/');
        let requests: Vec<(String, reqwest::RequestBuilder)> = if all {
            vec![(
                "everything".into(),
                http.post(format!("{admin}/cache/purge")),
            )]
        } else {
            targets
                .iter()
                .map(|(object, path)| ((*object).clone(), http.delete(format!("{admin}{path}"))))
                .collect()
        };
        for (what, mut request) in requests {
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => report.push(format!("{admin}: purged {what}")),
                Ok(r) => {
                    failed = true;
                    let why = match r.status() {
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            ": the admin token is missing or wrong (--token-file, admin.token_file)"
                        }
                        StatusCode::NOT_FOUND => ": no such bucket alias there",
                        _ => "",
                    };
                    report.push(format!("{admin}: {what}: refused, {}{why}", r.status()));
                }
                Err(e) => {
                    failed = true;
                    let why = if e.is_timeout() {
                        format!("no answer within {}s", PURGE_TIMEOUT.as_secs())
                    } else {
                        crate::s3::error_chain(e)
                    };
                    report.push(format!("{admin}: {what}: {why}"));
                }
            }
        }
    }
    if failed { Err(report) } else { Ok(report) }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = text(status, value.to_string());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        let with_host = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            names_loopback(&Uri::from_static("/metrics"), &headers)
        };
        for ok in [
            "127.0.0.1:9901",
            "127.0.0.1",
            "localhost:9901",
            "LOCALHOST",
            "[::1]:9901",
            "[::1]",
            "127.8.9.1:1",
        ] {
            assert!(with_host(ok), "{ok}");
        }
        for no in [
            "rebind.test:9901",
            "rebind.test",
            "10.0.0.5:9901",
            "127.0.0.1.evil.test",
            "[::2]:9901",
            "localhost.evil.test:9901",
        ] {
            assert!(!with_host(no), "{no}");
        }
        assert!(names_loopback(
            &Uri::from_static("/metrics"),
            &HeaderMap::new()
        ));
        assert!(!names_loopback(
            &Uri::from_static("http://rebind.test:9901/metrics"),
            &HeaderMap::new()
        ));
    }
}

//! The admin listener: health, readiness, metrics and cache purges. Loopback by default; it
//! has no authentication of its own, so it must not be exposed.

use std::future::Future;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::App;
use crate::body::Body;
use crate::server::{Handler, text};

/// The admin endpoints of one app.
#[derive(Clone)]
pub struct Admin(pub App);

impl Handler for Admin {
    fn call(
        &self,
        request: Request<Incoming>,
        _connection: crate::server::ConnectionLocal,
    ) -> impl Future<Output = Response<Body>> + Send {
        let app = self.0.clone();
        async move { handle(&app, request.method(), request.uri().path()).await }
    }
}

/// Answers one admin request.
pub async fn handle(app: &App, method: &Method, path: &str) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match app.ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, "/metrics") => {
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
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "not_found", "message": "no such admin endpoint" }),
        ),
    }
}

/// `s3warden purge`: drops objects (or everything) from the caches of running instances,
/// through each one's admin listener. Returns one line per instance and object; `Err` when any
/// instance could not be purged.
pub async fn purge_fleet(
    admins: &[String],
    objects: &[String],
    all: bool,
) -> Result<Vec<String>, Vec<String>> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
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
        targets.push((
            object,
            format!("/cache/{alias}/{}", crate::sign::encode_key(&key)),
        ));
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
        for (what, request) in requests {
            match request.send().await {
                Ok(r) if r.status().is_success() => report.push(format!("{admin}: purged {what}")),
                Ok(r) => {
                    failed = true;
                    report.push(format!("{admin}: {what}: {}", r.status()));
                }
                Err(e) => {
                    failed = true;
                    report.push(format!("{admin}: {what}: {}", e.without_url()));
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

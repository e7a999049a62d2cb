//! CORS for browser apps on other origins, and the CSRF rule for cookie-authenticated writes.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};

use crate::config::{Config, Validator};
use crate::error::ProxyError;
use crate::server::Body;

/// Request headers a cross-origin page may send, before `cors.allowed_headers`: what s3warden
/// reads, and what front-end libraries and tracing add to every request (s3warden ignores
/// those).
const ALLOWED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "range",
    "if-none-match",
    "if-modified-since",
    "if-range",
    "x-acl",
    "x-amz-acl",
    "x-requested-with",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// Response headers a cross-origin page may read.
const EXPOSED: &str =
    "ETag, Last-Modified, Content-Length, Content-Range, Content-Type, X-Cache, Location";

/// What CORS needs of `[cors]`: origins, each `scheme://host[:port]`, and header names.
pub(crate) fn check(config: &Config, v: &mut Validator) {
    for (i, origin) in config.cors.allowed_origins.iter().enumerate() {
        if !is_valid_origin(origin) {
            v.problem(
                format!("cors.allowed_origins[{i}]"),
                "must be an origin like \"https://app.example.com\" (scheme, host, optional port; no path)",
            );
        }
    }
    for (i, name) in config.cors.allowed_headers.iter().enumerate() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            v.problem(
                format!("cors.allowed_headers[{i}]"),
                format!("{name:?} is not a header name"),
            );
        }
    }
}

/// True for `scheme://host[:port]` with an http(s) scheme and nothing after it.
fn is_valid_origin(origin: &str) -> bool {
    reqwest::Url::parse(origin).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.origin().ascii_serialization() == origin
    })
}

/// The configured origins.
#[derive(Debug, Clone)]
pub struct Cors {
    allowed: Vec<String>,
    /// Request headers a preflight may ask for, lowercase.
    request_headers: Vec<String>,
    /// Origins whose cookie-authenticated writes are accepted: the allowed ones and our own.
    same_site: Vec<String>,
    max_age: HeaderValue,
}

impl Cors {
    /// From a validated config.
    pub fn new(config: &Config) -> Cors {
        let mut same_site = config.cors.allowed_origins.clone();
        if let Ok(url) = reqwest::Url::parse(&config.public_url()) {
            same_site.push(url.origin().ascii_serialization());
        }
        let request_headers = (ALLOWED_REQUEST_HEADERS.iter().map(|h| h.to_string()))
            .chain(
                config
                    .cors
                    .allowed_headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase()),
            )
            .collect();
        Cors {
            allowed: config.cors.allowed_origins.clone(),
            request_headers,
            same_site,
            max_age: HeaderValue::from(config.cors.max_age.as_secs()),
        }
    }

    fn allowed_origin<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.allowed.iter().any(|o| o == text).then_some(origin)
    }

    /// Answers an `OPTIONS` request: a preflight from an allowed origin for an allowed method
    /// gets 204 with the CORS headers; any other preflight is refused.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<Response<Body>, ProxyError> {
        let requested = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| v.to_str().ok());
        let Some(requested) = requested else {
            // A plain OPTIONS, not a preflight.
            let mut response = Response::new(Body::Empty);
            *response.status_mut() = StatusCode::NO_CONTENT;
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, OPTIONS"),
            );
            return Ok(response);
        };
        let origin = self
            .allowed_origin(headers)
            .ok_or(ProxyError::Forbidden)?
            .clone();
        let method_ok = Method::from_bytes(requested.as_bytes()).is_ok_and(|m| {
            matches!(
                m,
                Method::GET | Method::HEAD | Method::PUT | Method::POST | Method::DELETE
            )
        });
        if !method_ok {
            return Err(ProxyError::Forbidden);
        }
        let wanted: Vec<String> = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if let Some(bad) = wanted.iter().find(|h| !self.request_headers.contains(h)) {
            tracing::debug!(header = %bad, "preflight asked for a header that is not allowed");
            return Err(ProxyError::Forbidden);
        }
        let mut response = Response::new(Body::Empty);
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE"),
        );
        if !wanted.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_str(&wanted.join(", ")).expect("allow-listed names"),
            );
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        // `decorate` adds `Vary: Origin` on the way out.
        Ok(response)
    }

    /// Adds the CORS headers for an allowed origin to an actual response, and `Vary: Origin`
    /// whenever CORS is configured (the answer differs by origin).
    pub fn decorate(&self, request: &HeaderMap, response: &mut HeaderMap) {
        if self.allowed.is_empty() {
            return;
        }
        let varies = (response.get_all(header::VARY).iter())
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|name| name.trim().eq_ignore_ascii_case("origin"));
        if !varies {
            response.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(origin) = self.allowed_origin(request) {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            response.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED),
            );
        }
    }

    /// CSRF: a write authenticated by a cookie must come from an allowed origin (or our own).
    pub fn check_cookie_write(&self, request: &HeaderMap) -> Result<(), ProxyError> {
        let origin = request.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        match origin {
            Some(origin) if self.same_site.iter().any(|o| o == origin) => Ok(()),
            _ => Err(ProxyError::CrossSite),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_origin;

    #[test]
    fn origins() {
        assert!(is_valid_origin("https://app.example.com"));
        assert!(is_valid_origin("http://127.0.0.1:8080"));
        assert!(!is_valid_origin("https://app.example.com/"));
        assert!(!is_valid_origin("https://app.example.com/path"));
        assert!(!is_valid_origin("app.example.com"));
        assert!(!is_valid_origin("*"));
    }
}

//! Object → response: the allow-listed headers, 304/206 answers, `X-Cache`, caching headers and
//! the headers that keep active content (HTML, SVG, XML, JavaScript) from running on our origin.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

use crate::body::Body;
use crate::policy::Permit;
use crate::s3::ObjectMeta;

/// `X-Cache` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from a fresh entry.
    Hit,
    /// Fetched from S3 now.
    Miss,
    /// A stale entry S3 confirmed current.
    Revalidated,
    /// A stale entry served because S3 failed.
    Stale,
    /// Not cacheable: streamed from S3.
    Bypass,
}

impl CacheStatus {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        })
    }
}

/// Header name of the cache status.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What shapes responses, from the config; header values built once.
#[derive(Debug, Clone)]
pub struct ResponseSettings {
    private_cache_control: HeaderValue,
    public_cache_control: HeaderValue,
}

impl ResponseSettings {
    /// Settings for browsers keeping objects `browser_max_age`.
    pub fn new(browser_max_age: Duration) -> ResponseSettings {
        let value = |scope| {
            HeaderValue::from_str(&format!("{scope}, max-age={}", browser_max_age.as_secs()))
                .expect("digits")
        };
        ResponseSettings {
            private_cache_control: value("private"),
            public_cache_control: value("public"),
        }
    }
}

/// Which part of the object a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The whole object (200).
    Whole,
    /// Bytes `first..=last` (206).
    Range(u64, u64),
    /// Nothing: the client's copy is current (304).
    NotModified,
}

/// Builds an object response. `body` must hold exactly the bytes `part` names (or be empty for
/// HEAD and 304).
pub fn object(
    settings: &ResponseSettings,
    permit: &Permit,
    meta: &ObjectMeta,
    part: Part,
    cache: CacheStatus,
    body: Body,
) -> Response<Body> {
    let (status, headers) = match part {
        Part::NotModified => (StatusCode::NOT_MODIFIED, validators(meta, 6)),
        Part::Whole => (StatusCode::OK, whole_headers(meta)),
        Part::Range(first, last) => {
            let mut headers = whole_headers(meta);
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {first}-{last}/{}", meta.size))
                    .expect("digits"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
            (StatusCode::PARTIAL_CONTENT, headers)
        }
    };
    finish(settings, permit, meta, status, headers, cache, body)
}

/// A whole object's answer from headers prepared once per cached object (`whole_headers`).
pub fn whole(
    settings: &ResponseSettings,
    permit: &Permit,
    meta: &ObjectMeta,
    prepared: &HeaderMap,
    cache: CacheStatus,
    body: Body,
) -> Response<Body> {
    finish(
        settings,
        permit,
        meta,
        StatusCode::OK,
        prepared.clone(),
        cache,
        body,
    )
}

/// The headers of a whole-object answer that depend only on the object.
pub fn whole_headers(meta: &ObjectMeta) -> HeaderMap {
    let mut headers = validators(meta, 16);
    for (name, value) in &meta.passthrough {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(header::CONTENT_TYPE, meta.content_type.clone());
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    // Placeholders that `finish` always overwrites: a clone of these headers (every cache hit
    // makes one) then has room for them and never grows.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    headers.insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
    headers
}

/// `ETag` and `Last-Modified`, in a map with room for `capacity` headers.
fn validators(meta: &ObjectMeta, capacity: usize) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(capacity);
    if let Some(etag) = &meta.etag {
        headers.insert(header::ETAG, etag.clone());
    }
    if let Some(modified) = &meta.last_modified_header {
        headers.insert(header::LAST_MODIFIED, modified.clone());
    }
    headers
}

/// Adds what depends on the request: caching, `X-Cache`, and the sandbox for active content.
fn finish(
    settings: &ResponseSettings,
    permit: &Permit,
    meta: &ObjectMeta,
    status: StatusCode,
    mut headers: HeaderMap,
    cache: CacheStatus,
    body: Body,
) -> Response<Body> {
    headers.insert(header::CACHE_CONTROL, cache_control(settings, permit));
    headers.insert(X_CACHE.clone(), cache.header());
    if status != StatusCode::NOT_MODIFIED && meta.active && !permit.inline_active_content() {
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
    }
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn cache_control(settings: &ResponseSettings, permit: &Permit) -> HeaderValue {
    if let Some(left) = permit.signed_max_age() {
        return HeaderValue::from_str(&format!("private, max-age={left}")).expect("digits");
    }
    if permit.is_public() {
        settings.public_cache_control.clone()
    } else {
        settings.private_cache_control.clone()
    }
}

/// The type to serve: the stored one, or one guessed from the key when S3 has only a generic
/// one. Resolved once per fetched object, not per response.
pub fn resolve_type(stored: Option<&HeaderValue>, key: &str) -> HeaderValue {
    let stored = stored
        .filter(|v| {
            let t = v.to_str().unwrap_or("").trim();
            !t.is_empty() && t != "binary/octet-stream" && t != "application/octet-stream"
        })
        .cloned();
    stored.unwrap_or_else(|| {
        let guess = mime_guess::from_path(key).first_or_octet_stream();
        HeaderValue::from_str(guess.essence_str()).expect("mime types are ASCII")
    })
}

/// Types a browser may run script from when they are opened on our origin.
pub fn is_active(content_type: &HeaderValue) -> bool {
    let Ok(text) = content_type.to_str() else {
        return true;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "text/html"
            | "application/xhtml+xml"
            | "image/svg+xml"
            | "text/xml"
            | "application/xml"
            | "text/xsl"
            | "text/javascript"
            | "application/javascript"
            | "application/x-javascript"
            | "application/ecmascript"
            | "text/ecmascript"
            | "multipart/x-mixed-replace"
    ) || essence.ends_with("+xml")
        || essence.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_types() {
        for t in [
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/javascript",
            "TEXT/HTML",
            "application/atom+xml",
        ] {
            assert!(is_active(&HeaderValue::from_static(t)), "{t}");
        }
        for t in [
            "image/png",
            "application/pdf",
            "text/plain",
            "application/json",
        ] {
            assert!(!is_active(&HeaderValue::from_static(t)), "{t}");
        }
    }
}

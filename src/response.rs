//! Object → response: the allow-listed headers, 304/206 answers, `X-Cache`, caching headers and
//! the headers that keep stored content from running on our origin: only passive types are
//! shown inline; everything else is a sandboxed attachment.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

use mediatype::MediaType;

use crate::policy::{Permit, Read};
use crate::s3::ObjectMeta;
use crate::server::Body;

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

/// A response's `X-Cache` as a label (`-` when it has none).
pub fn cache_label(headers: &http::HeaderMap) -> &'static str {
    match headers.get(&X_CACHE).map(HeaderValue::as_bytes) {
        Some(b"HIT") => "HIT",
        Some(b"MISS") => "MISS",
        Some(b"REVALIDATED") => "REVALIDATED",
        Some(b"STALE") => "STALE",
        Some(b"BYPASS") => "BYPASS",
        _ => "-",
    }
}

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
pub enum Portion {
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
    permit: &Permit<Read>,
    meta: &ObjectMeta,
    part: Portion,
    cache: CacheStatus,
    body: Body,
) -> Response<Body> {
    let (status, headers) = match part {
        Portion::NotModified => {
            let mut headers = validators(meta, 8);
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            (StatusCode::NOT_MODIFIED, headers)
        }
        Portion::Whole => (StatusCode::OK, whole_headers(meta)),
        Portion::Range(first, last) => {
            let mut headers = whole_headers(meta);
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!(
                    "bytes {first}-{last}/{}",
                    meta.size.map_or("*".to_owned(), |size| size.to_string())
                ))
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
    permit: &Permit<Read>,
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
    if let Some(size) = meta.size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
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

/// Adds what depends on the request: caching, `X-Cache`, and the sandbox for any type that is
/// not passive. A 304 carries the sandbox too: a browser merges its headers into the copy it
/// keeps.
fn finish(
    settings: &ResponseSettings,
    permit: &Permit<Read>,
    meta: &ObjectMeta,
    status: StatusCode,
    mut headers: HeaderMap,
    cache: CacheStatus,
    body: Body,
) -> Response<Body> {
    headers.insert(header::CACHE_CONTROL, cache_control(settings, permit));
    headers.insert(X_CACHE.clone(), cache.header());
    if !meta.passive && !permit.inline_active_content() {
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

fn cache_control(settings: &ResponseSettings, permit: &Permit<Read>) -> HeaderValue {
    if let Some(left) = permit.signed_max_age() {
        return HeaderValue::from_str(&format!("private, max-age={left}")).expect("digits");
    }
    if permit.is_public() {
        settings.public_cache_control.clone()
    } else {
        settings.private_cache_control.clone()
    }
}

/// The type to serve and whether it may be shown inline, decided once per fetched object.
///
/// S3's stored type is never trusted: objects reach a bucket by many roads (pre-signed PUTs,
/// other programs, the console). Only a single, well-formed media type on the passive list
/// ([`is_passive`]) is shown inline; anything else is sent as a sandboxed attachment, and a
/// malformed or multi-valued type is replaced by `application/octet-stream`. A missing or
/// generic type (`binary/octet-stream`) is guessed from the key's extension.
pub fn resolve_type<'a>(
    mut stored: impl Iterator<Item = &'a HeaderValue>,
    key: &str,
) -> (HeaderValue, bool) {
    let first = stored.next();
    if stored.next().is_some() {
        return malformed();
    }
    let text = match first.map(HeaderValue::to_str) {
        None => "",
        Some(Ok(text)) => text.trim(),
        Some(Err(_)) => return malformed(),
    };
    let quoted = with_quoted_params(text);
    let text = quoted.as_deref().unwrap_or(text);
    let parsed = if text.is_empty() {
        None
    } else {
        match MediaType::parse(text) {
            Ok(media) if !is_generic(&media) => Some(media),
            Ok(_) => None,
            Err(_) => return malformed(),
        }
    };
    match (parsed, first) {
        (Some(media), Some(_)) if quoted.is_some() => (
            HeaderValue::from_str(text).expect("from a header value"),
            is_passive(&media),
        ),
        (Some(media), Some(value)) => (value.clone(), is_passive(&media)),
        _ => {
            let guess = mime_guess::from_path(key).first_or_octet_stream();
            let passive = MediaType::parse(guess.essence_str()).is_ok_and(|m| is_passive(&m));
            let value = HeaderValue::from_str(guess.essence_str()).expect("mime types are ASCII");
            (value, passive)
        }
    }
}

/// A type that is no media type only because a parameter value holds commas unquoted, with
/// them quoted: `video/webm;codecs=vp8,opus` (as browsers' `MediaRecorder` names what it
/// records, and `fetch` uploads it) becomes `video/webm;codecs="vp8,opus"`, which browsers read
/// as `video/webm` too. `None` for a type that parses as it is, and for anything else: `image/png,
/// text/html` and `text/plain; charset=utf-8, text/html` stay two types.
pub fn with_quoted_params(text: &str) -> Option<String> {
    if MediaType::parse(text).is_ok() {
        return None;
    }
    let (essence, params) = text.split_once(';')?;
    let mut fixed = essence.trim().to_owned();
    MediaType::parse(&fixed).ok()?;
    for param in params.split(';') {
        let (name, value) = param.split_once('=')?;
        let value = value.trim();
        // A value naming a type (`charset=utf-8, text/html`) is a second type, not a list.
        if value.is_empty() || value.contains(['"', '\\', '/']) {
            return None;
        }
        fixed.push(';');
        fixed.push_str(name.trim());
        fixed.push('=');
        if value.contains(',') {
            fixed.push('"');
            fixed.push_str(value);
            fixed.push('"');
        } else {
            fixed.push_str(value);
        }
    }
    MediaType::parse(&fixed).ok()?;
    Some(fixed)
}

fn malformed() -> (HeaderValue, bool) {
    (HeaderValue::from_static("application/octet-stream"), false)
}

/// The placeholder types S3 stores when a writer named none.
fn is_generic(media: &MediaType<'_>) -> bool {
    let (ty, subty) = (media.ty.as_str(), media.subty.as_str());
    media.suffix.is_none()
        && subty.eq_ignore_ascii_case("octet-stream")
        && (ty.eq_ignore_ascii_case("binary") || ty.eq_ignore_ascii_case("application"))
}

/// Raster images a browser shows as pictures (SVG is a document that can hold script).
const PASSIVE_IMAGES: &[&str] = &[
    "png",
    "apng",
    "jpeg",
    "pjpeg",
    "jpg",
    "gif",
    "webp",
    "avif",
    "bmp",
    "x-ms-bmp",
    "x-icon",
    "vnd.microsoft.icon",
    "tiff",
    "heic",
    "heif",
    "jxl",
];

/// Types a browser shows or plays without running anything from them on our origin: raster
/// images, audio, video, `text/plain`, `text/csv`, `application/json`, PDF (shown by the
/// browser's own isolated viewer) and `application/octet-stream` (downloaded). With
/// `nosniff` on every answer, a browser keeps to the declared type.
pub fn is_passive(media: &MediaType<'_>) -> bool {
    if media.suffix.is_some() {
        return false;
    }
    let (ty, subty) = (
        media.ty.as_str().to_ascii_lowercase(),
        media.subty.as_str().to_ascii_lowercase(),
    );
    match ty.as_str() {
        "image" => PASSIVE_IMAGES.contains(&subty.as_str()),
        "audio" | "video" => subty != "*",
        "text" => matches!(subty.as_str(), "plain" | "csv"),
        "application" => matches!(subty.as_str(), "pdf" | "json" | "octet-stream"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(stored: &[&str], key: &str) -> (String, bool) {
        let values: Vec<HeaderValue> = stored
            .iter()
            .map(|s| HeaderValue::from_str(s).unwrap())
            .collect();
        let (value, passive) = resolve_type(values.iter(), key);
        (value.to_str().unwrap().to_owned(), passive)
    }

    #[test]
    fn only_passive_types_are_inline() {
        for t in [
            "image/png",
            "IMAGE/JPEG",
            "text/plain; charset=utf-8",
            "application/pdf",
            "video/mp4",
            "audio/mpeg",
            "application/json",
        ] {
            assert_eq!(resolve(&[t], "a.bin"), (t.to_owned(), true), "{t}");
        }
        for t in [
            "text/html",
            "image/svg+xml",
            "text/xsl",
            "application/xslt+xml",
            "multipart/x-mixed-replace; boundary=x",
            "application/vnd.acme+xml",
            "application/javascript",
            "video/vnd.acme+xml",
            "text/xml",
            "application/x-shockwave-flash",
        ] {
            assert_eq!(resolve(&[t], "a.png"), (t.to_owned(), false), "{t}");
        }
    }

    #[test]
    fn malformed_and_multi_valued_types_are_octet_stream_attachments() {
        let octet = ("application/octet-stream".to_owned(), false);
        for t in [
            "text/plain, text/html",
            "image/png,text/html",
            "text/plain; charset=utf-8, text/html",
            "text/plain;text/html",
            "text/ html",
            "text",
            ";",
            "text/plain; charset",
        ] {
            assert_eq!(resolve(&[t], "a.png"), octet, "{t}");
        }
        assert_eq!(resolve(&["text/plain", "text/html"], "a.txt"), octet);
        let obs = HeaderValue::from_bytes(b"text/plain\xff").unwrap();
        assert!(!resolve_type(std::iter::once(&obs), "a.txt").1);
    }

    #[test]
    fn commas_left_unquoted_in_a_parameter_are_quoted() {
        for (stored, served, passive) in [
            (
                "video/webm;codecs=vp8,opus",
                "video/webm;codecs=\"vp8,opus\"",
                true,
            ),
            (
                "video/x-matroska; codecs=avc1,opus",
                "video/x-matroska;codecs=\"avc1,opus\"",
                true,
            ),
            (
                "audio/webm;rate=48000;codecs=opus,vorbis",
                "audio/webm;rate=48000;codecs=\"opus,vorbis\"",
                true,
            ),
            ("text/html;x=a,b", "text/html;x=\"a,b\"", false),
        ] {
            assert_eq!(
                resolve(&[stored], "a.bin"),
                (served.to_owned(), passive),
                "{stored}"
            );
            assert_eq!(with_quoted_params(stored).as_deref(), Some(served));
        }
        for t in [
            "video/webm;codecs=\"vp8,opus\"",
            "video/webm, text/html",
            "image/png;x=a,text/html",
            "video/webm;codecs=vp8,\"opus\"",
            "video/webm;codecs",
            "video/webm;codecs=",
        ] {
            assert_eq!(with_quoted_params(t), None, "{t}");
        }
    }

    #[test]
    fn missing_and_generic_types_are_guessed_from_the_key() {
        assert_eq!(resolve(&[], "a.png"), ("image/png".to_owned(), true));
        assert_eq!(resolve(&[""], "a.html"), ("text/html".to_owned(), false));
        assert_eq!(
            resolve(&["binary/octet-stream"], "a.svg"),
            ("image/svg+xml".to_owned(), false)
        );
        assert_eq!(
            resolve(&["application/octet-stream"], "noext"),
            ("application/octet-stream".to_owned(), true)
        );
    }
}

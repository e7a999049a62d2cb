//! Turns a raw request into a typed route: the bucket alias, the decoded and validated key, and
//! the action with what it needs (a read's byte range and conditional headers). Anything
//! malformed becomes a 400 here, before any token is looked at or any S3 request is made.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Method, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::config::is_valid_alias;
use crate::error::ProxyError;

/// Longest key S3 accepts, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;

/// An object key: percent-decoded once, valid UTF-8, 1–1024 bytes, no control characters and
/// no empty, `.` or `..` segments. The key that is authorized is exactly the key that is signed.
/// Shared, so the copies a request makes (its permit, the cache) cost no allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Percent-encoding that does not decode (a bare `%`, `%zz`).
    #[error("malformed percent-encoding")]
    BadEncoding,
    /// The decoded bytes are not UTF-8.
    #[error("key is not valid UTF-8")]
    NotUtf8,
    /// Empty, or longer than 1024 bytes (with the bucket's prefix, in S3).
    #[error("key must be 1 to 1024 bytes long, the bucket's prefix included")]
    Length,
    /// A control character.
    #[error("key contains a control character")]
    ControlCharacter,
    /// An empty, `.` or `..` segment.
    #[error("key contains an empty, '.' or '..' path segment")]
    Segment,
}

impl Key {
    /// Validates an already-decoded key.
    pub fn parse(decoded: &str) -> Result<Key, KeyError> {
        if decoded.is_empty() || decoded.len() > MAX_KEY_LEN {
            return Err(KeyError::Length);
        }
        if decoded.chars().any(char::is_control) {
            return Err(KeyError::ControlCharacter);
        }
        if decoded
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(KeyError::Segment);
        }
        Ok(Key(Arc::from(decoded)))
    }

    /// Decodes the raw (still percent-encoded) path after the bucket segment, exactly once.
    pub fn from_path(raw: &str) -> Result<Key, KeyError> {
        if !is_well_formed_percent(raw) {
            return Err(KeyError::BadEncoding);
        }
        let decoded = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| KeyError::NotUtf8)?;
        Key::parse(&decoded)
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as it appears in a URL path: percent-encoded, `/` kept.
    pub fn encoded(&self) -> String {
        encode_path(&self.0).to_string()
    }
}

/// Characters kept as they are in a URL path (ours, or S3's): RFC 3986's unreserved ones and
/// `/`. S3 wants everything else percent-encoded, `+` and space included.
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// `path` percent-encoded for a URL path, `/` kept.
pub fn encode_path(path: &str) -> impl fmt::Display + '_ {
    utf8_percent_encode(path, PATH_KEEP)
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every `%` is followed by two hex digits.
fn is_well_formed_percent(raw: &str) -> bool {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() {
                return false;
            }
            if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// One byte range as the client wrote it, before the object's length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-last`
    FromTo(u64, u64),
    /// `bytes=first-`
    From(u64),
    /// `bytes=-length`: the last `length` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The inclusive byte positions within an object of `len` bytes, or `None` when the range is
    /// unsatisfiable.
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::FromTo(first, last) if first < len => Some((first, last.min(len - 1))),
            ByteRange::From(first) if first < len => Some((first, len - 1)),
            ByteRange::Suffix(n) if n > 0 && len > 0 => Some((len.saturating_sub(n), len - 1)),
            _ => None,
        }
    }

    /// The `Range` header value that asks S3 for exactly this range.
    pub fn header_value(self) -> String {
        match self {
            ByteRange::FromTo(a, b) => format!("bytes={a}-{b}"),
            ByteRange::From(a) => format!("bytes={a}-"),
            ByteRange::Suffix(n) => format!("bytes=-{n}"),
        }
    }
}

/// Parses a `Range` header. Only a single, well-formed byte range counts: multiple ranges and
/// anything malformed are ignored (RFC 9110 §14.2 lets a server ignore Range), which serves the
/// whole object.
pub fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => number(last).map(ByteRange::Suffix),
        (false, true) => number(first).map(ByteRange::From),
        (false, false) => {
            let (a, b) = (number(first)?, number(last)?);
            (a <= b).then_some(ByteRange::FromTo(a, b))
        }
        (true, true) => None,
    }
}

/// `If-None-Match` / `If-Modified-Since`, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditionals {
    /// `If-None-Match`: `None` when absent; an empty list when it names no tag (`""`, `,`),
    /// which matches nothing and still turns `If-Modified-Since` off (RFC 9110 §13.1.3).
    pub if_none_match: Option<IfNoneMatch>,
    /// `If-Modified-Since`, used only when `If-None-Match` is absent.
    pub if_modified_since: Option<SystemTime>,
    /// `If-Range`: the range applies only while the object still has this validator.
    pub if_range: Option<String>,
}

/// The entity tags of `If-None-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfNoneMatch {
    /// `*`
    Any,
    /// The opaque tags (quotes and `W/` removed) for weak comparison.
    Tags(Vec<String>),
}

/// The opaque part of an entity tag, for weak comparison: `W/"x"` and `"x"` both give `x`.
pub fn opaque_tag(tag: &str) -> &str {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.trim_matches('"')
}

impl Conditionals {
    /// Reads the conditional headers of a request.
    pub fn from_headers(headers: &HeaderMap) -> Conditionals {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let if_none_match = text(header::IF_NONE_MATCH).map(|v| {
            if v.trim() == "*" {
                IfNoneMatch::Any
            } else {
                IfNoneMatch::Tags(
                    v.split(',')
                        .map(opaque_tag)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            }
        });
        let if_modified_since =
            text(header::IF_MODIFIED_SINCE).and_then(|v| httpdate::parse_http_date(v.trim()).ok());
        let if_range = text(header::IF_RANGE).map(str::to_owned);
        Conditionals {
            if_none_match,
            if_modified_since,
            if_range,
        }
    }

    /// True when the client's copy is current (answer 304), per RFC 9110 §13.2.2.
    pub fn not_modified(&self, etag: Option<&str>, last_modified: Option<SystemTime>) -> bool {
        match &self.if_none_match {
            Some(IfNoneMatch::Any) => etag.is_some() || last_modified.is_some(),
            Some(IfNoneMatch::Tags(tags)) => {
                etag.is_some_and(|e| tags.iter().any(|t| t == opaque_tag(e)))
            }
            None => match (self.if_modified_since, last_modified) {
                (Some(since), Some(modified)) => truncate_to_secs(modified) <= since,
                _ => false,
            },
        }
    }

    /// True when a `Range` should be honoured: no `If-Range`, or `If-Range` names the current
    /// strong entity tag or the exact last-modified date.
    pub fn range_applies(&self, etag: Option<&str>, last_modified: Option<SystemTime>) -> bool {
        let Some(cond) = self.if_range.as_deref().map(str::trim) else {
            return true;
        };
        if cond.starts_with('"') {
            return etag.is_some_and(|e| !e.starts_with("W/") && e == cond);
        }
        match (httpdate::parse_http_date(cond), last_modified) {
            (Ok(date), Some(modified)) => truncate_to_secs(modified) == date,
            _ => false,
        }
    }
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// What a request asks for, decided once: everything after routing acts on this.
#[derive(Debug)]
pub enum Route {
    /// `GET /_health`
    Health,
    /// `POST /_sign`
    Sign,
    /// `OPTIONS` on any path: a CORS preflight.
    Preflight,
    /// `GET`/`HEAD`/`PUT`/`DELETE /{bucket}/{key}`
    Object(ObjectRoute),
    /// `POST /{bucket}/{prefix}/`: upload under a generated key.
    Create {
        /// Bucket alias.
        alias: String,
        /// The prefix the new key goes under (no trailing slash), or `None` for the bucket root.
        prefix: Option<Key>,
    },
}

impl Route {
    /// The route's name in metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Sign => "sign",
            Route::Preflight => "preflight",
            Route::Object(object) => match object.action {
                ObjectAction::Read(_) => "object",
                ObjectAction::Write => "upload",
                ObjectAction::Delete => "delete",
            },
            Route::Create { .. } => "upload",
        }
    }

    /// Whether the request changes what is stored (and so needs the CSRF check).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Route::Create { .. }
                | Route::Object(ObjectRoute {
                    action: ObjectAction::Write | ObjectAction::Delete,
                    ..
                })
        )
    }
}

/// A request for one object.
#[derive(Debug)]
pub struct ObjectRoute {
    /// Bucket alias from the first path segment.
    pub alias: String,
    /// The decoded key.
    pub key: Key,
    /// What to do with it.
    pub action: ObjectAction,
}

/// What a request does to one object.
#[derive(Debug)]
pub enum ObjectAction {
    /// `GET` or `HEAD`.
    Read(ReadRequest),
    /// `PUT`.
    Write,
    /// `DELETE`.
    Delete,
}

/// A read, with what the client asked for besides the object.
#[derive(Debug, Clone, Default)]
pub struct ReadRequest {
    /// `HEAD`: the headers only.
    pub head: bool,
    /// A single byte range (never for HEAD, which describes the whole object).
    pub range: Option<ByteRange>,
    /// `If-None-Match`, `If-Modified-Since`, `If-Range`.
    pub conditionals: Conditionals,
}

impl ReadRequest {
    fn from_headers(head: bool, headers: &HeaderMap) -> ReadRequest {
        ReadRequest {
            head,
            range: (!head)
                .then(|| headers.get(header::RANGE))
                .flatten()
                .and_then(|v| parse_range(v.to_str().ok()?)),
            conditionals: Conditionals::from_headers(headers),
        }
    }
}

/// Routes a request by method, raw path and (for reads) the range and conditional headers.
/// Query strings never influence routing.
pub fn route(method: &Method, path: &str, headers: &HeaderMap) -> Result<Route, ProxyError> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| ProxyError::BadRequest("path must start with '/'".into()))?;
    if *method == Method::OPTIONS {
        return Ok(Route::Preflight);
    }
    if rest.starts_with('_') {
        return match (method, rest) {
            (&Method::GET | &Method::HEAD, "_health") => Ok(Route::Health),
            (&Method::POST, "_sign") => Ok(Route::Sign),
            (_, "_health" | "_sign") => Err(ProxyError::MethodNotAllowed),
            _ => Err(ProxyError::NotFound),
        };
    }
    // `/{alias}` alone (like `/favicon.ico`) names no object at all.
    let Some((alias, raw_key)) = rest.split_once('/') else {
        return Err(ProxyError::NotFound);
    };
    if !is_valid_alias(alias) {
        return Err(ProxyError::NotFound);
    }
    let alias = alias.to_owned();
    if *method == Method::POST {
        let raw_prefix = raw_key.strip_suffix('/').ok_or_else(|| {
            ProxyError::BadRequest("POST uploads go to a prefix ending in '/'".into())
        })?;
        let prefix = match raw_prefix {
            "" => None,
            p => Some(Key::from_path(p).map_err(ProxyError::BadKey)?),
        };
        return Ok(Route::Create { alias, prefix });
    }
    let action = match *method {
        Method::GET => ObjectAction::Read(ReadRequest::from_headers(false, headers)),
        Method::HEAD => ObjectAction::Read(ReadRequest::from_headers(true, headers)),
        Method::PUT => ObjectAction::Write,
        Method::DELETE => ObjectAction::Delete,
        _ => return Err(ProxyError::MethodNotAllowed),
    };
    let key = Key::from_path(raw_key).map_err(ProxyError::BadKey)?;
    Ok(Route::Object(ObjectRoute { alias, key, action }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_decode_once_and_refuse_hostile_paths() {
        assert_eq!(Key::from_path("a%20b+c").unwrap().as_str(), "a b+c");
        assert_eq!(Key::from_path("%252e%252e").unwrap().as_str(), "%2e%2e");
        assert_eq!(Key::from_path("a\\..\\b").unwrap().as_str(), "a\\..\\b");
        for bad in [
            "..",
            "%2e%2e",
            "a/%2E%2E/b",
            "a%2F..%2Fb",
            "a//b",
            "/a",
            "a/",
            ".",
            "a/./b",
        ] {
            assert_eq!(Key::from_path(bad), Err(KeyError::Segment), "{bad}");
        }
        assert_eq!(Key::from_path("a%00b"), Err(KeyError::ControlCharacter));
        assert_eq!(Key::from_path("a%0Ab"), Err(KeyError::ControlCharacter));
        assert_eq!(Key::from_path("a%7Fb"), Err(KeyError::ControlCharacter));
        assert_eq!(Key::from_path("a%C2%85b"), Err(KeyError::ControlCharacter));
        assert_eq!(Key::from_path("%"), Err(KeyError::BadEncoding));
        assert_eq!(Key::from_path("a%2"), Err(KeyError::BadEncoding));
        assert_eq!(Key::from_path("a%zz"), Err(KeyError::BadEncoding));
        assert_eq!(Key::from_path("%c0%ae"), Err(KeyError::NotUtf8));
        assert_eq!(Key::from_path(""), Err(KeyError::Length));
        assert_eq!(Key::from_path(&"a".repeat(1025)), Err(KeyError::Length));
        assert!(Key::from_path(&"a".repeat(1024)).is_ok());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99"), Some(ByteRange::FromTo(0, 99)));
        assert_eq!(parse_range("bytes=100-"), Some(ByteRange::From(100)));
        assert_eq!(parse_range("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(parse_range("bytes=0-1,4-5"), None);
        assert_eq!(parse_range("bytes=5-1"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=-"), None);
        assert_eq!(parse_range("bytes=+1-2"), None);
        assert_eq!(ByteRange::FromTo(0, 99).resolve(10), Some((0, 9)));
        assert_eq!(ByteRange::From(10).resolve(10), None);
        assert_eq!(ByteRange::Suffix(20).resolve(10), Some((0, 9)));
        assert_eq!(ByteRange::Suffix(0).resolve(10), None);
        assert_eq!(ByteRange::Suffix(1).resolve(0), None);
    }

    #[test]
    fn routes() {
        let r = route(&Method::GET, "/employees/a/b.jpg", &HeaderMap::new()).unwrap();
        assert!(
            matches!(r, Route::Object(o) if o.alias == "employees" && o.key.as_str() == "a/b.jpg")
        );
        assert!(matches!(
            route(&Method::GET, "/_health", &HeaderMap::new()),
            Ok(Route::Health)
        ));
        assert!(matches!(
            route(&Method::POST, "/_sign", &HeaderMap::new()),
            Ok(Route::Sign)
        ));
        assert!(matches!(
            route(&Method::GET, "/_other", &HeaderMap::new()),
            Err(ProxyError::NotFound)
        ));
        assert!(matches!(
            route(&Method::GET, "/Bad/x", &HeaderMap::new()),
            Err(ProxyError::NotFound)
        ));
        assert!(matches!(
            route(&Method::GET, "/employees", &HeaderMap::new()),
            Err(ProxyError::NotFound)
        ));
        assert!(matches!(
            route(&Method::GET, "/employees/", &HeaderMap::new()),
            Err(ProxyError::BadKey(_))
        ));
        assert!(matches!(
            route(&Method::POST, "/employees/up/", &HeaderMap::new()),
            Ok(Route::Create { prefix: Some(p), .. }) if p.as_str() == "up"
        ));
        assert!(matches!(
            route(&Method::PATCH, "/employees/a", &HeaderMap::new()),
            Err(ProxyError::MethodNotAllowed)
        ));
    }

    proptest! {
        /// Whatever the input, an accepted key never has a segment that walks up or sideways.
        #[test]
        fn accepted_keys_are_clean(raw in "[a-z%./\\\\0-9A-F]{0,40}") {
            if let Ok(key) = Key::from_path(&raw) {
                prop_assert!(key.as_str().split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                prop_assert!(!key.as_str().chars().any(char::is_control));
            }
        }

        /// Encoding any valid key and decoding it again gives the same key.
        #[test]
        fn decoding_inverts_encoding(segments in proptest::collection::vec("[^/\\x00-\\x1f\\x7f]{1,8}", 1..5)) {
            let key = segments.join("/");
            prop_assume!(Key::parse(&key).is_ok());
            let encoded = percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
                .replace("%2F", "/");
            let decoded = Key::from_path(&encoded).unwrap();
            prop_assert_eq!(decoded.as_str(), key.as_str());
        }

        /// A resolved range always lies inside the object.
        #[test]
        fn resolved_ranges_fit(a in 0u64..200, b in 0u64..200, len in 0u64..150) {
            for r in [ByteRange::FromTo(a, a + b), ByteRange::From(a), ByteRange::Suffix(b)] {
                if let Some((first, last)) = r.resolve(len) {
                    prop_assert!(first <= last && last < len);
                }
            }
        }
    }
}

//! Where tokens come from: `Authorization: Bearer`, a cookie, a query parameter, in that order.

use http::{HeaderMap, header};

/// The tokens a request carries, in the order they are tried.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found<'a> {
    /// Each token found, with the source it came from.
    pub tokens: Vec<(Source, &'a str)>,
    /// A malformed `Authorization` header (another scheme is not malformed: it is ignored).
    pub malformed: bool,
}

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `Authorization: Bearer`
    Header,
    /// The configured cookie.
    Cookie,
    /// The configured query parameter.
    Query,
}

impl Source {
    /// True when the browser attaches this credential on its own, so a cross-site page can make
    /// it travel with a request (which is why writes authenticated this way need a CSRF check).
    pub fn is_ambient(self) -> bool {
        self == Source::Cookie
    }
}

/// Collects every token the request carries. `cookie` and `query_param` are the configured
/// names (`""` = off); `query` is the raw query string.
pub fn find_tokens<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    cookie: &str,
    query_param: &str,
) -> Found<'a> {
    let mut found = Found::default();
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(value) = authorization.next() {
        match value.to_str().ok().and_then(bearer) {
            Some(token) => found.tokens.push((Source::Header, token)),
            None => {
                // Only `Bearer` is ours; a value that does not even parse is refused.
                found.malformed = value
                    .to_str()
                    .map(|v| v.trim().eq_ignore_ascii_case("bearer") || v.trim().is_empty())
                    .unwrap_or(true);
            }
        }
        if authorization.next().is_some() {
            found.malformed = true;
        }
    }
    if !cookie.is_empty() {
        for value in headers.get_all(header::COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            for pair in value.split(';') {
                if let Some((name, token)) = pair.trim().split_once('=')
                    && name.trim() == cookie
                {
                    let token = token.trim().trim_matches('"');
                    if !token.is_empty() {
                        found.tokens.push((Source::Cookie, token));
                    }
                }
            }
        }
    }
    if !query_param.is_empty()
        && let Some(query) = query
    {
        for pair in query.split('&') {
            if let Some((name, token)) = pair.split_once('=')
                && name == query_param
                && !token.is_empty()
            {
                found.tokens.push((Source::Query, token));
            }
        }
    }
    found
}

/// The `exp` and `sig` of a proxy-signed URL, and the `ct` and `acl` a PUT URL fixes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignedParams {
    /// Expiry, Unix seconds.
    pub expires: u64,
    /// base64url HMAC.
    pub sig: String,
    /// The upload's `Content-Type` (PUT URLs).
    pub content_type: Option<String>,
    /// The upload's canned ACL (PUT URLs).
    pub acl: Option<String>,
}

/// `exp`/`sig` query parameters that are incomplete, repeated or malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed signed-URL parameters")]
pub struct MalformedSignature;

/// Finds `exp` and `sig` in a query string: `Ok(None)` when neither is there, an error when
/// they are incomplete, repeated or malformed.
pub fn find_signature(query: Option<&str>) -> Result<Option<SignedParams>, MalformedSignature> {
    let Some(query) = query else { return Ok(None) };
    let (mut exp, mut sig, mut content_type, mut acl) = (None, None, None, None);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*name {
            "exp" => &mut exp,
            "sig" => &mut sig,
            "ct" => &mut content_type,
            "acl" => &mut acl,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(MalformedSignature);
        }
    }
    match (exp, sig) {
        (None, None) => Ok(None),
        (Some(exp), Some(sig)) => {
            // Only the digits the signer wrote: no sign, no leading zeros, so one capability
            // has one URL.
            let canonical = !exp.is_empty()
                && exp.bytes().all(|b| b.is_ascii_digit())
                && (exp == "0" || !exp.starts_with('0'));
            if !canonical {
                return Err(MalformedSignature);
            }
            let expires = exp.parse().map_err(|_| MalformedSignature)?;
            Ok(Some(SignedParams {
                expires,
                sig,
                content_type,
                acl,
            }))
        }
        _ => Err(MalformedSignature),
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn tokens_in_order_from_every_source() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer aaa"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("x=1; session=bbb"));
        let found = find_tokens(&h, Some("t=ccc&x=y"), "session", "t");
        assert_eq!(
            found.tokens,
            vec![
                (Source::Header, "aaa"),
                (Source::Cookie, "bbb"),
                (Source::Query, "ccc")
            ]
        );
        assert!(!found.malformed);
        // query tokens only when enabled
        assert_eq!(
            find_tokens(&h, Some("t=ccc"), "session", "").tokens.len(),
            2
        );
    }

    #[test]
    fn signatures_in_queries() {
        assert_eq!(find_signature(None), Ok(None));
        assert_eq!(find_signature(Some("a=b")), Ok(None));
        assert_eq!(
            find_signature(Some("exp=10&sig=abc")),
            Ok(Some(SignedParams {
                expires: 10,
                sig: "abc".into(),
                ..SignedParams::default()
            }))
        );
        assert_eq!(
            find_signature(Some("exp=10&sig=abc&ct=image%2Fsvg%2Bxml&acl=private")),
            Ok(Some(SignedParams {
                expires: 10,
                sig: "abc".into(),
                content_type: Some("image/svg+xml".into()),
                acl: Some("private".into()),
            }))
        );
        assert!(find_signature(Some("exp=10&sig=abc&acl=a&acl=b")).is_err());
        assert!(find_signature(Some("exp=10")).is_err());
        assert!(find_signature(Some("sig=abc")).is_err());
        assert!(find_signature(Some("exp=x&sig=abc")).is_err());
        for exp in ["+10", "010", "%2B10", "1%200", ""] {
            let query = format!("exp={exp}&sig=abc");
            assert!(find_signature(Some(&query)).is_err(), "{exp}");
        }
        assert!(find_signature(Some("exp=10&sig=abc&exp=11")).is_err());
    }

    #[test]
    fn other_schemes_are_ignored_and_broken_ones_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        let found = find_tokens(&h, None, "session", "");
        assert!(found.tokens.is_empty() && !found.malformed);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(find_tokens(&h, None, "session", "").malformed);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(find_tokens(&h, None, "session", "").malformed);
    }
}

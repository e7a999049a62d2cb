//! The fuzz targets' entry points (fuzz/src/bin/*.rs) and their properties: one function per
//! parser of what clients or operators send, checking its property with `assert!` (a panic is
//! what AFL reports). `cargo test` replays fuzz/seeds and fuzz/regressions through them.
//!
//! Inputs are text where they can be, so that seeds and crashes read as what they test: lines
//! of fields, then `Name: value` headers.

use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use percent_encoding::percent_decode_str;

use crate::auth::{SignedParams, Source, find_signature, find_tokens};
use crate::config::{Acl, Config, ConfigError, Environment, Permission, is_valid_alias};
use crate::error::ProxyError;
use crate::policy::{Policy, UploadTerms};
use crate::route::{self, ByteRange, Conditionals, IfNoneMatch, Key, MAX_KEY_LEN, Route};
use crate::server::framing::{FrameScan, FramingWatch};
use crate::urls::{UrlError, UrlSigner};

/// `framing`: the framing watch over any byte stream, however the reads cut it. Input: a first
/// line `MODE MAX_HEAD CUT…` (MODE `new`, `http1` or `http2`; default `new 8192`), then the
/// stream. Properties:
/// - fed whole or cut at each CUT, a [`FramingWatch`] gives the same verdicts, heads count,
///   HTTP/2 and awaiting-head answers and progress; a [`FrameScan`] sees the same and ends in
///   the same state;
/// - where httparse (hyper's parser) reads a complete request head at the stream's start, the
///   watch ends the head at the same byte and calls it ambiguous exactly when httparse's
///   headers hold two `Content-Length`s, a `Content-Length` and a `Transfer-Encoding`, or a
///   `Content-Length` that is no u64 to Rust's `parse` (which takes a leading `+`: hyper
///   refuses that head with 400). So a head with one `Content-Length` that fits a u64, with
///   `Transfer-Encoding` alone, or with neither, passes; one that could be framed two ways is
///   refused.
pub fn framing(data: &[u8]) {
    let (settings, stream) = data.split_at(memchr::memchr(b'\n', data).map_or(0, |i| i + 1));
    let settings = String::from_utf8_lossy(settings);
    let mut words = settings.split_ascii_whitespace();
    let mode = words.next().unwrap_or("new");
    let max_head = words.next().and_then(|w| w.parse().ok()).unwrap_or(8192);
    let cuts: Vec<usize> = words.filter_map(|w| w.parse().ok()).collect();
    let watch = || match mode {
        "http1" => FramingWatch::http1(max_head),
        "http2" => FramingWatch::http2(max_head),
        _ => FramingWatch::new(max_head),
    };
    let parts = cut(stream, &cuts);
    assert_eq!(answers(watch(), &parts), answers(watch(), &[stream]));
    assert_eq!(scan(&parts), scan(&[stream]));
    agrees_with_httparse(stream);
}

/// `bytes` cut at each of `cuts` (taken modulo its length + 1).
pub(crate) fn cut<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut from = 0;
    for at in cuts {
        parts.push(&bytes[from..at]);
        from = at;
    }
    parts.push(&bytes[from..]);
    parts
}

/// What a watch tells its connection after reading some bytes.
#[derive(Debug, PartialEq)]
struct Answers {
    verdicts: Vec<bool>,
    heads: u64,
    http2: bool,
    awaiting_head: bool,
    progress: bool,
}

fn answers(mut watch: FramingWatch, parts: &[&[u8]]) -> Answers {
    let mut progress = false;
    for part in parts {
        progress |= watch.feed(part);
    }
    let (heads, http2, awaiting_head) = (watch.heads(), watch.is_http2(), watch.awaiting_head());
    // A verdict per head and one past them (which an HTTP/1 connection refuses: there is none).
    let verdicts = (0..=heads.min(1000))
        .map(|_| watch.next_is_ambiguous())
        .collect();
    Answers {
        verdicts,
        heads,
        http2,
        awaiting_head,
        progress,
    }
}

/// What a frame scanner saw of `parts` (progress, heads), and its state after them.
fn scan(parts: &[&[u8]]) -> (bool, u64, FrameScan) {
    let mut scan = FrameScan::default();
    let (mut progress, mut heads) = (false, 0);
    for part in parts {
        let seen = scan.scan(part);
        progress |= seen.progress;
        heads += seen.heads;
    }
    (progress, heads, scan)
}

fn agrees_with_httparse(stream: &[u8]) {
    // hyper's default limit on the number of headers.
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(end)) = request.parse(stream) else {
        return;
    };
    let named = |name: &str| {
        (request.headers.iter())
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect::<Vec<_>>()
    };
    let (lengths, encodings) = (named("content-length"), named("transfer-encoding"));
    let length = match lengths[..] {
        [value] => {
            (std::str::from_utf8(value.trim_ascii()).ok()).and_then(|v| v.parse::<u64>().ok())
        }
        _ => None,
    };
    let ambiguous = match lengths.len() {
        0 => false,
        1 => !encodings.is_empty() || length.is_none(),
        _ => true,
    };
    let mut watch = FramingWatch::new(usize::MAX);
    watch.feed(&stream[..end - 1]);
    assert_eq!(
        watch.heads(),
        0,
        "the head ends only where httparse ends it"
    );
    watch.feed(&stream[end - 1..end]);
    assert_eq!(watch.heads(), 1, "the head ends where httparse ends it");
    assert_eq!(watch.next_is_ambiguous(), ambiguous);
    if let (false, Some(n)) = (ambiguous, length) {
        assert_eq!(watch.awaiting_head(), n == 0, "a body of {n} bytes follows");
    }
}

/// `key`: object keys from any text, taken both as the raw path after the bucket segment and
/// as an already decoded key. Properties: an accepted key keeps the rules [`Key`] documents
/// (1–1024 bytes, no control character, no empty, `.` or `..` segment) and comes back from
/// `Key::from_path(&key.encoded())`; a raw path is decoded exactly once; `GET /files/{raw}`
/// routes to the key `Key::from_path` gives, or fails as it does; [`route::encode_path`] writes
/// only unreserved characters, `/` and `%XX`, and decodes back to its input.
pub fn key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let from_path = Key::from_path(&text);
    if let Ok(key) = &from_path {
        keeps_the_rules(key);
        let decoded = percent_decode_str(&text).decode_utf8().ok();
        assert_eq!(
            decoded.as_deref(),
            Some(key.as_str()),
            "decoded exactly once"
        );
    }
    if let Ok(key) = Key::parse(&text) {
        keeps_the_rules(&key);
        assert_eq!(key.as_str(), text);
    }
    match route::route(&Method::GET, &format!("/files/{text}"), &HeaderMap::new()) {
        Ok(Route::Object(object)) => assert_eq!(from_path, Ok(object.key)),
        Err(ProxyError::BadKey(why)) => assert_eq!(from_path, Err(why)),
        other => panic!("GET /files/… routed to {other:?}"),
    }
    let encoded = route::encode_path(&text).to_string();
    assert!(
        (encoded.bytes()).all(|b| b.is_ascii_alphanumeric() || b"-_.~/%".contains(&b)),
        "{encoded}"
    );
    let decoded = percent_decode_str(&encoded).decode_utf8().ok();
    assert_eq!(decoded.as_deref(), Some(&*text));
}

fn keeps_the_rules(key: &Key) {
    let text = key.as_str();
    assert!((1..=MAX_KEY_LEN).contains(&text.len()), "{key:?}");
    assert!(!text.chars().any(char::is_control), "{key:?}");
    assert!(
        text.split('/').all(|s| !matches!(s, "" | "." | "..")),
        "{key:?}"
    );
    assert_eq!(Key::from_path(&key.encoded()).as_ref(), Ok(key));
}

/// `range_conditionals`: `Range` and the conditional headers. Input lines: the object's
/// length, its entity tag (empty: none), its last-modified date (HTTP date, else none), then
/// `Name: value` headers. Properties: a parsed range is written back by
/// [`ByteRange::header_value`] as a header that parses to it again; it resolves exactly when
/// satisfiable, to bytes inside the object (first <= last < length): `a-b` from a to at most
/// b, `a-` from a to the end, `-n` the last n bytes (all of them when fewer);
/// [`route::opaque_tag`] gives a part of its input without surrounding quotes;
/// `If-None-Match` gives no empty tag; `If-Range` is kept as sent.
pub fn range_conditionals(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let len = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
    let etag = lines.next().filter(|l| !l.is_empty());
    let modified = lines.next().and_then(|l| httpdate::parse_http_date(l).ok());
    let fields = fields(lines);
    for &(name, value) in &fields {
        if name.eq_ignore_ascii_case("range") {
            resolves_inside(value, len);
        }
        let tag = route::opaque_tag(value);
        assert!(is_part_of(tag, value) && !tag.starts_with('"') && !tag.ends_with('"'));
    }
    let headers = header_map(&fields);
    let conditionals = Conditionals::from_headers(&headers);
    if let Some(IfNoneMatch::Tags(tags)) = &conditionals.if_none_match {
        assert!(tags.iter().all(|t| !t.is_empty()), "{tags:?}");
    }
    let if_range = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok());
    assert_eq!(conditionals.if_range.as_deref(), if_range);
    conditionals.not_modified(etag, modified);
    conditionals.range_applies(etag, modified);
}

fn resolves_inside(value: &str, len: u64) {
    let Some(range) = route::parse_range(value) else {
        return;
    };
    assert_eq!(route::parse_range(&range.header_value()), Some(range));
    let resolved = range.resolve(len);
    if let Some((first, last)) = resolved {
        assert!(
            first <= last && last < len,
            "{range:?} in {len} bytes: {resolved:?}"
        );
    }
    match range {
        ByteRange::FromTo(from, to) => {
            assert!(from <= to);
            assert_eq!(resolved.is_some(), from < len);
            assert!(resolved.is_none_or(|(first, last)| first == from && last <= to));
        }
        ByteRange::From(from) => {
            assert_eq!(resolved.is_some(), from < len);
            assert!(resolved.is_none_or(|(first, last)| first == from && last == len - 1));
        }
        ByteRange::Suffix(n) => {
            assert_eq!(resolved.is_some(), n > 0 && len > 0);
            let whole_or_n =
                |(first, last): (u64, u64)| last == len - 1 && last - first + 1 == n.min(len);
            assert!(resolved.is_none_or(whole_or_n));
        }
    }
}

/// `tokens`: where tokens and URL signatures are found. Input lines: the cookie name, the
/// query parameter name (empty: off), `?QUERY` (another line: no query), then `Name: value`
/// headers. Properties: every token found is non-empty and a part of what carried it — the
/// first `Authorization` value (without spaces), a `Cookie` value (with the cookie on, within
/// one `;` pair) or the whole value of a `PARAM=` pair of the query (with the parameter on);
/// the header's token comes first, then cookies', then the query's; two `Authorization`
/// headers are malformed, and no header is not. The `exp`/`sig`/`ct`/`acl` found in a query
/// are found again in a query written from them; a query with neither `exp` nor `sig` has no
/// signature.
pub fn tokens(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let (cookie, param) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let query = lines.next().and_then(|l| l.strip_prefix('?'));
    let headers = header_map(&fields(lines));
    let found = find_tokens(&headers, query, cookie, param);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cookies: Vec<&str> = (headers.get_all(header::COOKIE).iter())
        .filter_map(|v| v.to_str().ok())
        .collect();
    for &(source, token) in &found.tokens {
        let carried = match source {
            Source::Header => {
                authorization.is_some_and(|a| is_part_of(token, a)) && !token.contains(' ')
            }
            Source::Cookie => {
                !cookie.is_empty()
                    && cookies.iter().any(|c| is_part_of(token, c))
                    && !token.contains(';')
            }
            Source::Query => query.is_some_and(|q| is_pair_value(token, q, param)),
        };
        assert!(carried && !token.is_empty(), "{source:?} token {token:?}");
    }
    // Source's variants are declared in the order tokens are tried.
    assert!(found.tokens.is_sorted_by_key(|&(source, _)| source as u8));
    let authorizations = headers.get_all(header::AUTHORIZATION).iter().count();
    assert!(!found.malformed || authorizations > 0);
    assert!(authorizations < 2 || found.malformed);
    signature_round_trips(query);
}

/// Whether `token` is the whole value of a `param=` pair of `query`.
fn is_pair_value(token: &str, query: &str, param: &str) -> bool {
    if param.is_empty() || !is_part_of(token, query) {
        return false;
    }
    let start = token.as_ptr() as usize - query.as_ptr() as usize;
    let (before, after) = (&query[..start], &query[start + token.len()..]);
    let pair = &before[before.rfind('&').map_or(0, |i| i + 1)..];
    pair.strip_suffix('=') == Some(param) && (after.is_empty() || after.starts_with('&'))
}

fn signature_round_trips(query: Option<&str>) {
    let signed = match find_signature(query) {
        Ok(Some(signed)) => signed,
        Ok(None) => {
            let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes());
            assert!(
                pairs
                    .into_iter()
                    .all(|(name, _)| name != "exp" && name != "sig")
            );
            return;
        }
        Err(_) => return,
    };
    let mut written = form_urlencoded::Serializer::new(String::new());
    written.append_pair("exp", &signed.expires.to_string());
    written.append_pair("sig", &signed.sig);
    if let Some(content_type) = &signed.content_type {
        written.append_pair("ct", content_type);
    }
    if let Some(acl) = &signed.acl {
        written.append_pair("acl", acl);
    }
    assert_eq!(find_signature(Some(&written.finish())), Ok(Some(signed)));
}

/// `signed_query`: proxy-signed URLs, minted and verified offline. Input lines:
/// `METHOD ALIAS KEY` to sign for, the time (Unix seconds), the PUT terms `ACL CONTENT-TYPE`
/// (each optional), an edit `AT DELETE INSERT` of the minted query, and the
/// `METHOD ALIAS KEY` the edited URL is presented for (default: the first line). Properties:
/// the minted URL routes to the alias and key it was minted for; its query verifies for them,
/// giving back the terms it fixes, until it expires; an edited query that verifies for the
/// presented target names the same method, alias, key, expiry and terms.
pub fn signed_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let Some(minted) = lines.next().and_then(target) else {
        return;
    };
    let now = lines
        .next()
        .and_then(|l| l.parse::<u32>().ok())
        .unwrap_or(0);
    let now = UNIX_EPOCH + Duration::from_secs(now.into());
    let Some(terms) = upload_terms(&minted, lines.next().unwrap_or("")) else {
        return;
    };
    let window = SIGNER.window(now);
    let (method, alias, key) = (minted.method, minted.alias, &minted.key);
    let url = (SIGNER.proxy_url(method, alias, key, terms.as_ref(), window))
        .expect("a secret is configured");
    let (query, signed) = routed_signature(&url, &minted);
    let verify = |at: SystemTime| SIGNER.verify(method, alias, key, &signed, at);
    assert_eq!(verify(now), Ok(terms.clone()), "{url}");
    let expiry = UNIX_EPOCH + Duration::from_secs(signed.expires);
    assert_eq!(verify(expiry), Err(UrlError::Expired), "{url}");
    let edited = edit(query, lines.next().unwrap_or(""));
    let presented = lines
        .next()
        .and_then(target)
        .unwrap_or_else(|| minted.clone());
    let Ok(Some(params)) = find_signature(Some(&edited)) else {
        return;
    };
    let (p, m) = (presented, minted);
    if let Ok(given) = SIGNER.verify(p.method, p.alias, &p.key, &params, now) {
        assert_eq!(
            (p.method, p.alias, p.key, params.expires, given),
            (m.method, m.alias, m.key, signed.expires, terms),
            "{edited} verified"
        );
    }
}

/// The query of a minted `url` and the signature in it, having checked that its path routes
/// to the object it was minted for.
fn routed_signature<'a>(url: &'a str, minted: &Target) -> (&'a str, SignedParams) {
    let (path, query) = url.split_once('?').expect("a signed URL has a query");
    let path = path.strip_prefix(PUBLIC_URL).expect("under the public URL");
    let method = Method::from_bytes(minted.method.as_str().as_bytes()).expect("a method");
    match route::route(&method, path, &HeaderMap::new()) {
        Ok(Route::Object(object)) => {
            let routed = (object.alias.as_str(), &object.key);
            assert_eq!(routed, (minted.alias, &minted.key), "{url}");
        }
        other => panic!("{url} routed to {other:?}"),
    }
    let signed = find_signature(Some(query)).expect("well-formed");
    (query, signed.expect("signed"))
}

/// A signer with two secrets, as `[signing]` loads them: the first signs, both verify.
static SIGNER: LazyLock<UrlSigner> = LazyLock::new(|| {
    let mut config = Config::default();
    config.server.public_url = Some(PUBLIC_URL.to_owned());
    config.secrets.signing_secrets = vec![b"fuzz secret one".to_vec(), b"fuzz secret two".to_vec()];
    UrlSigner::new(&config, &crate::s3::Stores::default())
});

const PUBLIC_URL: &str = "https://files.example.com";

/// What a signed URL is for.
#[derive(Debug, Clone)]
struct Target<'a> {
    method: Permission,
    alias: &'a str,
    key: Key,
}

/// A `METHOD ALIAS KEY` line, with an alias and a key the router would accept.
fn target(line: &str) -> Option<Target<'_>> {
    let (method, rest) = line.split_once(' ')?;
    let (alias, key) = rest.split_once(' ')?;
    let method = match method {
        "GET" => Permission::Get,
        "PUT" => Permission::Put,
        "DELETE" => Permission::Delete,
        _ => return None,
    };
    let key = Key::parse(key).ok()?;
    is_valid_alias(alias).then_some(Target { method, alias, key })
}

/// A PUT's terms from an `ACL CONTENT-TYPE` line, as `POST /_sign` takes them (an empty or
/// unknown ACL: the default; no type: the key's); `None` when the signer would refuse them.
fn upload_terms(target: &Target, line: &str) -> Option<Option<UploadTerms>> {
    if target.method != Permission::Put {
        return Some(None);
    }
    let (acl, content_type) = line.split_once(' ').unwrap_or((line, ""));
    let content_type = Some(content_type).filter(|t| !t.is_empty());
    let terms = UploadTerms::new(
        &target.key,
        content_type,
        Acl::from_client(acl),
        Acl::Private,
    );
    terms.ok().map(Some)
}

/// `query` with `DELETE` bytes from `AT` replaced by `INSERT`, for a line `AT DELETE INSERT`
/// (positions within the query; a minted query is ASCII, so every position is a boundary).
fn edit(query: &str, line: &str) -> String {
    let mut words = line.splitn(3, ' ');
    let mut number = || {
        words
            .next()
            .and_then(|w| w.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let at = number() % (query.len() + 1);
    let end = at.saturating_add(number()).min(query.len());
    let insert = words.next().unwrap_or("");
    [&query[..at], insert, &query[end..]].concat()
}

/// `config`: a config loaded from any text as `s3warden check-config` loads it, without
/// reading the files it names. Properties: a syntax error names its line; every other problem
/// names its key, and a line within the text when it gives one; a config that loads builds
/// its access policy.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let env = Environment::default();
    let loaded = Config::parse(
        &text,
        Path::new("/etc/s3warden"),
        &env,
        &crate::check_config,
    );
    match loaded {
        Ok(config) => assert!(Policy::new(&config).is_ok()),
        Err(ConfigError::Syntax { message, .. }) => assert!(message.contains("line "), "{message}"),
        Err(ConfigError::Invalid { problems, .. }) => {
            let lines = text.split('\n').count();
            for problem in problems {
                assert!(!problem.key.is_empty(), "{problem}");
                assert!(
                    problem.line.is_none_or(|l| (1..=lines).contains(&l)),
                    "{problem}"
                );
            }
        }
        Err(e @ ConfigError::Read { .. }) => panic!("nothing is read: {e}"),
    }
}

/// `Name: value` lines (a space after the colon is dropped, as HTTP parsers drop it); lines
/// without a colon are none.
fn fields<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(&'a str, &'a str)> {
    lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name, value.strip_prefix(' ').unwrap_or(value)))
        .collect()
}

/// The fields a request could carry: hyper refuses the others.
fn header_map(fields: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for &(name, value) in fields {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.append(name, value);
        }
    }
    headers
}

/// Whether `part` lies within `whole` (borrowed from it, not copied).
fn is_part_of(part: &str, whole: &str) -> bool {
    let (part, whole) = (
        part.as_bytes().as_ptr_range(),
        whole.as_bytes().as_ptr_range(),
    );
    whole.start <= part.start && part.end <= whole.end
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs `target` over every input in fuzz/seeds/NAME and fuzz/regressions/NAME.
    fn replay(name: &str, target: fn(&[u8])) {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut seeds = 0;
        for dir in ["seeds", "regressions"] {
            let dir = fuzz.join(dir).join(name);
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.expect("a directory entry").path();
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                // The notes that keep a directory in git are no inputs.
                if file.starts_with('.') || file.starts_with("README") {
                    continue;
                }
                let data = std::fs::read(&path).expect("an input");
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name} fails on {}", path.display());
                seeds += 1;
            }
        }
        assert!(seeds > 0, "no seeds for {name}");
    }

    #[test]
    fn framing() {
        replay("framing", super::framing);
    }

    #[test]
    fn key() {
        replay("key", super::key);
    }

    #[test]
    fn range_conditionals() {
        replay("range_conditionals", super::range_conditionals);
    }

    #[test]
    fn tokens() {
        replay("tokens", super::tokens);
    }

    #[test]
    fn signed_query() {
        replay("signed_query", super::signed_query);
    }

    #[test]
    fn config() {
        replay("config", super::config);
    }
}

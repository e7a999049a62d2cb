//! Access rules: `authorize(who, bucket, key, method)` returns a [`Permit`] or a refusal. The
//! cache and the S3 client only take a `Permit`, and only this module can make one, so nothing
//! reaches cached bytes or S3 without passing here first.

use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use http::HeaderValue;
use serde_json::Value;

use crate::auth::Identity;
use crate::config::{Acl, AllowConfig, Config, Permission, Problem, Validator};
use crate::route::Key;
use crate::s3::S3Object;

/// Proof that a request may perform action `A` on one object. Each call that touches cached
/// bytes or S3 demands the permit of its own action: the cache and S3 reads take a
/// `Permit<Read>`, uploads a `Permit<Write>`, deletes a `Permit<Delete>`; a permit to sign a
/// URL (`Permit<Sign>`) opens none of them.
///
/// ```
/// # use s3warden::cache::{ObjectCache, OnMiss};
/// # use s3warden::policy::{Permit, Read};
/// # use s3warden::s3::S3Client;
/// async fn read(cache: &ObjectCache, permit: &Permit<Read>, s3: &S3Client) {
///     let _ = cache.lookup(permit, s3, OnMiss::Fetch).await;
/// }
/// ```
///
/// A write permit cannot open the cache:
///
/// ```compile_fail
/// # use s3warden::cache::{ObjectCache, OnMiss};
/// # use s3warden::policy::{Permit, Write};
/// # use s3warden::s3::S3Client;
/// async fn read(cache: &ObjectCache, permit: &Permit<Write>, s3: &S3Client) {
///     let _ = cache.lookup(permit, s3, OnMiss::Fetch).await;
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Permit<A> {
    object: S3Object,
    alias: Arc<str>,
    key: Key,
    public: bool,
    inline_active_content: bool,
    signed_max_age: Option<u64>,
    acls: AclSet,
    terms: Option<Arc<UploadTerms>>,
    action: PhantomData<A>,
}

/// An action a rule can grant; the method rules and signatures name it by.
pub trait Action {
    /// The method in `[[rules]]` that grants it.
    const METHOD: Permission;
}

/// Reading an object: GET and HEAD, through the cache.
#[derive(Debug, Clone, Copy)]
pub struct Read;

/// Writing an object: PUT, and POST under a prefix.
#[derive(Debug, Clone, Copy)]
pub struct Write;

/// Deleting an object.
#[derive(Debug, Clone, Copy)]
pub struct Delete;

/// Signing a URL for another request; it reads, writes and deletes nothing itself.
#[derive(Debug, Clone, Copy)]
pub struct Sign;

impl Action for Read {
    const METHOD: Permission = Permission::Get;
}

impl Action for Write {
    const METHOD: Permission = Permission::Put;
}

impl Action for Delete {
    const METHOD: Permission = Permission::Delete;
}

/// What a signed PUT URL fixes about the upload: the signer decides, not the URL's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTerms {
    /// The `Content-Type` the object is stored with.
    pub content_type: HeaderValue,
    /// The canned ACL it gets.
    pub acl: Acl,
}

impl UploadTerms {
    /// The terms of an upload the signer named `content_type` and `acl` for (each optional):
    /// the type defaults to the one the key's extension suggests, the ACL to `default_acl`.
    pub fn new(
        key: &Key,
        content_type: Option<&str>,
        acl: Option<Acl>,
        default_acl: Acl,
    ) -> Result<UploadTerms, BadTerms> {
        let content_type = match content_type {
            Some(text) => {
                let text = upload_type(text).ok_or(BadTerms::ContentType)?;
                // URLs carry and sign the type as text: a quoted parameter with non-ASCII bytes
                // would be signed as "" and stored without a type.
                if !text.is_ascii() {
                    return Err(BadTerms::ContentType);
                }
                HeaderValue::from_str(&text).map_err(|_| BadTerms::ContentType)?
            }
            None => {
                let guess = mime_guess::from_path(key.as_str()).first_or_octet_stream();
                HeaderValue::from_str(guess.essence_str()).map_err(|_| BadTerms::ContentType)?
            }
        };
        Ok(UploadTerms {
            content_type,
            acl: acl.unwrap_or(default_acl),
        })
    }

    /// The headers an upload under these terms carries, as a pre-signed S3 PUT signs them.
    /// Unlike s3warden's own uploads ([`Acl::header`]), a signed URL names `private` too: S3
    /// then refuses any other ACL its holder sends, even where a store does not check that
    /// every `x-amz-*` header is signed. Buckets with ACLs disabled need `none`.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut headers = vec![(
            "content-type",
            self.content_type.to_str().unwrap_or_default(),
        )];
        if self.acl != Acl::None {
            headers.push(("x-amz-acl", self.acl.as_str()));
        }
        headers
    }
}

/// The media type an upload names, when it is one well-formed type with no control characters,
/// as it is stored: with the commas some clients leave unquoted in a parameter quoted
/// ([`crate::response::with_quoted_params`]). A tab is whitespace to the media-type grammar,
/// but SigV4 implementations fold it differently when they canonicalize a signed header, so S3
/// would refuse the signature.
pub fn upload_type(text: &str) -> Option<Cow<'_, str>> {
    let text = text.trim();
    if text.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    if let Some(quoted) = crate::response::with_quoted_params(text) {
        return Some(Cow::Owned(quoted));
    }
    mediatype::MediaType::parse(text).ok()?;
    Some(Cow::Borrowed(text))
}

/// Upload terms that cannot be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadTerms {
    /// Not one well-formed media type in ASCII.
    ContentType,
}

/// The canned ACLs an upload may set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AclSet {
    private: bool,
    public_read: bool,
}

impl AclSet {
    fn of(acls: &[Acl]) -> AclSet {
        AclSet {
            private: acls.contains(&Acl::Private),
            public_read: acls.contains(&Acl::PublicRead),
        }
    }

    fn union(self, other: AclSet) -> AclSet {
        AclSet {
            private: self.private || other.private,
            public_read: self.public_read || other.public_read,
        }
    }

    /// Whether `acl` is in the set; sending no ACL (`none`) leaves the object private.
    pub fn allows(self, acl: Acl) -> bool {
        match acl {
            Acl::Private | Acl::None => self.private,
            Acl::PublicRead => self.public_read,
        }
    }
}

impl<A> Permit<A> {
    /// The object in S3 (real bucket, full key).
    pub fn object(&self) -> &S3Object {
        &self.object
    }
    /// The bucket alias of the request.
    pub fn alias(&self) -> &str {
        &self.alias
    }
    /// The key as the client named it (without the bucket prefix).
    pub fn key(&self) -> &Key {
        &self.key
    }
    /// Granted by a `public` rule: browsers and shared caches may keep it.
    pub fn is_public(&self) -> bool {
        self.public
    }
    /// Active content (HTML, SVG, JS) may be served inline.
    pub fn inline_active_content(&self) -> bool {
        self.inline_active_content
    }
    /// Seconds the signed URL this permit came from has left (browsers keep the answer that
    /// long and no longer).
    pub fn signed_max_age(&self) -> Option<u64> {
        self.signed_max_age
    }
    /// Whether an upload under this permit may set `acl`.
    pub fn may_set_acl(&self, acl: Acl) -> bool {
        self.acls.allows(acl)
    }
    /// The type and ACL a signed PUT URL fixed, when the permit came from one.
    pub fn upload_terms(&self) -> Option<&UploadTerms> {
        self.terms.as_deref()
    }
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub enum Principal<'a> {
    /// No credentials at all.
    Anonymous,
    /// A verified token.
    Token(&'a Identity),
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No rule allows an anonymous request: credentials are needed (401).
    Unauthenticated,
    /// Credentials were given but no rule allows them (403).
    Forbidden,
    /// The bucket alias is not configured (404).
    UnknownBucket,
    /// The key, with the bucket's prefix before it, is longer than S3 allows (400).
    KeyTooLong,
}

/// The compiled rules and bucket aliases.
#[derive(Debug)]
pub struct Policy {
    buckets: HashMap<String, Bucket>,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Bucket {
    alias: Arc<str>,
    /// The id of the store that holds it.
    store: Arc<str>,
    bucket: Arc<str>,
    prefix: String,
}

#[derive(Debug)]
struct Rule {
    alias: String,
    prefix: Template,
    methods: Vec<Permission>,
    allow: Allow,
    inline_active_content: bool,
    acls: AclSet,
}

#[derive(Debug)]
enum Allow {
    Public,
    Authenticated,
    Claims(Vec<ClaimTest>),
}

/// One claim a rule wants.
#[derive(Debug)]
struct ClaimTest {
    name: String,
    value: String,
    /// The claim is a space-separated list (`auth.space_separated_claims`).
    spaced: bool,
}

/// A key prefix that may name the token's subject or claims.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Sub,
    Claim(String),
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Piece::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or("has a '{' without a matching '}'")?
                + open;
            let name = &rest[open + 1..close];
            parts.push(match name {
                "sub" => Piece::Sub,
                _ => match name.strip_prefix("claim.") {
                    Some(claim) if !claim.is_empty() && !claim.contains(['{', '}']) => {
                        Piece::Claim(claim.to_owned())
                    }
                    _ => {
                        return Err(format!(
                            "template {{{name}}} names nothing: use {{sub}} or {{claim.NAME}}"
                        ));
                    }
                },
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err("has a '}' without a matching '{'".into());
        }
        if !rest.is_empty() {
            parts.push(Piece::Literal(rest.to_owned()));
        }
        Ok(Template(parts))
    }

    fn is_literal(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Piece::Literal(_)))
    }

    /// The prefix for this identity; `None` when a value it needs is missing or unsafe.
    fn expand(&self, who: Option<&Identity>) -> Option<Cow<'_, str>> {
        // Literal prefixes (the common case) need no allocation.
        match self.0.as_slice() {
            [] => return Some(Cow::Borrowed("")),
            [Piece::Literal(s)] => return Some(Cow::Borrowed(s)),
            _ => {}
        }
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Piece::Literal(s) => out.push_str(s),
                Piece::Sub => out.push_str(safe_segment(who?.sub.as_deref()?)?),
                Piece::Claim(name) => {
                    out.push_str(safe_segment(claim_text(who?.claims.get(name)?)?)?)
                }
            }
        }
        Some(Cow::Owned(out))
    }
}

/// A claim value used in a path: never empty, never holding `/`, `..` or a control character,
/// so it cannot widen the prefix it is put into.
fn safe_segment(value: &str) -> Option<&str> {
    let bad = value.is_empty()
        || value == "."
        || value.contains('/')
        || value.contains("..")
        || value.chars().any(char::is_control);
    (!bad).then_some(value)
}

fn claim_text(value: &Value) -> Option<&str> {
    value.as_str()
}

/// What the rules and bucket aliases need of their sections: prefixes that are key prefixes,
/// templates that name something, and rules that can match at all.
pub(crate) fn check(config: &Config, v: &mut Validator) {
    for (alias, bucket) in &config.buckets {
        let prefix = &bucket.prefix;
        let is_key_prefix = prefix.is_empty()
            || (prefix.ends_with('/') && Key::parse(prefix.trim_end_matches('/')).is_ok());
        if !is_key_prefix {
            v.problem(
                format!("buckets.{alias}.prefix"),
                "must be a key prefix ending in '/', without empty, '.' or '..' segments",
            );
        }
    }
    for (i, rule) in config.rules.iter().enumerate() {
        if let Err(message) = check_prefix_template(&rule.prefix) {
            v.problem(format!("rules[{i}].prefix"), message);
        }
    }
    for (i, message) in Policy::dead_rules(config) {
        v.problem(format!("rules[{i}].prefix"), message);
    }
}

/// Checks a rule prefix for `check-config`.
fn check_prefix_template(prefix: &str) -> Result<(), String> {
    let template = Template::parse(prefix)?;
    if prefix.starts_with('/') {
        return Err("must not start with '/' (keys are relative to the bucket)".into());
    }
    // Expanding every placeholder to a plain segment must give a clean prefix.
    let sample: String = template
        .0
        .iter()
        .map(|p| match p {
            Piece::Literal(s) => s.as_str(),
            Piece::Sub | Piece::Claim(_) => "x",
        })
        .collect();
    let trimmed = sample.trim_end_matches('/');
    if !sample.is_empty() && (sample.ends_with("//") || Key::parse(trimmed).is_err()) {
        return Err("must not hold empty, '.' or '..' segments or control characters".into());
    }
    Ok(())
}

/// True when `key` lies under `prefix`, on whole path segments: `users/alice/` and
/// `users/alice` both cover `users/alice/x`, never `users/alice2/x`.
fn under_prefix(key: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    if prefix.ends_with('/') {
        return key.starts_with(prefix);
    }
    key == prefix
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// True when the claim `value` satisfies `wanted`: equal, or contained in an array, or (when
/// `spaced`, for claims like `scope`) one word of a space-separated string. Numbers and
/// booleans compare by their JSON text.
fn claim_matches(value: &Value, wanted: &str, spaced: bool) -> bool {
    match value {
        Value::String(s) => s == wanted || (spaced && s.split(' ').any(|part| part == wanted)),
        Value::Array(items) => items.iter().any(|v| v.as_str() == Some(wanted)),
        Value::Bool(b) => b.to_string() == wanted,
        Value::Number(n) => n.to_string() == wanted,
        Value::Null | Value::Object(_) => false,
    }
}

impl Policy {
    /// Compiles the rules and bucket aliases of a config; every problem [`check`] finds refuses
    /// it.
    pub fn new(config: &Config) -> Result<Policy, Vec<Problem>> {
        let mut v = Validator::default();
        check(config, &mut v);
        let problems = v.into_problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        let buckets = config
            .buckets
            .iter()
            .map(|(alias, b)| {
                let bucket = Bucket {
                    alias: alias.as_str().into(),
                    store: Config::store_of(b).into(),
                    bucket: b.bucket.as_str().into(),
                    prefix: b.prefix.clone(),
                };
                (alias.clone(), bucket)
            })
            .collect();
        let rules = config
            .rules
            .iter()
            // Every template parses: `check` said so.
            .filter_map(|r| Some((r, Template::parse(&r.prefix).ok()?)))
            .map(|(r, prefix)| Rule {
                alias: r.bucket.clone(),
                prefix,
                methods: r.methods.clone(),
                allow: match &r.allow {
                    AllowConfig::Keyword(w) if w == "public" => Allow::Public,
                    AllowConfig::Keyword(_) => Allow::Authenticated,
                    AllowConfig::Claims { claims } => Allow::Claims(
                        claims
                            .iter()
                            .map(|(name, value)| ClaimTest {
                                name: name.clone(),
                                value: value.clone(),
                                spaced: config.auth.space_separated_claims.contains(name),
                            })
                            .collect(),
                    ),
                },
                inline_active_content: r.inline_active_content,
                acls: AclSet::of(&r.acls),
            })
            .collect();
        Ok(Policy { buckets, rules })
    }

    /// Problems that make a rule unable to ever match, for `check-config`.
    fn dead_rules(config: &Config) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            let Ok(template) = Template::parse(&rule.prefix) else {
                continue;
            };
            if let AllowConfig::Claims { claims } = &rule.allow
                && let Some((name, _)) = claims.iter().find(|(_, value)| value.trim().is_empty())
            {
                out.push((
                    i,
                    format!("claim {name:?} is compared with an empty value, which never matches"),
                ));
            }
            if rule.allow == AllowConfig::Keyword("public".into()) && !template.is_literal() {
                out.push((
                    i,
                    "a public rule cannot use {sub} or {claim.*}: anonymous requests have no token"
                        .to_owned(),
                ));
            }
        }
        out
    }

    /// The S3 address of a key under a bucket alias, for cache purges (which read nothing).
    pub fn object_for(&self, alias: &str, key: &Key) -> Option<S3Object> {
        let bucket = self.buckets.get(alias)?;
        Some(bucket.object(key))
    }

    /// Decides whether `who` may perform action `A` on `key` in bucket `alias`.
    pub fn authorize<A: Action>(
        &self,
        who: Principal<'_>,
        alias: &str,
        key: &Key,
    ) -> Result<Permit<A>, Denied> {
        self.grant(who, alias, key, A::METHOD)
    }

    /// Decides whether `who` may have a URL signed for `method` on `key` in bucket `alias`.
    pub fn authorize_signing(
        &self,
        who: Principal<'_>,
        alias: &str,
        key: &Key,
        method: Permission,
    ) -> Result<Permit<Sign>, Denied> {
        self.grant(who, alias, key, method)
    }

    fn grant<A>(
        &self,
        who: Principal<'_>,
        alias: &str,
        key: &Key,
        method: Permission,
    ) -> Result<Permit<A>, Denied> {
        let bucket = self.buckets.get(alias).ok_or(Denied::UnknownBucket)?;
        bucket.check_length(key)?;
        let identity = match who {
            Principal::Anonymous => None,
            Principal::Token(identity) => Some(identity),
        };
        let mut granted: Option<&Rule> = None;
        // Every rule that grants the request adds the ACLs it allows.
        let mut acls = AclSet::default();
        for rule in self.rules.iter().filter(|r| r.alias == alias) {
            if !rule.methods.contains(&method) || !rule.allows(identity) {
                continue;
            }
            let Some(prefix) = rule.prefix.expand(identity) else {
                continue;
            };
            if under_prefix(key.as_str(), &prefix) {
                acls = acls.union(rule.acls);
                // Prefer a public grant: it decides how browsers may cache the answer.
                if matches!(rule.allow, Allow::Public) || granted.is_none() {
                    granted = Some(rule);
                }
            }
        }
        match granted {
            Some(rule) => Ok(bucket.permit(key, |p| {
                p.public = matches!(rule.allow, Allow::Public);
                p.inline_active_content = rule.inline_active_content;
                p.acls = acls;
            })),
            None if identity.is_none() => Err(Denied::Unauthenticated),
            None => Err(Denied::Forbidden),
        }
    }

    /// A permit for exactly one method and key, from a verified signed URL with `seconds_left`
    /// to live. The rules were checked when the URL was signed; a PUT URL's `terms` fix the
    /// upload's type and ACL.
    pub fn permit_signed<A: Action>(
        &self,
        alias: &str,
        key: &Key,
        seconds_left: u64,
        terms: Option<UploadTerms>,
    ) -> Result<Permit<A>, Denied> {
        let bucket = self.buckets.get(alias).ok_or(Denied::UnknownBucket)?;
        bucket.check_length(key)?;
        let inline_active_content = self.rules.iter().any(|r| {
            r.alias == alias
                && r.inline_active_content
                && r.prefix.is_literal()
                && under_prefix(key.as_str(), &r.prefix.expand(None).unwrap_or_default())
        });
        Ok(bucket.permit(key, |p| {
            p.inline_active_content = inline_active_content;
            p.signed_max_age = Some(seconds_left);
            if let Some(terms) = terms {
                p.acls = AclSet::of(&[terms.acl]);
                p.terms = Some(Arc::new(terms));
            }
        }))
    }
}

impl Bucket {
    /// S3 keys are at most 1024 bytes, the bucket's prefix included.
    fn check_length(&self, key: &Key) -> Result<(), Denied> {
        if self.prefix.len() + key.as_str().len() > crate::route::MAX_KEY_LEN {
            return Err(Denied::KeyTooLong);
        }
        Ok(())
    }

    /// Where `key` lives in S3.
    fn object(&self, key: &Key) -> S3Object {
        S3Object {
            store: self.store.clone(),
            bucket: self.bucket.clone(),
            key: if self.prefix.is_empty() {
                Arc::from(key.as_str())
            } else {
                Arc::from([&*self.prefix, key.as_str()].concat())
            },
        }
    }

    /// A private, rule-less permit for `key` in this bucket, adjusted by `grant`.
    fn permit<A>(&self, key: &Key, grant: impl FnOnce(&mut Permit<A>)) -> Permit<A> {
        let mut permit = Permit {
            object: self.object(key),
            alias: self.alias.clone(),
            key: key.clone(),
            public: false,
            inline_active_content: false,
            signed_max_age: None,
            acls: AclSet::default(),
            terms: None,
            action: PhantomData,
        };
        grant(&mut permit);
        permit
    }
}

impl Rule {
    fn allows(&self, identity: Option<&Identity>) -> bool {
        match &self.allow {
            Allow::Public => true,
            Allow::Authenticated => identity.is_some(),
            Allow::Claims(wanted) => identity.is_some_and(|id| {
                wanted.iter().all(|test| {
                    id.claims
                        .get(&test.name)
                        .is_some_and(|v| claim_matches(v, &test.value, test.spaced))
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn identity(sub: &str, claims: Value) -> Identity {
        let mut claims = claims.as_object().cloned().unwrap_or_default();
        claims.insert("sub".into(), Value::String(sub.into()));
        Identity::new(claims, u64::MAX)
    }

    fn policy(rules: &str) -> Policy {
        let text = format!(
            "[s3]\nendpoint = \"http://127.0.0.1:1\"\nregion = \"us-east-1\"\n\
             [buckets.files]\nbucket = \"real-bucket\"\nprefix = \"app/\"\n{rules}"
        );
        let env = crate::config::Environment::from_pairs([
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
        ]);
        let config =
            Config::from_toml(&text, std::path::Path::new("."), &env, &crate::check_config)
                .unwrap();
        Policy::new(&config).unwrap()
    }

    fn key(k: &str) -> Key {
        Key::parse(k).unwrap()
    }

    #[test]
    fn segments_bound_prefixes() {
        assert!(under_prefix("users/alice/x", "users/alice/"));
        assert!(under_prefix("users/alice/x", "users/alice"));
        assert!(!under_prefix("users/alice2/x", "users/alice/"));
        assert!(!under_prefix("users/alice2/x", "users/alice"));
        assert!(under_prefix("anything", ""));
    }

    #[test]
    fn templated_prefix_serves_the_owner_only() {
        let p = policy(
            "[[rules]]\nbucket = \"files\"\nprefix = \"users/{sub}/\"\nmethods = [\"GET\"]\nallow = \"authenticated\"\n",
        );
        let alice = identity("alice", serde_json::json!({}));
        let permit = p
            .authorize::<Read>(Principal::Token(&alice), "files", &key("users/alice/a.txt"))
            .unwrap();
        assert_eq!(&*permit.object().key, "app/users/alice/a.txt");
        assert_eq!(&*permit.object().bucket, "real-bucket");
        assert_eq!(
            p.authorize::<Read>(Principal::Token(&alice), "files", &key("users/bob/a.txt"))
                .unwrap_err(),
            Denied::Forbidden
        );
        assert_eq!(
            p.authorize::<Read>(Principal::Anonymous, "files", &key("users/alice/a.txt"))
                .unwrap_err(),
            Denied::Unauthenticated
        );
        for evil in ["..", "a/b", "", "x..", "a\u{0}"] {
            let mallory = identity(evil, serde_json::json!({}));
            let k = format!("users/{evil}/a");
            if let Ok(k) = Key::parse(&k) {
                assert!(
                    p.authorize::<Read>(Principal::Token(&mallory), "files", &k)
                        .is_err()
                );
            }
        }
    }

    #[test]
    fn claims_rules_match_strings_arrays_and_scopes() {
        let p = policy(
            "[[rules]]\nbucket = \"files\"\nprefix = \"private/\"\nallow = { claims = { roles = \"admin\" } }\n\
             [[rules]]\nbucket = \"files\"\nprefix = \"scoped/\"\nallow = { claims = { scope = \"files:read\" } }\n",
        );
        let k = key("private/x");
        let ok = |claims| {
            p.authorize::<Read>(Principal::Token(&identity("u", claims)), "files", &k)
                .is_ok()
        };
        assert!(ok(serde_json::json!({"roles": "admin"})));
        assert!(ok(serde_json::json!({"roles": ["user", "admin"]})));
        assert!(!ok(serde_json::json!({"roles": ["user"]})));
        assert!(!ok(serde_json::json!({"roles": "administrator"})));
        // Only scope-like claims (auth.space_separated_claims) are lists of words.
        assert!(!ok(serde_json::json!({"roles": "user admin"})));
        assert!(!ok(serde_json::json!({})));
        let scoped = |scope| {
            let id = identity("u", serde_json::json!({ "scope": scope }));
            p.authorize::<Read>(Principal::Token(&id), "files", &key("scoped/a"))
                .is_ok()
        };
        assert!(scoped("openid files:read profile"));
        assert!(!scoped("files:readwrite"));
        // A deployment whose roles claim is a space-separated list says so.
        let p = policy(
            "[auth]\nspace_separated_claims = [\"roles\"]\n\
             [[rules]]\nbucket = \"files\"\nprefix = \"private/\"\nallow = { claims = { roles = \"admin\" } }\n",
        );
        let id = identity("u", serde_json::json!({"roles": "user admin"}));
        assert!(
            p.authorize::<Read>(Principal::Token(&id), "files", &k)
                .is_ok()
        );
    }

    #[test]
    fn methods_and_public_rules() {
        let p = policy(
            "[[rules]]\nbucket = \"files\"\nprefix = \"public/\"\nallow = \"public\"\n\
             [[rules]]\nbucket = \"files\"\nprefix = \"public/\"\nmethods = [\"GET\", \"PUT\"]\nallow = \"authenticated\"\n",
        );
        let permit = p
            .authorize::<Read>(Principal::Anonymous, "files", &key("public/a"))
            .unwrap();
        assert!(permit.is_public());
        assert_eq!(
            p.authorize::<Write>(Principal::Anonymous, "files", &key("public/a"))
                .unwrap_err(),
            Denied::Unauthenticated
        );
        let id = identity("u", serde_json::json!({}));
        assert!(
            p.authorize::<Write>(Principal::Token(&id), "files", &key("public/a"))
                .is_ok()
        );
        assert!(
            p.authorize::<Delete>(Principal::Token(&id), "files", &key("public/a"))
                .is_err()
        );
        assert_eq!(
            p.authorize::<Read>(Principal::Anonymous, "nope", &key("public/a"))
                .unwrap_err(),
            Denied::UnknownBucket
        );
    }

    #[test]
    fn templates_are_checked() {
        assert!(check_prefix_template("users/{sub}/").is_ok());
        assert!(check_prefix_template("org/{claim.org}/docs/").is_ok());
        assert!(check_prefix_template("users/{user}/").is_err());
        assert!(check_prefix_template("users/{claim.}/").is_err());
        assert!(check_prefix_template("users/{sub/").is_err());
        assert!(check_prefix_template("users/../").is_err());
        assert!(check_prefix_template("/abs/").is_err());
    }

    proptest! {
        /// No key outside a rule's (expanded) prefix is ever allowed by that rule.
        #[test]
        fn nothing_outside_the_prefix_is_allowed(
            sub in "[a-z.]{1,6}",
            k in "[a-z.]{1,6}(/[a-z.]{1,6}){0,3}",
        ) {
            let p = policy(
                "[[rules]]\nbucket = \"files\"\nprefix = \"users/{sub}/\"\nmethods = [\"GET\"]\nallow = \"authenticated\"\n\
                 [[rules]]\nbucket = \"files\"\nprefix = \"shared\"\nallow = \"authenticated\"\n",
            );
            let id = identity(&sub, serde_json::json!({}));
            if let Ok(k) = Key::parse(&k) {
                let allowed = p.authorize::<Read>(Principal::Token(&id), "files", &k).is_ok();
                let inside = (safe_segment(&sub).is_some() && k.as_str().starts_with(&format!("users/{sub}/")))
                    || k.as_str() == "shared"
                    || k.as_str().starts_with("shared/");
                prop_assert_eq!(allowed, inside, "key {}", k);
            }
        }
    }
}

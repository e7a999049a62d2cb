//! Value types of the config file (sizes, durations, methods) and the checks on their values.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{Acl, AllowConfig, Config, DEFAULT_STORE, Problem, S3Config};

/// A size in bytes, written `"512MiB"`, `"8 MB"` or as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| ByteSize(b.as_u64()))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "invalid size {s:?}: expected a number with a unit, like \"512MiB\""
                    ))
                }),
        }
    }
}

/// What a rule grants (its `methods`), and what a signed URL is for: named by HTTP methods,
/// but a permission, not a request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Permission {
    /// Read (`GET` and `HEAD`).
    #[serde(rename = "GET")]
    Get,
    /// Write (`PUT` and `POST` uploads).
    #[serde(rename = "PUT")]
    Put,
    /// Delete.
    #[serde(rename = "DELETE")]
    Delete,
}

impl Permission {
    /// The permission's name as rules and signatures spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Get => "GET",
            Permission::Put => "PUT",
            Permission::Delete => "DELETE",
        }
    }
}

/// Deserializes a duration written like `"30s"`, `"5m"` or `"1h 30m"`.
pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}): expected a number with a unit, like \"30s\" or \"5m\""
        ))
    })
}

/// Deserializes an optional string where `""` means "not set".
pub(super) fn de_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()))
}

/// Deserializes an optional path where `""` means "not set".
pub(super) fn de_opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(de_opt_string(d)?.map(PathBuf::from))
}

/// Collects problems as the checks run.
#[derive(Default)]
pub struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    /// Records a problem with the value at `key`.
    pub fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
            line: None,
        });
    }

    fn check(&mut self, ok: bool, key: &str, message: &str) {
        if !ok {
            self.problem(key, message);
        }
    }

    fn positive(&mut self, d: Duration, key: &str) {
        self.check(!d.is_zero(), key, "must be greater than zero");
    }

    /// The problems found.
    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }
}

/// Matches a bucket alias: `[a-z0-9][a-z0-9.-]{0,62}`.
pub fn is_valid_alias(alias: &str) -> bool {
    let b = alias.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
}

/// A bucket name S3 serves: today's rules (3–63 lowercase letters, digits, dots and hyphens),
/// or the legacy ones that buckets made in us-east-1 before March 2018 may still follow (up to
/// 255 characters, capitals and underscores too), starting and ending with a letter or digit.
/// Names that are not DNS names are addressed path-style.
fn is_valid_s3_bucket(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=255).contains(&b.len())
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

fn is_http_url(s: &str) -> bool {
    reqwest::Url::parse(s)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .unwrap_or(false)
}

/// A log level, or comma-separated directives that each are a level or `target=level`. A bare
/// word that is not a level (`verbose`) would parse as a target and silence every other log.
fn is_log_filter(text: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |word: &str| LEVELS.contains(&word.trim().to_ascii_lowercase().as_str());
    let directives: Vec<&str> = text.split(',').map(str::trim).collect();
    tracing_subscriber::EnvFilter::try_new(text).is_ok()
        && directives.iter().all(|d| match d.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(d),
        })
}

/// One store's table (`s3` or `stores.NAME`).
fn validate_store(id: &str, store: &S3Config, v: &mut Validator) {
    let key = |name: &str| format!("{id}.{name}");
    match &store.endpoint {
        None if id == DEFAULT_STORE => v.problem(
            key("endpoint"),
            "not set: give s3.endpoint or s3.region (or AWS_ENDPOINT_URL_S3 / AWS_REGION)",
        ),
        None => v.problem(key("endpoint"), "not set: give an endpoint or a region"),
        Some(e) if !is_http_url(e) => {
            v.problem(key("endpoint"), "must be an http:// or https:// URL");
        }
        Some(e) => match reqwest::Url::parse(e) {
            Ok(u) if u.path() != "/" || u.query().is_some() => v.problem(
                key("endpoint"),
                "must not have a path or query (bucket and key are added by s3warden)",
            ),
            // Logs and metrics name the endpoint: keys belong in the key settings.
            Ok(u) if !u.username().is_empty() || u.password().is_some() => v.problem(
                key("endpoint"),
                "must not hold a user or password: give S3 keys in the key settings",
            ),
            Ok(u) => {
                let named = u.host_str().and_then(aws_region_of);
                if let (Some(named), Some(region)) = (named, &store.region)
                    && named != region
                {
                    v.problem(
                        key("region"),
                        format!("is {region:?}, but the endpoint is AWS's {named:?} endpoint"),
                    );
                }
            }
            Err(_) => v.problem(key("endpoint"), "is not a valid URL"),
        },
    }
    if store.region.is_none() {
        v.problem(
            key("region"),
            format!("not set: give {id}.region or AWS_REGION"),
        );
    }
    let key_files = [
        &store.access_key_id_file,
        &store.secret_access_key_file,
        &store.session_token_file,
    ];
    if store.profile.is_some() && key_files.iter().any(|f| f.is_some()) {
        v.problem(
            key("profile"),
            "the key files would be used, never the profile: set one or the other",
        );
    }
    v.positive(store.connect_timeout, &key("connect_timeout"));
    v.positive(store.timeout, &key("timeout"));
    v.check(store.retries <= 10, &key("retries"), "must be 10 or fewer");
}

/// The region an AWS S3 endpoint names: `s3.REGION.amazonaws.com`, `s3-REGION.amazonaws.com`,
/// `s3.dualstack.REGION.amazonaws.com`, `s3-fips.REGION.amazonaws.com` (and `.com.cn`).
fn aws_region_of(host: &str) -> Option<&str> {
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let labels: Vec<&str> = rest.split('.').collect();
    let region = match labels.as_slice() {
        [single] => single.strip_prefix("s3-")?,
        [.., "s3" | "s3-fips", region] | [.., "s3" | "s3-fips", "dualstack", region] => region,
        _ => return None,
    };
    let looks_like_region = region.split('-').count() >= 3
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    looks_like_region.then_some(region)
}

/// The largest weight moka can give one entry is `u32::MAX`; keep clear of it.
pub const MAX_CACHEABLE_OBJECT: u64 = (u32::MAX as u64) - 64 * 1024;

/// S3 refuses pre-signed URLs valid for longer than seven days.
pub const S3_MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) fn validate(c: &Config, v: &mut Validator) {
    // [server]
    v.check(
        !c.server.listen.is_empty(),
        "server.listen",
        "needs at least one address",
    );
    if let Some(url) = &c.server.public_url {
        v.check(
            is_http_url(url) && !url.contains('?') && !url.contains('#'),
            "server.public_url",
            "must be an http:// or https:// URL without query or fragment",
        );
    }
    v.positive(c.server.shutdown_grace, "server.shutdown_grace");
    v.positive(c.server.header_read_timeout, "server.header_read_timeout");
    v.positive(c.server.idle_timeout, "server.idle_timeout");
    v.check(
        c.server.max_connections > 0,
        "server.max_connections",
        "must be greater than zero",
    );
    v.check(
        (8 * 1024..=1024 * 1024).contains(&c.server.max_header_size.bytes()),
        "server.max_header_size",
        "must be between 8KiB and 1MiB",
    );

    // [admin]
    if !c.admin.listen.ip().is_loopback() && c.admin.token_file.is_none() {
        v.problem(
            "admin.listen",
            format!(
                "{} is not a loopback address: anyone who reaches it could purge the cache and \
                 read metrics; set admin.token_file, or listen on 127.0.0.1",
                c.admin.listen
            ),
        );
    }

    v.positive(c.admin.probe_interval, "admin.probe_interval");

    // [s3] and [stores.NAME]
    for (id, store) in c.stores() {
        if id != DEFAULT_STORE && !is_valid_alias(id.trim_start_matches("stores.")) {
            v.problem(&id, "store name must match [a-z0-9][a-z0-9.-]{0,62}");
        }
        validate_store(&id, store, v);
    }

    // [buckets]
    if c.buckets.is_empty() {
        v.problem("buckets", "at least one [buckets.ALIAS] table is needed");
    }
    for (alias, b) in &c.buckets {
        let key = format!("buckets.{alias}");
        v.check(
            is_valid_alias(alias),
            &key,
            "alias must match [a-z0-9][a-z0-9.-]{0,62}",
        );
        v.check(
            is_valid_s3_bucket(&b.bucket),
            &format!("{key}.bucket"),
            "is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-'; legacy \
             us-east-1 names: up to 255, capitals and '_' too)",
        );
        if let Some(store) = &b.store
            && !c.stores.contains_key(store)
        {
            v.problem(
                format!("{key}.store"),
                format!("unknown store {store:?}: define [stores.{store}]"),
            );
        }
    }

    // [[rules]]
    if c.rules.is_empty() {
        v.problem(
            "rules",
            "no [[rules]]: every request would be refused (add at least one rule)",
        );
    }
    for (i, rule) in c.rules.iter().enumerate() {
        let key = format!("rules[{i}]");
        if !c.buckets.contains_key(&rule.bucket) {
            v.problem(
                format!("{key}.bucket"),
                format!(
                    "names bucket alias {:?}, which no [buckets.*] table defines",
                    rule.bucket
                ),
            );
        }
        v.check(
            !rule.methods.is_empty(),
            &format!("{key}.methods"),
            "must list at least one method",
        );
        if let AllowConfig::Keyword(word) = &rule.allow
            && word != "public"
            && word != "authenticated"
        {
            v.problem(
                format!("{key}.allow"),
                format!(
                    "{word:?} is not allowed: use \"public\", \"authenticated\" or {{ claims = {{ ... }} }}"
                ),
            );
        }
        if let AllowConfig::Claims { claims } = &rule.allow
            && claims.is_empty()
        {
            v.problem(
                format!("{key}.allow.claims"),
                "must name at least one claim",
            );
        }
        if rule.acls.contains(&Acl::None) {
            v.problem(
                format!("{key}.acls"),
                "may list \"private\" and \"public-read\" (\"none\" is upload.default_acl's)",
            );
        }
        let default_acl = c.upload.default_acl;
        if rule.methods.contains(&Permission::Put)
            && default_acl == Acl::PublicRead
            && !rule.acls.contains(&Acl::PublicRead)
        {
            v.problem(
                format!("{key}.acls"),
                "upload.default_acl is \"public-read\", which this rule does not allow: uploads \
                 naming no ACL would be refused (add \"public-read\" or change the default)",
            );
        }
    }

    // [cache]
    let cache = &c.cache;
    v.check(
        cache.capacity.bytes() > 0,
        "cache.capacity",
        "must be greater than zero",
    );
    v.check(
        cache.max_object_size.bytes() <= MAX_CACHEABLE_OBJECT,
        "cache.max_object_size",
        "must be under 4GiB (the cache weighs entries in 32 bits)",
    );
    v.check(
        cache.max_object_size <= cache.capacity,
        "cache.max_object_size",
        "must not exceed cache.capacity",
    );
    v.positive(cache.ttl, "cache.ttl");

    // [signing]
    let signing = &c.signing;
    v.check(
        signing.window >= Duration::from_secs(60),
        "signing.window",
        "must be at least 1m",
    );
    v.check(
        signing.window + signing.grace <= S3_MAX_PRESIGN,
        "signing.window",
        "window + grace must not exceed 7 days (S3's longest pre-signed URL)",
    );
    v.check(
        (1..=100_000).contains(&signing.max_batch),
        "signing.max_batch",
        "must be between 1 and 100000",
    );

    // [upload]
    v.check(
        c.upload.max_size.bytes() > 0,
        "upload.max_size",
        "must be greater than zero",
    );
    v.check(
        c.upload.max_size.bytes() <= 5 * 1024 * 1024 * 1024 * 1024,
        "upload.max_size",
        "must not exceed 5TiB (S3's largest object)",
    );
    let part = c.upload.part_size();
    if c.upload.buffer_memory.bytes() < 2 * part {
        v.problem(
            "upload.buffer_memory",
            format!(
                "must be at least {} (two multipart parts of {}, the part size upload.max_size \
                 needs), or no upload of unknown length could finish",
                ByteSize(2 * part),
                ByteSize(part)
            ),
        );
    }

    // [log]
    v.check(
        is_log_filter(&c.log.level),
        "log.level",
        "must be error, warn, info, debug, trace, off, or directives like \"info,access=warn\"",
    );
}

//! TOML configuration: parsed into typed values, validated once, and the only place that reads
//! files (key files, secrets, credentials) so that everything downstream works on plain values.

mod locate;
mod secrets;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use secrets::{AwsCredentials, AwsSource, Environment, Needs, Secrets};
pub use values::Validator;
pub use values::{ByteSize, MAX_CACHEABLE_OBJECT, Permission, S3_MAX_PRESIGN, is_valid_alias};
use values::{de_duration, de_opt_string};

/// What the components built from a config need of their sections (rules, keys, CORS), checked
/// when it is loaded so that every problem is reported at once, with its key and line. The
/// config knows none of them: the caller passes their checks (`s3warden::check_config`).
pub type Checks<'a> = &'a (dyn Fn(&Config, &mut Validator) + Sync);

/// Where s3warden looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/s3warden/s3warden.toml";

/// The whole configuration file, mirroring its TOML tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The public listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// The admin listener (health, metrics, cache purge).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The default S3 store: its endpoint, credentials and how to reach it.
    #[serde(default)]
    pub s3: S3Config,
    /// More S3 stores (`[stores.NAME]`, the same keys as `[s3]`), picked by `buckets.ALIAS.store`.
    #[serde(default)]
    pub stores: BTreeMap<String, S3Config>,
    /// URL aliases for S3 buckets: `/{alias}/{key}`.
    #[serde(default)]
    pub buckets: BTreeMap<String, BucketConfig>,
    /// How tokens are found and verified.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Access rules; a request is allowed when any rule allows it.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The in-memory object cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Signed URLs.
    #[serde(default)]
    pub signing: SigningConfig,
    /// Uploads.
    #[serde(default)]
    pub upload: UploadConfig,
    /// Cross-origin requests from browsers.
    #[serde(default)]
    pub cors: CorsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Secrets and credentials read from the files and environment the config names.
    #[serde(skip)]
    pub secrets: Secrets,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to listen on; ignored when systemd passes sockets (`LISTEN_FDS`).
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Every connection to the public listener starts with a PROXY protocol header (v1 or v2,
    /// HAProxy's `send-proxy-v2`) that names the client; one without is closed.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Proxies (addresses or networks) whose `X-Forwarded-For` / `Forwarded` and `X-Request-Id`
    /// are believed; from anyone else they are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Base of the proxy-signed URLs s3warden mints; defaults to `http://` + the first listen address.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub public_url: Option<String>,
    /// How long in-flight requests may run after SIGTERM.
    #[serde(default = "default_shutdown_grace", deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Time a client has to send a complete request head.
    #[serde(
        default = "default_header_read_timeout",
        deserialize_with = "de_duration"
    )]
    pub header_read_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    #[serde(default = "default_idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Connections beyond this many are answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request head (request line and headers) accepted; larger ones get 431.
    #[serde(default = "default_max_header_size")]
    pub max_header_size: ByteSize,
    /// Request bodies must bring at least this much per second, over every `idle_timeout`
    /// they are waited for, or get 408 (`0`: only a body that stops entirely is cut off).
    #[serde(default = "default_min_body_rate")]
    pub min_body_rate: ByteSize,
    /// Optional TLS for the public listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; loopback by default.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// File holding a bearer token that `/metrics` and the cache purges require (`/healthz`
    /// and `/readyz` stay open). Needed when `listen` is not a loopback address.
    #[serde(default, deserialize_with = "values::de_opt_path")]
    pub token_file: Option<PathBuf>,
    /// How often a background probe checks that each bucket answers (`/readyz` reports what
    /// it last found and never calls S3 itself).
    #[serde(default = "default_probe_interval", deserialize_with = "de_duration")]
    pub probe_interval: Duration,
    /// Whether an S3 outage makes the instance unready. By default it stays ready (it can serve
    /// cached and stale entries), once its buckets have answered a first time.
    #[serde(default)]
    pub unready_on_s3_outage: bool,
}

/// How bucket names go into S3 URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Addressing {
    /// Virtual-hosted where it can work, path-style elsewhere (IP and `localhost` endpoints,
    /// bucket names that are not DNS names, dotted names over https), as the AWS SDKs do.
    Auto,
    /// `https://{bucket}.{endpoint host}/{key}`
    Virtual,
    /// `https://{endpoint host}/{bucket}/{key}`
    Path,
}

/// `[s3]` and `[stores.NAME]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL; else `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, or AWS's endpoint for the region.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub endpoint: Option<String>,
    /// Signing region; else `AWS_REGION` or `AWS_DEFAULT_REGION`.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub region: Option<String>,
    /// `auto` (the default), `virtual` or `path`.
    #[serde(default = "default_addressing")]
    pub addressing: Addressing,
    /// File holding the access key id (else `AWS_ACCESS_KEY_ID` or `$CREDENTIALS_DIRECTORY`).
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    /// File holding the secret access key.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// File holding a session token (temporary credentials).
    #[serde(default)]
    pub session_token_file: Option<PathBuf>,
    /// The AWS profile the default credential chain reads (else `AWS_PROFILE`), when no key
    /// files (and, for `[s3]`, no `AWS_ACCESS_KEY_ID` or systemd credentials) give the keys.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub profile: Option<String>,
    /// TCP (and TLS) connect timeout.
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Time to the first byte of a response, and between body chunks.
    #[serde(default = "default_s3_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Retries of reads before the first byte is sent to the client, and of writes whose bodies
    /// are held in memory.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

/// `[buckets.ALIAS]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// The S3 bucket name.
    pub bucket: String,
    /// Prefix inside the bucket that the alias maps to (`""` for the whole bucket).
    #[serde(default)]
    pub prefix: String,
    /// The store (`[stores.NAME]`) that holds the bucket; `[s3]` when not set.
    #[serde(default)]
    pub store: Option<String>,
}

/// The id of the default store, `[s3]`.
pub const DEFAULT_STORE: &str = "s3";

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted JWT algorithms. Default: HS256 when an HMAC secret is configured, plus RS256,
    /// ES256 and EdDSA when public keys or a JWKS URL are.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Required `iss`, when set.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", deserialize_with = "de_duration")]
    pub leeway: Duration,
    /// JWKS document with the issuer's public keys.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub jwks_url: Option<String>,
    /// How often the JWKS is re-fetched.
    #[serde(default = "default_jwks_refresh", deserialize_with = "de_duration")]
    pub jwks_refresh: Duration,
    /// Least time between two fetches triggered by an unknown `kid`.
    #[serde(default = "default_jwks_cooldown", deserialize_with = "de_duration")]
    pub jwks_cooldown: Duration,
    /// PEM public keys (RSA, EC, Ed25519).
    #[serde(default)]
    pub public_key_files: Vec<PathBuf>,
    /// File holding the HMAC secret for HS256/384/512 (at least 32 bytes).
    #[serde(default, deserialize_with = "values::de_opt_path")]
    pub hmac_secret_file: Option<PathBuf>,
    /// Environment variable holding the HMAC secret, as an alternative to the file.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub hmac_secret_env: Option<String>,
    /// Cookie to take the token from (`""` = off).
    #[serde(default = "default_cookie")]
    pub cookie: String,
    /// Query parameter to take the token from (`""` = off).
    #[serde(default)]
    pub query_param: String,
    /// String claims that hold space-separated lists (OAuth `scope`): a rule's claim value
    /// matches one of their words. Other string claims must equal the value.
    #[serde(default = "default_space_separated_claims")]
    pub space_separated_claims: Vec<String>,
    /// Verified tokens remembered until their `exp`, so each is verified once.
    #[serde(default = "default_token_cache_entries")]
    pub token_cache_entries: u64,
}

/// `allow = ...` in a rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AllowConfig {
    /// `"public"` or `"authenticated"`.
    Keyword(String),
    /// `{ claims = { NAME = "value" } }`
    Claims {
        /// Every claim must equal (or, for arrays and space-separated strings, contain) its value.
        claims: BTreeMap<String, String>,
    },
}

/// `[[rules]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Bucket alias the rule applies to.
    pub bucket: String,
    /// Key prefix, matched on whole path segments; may hold `{sub}` and `{claim.NAME}`.
    #[serde(default)]
    pub prefix: String,
    /// `GET` (implies `HEAD`), `PUT` (PUT and POST uploads), `DELETE`.
    #[serde(default = "default_rule_methods")]
    pub methods: Vec<Permission>,
    /// Who: `"public"`, `"authenticated"` or `{ claims = {...} }`.
    pub allow: AllowConfig,
    /// Serve every type inline (HTML, SVG, XML and JavaScript included) instead of only the
    /// passive ones.
    #[serde(default)]
    pub inline_active_content: bool,
    /// Canned ACLs the rule's holders may give uploads (`private`, `public-read`).
    #[serde(default = "default_rule_acls")]
    pub acls: Vec<Acl>,
}

/// `[cache]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory the cached bodies may take.
    #[serde(default = "default_cache_capacity")]
    pub capacity: ByteSize,
    /// Larger objects stream through uncached.
    #[serde(default = "default_max_object_size")]
    pub max_object_size: ByteSize,
    /// How long an entry is served without asking S3.
    #[serde(default = "default_cache_ttl", deserialize_with = "de_duration")]
    pub ttl: Duration,
    /// How long past `ttl` an entry may be served when S3 fails.
    #[serde(default = "default_stale_if_error", deserialize_with = "de_duration")]
    pub stale_if_error: Duration,
    /// How long a missing object is remembered as missing.
    #[serde(default = "default_negative_ttl", deserialize_with = "de_duration")]
    pub negative_ttl: Duration,
    /// `max-age` given to browsers.
    #[serde(default = "default_browser_max_age", deserialize_with = "de_duration")]
    pub browser_max_age: Duration,
}

/// `[signing]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// Files holding URL-signing secrets; the first signs, all verify.
    #[serde(default)]
    pub secret_files: Vec<PathBuf>,
    /// URLs minted within one window are identical.
    #[serde(default = "default_window", deserialize_with = "de_duration")]
    pub window: Duration,
    /// URLs stay valid this long past their window's end.
    #[serde(default = "default_grace", deserialize_with = "de_duration")]
    pub grace: Duration,
    /// Most keys in one `POST /_sign`.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Allow `kind: "s3"` URLs for PUT: the browser uploads straight to S3, so
    /// `upload.max_size` is not enforced on them.
    #[serde(default)]
    pub allow_s3_put: bool,
}

/// ACL given to uploaded objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acl {
    /// Only s3warden (and the bucket owner) can read it.
    Private,
    /// Anyone can read it straight from S3.
    PublicRead,
    /// Private, with no ACL named anywhere: what buckets with ACLs disabled need for S3 PUT
    /// URLs, which otherwise sign `private` (s3warden's own uploads never send it).
    None,
}

impl Acl {
    /// The canned ACL's name, as S3 spells it (`none`: no ACL sent).
    pub fn as_str(self) -> &'static str {
        match self {
            Acl::Private => "private",
            Acl::PublicRead => "public-read",
            Acl::None => "none",
        }
    }

    /// The `x-amz-acl` header s3warden's own upload under this ACL carries. Only `public-read`
    /// is sent: a new object without one is private on every S3, and buckets with ACLs disabled
    /// (AWS's default for new buckets) refuse every ACL, `private` included.
    pub fn header(self) -> Option<&'static str> {
        (self == Acl::PublicRead).then_some("public-read")
    }

    /// The ACL a client names (`private` or `public-read`; `none` is the operator's setting).
    pub fn from_client(name: &str) -> Option<Acl> {
        match name.trim() {
            "private" => Some(Acl::Private),
            "public-read" => Some(Acl::PublicRead),
            _ => None,
        }
    }

    /// The ACL `as_str` names.
    pub fn from_name(name: &str) -> Option<Acl> {
        match name {
            "none" => Some(Acl::None),
            other => Acl::from_client(other),
        }
    }
}

/// `[upload]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Largest upload accepted.
    #[serde(default = "default_upload_max")]
    pub max_size: ByteSize,
    /// ACL when the request names none.
    #[serde(default = "default_acl")]
    pub default_acl: Acl,
    /// Memory all uploads of unknown length may hold together in their part buffers; past it,
    /// uploads wait briefly for room, then get 503.
    #[serde(default = "default_upload_buffer_memory")]
    pub buffer_memory: ByteSize,
}

impl UploadConfig {
    /// The part size of multipart uploads: S3's 10,000 parts must hold `max_size`, and no part
    /// is smaller than 8 MiB (S3's minimum is 5 MiB).
    pub fn part_size(&self) -> u64 {
        (8 * 1024 * 1024u64).max(self.max_size.bytes().div_ceil(10_000))
    }
}

/// `[cors]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to make credentialed cross-origin requests (`scheme://host[:port]`).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[serde(default = "default_cors_max_age", deserialize_with = "de_duration")]
    pub max_age: Duration,
    /// Request headers cross-origin pages may send, besides the default list.
    #[serde(default)]
    pub allowed_headers: Vec<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a `tracing` filter directive.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 8080))]
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(20)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_header_size() -> ByteSize {
    ByteSize::kib(32)
}
fn default_min_body_rate() -> ByteSize {
    ByteSize::kib(1)
}
fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
fn default_addressing() -> Addressing {
    Addressing::Auto
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_s3_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retries() -> u32 {
    2
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}
fn default_jwks_cooldown() -> Duration {
    Duration::from_secs(30)
}
fn default_cookie() -> String {
    "s3warden_token".to_owned()
}
fn default_space_separated_claims() -> Vec<String> {
    vec!["scope".to_owned(), "scp".to_owned()]
}
fn default_token_cache_entries() -> u64 {
    100_000
}
fn default_rule_methods() -> Vec<Permission> {
    vec![Permission::Get]
}
fn default_rule_acls() -> Vec<Acl> {
    vec![Acl::Private]
}
fn default_cache_capacity() -> ByteSize {
    ByteSize::mib(512)
}
fn default_max_object_size() -> ByteSize {
    ByteSize::mib(8)
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_stale_if_error() -> Duration {
    Duration::from_secs(3600)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_browser_max_age() -> Duration {
    Duration::from_secs(3600)
}
fn default_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_grace() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_batch() -> usize {
    1000
}
fn default_upload_max() -> ByteSize {
    ByteSize::mib(100)
}
fn default_upload_buffer_memory() -> ByteSize {
    ByteSize::mib(256)
}
fn default_acl() -> Acl {
    Acl::Private
}
fn default_cors_max_age() -> Duration {
    Duration::from_secs(3600)
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".to_owned()
}

macro_rules! impl_default_from_serde {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                toml::from_str("").expect("every field has a default")
            }
        }
    )*};
}
impl_default_from_serde!(
    ServerConfig,
    AdminConfig,
    S3Config,
    AuthConfig,
    CacheConfig,
    SigningConfig,
    UploadConfig,
    CorsConfig,
    LogConfig
);

/// One thing wrong with a configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `cache.capacity` or `rules[2].prefix`.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// 1-based line in the file, when it could be found.
    pub line: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or does not fit the schema.
    #[error("{path}: {message}")]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Values that parse but are not acceptable.
    #[error("{path}: {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, parses and validates the file at `path`, then loads the secrets it names;
    /// `checks` adds what the components built from it need of their sections.
    pub fn load(path: &Path, env: &Environment, checks: Checks<'_>) -> Result<Config, ConfigError> {
        Self::load_needing(path, env, checks, Needs::ALL)
    }

    /// As [`Config::load`], reading only the secrets `needs` names (for commands that use a
    /// few of them: `s3warden token` needs no S3 credentials).
    pub fn load_needing(
        path: &Path,
        env: &Environment,
        checks: Checks<'_>,
        needs: Needs,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::build(&text, base, env, needs, checks).map_err(|e| e.with_path(path))
    }

    /// Parses and validates TOML text, then reads the files it names; relative file paths are
    /// taken from `base`.
    pub fn from_toml(
        text: &str,
        base: &Path,
        env: &Environment,
        checks: Checks<'_>,
    ) -> Result<Config, ConfigError> {
        Self::build(text, base, env, Needs::ALL, checks)
    }

    /// Parses and validates TOML text without reading the files it names.
    pub fn parse(
        text: &str,
        base: &Path,
        env: &Environment,
        checks: Checks<'_>,
    ) -> Result<Config, ConfigError> {
        Self::build(text, base, env, Needs::NOTHING, checks)
    }

    fn build(
        text: &str,
        base: &Path,
        env: &Environment,
        needs: Needs,
        checks: Checks<'_>,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::new(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.resolve_paths(base);
        config.apply_environment(env);
        let mut problems = config.validate();
        if needs != Needs::NOTHING {
            match Secrets::load(&config, env, needs) {
                Ok(secrets) => config.secrets = secrets,
                Err(more) => problems.extend(more),
            }
        }
        let mut v = Validator::default();
        checks(&config, &mut v);
        problems.extend(v.into_problems());
        if problems.is_empty() {
            return Ok(config);
        }
        for problem in &mut problems {
            problem.line = locate::line_of(text, &problem.key);
        }
        Err(ConfigError::Invalid {
            path: PathBuf::new(),
            problems,
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for store in std::iter::once(&mut self.s3).chain(self.stores.values_mut()) {
            for p in [
                &mut store.access_key_id_file,
                &mut store.secret_access_key_file,
                &mut store.session_token_file,
            ]
            .into_iter()
            .flatten()
            {
                fix(p);
            }
        }
        for p in [&mut self.auth.hmac_secret_file, &mut self.admin.token_file]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        self.auth.public_key_files.iter_mut().for_each(fix);
        self.signing.secret_files.iter_mut().for_each(fix);
        if let Some(tls) = &mut self.server.tls {
            fix(&mut tls.cert_file);
            fix(&mut tls.key_file);
        }
    }

    /// Fills endpoint and region from the standard AWS environment when the file leaves them
    /// out. `AWS_ENDPOINT_URL*` applies to `[s3]` only; another store without an endpoint is
    /// AWS's for its region.
    fn apply_environment(&mut self, env: &Environment) {
        let region = || {
            env.get("AWS_REGION")
                .or_else(|| env.get("AWS_DEFAULT_REGION"))
        };
        let aws_endpoint = |store: &S3Config| {
            let region = store.region.as_deref()?;
            Some(format!("https://s3.{region}.amazonaws.com"))
        };
        let s3 = &mut self.s3;
        if s3.region.is_none() {
            s3.region = region();
        }
        if s3.endpoint.is_none() {
            s3.endpoint = env
                .get("AWS_ENDPOINT_URL_S3")
                .or_else(|| env.get("AWS_ENDPOINT_URL"))
                .or_else(|| aws_endpoint(s3));
        }
        for store in self.stores.values_mut() {
            if store.region.is_none() {
                store.region = region();
            }
            if store.endpoint.is_none() {
                store.endpoint = aws_endpoint(store);
            }
        }
    }

    /// Every store with its id: `s3` for `[s3]`, then `stores.NAME` for each `[stores.NAME]`.
    /// The id is also the config key its settings are reported under.
    pub fn stores(&self) -> impl Iterator<Item = (String, &S3Config)> {
        std::iter::once((DEFAULT_STORE.to_owned(), &self.s3)).chain(
            self.stores
                .iter()
                .map(|(name, store)| (format!("stores.{name}"), store)),
        )
    }

    /// The id of the store that holds a bucket (see [`Config::stores`]).
    pub fn store_of(bucket: &BucketConfig) -> String {
        match &bucket.store {
            Some(name) => format!("stores.{name}"),
            None => DEFAULT_STORE.to_owned(),
        }
    }

    /// A store's settings by id.
    pub fn store(&self, id: &str) -> Option<&S3Config> {
        match id.strip_prefix("stores.") {
            Some(name) => self.stores.get(name),
            None => (id == DEFAULT_STORE).then_some(&self.s3),
        }
    }

    /// The base URL of proxy-signed URLs and private upload URLs, without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let addr = self
                    .server
                    .listen
                    .first()
                    .copied()
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
                let scheme = if self.server.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                if addr.ip().is_unspecified() {
                    format!("{scheme}://localhost:{}", addr.port())
                } else {
                    // An IPv6 address is bracketed, as URLs need it.
                    format!("{scheme}://{addr}")
                }
            }
        }
    }

    /// Every problem with the values themselves (not with the files they name).
    pub fn validate(&self) -> Vec<Problem> {
        let mut v = values::Validator::default();
        values::validate(self, &mut v);
        v.into_problems()
    }
}

impl ConfigError {
    fn with_path(mut self, file: &Path) -> Self {
        match &mut self {
            ConfigError::Read { path, .. }
            | ConfigError::Syntax { path, .. }
            | ConfigError::Invalid { path, .. } => *path = file.to_owned(),
        }
        self
    }
}

//! JWT verification with `jsonwebtoken`: an algorithm allow-list, keys from an HMAC secret, PEM
//! files and a JWKS URL, and a cache of verified tokens so each token's signature is checked once.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::Identity;
use super::jwks::Jwks;
use crate::config::{Config, Validator};
use crate::metrics::Metrics;

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Algorithms s3warden accepts at all (others, and `none`, are always refused).
const SUPPORTED: [Algorithm; 10] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a token was refused. The reason is counted in metrics and logged at debug level; the
/// client only learns `invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token too large")]
    TooLarge,
    /// Not three base64url segments of JSON.
    #[error("malformed token")]
    Malformed,
    /// `alg` outside the allow-list (including `none`).
    #[error("algorithm not allowed")]
    Algorithm,
    /// No configured key fits the token's algorithm and `kid`.
    #[error("no key for this token")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` passed.
    #[error("token expired")]
    Expired,
    /// `nbf` in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `exp` missing.
    #[error("exp claim missing")]
    MissingExp,
    /// A registered claim of the wrong JSON type.
    #[error("claim of the wrong type")]
    ClaimType,
    /// `iss` missing or wrong.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` missing or wrong.
    #[error("wrong audience")]
    Audience,
}

impl TokenError {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            TokenError::TooLarge => "too_large",
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::MissingExp => "missing_exp",
            TokenError::ClaimType => "claim_type",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
        }
    }
}

fn from_jwt_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => TokenError::MissingExp,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::Issuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::Audience,
        ErrorKind::InvalidClaimFormat(_) => TokenError::ClaimType,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) => {
            TokenError::Signature
        }
        _ => TokenError::Malformed,
    }
}

/// A key that can verify tokens.
#[derive(Clone)]
pub(super) struct VerifyKey {
    /// `kid` from a JWKS; PEM keys and the HMAC secret have none.
    pub kid: Option<String>,
    /// The only algorithm this key may verify, when its JWK names one.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl VerifyKey {
    fn fits(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// Verifies tokens; rebuilt (with an empty cache) whenever the config is reloaded.
pub struct Verifier {
    validations: HashMap<Algorithm, Validation>,
    static_keys: Vec<VerifyKey>,
    jwks: Option<Arc<Jwks>>,
    leeway: u64,
    verified: moka::sync::Cache<[u8; 32], Arc<Identity>>,
    metrics: Arc<Metrics>,
    id: u64,
}

impl Verifier {
    /// Builds a verifier from a validated config; starts the JWKS refresh when configured,
    /// keeping the JWKS keys of the verifier it replaces (if any) should the first fetch fail.
    pub async fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        previous: Option<&Verifier>,
    ) -> Verifier {
        let auth = &config.auth;
        let algorithms = algorithms(config);
        let leeway = auth.leeway.as_secs();
        let validations = algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = &auth.issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                match &auth.audience {
                    Some(aud) => {
                        v.set_audience(&[aud]);
                        required.push("aud");
                    }
                    None => v.validate_aud = false,
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        let mut static_keys = Vec::new();
        if let Some(secret) = &config.secrets.hmac_secret {
            static_keys.push(VerifyKey {
                kid: None,
                alg: None,
                key: DecodingKey::from_secret(secret),
            });
        }
        for (_, pem) in &config.secrets.public_keys {
            if let Ok(key) = decoding_key_from_pem(pem) {
                static_keys.push(VerifyKey {
                    kid: None,
                    alg: None,
                    key,
                });
            }
        }
        let jwks = match &auth.jwks_url {
            Some(url) => {
                let previous = previous.and_then(|v| v.jwks.as_deref());
                let (refresh, cooldown) = (auth.jwks_refresh, auth.jwks_cooldown);
                Some(Jwks::start(url.clone(), refresh, cooldown, previous).await)
            }
            None => None,
        };
        let verified = moka::sync::Cache::builder()
            .max_capacity(auth.token_cache_entries)
            .expire_after(UntilExp { leeway })
            .build();
        Verifier {
            validations,
            static_keys,
            jwks,
            leeway,
            verified,
            metrics,
            id: VERIFIERS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// True when at least one key is loaded (for `/readyz`).
    pub fn has_keys(&self) -> bool {
        !self.static_keys.is_empty() || self.jwks.as_ref().is_some_and(|j| j.has_keys())
    }

    /// Verifies a token, remembering the result on the client connection: a browser sends the
    /// same token again and again on one connection, and then nothing needs hashing or looking up.
    pub async fn verify_on(
        &self,
        token: &str,
        connection: Option<&ConnectionMemo>,
    ) -> Result<Arc<Identity>, TokenError> {
        if let Some(connection) = connection {
            let remembered = connection
                .0
                .lock()
                .expect("lock not poisoned")
                .as_ref()
                .filter(|m| m.verifier == self.id && &*m.token == token)
                .map(|m| m.identity.clone());
            if let Some(identity) = remembered
                && self.unexpired(&identity)
            {
                return Ok(identity);
            }
        }
        let identity = self.verify(token).await?;
        if let Some(connection) = connection {
            let memo = TokenMemo {
                verifier: self.id,
                token: token.into(),
                identity: identity.clone(),
            };
            *connection.0.lock().expect("lock not poisoned") = Some(memo);
        }
        Ok(identity)
    }

    /// A verified identity's token has not expired (`exp` plus the leeway; an `exp` near the
    /// largest number does not wrap around).
    fn unexpired(&self, identity: &Identity) -> bool {
        identity.exp.saturating_add(self.leeway) > now()
    }

    /// Verifies a token: from the cache when it was verified before and is still unexpired.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.verified.get(&digest)
            && self.unexpired(&identity)
        {
            return Ok(identity);
        }
        // Boxed: the cached path's future stays small.
        let identity = Arc::new(Box::pin(self.verify_uncached(token)).await?);
        self.verified.insert(digest, identity.clone());
        Ok(identity)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Identity, TokenError> {
        if token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        let header = decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
            _ => TokenError::Malformed,
        })?;
        // Extensions a token says must be understood: none are here, and RFC 7515 §4.1.11 says
        // such a token must be refused.
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        let alg = header.alg;
        let validation = self.validations.get(&alg).ok_or(TokenError::Algorithm)?;
        let keys = self.candidates(alg, header.kid.as_deref()).await;
        let mut last = TokenError::UnknownKey;
        for key in keys {
            self.metrics.token_verified();
            match decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return identity_from(data.claims),
                Err(e) => {
                    last = from_jwt_error(&e);
                    if last != TokenError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// The keys that may have signed a token with `alg` and `kid`: static keys of the right
    /// family, and JWKS keys with that `kid` (re-fetching the JWKS once, within its cooldown,
    /// when the `kid` is unknown).
    async fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<VerifyKey> {
        let mut keys: Vec<VerifyKey> = self
            .static_keys
            .iter()
            .filter(|k| k.fits(alg))
            .cloned()
            .collect();
        if let Some(jwks) = &self.jwks {
            let mut found = jwks.keys_for(alg, kid);
            if found.is_empty() && kid.is_some() {
                jwks.refresh_for_unknown_kid().await;
                found = jwks.keys_for(alg, kid);
            }
            keys.extend(found);
        }
        keys
    }
}

/// What one client connection proved: the last token verified on it. A browser sends the same
/// token again and again on one connection, and then nothing needs hashing or looking up.
#[derive(Clone, Default)]
pub struct ConnectionMemo(Arc<std::sync::Mutex<Option<TokenMemo>>>);

/// The last token verified on a connection, by which verifier (a reload makes a new one).
#[derive(Clone)]
struct TokenMemo {
    verifier: u64,
    token: Box<str>,
    identity: Arc<Identity>,
}

/// Tells verifiers apart, so a connection's memo never outlives a reload.
static VERIFIERS: AtomicU64 = AtomicU64::new(0);

/// Registered claims beyond what `jsonwebtoken` checks: `exp` must be an integer, and `sub`,
/// when present, a string.
fn identity_from(claims: Map<String, Value>) -> Result<Identity, TokenError> {
    let exp = match claims.get("exp") {
        Some(v) => v.as_u64().ok_or(TokenError::ClaimType)?,
        None => return Err(TokenError::MissingExp),
    };
    for name in ["nbf", "iat"] {
        if claims.get(name).is_some_and(|v| !v.is_u64()) {
            return Err(TokenError::ClaimType);
        }
    }
    if claims.get("sub").is_some_and(|v| !v.is_string()) {
        return Err(TokenError::ClaimType);
    }
    Ok(Identity::new(claims, exp))
}

/// Expires a cached identity when its token does.
struct UntilExp {
    leeway: u64,
}

impl moka::Expiry<[u8; 32], Arc<Identity>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        identity: &Arc<Identity>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            identity
                .exp
                .saturating_add(self.leeway)
                .saturating_sub(now()),
        ))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A PEM public key of any supported kind (RSA, EC, Ed25519).
pub(super) fn decoding_key_from_pem(
    pem: &[u8],
) -> Result<DecodingKey, jsonwebtoken::errors::Error> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
}

/// The configured algorithms, or the default for the configured keys.
fn algorithms(config: &Config) -> Vec<Algorithm> {
    let auth = &config.auth;
    match &auth.algorithms {
        Some(names) => names
            .iter()
            .filter_map(|n| Algorithm::from_str(n).ok())
            .filter(|a| SUPPORTED.contains(a))
            .collect(),
        None => {
            let mut algs = Vec::new();
            if auth.hmac_secret_file.is_some() || auth.hmac_secret_env.is_some() {
                algs.push(Algorithm::HS256);
            }
            if !auth.public_key_files.is_empty() || auth.jwks_url.is_some() {
                algs.extend([Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]);
            }
            algs
        }
    }
}

pub(super) fn validate_config(config: &Config, v: &mut Validator) {
    let auth = &config.auth;
    if let Some(names) = &auth.algorithms {
        for (i, name) in names.iter().enumerate() {
            match Algorithm::from_str(name) {
                Ok(a) if SUPPORTED.contains(&a) => {
                    let has_key = match a.family() {
                        jsonwebtoken::AlgorithmFamily::Hmac => {
                            auth.hmac_secret_file.is_some() || auth.hmac_secret_env.is_some()
                        }
                        _ => !auth.public_key_files.is_empty() || auth.jwks_url.is_some(),
                    };
                    if !has_key {
                        v.problem(
                            format!("auth.algorithms[{i}]"),
                            format!("{name} is allowed but no key for it is configured"),
                        );
                    }
                }
                _ => v.problem(
                    format!("auth.algorithms[{i}]"),
                    format!(
                        "{name:?} is not supported: use HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA"
                    ),
                ),
            }
        }
    }
    if let Some(url) = &auth.jwks_url {
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" && super::jwks::is_loopback(&u) => {}
            Ok(u) if u.scheme() == "http" => v.problem(
                "auth.jwks_url",
                "must be https:// (plain http:// is only for a loopback address: anyone on the \
                 path could hand s3warden their own keys)",
            ),
            _ => v.problem("auth.jwks_url", "must be an https:// URL"),
        }
    }
    if auth.hmac_secret_file.is_some() && auth.hmac_secret_env.is_some() {
        v.problem(
            "auth.hmac_secret_env",
            "set either hmac_secret_file or hmac_secret_env, not both",
        );
    }
    if auth.token_cache_entries == 0 {
        v.problem("auth.token_cache_entries", "must be greater than zero");
    }
}

/// Problems with the key files themselves, found once they are read.
pub(super) fn check_keys(config: &Config, v: &mut Validator) {
    for (i, (path, pem)) in config.secrets.public_keys.iter().enumerate() {
        if decoding_key_from_pem(pem).is_err() {
            v.problem(
                format!("auth.public_key_files[{i}]"),
                format!(
                    "{} is not a PEM RSA, EC or Ed25519 public key",
                    path.display()
                ),
            );
        }
    }
}

//! Authentication: finds the credentials a request carries (bearer header, cookie, query
//! parameter, proxy-signed URL) and verifies them. Every credential presented must be valid;
//! a bad one never falls through to a weaker one.

mod jwks;
mod jwt;
mod token;

use std::sync::Arc;

use serde_json::{Map, Value};

pub use jwt::{ConnectionMemo, TokenError, Verifier};
pub use token::{SignedParams, Source, find_signature, find_tokens};

use crate::config::{Config, Validator};

/// A verified token's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `sub`, when it is a string.
    pub sub: Option<String>,
    /// All claims.
    pub claims: Map<String, Value>,
    /// `exp` (Unix seconds).
    pub exp: u64,
}

impl Identity {
    /// An identity from verified claims.
    pub fn new(claims: Map<String, Value>, exp: u64) -> Identity {
        let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        Identity { sub, claims, exp }
    }
}

/// What a request proved about itself.
#[derive(Debug, Clone, Default)]
pub struct Authenticated {
    /// The identity of the first verified token, if any token was presented.
    pub identity: Option<Arc<Identity>>,
    /// Where that token came from.
    pub source: Option<Source>,
    /// The `exp` and `sig` of a proxy-signed URL, not yet verified (that needs the route).
    pub signed: Option<SignedParams>,
}

/// What token verification needs of `[auth]`: algorithms it knows with keys for them, a JWKS
/// URL it may fetch, and key files that hold keys (once they are read).
pub(crate) fn check(config: &Config, v: &mut Validator) {
    jwt::validate_config(config, v);
    jwt::check_keys(config, v);
}

/// Mints an HS256 token carrying `claims` plus `iat` and `exp` = now + `ttl` (for the demo and
/// `s3warden token`).
pub fn mint_hs256(secret: &[u8], claims: Value, ttl: std::time::Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = match claims {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("HS256 over a JSON object cannot fail")
}

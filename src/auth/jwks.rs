//! Keys from a JWKS URL: fetched at start, refreshed periodically and on an unknown `kid` (at most
//! once per cooldown). A failed fetch keeps the last good keys; with none ever loaded, every
//! token is refused. Keys are looked up by `kid` only; token headers never name a URL to fetch.

use std::str::FromStr;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::jwt::VerifyKey;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A JWKS endpoint and the keys last fetched from it.
pub struct Jwks {
    url: String,
    http: reqwest::Client,
    keys: RwLock<Arc<Vec<VerifyKey>>>,
    /// When the last fetch started; guards the unknown-`kid` cooldown.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    cooldown: Duration,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Why a fetch failed (logged; the old keys stay).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("status {0}")]
    Status(reqwest::StatusCode),
    #[error("document larger than 1 MiB")]
    TooLarge,
    #[error("not a JWKS document: {0}")]
    Parse(String),
}

/// Whether a URL names this machine (`localhost`, 127.0.0.0/8, `::1`).
pub(super) fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Jwks {
    /// Fetches the keys once and starts the periodic refresh (which ends when this is dropped).
    /// `previous` is a JWKS of the same URL this one replaces (on reload): its keys stay in use
    /// when the first fetch fails, as a failed refresh keeps the last good keys.
    pub async fn start(
        url: String,
        refresh: Duration,
        cooldown: Duration,
        previous: Option<&Jwks>,
    ) -> Arc<Jwks> {
        let kept = previous
            .filter(|p| p.url == url)
            .map(Jwks::current)
            .unwrap_or_default();
        // Redirects are followed (identity providers move their JWKS), but never from
        // https:// down to plain http:// off loopback, where anyone on the path could answer.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 3 {
                attempt.error("too many redirects")
            } else if attempt.url().scheme() == "https" || is_loopback(attempt.url()) {
                attempt.follow()
            } else {
                attempt.error("redirect to plain http refused")
            }
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(redirects)
            .build()
            .expect("static client settings");
        let jwks = Arc::new(Jwks {
            url,
            http,
            keys: RwLock::new(kept),
            last_fetch: tokio::sync::Mutex::new(None),
            cooldown,
        });
        jwks.refresh().await;
        let weak: Weak<Jwks> = Arc::downgrade(&jwks);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(jwks) = weak.upgrade() else { return };
                jwks.refresh().await;
            }
        });
        jwks
    }

    /// True when keys were ever loaded.
    pub fn has_keys(&self) -> bool {
        !self.current().is_empty()
    }

    fn current(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.read().expect("lock not poisoned").clone()
    }

    /// Keys that may verify a token with `alg` and `kid`.
    pub(super) fn keys_for(&self, alg: Algorithm, kid: Option<&str>) -> Vec<VerifyKey> {
        let keys = self.current();
        let fits =
            |k: &&VerifyKey| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .filter(fits)
                .cloned()
                .collect(),
            None => keys.iter().filter(fits).cloned().collect(),
        }
    }

    /// Re-fetches for an unknown `kid`, unless a fetch started within the cooldown. Concurrent
    /// callers wait for one fetch instead of making their own.
    pub async fn refresh_for_unknown_kid(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.cooldown) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch_and_store().await;
    }

    async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_store().await;
    }

    async fn fetch_and_store(&self) {
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS loaded");
                *self.keys.write().expect("lock not poisoned") = Arc::new(keys);
            }
            Err(e) => tracing::warn!(error = %e, "JWKS fetch failed; keeping the last good keys"),
        }
    }

    async fn fetch(&self) -> Result<Vec<VerifyKey>, FetchError> {
        let mut response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| FetchError::Http(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Http(e.without_url().to_string()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
        }
        parse_set(&body)
    }
}

/// The usable signing keys of a JWKS document; keys it cannot use are skipped, not fatal.
fn parse_set(body: &[u8]) -> Result<Vec<VerifyKey>, FetchError> {
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| FetchError::Parse(e.to_string()))?;
    let mut keys = Vec::new();
    for value in raw.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
        let kid = jwk.common.key_id.clone();
        keys.push(VerifyKey { kid, alg, key });
    }
    Ok(keys)
}

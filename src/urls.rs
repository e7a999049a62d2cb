//! Signed URLs that stay the same all window long, so browsers cache what they point at:
//! proxy-signed URLs (HMAC, verified by s3warden) and S3 pre-signed URLs (SigV4, dated at the
//! window start). Pure functions of (key, method, time); the batch endpoint lives in `proxy`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::utf8_percent_encode;
use sha2::Sha256;

use http::HeaderValue;

use crate::auth::SignedParams;
use crate::config::{Acl, Config, Permission};
use crate::policy::UploadTerms;
use crate::route::Key;
use crate::s3::credentials::Keys;
use crate::s3::sigv4::{QUERY_VALUE, SignError};
use crate::s3::{S3Object, Stores};

/// Domain separation: these MACs mean "s3warden URL, version 1" and nothing else.
const DOMAIN: &str = "s3warden-url-v1";

/// The window a moment falls in: URLs minted in it are identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Window start (Unix seconds): the `X-Amz-Date` of S3 URLs.
    pub start: u64,
    /// Expiry (Unix seconds): window end plus grace.
    pub expires: u64,
}

impl Window {
    /// The window `now` falls in, for window length `window` and `grace`.
    pub fn at(now: SystemTime, window: Duration, grace: Duration) -> Window {
        let now = unix(now);
        let w = window.as_secs().max(1);
        let start = now / w * w;
        Window {
            start,
            expires: start + w + grace.as_secs(),
        }
    }

    /// `expires` as RFC 3339.
    pub fn expires_rfc3339(&self) -> String {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(self.expires))
            .to_string()
    }
}

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a proxy-signed URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlError {
    /// No secret produced this signature (or it is malformed, or names another key/method).
    BadSignature,
    /// The signature is right but the URL has expired.
    Expired,
}

/// Signs and verifies URLs.
#[derive(Clone)]
pub struct UrlSigner {
    /// One HMAC per signing secret, already keyed: the first signs, any verifies.
    keys: Vec<Hmac<Sha256>>,
    public_url: String,
    window: Duration,
    grace: Duration,
    stores: Stores,
    /// S3 URLs already signed in the current window: SigV4 costs microseconds per URL, and an
    /// application asks for the same ones on every page load.
    s3_urls: Arc<Mutex<WindowUrls>>,
}

/// The S3 URLs of one window; emptied when the window rolls over.
#[derive(Default)]
struct WindowUrls {
    start: u64,
    /// By method, object and the serial of the keys that signed them.
    urls: HashMap<(Permission, S3Object, u64), Arc<str>>,
}

/// Most S3 URLs remembered per window (about 500 bytes each).
const MAX_REMEMBERED_URLS: usize = 32_768;

impl UrlSigner {
    /// From a loaded config and its stores.
    pub fn new(config: &Config, stores: &Stores) -> UrlSigner {
        for (id, store) in stores.iter() {
            if store.keyring.expires() {
                tracing::warn!(
                    store = %id,
                    "S3 credentials are temporary: S3 pre-signed URLs (kind \"s3\") stop working \
                     when the session expires, which may be before their window ends (the /_sign \
                     answer's expires says when); use kind \"proxy\" URLs with roles"
                );
            }
        }
        UrlSigner {
            keys: config
                .secrets
                .signing_secrets
                .iter()
                .map(|secret| Hmac::new_from_slice(secret).expect("HMAC takes any key length"))
                .collect(),
            public_url: config.public_url(),
            window: config.signing.window,
            grace: config.signing.grace,
            stores: stores.clone(),
            s3_urls: Arc::default(),
        }
    }

    /// True when proxy URLs can be signed (a secret is configured).
    pub fn can_sign_proxy(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The window `now` falls in.
    pub fn window(&self, now: SystemTime) -> Window {
        Window::at(now, self.window, self.grace)
    }

    /// The MAC over a URL's fields; a PUT URL's `terms` (type, ACL) are covered too.
    fn mac(
        keyed: &Hmac<Sha256>,
        method: Permission,
        alias: &str,
        key: &Key,
        terms: Option<(&str, &str)>,
        expires: u64,
    ) -> Hmac<Sha256> {
        let mut mac = keyed.clone();
        for part in [DOMAIN, method.as_str(), alias, key.as_str()] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        if let Some((content_type, acl)) = terms {
            for (name, value) in [("ct=", content_type), ("acl=", acl)] {
                mac.update(name.as_bytes());
                mac.update(value.as_bytes());
                mac.update(b"\n");
            }
        }
        let mut digits = std::io::Cursor::new([0u8; 20]);
        write!(digits, "{expires}").expect("a u64 has at most 20 digits");
        let written = digits.position() as usize;
        mac.update(&digits.get_ref()[..written]);
        mac
    }

    /// `{public_url}/{alias}/{key}?exp=…&sig=…`, valid for `method` until `window.expires`.
    /// A PUT URL also carries its `terms` (`&ct=…&acl=…`), which the signature covers.
    pub fn proxy_url(
        &self,
        method: Permission,
        alias: &str,
        key: &Key,
        terms: Option<&UploadTerms>,
        window: Window,
    ) -> Option<String> {
        let keyed = self.keys.first()?;
        let terms = terms.map(|t| (t.content_type.to_str().unwrap_or_default(), t.acl.as_str()));
        let tag = Self::mac(keyed, method, alias, key, terms, window.expires)
            .finalize()
            .into_bytes();
        let mut url = format!(
            "{}/{alias}/{}?exp={}&sig={}",
            self.public_url,
            key.encoded(),
            window.expires,
            URL_SAFE_NO_PAD.encode(tag)
        );
        if let Some((content_type, acl)) = terms {
            url.push_str("&ct=");
            url.extend(utf8_percent_encode(content_type, QUERY_VALUE));
            url.push_str("&acl=");
            url.push_str(acl);
        }
        Some(url)
    }

    /// Checks a proxy signature in constant time against every configured secret, then expiry.
    /// A PUT URL must carry the terms it was signed with; they are returned.
    pub fn verify(
        &self,
        method: Permission,
        alias: &str,
        key: &Key,
        signed: &SignedParams,
        now: SystemTime,
    ) -> Result<Option<UploadTerms>, UrlError> {
        let mut tag = [0u8; 32];
        let len = URL_SAFE_NO_PAD
            .decode_slice(&signed.sig, &mut tag)
            .map_err(|_| UrlError::BadSignature)?;
        let terms = match (method, &signed.content_type, &signed.acl) {
            (Permission::Put, Some(content_type), Some(acl)) => Some((content_type.as_str(), acl)),
            (Permission::Put, _, _) => return Err(UrlError::BadSignature),
            _ => None,
        };
        let valid = self.keys.iter().any(|keyed| {
            Self::mac(
                keyed,
                method,
                alias,
                key,
                terms.map(|(t, a)| (t, a.as_str())),
                signed.expires,
            )
            .verify_slice(&tag[..len])
            .is_ok()
        });
        if !valid {
            return Err(UrlError::BadSignature);
        }
        if unix(now) >= signed.expires {
            return Err(UrlError::Expired);
        }
        // Signed by us, so well-formed; checked all the same.
        terms
            .map(|(content_type, acl)| {
                Some(UploadTerms {
                    content_type: HeaderValue::from_str(content_type).ok()?,
                    acl: Acl::from_name(acl)?,
                })
            })
            .map(|terms| terms.ok_or(UrlError::BadSignature))
            .transpose()
    }

    /// The keys S3 URLs for `store` are signed with at `now`, and when URLs signed with them
    /// in `window` stop working: the window's expiry, or the keys' if that comes first
    /// (temporary credentials take their URLs with them).
    pub fn s3_keys(
        &self,
        store: &str,
        window: Window,
        now: SystemTime,
    ) -> Result<(Arc<Keys>, Window), String> {
        let keyring = &(self.stores.get(store))
            .ok_or_else(|| format!("no S3 credentials loaded for {store}"))?
            .keyring;
        let keys = keyring.current(now)?;
        let expires = keys
            .expires
            .map_or(window.expires, |at| unix(at).min(window.expires));
        Ok((keys, Window { expires, ..window }))
    }

    /// A SigV4 query pre-signed S3 URL dated at the window start, so every call in the window
    /// gives the same URL; it lives `window + grace` (at most S3's seven days). A PUT URL signs
    /// its `terms` as headers (`content-type`, `x-amz-acl`), so S3 refuses any other. `keys`
    /// are the object's store's, from [`UrlSigner::s3_keys`].
    pub fn s3_url(
        &self,
        keys: &Keys,
        method: Permission,
        object: &S3Object,
        terms: Option<&UploadTerms>,
        window: Window,
    ) -> Result<Arc<str>, SignError> {
        if let Some(terms) = terms {
            // Uploads are signed for one caller's choice of type and ACL: not remembered.
            return self
                .presign_s3(keys, method, object, terms.headers().as_slice(), window)
                .map(Into::into);
        }
        let key = (method, object.clone(), keys.serial);
        {
            let remembered = self.s3_urls.lock().expect("lock not poisoned");
            if remembered.start == window.start
                && let Some(url) = remembered.urls.get(&key)
            {
                return Ok(url.clone());
            }
        }
        let url: Arc<str> = self.presign_s3(keys, method, object, &[], window)?.into();
        let mut remembered = self.s3_urls.lock().expect("lock not poisoned");
        if remembered.start != window.start {
            remembered.start = window.start;
            remembered.urls.clear();
        }
        if remembered.urls.len() < MAX_REMEMBERED_URLS {
            remembered.urls.insert(key, url.clone());
        }
        Ok(url)
    }

    fn presign_s3(
        &self,
        keys: &Keys,
        method: Permission,
        object: &S3Object,
        headers: &[(&str, &str)],
        window: Window,
    ) -> Result<String, SignError> {
        let http_method = match method {
            Permission::Get => http::Method::GET,
            Permission::Put => http::Method::PUT,
            Permission::Delete => http::Method::DELETE,
        };
        let store = (self.stores.get(&object.store))
            .ok_or_else(|| SignError::new(format!("no store {}", object.store)))?;
        let url = store.addresser.object_url(object);
        let date = UNIX_EPOCH + Duration::from_secs(window.start);
        let lifetime = Duration::from_secs(window.expires - window.start);
        (store.signer).presign(keys, &http_method, &url, headers, date, lifetime)
    }
}

/// What `s3warden sign` is asked for.
#[derive(Debug, Default)]
pub struct CliRequest<'a> {
    /// `proxy` or `s3`.
    pub kind: &'a str,
    /// `GET`, `PUT` or `DELETE`.
    pub method: &'a str,
    /// PUT: the type uploads are stored with (default: guessed from each key).
    pub content_type: Option<&'a str>,
    /// PUT: the ACL uploads get (default: `upload.default_acl`).
    pub acl: Option<&'a str>,
}

/// `s3warden sign`: URLs for `BUCKET/KEY` targets, in the current window.
pub async fn sign_for_cli(
    config: &Config,
    request: &CliRequest<'_>,
    targets: &[String],
) -> Result<Vec<String>, String> {
    let (kind, method) = (request.kind, request.method);
    let method = match method {
        "GET" => Permission::Get,
        "PUT" => Permission::Put,
        "DELETE" => Permission::Delete,
        other => return Err(format!("unknown method {other}")),
    };
    if method != Permission::Put && (request.content_type.is_some() || request.acl.is_some()) {
        return Err("--content-type and --acl are for PUT URLs".into());
    }
    let acl = match request.acl {
        Some(name) => Some(
            Acl::from_client(name)
                .ok_or_else(|| format!("--acl {name:?}: use private or public-read"))?,
        ),
        None => None,
    };
    // S3 URLs need the stores' credentials (the default chain is asked once).
    let stores = if kind == "s3" {
        Stores::new(config, None).await
    } else {
        Stores::default()
    };
    let signer = UrlSigner::new(config, &stores);
    let policy = crate::policy::Policy::new(config).map_err(|problems| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let window = signer.window(SystemTime::now());
    targets
        .iter()
        .map(|target| {
            let (alias, raw) = target
                .split_once('/')
                .ok_or_else(|| format!("{target}: expected BUCKET/KEY"))?;
            let key = Key::parse(raw).map_err(|e| format!("{target}: {e}"))?;
            let object = policy
                .object_for(alias, &key)
                .ok_or_else(|| format!("{target}: no bucket alias {alias:?} in the config"))?;
            let terms = (method == Permission::Put)
                .then(|| {
                    UploadTerms::new(&key, request.content_type, acl, config.upload.default_acl)
                        .map_err(|_| "--content-type: not a media type".to_owned())
                })
                .transpose()?;
            match kind {
                "s3" => {
                    let (keys, window) =
                        signer.s3_keys(&object.store, window, SystemTime::now())?;
                    signer
                        .s3_url(&keys, method, &object, terms.as_ref(), window)
                        .map(|url| url.to_string())
                        .map_err(|e| e.to_string())
                }
                _ => signer
                    .proxy_url(method, alias, &key, terms.as_ref(), window)
                    .ok_or_else(|| "proxy URLs need signing.secret_files in the config".to_owned()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn windows_are_stable_and_roll_over() {
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3600);
        let a = Window::at(at(86_400 * 100 + 5), day, hour);
        let b = Window::at(at(86_400 * 101 - 1), day, hour);
        assert_eq!(a, b);
        assert_eq!(a.start, 86_400 * 100);
        assert_eq!(a.expires, 86_400 * 101 + 3600);
        let c = Window::at(at(86_400 * 101), day, hour);
        assert_ne!(a, c);
        assert_eq!(
            Window::at(at(0), day, hour).expires_rfc3339(),
            "1970-01-02T01:00:00Z"
        );
    }
}

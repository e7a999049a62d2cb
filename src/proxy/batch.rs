//! `POST /_sign`: one call signs a whole list of keys, each checked against the rules, so an
//! application never makes N calls for N images. URLs are stable within the signing window.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};

use super::Exchange;
use crate::auth::Authenticated;
use crate::config::{Acl, Config, Permission};
use crate::error::ProxyError;
use crate::policy::{Permit, Sign, UploadTerms};
use crate::route::Key;
use crate::s3::S3Error;
use crate::server::{Body, BoxError};
use crate::urls::UrlSigner;

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    bucket: String,
    keys: Vec<KeyItem>,
    #[serde(default)]
    kind: Kind,
    #[serde(default = "default_method")]
    method: Permission,
    /// PUT only: the type every upload is stored with (default: guessed from each key).
    #[serde(default)]
    content_type: Option<String>,
    /// PUT only: the ACL every upload gets (default: `upload.default_acl`).
    #[serde(default)]
    acl: Option<String>,
}

/// A key, or (for PUT) a key with its own type and ACL.
#[derive(Deserialize)]
#[serde(untagged)]
enum KeyItem {
    Key(String),
    Upload(UploadItem),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadItem {
    key: String,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    acl: Option<String>,
}

impl KeyItem {
    fn key(&self) -> &str {
        match self {
            KeyItem::Key(key) | KeyItem::Upload(UploadItem { key, .. }) => key,
        }
    }

    fn terms(&self) -> (Option<&str>, Option<&str>) {
        match self {
            KeyItem::Key(_) => (None, None),
            KeyItem::Upload(item) => (item.content_type.as_deref(), item.acl.as_deref()),
        }
    }
}

/// A key the caller may sign, with what a PUT URL fixes.
struct Approved {
    permit: Permit<Sign>,
    terms: Option<UploadTerms>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// `{public_url}/{bucket}/{key}?exp=…&sig=…`, served by s3warden from its cache.
    #[default]
    Proxy,
    /// A SigV4 pre-signed S3 URL; the browser goes straight to S3.
    S3,
}

fn default_method() -> Permission {
    Permission::Get
}

#[derive(Serialize)]
struct SignResponse<'a> {
    expires: String,
    items: Vec<Item<'a>>,
}

#[derive(Serialize)]
struct Item<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// PUT: the headers the upload is to carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<BTreeMap<&'static str, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

/// Room for one key (up to 1024 bytes, JSON-escaped) in the request body.
const BYTES_PER_KEY: usize = 1100;

/// Batches at least this large are signed on blocking threads, split across the cores:
/// SigV4 costs microseconds per URL, too long to hold an async worker for a thousand of them.
const PARALLEL_FROM: usize = 64;

type Signed = Result<(String, Option<UploadTerms>), &'static str>;

/// Signs each permitted key with `sign`, in order; large batches in parallel chunks.
async fn sign_all<F>(
    permits: Vec<Result<Approved, &'static str>>,
    sign: F,
    signer: &UrlSigner,
    parallel: bool,
) -> Vec<Signed>
where
    F: Fn(&UrlSigner, &Approved) -> Result<String, &'static str> + Clone + Send + 'static,
{
    let run =
        |signer: &UrlSigner, chunk: Vec<Result<Approved, &'static str>>, sign: &F| -> Vec<Signed> {
            chunk
                .into_iter()
                .map(|approved| {
                    let approved = approved?;
                    Ok((sign(signer, &approved)?, approved.terms))
                })
                .collect()
        };
    if permits.len() < PARALLEL_FROM || !parallel {
        return run(signer, permits, &sign);
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk_len = permits.len().div_ceil(workers);
    let mut permits = permits.into_iter();
    let mut tasks = Vec::with_capacity(workers);
    loop {
        let chunk: Vec<_> = permits.by_ref().take(chunk_len).collect();
        if chunk.is_empty() {
            break;
        }
        let (signer, sign) = (signer.clone(), sign.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            run(&signer, chunk, &sign)
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        match task.await {
            Ok(urls) => out.extend(urls),
            Err(_) => out.extend(std::iter::repeat_n(Err("internal_error"), chunk_len)),
        }
    }
    out
}

impl Exchange<'_> {
    /// Whether the caller may have a URL for `item`, and for a PUT, the type and ACL it fixes.
    fn approve(
        &self,
        auth: &Authenticated,
        request: &SignRequest,
        item: &KeyItem,
    ) -> Result<Approved, &'static str> {
        let method = request.method;
        if method == Permission::Put
            && request.kind == Kind::S3
            && !self.live.config.signing.allow_s3_put
        {
            return Err("s3_put_disabled");
        }
        let key = Key::parse(item.key()).map_err(|_| "invalid_key")?;
        let permit = self
            .authorize_signing(auth, &request.bucket, &key, method)
            .map_err(|refused| match refused {
                ProxyError::BadKey(_) => "invalid_key",
                _ => "forbidden",
            })?;
        if method != Permission::Put {
            return Ok(Approved {
                permit,
                terms: None,
            });
        }
        let (content_type, acl) = item.terms();
        let acl = match acl.or(request.acl.as_deref()) {
            Some(name) => Some(Acl::from_client(name).ok_or("invalid_acl")?),
            None => None,
        };
        let terms = UploadTerms::new(
            &key,
            content_type.or(request.content_type.as_deref()),
            acl,
            self.live.config.upload.default_acl,
        )
        .map_err(|_| "invalid_content_type")?;
        if !permit.may_set_acl(terms.acl) {
            return Err("acl_not_allowed");
        }
        Ok(Approved {
            permit,
            terms: Some(terms),
        })
    }

    /// Signs every key the caller may use, and says why for the others.
    pub(super) async fn sign_batch<B>(
        &self,
        auth: &Authenticated,
        body: B,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let max_batch = self.live.config.signing.max_batch;
        let limit = max_batch * BYTES_PER_KEY + 64 * 1024;
        // The JSON must arrive whole as quickly as a request head must.
        let within = self.live.config.server.header_read_timeout;
        let bytes = tokio::time::timeout(within, Limited::new(body, limit).collect())
            .await
            .map_err(|_| ProxyError::RequestTimeout)?
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ProxyError::PayloadTooLarge
                } else {
                    ProxyError::BadRequest("the request body could not be read".into())
                }
            })?
            .to_bytes();
        let request: SignRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ProxyError::BadRequest(format!("invalid sign request: {e}")))?;
        if request.keys.len() > max_batch {
            return Err(ProxyError::PayloadTooLarge);
        }
        let signer = &self.live.signer;
        if request.kind == Kind::Proxy && !signer.can_sign_proxy() {
            return Err(ProxyError::BadRequest(
                "proxy-signed URLs are off: no signing.secret_files are configured".into(),
            ));
        }
        if !self.live.config.buckets.contains_key(&request.bucket) {
            return Err(ProxyError::NotFound);
        }
        let names_terms = request.content_type.is_some()
            || request.acl.is_some()
            || request.keys.iter().any(|k| matches!(k, KeyItem::Upload(_)));
        if names_terms && request.method != Permission::Put {
            return Err(ProxyError::BadRequest(
                "content_type and acl are for PUT URLs".into(),
            ));
        }
        let now = (self.shared.clock)();
        let window = signer.window(now);
        // S3 URLs are signed with the store's current keys, and die with them.
        let (s3_keys, answer_window) = match request.kind {
            Kind::S3 => {
                let store = Config::store_of(&self.live.config.buckets[&request.bucket]);
                let (keys, capped) = signer
                    .s3_keys(&store, window, SystemTime::now())
                    .map_err(|why| ProxyError::Upstream(S3Error::NoCredentials(why)))?;
                (Some(keys), capped)
            }
            Kind::Proxy => (None, window),
        };
        // Check every key against the rules first; only permitted keys are signed.
        let permits: Vec<Result<Approved, &'static str>> = request
            .keys
            .iter()
            .map(|item| self.approve(auth, &request, item))
            .collect();
        let (method, alias, kind) = (request.method, request.bucket.clone(), request.kind);
        let urls = sign_all(
            permits,
            move |signer, approved| {
                let (permit, terms) = (&approved.permit, approved.terms.as_ref());
                match kind {
                    Kind::Proxy => signer
                        .proxy_url(method, &alias, permit.key(), terms, window)
                        .ok_or("internal_error"),
                    Kind::S3 => match &s3_keys {
                        Some(keys) => signer
                            .s3_url(keys, method, permit.object(), terms, window)
                            .map(|url| url.to_string())
                            .map_err(|_| "internal_error"),
                        None => Err("internal_error"),
                    },
                }
            },
            signer,
            kind == Kind::S3,
        )
        .await;
        let items = request
            .keys
            .iter()
            .zip(urls)
            .map(|(item, signed)| match signed {
                Ok((url, terms)) => Item {
                    key: item.key(),
                    url: Some(url),
                    headers: terms.map(|t| {
                        t.headers()
                            .into_iter()
                            .map(|(name, value)| (name, value.to_owned()))
                            .collect()
                    }),
                    error: None,
                },
                Err(error) => Item {
                    key: item.key(),
                    url: None,
                    headers: None,
                    error: Some(error),
                },
            })
            .collect();
        let body = serde_json::to_vec(&SignResponse {
            expires: answer_window.expires_rfc3339(),
            items,
        })
        .map_err(|e| ProxyError::Internal(e.to_string()))?;
        let mut response = Response::new(Body::full(body));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }
}

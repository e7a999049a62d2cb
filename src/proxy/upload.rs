//! Writes: `PUT /{bucket}/{key}`, `POST /{bucket}/{prefix}/` (raw body or an HTML form's
//! `file` field) and `DELETE /{bucket}/{key}`. Bodies stream to S3 within `upload.max_size`;
//! a body that breaks off or grows too large leaves nothing in S3. Authorization has been decided
//! before this module reads a single body byte.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyStream;
use serde::Serialize;

use super::Ctx;
use mediatype::MediaType;

use crate::body::{Body, BoxError, ByteStream};
use crate::config::Acl;
use crate::error::ProxyError;
use crate::policy::Permit;
use crate::s3::{Part, PutOptions, S3Error};

/// S3's largest single PutObject; larger (or unknown-length) bodies go up in parts.
const SINGLE_PUT_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// The smallest multipart part size s3warden uses (S3's minimum is 5 MiB).
const MIN_PART: u64 = 8 * 1024 * 1024;
/// S3's most parts per upload.
const MAX_PARTS: u64 = 10_000;

/// How the request body went, as seen by the stream that reads it.
#[derive(Default)]
struct BodyState {
    too_large: AtomicBool,
    broken: AtomicBool,
    received: AtomicU64,
}

/// The JSON answer to an upload.
#[derive(Serialize)]
struct Uploaded<'a> {
    bucket: &'a str,
    key: &'a str,
    etag: Option<&'a str>,
    acl: &'static str,
    url: String,
}

impl Ctx<'_> {
    /// `PUT /{bucket}/{key}`: the permit is for writing this key.
    pub(super) async fn put_object<B>(
        &self,
        parts: &Parts,
        permit: &Permit,
        body: B,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let options = self.put_options(
            &parts.headers,
            parts.headers.get(header::CONTENT_TYPE),
            permit,
        )?;
        let length = declared_length(&parts.headers)?;
        let state = Arc::new(BodyState::default());
        let stream = self.limited(body, &state);
        let etag = self
            .upload(permit, stream, length, &options, &state)
            .await?;
        self.uploaded(permit, etag, &options)
    }

    /// `POST /{bucket}/{prefix}/`: uploads under a generated key, from a raw body or the `file`
    /// field of a `multipart/form-data` body. `authorize` turns the final key into a permit.
    pub(super) async fn create_object<B, F>(
        &self,
        parts: &Parts,
        prefix: Option<&str>,
        body: B,
        authorize: F,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        F: Fn(&str) -> Result<Permit, ProxyError>,
    {
        let state = Arc::new(BodyState::default());
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let new_key = |ext: &str| match prefix {
            Some(p) => format!("{p}/{}.{ext}", uuid::Uuid::new_v4()),
            None => format!("{}.{ext}", uuid::Uuid::new_v4()),
        };
        if content_type
            .to_ascii_lowercase()
            .starts_with("multipart/form-data")
        {
            let boundary = multer::parse_boundary(content_type)
                .map_err(|_| ProxyError::BadRequest("multipart body without a boundary".into()))?;
            // The form's own overhead (boundaries, other fields) gets a little room.
            let form_state = Arc::new(BodyState::default());
            let raw = self.limited_by(body, &form_state, self.max_upload() + 64 * 1024);
            let too_large = |e: ProxyError| {
                if form_state.too_large.load(Ordering::SeqCst) {
                    ProxyError::PayloadTooLarge
                } else {
                    e
                }
            };
            let mut form = multer::Multipart::new(raw, boundary);
            let field = loop {
                match form.next_field().await {
                    Ok(Some(field)) if field.name() == Some("file") => break field,
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        return Err(ProxyError::BadRequest(
                            "the form has no field named \"file\"".into(),
                        ));
                    }
                    Err(e) => {
                        return Err(too_large(ProxyError::BadRequest(format!(
                            "invalid form: {e}"
                        ))));
                    }
                }
            };
            let part_type = field
                .content_type()
                .map(|m| m.essence_str().to_owned())
                .filter(|t| t != "application/octet-stream");
            let ext = field
                .file_name()
                .and_then(extension_of)
                .or_else(|| part_type.as_deref().and_then(extension_for))
                .unwrap_or_else(|| "bin".into());
            let key = new_key(&ext);
            let permit = authorize(&key)?;
            let part_type = part_type.and_then(|t| HeaderValue::from_str(&t).ok());
            let options = self.put_options(&parts.headers, part_type.as_ref(), &permit)?;
            let file: ByteStream = Box::pin(field.map(|chunk| chunk.map_err(BoxError::from)));
            let stream = limit_stream(file, self.max_upload(), self.idle_timeout(), state.clone());
            let etag = self
                .upload(&permit, stream, None, &options, &state)
                .await
                .map_err(too_large)?;
            return self.uploaded(&permit, etag, &options);
        }
        let ext = extension_for(content_type.split(';').next().unwrap_or("").trim())
            .unwrap_or_else(|| "bin".into());
        let key = new_key(&ext);
        let permit = authorize(&key)?;
        let options = self.put_options(
            &parts.headers,
            parts.headers.get(header::CONTENT_TYPE),
            &permit,
        )?;
        let length = declared_length(&parts.headers)?;
        let stream = self.limited(body, &state);
        let etag = self
            .upload(&permit, stream, length, &options, &state)
            .await?;
        self.uploaded(&permit, etag, &options)
    }

    /// `DELETE /{bucket}/{key}`.
    pub(super) async fn delete_object(
        &self,
        permit: &Permit,
    ) -> Result<Response<Body>, ProxyError> {
        let result = self.live.s3.delete(permit).await;
        self.shared.cache.invalidate(permit.object()).await;
        match result {
            Ok(()) => {
                let mut response = Response::new(Body::Empty);
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
            Err(e) if e.is_not_found() => Err(ProxyError::NotFound),
            Err(e) => Err(ProxyError::Upstream(e)),
        }
    }

    fn max_upload(&self) -> u64 {
        self.live.config.upload.max_size.bytes()
    }

    fn idle_timeout(&self) -> Duration {
        self.live.config.server.idle_timeout
    }

    fn limited<B>(&self, body: B, state: &Arc<BodyState>) -> ByteStream
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.limited_by(body, state, self.max_upload())
    }

    fn limited_by<B>(&self, body: B, state: &Arc<BodyState>, limit: u64) -> ByteStream
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let data = BodyStream::new(body).filter_map(|frame| {
            futures_util::future::ready(match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(e.into())),
            })
        });
        limit_stream(Box::pin(data), limit, self.idle_timeout(), state.clone())
    }

    /// `Content-Type` (`content_type`, or guessed from the key) and ACL (named in `headers`,
    /// or `upload.default_acl`) of an upload, within what the permit allows. Under a signed PUT
    /// URL the signer's terms decide: the request may repeat them, not change them.
    fn put_options(
        &self,
        headers: &HeaderMap,
        content_type: Option<&HeaderValue>,
        permit: &Permit,
    ) -> Result<PutOptions, ProxyError> {
        let named_type = content_type
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|text| MediaType::parse(text.trim()).ok())
                    .ok_or_else(|| ProxyError::BadRequest("invalid Content-Type".into()))
                    .map(|media| (value, media))
            })
            .transpose()?;
        let named_acl = named_acl(headers)?;
        if let Some(terms) = permit.upload_terms() {
            let same_type = named_type.as_ref().is_none_or(|(_, media)| {
                terms
                    .content_type
                    .to_str()
                    .ok()
                    .and_then(|signed| MediaType::parse(signed).ok())
                    .is_some_and(|signed| signed == *media)
            });
            if !same_type || named_acl.is_some_and(|acl| acl != terms.acl) {
                return Err(ProxyError::TermsMismatch);
            }
            return Ok(PutOptions {
                content_type: terms.content_type.clone(),
                acl: (terms.acl != Acl::None).then_some(terms.acl),
            });
        }
        let content_type = match named_type {
            Some((value, _)) => value.clone(),
            None => {
                let guess = mime_guess::from_path(permit.key().as_str()).first_or_octet_stream();
                HeaderValue::from_str(guess.essence_str()).expect("mime types are ASCII")
            }
        };
        let acl = named_acl.unwrap_or(self.live.config.upload.default_acl);
        if !permit.may_set_acl(acl) {
            return Err(ProxyError::AclNotAllowed);
        }
        Ok(PutOptions {
            content_type,
            acl: (acl != Acl::None).then_some(acl),
        })
    }

    /// Streams `body` to S3: one PutObject when its length is known, else a multipart upload
    /// (or one PutObject when it turns out to fit in a single part). Any failure leaves nothing.
    async fn upload(
        &self,
        permit: &Permit,
        body: ByteStream,
        length: Option<u64>,
        options: &PutOptions,
        state: &BodyState,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        if let Some(length) = length
            && length > self.max_upload()
        {
            return Err(ProxyError::PayloadTooLarge);
        }
        let s3 = &self.live.s3;
        let result = match length {
            Some(length) if length <= SINGLE_PUT_MAX => s3.put(permit, body, length, options).await,
            _ => self.upload_in_parts(permit, body, options).await,
        };
        let etag = result.map_err(|e| upload_error(e, state))?;
        self.shared.cache.invalidate(permit.object()).await;
        Ok(etag)
    }

    async fn upload_in_parts(
        &self,
        permit: &Permit,
        body: ByteStream,
        options: &PutOptions,
    ) -> Result<Option<HeaderValue>, S3Error> {
        let mut body = body.fuse();
        let s3 = &self.live.s3;
        let part_size = MIN_PART.max(self.max_upload().div_ceil(MAX_PARTS)) as usize;
        let first = fill(&mut body, part_size).await?;
        if first.len() < part_size {
            return s3.put_bytes(permit, first.freeze(), options).await;
        }
        let upload_id = s3.create_multipart(permit, options).await?;
        let mut parts: Vec<Part> = Vec::new();
        let mut next = Some(first);
        let result = async {
            while let Some(buffer) = next.take() {
                if buffer.is_empty() {
                    break;
                }
                let number = parts.len() as u32 + 1;
                let following = fill(&mut body, part_size);
                let (part, following) = tokio::join!(
                    s3.upload_part(permit, &upload_id, number, buffer.freeze()),
                    following
                );
                parts.push(part?);
                next = Some(following?);
            }
            s3.complete_multipart(permit, &upload_id, &parts).await
        }
        .await;
        if result.is_err()
            && let Err(e) = s3.abort_multipart(permit, &upload_id).await
        {
            tracing::warn!(error = %e, "could not abort a failed multipart upload");
        }
        result
    }

    /// The 201 answer for a stored object.
    fn uploaded(
        &self,
        permit: &Permit,
        etag: Option<HeaderValue>,
        options: &PutOptions,
    ) -> Result<Response<Body>, ProxyError> {
        let url = match options.acl {
            Some(Acl::PublicRead) => self.live.s3.object_url(permit.object()).to_string(),
            _ => format!(
                "{}/{}/{}",
                self.live.config.public_url(),
                permit.alias(),
                crate::sign::encode_key(permit.key())
            ),
        };
        let answer = Uploaded {
            bucket: permit.alias(),
            key: permit.key().as_str(),
            etag: etag.as_ref().and_then(|e| e.to_str().ok()),
            acl: match options.acl {
                Some(Acl::PublicRead) => "public-read",
                Some(_) => "private",
                None => "none",
            },
            url,
        };
        let body = serde_json::to_vec(&answer).map_err(|e| ProxyError::Internal(e.to_string()))?;
        let location =
            HeaderValue::from_str(&answer.url).map_err(|e| ProxyError::Internal(e.to_string()))?;
        let mut response = Response::new(Body::full(body));
        *response.status_mut() = StatusCode::CREATED;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::LOCATION, location);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }
}

/// The ACL named by `x-amz-acl` / `X-Acl`, when one is.
fn named_acl(headers: &HeaderMap) -> Result<Option<Acl>, ProxyError> {
    let mut named = None;
    for name in ["x-amz-acl", "x-acl"] {
        for value in headers.get_all(name) {
            let acl = value
                .to_str()
                .ok()
                .and_then(Acl::from_client)
                .ok_or_else(|| {
                    ProxyError::BadRequest("the ACL must be \"private\" or \"public-read\"".into())
                })?;
            if named.is_some_and(|n| n != acl) {
                return Err(ProxyError::BadRequest("conflicting ACL headers".into()));
            }
            named = Some(acl);
        }
    }
    Ok(named)
}

/// `Content-Length`, when the client sent one.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| ProxyError::BadRequest("invalid Content-Length".into()))
        })
        .transpose()
}

/// Reads up to `size` bytes (fewer only at the end of the body).
async fn fill<S>(body: &mut S, size: usize) -> Result<BytesMut, S3Error>
where
    S: futures_util::Stream<Item = Result<Bytes, BoxError>> + Unpin,
{
    let mut buffer = BytesMut::with_capacity(size);
    while buffer.len() < size {
        match body.next().await {
            Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(S3Error::Unreachable(format!("request body: {e}"))),
            None => break,
        }
    }
    Ok(buffer)
}

/// The client's body, ended with an error (never a short success) when it grows past `limit`,
/// breaks off, or stalls for `idle`.
fn limit_stream(body: ByteStream, limit: u64, idle: Duration, state: Arc<BodyState>) -> ByteStream {
    Box::pin(futures_util::stream::unfold(Some(body), move |body| {
        let state = state.clone();
        async move {
            let mut body = body?;
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let total = state
                        .received
                        .fetch_add(chunk.len() as u64, Ordering::SeqCst)
                        + chunk.len() as u64;
                    if total > limit {
                        state.too_large.store(true, Ordering::SeqCst);
                        return Some((
                            Err(BoxError::from("upload larger than upload.max_size")),
                            None,
                        ));
                    }
                    Some((Ok(chunk), Some(body)))
                }
                Ok(Some(Err(e))) => {
                    state.broken.store(true, Ordering::SeqCst);
                    Some((Err(e), None))
                }
                Ok(None) => None,
                Err(_) => {
                    state.broken.store(true, Ordering::SeqCst);
                    Some((Err(BoxError::from("upload stalled")), None))
                }
            }
        }
    }))
}

/// Why an upload failed, from the client's side first: too large, broken off, then S3.
fn upload_error(e: S3Error, state: &BodyState) -> ProxyError {
    if state.too_large.load(Ordering::SeqCst) {
        return ProxyError::PayloadTooLarge;
    }
    if state.broken.load(Ordering::SeqCst) {
        return ProxyError::BadRequest("the request body broke off before it was complete".into());
    }
    match e {
        S3Error::Status {
            code: Some(code), ..
        } if code == "AccessControlListNotSupported" => ProxyError::AclNotSupported,
        e => ProxyError::Upstream(e),
    }
}

/// A safe extension from a file name: letters and digits only, at most 10.
fn extension_of(file_name: &str) -> Option<String> {
    let ext = file_name.rsplit_once('.')?.1.to_ascii_lowercase();
    (!ext.is_empty() && ext.len() <= 10 && ext.bytes().all(|c| c.is_ascii_alphanumeric()))
        .then_some(ext)
}

/// The usual extension of a content type (`image/png` → `png`).
fn extension_for(content_type: &str) -> Option<String> {
    let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
    let preferred = match essence.as_str() {
        "image/jpeg" => Some("jpg"),
        "text/plain" => Some("txt"),
        "text/html" => Some("html"),
        "image/svg+xml" => Some("svg"),
        _ => None,
    };
    preferred
        .map(str::to_owned)
        .or_else(|| {
            mime_guess::get_mime_extensions_str(&essence)?
                .first()
                .map(|e| (*e).to_owned())
        })
        .filter(|e| e.bytes().all(|c| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions() {
        assert_eq!(extension_of("photo.JPG").as_deref(), Some("jpg"));
        assert_eq!(extension_of("archive.tar.gz").as_deref(), Some("gz"));
        assert_eq!(extension_of("evil.p/hp"), None);
        assert_eq!(extension_of("noext"), None);
        assert_eq!(extension_for("image/png").as_deref(), Some("png"));
        assert_eq!(extension_for("image/jpeg").as_deref(), Some("jpg"));
        assert_eq!(
            extension_for("text/plain; charset=utf-8").as_deref(),
            Some("txt")
        );
        assert_eq!(extension_for("application/x-nothing"), None);
    }
}

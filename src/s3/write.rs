//! Writes to S3: PutObject (streamed), multipart uploads for bodies of unknown length, and
//! DeleteObject. A write whose body is held in memory (a part, a small upload, the multipart
//! calls, a delete) is retried as reads are; a streamed PutObject is not: its body is consumed
//! as it is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, header};
use reqwest::Url;
use tokio::sync::Notify;

use super::sigv4::Payload;
use super::{Held, S3Client, S3Error, Upstream};
use crate::config::Acl;
use crate::policy::{Delete, Permit, Write};
use crate::server::ByteStream;

/// What an upload stores besides its bytes.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// `Content-Type` stored with the object.
    pub content_type: HeaderValue,
    /// The object's canned ACL (sent as `x-amz-acl` only when [`Acl::header`] says so).
    pub acl: Acl,
}

impl PutOptions {
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, self.content_type.clone());
        if let Some(acl) = self.acl.header() {
            headers.insert("x-amz-acl", HeaderValue::from_static(acl));
        }
        headers
    }
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone)]
pub struct UploadedPart {
    /// 1-based part number.
    pub number: u32,
    /// The part's ETag, as S3 returned it.
    pub etag: String,
    /// The part's length in bytes.
    pub size: u64,
}

impl S3Client {
    /// PutObject with a streamed body of exactly `len` bytes (`UNSIGNED-PAYLOAD`). If the stream
    /// fails or ends early, the request to S3 is aborted and S3 stores nothing.
    pub async fn put(
        &self,
        permit: &Permit<Write>,
        body: ByteStream,
        len: u64,
        options: &PutOptions,
    ) -> Result<Option<HeaderValue>, S3Error> {
        let up = self.upstream(permit.object())?;
        let mut headers = options.headers();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let url = up.object_url(permit.object());
        let response = up.send_streaming(Method::PUT, url, headers, body).await?;
        Ok(super::entity_tag(response.headers()))
    }

    /// PutObject of a body held in memory.
    pub async fn put_bytes(
        &self,
        permit: &Permit<Write>,
        bytes: Bytes,
        options: &PutOptions,
    ) -> Result<Option<HeaderValue>, S3Error> {
        let up = self.upstream(permit.object())?;
        let url = up.object_url(permit.object());
        let response = up
            .send_write(Method::PUT, url, options.headers(), Held::Hashed(&bytes))
            .await?;
        Ok(super::entity_tag(response.headers()))
    }

    /// DeleteObject.
    pub async fn delete(&self, permit: &Permit<Delete>) -> Result<(), S3Error> {
        let up = self.upstream(permit.object())?;
        up.send_delete(up.object_url(permit.object())).await
    }

    /// CreateMultipartUpload; returns the upload id.
    pub async fn create_multipart(
        &self,
        permit: &Permit<Write>,
        options: &PutOptions,
    ) -> Result<String, S3Error> {
        let up = self.upstream(permit.object())?;
        let mut url = up.object_url(permit.object());
        url.set_query(Some("uploads"));
        let response = up
            .send_write(Method::POST, url, options.headers(), Held::Empty)
            .await?;
        let text = up.read_small(response).await?;
        super::xml::answer(&text)
            .upload_id
            .ok_or_else(|| S3Error::Unreachable("no UploadId in answer".into()))
    }

    /// UploadPart of a part held in memory.
    pub async fn upload_part(
        &self,
        permit: &Permit<Write>,
        upload_id: &str,
        number: u32,
        bytes: Bytes,
    ) -> Result<UploadedPart, S3Error> {
        let up = self.upstream(permit.object())?;
        let number_text = number.to_string();
        let url = up.multipart_url(
            permit,
            &[
                ("partNumber", number_text.as_str()),
                ("uploadId", upload_id),
            ],
        );
        let response = up
            .send_write(Method::PUT, url, HeaderMap::new(), Held::Unhashed(&bytes))
            .await?;
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| S3Error::Unreachable("no ETag for an uploaded part".into()))?;
        Ok(UploadedPart {
            number,
            etag: etag.to_owned(),
            size: bytes.len() as u64,
        })
    }

    /// CompleteMultipartUpload. When an attempt was sent again and the store no longer knows
    /// the upload, an earlier one may have completed it with its answer lost: the object then
    /// stands, made of these parts, and is taken for the answer.
    pub async fn complete_multipart(
        &self,
        permit: &Permit<Write>,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<Option<HeaderValue>, S3Error> {
        let up = self.upstream(permit.object())?;
        let url = up.multipart_url(permit, &[("uploadId", upload_id)]);
        let xml = super::xml::complete_multipart(parts.iter().map(|p| (p.number, p.etag.as_str())));
        let body = Bytes::from(xml);
        let sent = AtomicU32::new(0);
        let mut attempt = 0;
        loop {
            let result = up
                .send_retrying(
                    Method::POST,
                    url.clone(),
                    HeaderMap::new(),
                    Held::Hashed(&body),
                    None,
                    |_, _| {
                        sent.fetch_add(1, Ordering::Relaxed);
                    },
                )
                .await;
            let response = match result {
                Err(e) if sent.load(Ordering::Relaxed) > 1 && e.code() == Some("NoSuchUpload") => {
                    return up.completed_object(permit, parts).await.map(Some).ok_or(e);
                }
                other => other?,
            };
            // S3 may answer 200 and still report an error in the body (`InternalError`,
            // `SlowDown`), which is to be retried like a 5xx.
            let answer = super::xml::answer(&up.read_small(response).await?);
            let Some(code) = answer.code else {
                return Ok(answer.etag.and_then(|e| HeaderValue::from_str(&e).ok()));
            };
            let retryable = matches!(
                code.as_str(),
                "InternalError" | "SlowDown" | "ServiceUnavailable"
            );
            let error = S3Error::Status {
                status: http::StatusCode::INTERNAL_SERVER_ERROR,
                code: Some(code),
            };
            if !retryable || attempt >= up.retries {
                return Err(error);
            }
            attempt += 1;
            tracing::debug!(%error, attempt, "retrying CompleteMultipartUpload");
            tokio::time::sleep(super::backoff(attempt)).await;
        }
    }

    /// AbortMultipartUpload: frees the parts; nothing of the upload remains.
    pub async fn abort_multipart(
        &self,
        permit: &Permit<Write>,
        upload_id: &str,
    ) -> Result<(), S3Error> {
        let up = self.upstream(permit.object())?;
        up.send_delete(up.multipart_url(permit, &[("uploadId", upload_id)]))
            .await
    }
}

impl Upstream {
    /// The ETag of the object at `permit`'s key if it is one made of `parts`: as long as they
    /// are together, with a multipart ETag (`"…-N"`) for as many parts.
    async fn completed_object(
        &self,
        permit: &Permit<Write>,
        parts: &[UploadedPart],
    ) -> Option<HeaderValue> {
        let url = self.object_url(permit.object());
        let response = (self.send_idempotent(Method::HEAD, url, HeaderMap::new()))
            .await
            .ok()?;
        let headers = response.headers();
        let etag = super::entity_tag(headers)?;
        let length = super::content_length(headers)?;
        let suffix = format!("-{}", parts.len());
        let ours = etag.to_str().ok()?.trim_matches('"').ends_with(&suffix)
            && length == parts.iter().map(|p| p.size).sum::<u64>();
        tracing::info!(
            found = ours,
            "CompleteMultipartUpload was sent again and the store no longer knew the upload"
        );
        ours.then_some(etag)
    }

    async fn send_delete(&self, url: Url) -> Result<(), S3Error> {
        (self.send_write(Method::DELETE, url, HeaderMap::new(), Held::Empty))
            .await
            .map(drop)
    }

    fn multipart_url(&self, permit: &Permit<Write>, query: &[(&str, &str)]) -> Url {
        let mut url = self.object_url(permit.object());
        url.query_pairs_mut().extend_pairs(query);
        url
    }

    /// Sends a request whose body is streamed; the answer must come within `s3.timeout` of the
    /// last body byte.
    async fn send_streaming(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: ByteStream,
    ) -> Result<reqwest::Response, S3Error> {
        let sent = Arc::new(Notify::new());
        let signal = sent.clone();
        let body = body.chain(futures_util::stream::once(async move {
            signal.notify_one();
            Ok(Bytes::new())
        }));
        let request = self.send(
            method,
            url,
            headers,
            Payload::Unsigned,
            Some(reqwest::Body::wrap_stream(body)),
        );
        let timeout = self.timeout;
        tokio::select! {
            result = request => result,
            _ = async { sent.notified().await; tokio::time::sleep(timeout).await } => {
                Err(S3Error::Timeout)
            }
        }
    }

    /// A small response body (XML, at most 1 MiB) as text. Each piece must come within the
    /// timeout, not the whole: S3 keeps a long CompleteMultipartUpload's answer open with
    /// whitespace for as long as it takes.
    async fn read_small(&self, mut response: reqwest::Response) -> Result<String, S3Error> {
        let mut text = Vec::new();
        while let Some(chunk) = tokio::time::timeout(self.timeout, response.chunk())
            .await
            .map_err(|_| S3Error::Timeout)?
            .map_err(|e| S3Error::Unreachable(super::error_chain(e)))?
        {
            text.extend_from_slice(&chunk);
            if text.len() > 1024 * 1024 {
                return Err(S3Error::Malformed("an answer over 1 MiB".into()));
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }
}

//! Reading objects: GET and HEAD, with Range and conditional requests.

use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};

use super::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::policy::Permit;
use crate::response::{self, CacheStatus, Part};
use crate::route::{Conditionals, IfNoneMatch, parse_range};
use crate::s3::{Answer, GetOptions, S3Error};

impl App {
    /// GET or HEAD of an object the permit allows reading.
    pub(super) async fn read_object(
        &self,
        parts: &Parts,
        permit: &Permit,
    ) -> Result<Response<Body>, ProxyError> {
        let head = parts.method == http::Method::HEAD;
        let conditionals = Conditionals::from_headers(&parts.headers);
        let settings = &self.inner.responses;
        let s3 = &self.inner.s3;
        if head {
            let meta = s3.head(permit).await.map_err(upstream)?;
            let part = if conditionals.not_modified(meta.etag_str(), meta.last_modified) {
                Part::NotModified
            } else {
                Part::Whole
            };
            return Ok(response::object(
                settings,
                permit,
                &meta,
                part,
                CacheStatus::Bypass,
                Body::Empty,
            ));
        }
        // A Range with If-Range cannot be checked before the object's validators are known;
        // asking for the whole object is always a correct answer (RFC 9110 §13.1.5).
        let range = parts
            .headers
            .get(header::RANGE)
            .and_then(|v| parse_range(v.to_str().ok()?))
            .filter(|_| conditionals.if_range.is_none());
        let options = GetOptions {
            range,
            if_none_match: forwardable_if_none_match(&conditionals),
        };
        let fetched = match s3.get(permit, &options).await {
            Ok(fetched) => fetched,
            Err(S3Error::Status { status, .. }) if status == StatusCode::RANGE_NOT_SATISFIABLE => {
                // Tell the client how long the object is, as RFC 9110 §15.5.17 asks.
                let size = s3.head(permit).await.ok().map(|meta| meta.size);
                return Err(ProxyError::RangeNotSatisfiable(size));
            }
            Err(e) => return Err(upstream(e)),
        };
        if fetched.answer == Answer::NotModified
            || conditionals.not_modified(fetched.meta.etag_str(), fetched.meta.last_modified)
        {
            return Ok(response::object(
                settings,
                permit,
                &fetched.meta,
                Part::NotModified,
                CacheStatus::Bypass,
                Body::Empty,
            ));
        }
        let part = match fetched.answer {
            Answer::Partial { first, last } => Part::Range(first, last),
            _ => Part::Whole,
        };
        let body = Body::stream(fetched.body, Some(fetched.body_len));
        Ok(response::object(
            settings,
            permit,
            &fetched.meta,
            part,
            CacheStatus::Bypass,
            body,
        ))
    }
}

/// The client's `If-None-Match`, rebuilt from its parsed tags so that only well-formed tags
/// travel to S3.
fn forwardable_if_none_match(conditionals: &Conditionals) -> Option<HeaderValue> {
    match &conditionals.if_none_match {
        Some(IfNoneMatch::Tags(tags)) if !tags.is_empty() => {
            let list = tags
                .iter()
                .filter(|t| t.bytes().all(|c| c.is_ascii_graphic() && c != b'"'))
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ");
            HeaderValue::from_str(&list)
                .ok()
                .filter(|_| !list.is_empty())
        }
        _ => None,
    }
}

/// S3 failures as client-facing errors.
fn upstream(e: S3Error) -> ProxyError {
    if e.is_not_found() {
        ProxyError::NotFound
    } else {
        ProxyError::Upstream(e)
    }
}

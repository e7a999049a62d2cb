//! Reading objects: GET and HEAD through the cache, with Range and conditional requests.

use std::ops::Range;

use http::{HeaderValue, Response, StatusCode};

use super::Exchange;
use crate::cache::{CachedObject, Lookup, OnMiss, Stored};
use crate::error::ProxyError;
use crate::policy::{Permit, Read};
use crate::response::{self, CacheStatus, Portion};
use crate::route::{Conditionals, IfNoneMatch, ReadRequest};
use crate::s3::{Answer, Fetched, GetOptions, S3Error};
use crate::server::Body;

/// A read as the route decided it, and what its connection left in the request.
struct ReadPlan<'a> {
    read: &'a ReadRequest,
    extensions: &'a http::Extensions,
}

impl Exchange<'_> {
    /// GET or HEAD of an object the permit allows reading.
    pub(super) async fn read_object(
        &self,
        permit: &Permit<Read>,
        read: &ReadRequest,
        extensions: &http::Extensions,
    ) -> Result<Response<Body>, ProxyError> {
        let wanted = ReadPlan { read, extensions };
        let head = read.head;
        // HEAD and ranged misses do not pull whole objects into the cache.
        let on_miss = if head || read.range.is_some() {
            OnMiss::Bypass
        } else {
            OnMiss::Fetch
        };
        let lookup = self
            .shared
            .cache
            .lookup(permit, &self.live.s3, on_miss)
            .await
            .map_err(upstream)?;
        match lookup {
            Lookup::Object(object, status) => {
                Ok(self.serve_cached(permit, &object, status, &wanted))
            }
            Lookup::Missing => Err(ProxyError::NotFound),
            Lookup::Stream(fetched) => Ok(self.serve_fetched(permit, *fetched, &wanted)),
            Lookup::Bypass => Box::pin(self.pass_through(permit, &wanted)).await,
        }
    }

    /// Answers from memory: 304, 206 cut from the cached body, or the whole body.
    fn serve_cached(
        &self,
        permit: &Permit<Read>,
        object: &CachedObject,
        status: CacheStatus,
        wanted: &ReadPlan<'_>,
    ) -> Response<Body> {
        let settings = &self.live.responses;
        let meta = &object.meta;
        let (etag, modified) = (meta.etag_str(), meta.last_modified);
        if wanted.read.conditionals.not_modified(etag, modified) {
            return response::object(
                settings,
                permit,
                meta,
                Portion::NotModified,
                status,
                Body::Empty,
            );
        }
        if let Some(range) = wanted.read.range
            && wanted.read.conditionals.range_applies(etag, modified)
        {
            let size = object.body.len();
            return match range.resolve(size) {
                Some((first, last)) => response::object(
                    settings,
                    permit,
                    meta,
                    Portion::Range(first, last),
                    status,
                    self.cached_body(&object.body, first..last + 1, wanted),
                ),
                None => ProxyError::RangeNotSatisfiable(Some(size)).into_response(),
            };
        }
        let body = if wanted.read.head {
            Body::Empty
        } else {
            self.cached_body(&object.body, 0..object.body.len(), wanted)
        };
        response::whole(settings, permit, meta, &object.headers, status, body)
    }

    /// The bytes `range` of a cached body: a `Bytes` slice, or a memory file range that a plain
    /// HTTP/1 connection sends with `sendfile`.
    fn cached_body(&self, stored: &Stored, range: Range<u64>, wanted: &ReadPlan<'_>) -> Body {
        match stored {
            Stored::Memory(bytes) => Body::from_memory(
                bytes.slice(range.start as usize..range.end as usize),
                wanted.extensions,
            ),
            Stored::File(file) => Body::from_file(
                file.clone(),
                range,
                wanted.extensions,
                self.shared.metrics.sendfile_bytes().clone(),
            ),
        }
    }

    /// Streams a response S3 is already sending (an object too large to cache).
    fn serve_fetched(
        &self,
        permit: &Permit<Read>,
        fetched: Fetched,
        wanted: &ReadPlan<'_>,
    ) -> Response<Body> {
        let settings = &self.live.responses;
        let cache = &self.shared.cache;
        let mut meta = fetched.meta;
        if fetched.answer == Answer::NotModified {
            // S3's 304 names no type; the 200 this copy came from had one.
            let known = cache.passive_by_etag(permit.object(), meta.etag.as_ref());
            meta.passive = known.unwrap_or(meta.passive);
        } else {
            cache.remember_passive(permit.object(), &meta);
        }
        if fetched.answer == Answer::NotModified
            || wanted
                .read
                .conditionals
                .not_modified(meta.etag_str(), meta.last_modified)
        {
            return response::object(
                settings,
                permit,
                &meta,
                Portion::NotModified,
                CacheStatus::Bypass,
                Body::Empty,
            );
        }
        let part = match fetched.answer {
            Answer::Partial { first, last } => Portion::Range(first, last),
            _ => Portion::Whole,
        };
        let body = if wanted.read.head {
            Body::Empty
        } else {
            Body::stream(fetched.body, fetched.body_len)
        };
        response::object(settings, permit, &meta, part, CacheStatus::Bypass, body)
    }

    /// Not cached and not to be cached: HEAD, ranged misses and large objects go straight to S3,
    /// with the range and the client's validators (rebuilt from their parsed form).
    async fn pass_through(
        &self,
        permit: &Permit<Read>,
        wanted: &ReadPlan<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        let s3 = &self.live.s3;
        let settings = &self.live.responses;
        self.shared
            .metrics
            .cache(crate::metrics::CacheEvent::Bypass);
        if wanted.read.head {
            let meta = s3.head(permit).await.map_err(upstream)?;
            self.shared.cache.remember_passive(permit.object(), &meta);
            let part = if wanted
                .read
                .conditionals
                .not_modified(meta.etag_str(), meta.last_modified)
            {
                Portion::NotModified
            } else {
                Portion::Whole
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
        let conditionals = &wanted.read.conditionals;
        let options = GetOptions {
            range: wanted.read.range,
            if_none_match: forwardable_if_none_match(conditionals),
        };
        // A Range with If-Range is asked for as it is, and the If-Range checked against the
        // validators S3 answers with: a download resumed after the object changed gets it whole
        // (RFC 9110 §13.1.5), from a second request.
        let whole = GetOptions {
            range: None,
            ..options.clone()
        };
        let applies = |meta: &crate::s3::ObjectMeta| {
            conditionals.range_applies(meta.etag_str(), meta.last_modified)
        };
        let fetched = match s3.get(permit, &options).await {
            Ok(fetched)
                if matches!(fetched.answer, Answer::Partial { .. }) && !applies(&fetched.meta) =>
            {
                drop(fetched);
                s3.get(permit, &whole).await.map_err(upstream)?
            }
            Ok(fetched) => fetched,
            Err(S3Error::Status { status, .. }) if status == StatusCode::RANGE_NOT_SATISFIABLE => {
                // Tell the client how long the object is, as RFC 9110 §15.5.17 asks.
                let meta = s3.head(permit).await.ok();
                if conditionals.if_range.is_none() || meta.as_ref().is_some_and(applies) {
                    return Err(ProxyError::RangeNotSatisfiable(meta.and_then(|m| m.size)));
                }
                s3.get(permit, &whole).await.map_err(upstream)?
            }
            Err(e) => return Err(upstream(e)),
        };
        Ok(self.serve_fetched(permit, fetched, wanted))
    }
}

/// The client's `If-None-Match` when it names exactly one well-formed tag (S3 takes one).
fn forwardable_if_none_match(conditionals: &Conditionals) -> Option<HeaderValue> {
    match &conditionals.if_none_match {
        Some(IfNoneMatch::Tags(tags)) if tags.len() == 1 => {
            let tag = &tags[0];
            tag.bytes()
                .all(|c| c.is_ascii_graphic() && c != b'"')
                .then(|| HeaderValue::from_str(&format!("\"{tag}\"")).ok())
                .flatten()
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

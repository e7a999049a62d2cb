//! Writes: `PUT /{bucket}/{key}`, `POST /{bucket}/{prefix}/` (raw body or an HTML form's
//! `file` field) and `DELETE /{bucket}/{key}`. Bodies stream to S3 within `upload.max_size`;
//! a body that breaks off or grows too large leaves nothing in S3. Authorization has been decided
//! before this module reads a single body byte.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyStream;
use mediatype::MediaTypeBuf;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Exchange, Generation, Shared};
use crate::config::{Acl, UploadConfig};
use crate::error::ProxyError;
use crate::policy::{Delete, Permit, Write, upload_type};
use crate::s3::{PutOptions, S3Error, S3Object, UploadedPart};
use crate::server::{Body, BoxError, ByteStream};

/// The largest single PutObject every common store takes (AWS 5 GiB, R2 5 MiB less, Spaces
/// and Wasabi 5 GB); larger (or unknown-length) bodies go up in parts.
const SINGLE_PUT_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// Bodies of known length up to this size are held whole, when `upload.buffer_memory` has room
/// for them at once, so that their PutObject can be retried; larger ones stream through.
const HELD_PUT_MAX: usize = 1024 * 1024;

/// How long an upload waits for room in `upload.buffer_memory` before it gets 503.
const MEMORY_WAIT: Duration = Duration::from_secs(5);

/// A part buffer starts this small and doubles as the body comes in.
const FIRST_BUFFER: usize = 64 * 1024;

/// The bytes all upload part buffers may hold together (`upload.buffer_memory`), counted in
/// their capacity, not their length: the memory they really take. One uploader (a token's
/// subject, one signed URL, or all anonymous uploads) may hold a quarter of it (at least two
/// parts), so a few slow uploads cannot keep everyone else out.
pub(super) struct UploadMemory {
    total: Arc<Semaphore>,
    /// What [`UploadMemory::try_take`] leaves free: half of the total.
    kept: usize,
    share: usize,
    held: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl UploadMemory {
    pub(super) fn new(upload: &UploadConfig) -> UploadMemory {
        let bytes = usize::try_from(upload.buffer_memory.bytes())
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let two_parts = usize::try_from(2 * upload.part_size()).unwrap_or(usize::MAX);
        UploadMemory {
            total: Arc::new(Semaphore::new(bytes)),
            kept: bytes / 2,
            share: (bytes / 4).max(two_parts).min(bytes),
            held: Arc::default(),
        }
    }

    /// Room for `n` more bytes for `who`: none at once past their share, else waiting up to
    /// [`MEMORY_WAIT`] for it.
    async fn take(&self, who: &Arc<str>, n: usize) -> Option<Room> {
        let (mut room, n32) = self.share_of(who, n)?;
        let permit = tokio::time::timeout(MEMORY_WAIT, self.total.clone().acquire_many_owned(n32))
            .await
            .ok()?
            .ok()?;
        room.permit = Some(permit);
        Some(room)
    }

    /// Room for `n` more bytes for `who` if there is some now, without waiting, and half of the
    /// total stays free after it: uploads that can do without (small ones of known length) never
    /// crowd out those that cannot.
    fn try_take(&self, who: &Arc<str>, n: usize) -> Option<Room> {
        if self.total.available_permits() < n.saturating_add(self.kept) {
            return None;
        }
        let (mut room, n32) = self.share_of(who, n)?;
        room.permit = Some(self.total.clone().try_acquire_many_owned(n32).ok()?);
        Some(room)
    }

    /// `n` bytes of `who`'s share, not yet of the total (`None` past the share).
    fn share_of(&self, who: &Arc<str>, n: usize) -> Option<(Room, u32)> {
        let n32 = u32::try_from(n).ok()?;
        {
            let mut held = self.held.lock().expect("lock");
            let mine = held.entry(who.clone()).or_default();
            if *mine + n > self.share {
                return None;
            }
            *mine += n;
        }
        // From here on, dropping the room gives the share back.
        let room = Room {
            permit: None,
            who: who.clone(),
            bytes: n,
            held: self.held.clone(),
        };
        Some((room, n32))
    }
}

/// Bytes of [`UploadMemory`] held by one uploader, given back when dropped.
struct Room {
    permit: Option<OwnedSemaphorePermit>,
    who: Arc<str>,
    bytes: usize,
    held: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl Room {
    fn merge(&mut self, mut other: Room) {
        match (&mut self.permit, other.permit.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine, theirs) => *mine = mine.take().or(theirs),
        }
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("lock");
        if let Some(mine) = held.get_mut(&self.who) {
            *mine = mine.saturating_sub(self.bytes);
            if *mine == 0 {
                held.remove(&self.who);
            }
        }
    }
}

/// A multipart part being filled, with the room it holds in [`UploadMemory`].
struct PartBuffer {
    bytes: BytesMut,
    room: Option<Room>,
}

impl PartBuffer {
    fn new() -> PartBuffer {
        PartBuffer {
            bytes: BytesMut::new(),
            room: None,
        }
    }

    /// Appends `chunk`, growing the buffer (by doubling, up to `size`) with room taken from
    /// `memory` first; `None` when there is none to be had.
    async fn append(
        &mut self,
        chunk: &[u8],
        size: usize,
        memory: &UploadMemory,
        who: &Arc<str>,
    ) -> Option<()> {
        let needed = self.bytes.len() + chunk.len();
        let capacity = self.bytes.capacity();
        if needed > capacity {
            let grown = (capacity * 2).max(FIRST_BUFFER).min(size).max(needed);
            let more = memory.take(who, grown - capacity).await?;
            match &mut self.room {
                Some(room) => room.merge(more),
                None => self.room = Some(more),
            }
            let mut bytes = BytesMut::with_capacity(grown);
            bytes.extend_from_slice(&self.bytes);
            self.bytes = bytes;
        }
        self.bytes.extend_from_slice(chunk);
        Some(())
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The bytes, and the room they hold (to be kept until they are sent).
    fn freeze(self) -> (Bytes, Option<Room>) {
        (self.bytes.freeze(), self.room)
    }
}

/// How the request body went, as seen by the stream that reads it, and whose it is.
#[derive(Default)]
struct BodyState {
    /// Who is uploading, for their share of [`UploadMemory`].
    uploader: Arc<str>,
    too_large: AtomicBool,
    broken: AtomicBool,
    /// It kept below `server.min_body_rate`, or stopped.
    too_slow: AtomicBool,
    /// No room in `upload.buffer_memory`.
    no_memory: AtomicBool,
    /// A form carried more than [`FORM_PRELUDE_MAX`] before its file field.
    prelude_too_long: AtomicBool,
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

impl Exchange<'_> {
    /// `PUT /{bucket}/{key}`: the permit is for writing this key.
    pub(super) async fn put_object<B>(
        &self,
        parts: &Parts,
        permit: &Permit<Write>,
        uploader: Arc<str>,
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
        let state = Arc::new(BodyState::of(uploader));
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
        uploader: Arc<str>,
        body: B,
        authorize: F,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        F: Fn(&str) -> Result<Permit<Write>, ProxyError>,
    {
        let state = Arc::new(BodyState::of(uploader));
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
            let raw = self.limited_by(body, &form_state, self.max_upload() + FORM_PRELUDE_MAX);
            // Until the file field starts, multer may read no more than the prelude allows.
            let progress = Arc::new(FormProgress::default());
            let raw = prelude_limited(raw, progress.clone(), form_state.clone());
            // The form's own body decides first: too large, too slow, or too much before `file`.
            let too_large = |e: ProxyError| {
                if form_state.too_large.load(Ordering::SeqCst) {
                    ProxyError::PayloadTooLarge
                } else if form_state.too_slow.load(Ordering::SeqCst) {
                    ProxyError::RequestTimeout
                } else if form_state.prelude_too_long.load(Ordering::SeqCst) {
                    ProxyError::BadRequest(format!(
                        "a form may carry at most {} KiB before its file field",
                        FORM_PRELUDE_MAX / 1024
                    ))
                } else {
                    e
                }
            };
            let mut form = multer::Multipart::new(raw, boundary);
            let field = loop {
                match form.next_field().await {
                    Ok(Some(field)) if field.name() == Some("file") => {
                        progress.file_found.store(true, Ordering::SeqCst);
                        break field;
                    }
                    Ok(Some(_)) => {
                        progress.fields.fetch_add(1, Ordering::SeqCst);
                    }
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
            let stream = limit_stream(file, self.max_upload(), self.pace(), state.clone());
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
        permit: &Permit<Delete>,
    ) -> Result<Response<Body>, ProxyError> {
        let unfinished = self.unfinished(permit.object());
        let result = self.live.s3.delete(permit).await;
        unfinished.finish().await;
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

    /// `server.min_body_rate` over every `server.idle_timeout`.
    fn pace(&self) -> Pace {
        let server = &self.live.config.server;
        Pace {
            window: server.idle_timeout,
            min_bytes: (server.min_body_rate.bytes() as f64 * server.idle_timeout.as_secs_f64())
                as u64,
        }
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
        limit_stream(Box::pin(data), limit, self.pace(), state.clone())
    }

    /// `Content-Type` (`content_type`, or guessed from the key) and ACL (named in `headers`,
    /// or `upload.default_acl`) of an upload, within what the permit allows. Under a signed PUT
    /// URL the signer's terms decide: the request may repeat them, not change them.
    fn put_options(
        &self,
        headers: &HeaderMap,
        content_type: Option<&HeaderValue>,
        permit: &Permit<Write>,
    ) -> Result<PutOptions, ProxyError> {
        let named_type = content_type
            .map(|value| {
                let text = value.to_str().ok().and_then(upload_type);
                let bad = || ProxyError::BadRequest("invalid Content-Type".into());
                HeaderValue::from_str(&text.ok_or_else(bad)?).map_err(|_| bad())
            })
            .transpose()?;
        let named_acl = named_acl(headers)?;
        if let Some(terms) = permit.upload_terms() {
            let media = |value: &HeaderValue| value.to_str().ok()?.parse::<MediaTypeBuf>().ok();
            let same_type = named_type.as_ref().is_none_or(|named| {
                media(named).is_some_and(|named| Some(named) == media(&terms.content_type))
            });
            if !same_type || named_acl.is_some_and(|acl| acl != terms.acl) {
                return Err(ProxyError::TermsMismatch);
            }
            return Ok(PutOptions {
                content_type: terms.content_type.clone(),
                acl: terms.acl,
            });
        }
        let content_type = match named_type {
            Some(value) => value,
            None => {
                let guess = mime_guess::from_path(permit.key().as_str()).first_or_octet_stream();
                HeaderValue::from_str(guess.essence_str()).expect("mime types are ASCII")
            }
        };
        let acl = named_acl.unwrap_or(self.live.config.upload.default_acl);
        if !permit.may_set_acl(acl) {
            return Err(ProxyError::AclNotAllowed);
        }
        Ok(PutOptions { content_type, acl })
    }

    /// Streams `body` to S3: one PutObject when its length is known, else a multipart upload
    /// (or one PutObject when it turns out to fit in a single part). Any failure leaves nothing.
    async fn upload(
        &self,
        permit: &Permit<Write>,
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
        let mut unfinished = self.unfinished(permit.object());
        let memory = &self.shared.upload_memory;
        let held = (length.and_then(|l| usize::try_from(l).ok()))
            .filter(|&l| l <= HELD_PUT_MAX)
            .and_then(|l| Some((l, memory.try_take(&state.uploader, l)?)));
        let result = match (length, held) {
            (_, Some((length, room))) => {
                self.put_held(permit, body, length, room, options, state)
                    .await
            }
            (Some(length), None) if length <= SINGLE_PUT_MAX => {
                s3.put(permit, body, length, options).await
            }
            _ => {
                self.upload_in_parts(permit, body, options, state, &mut unfinished)
                    .await
            }
        };
        unfinished.finish().await;
        result.map_err(|e| upload_error(e, state, options.acl))
    }

    /// A guard for a write to `object` that this request has not finished yet.
    fn unfinished(&self, object: &S3Object) -> Unfinished {
        Unfinished {
            shared: self.shared.clone(),
            live: self.live.clone(),
            object: object.clone(),
            upload: None,
            armed: true,
        }
    }

    /// Reads a small body of known `length`, for which `room` was taken, and sends it in one
    /// PutObject that is retried as S3 asks.
    async fn put_held(
        &self,
        permit: &Permit<Write>,
        mut body: ByteStream,
        length: usize,
        room: Room,
        options: &PutOptions,
        state: &BodyState,
    ) -> Result<Option<HeaderValue>, S3Error> {
        let mut bytes = BytesMut::with_capacity(length);
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.map_err(body_error)?);
            if bytes.len() > length {
                break;
            }
        }
        // The server checks the length too; a body that does not match is never stored.
        if bytes.len() != length {
            state.broken.store(true, Ordering::SeqCst);
            return Err(body_error("not as long as its Content-Length".into()));
        }
        let result = self
            .live
            .s3
            .put_bytes(permit, bytes.freeze(), options)
            .await;
        drop(room);
        result
    }

    /// Uploads a body of unknown length in parts, holding at most two part buffers (the one
    /// going up, the next one filling) within `upload.buffer_memory`.
    async fn upload_in_parts(
        &self,
        permit: &Permit<Write>,
        body: ByteStream,
        options: &PutOptions,
        state: &BodyState,
        unfinished: &mut Unfinished,
    ) -> Result<Option<HeaderValue>, S3Error> {
        let mut body = body.fuse();
        let s3 = &self.live.s3;
        let part_size = self.live.config.upload.part_size() as usize;
        let memory = &self.shared.upload_memory;
        let first = fill(&mut body, part_size, memory, state).await?;
        if first.len() < part_size {
            let (bytes, _room) = first.freeze();
            return s3.put_bytes(permit, bytes, options).await;
        }
        let upload_id = begin_upload(&self.live, permit, options).await?;
        unfinished.upload = Some((permit.clone(), upload_id.clone()));
        let mut parts: Vec<UploadedPart> = Vec::new();
        let mut next = Some(first);
        let result = async {
            while let Some(buffer) = next.take() {
                if buffer.len() == 0 {
                    break;
                }
                let number = parts.len() as u32 + 1;
                let (bytes, room) = buffer.freeze();
                let following = fill(&mut body, part_size, memory, state);
                let (part, following) =
                    tokio::join!(s3.upload_part(permit, &upload_id, number, bytes), following);
                drop(room);
                parts.push(part?);
                next = Some(following?);
            }
            s3.complete_multipart(permit, &upload_id, &parts).await
        }
        .await;
        match result {
            Ok(_) => unfinished.upload = None,
            Err(_) => unfinished.abort().await,
        }
        result
    }

    /// The 201 answer for a stored object.
    fn uploaded(
        &self,
        permit: &Permit<Write>,
        etag: Option<HeaderValue>,
        options: &PutOptions,
    ) -> Result<Response<Body>, ProxyError> {
        let public = match options.acl {
            Acl::PublicRead => self.live.s3.object_url(permit.object()),
            Acl::Private | Acl::None => None,
        };
        let url = match public {
            Some(url) => url.to_string(),
            None => format!(
                "{}/{}/{}",
                self.live.config.public_url(),
                permit.alias(),
                permit.key().encoded()
            ),
        };
        let answer = Uploaded {
            bucket: permit.alias(),
            key: permit.key().as_str(),
            etag: etag.as_ref().and_then(|e| e.to_str().ok()),
            acl: match options.acl {
                Acl::PublicRead => "public-read",
                Acl::Private | Acl::None => "private",
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

/// What a write leaves to do when its request is dropped part-way, as HTTP/2 drops a request
/// whose client resets the stream (at its next await, S3 calls included): the object's cache
/// entry is invalidated, since S3 may have taken the write, and a multipart upload begun and
/// neither completed nor aborted is aborted, so that its parts are not kept (and billed). Both
/// run in a task of their own. (An upload whose CreateMultipartUpload was still unanswered is
/// aborted by the task that waits for S3's answer: [`begin_upload`].)
struct Unfinished {
    shared: Arc<Shared>,
    live: Arc<Generation>,
    object: S3Object,
    /// A multipart upload begun and neither completed nor aborted.
    upload: Option<(Permit<Write>, String)>,
    armed: bool,
}

impl Unfinished {
    /// The write is over, stored or not: the object's cache entry goes now.
    async fn finish(mut self) {
        self.shared.cache.invalidate(&self.object).await;
        self.armed = false;
    }

    /// Aborts the multipart upload begun, now.
    async fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            abort_upload(&self.live, upload).await;
        }
    }
}

/// Begins a multipart upload in a task of its own: when the request is dropped while S3 has
/// not answered yet, or before it has taken the answer, the upload S3 begins is aborted, which
/// nothing else would do.
async fn begin_upload(
    live: &Arc<Generation>,
    permit: &Permit<Write>,
    options: &PutOptions,
) -> Result<String, S3Error> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    let (live, permit, options) = (live.clone(), permit.clone(), options.clone());
    tokio::spawn(async move {
        let begun = live.s3.create_multipart(&permit, &options).await;
        // An answer nobody takes is dropped, and the upload with it.
        let _ = answer.send(begun.map(|id| Begun(Some((live, permit, id)))));
    });
    let begun = answered
        .await
        .unwrap_or_else(|_| Err(S3Error::Unreachable("the upload's task ended".into())))?;
    Ok(begun.take())
}

/// A multipart upload S3 has begun, aborted when dropped before its ID is taken.
struct Begun(Option<(Arc<Generation>, Permit<Write>, String)>);

impl Begun {
    fn take(mut self) -> String {
        let (_, _, id) = self.0.take().expect("taken once");
        id
    }
}

impl Drop for Begun {
    fn drop(&mut self) {
        let (Some((live, permit, id)), Ok(runtime)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move { abort_upload(&live, (permit, id)).await });
    }
}

/// Aborts a multipart upload, so that its parts are not kept (and billed).
async fn abort_upload(live: &Generation, (permit, upload_id): (Permit<Write>, String)) {
    if let Err(e) = live.s3.abort_multipart(&permit, &upload_id).await {
        tracing::warn!(error = %e, key = %permit.key().as_str(), "could not abort a multipart upload");
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (shared, live) = (self.shared.clone(), self.live.clone());
        let (object, upload) = (self.object.clone(), self.upload.take());
        runtime.spawn(async move {
            if let Some(upload) = upload {
                abort_upload(&live, upload).await;
            }
            shared.cache.invalidate(&object).await;
        });
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

/// Reads up to `size` bytes (fewer only at the end of the body) into a buffer that holds room
/// in `memory`.
async fn fill<S>(
    body: &mut S,
    size: usize,
    memory: &UploadMemory,
    state: &BodyState,
) -> Result<PartBuffer, S3Error>
where
    S: futures_util::Stream<Item = Result<Bytes, BoxError>> + Unpin,
{
    let mut buffer = PartBuffer::new();
    while buffer.len() < size {
        match body.next().await {
            Some(Ok(chunk)) => {
                if buffer
                    .append(&chunk, size, memory, &state.uploader)
                    .await
                    .is_none()
                {
                    state.no_memory.store(true, Ordering::SeqCst);
                    return Err(S3Error::Unreachable("no room for the upload buffer".into()));
                }
            }
            Some(Err(e)) => return Err(body_error(e)),
            None => break,
        }
    }
    Ok(buffer)
}

/// A request body that failed while being read.
fn body_error(e: BoxError) -> S3Error {
    S3Error::Unreachable(format!("request body: {e}"))
}

impl BodyState {
    fn of(uploader: Arc<str>) -> BodyState {
        BodyState {
            uploader,
            ..BodyState::default()
        }
    }
}

/// What a form may carry before its file field starts: boundaries, part headers and small
/// fields.
const FORM_PRELUDE_MAX: u64 = 64 * 1024;

/// How far the upload got through a form: fields passed over, and whether the file field
/// was found.
#[derive(Default)]
struct FormProgress {
    fields: AtomicU64,
    file_found: AtomicBool,
}

/// A form body of which at most [`FORM_PRELUDE_MAX`] bytes reach multer until the file field
/// is found; past that it ends with an error.
///
/// multer reads every chunk that is ready before it looks for a part's headers, so a client
/// that sends fast (HTTP/2 frames already in, a large HTTP/1 read) would otherwise hand it the
/// file's bytes too, and a form whose file field starts early be taken for one that does not.
/// So the stream stops at the limit (multer then parses what it has), and errs when multer
/// asks again without having yielded a field since: it needs bytes beyond the limit.
fn prelude_limited(
    body: ByteStream,
    progress: Arc<FormProgress>,
    state: Arc<BodyState>,
) -> ByteStream {
    Box::pin(Prelude {
        body,
        progress,
        state,
        read: 0,
        held: None,
        paused_at: None,
    })
}

struct Prelude {
    body: ByteStream,
    progress: Arc<FormProgress>,
    state: Arc<BodyState>,
    /// Bytes handed on so far.
    read: u64,
    /// The part of a chunk beyond the limit, handed on once the file field was found.
    held: Option<Bytes>,
    /// The fields passed over when the stream last stopped at the limit.
    paused_at: Option<u64>,
}

impl futures_util::Stream for Prelude {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let found = self.progress.file_found.load(Ordering::SeqCst);
        if !found && self.read >= FORM_PRELUDE_MAX {
            let fields = self.progress.fields.load(Ordering::SeqCst);
            if self.paused_at == Some(fields) {
                self.state.prelude_too_long.store(true, Ordering::SeqCst);
                return Poll::Ready(Some(Err(BoxError::from("too much before the file field"))));
            }
            // Pending lets multer parse what it has; the wake-up brings it back either way.
            self.paused_at = Some(fields);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut chunk = match self.held.take() {
            Some(chunk) => chunk,
            None => match std::task::ready!(self.body.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => chunk,
                other => return Poll::Ready(other),
            },
        };
        if !found {
            let room = (FORM_PRELUDE_MAX - self.read) as usize;
            if chunk.len() > room {
                self.held = Some(chunk.split_off(room));
            }
        }
        self.read += chunk.len() as u64;
        Poll::Ready(Some(Ok(chunk)))
    }
}

/// How fast a request body must come: at least `min_bytes` in every `window` spent waiting
/// for it (time spent sending it on to S3 does not count).
#[derive(Debug, Clone, Copy)]
struct Pace {
    window: Duration,
    min_bytes: u64,
}

/// The client's body, ended with an error (never a short success) when it grows past `limit`,
/// breaks off, stops, or keeps below the minimum rate.
fn limit_stream(body: ByteStream, limit: u64, pace: Pace, state: Arc<BodyState>) -> ByteStream {
    // The body, and the current window: time waited in it and bytes received in it.
    let start = Some((body, Duration::ZERO, 0u64));
    Box::pin(futures_util::stream::unfold(start, move |current| {
        let state = state.clone();
        async move {
            let (mut body, mut waited, mut got) = current?;
            let too_slow = |state: &BodyState| {
                state.too_slow.store(true, Ordering::SeqCst);
                Some((
                    Err(BoxError::from("upload slower than server.min_body_rate")),
                    None,
                ))
            };
            loop {
                let started = Instant::now();
                let next =
                    tokio::time::timeout(pace.window.saturating_sub(waited), body.next()).await;
                waited += started.elapsed();
                let window_over = waited >= pace.window;
                match next {
                    Ok(Some(Ok(chunk))) => {
                        let n = chunk.len() as u64;
                        let total = state.received.fetch_add(n, Ordering::SeqCst) + n;
                        if total > limit {
                            state.too_large.store(true, Ordering::SeqCst);
                            return Some((
                                Err(BoxError::from("upload larger than upload.max_size")),
                                None,
                            ));
                        }
                        got += n;
                        if window_over {
                            if got < pace.min_bytes {
                                return too_slow(&state);
                            }
                            (waited, got) = (Duration::ZERO, 0);
                        }
                        return Some((Ok(chunk), Some((body, waited, got))));
                    }
                    Ok(Some(Err(e))) => {
                        state.broken.store(true, Ordering::SeqCst);
                        return Some((Err(e), None));
                    }
                    Ok(None) => return None,
                    // A whole window waited: it must have brought enough, and something.
                    Err(_) => {
                        if got == 0 || got < pace.min_bytes {
                            return too_slow(&state);
                        }
                        (waited, got) = (Duration::ZERO, 0);
                    }
                }
            }
        }
    }))
}

/// Why an upload failed, from the client's side first: too large, too slow, broken off, then
/// s3warden's memory, then S3.
fn upload_error(e: S3Error, state: &BodyState, acl: Acl) -> ProxyError {
    if state.too_large.load(Ordering::SeqCst) {
        return ProxyError::PayloadTooLarge;
    }
    if state.too_slow.load(Ordering::SeqCst) {
        return ProxyError::RequestTimeout;
    }
    if state.broken.load(Ordering::SeqCst) {
        return ProxyError::BadRequest("the request body broke off before it was complete".into());
    }
    if state.no_memory.load(Ordering::SeqCst) {
        return ProxyError::Unavailable;
    }
    match e {
        S3Error::Status {
            code: Some(code), ..
        } if refuses_acls(&code, acl) => ProxyError::AclNotSupported,
        e => ProxyError::Upstream(e),
    }
}

/// Whether S3's error `code` for an upload under `acl` says the store takes no object ACLs:
/// AWS buckets with ACLs disabled say so by name; R2 answers a request that names an ACL
/// `NotImplemented`, and GCS buckets with uniform bucket-level access `InvalidArgument`.
fn refuses_acls(code: &str, acl: Acl) -> bool {
    code == "AccessControlListNotSupported"
        || (acl.header().is_some() && matches!(code, "NotImplemented" | "InvalidArgument"))
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

    /// A form in one chunk, as a fast client's whole body arrives: `before` bytes of another
    /// field first, then a file of `file` bytes.
    fn form_in_one_chunk(before: usize, file: usize) -> ByteStream {
        let mut body = Vec::new();
        if before > 0 {
            body.extend_from_slice(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n",
            );
            body.resize(body.len() + before, b'n');
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\r\n",
        );
        body.resize(body.len() + file, b'f');
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        Box::pin(futures_util::stream::iter([Ok(Bytes::from(body))]))
    }

    /// The file field's bytes as the upload reads them, or the error.
    async fn read_file_field(body: ByteStream) -> (Result<usize, multer::Error>, bool) {
        let progress = Arc::new(FormProgress::default());
        let state = Arc::new(BodyState::default());
        let limited = prelude_limited(body, progress.clone(), state.clone());
        let mut form = multer::Multipart::new(limited, "XyZ");
        let read = async {
            let mut field = loop {
                let field = form.next_field().await?.expect("a file field");
                if field.name() == Some("file") {
                    progress.file_found.store(true, Ordering::SeqCst);
                    break field;
                }
                progress.fields.fetch_add(1, Ordering::SeqCst);
            };
            let mut len = 0;
            while let Some(chunk) = field.chunk().await? {
                len += chunk.len();
            }
            Ok(len)
        }
        .await;
        (read, state.prelude_too_long.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_file_field_that_starts_in_time_is_read_whole_however_the_body_arrives() {
        let (read, too_long) = read_file_field(form_in_one_chunk(0, 300 * 1024)).await;
        assert_eq!(read.unwrap(), 300 * 1024);
        assert!(!too_long);
        let (read, _) = read_file_field(form_in_one_chunk(60 * 1024, 300 * 1024)).await;
        assert_eq!(read.unwrap(), 300 * 1024);
    }

    #[tokio::test]
    async fn a_form_with_too_much_before_its_file_field_is_refused() {
        let (read, too_long) = read_file_field(form_in_one_chunk(70 * 1024, 1024)).await;
        assert!(read.is_err());
        assert!(too_long);
    }
}

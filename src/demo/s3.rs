//! An S3-compatible server on loopback for `s3warden demo`, the benchmarks and the tests:
//! `s3s-fs` (which verifies SigV4 signatures) plus what it lacks — conditional GETs, stored
//! ACLs — and request counting, so callers can see exactly what reached S3.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use s3s_fs::FileSystem;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Requests the embedded S3 received, by operation and key.
#[derive(Debug, Default)]
pub struct S3Log {
    counts: Mutex<HashMap<(&'static str, String), u64>>,
    acls: Mutex<HashMap<String, String>>,
    /// The error any request carrying an ACL gets, as from a bucket with "bucket owner
    /// enforced" or a store without ACLs (`None`: ACLs are taken).
    acl_refusal: Mutex<Option<S3ErrorCode>>,
    /// Body bytes of the objects (and ranges) GET answered with.
    sent_bytes: std::sync::atomic::AtomicU64,
    /// How long CreateMultipartUpload takes to answer, in milliseconds.
    create_delay_ms: std::sync::atomic::AtomicU64,
}

impl S3Log {
    fn count(&self, op: &'static str, bucket: &str, key: &str) {
        let mut counts = self.counts.lock().expect("lock");
        *counts.entry((op, format!("{bucket}/{key}"))).or_default() += 1;
    }

    /// How many `op` requests (`"GET"`, `"HEAD"`, `"PUT"`, `"DELETE"`, `"GET304"`) reached
    /// `bucket/key`.
    pub fn requests(&self, op: &str, bucket: &str, key: &str) -> u64 {
        let counts = self.counts.lock().expect("lock");
        counts
            .get(&(op_name(op), format!("{bucket}/{key}")))
            .copied()
            .unwrap_or(0)
    }

    /// Body bytes GET requests were answered with, over every key.
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(Ordering::Relaxed)
    }

    /// All `op` requests, over every key.
    pub fn total(&self, op: &str) -> u64 {
        let counts = self.counts.lock().expect("lock");
        counts
            .iter()
            .filter(|((o, _), _)| *o == op_name(op))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every request for objects, of any kind (the readiness probe's are counted apart, in
    /// `total("PROBE")`, and bucket HEADs in `total("HEADBUCKET")`).
    pub fn all(&self) -> u64 {
        let counts = self.counts.lock().expect("lock");
        (counts.iter())
            .filter(|((op, _), _)| !matches!(*op, "PROBE" | "HEADBUCKET"))
            .map(|(_, n)| n)
            .sum()
    }

    /// The canned ACL the last PUT of `bucket/key` carried (`None` when it sent none).
    pub fn acl(&self, bucket: &str, key: &str) -> Option<String> {
        self.acls
            .lock()
            .expect("lock")
            .get(&format!("{bucket}/{key}"))
            .cloned()
            .filter(|a| !a.is_empty())
    }

    /// Makes the store refuse ACLs as buckets with ACLs disabled do
    /// (`AccessControlListNotSupported`).
    pub fn disable_acls(&self) {
        self.refuse_acls_with(S3ErrorCode::AccessControlListNotSupported);
    }

    /// Makes the store refuse ACLs with `code`, as stores without them do: R2 answers
    /// `NotImplemented`, GCS with uniform bucket-level access `InvalidArgument`.
    pub fn refuse_acls_with(&self, code: S3ErrorCode) {
        *self.acl_refusal.lock().expect("lock") = Some(code);
    }

    /// Makes CreateMultipartUpload answer only after `delay`, as a slow store does.
    pub fn delay_multipart_creates(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.create_delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_acl(&self, acl: Option<&ObjectCannedACL>) -> S3Result<()> {
        match &*self.acl_refusal.lock().expect("lock") {
            Some(code) if acl.is_some() => Err(S3Error::new(code.clone())),
            _ => Ok(()),
        }
    }

    fn record_acl(&self, bucket: &str, key: &str, acl: Option<String>) {
        self.acls
            .lock()
            .expect("lock")
            .insert(format!("{bucket}/{key}"), acl.unwrap_or_default());
    }
}

fn op_name(op: &str) -> &'static str {
    match op {
        "GET" => "GET",
        "GET304" => "GET304",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "MULTIPART" => "MULTIPART",
        "PART" => "PART",
        "ABORT" => "ABORT",
        "HEADBUCKET" => "HEADBUCKET",
        "PROBE" => "PROBE",
        _ => "OTHER",
    }
}

/// `s3s_fs::FileSystem` with conditional GET/HEAD, ACL recording and counting.
struct Store {
    fs: FileSystem,
    log: Arc<S3Log>,
    /// One lock per object: reads share it, writes and deletes take it alone. s3s-fs keeps an
    /// object's bytes and its ETag in separate files, so a read racing a write could pair one
    /// version's bytes with the other's ETag, which S3 never does.
    objects: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// Multipart uploads completed: asked again, they are `NoSuchUpload`, as MinIO and Ceph
    /// answer (s3s-fs would say `AccessDenied`).
    completed: Mutex<std::collections::HashSet<String>>,
}

impl Store {
    fn check_not_completed(&self, upload_id: &str) -> S3Result<()> {
        if self.completed.lock().expect("lock").contains(upload_id) {
            return Err(S3Error::new(S3ErrorCode::NoSuchUpload));
        }
        Ok(())
    }

    fn lock_of(&self, bucket: &str, key: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut objects = self.objects.lock().expect("lock");
        objects
            .entry(format!("{bucket}/{key}"))
            .or_default()
            .clone()
    }

    /// The object's ETag, when it exists.
    async fn etag(&self, req: &S3Request<impl Clone>, bucket: &str, key: &str) -> Option<ETag> {
        let head = req.clone().map_input(|_| HeadObjectInput {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            ..Default::default()
        });
        self.fs.head_object(head).await.ok()?.output.e_tag
    }

    /// Applies `If-Match` / `If-None-Match` the way S3 does for GET and HEAD.
    async fn check_conditions<T: Clone>(
        &self,
        req: &S3Request<T>,
        bucket: &str,
        key: &str,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
    ) -> S3Result<()> {
        if if_match.is_none() && if_none_match.is_none() {
            return Ok(());
        }
        let Some(etag) = self.etag(req, bucket, key).await else {
            return Ok(()); // the real call reports NoSuchKey
        };
        let matches = |c: &ETagCondition| match c {
            ETagCondition::Any => true,
            ETagCondition::ETag(tag) => tag.value() == etag.value(),
        };
        if let Some(c) = if_match
            && !matches(c)
        {
            return Err(S3Error::new(S3ErrorCode::PreconditionFailed));
        }
        if let Some(c) = if_none_match
            && matches(c)
        {
            self.log.count("GET304", bucket, key);
            let mut err = S3Error::new(S3ErrorCode::NotModified);
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&format!("\"{}\"", etag.value())) {
                headers.insert(http::header::ETAG, v);
            }
            err.set_headers(headers);
            return Err(err);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl S3 for Store {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let probe = key.rsplit('/').next() == Some(crate::s3::PROBE_KEY);
        self.log
            .count(if probe { "PROBE" } else { "GET" }, &bucket, &key);
        // The file is open (and its ETag read) once this returns: a later write replaces it
        // without changing what this read sends.
        let lock = self.lock_of(&bucket, &key);
        let _reading = lock.read().await;
        let (im, inm) = (req.input.if_match.clone(), req.input.if_none_match.clone());
        self.check_conditions(&req, &bucket, &key, im.as_ref(), inm.as_ref())
            .await?;
        let response = self.fs.get_object(req).await?;
        let length = response.output.content_length.unwrap_or(0);
        (self.log.sent_bytes).fetch_add(u64::try_from(length).unwrap_or(0), Ordering::Relaxed);
        Ok(response)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.log.count("HEAD", &bucket, &key);
        let lock = self.lock_of(&bucket, &key);
        let _reading = lock.read().await;
        let (im, inm) = (req.input.if_match.clone(), req.input.if_none_match.clone());
        self.check_conditions(&req, &bucket, &key, im.as_ref(), inm.as_ref())
            .await?;
        self.fs.head_object(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.log.count("PUT", &bucket, &key);
        self.log.check_acl(req.input.acl.as_ref())?;
        let acl = req.input.acl.as_ref().map(|a| a.as_str().to_owned());
        let lock = self.lock_of(&bucket, &key);
        let _writing = lock.write().await;
        let output = self.fs.put_object(req).await?;
        self.log.record_acl(&bucket, &key, acl);
        Ok(output)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.log.count("DELETE", &bucket, &key);
        let lock = self.lock_of(&bucket, &key);
        let _writing = lock.write().await;
        self.fs.delete_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.log.count("MULTIPART", &bucket, &key);
        self.log.check_acl(req.input.acl.as_ref())?;
        let delay = (self.log.create_delay_ms).load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let acl = req.input.acl.as_ref().map(|a| a.as_str().to_owned());
        self.log.record_acl(&bucket, &key, acl);
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.log.count("PART", &req.input.bucket, &req.input.key);
        self.fs.upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let lock = self.lock_of(&req.input.bucket, &req.input.key);
        let _writing = lock.write().await;
        let id = req.input.upload_id.clone();
        self.check_not_completed(&id)?;
        let output = self.fs.complete_multipart_upload(req).await?;
        self.completed.lock().expect("lock").insert(id);
        Ok(output)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.log.count("ABORT", &req.input.bucket, &req.input.key);
        self.check_not_completed(&req.input.upload_id)?;
        self.fs.abort_multipart_upload(req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.log.count("HEADBUCKET", &req.input.bucket, "");
        self.fs.head_bucket(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }
}

/// A running embedded S3.
pub struct EmbeddedS3 {
    addr: SocketAddr,
    root: PathBuf,
    log: Arc<S3Log>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    access_key: String,
    secret_key: String,
}

impl EmbeddedS3 {
    /// Serves the directory `root` (one sub-directory per bucket) on `addr`, accepting requests
    /// signed with `access_key` / `secret_key` only.
    pub async fn start(
        root: &Path,
        addr: SocketAddr,
        access_key: &str,
        secret_key: &str,
    ) -> std::io::Result<EmbeddedS3> {
        Self::start_with(root, addr, Some((access_key, secret_key))).await
    }

    /// As `start`; with `credentials` of `None` it accepts unsigned requests (for a peer in the
    /// benchmarks that cannot sign).
    pub async fn start_with(
        root: &Path,
        addr: SocketAddr,
        credentials: Option<(&str, &str)>,
    ) -> std::io::Result<EmbeddedS3> {
        let (access_key, secret_key) = credentials.unwrap_or(("", ""));
        let auth = credentials.map(|(id, secret)| s3s::auth::SimpleAuth::from_single(id, secret));
        let mut s3 = Self::serve(root, addr, auth).await?;
        s3.access_key = access_key.to_owned();
        s3.secret_key = secret_key.to_owned();
        Ok(s3)
    }

    /// As `start`, accepting the keys `auth` knows (rotating temporary keys in the tests of
    /// credential refresh).
    pub async fn start_with_auth(
        root: &Path,
        addr: SocketAddr,
        auth: impl s3s::auth::S3Auth,
    ) -> std::io::Result<EmbeddedS3> {
        Self::serve(root, addr, Some(auth)).await
    }

    async fn serve(
        root: &Path,
        addr: SocketAddr,
        auth: Option<impl s3s::auth::S3Auth>,
    ) -> std::io::Result<EmbeddedS3> {
        let fs = FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let log = Arc::new(S3Log::default());
        let store = Store {
            fs,
            log: log.clone(),
            objects: Mutex::default(),
            completed: Mutex::default(),
        };
        let mut builder = s3s::service::S3ServiceBuilder::new(store);
        if let Some(auth) = auth {
            builder.set_auth(auth);
        }
        let service = builder.build();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let accept_tasks = tasks.clone();
        tasks.lock().expect("lock").spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                let service = service.clone();
                let builder = builder.clone();
                accept_tasks.lock().expect("lock").spawn(async move {
                    let _ = builder
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Ok(EmbeddedS3 {
            addr,
            root: root.to_owned(),
            log,
            tasks,
            access_key: String::new(),
            secret_key: String::new(),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests it received.
    pub fn log(&self) -> &Arc<S3Log> {
        &self.log
    }

    /// The access key it accepts.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret key it accepts.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Creates a bucket directory.
    pub fn create_bucket(&self, bucket: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.root.join(bucket))
    }

    /// Writes an object straight into the store (not through the S3 API, so not counted).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path_of(bucket, key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Written beside the buckets and renamed, so a reader never sees half an object.
        let tmp = self.root.join(format!(".put.{}", uuid::Uuid::new_v4()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, path)
    }

    /// Whether an object exists in the store.
    pub fn exists(&self, bucket: &str, key: &str) -> bool {
        self.path_of(bucket, key).is_file()
    }

    /// An object's bytes, read straight from the store.
    pub fn read(&self, bucket: &str, key: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path_of(bucket, key))
    }

    /// Every key stored in `bucket` (for checking that nothing partial was left behind).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else if let Ok(rel) = path.strip_prefix(base) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        let base = self.root.join(bucket);
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    fn path_of(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// Stops serving: the listener closes and open connections are cut.
    pub fn stop(&self) {
        self.tasks.lock().expect("lock").abort_all();
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

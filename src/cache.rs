//! The object cache: moka, keyed by S3 bucket + key (shared by every user — that is the point),
//! weighed in bytes. Entries carry their validators and freshness; concurrent misses and
//! revalidations of one key wait for one S3 request. Every lookup demands a `Permit`, so a hit
//! can never skip authorization.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use moka::future::Cache;
use moka::ops::compute::Op;

use crate::config::Config;
use crate::memfile::{FileWriter, MIN_FILE_SIZE, StoredFile};
use crate::metrics::{CacheEvent, Metrics};
use crate::policy::{Permit, Read};
use crate::response::CacheStatus;
use crate::s3::{Answer, Fetched, GetOptions, ObjectMeta, S3Client, S3Error, S3Object};

/// Bytes an entry costs beyond its body (key, metadata, bookkeeping), for weighing.
const ENTRY_OVERHEAD: u64 = 512;

/// A cached object: metadata, the whole body, and until when it is fresh.
#[derive(Debug)]
pub struct CachedObject {
    /// Validators and headers.
    pub meta: ObjectMeta,
    /// The whole body.
    pub body: Stored,
    /// The headers of a whole-object answer, built once.
    pub headers: http::HeaderMap,
    fresh_until: Instant,
}

/// Where a cached body lives.
#[derive(Debug, Clone)]
pub enum Stored {
    /// On the heap; served as cheap `Bytes` clones and slices.
    Memory(Bytes),
    /// In a sealed memory file (large objects): sent with `sendfile` where the connection allows.
    File(Arc<StoredFile>),
}

impl Stored {
    /// Length in bytes.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Stored::Memory(bytes) => bytes.len() as u64,
            Stored::File(file) => file.len(),
        }
    }
}

#[derive(Debug)]
enum Entry {
    Object(Arc<CachedObject>),
    /// S3 said the object does not exist.
    Missing {
        until: Instant,
    },
    /// Larger than `max_object_size`: stream it, and skip the lock while this lasts.
    TooLarge {
        until: Instant,
    },
}

impl Entry {
    fn fresh(&self, now: Instant) -> bool {
        match self {
            Entry::Object(o) => o.fresh_until > now,
            Entry::Missing { until } | Entry::TooLarge { until } => *until > now,
        }
    }

    fn weight(&self, key: &S3Object) -> u32 {
        let body = match self {
            Entry::Object(o) => o.body.len(),
            _ => 0,
        };
        (body + ENTRY_OVERHEAD + key.key.len() as u64).min(u32::MAX as u64) as u32
    }
}

/// What a lookup found.
pub enum Lookup {
    /// An object to serve from memory, and how it got there.
    Object(Arc<CachedObject>, CacheStatus),
    /// The object does not exist.
    Missing,
    /// Not cacheable and already fetched: stream this response.
    Stream(Box<Fetched>),
    /// Not cached and not to be fetched into the cache: ask S3 directly.
    Bypass,
}

/// Settings that a reload may change (capacity is fixed at start).
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Freshness lifetime.
    pub ttl: Duration,
    /// How long past `ttl` an entry may be served when S3 fails.
    pub stale_if_error: Duration,
    /// How long "not found" is remembered.
    pub negative_ttl: Duration,
    /// Largest object cached.
    pub max_object_size: u64,
    /// Whether large bodies go to memory files. They pay off where a plain HTTP/1 connection
    /// sends them with `sendfile`; over TLS every answer is read back out of the file into a
    /// buffer before it is encrypted, a copy the heap saves.
    pub memory_files: bool,
}

impl From<&Config> for CacheSettings {
    fn from(config: &Config) -> Self {
        let c = &config.cache;
        CacheSettings {
            ttl: c.ttl,
            stale_if_error: c.stale_if_error,
            negative_ttl: c.negative_ttl,
            max_object_size: c.max_object_size.bytes(),
            memory_files: config.server.tls.is_none(),
        }
    }
}

/// The object cache.
pub struct ObjectCache {
    entries: Cache<S3Object, Arc<Entry>>,
    settings: ArcSwap<CacheSettings>,
    /// Counts of invalidations: a fetch that saw another count for its key does not store its
    /// result, so a write that happened during a fetch is never hidden by the older bytes.
    generations: Generations,
    metrics: Arc<Metrics>,
    capacity: u64,
    asked: Doorkeeper,
    /// Whether the types of objects streamed past the cache were passive, by ETag. S3's 304 for
    /// such an object names no type, and s3warden's 304 must say what its 200 said: a browser
    /// merges a 304's `Content-Disposition` and `Content-Security-Policy` into the copy it keeps.
    passive: moka::sync::Cache<S3Object, (http::HeaderValue, bool)>,
}

/// Objects at most whose passive types are remembered for S3's 304s.
const PASSIVE_REMEMBERED: u64 = 16_384;

/// Invalidations counted for the whole cache (purges) and per slot of keys, so that invalidating
/// one key (a user deleting a missing key in a loop, say) leaves the fills of other keys alone.
struct Generations {
    all: AtomicU64,
    slots: Box<[AtomicU64]>,
    hasher: std::hash::RandomState,
}

/// Slots of invalidation counts (128 KiB); keys that share one discard each other's fills.
const GENERATION_SLOTS: usize = 16_384;

impl Generations {
    fn new() -> Generations {
        Generations {
            all: AtomicU64::new(0),
            slots: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn slot(&self, key: &S3Object) -> &AtomicU64 {
        &self.slots[slot_of(&self.hasher, key, GENERATION_SLOTS)]
    }

    /// Changes whenever `key` (or everything) is invalidated: both counts only grow.
    fn of(&self, key: &S3Object) -> u64 {
        let all = self.all.load(Ordering::SeqCst);
        all.wrapping_add(self.slot(key).load(Ordering::SeqCst))
    }

    fn bump(&self, key: &S3Object) {
        self.slot(key).fetch_add(1, Ordering::SeqCst);
    }

    fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::SeqCst);
    }
}

/// Which of `slots` counters `key` goes to, by a hash seeded per process (so that no one can
/// choose keys that share a slot with another's).
fn slot_of(hasher: &std::hash::RandomState, key: &S3Object, slots: usize) -> usize {
    use std::hash::BuildHasher;
    hasher.hash_one(key) as usize % slots
}

/// Which keys were asked for lately, once or more than once. When the cache is full, an object
/// is stored only on its second request (or when others wait for the same fill): objects asked
/// for once and never again, like a crawler's or a backup's pass over cold keys, then do not
/// push out what is read all the time. moka's own admission alone lets them in just after its
/// counters are halved.
struct Doorkeeper {
    /// Two-bit saturating counts, indexed by a hash of the key.
    counts: Vec<std::sync::atomic::AtomicU8>,
    hasher: std::hash::RandomState,
    /// Requests counted since the counts were last cleared.
    recorded: AtomicU64,
}

/// Counter slots of a doorkeeper (64 KiB); they are cleared after twice as many requests.
const DOORKEEPER_SLOTS: usize = 1 << 16;

impl Doorkeeper {
    fn new() -> Doorkeeper {
        Doorkeeper {
            counts: (0..DOORKEEPER_SLOTS).map(|_| Default::default()).collect(),
            hasher: std::hash::RandomState::new(),
            recorded: AtomicU64::new(0),
        }
    }

    fn slot(&self, key: &S3Object) -> &std::sync::atomic::AtomicU8 {
        &self.counts[slot_of(&self.hasher, key, DOORKEEPER_SLOTS)]
    }

    /// Counts a request for `key` that missed.
    fn ask(&self, key: &S3Object) {
        if self.recorded.fetch_add(1, Ordering::Relaxed) >= 2 * DOORKEEPER_SLOTS as u64 {
            self.recorded.store(0, Ordering::Relaxed);
            for count in &self.counts {
                count.store(0, Ordering::Relaxed);
            }
        }
        let slot = self.slot(key);
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < 2).then_some(n + 1)
        });
    }

    /// Whether `key` missed more than once lately.
    fn asked_again(&self, key: &S3Object) -> bool {
        self.slot(key).load(Ordering::Relaxed) >= 2
    }
}

/// Whether a lookup may fetch the whole object into the cache on a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMiss {
    /// A plain GET: fetch and store it.
    Fetch,
    /// HEAD or a ranged GET: do not pull the whole object in for it.
    Bypass,
}

impl ObjectCache {
    /// A cache of `config.cache.capacity` bytes.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> ObjectCache {
        let capacity = config.cache.capacity.bytes();
        let entries = Cache::builder()
            .max_capacity(capacity)
            .weigher(|key: &S3Object, entry: &Arc<Entry>| entry.weight(key))
            .expire_after(MarkerExpiry)
            .build();
        ObjectCache {
            entries,
            settings: ArcSwap::from_pointee(CacheSettings::from(config)),
            generations: Generations::new(),
            metrics,
            capacity,
            asked: Doorkeeper::new(),
            passive: moka::sync::Cache::new(PASSIVE_REMEMBERED),
        }
    }

    /// Remembers whether the type of an object streamed past the cache is passive.
    pub fn remember_passive(&self, object: &S3Object, meta: &ObjectMeta) {
        if let Some(etag) = &meta.etag {
            self.passive
                .insert(object.clone(), (etag.clone(), meta.passive));
        }
    }

    /// Whether the object's type was passive when it had this ETag, if that is remembered.
    pub fn passive_by_etag(
        &self,
        object: &S3Object,
        etag: Option<&http::HeaderValue>,
    ) -> Option<bool> {
        let (known, passive) = self.passive.get(object)?;
        (Some(&known) == etag).then_some(passive)
    }

    /// Applies new settings (on reload); cached entries stay.
    pub fn reconfigure(&self, config: &Config) {
        self.settings.store(Arc::new(CacheSettings::from(config)));
    }

    /// Bytes held (after pending maintenance) and entries.
    pub async fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks().await;
        (self.entries.weighted_size(), self.entries.entry_count())
    }

    /// Bytes held and entries, as last maintained (no waiting).
    pub fn size_now(&self) -> (u64, u64) {
        (self.entries.weighted_size(), self.entries.entry_count())
    }

    /// Drops one object.
    pub async fn invalidate(&self, object: &S3Object) {
        self.generations.bump(object);
        self.entries.invalidate(object).await;
    }

    /// Drops everything; returns how many entries there were.
    pub async fn purge(&self) -> u64 {
        self.generations.bump_all();
        // One by one: moka's invalidate_all only hides entries, and keeps their bodies (memory
        // files included) until each is touched again or evicted.
        let mut n = 0;
        for (key, _) in self.entries.iter() {
            self.entries.invalidate(&*key).await;
            n += 1;
        }
        self.entries.run_pending_tasks().await;
        n
    }

    /// Finds the object the permit names: fresh from memory, revalidated, fetched (for a plain
    /// GET), stale when S3 fails, or not at all.
    pub async fn lookup(
        &self,
        permit: &Permit<Read>,
        s3: &S3Client,
        on_miss: OnMiss,
    ) -> Result<Lookup, S3Error> {
        let key = permit.object();
        let now = Instant::now();
        if let Some(entry) = self.entries.get(key).await {
            match &*entry {
                Entry::Object(o) if o.fresh_until > now => {
                    self.metrics.cache(CacheEvent::Hit);
                    return Ok(Lookup::Object(o.clone(), CacheStatus::Hit));
                }
                Entry::Missing { until } if *until > now => {
                    self.metrics.cache(CacheEvent::NegativeHit);
                    return Ok(Lookup::Missing);
                }
                Entry::TooLarge { until } if *until > now => return Ok(Lookup::Bypass),
                Entry::Object(_) => {} // stale: revalidate below, whatever the request
                _ if on_miss == OnMiss::Bypass => return Ok(Lookup::Bypass),
                _ => {}
            }
        } else if on_miss == OnMiss::Bypass {
            return Ok(Lookup::Bypass);
        }
        if on_miss == OnMiss::Fetch {
            self.asked.ask(key);
        }
        // Boxed: the hit path's future stays small (hyper moves it once per request).
        Box::pin(self.fill(permit, s3, on_miss)).await
    }

    /// The slow path, one request per key at a time (moka's per-key compute lock): whoever
    /// comes first talks to S3; the others find its result.
    async fn fill(
        &self,
        permit: &Permit<Read>,
        s3: &S3Client,
        on_miss: OnMiss,
    ) -> Result<Lookup, S3Error> {
        let key = permit.object().clone();
        let settings = self.settings.load_full();
        let generation = self.generations.of(&key);
        let mut found: Option<Lookup> = None;
        let out = &mut found;
        self.entries
            .entry(key)
            .and_try_compute_with(|current| async move {
                let now = Instant::now();
                let current = current.map(|e| e.into_value());
                let (op, lookup) = match current.as_deref() {
                    Some(entry) if entry.fresh(now) => {
                        // Another request did the work while this one waited.
                        self.metrics.cache(CacheEvent::Coalesced);
                        (Op::Nop, self.served(entry))
                    }
                    Some(Entry::Object(old)) => {
                        self.revalidate(permit, s3, old, &settings, now).await?
                    }
                    _ if on_miss == OnMiss::Bypass => (Op::Nop, Lookup::Bypass),
                    _ => self.fetch(permit, s3, &settings, now).await?,
                };
                *out = Some(lookup);
                // Only what was fetched before any invalidation of its key may be stored.
                let invalidated = self.generations.of(permit.object()) != generation;
                Ok::<_, S3Error>(match op {
                    Op::Put(_) if invalidated => Op::Nop,
                    op => op,
                })
            })
            .await?;
        // Keep the byte bound exact: admission and eviction run now, not later.
        self.entries.run_pending_tasks().await;
        Ok(found.unwrap_or(Lookup::Bypass))
    }

    fn served(&self, entry: &Entry) -> Lookup {
        match entry {
            Entry::Object(o) => Lookup::Object(o.clone(), CacheStatus::Hit),
            Entry::Missing { .. } => Lookup::Missing,
            Entry::TooLarge { .. } => Lookup::Bypass,
        }
    }

    /// A miss: fetch the whole object, and store it when it fits.
    async fn fetch(
        &self,
        permit: &Permit<Read>,
        s3: &S3Client,
        settings: &CacheSettings,
        now: Instant,
    ) -> Result<(Op<Arc<Entry>>, Lookup), S3Error> {
        let fetched = match s3.get(permit, &GetOptions::default()).await {
            Ok(fetched) => fetched,
            Err(e) if e.is_not_found() => return Ok(self.missing(settings, now)),
            Err(e) => return Err(e),
        };
        let object = match read_whole(fetched, settings, now).await? {
            Collected::Whole(object) => Arc::new(object),
            Collected::TooLarge(fetched) => {
                self.metrics.cache(CacheEvent::Bypass);
                return Ok(too_large(fetched, settings, now));
            }
        };
        self.metrics.cache(CacheEvent::Miss);
        let entry = Arc::new(Entry::Object(object.clone()));
        let weight = u64::from(entry.weight(permit.object()));
        let full = self.entries.weighted_size() + weight > self.capacity;
        if full && !self.asked.asked_again(permit.object()) {
            return Ok((Op::Nop, Lookup::Object(object, CacheStatus::Miss)));
        }
        Ok((Op::Put(entry), Lookup::Object(object, CacheStatus::Miss)))
    }

    /// A stale entry: ask S3 whether it changed (`If-None-Match`; a 304 moves no body).
    async fn revalidate(
        &self,
        permit: &Permit<Read>,
        s3: &S3Client,
        old: &Arc<CachedObject>,
        settings: &CacheSettings,
        now: Instant,
    ) -> Result<(Op<Arc<Entry>>, Lookup), S3Error> {
        let options = GetOptions {
            range: None,
            if_none_match: old.meta.etag.clone(),
        };
        let fetched = match s3.get(permit, &options).await {
            Ok(fetched) => fetched,
            Err(e) if e.is_not_found() => return Ok(self.missing(settings, now)),
            Err(e) => {
                if now.saturating_duration_since(old.fresh_until) <= settings.stale_if_error {
                    tracing::warn!(error = %e, "S3 failed; serving a stale cache entry");
                    self.metrics.cache(CacheEvent::Stale);
                    return Ok((Op::Nop, Lookup::Object(old.clone(), CacheStatus::Stale)));
                }
                return Err(e);
            }
        };
        if fetched.answer == Answer::NotModified {
            self.metrics.cache(CacheEvent::Revalidated);
            let refreshed = Arc::new(CachedObject {
                meta: old.meta.clone(),
                body: old.body.clone(),
                headers: old.headers.clone(),
                fresh_until: now + settings.ttl,
            });
            let entry = Arc::new(Entry::Object(refreshed.clone()));
            return Ok((
                Op::Put(entry),
                Lookup::Object(refreshed, CacheStatus::Revalidated),
            ));
        }
        self.metrics.cache(CacheEvent::Changed);
        let object = match read_whole(fetched, settings, now).await? {
            Collected::Whole(object) => Arc::new(object),
            Collected::TooLarge(fetched) => return Ok(too_large(fetched, settings, now)),
        };
        let entry = Arc::new(Entry::Object(object.clone()));
        Ok((Op::Put(entry), Lookup::Object(object, CacheStatus::Miss)))
    }

    fn missing(&self, settings: &CacheSettings, now: Instant) -> (Op<Arc<Entry>>, Lookup) {
        if settings.negative_ttl.is_zero() {
            return (Op::Remove, Lookup::Missing);
        }
        let entry = Entry::Missing {
            until: now + settings.negative_ttl,
        };
        (Op::Put(Arc::new(entry)), Lookup::Missing)
    }
}

/// A response too large to cache: streamed, and remembered as such for `ttl`.
fn too_large(fetched: Fetched, settings: &CacheSettings, now: Instant) -> (Op<Arc<Entry>>, Lookup) {
    let marker = Entry::TooLarge {
        until: now + settings.ttl,
    };
    (Op::Put(Arc::new(marker)), Lookup::Stream(Box::new(fetched)))
}

/// What reading a fetched body for the cache came to.
enum Collected {
    /// The whole body, to store.
    Whole(CachedObject),
    /// Longer than `cache.max_object_size`: the response to stream instead, the bytes already
    /// read first.
    TooLarge(Fetched),
}

/// Reads a whole body for the cache; only a body of exactly the announced length becomes an
/// entry. A body sent without a length is read until it ends or passes `max_object_size`.
/// Large bodies go to a memory file when the settings say so (the heap when one cannot be
/// made).
async fn read_whole(
    mut fetched: Fetched,
    settings: &CacheSettings,
    now: Instant,
) -> Result<Collected, S3Error> {
    let limit = settings.max_object_size;
    let expected = fetched.body_len;
    if expected.is_some_and(|len| len > limit) {
        return Ok(Collected::TooLarge(fetched));
    }
    let mut body = Collect::new(expected, settings.memory_files);
    while let Some(chunk) = fetched.body.next().await {
        let chunk = chunk.map_err(|e| S3Error::Unreachable(format!("body: {e}")))?;
        let len = body.len() + chunk.len() as u64;
        if expected.is_some_and(|expected| len > expected) {
            return Err(S3Error::Malformed("body longer than Content-Length".into()));
        }
        body.push(&chunk)?;
        if len > limit {
            // Unknown length, and more than the cache takes: what was read goes first.
            let read = match body {
                Collect::Memory(bytes) => bytes.freeze(),
                Collect::File(_) => {
                    unreachable!("a body of unknown length is collected on the heap")
                }
            };
            let read = futures_util::stream::iter([Ok(read)]);
            fetched.body = Box::pin(read.chain(fetched.body));
            return Ok(Collected::TooLarge(fetched));
        }
    }
    if expected.is_some_and(|expected| body.len() != expected) {
        return Err(S3Error::Unreachable(format!(
            "body ended at {} of {} bytes",
            body.len(),
            expected.unwrap_or_default()
        )));
    }
    let mut meta = fetched.meta;
    meta.size = Some(body.len());
    Ok(Collected::Whole(CachedObject {
        headers: crate::response::whole_headers(&meta),
        meta,
        body: body.finish(settings.memory_files)?,
        fresh_until: now + settings.ttl,
    }))
}

/// A body being collected, in memory or in a memory file.
enum Collect {
    Memory(BytesMut),
    File(FileWriter),
}

impl Collect {
    /// For a body of `expected` bytes; one of unknown length is collected on the heap.
    fn new(expected: Option<u64>, memory_files: bool) -> Collect {
        let expected = expected.unwrap_or_default();
        if memory_files && expected >= MIN_FILE_SIZE {
            match FileWriter::new() {
                Ok(writer) => return Collect::File(writer),
                Err(e) => tracing::debug!(error = %e, "no memory file; caching on the heap"),
            }
        }
        Collect::Memory(BytesMut::with_capacity(expected as usize))
    }

    fn len(&self) -> u64 {
        match self {
            Collect::Memory(bytes) => bytes.len() as u64,
            Collect::File(writer) => writer.len(),
        }
    }

    fn push(&mut self, chunk: &[u8]) -> Result<(), S3Error> {
        match self {
            Collect::Memory(bytes) => bytes.extend_from_slice(chunk),
            Collect::File(writer) => writer.write(chunk).map_err(memory_file)?,
        }
        Ok(())
    }

    /// The body to store; one collected on the heap for want of a length moves to a memory file
    /// now when it is large enough for one.
    fn finish(self, memory_files: bool) -> Result<Stored, S3Error> {
        Ok(match self {
            Collect::Memory(bytes) if memory_files && bytes.len() as u64 >= MIN_FILE_SIZE => {
                match FileWriter::new().and_then(|mut w| w.write(&bytes).map(|()| w)) {
                    Ok(writer) => Stored::File(Arc::new(writer.finish().map_err(memory_file)?)),
                    Err(e) => {
                        tracing::debug!(error = %e, "no memory file; caching on the heap");
                        Stored::Memory(bytes.freeze())
                    }
                }
            }
            Collect::Memory(bytes) => Stored::Memory(bytes.freeze()),
            Collect::File(writer) => Stored::File(Arc::new(writer.finish().map_err(memory_file)?)),
        })
    }
}

fn memory_file(e: std::io::Error) -> S3Error {
    S3Error::Unreachable(format!("memory file: {e}"))
}

/// Markers (missing, too large) expire on their own; objects stay until evicted, because even a
/// stale object saves a transfer when S3 confirms it with a 304.
struct MarkerExpiry;

impl moka::Expiry<S3Object, Arc<Entry>> for MarkerExpiry {
    fn expire_after_create(
        &self,
        _key: &S3Object,
        entry: &Arc<Entry>,
        created_at: Instant,
    ) -> Option<Duration> {
        match &**entry {
            Entry::Object(_) => None,
            Entry::Missing { until } | Entry::TooLarge { until } => {
                Some(until.saturating_duration_since(created_at))
            }
        }
    }

    fn expire_after_update(
        &self,
        key: &S3Object,
        entry: &Arc<Entry>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, entry, updated_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str) -> S3Object {
        S3Object {
            store: "s3".into(),
            bucket: "b".into(),
            key: key.into(),
        }
    }

    #[test]
    fn the_doorkeeper_knows_keys_asked_for_twice_until_it_forgets() {
        let asked = Doorkeeper::new();
        let (a, b) = (object("a"), object("b"));
        asked.ask(&a);
        assert!(!asked.asked_again(&a));
        asked.ask(&a);
        asked.ask(&a);
        assert!(asked.asked_again(&a));
        assert!(!asked.asked_again(&b) || std::ptr::eq(asked.slot(&a), asked.slot(&b)));
        // After twice as many requests as it has slots, it starts over.
        for i in 0..2 * DOORKEEPER_SLOTS {
            asked.ask(&object(&format!("other/{i}")));
        }
        asked.ask(&b);
        assert!(!asked.asked_again(&a) || std::ptr::eq(asked.slot(&a), asked.slot(&b)));
    }
}

//! Counters and histograms, kept per `App` (no global registry, so tests can run many apps in
//! one process) and rendered in the OpenMetrics text format on the admin listener.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;

use crate::s3::S3Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    route: &'static str,
    /// `X-Cache` (`HIT`, `MISS`, …), or `-` for answers that are not objects.
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct S3Labels {
    method: &'static str,
    outcome: &'static str,
}

/// What happened in the cache for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// Served from a fresh entry.
    Hit,
    /// Fetched from S3 and stored.
    Miss,
    /// Revalidated: S3 answered 304.
    Revalidated,
    /// Revalidated: the object had changed and was fetched again.
    Changed,
    /// S3 failed; a stale entry was served.
    Stale,
    /// Not cacheable (too large, ranged miss): streamed from S3.
    Bypass,
    /// Waited for another request's fetch of the same key instead of fetching.
    Coalesced,
    /// Answered from a remembered "not found".
    NegativeHit,
}

/// All of s3warden's metrics.
pub struct Metrics {
    registry: Registry,
    /// The process metrics, under their standard names (no `s3warden_` prefix).
    process: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram>,
    token_failures: Family<ReasonLabels, Counter>,
    s3_requests: Family<S3Labels, Counter>,
    s3_latency: Histogram,
    hits: Counter,
    misses: Counter,
    revalidated: Counter,
    changed: Counter,
    stale: Counter,
    bypass: Counter,
    coalesced: Counter,
    negative_hits: Counter,
    bytes_sent: Counter,
    sendfile_bytes: Counter,
    s3_body_bytes: Counter,
    in_flight: Gauge,
    connections: Gauge,
    cached_bytes: Gauge,
    cached_entries: Gauge,
    memory_files: Gauge,
    memory_file_bytes: Gauge,
    shed: Counter,
    token_verifications: Counter,
    /// Body bytes fetched from S3, readable without rendering (tests, demo).
    s3_bytes_total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("s3warden");
        let requests = Family::<RequestLabels, Counter>::default();
        let token_failures = Family::<ReasonLabels, Counter>::default();
        let s3_requests = Family::<S3Labels, Counter>::default();
        let s3_latency = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        // 50 µs (a cache hit) to about 1.6 s, doubling.
        let durations = Family::<DurationLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.00005, 2.0, 16))) as fn() -> Histogram,
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector));
        let m = Metrics {
            registry: Registry::default(),
            process,
            requests,
            durations: durations.clone(),
            token_failures,
            s3_requests,
            s3_latency,
            hits: Counter::default(),
            misses: Counter::default(),
            revalidated: Counter::default(),
            changed: Counter::default(),
            stale: Counter::default(),
            bypass: Counter::default(),
            coalesced: Counter::default(),
            negative_hits: Counter::default(),
            bytes_sent: Counter::default(),
            sendfile_bytes: Counter::default(),
            s3_body_bytes: Counter::default(),
            in_flight: Gauge::default(),
            connections: Gauge::default(),
            cached_bytes: Gauge::default(),
            cached_entries: Gauge::default(),
            memory_files: Gauge::default(),
            memory_file_bytes: Gauge::default(),
            shed: Counter::default(),
            token_verifications: Counter::default(),
            s3_bytes_total: AtomicU64::new(0),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Requests answered, by route and status",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from a request's head to its response head, by route and X-Cache",
            m.durations.clone(),
        );
        r.register(
            "build",
            "The s3warden version running",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "token_failures",
            "Tokens refused, by reason",
            m.token_failures.clone(),
        );
        r.register(
            "s3_requests",
            "Requests sent to S3, by method and outcome",
            m.s3_requests.clone(),
        );
        r.register(
            "s3_request_duration_seconds",
            "Time from sending a request to S3 to its response head",
            m.s3_latency.clone(),
        );
        r.register(
            "cache_hits",
            "Requests served from a fresh cache entry",
            m.hits.clone(),
        );
        r.register(
            "cache_misses",
            "Requests that fetched the object from S3",
            m.misses.clone(),
        );
        r.register(
            "cache_revalidations_not_modified",
            "Stale entries S3 confirmed unchanged (304, no body transferred)",
            m.revalidated.clone(),
        );
        r.register(
            "cache_revalidations_changed",
            "Stale entries that had changed in S3 and were fetched again",
            m.changed.clone(),
        );
        r.register(
            "cache_stale_served",
            "Stale entries served because S3 failed",
            m.stale.clone(),
        );
        r.register(
            "cache_bypass",
            "Requests streamed from S3 without caching (too large, ranged misses)",
            m.bypass.clone(),
        );
        r.register(
            "cache_coalesced_waits",
            "Requests that waited for another request's S3 fetch of the same object",
            m.coalesced.clone(),
        );
        r.register(
            "cache_negative_hits",
            "Requests answered 404 from a remembered miss",
            m.negative_hits.clone(),
        );
        r.register_with_unit(
            "cache",
            "Bytes of object bodies held in the cache",
            Unit::Bytes,
            m.cached_bytes.clone(),
        );
        r.register(
            "memory_files",
            "Cached bodies held in sealed memory files (one file descriptor each)",
            m.memory_files.clone(),
        );
        r.register_with_unit(
            "memory_file",
            "Bytes of cached bodies held in memory files",
            Unit::Bytes,
            m.memory_file_bytes.clone(),
        );
        r.register(
            "cache_entries",
            "Entries in the cache",
            m.cached_entries.clone(),
        );
        r.register_with_unit(
            "client_sent",
            "Body bytes sent to clients",
            Unit::Bytes,
            m.bytes_sent.clone(),
        );
        r.register_with_unit(
            "client_sendfile",
            "Body bytes sent from the cache's memory files by sendfile (plain HTTP/1, no copy)",
            Unit::Bytes,
            m.sendfile_bytes.clone(),
        );
        r.register_with_unit(
            "s3_fetched",
            "Body bytes received from S3",
            Unit::Bytes,
            m.s3_body_bytes.clone(),
        );
        r.register(
            "in_flight_requests",
            "Requests being answered",
            m.in_flight.clone(),
        );
        r.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        r.register(
            "connections_shed",
            "Connections refused with 503 because max_connections was reached",
            m.shed.clone(),
        );
        r.register(
            "token_verifications",
            "Token signatures checked (verified tokens are then served from memory until exp)",
            m.token_verifications.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts an answered request and how long its answer took to start.
    pub fn request(&self, route: &'static str, status: u16, cache: &'static str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.durations
            .get_or_create(&DurationLabels { route, cache })
            .observe(took.as_secs_f64());
    }

    /// Counts a refused token.
    pub fn token_failure(&self, reason: &'static str) {
        self.token_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a token signature check.
    pub fn token_verified(&self) {
        self.token_verifications.inc();
    }

    /// Token signatures checked so far.
    pub fn token_verifications(&self) -> u64 {
        self.token_verifications.get()
    }

    /// Records one S3 request's outcome and time to response head.
    pub fn observe_s3<T>(&self, method: &'static str, took: Duration, result: &Result<T, S3Error>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(S3Error::Timeout) => "timeout",
            Err(S3Error::Unreachable(_)) => "unreachable",
            Err(S3Error::Malformed(_)) => "malformed",
            Err(S3Error::WrongRegion { .. }) => "wrong_region",
            Err(S3Error::Status { status, .. }) if status.is_client_error() => "client_error",
            Err(S3Error::Status { .. }) => "server_error",
            Err(S3Error::Sign(_)) => "sign_error",
            Err(S3Error::ClockSkew { .. }) => "clock_skew",
            Err(S3Error::NoCredentials(_)) => "no_credentials",
        };
        self.s3_requests
            .get_or_create(&S3Labels { method, outcome })
            .inc();
        self.s3_latency.observe(took.as_secs_f64());
    }

    /// Counts body bytes received from S3.
    pub fn s3_body_bytes(&self, n: usize) {
        self.s3_body_bytes.inc_by(n as u64);
        self.s3_bytes_total.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Body bytes received from S3 so far.
    pub fn s3_bytes_total(&self) -> u64 {
        self.s3_bytes_total.load(Ordering::Relaxed)
    }

    /// Counts body bytes sent to a client.
    pub fn bytes_sent(&self, n: u64) {
        self.bytes_sent.inc_by(n);
    }

    /// Counts body bytes sent from cached memory files by `sendfile` (a clone shares the count).
    pub fn sendfile_bytes(&self) -> &Counter {
        &self.sendfile_bytes
    }

    /// Counts a cache event.
    pub fn cache(&self, event: CacheEvent) {
        match event {
            CacheEvent::Hit => &self.hits,
            CacheEvent::Miss => &self.misses,
            CacheEvent::Revalidated => &self.revalidated,
            CacheEvent::Changed => &self.changed,
            CacheEvent::Stale => &self.stale,
            CacheEvent::Bypass => &self.bypass,
            CacheEvent::Coalesced => &self.coalesced,
            CacheEvent::NegativeHit => &self.negative_hits,
        }
        .inc();
    }

    /// Sets the cache size gauges.
    pub fn cache_size(&self, bytes: u64, entries: u64) {
        self.cached_bytes.set(bytes as i64);
        self.cached_entries.set(entries as i64);
        let (files, file_bytes) = crate::memfile::in_use();
        self.memory_files.set(files as i64);
        self.memory_file_bytes.set(file_bytes as i64);
    }

    /// The in-flight request gauge.
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// The open connection gauge.
    pub fn connections(&self) -> &Gauge {
        &self.connections
    }

    /// Counts a connection shed at the limit.
    pub fn shed(&self) {
        self.shed.inc();
    }

    /// The metrics in OpenMetrics text format.
    pub fn render(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        out
    }
}

/// The standard process metrics, read from `/proc` at each scrape: resident memory, open file
/// descriptors, CPU time and start time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(process) = ProcessStats::read() else {
            return Ok(());
        };
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                process.resident_bytes as f64,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                process.open_fds as f64,
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                process.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let gauge = ConstGauge::new(value);
            let metric =
                encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        let cpu = ConstCounter::new(process.cpu_seconds);
        let metric = encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?;
        cpu.encode(metric)
    }
}

/// This process as `/proc` describes it.
struct ProcessStats {
    resident_bytes: u64,
    open_fds: usize,
    cpu_seconds: f64,
    start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads only the process's own files under `/proc/self`, which stay visible when the unit
    /// mounts `/proc` with `ProcSubset=pid` (no `/proc/uptime` or `/proc/stat` there).
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as f64;
        let (utime, stime, start, rss) = (field(14)?, field(15)?, field(22)?, field(24)?);
        // The start time counts clock ticks since boot: the boot-time clock says how long ago
        // that was.
        let since_boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let uptime = since_boot.tv_sec as f64 + since_boot.tv_nsec as f64 / 1e9;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        Some(ProcessStats {
            resident_bytes: (rss * page) as u64,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count(),
            cpu_seconds: (utime + stime) / ticks,
            start_time_seconds: now - uptime + start / ticks,
        })
    }
}

//! What the soak knows to be true: every version of every key it wrote (bodies are regenerated
//! from a seed, so nothing is kept in memory), who may do what, and the check each answer must
//! pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A body: `len` bytes generated from `seed` (random access, so ranges are checked without
/// building the whole body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Body {
    pub seed: u64,
    pub len: usize,
}

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn word(seed: u64, i: u64) -> u64 {
    // SplitMix64's output for step i: counter based, so any offset can be computed alone.
    let mut z = seed.wrapping_add(GAMMA.wrapping_mul(i + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Body {
    /// The byte at `offset`.
    fn byte(&self, offset: usize) -> u8 {
        word(self.seed, (offset / 8) as u64).to_le_bytes()[offset % 8]
    }

    /// The whole body.
    pub fn bytes(&self) -> Vec<u8> {
        (0..self.len).map(|i| self.byte(i)).collect()
    }

    /// Whether two bodies have the same bytes (all empty bodies do, and share an ETag).
    pub fn same_bytes(&self, other: &Body) -> bool {
        self.len == other.len && (self.len == 0 || self.seed == other.seed)
    }

    /// Whether `got` is exactly this body's bytes from `offset`.
    pub fn matches_at(&self, offset: usize, got: &[u8]) -> bool {
        offset + got.len() <= self.len
            && got
                .iter()
                .enumerate()
                .all(|(i, b)| *b == self.byte(offset + i))
    }
}

/// How a write ended, as far as the client can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still running.
    Pending,
    /// 2xx: S3 holds it from some moment between start and end.
    Confirmed,
    /// 5xx or a lost answer: S3 may hold it (from its start on) or not.
    Maybe,
    /// Refused (4xx) or cut off by its client before its body was sent: S3 must never hold it.
    Never,
}

/// One write of a key: a body, or a delete (`None`).
#[derive(Clone, Debug)]
struct Attempt {
    id: u64,
    body: Option<Body>,
    started: Instant,
    ended: Option<Instant>,
    outcome: Outcome,
}

/// Every key's writes, in order: writes of one key never overlap (each holds the key's lock).
#[derive(Default)]
pub struct Versions {
    keys: Mutex<HashMap<String, Vec<Attempt>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    ids: std::sync::atomic::AtomicU64,
}

/// A write in progress; [`Versions::finish`] records how it ended.
pub struct Ticket {
    key: String,
    id: u64,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

/// What a read answered.
pub enum Seen<'a> {
    /// 200 with this body.
    Whole(&'a [u8]),
    /// 206: `bytes` at `start`, of an object of `total` bytes.
    Part {
        start: usize,
        total: usize,
        bytes: &'a [u8],
    },
    /// 200 to a HEAD, with this Content-Length.
    Head(usize),
    /// 404.
    Missing,
    /// 304 to an If-None-Match of the ETag seen with `body`.
    NotModified(Body),
    /// 416 to a range starting at this offset.
    Unsatisfiable(usize),
}

impl Versions {
    /// Records `body` as what `key` held before the soak began.
    pub fn seed(&self, key: &str, body: Option<Body>, at: Instant) {
        self.record(key, body, at, at);
    }

    /// Waits until no other write of `key` runs, then records this one as started.
    pub async fn begin(&self, key: &str, body: Option<Body>) -> Ticket {
        let lock = (self
            .locks
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default())
        .clone();
        let guard = lock.lock_owned().await;
        let id = self.next_id();
        let mut keys = self.keys.lock().unwrap();
        keys.entry(key.to_owned()).or_default().push(Attempt {
            id,
            body,
            started: Instant::now(),
            ended: None,
            outcome: Outcome::Pending,
        });
        Ticket {
            key: key.to_owned(),
            id,
            _lock: guard,
        }
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Records how a write ended.
    pub fn finish(&self, ticket: Ticket, outcome: Outcome) {
        let mut keys = self.keys.lock().unwrap();
        let attempts = keys.get_mut(&ticket.key).expect("begun");
        // Still there: pruning keeps everything from the last write confirmed long ago on.
        let attempt = attempts
            .iter_mut()
            .find(|a| a.id == ticket.id)
            .expect("not pruned");
        attempt.ended = Some(Instant::now());
        attempt.outcome = outcome;
    }

    /// Records a write that the daemon named after the fact (a form upload's generated key).
    pub fn record(&self, key: &str, body: Option<Body>, started: Instant, ended: Instant) {
        self.keys
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default()
            .push(Attempt {
                id: self.next_id(),
                body,
                started,
                ended: Some(ended),
                outcome: Outcome::Confirmed,
            });
    }

    /// Which version a whole body read over `[from, to]` is.
    pub fn identify(&self, key: &str, from: Instant, to: Instant, got: &[u8]) -> Option<Body> {
        let (possible, _) = self.candidates(key, from, to);
        possible
            .into_iter()
            .flatten()
            .find(|b| b.len == got.len() && b.matches_at(0, got))
    }

    /// The states `key` may have had at some moment of `[from, to]`: `None` for absent.
    fn candidates(&self, key: &str, from: Instant, to: Instant) -> (Vec<Option<Body>>, Vec<Body>) {
        let keys = self.keys.lock().unwrap();
        let Some(attempts) = keys.get(key) else {
            return (vec![None], Vec::new());
        };
        let mut possible = Vec::new();
        let mut never = Vec::new();
        // Before the first write the key was absent (keys written only by the soak).
        let first_certain = attempts
            .iter()
            .position(|a| a.outcome == Outcome::Confirmed);
        if first_certain.is_none_or(|i| {
            attempts[i].started > from || attempts[i].ended.is_some_and(|e| e > from)
        }) {
            possible.push(None);
        }
        for (i, a) in attempts.iter().enumerate() {
            match a.outcome {
                Outcome::Never => {
                    never.extend(a.body);
                    continue;
                }
                Outcome::Pending | Outcome::Confirmed | Outcome::Maybe => {}
            }
            // It cannot have been held before it started.
            if a.started > to {
                continue;
            }
            // It was certainly replaced before `from` if a later write was confirmed before it.
            let replaced = attempts[i + 1..].iter().any(|later| {
                later.outcome == Outcome::Confirmed && later.ended.is_some_and(|e| e < from)
            });
            if !replaced {
                possible.push(a.body);
            }
        }
        (possible, never)
    }

    /// Checks one answer for `key` to a request made over `[from, to]`; `Err` says why not.
    pub fn check(
        &self,
        key: &str,
        from: Instant,
        to: Instant,
        seen: Seen<'_>,
    ) -> Result<(), String> {
        let (possible, never) = self.candidates(key, from, to);
        let bodies = || possible.iter().flatten();
        let ok = match &seen {
            Seen::Whole(got) => {
                let hit = bodies().find(|b| b.len == got.len() && b.matches_at(0, got));
                hit.is_some()
            }
            Seen::Part {
                start,
                total,
                bytes,
            } => bodies().any(|b| b.len == *total && b.matches_at(*start, bytes)),
            Seen::Head(len) => bodies().any(|b| b.len == *len),
            Seen::Missing => possible.contains(&None),
            Seen::NotModified(body) => bodies().any(|b| b.same_bytes(body)),
            Seen::Unsatisfiable(start) => {
                bodies().any(|b| *start >= b.len) || possible.contains(&None)
            }
        };
        if ok {
            return Ok(());
        }
        let what = match &seen {
            Seen::Whole(got)
                if never
                    .iter()
                    .any(|b| b.len == got.len() && b.matches_at(0, got)) =>
            {
                "the body of a refused or cut-off upload".to_owned()
            }
            Seen::Whole(got) => format!("a 200 body of {} bytes matching no version", got.len()),
            Seen::Part {
                start,
                total,
                bytes,
            } => format!(
                "a 206 of bytes {start}+{} of {total} matching no version",
                bytes.len()
            ),
            Seen::Head(len) => format!("a HEAD length {len} of no version"),
            Seen::Missing => "a 404 while the object existed".to_owned(),
            Seen::NotModified(_) => "a 304 for a version no longer held".to_owned(),
            Seen::Unsatisfiable(start) => format!("a 416 for a range starting at {start}"),
        };
        let lens: Vec<String> = possible
            .iter()
            .map(|b| b.map_or("absent".to_owned(), |b| b.len.to_string()))
            .collect();
        Err(format!("{key}: {what} (possible: {})", lens.join(", ")))
    }

    /// Drops writes that no request still running can see (replaced long ago).
    pub fn prune(&self, older_than: Duration) {
        let Some(horizon) = Instant::now().checked_sub(older_than) else {
            return;
        };
        for attempts in self.keys.lock().unwrap().values_mut() {
            let last_certain = attempts.iter().rposition(|a| {
                a.outcome == Outcome::Confirmed && a.ended.is_some_and(|e| e < horizon)
            });
            if let Some(i) = last_certain {
                // Keep refused bodies a while: seeing one later is the worst finding.
                attempts.drain(..i);
            }
        }
    }
}

/// The soak's users and what the rules let each of them do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum User {
    /// No token.
    Anonymous,
    /// roles = ["writer"]
    Alice,
    /// roles = ["reader"]
    Bob,
    /// no roles
    Carol,
    /// roles = ["admin"]
    Root,
}

pub const USERS: [User; 5] = [
    User::Anonymous,
    User::Alice,
    User::Bob,
    User::Carol,
    User::Root,
];

impl User {
    pub fn sub(self) -> &'static str {
        match self {
            User::Anonymous => "",
            User::Alice => "alice",
            User::Bob => "bob",
            User::Carol => "carol",
            User::Root => "root",
        }
    }

    pub fn roles(self) -> &'static [&'static str] {
        match self {
            User::Anonymous | User::Carol => &[],
            User::Alice => &["writer"],
            User::Bob => &["reader"],
            User::Root => &["admin"],
        }
    }

    /// Whether the rules (the `RULES` of the soak's config) let this user `method` the `key`.
    pub fn may(self, method: &str, key: &str) -> bool {
        let read = method == "GET";
        let has = |role: &str| self.roles().contains(&role);
        if key.starts_with("public/") {
            return read;
        }
        if self == User::Anonymous {
            return false;
        }
        if key.starts_with("team/") {
            return has("writer") || (read && has("reader"));
        }
        if key.starts_with("secret/") {
            return has("admin");
        }
        if let Some(rest) = key.strip_prefix("users/") {
            return rest.split('/').next() == Some(self.sub());
        }
        false
    }
}

/// The access rules the model above mirrors.
pub const RULES: &str = r#"
[[rules]]
bucket = "soak"
prefix = "public/"
methods = ["GET"]
allow = "public"

[[rules]]
bucket = "soak"
prefix = "team/"
methods = ["GET"]
allow = { claims = { roles = "reader" } }

[[rules]]
bucket = "soak"
prefix = "team/"
methods = ["GET", "PUT", "DELETE"]
allow = { claims = { roles = "writer" } }

[[rules]]
bucket = "soak"
prefix = "users/{sub}/"
methods = ["GET", "PUT", "DELETE"]
allow = "authenticated"

[[rules]]
bucket = "soak"
prefix = "secret/"
methods = ["GET", "PUT", "DELETE"]
allow = { claims = { roles = "admin" } }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_sees_only_what_was_held_during_it() {
        let v = Versions::default();
        let t0 = Instant::now();
        let old = Body { seed: 1, len: 10 };
        let new = Body { seed: 2, len: 12 };
        v.seed("k", Some(old), t0);
        let during = Instant::now();
        let ticket = v.begin("k", Some(new)).await;
        v.finish(ticket, Outcome::Confirmed);
        let after = Instant::now();
        assert!(
            v.check("k", during, after, Seen::Whole(&old.bytes()))
                .is_ok()
        );
        assert!(
            v.check("k", during, after, Seen::Whole(&new.bytes()))
                .is_ok()
        );
        std::thread::sleep(Duration::from_millis(2));
        let later = Instant::now();
        assert!(
            v.check("k", later, later, Seen::Whole(&old.bytes()))
                .is_err()
        );
        assert!(v.check("k", later, later, Seen::Missing).is_err());
        let part = &new.bytes()[3..7];
        let seen_at = |start| Seen::Part {
            start,
            total: 12,
            bytes: part,
        };
        assert!(v.check("k", later, later, seen_at(3)).is_ok());
        assert!(v.check("k", later, later, seen_at(4)).is_err());
    }

    #[tokio::test]
    async fn empty_bodies_are_one_version_to_a_conditional_request() {
        let v = Versions::default();
        let (first, second) = (Body { seed: 1, len: 0 }, Body { seed: 2, len: 0 });
        v.seed("k", Some(first), Instant::now());
        let ticket = v.begin("k", Some(second)).await;
        v.finish(ticket, Outcome::Confirmed);
        std::thread::sleep(Duration::from_millis(2));
        let now = Instant::now();
        assert!(v.check("k", now, now, Seen::NotModified(first)).is_ok());
    }

    #[test]
    fn the_rules_model() {
        assert!(User::Anonymous.may("GET", "public/a"));
        assert!(!User::Anonymous.may("GET", "team/a"));
        assert!(User::Bob.may("GET", "team/a") && !User::Bob.may("PUT", "team/a"));
        assert!(User::Carol.may("PUT", "users/carol/x") && !User::Carol.may("GET", "users/bob/x"));
        assert!(!User::Alice.may("GET", "secret/x") && User::Root.may("DELETE", "secret/x"));
    }
}

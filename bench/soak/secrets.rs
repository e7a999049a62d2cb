//! The secrets that rotate under the traffic: the HS256 secret, the URL-signing secrets and
//! the JWKS keys, with the windows in which a rotation was under way (a token or URL may be
//! refused then, and only then).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::model::User;

/// How secrets change over time.
pub struct Secrets {
    dir: PathBuf,
    rsa: [EncodingKey; 2],
    state: Mutex<State>,
}

struct State {
    /// The HS256 secret clients sign with now.
    hmac_generation: u64,
    /// The RSA key (0: rsa-1, 1: rsa-2) clients sign with now.
    rsa_key: usize,
    /// URL-signing rotations: (files written, reload done).
    signing: Vec<(Instant, Option<Instant>)>,
    /// HS256 rotations: (files written, reload done).
    hmac: Vec<(Instant, Option<Instant>)>,
    /// Token rotations of any kind, while a valid token may be refused (open while running).
    auth_windows: Vec<(Instant, Option<Instant>)>,
}

/// A token and what it was signed with.
#[derive(Clone)]
pub struct Token {
    pub jwt: String,
    /// Set for HS256 tokens: the secret's generation.
    pub hmac_generation: Option<u64>,
}

fn hmac_secret(generation: u64) -> String {
    format!("soak-hmac-secret-generation-{generation:08}-0123456789abcdef")
}

/// Claims for `user`, valid for five minutes.
fn claims(user: User) -> serde_json::Value {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    serde_json::json!({ "sub": user.sub(), "roles": user.roles(), "exp": exp })
}

/// An HS256 token for `user` signed with the secret of `generation`.
fn hs256(user: User, generation: u64) -> Token {
    let key = EncodingKey::from_secret(hmac_secret(generation).as_bytes());
    let jwt =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(user), &key).expect("sign");
    Token {
        jwt,
        hmac_generation: Some(generation),
    }
}

fn url_secret(generation: u64) -> String {
    format!("soak-url-signing-secret-generation-{generation:08}-0123456789")
}

impl Secrets {
    /// Writes the first secrets into `dir`.
    pub fn new(dir: PathBuf, fixtures: &std::path::Path) -> Secrets {
        let rsa = |name: &str| {
            EncodingKey::from_rsa_pem(&std::fs::read(fixtures.join(name)).expect("fixture"))
                .expect("rsa key")
        };
        let secrets = Secrets {
            dir,
            rsa: [rsa("rsa_private.pem"), rsa("rsa2_private.pem")],
            state: Mutex::new(State {
                hmac_generation: 0,
                rsa_key: 0,
                signing: Vec::new(),
                hmac: Vec::new(),
                auth_windows: Vec::new(),
            }),
        };
        secrets.write("hmac", &hmac_secret(0));
        secrets.write("url-key-0", &url_secret(0));
        secrets.write("url-key-1", &url_secret(0));
        secrets
    }

    fn write(&self, name: &str, text: &str) {
        let temp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&temp, text).expect("secret");
        std::fs::rename(temp, self.dir.join(name)).expect("secret");
    }

    /// A token for `user` (None for anonymous), signed with the current HS256 secret or RSA key.
    pub fn token(&self, user: User) -> Option<Token> {
        if user == User::Anonymous {
            return None;
        }
        let state = self.state.lock().unwrap();
        if fastrand::bool() {
            return Some(hs256(user, state.hmac_generation));
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(["rsa-1", "rsa-2"][state.rsa_key].to_owned());
        let jwt =
            jsonwebtoken::encode(&header, &claims(user), &self.rsa[state.rsa_key]).expect("sign");
        Some(Token {
            jwt,
            hmac_generation: None,
        })
    }

    /// An HS256 token for `user` signed with a secret retired at least two rotations ago, if
    /// there is one.
    pub fn retired_token(&self, user: User) -> Option<(Token, Instant)> {
        let state = self.state.lock().unwrap();
        let generation = state.hmac_generation.checked_sub(2)?;
        // Retired for sure once the rotation after it was done.
        let retired_at = state.hmac[generation as usize + 1].1?;
        Some((hs256(user, generation), retired_at))
    }

    /// Writes a new HS256 secret; `reload` applies it; then clients use it.
    pub async fn rotate_hmac<F: Future<Output = Result<(), String>>>(
        &self,
        reload: impl FnOnce() -> F,
    ) -> Result<(), String> {
        let (next, window) = {
            let mut state = self.state.lock().unwrap();
            state.hmac.push((Instant::now(), None));
            state.auth_windows.push((Instant::now(), None));
            (state.hmac_generation + 1, state.auth_windows.len() - 1)
        };
        self.write("hmac", &hmac_secret(next));
        let result = reload().await;
        let done = Instant::now();
        let mut state = self.state.lock().unwrap();
        state.hmac.last_mut().expect("pushed").1 = Some(done);
        state.hmac_generation = next;
        // Tokens minted just before the switch are still on their way.
        state.auth_windows[window].1 = Some(done + Duration::from_millis(500));
        result
    }

    /// Puts a new URL-signing secret first and keeps the one before it (the one before that
    /// retires).
    pub async fn rotate_signing<F: Future<Output = Result<(), String>>>(
        &self,
        reload: impl FnOnce() -> F,
    ) -> Result<(), String> {
        let next = {
            let mut state = self.state.lock().unwrap();
            state.signing.push((Instant::now(), None));
            state.signing.len() as u64
        };
        self.write("url-key-1", &url_secret(next - 1));
        self.write("url-key-0", &url_secret(next));
        let result = reload().await;
        self.state
            .lock()
            .unwrap()
            .signing
            .last_mut()
            .expect("pushed")
            .1 = Some(Instant::now());
        result
    }

    /// Moves clients to the other RSA key: a new key is published first and used after the
    /// daemons can have fetched it; an old one is dropped from the JWKS after clients left it.
    pub async fn rotate_rsa(&self, publish: impl Fn(&str)) {
        let (to, window) = {
            let mut state = self.state.lock().unwrap();
            state.auth_windows.push((Instant::now(), None));
            (1 - state.rsa_key, state.auth_windows.len() - 1)
        };
        let both = include_str!("../../tests/fixtures/jwks-rotated.json");
        let first = include_str!("../../tests/fixtures/jwks.json");
        publish(both);
        // A daemon fetches an unknown kid at most once per jwks_cooldown (1 s).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.state.lock().unwrap().rsa_key = to;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if to == 0 {
            publish(first);
        }
        self.state.lock().unwrap().auth_windows[window].1 =
            Some(Instant::now() + Duration::from_millis(500));
    }

    /// Whether a token rotation was under way at some point of `[from, to]`.
    pub fn rotating(&self, from: Instant, to: Instant) -> bool {
        let state = self.state.lock().unwrap();
        state
            .auth_windows
            .iter()
            .any(|(s, e)| *s <= to && e.is_none_or(|e| e >= from))
    }

    /// URL-signing generations: the lowest certainly in force at `t` and the highest possibly
    /// in force at `t`.
    pub fn signing_generation(&self, t: Instant) -> (u64, u64) {
        let state = self.state.lock().unwrap();
        let done = state
            .signing
            .iter()
            .filter(|(_, e)| e.is_some_and(|e| e <= t))
            .count() as u64;
        let begun = state.signing.iter().filter(|(s, _)| *s <= t).count() as u64;
        (done, begun)
    }
}

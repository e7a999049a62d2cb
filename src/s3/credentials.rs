//! S3 credentials while the daemon runs: keys from the config as they are, or the AWS default
//! chain (`aws-config`), fetched at start and refreshed in the background before they expire,
//! so that no request waits for a refresh or fails because of one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::Credentials;
use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_credential_types::provider::ProvideCredentials;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_types::region::Region;

use crate::config::{AwsCredentials, AwsSource};

/// The credentials in use at one moment.
pub struct Keys {
    pub(crate) identity: Identity,
    /// When they stop working; `None` for keys that do not expire.
    pub expires: Option<SystemTime>,
    /// They carry a session token: temporary credentials.
    pub temporary: bool,
    /// Where they came from (`key files`, `instance metadata (IMDSv2)`, ...).
    pub provider: &'static str,
    /// Different for every set of keys the process has held.
    pub serial: u64,
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

impl Keys {
    /// Keys read from the config's sources.
    pub fn from_config(credentials: &AwsCredentials, provider: &'static str) -> Keys {
        Self::from_sdk(
            Credentials::new(
                &credentials.access_key_id,
                &credentials.secret_access_key,
                credentials.session_token.clone(),
                None,
                "s3warden",
            ),
            provider,
        )
    }

    fn from_sdk(credentials: Credentials, provider: &'static str) -> Keys {
        Keys {
            expires: credentials.expiry(),
            temporary: credentials.session_token().is_some(),
            provider,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            identity: credentials.into(),
        }
    }

    fn access_key_id(&self) -> &str {
        self.identity
            .data::<Credentials>()
            .map(Credentials::access_key_id)
            .unwrap_or_default()
    }

    /// Whether requests may be signed with these keys at `now`: until [`EXPIRY_MARGIN`] before
    /// they expire.
    fn usable_at(&self, now: SystemTime) -> bool {
        self.expires
            .is_none_or(|expires| now + EXPIRY_MARGIN < expires)
    }
}

/// A store's credentials, shared by its S3 client and URL signer; cheap to clone. Keys from the
/// config are held as they are; the default chain is refreshed by a background task that ends
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Inner>,
}

struct Inner {
    /// The store id, for logs.
    store: String,
    held: ArcSwapOption<Keys>,
    /// Why the last fetch failed, while it keeps failing.
    trouble: Mutex<Option<String>>,
    /// What a later config must ask for to keep this keyring (and its refresh task).
    chain: Option<ChainSettings>,
    refresher: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// The settings a default chain is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainSettings {
    profile: Option<String>,
    region: String,
}

/// Longest wait for one fetch from the chain (IMDS and STS calls have their own, shorter
/// timeouts and retries).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Keys are put aside this long before they expire, so that a request signed with them does
/// not reach S3 after they expired (S3 would refuse it as `ExpiredToken`): once keys cannot be
/// refreshed, requests answer 503 from then on instead of failing one by one at S3.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

impl Keyring {
    /// The keyring for a store's configured source. A default chain reuses `previous` when it
    /// was built from the same settings (a reload keeps credentials and their refresh task);
    /// otherwise it is fetched once before this returns, and refreshed from then on.
    pub async fn new(
        store: &str,
        source: &AwsSource,
        region: &str,
        previous: Option<&Keyring>,
    ) -> Keyring {
        match source {
            AwsSource::Keys {
                credentials,
                origin,
            } => Self::fixed(store, Keys::from_config(credentials, origin)),
            AwsSource::DefaultChain { profile } => {
                let settings = ChainSettings {
                    profile: profile.clone(),
                    region: region.to_owned(),
                };
                match previous {
                    Some(keyring) if keyring.inner.chain.as_ref() == Some(&settings) => {
                        keyring.clone()
                    }
                    _ => Self::chain(store, settings).await,
                }
            }
        }
    }

    fn fixed(store: &str, keys: Keys) -> Keyring {
        Keyring {
            inner: Arc::new(Inner {
                store: store.to_owned(),
                held: ArcSwapOption::from_pointee(keys),
                trouble: Mutex::new(None),
                chain: None,
                refresher: Mutex::new(None),
            }),
        }
    }

    async fn chain(store: &str, settings: ChainSettings) -> Keyring {
        let mut builder =
            DefaultCredentialsChain::builder().region(Region::new(settings.region.clone()));
        if let Some(profile) = &settings.profile {
            builder = builder.profile_name(profile);
        }
        let provider = builder.build().await;
        let keyring = Keyring {
            inner: Arc::new(Inner {
                store: store.to_owned(),
                held: ArcSwapOption::empty(),
                trouble: Mutex::new(None),
                chain: Some(settings),
                refresher: Mutex::new(None),
            }),
        };
        let mut refresh = Refresh::default();
        let wait = refresh.fetch(&keyring.inner, &provider).await;
        let weak = Arc::downgrade(&keyring.inner);
        let task = tokio::spawn(refresh.run(weak, provider, wait));
        *keyring.inner.refresher.lock().expect("lock not poisoned") = Some(task.abort_handle());
        keyring
    }

    /// The keys to sign with at `now`; why there are none when they are missing or expired.
    pub fn current(&self, now: SystemTime) -> Result<Arc<Keys>, String> {
        let trouble = || {
            (self
                .inner
                .trouble
                .lock()
                .expect("lock not poisoned")
                .clone())
            .map(|why| format!(" ({why})"))
            .unwrap_or_default()
        };
        match self.inner.held.load_full() {
            Some(keys) if keys.usable_at(now) => Ok(keys),
            Some(keys) => Err(format!(
                "the S3 credentials for {} from {} expired at {} and could not be refreshed{}",
                self.inner.store,
                keys.provider,
                humantime::format_rfc3339_seconds(keys.expires.unwrap_or(now)),
                trouble()
            )),
            None => Err(format!(
                "no S3 credentials for {} from the AWS default chain yet{}",
                self.inner.store,
                trouble()
            )),
        }
    }

    /// True when the keys expire (temporary credentials, or any from the default chain that
    /// say when they end).
    pub fn expires(&self) -> bool {
        self.inner
            .held
            .load()
            .as_ref()
            .is_some_and(|keys| keys.temporary || keys.expires.is_some())
    }

    /// Where the keys come from, for `check-config` and the start-up log (never the keys);
    /// why there are none, when there are none.
    pub fn describe(&self) -> Result<String, String> {
        let keys = self.current(SystemTime::now())?;
        let mut text = match self.inner.chain {
            Some(_) => format!("the AWS default chain ({})", keys.provider),
            None => keys.provider.to_owned(),
        };
        if keys.temporary {
            text.push_str(", temporary");
        }
        if let Some(expires) = keys.expires {
            let at = humantime::format_rfc3339_seconds(expires);
            text.push_str(&format!(", expiring at {at}"));
        }
        Ok(text)
    }
}

/// The background refresh's state between fetches.
#[derive(Default)]
struct Refresh {
    /// Fetches failed in a row.
    failures: u32,
    /// The expiry of the current keys was reported while refreshes failed.
    expiry_reported: bool,
}

impl Refresh {
    /// Fetches new keys every time the current ones come near their expiry; stops when the
    /// keyring is dropped.
    async fn run(
        mut self,
        keyring: Weak<Inner>,
        provider: DefaultCredentialsChain,
        wait: Duration,
    ) {
        let mut wait = wait;
        loop {
            tokio::time::sleep(wait).await;
            let Some(inner) = keyring.upgrade() else {
                return;
            };
            wait = self.fetch(&inner, &provider).await;
        }
    }

    /// One fetch; how long to wait before the next.
    async fn fetch(&mut self, inner: &Inner, provider: &DefaultCredentialsChain) -> Duration {
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, provider.provide_credentials())
            .await
            .map_err(|_| format!("no answer within {}s", FETCH_TIMEOUT.as_secs()))
            .and_then(|result| result.map_err(|e| error_text(&e)));
        let now = SystemTime::now();
        // The instance-metadata provider answers with the last keys it had when the service
        // cannot be reached: keys already expired are a failed refresh.
        let fetched = fetched.and_then(|credentials| match credentials.expiry() {
            Some(expires) if expires <= now => Err(format!(
                "the AWS default chain has only keys that expired at {} (is the credentials \
                 service, such as the instance metadata service, reachable?)",
                humantime::format_rfc3339_seconds(expires)
            )),
            _ => Ok(credentials),
        });
        let store = &inner.store;
        match fetched {
            Ok(credentials) => {
                let provider = provider_name(&credentials);
                let keys = Keys::from_sdk(credentials, provider);
                let old = inner.held.load_full();
                let changed = old.as_ref().is_none_or(|old| {
                    old.access_key_id() != keys.access_key_id() || old.expires != keys.expires
                });
                let expires = keys.expires;
                if changed {
                    if old.as_ref().is_none_or(|old| old.provider != keys.provider) {
                        tracing::info!(
                            store = %store,
                            source = keys.provider,
                            expires = ?expires.map(humantime::format_rfc3339_seconds),
                            "S3 credentials from the AWS default chain"
                        );
                    }
                    tracing::debug!(store = %store, "S3 credentials refreshed");
                    inner.held.store(Some(Arc::new(keys)));
                }
                if self.failures > 0 {
                    tracing::info!(store = %store, "S3 credentials refreshed again");
                }
                *inner.trouble.lock().expect("lock not poisoned") = None;
                self.failures = 0;
                self.expiry_reported = false;
                next_refresh(now, expires)
            }
            Err(why) => {
                self.failures += 1;
                let held = inner.held.load_full();
                let usable = held.as_ref().filter(|k| k.usable_at(now));
                if self.failures == 1 {
                    match usable.and_then(|k| k.expires) {
                        Some(expires) => tracing::warn!(
                            store = %store,
                            error = %why,
                            "cannot refresh S3 credentials; the current ones stay in use until {}",
                            humantime::format_rfc3339_seconds(expires - EXPIRY_MARGIN)
                        ),
                        None if usable.is_some() => {
                            tracing::warn!(store = %store, error = %why, "cannot refresh S3 credentials")
                        }
                        None => {}
                    }
                }
                *inner.trouble.lock().expect("lock not poisoned") = Some(why.clone());
                if usable.is_none() && !self.expiry_reported {
                    self.expiry_reported = true;
                    tracing::error!(
                        store = %store,
                        error = %why,
                        "no usable S3 credentials: S3 requests answer 503 and /readyz is not \
                         ready until the AWS default chain gives new ones"
                    );
                }
                retry_after(self.failures, usable.and_then(|k| k.expires), now)
            }
        }
    }
}

/// When to fetch again after a success: five minutes before long-lived keys expire, half-way
/// to the expiry of short-lived ones, every 15 minutes for keys without an expiry (a profile
/// file may change).
fn next_refresh(now: SystemTime, expires: Option<SystemTime>) -> Duration {
    const EARLY: Duration = Duration::from_secs(5 * 60);
    let Some(expires) = expires else {
        return Duration::from_secs(15 * 60);
    };
    let left = expires.duration_since(now).unwrap_or_default();
    let wait = if left >= 2 * EARLY {
        left - EARLY
    } else {
        left / 2
    };
    wait.max(Duration::from_millis(500))
}

/// When to try again after `failures` failed fetches: 1 s, 2 s, 4 s… up to 10 s, and never
/// later than half-way to the expiry of keys still in use.
fn retry_after(failures: u32, expires: Option<SystemTime>, now: SystemTime) -> Duration {
    let backoff =
        Duration::from_secs(1 << failures.saturating_sub(1).min(4)).min(Duration::from_secs(10));
    match expires.and_then(|e| e.duration_since(now).ok()) {
        Some(left) => backoff.min(left / 2).max(Duration::from_millis(500)),
        None => backoff,
    }
}

/// What the chain's providers call their credentials, from the features they mark them with.
fn provider_name(credentials: &Credentials) -> &'static str {
    use AwsCredentialFeature as F;
    let features = credentials
        .get_property::<Vec<AwsCredentialFeature>>()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has = |wanted: &[AwsCredentialFeature]| features.iter().any(|f| wanted.contains(f));
    if has(&[F::CredentialsImds]) {
        "instance metadata (IMDSv2)"
    } else if has(&[F::CredentialsHttp]) {
        "container credentials"
    } else if has(&[
        F::CredentialsEnvVarsStsWebIdToken,
        F::CredentialsProfileStsWebIdToken,
        F::CredentialsStsAssumeRoleWebId,
    ]) {
        "web identity"
    } else if has(&[F::CredentialsSso, F::CredentialsProfileSso]) {
        "SSO"
    } else if has(&[F::CredentialsProcess, F::CredentialsProfileProcess]) {
        "credential_process"
    } else if has(&[F::CredentialsStsAssumeRole]) {
        "an assumed role"
    } else if has(&[F::CredentialsProfile, F::CredentialsProfileSourceProfile]) {
        "a profile"
    } else if has(&[F::CredentialsEnvVars]) {
        "environment"
    } else {
        "the AWS default chain"
    }
}

/// An error and its causes on one line.
pub(crate) fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_put_aside_a_second_before_they_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let keys = |expires: Option<SystemTime>| {
            let credentials = Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                Some("token".into()),
                expires,
                "test",
            );
            Keys::from_sdk(credentials, "test")
        };
        assert!(keys(Some(now + Duration::from_millis(1001))).usable_at(now));
        assert!(!keys(Some(now + Duration::from_secs(1))).usable_at(now));
        assert!(!keys(Some(now + Duration::from_millis(400))).usable_at(now));
        assert!(!keys(Some(now)).usable_at(now));
        assert!(keys(None).usable_at(now), "keys without an expiry");
    }

    #[test]
    fn refreshes_come_before_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        // An hour-long session is refreshed five minutes before it ends.
        assert_eq!(
            next_refresh(now, Some(now + hour)),
            hour - Duration::from_secs(300)
        );
        // Short ones half-way, never in a busy loop.
        assert_eq!(
            next_refresh(now, Some(now + Duration::from_secs(6))),
            Duration::from_secs(3)
        );
        assert_eq!(
            next_refresh(now, Some(now - Duration::from_secs(6))),
            Duration::from_millis(500)
        );
        assert_eq!(next_refresh(now, None), Duration::from_secs(900));
        // Failures back off, but not past half the life left of the keys in use.
        assert_eq!(retry_after(1, None, now), Duration::from_secs(1));
        assert_eq!(retry_after(4, None, now), Duration::from_secs(8));
        assert_eq!(retry_after(40, None, now), Duration::from_secs(10));
        assert_eq!(
            retry_after(40, Some(now + Duration::from_secs(12)), now),
            Duration::from_secs(6)
        );
    }
}

//! Secrets and credentials the config names: read here, once, at load (and reload) time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use super::{Config, DEFAULT_STORE, Problem, S3Config};

/// A snapshot of the process environment (tests pass their own).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: HashMap<String, String>,
}

impl Environment {
    /// The current process environment.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// An environment holding only `vars`.
    pub fn from_pairs<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// A variable's value, when set and not empty.
    pub fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// AWS credentials for signing S3 requests.
#[derive(Clone, Default)]
pub struct AwsCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where a store's S3 credentials come from.
#[derive(Clone, Debug)]
pub enum AwsSource {
    /// Keys read from one configured source.
    Keys {
        /// The keys.
        credentials: AwsCredentials,
        /// Where they were read from, for logs (never the keys).
        origin: &'static str,
    },
    /// None configured: the AWS default chain (profile files, web identity, container
    /// credentials, IMDSv2, SSO, `credential_process`), refreshed while the daemon runs.
    DefaultChain {
        /// The profile to read instead of `AWS_PROFILE`'s.
        profile: Option<String>,
    },
}

impl AwsSource {
    /// The keys, when they were read from the config's sources.
    pub fn keys(&self) -> Option<&AwsCredentials> {
        match self {
            AwsSource::Keys { credentials, .. } => Some(credentials),
            AwsSource::DefaultChain { .. } => None,
        }
    }
}

/// Every secret the configuration names, loaded.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Each store's S3 credentials, by store id (`s3`, `stores.NAME`).
    pub aws: BTreeMap<String, AwsSource>,
    /// HMAC secret for HS256/384/512 tokens.
    pub hmac_secret: Option<Vec<u8>>,
    /// PEM public keys, with the file they came from.
    pub public_keys: Vec<(PathBuf, Vec<u8>)>,
    /// URL-signing secrets; the first signs.
    pub signing_secrets: Vec<Vec<u8>>,
    /// TLS certificate chain and key, PEM.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// The admin listener's bearer token.
    pub admin_token: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("aws", &self.aws)
            .field("public_keys", &self.public_keys.len())
            .field("signing_secrets", &self.signing_secrets.len())
            .finish_non_exhaustive()
    }
}

/// HMAC secrets shorter than this are refused (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_SECRET: usize = 32;

/// Which secrets a command reads: the daemon all of them, `s3warden token` only the token keys,
/// `s3warden sign` only what its kind of URL is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// S3 credentials.
    pub s3: bool,
    /// The HMAC secret and public keys tokens are verified (or minted) with.
    pub tokens: bool,
    /// The URL-signing secrets.
    pub url_keys: bool,
    /// What the listeners use: the TLS certificate and the admin token.
    pub listeners: bool,
}

impl Needs {
    /// Everything: what the daemon runs with.
    pub const ALL: Needs = Needs {
        s3: true,
        tokens: true,
        url_keys: true,
        listeners: true,
    };
    /// Nothing at all.
    pub const NOTHING: Needs = Needs {
        s3: false,
        tokens: false,
        url_keys: false,
        listeners: false,
    };
}

/// Admin tokens shorter than this are refused.
pub const MIN_ADMIN_TOKEN: usize = 16;

impl Secrets {
    /// Reads what `needs` asks for of what `config` names; every file that cannot be used is a
    /// problem.
    pub(super) fn load(
        config: &Config,
        env: &Environment,
        needs: Needs,
    ) -> Result<Secrets, Vec<Problem>> {
        let mut problems = Vec::new();
        let aws = if needs.s3 {
            (config.stores())
                .map(|(id, store)| {
                    let source = Self::aws(&id, store, env, &mut problems);
                    (id, source)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let hmac_secret = if needs.tokens {
            Self::hmac(config, env, &mut problems)
        } else {
            None
        };
        let public_keys = if needs.tokens {
            Self::public_keys(config, &mut problems)
        } else {
            Vec::new()
        };
        let signing_secrets = if needs.url_keys {
            Self::signing(config, &mut problems)
        } else {
            Vec::new()
        };
        let (tls, admin_token) = if needs.listeners {
            (
                Self::tls(config, &mut problems),
                Self::admin_token(config, &mut problems),
            )
        } else {
            (None, None)
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Secrets {
            aws,
            hmac_secret,
            public_keys,
            signing_secrets,
            tls,
            admin_token,
        })
    }

    /// A store's S3 credentials: key id, secret and session token from one source, else the
    /// AWS default chain.
    fn aws(
        id: &str,
        store: &S3Config,
        env: &Environment,
        problems: &mut Vec<Problem>,
    ) -> AwsSource {
        // One source gives key id, secret and session token together: key files win, then (for
        // [s3]) the AWS_* environment, then systemd credentials. A token is never taken from
        // another source than its key pair.
        let key = |name: &str| format!("{id}.{name}");
        let problems_before = problems.len();
        let mut read = |key: &str, path: &Path| -> Option<String> {
            read_file(key, path)
                .map_err(|p| problems.push(p))
                .ok()
                .map(|b| trimmed(&b))
        };
        let default_store = id == DEFAULT_STORE;
        let (found, origin) = if store.access_key_id_file.is_some()
            || store.secret_access_key_file.is_some()
            || store.session_token_file.is_some()
        {
            let id = (store.access_key_id_file.as_ref())
                .and_then(|p| read(&key("access_key_id_file"), p));
            let secret = (store.secret_access_key_file.as_ref())
                .and_then(|p| read(&key("secret_access_key_file"), p));
            let token = (store.session_token_file.as_ref())
                .and_then(|p| read(&key("session_token_file"), p));
            if store.access_key_id_file.is_none() || store.secret_access_key_file.is_none() {
                problems.push(problem(
                    &key("access_key_id_file"),
                    format!(
                        "key files go together: set {0} and {1} (and {2} for temporary keys)",
                        key("access_key_id_file"),
                        key("secret_access_key_file"),
                        key("session_token_file")
                    ),
                ));
                return AwsSource::DefaultChain { profile: None };
            }
            ((id, secret, token), "key files")
        } else if let Some(id) = env.get("AWS_ACCESS_KEY_ID").filter(|_| default_store) {
            let secret = env.get("AWS_SECRET_ACCESS_KEY");
            (
                (Some(id), secret, env.get("AWS_SESSION_TOKEN")),
                "environment",
            )
        } else if let Some(dir) = env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from)
            && default_store
            && dir.join("aws_access_key_id").exists()
        {
            let mut optional = |name: &str| {
                let path = dir.join(name);
                path.exists().then(|| read(name, &path)).flatten()
            };
            let found = (
                optional("aws_access_key_id"),
                optional("aws_secret_access_key"),
                optional("aws_session_token"),
            );
            (found, "systemd credentials")
        } else {
            return AwsSource::DefaultChain {
                profile: store.profile.clone(),
            };
        };
        match found {
            (Some(id), Some(secret), session_token) if !id.is_empty() && !secret.is_empty() => {
                AwsSource::Keys {
                    credentials: AwsCredentials {
                        access_key_id: id,
                        secret_access_key: secret,
                        session_token: session_token.filter(|t| !t.is_empty()),
                    },
                    origin,
                }
            }
            // A file that could not be read is reported already.
            _ if problems.len() > problems_before => AwsSource::DefaultChain { profile: None },
            _ => {
                // Named where the operator has to look: not a config key when none was set.
                let missing = match origin {
                    "environment" => "AWS_SECRET_ACCESS_KEY".to_owned(),
                    "systemd credentials" => "$CREDENTIALS_DIRECTORY/aws_secret_access_key".into(),
                    _ => key("secret_access_key_file"),
                };
                problems.push(problem(
                    &missing,
                    format!("incomplete S3 credentials in the {origin}: a key id needs its secret"),
                ));
                AwsSource::DefaultChain { profile: None }
            }
        }
    }

    /// The HMAC secret for HS256/384/512 tokens.
    fn hmac(config: &Config, env: &Environment, problems: &mut Vec<Problem>) -> Option<Vec<u8>> {
        let auth = &config.auth;
        match (&auth.hmac_secret_file, &auth.hmac_secret_env) {
            (Some(path), _) => match read_file("auth.hmac_secret_file", path) {
                Ok(b) => Some(check_hmac(
                    trimmed(&b).into_bytes(),
                    "auth.hmac_secret_file",
                    problems,
                )),
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
            (None, Some(var)) => match env.get(var) {
                Some(value) => Some(check_hmac(
                    value.into_bytes(),
                    "auth.hmac_secret_env",
                    problems,
                )),
                None => {
                    problems.push(problem(
                        "auth.hmac_secret_env",
                        format!("environment variable {var} is not set"),
                    ));
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// PEM public keys, with the file each came from.
    fn public_keys(config: &Config, problems: &mut Vec<Problem>) -> Vec<(PathBuf, Vec<u8>)> {
        (config.auth.public_key_files.iter().enumerate())
            .filter_map(|(i, path)| {
                let key = format!("auth.public_key_files[{i}]");
                read_file(&key, path)
                    .map_err(|p| problems.push(p))
                    .ok()
                    .map(|pem| (path.clone(), pem))
            })
            .collect()
    }

    /// URL-signing secrets; the first signs.
    fn signing(config: &Config, problems: &mut Vec<Problem>) -> Vec<Vec<u8>> {
        (config.signing.secret_files.iter().enumerate())
            .filter_map(|(i, path)| {
                let key = format!("signing.secret_files[{i}]");
                let secret = read_file(&key, path).map_err(|p| problems.push(p)).ok()?;
                let secret = trimmed(&secret).into_bytes();
                if secret.len() < MIN_HMAC_SECRET {
                    problems.push(problem(
                        &key,
                        format!(
                            "secret is {} bytes; at least {MIN_HMAC_SECRET} are needed",
                            secret.len()
                        ),
                    ));
                    return None;
                }
                Some(secret)
            })
            .collect()
    }

    /// The TLS certificate chain and key.
    fn tls(config: &Config, problems: &mut Vec<Problem>) -> Option<(Vec<u8>, Vec<u8>)> {
        let tls = config.server.tls.as_ref()?;
        let cert = read_file("server.tls.cert_file", &tls.cert_file);
        let key = read_file("server.tls.key_file", &tls.key_file);
        let (cert, key) = (
            cert.map_err(|p| problems.push(p)),
            key.map_err(|p| problems.push(p)),
        );
        Some((cert.ok()?, key.ok()?))
    }

    /// The admin listener's bearer token.
    fn admin_token(config: &Config, problems: &mut Vec<Problem>) -> Option<String> {
        let path = config.admin.token_file.as_ref()?;
        let token = trimmed(
            &read_file("admin.token_file", path)
                .map_err(|p| problems.push(p))
                .ok()?,
        );
        if token.len() < MIN_ADMIN_TOKEN || token.contains(char::is_whitespace) {
            problems.push(problem(
                "admin.token_file",
                format!("the token must be at least {MIN_ADMIN_TOKEN} characters, without spaces"),
            ));
            return None;
        }
        Some(token)
    }
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, Problem> {
    std::fs::read(path).map_err(|e| problem(key, format!("cannot read {}: {e}", path.display())))
}

fn check_hmac(secret: Vec<u8>, key: &str, problems: &mut Vec<Problem>) -> Vec<u8> {
    if secret.len() < MIN_HMAC_SECRET {
        problems.push(problem(
            key,
            format!(
                "HMAC secret is {} bytes; at least {MIN_HMAC_SECRET} are needed",
                secret.len()
            ),
        ));
    }
    secret
}

/// File contents as text without the trailing newline editors and `echo` add.
fn trimmed(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\r', '\n'])
        .to_owned()
}

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem {
        key: key.to_owned(),
        message: message.into(),
        line: None,
    }
}

//! Temporary AWS credentials on loopback: a key issuer that rotates keys on a schedule, the
//! endpoints that hand them out as EC2's instance metadata service (IMDSv2), ECS's container
//! credentials endpoint and a `credential_process` file do, and an S3 auth that accepts each
//! key until it expires and records when it was first used.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Result, s3_error};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// One temporary key.
#[derive(Clone, Debug)]
pub struct IssuedKey {
    pub id: String,
    pub secret: String,
    pub token: String,
    pub expires: SystemTime,
}

/// Keys issued every `period`, each valid for `lifetime`; the S3 side of them too.
#[derive(Clone)]
pub struct Issuer {
    started: SystemTime,
    period: Duration,
    lifetime: Duration,
    issued: Arc<Mutex<Vec<IssuedKey>>>,
    first_use: Arc<Mutex<HashMap<String, SystemTime>>>,
}

impl Issuer {
    pub fn new(period: Duration, lifetime: Duration) -> Issuer {
        Issuer {
            started: SystemTime::now(),
            period,
            lifetime,
            issued: Arc::default(),
            first_use: Arc::default(),
        }
    }

    /// The key of the current period, issued now if it is new.
    pub fn current(&self) -> IssuedKey {
        let elapsed = self.started.elapsed().unwrap_or_default();
        let n = (elapsed.as_millis() / self.period.as_millis()) as u32;
        let mut issued = self.issued.lock().unwrap();
        while issued.len() <= n as usize {
            let i = issued.len() as u32;
            issued.push(IssuedKey {
                id: format!("ASIAROTATING{i:04}"),
                secret: format!("rotating-secret-{i}"),
                token: format!("session-token-{i}"),
                // Whole seconds, as the documents that carry it say it.
                expires: whole_seconds(self.started + self.period * i + self.lifetime),
            });
        }
        issued[n as usize].clone()
    }

    /// Every key issued so far, oldest first.
    pub fn issued(&self) -> Vec<IssuedKey> {
        self.issued.lock().unwrap().clone()
    }

    /// When S3 first saw each key.
    pub fn first_use(&self, id: &str) -> Option<SystemTime> {
        self.first_use.lock().unwrap().get(id).copied()
    }

    /// The keys S3 saw, oldest first.
    pub fn used(&self) -> Vec<IssuedKey> {
        let first_use = self.first_use.lock().unwrap();
        self.issued()
            .into_iter()
            .filter(|k| first_use.contains_key(&k.id))
            .collect()
    }

    /// `{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}` plus `extra` fields.
    fn document(&self, extra: serde_json::Value) -> String {
        let key = self.current();
        let mut doc = json!({
            "AccessKeyId": key.id,
            "SecretAccessKey": key.secret,
            "Token": key.token,
            "Expiration": humantime::format_rfc3339_seconds(key.expires).to_string(),
        });
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc.to_string()
    }

    /// Keeps `path` holding the current key as `credential_process` output, until dropped.
    pub fn write_process_output(&self, path: PathBuf) -> tokio::task::JoinHandle<()> {
        let issuer = self.clone();
        let write = move || {
            let token = issuer.current().token;
            let doc = issuer.document(json!({ "Version": 1, "SessionToken": token }));
            let temp = path.with_extension("tmp");
            std::fs::write(&temp, doc).unwrap();
            std::fs::rename(&temp, &path).unwrap();
        };
        write();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                write();
            }
        })
    }
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

#[async_trait::async_trait]
impl S3Auth for Issuer {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let key = (self.issued().into_iter())
            .find(|k| k.id == access_key)
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))?;
        let now = SystemTime::now();
        if now >= key.expires {
            return Err(s3_error!(ExpiredToken));
        }
        self.first_use
            .lock()
            .unwrap()
            .entry(key.id.clone())
            .or_insert(now);
        Ok(SecretKey::from(key.secret))
    }
}

/// IMDSv2 (`/latest/...`) and container credentials (`/container`) for an issuer's keys; can
/// go away and come back on the same port.
pub struct CredentialsServer {
    pub addr: SocketAddr,
    issuer: Issuer,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub const ROLE: &str = "s3warden-role";

impl CredentialsServer {
    pub async fn start(issuer: Issuer) -> CredentialsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = CredentialsServer {
            addr,
            issuer,
            task: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops answering: connections are refused.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Answers again, on the same port.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let issuer = self.issuer.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let issuer = issuer.clone();
                connections.spawn(async move {
                    let Some(head) = super::jwks::read_head(&mut socket).await else {
                        return;
                    };
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let role_path = format!("/latest/meta-data/iam/security-credentials/{ROLE}");
                    let (status, extra, body) = match (method, path) {
                        ("PUT", "/latest/api/token") => (
                            "200 OK",
                            "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                            "imds-session-token".to_owned(),
                        ),
                        ("GET", "/latest/meta-data/iam/security-credentials/") => {
                            ("200 OK", "", ROLE.to_owned())
                        }
                        ("GET", p) if p == role_path => (
                            "200 OK",
                            "",
                            issuer.document(json!({
                                "Code": "Success",
                                "Type": "AWS-HMAC",
                                "LastUpdated": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                            })),
                        ),
                        ("GET", "/container") => ("200 OK", "", issuer.document(json!({}))),
                        _ => ("404 Not Found", "", String::new()),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }
}

impl Drop for CredentialsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

//! A real JWKS endpoint on loopback whose document can be swapped or broken, counting fetches.
//! Also serves as the "attacker's key server" that `jku`/`x5u` headers point at.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads a request head (up to its blank line); `None` when the peer goes first.
pub async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 8192];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

pub struct JwksServer {
    pub addr: SocketAddr,
    document: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `document` (None: answers 500).
    pub async fn start(document: Option<String>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(AtomicU64::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (doc, count) = (doc.clone(), count.clone());
                tokio::spawn(async move {
                    if read_head(&mut socket).await.is_none() {
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = doc.lock().unwrap().clone();
                    let response = match body {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        JwksServer {
            addr,
            document,
            fetches,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn set(&self, document: Option<String>) {
        *self.document.lock().unwrap() = document;
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

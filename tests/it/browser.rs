//! The whole story in a real browser (Debian's headless Chromium, driven over WebDriver by
//! chromedriver): an application page signs 20 employee photos in one call and shows them; the
//! browser caches them across reloads and profiles; S3 pre-signed URLs, cookies, refusals and a
//! form upload. Skipped only where `chromium`/`chromedriver` are not installed (CI installs them).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::common::process::{Process, tools_installed};
use crate::common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The application page: one `POST /_sign` for 20 photos, then 20 `<img>`s.
const APP_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Employees</title>
<style>
  body { font-family: sans-serif; margin: 16px; background: #fafafa; }
  h1 { font-size: 20px; }
  #grid img { width: 96px; height: 96px; margin: 4px; border-radius: 8px; }
</style></head>
<body>
<h1>Employees (signed by s3warden, kind: <span id="kind"></span>)</h1>
<div id="grid"></div>
<script>
const API = "@API@";
const TOKEN = "@TOKEN@";
const KIND = new URLSearchParams(location.search).get("kind") || "proxy";
document.getElementById("kind").textContent = KIND;
const keys = [];
for (let i = 0; i < 20; i++) keys.push("photos/p" + String(i).padStart(2, "0") + ".png");
keys.push("private/salaries.png");
window.done = false;
fetch(API + "/_sign", {
  method: "POST",
  headers: { "Authorization": "Bearer " + TOKEN, "Content-Type": "application/json" },
  body: JSON.stringify({ bucket: "files", keys: keys, kind: KIND }),
}).then(r => r.json()).then(data => {
  window.signed = data;
  const items = data.items.filter(item => item.url);
  let pending = items.length;
  for (const item of items) {
    const img = document.createElement("img");
    img.alt = item.key;
    img.onload = img.onerror = () => { if (--pending === 0) window.done = true; };
    img.src = item.url;
    document.getElementById("grid").appendChild(img);
  }
}).catch(e => { window.error = String(e); window.done = true; });
</script>
</body></html>"#;

/// An HTML form that uploads a file under the user's folder (authenticated by cookie).
const UPLOAD_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Upload</title></head><body>
<form id="form" method="post" enctype="multipart/form-data" action="@API@/files/users/alice/">
  <input id="file" type="file" name="file">
  <button id="send" type="submit">Upload</button>
</form>
</body></html>"#;

/// Shows one object by a cookie-authenticated `<img>`.
const SHOW_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Show</title></head><body>
<img id="shown" src="@API@/files/@KEY@">
</body></html>"#;

/// The page s3warden itself serves (from S3, under a rule that allows inline HTML): same-origin
/// `<img src="/files/...">` authenticated by the session cookie.
const COOKIE_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Cookie</title></head><body>
<img id="photo" src="/files/photos/p03.png">
</body></html>"#;

/// The test's own web server: the application pages, on a loopback origin of their own.
async fn serve_pages(api: String, tokens: Vec<(String, String)>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (api, tokens) = (api.clone(), tokens.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let query: std::collections::HashMap<String, String> = request
                        .uri()
                        .query()
                        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                        .unwrap_or_default();
                    let user = query.get("user").cloned().unwrap_or_else(|| "alice".into());
                    let token = tokens
                        .iter()
                        .find(|(u, _)| *u == user)
                        .map(|(_, t)| t.clone())
                        .unwrap_or_default();
                    let page = match request.uri().path() {
                        "/app" => APP_PAGE.replace("@TOKEN@", &token),
                        "/upload" => UPLOAD_PAGE.to_owned(),
                        "/show" => SHOW_PAGE.replace("@KEY@", query.get("key").map_or("", |k| k)),
                        _ => "not found".to_owned(),
                    }
                    .replace("@API@", &api);
                    let mut response = http::Response::new(Full::new(Bytes::from(page)));
                    response
                        .headers_mut()
                        .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    _process: Process,
    url: String,
    profiles: Vec<tempfile::TempDir>,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut command = Command::new(CHROMEDRIVER);
        command.arg(format!("--port={port}"));
        let process = Process::start(&mut command, &format!("{url}/status"), "chromedriver").await;
        Driver {
            _process: process,
            url,
            profiles: Vec::new(),
        }
    }

    /// A browser with a fresh profile of its own.
    async fn browser(&mut self) -> Client {
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1000,700".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        self.profiles.push(profile);
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        ClientBuilder::rustls()
            .expect("TLS setup for the WebDriver client")
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

async fn wait_for(browser: &Client, script: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = browser.execute(script, vec![]).await.unwrap();
        if value.as_bool() != Some(false) && !value.is_null() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for `{script}`"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn image_widths(browser: &Client) -> Vec<u64> {
    let v = browser
        .execute(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1)",
            vec![],
        )
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_u64().unwrap_or(0))
        .collect()
}

/// Object requests s3warden answered with 200 so far.
async fn served_200(h: &Harness) -> u64 {
    h.metric("s3warden_requests_total{route=\"object\",status=\"200\"}")
        .await
        .unwrap_or(0)
}

fn photos() -> Vec<Vec<u8>> {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/demo/assets");
    ["alice", "bob", "carol", "dave", "erin"]
        .iter()
        .map(|n| std::fs::read(assets.join(format!("{n}.png"))).unwrap())
        .collect()
}

/// Logs the browser in the way an application would: a `session` cookie for s3warden's host.
async fn set_session_cookie(browser: &Client, api: &str, token: &str) {
    browser.goto(&format!("{api}/_health")).await.unwrap();
    browser
        .execute(
            "document.cookie = 's3warden_token=' + arguments[0] + '; path=/'",
            vec![json!(token)],
        )
        .await
        .unwrap();
}

fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_browser_loads_caches_and_uploads_private_images() {
    if !tools_installed(&[CHROMIUM, CHROMEDRIVER]) {
        return;
    }
    // The page server first: its origin goes into s3warden's CORS list.
    let api_port = free_port();
    let api = format!("http://127.0.0.1:{api_port}");
    let alice = token("alice");
    let bob = token("bob");
    let pages = serve_pages(
        api.clone(),
        vec![("alice".into(), alice.clone()), ("bob".into(), bob.clone())],
    )
    .await;
    let page_origin = format!("http://{pages}");
    let rules = format!(
        "{DEFAULT_RULES}\n[[rules]]\nbucket = \"files\"\nprefix = \"app/\"\nallow = \"public\"\ninline_active_content = true\n"
    );
    let h = Setup::default()
        .rules(&rules)
        .set("cors.allowed_origins", &format!("[\"{page_origin}\"]"))
        .start_on(api_port)
        .await;
    let images = photos();
    for i in 0..20 {
        h.put(&format!("photos/p{i:02}.png"), &images[i % images.len()]);
    }
    h.put("private/salaries.png", &images[0]);
    h.put("app/cookie.html", COOKIE_PAGE.as_bytes());

    let mut driver = Driver::start().await;
    let browser = driver.browser().await;

    // 1–2. One signing call, 20 images, each fetched from S3 once.
    browser.goto(&format!("{page_origin}/app")).await.unwrap();
    wait_for(&browser, "return window.done").await;
    assert_eq!(
        browser
            .execute("return window.error || null", vec![])
            .await
            .unwrap(),
        Value::Null
    );
    let widths = image_widths(&browser).await;
    assert_eq!(widths.len(), 20);
    assert!(
        widths.iter().all(|w| *w > 0),
        "every image decoded: {widths:?}"
    );
    for i in 0..20 {
        assert_eq!(
            h.s3_log()
                .requests("GET", BUCKET, &format!("photos/p{i:02}.png")),
            1
        );
    }
    // 7. The admin-only image was refused by the rules, in the same call.
    let signed = browser
        .execute("return window.signed", vec![])
        .await
        .unwrap();
    let private = signed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "private/salaries.png")
        .unwrap();
    assert_eq!(private["error"], "forbidden");
    let screenshot = browser.screenshot().await.unwrap();
    std::fs::write(output_dir().join("employees.png"), &screenshot).unwrap();

    // 3. Reload: identical URLs, so the browser asks s3warden for none of the images.
    let before = served_200(&h).await;
    let urls_before = signed["items"].clone();
    browser.refresh().await.unwrap();
    wait_for(&browser, "return window.done").await;
    assert!(image_widths(&browser).await.iter().all(|w| *w > 0));
    let again = browser
        .execute("return window.signed", vec![])
        .await
        .unwrap();
    assert_eq!(
        again["items"], urls_before,
        "the same URLs within the window"
    );
    assert_eq!(served_200(&h).await, before, "no image was fetched again");

    // 4. Another user, another browser profile: s3warden serves them from its cache.
    let other = driver.browser().await;
    other
        .goto(&format!("{page_origin}/app?user=bob"))
        .await
        .unwrap();
    wait_for(&other, "return window.done").await;
    assert!(image_widths(&other).await.iter().all(|w| *w > 0));
    assert_eq!(
        served_200(&h).await,
        before + 20,
        "bob's browser got all 20 from s3warden"
    );
    for i in 0..20 {
        assert_eq!(
            h.s3_log()
                .requests("GET", BUCKET, &format!("photos/p{i:02}.png")),
            1,
            "no new S3 fetch"
        );
    }

    // 5. kind: s3 — straight from S3, with stable pre-signed URLs.
    other
        .goto(&format!("{page_origin}/app?user=bob&kind=s3"))
        .await
        .unwrap();
    wait_for(&other, "return window.done").await;
    assert!(image_widths(&other).await.iter().all(|w| *w > 0));
    let direct = other
        .execute(
            "return window.signed.items.filter(i => i.url).map(i => i.url)",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        direct
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u.as_str().unwrap().starts_with(&h.s3.endpoint()))
    );
    assert_eq!(
        h.s3_log().requests("GET", BUCKET, "photos/p00.png"),
        2,
        "one direct GET from the browser"
    );
    assert_eq!(
        served_200(&h).await,
        before + 20,
        "s3warden was not involved"
    );
    other.refresh().await.unwrap();
    wait_for(&other, "return window.done").await;
    let direct_again = other
        .execute(
            "return window.signed.items.filter(i => i.url).map(i => i.url)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(direct, direct_again, "stable pre-signed URLs");

    // 7. A proxy-signed URL with one altered character fails.
    let url = urls_before[0]["url"].as_str().unwrap().to_owned();
    let sig_at = url.find("sig=").unwrap() + 4;
    let mut altered = url.clone();
    let c = if &url[sig_at..sig_at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    altered.replace_range(sig_at..sig_at + 1, c);
    let status = browser
        .execute(
            "return fetch(arguments[0]).then(r => r.status)",
            vec![json!(altered)],
        )
        .await
        .unwrap();
    assert_eq!(status, 403);

    // 6. A cookie-authenticated <img src="/files/..."> on s3warden's own origin.
    set_session_cookie(&browser, &api, &alice).await;
    browser
        .goto(&format!("{api}/files/app/cookie.html"))
        .await
        .unwrap();
    let width = wait_for(
        &browser,
        "const i = document.getElementById('photo'); return i.complete && i.naturalWidth",
    )
    .await;
    assert!(width.as_u64().unwrap() > 0);
    browser.delete_all_cookies().await.unwrap();
    let status = browser
        .execute(
            "return fetch('/files/photos/p03.png', {cache: 'no-store'}).then(r => r.status)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, 401, "without the cookie the browser gets a 401");

    // 8. An HTML form uploads a private object, which the page then shows.
    set_session_cookie(&browser, &api, &alice).await;
    let upload = output_dir().join("upload.png");
    std::fs::write(&upload, &images[2]).unwrap();
    browser
        .goto(&format!("{page_origin}/upload"))
        .await
        .unwrap();
    let input = browser.find(Locator::Id("file")).await.unwrap();
    input.send_keys(upload.to_str().unwrap()).await.unwrap();
    browser
        .find(Locator::Id("send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = wait_for(&browser, "return document.body && document.body.innerText.includes('\"key\"') && document.body.innerText").await;
    let answer: Value = serde_json::from_str(text.as_str().unwrap().trim()).unwrap();
    let key = answer["key"].as_str().unwrap().to_owned();
    assert!(
        key.starts_with("users/alice/") && key.ends_with(".png"),
        "{key}"
    );
    assert_eq!(answer["acl"], "private");
    assert_eq!(h.s3_log().acl(BUCKET, &key), None);
    browser
        .goto(&format!("{page_origin}/show?key={key}"))
        .await
        .unwrap();
    let width = wait_for(
        &browser,
        "const i = document.getElementById('shown'); return i.complete && i.naturalWidth",
    )
    .await;
    assert!(width.as_u64().unwrap() > 0, "the uploaded image shows");
    let shot = browser.screenshot().await.unwrap();
    std::fs::write(output_dir().join("uploaded.png"), shot).unwrap();

    other.close().await.unwrap();
    browser.close().await.unwrap();
}

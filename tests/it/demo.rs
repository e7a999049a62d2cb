//! `s3warden demo` as a user runs it: the printed token opens a private object, and Ctrl-C
//! stops everything cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use http::StatusCode;

use crate::common::stderr_of_failure;

#[tokio::test]
async fn the_demo_serves_private_objects_with_its_printed_token() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_s3warden"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut token = None;
    let mut url = None;
    let mut admin = None;
    loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("demo prints its instructions");
        if let Some(t) = line.trim().strip_prefix("TOKEN=") {
            token = Some(t.to_owned());
        }
        if let Some(u) = line.strip_prefix("s3warden:") {
            url = Some(u.trim().to_owned());
        }
        if let Some(u) = line.strip_prefix("admin (metrics, purge):") {
            admin = Some(u.trim().to_owned());
        }
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    let (token, url, admin) = (token.unwrap(), url.unwrap(), admin.unwrap());
    let http = crate::common::client();
    let photo = format!("{url}/employees/photos/alice.png");
    let r = http.get(&photo).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert!(r.bytes().await.unwrap().starts_with(b"\x89PNG"));
    assert_eq!(
        http.get(&photo).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let secret = format!("{url}/employees/private/salaries.csv");
    assert_eq!(
        http.get(&secret)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    let r = http
        .get(format!("{url}/employees/public/welcome.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http.get(format!("{admin}/metrics")).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("s3warden_requests_total"));

    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "Ctrl-C stops the demo cleanly: {status:?}"
    );
}

#[test]
fn a_busy_port_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_s3warden"))
        .args([
            "demo",
            "--listen",
            &addr.to_string(),
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stderr = stderr_of_failure(&out);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}: ")),
        "{stderr}"
    );
}

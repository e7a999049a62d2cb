//! A helper process (chromedriver, nginx) that is killed when the test is done with it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Process(Child);

/// True when every one of `paths` exists. When one is missing the test is skipped with a note,
/// unless `S3WARDEN_TEST_REQUIRE_TOOLS` is set (as CI does), where it fails instead.
pub fn tools_installed(paths: &[&str]) -> bool {
    let missing: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| !std::path::Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("S3WARDEN_TEST_REQUIRE_TOOLS").is_none(),
        "not installed: {missing:?}"
    );
    eprintln!("skipped: not installed: {missing:?}");
    false
}

impl Process {
    /// Starts `command` (output discarded) and waits until `ready_url` answers.
    pub async fn start(command: &mut Command, ready_url: &str, what: &str) -> Process {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let process = Process(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while super::client().get(ready_url).send().await.is_err() {
            assert!(Instant::now() < deadline, "{what} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }
}

impl Drop for Process {
    /// Asks the process to stop (SIGTERM), so it stops its own children too (nginx's workers
    /// outlive a killed master), and kills it when it has not within 3 s.
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        if let Some(pid) = Pid::from_raw(self.0.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

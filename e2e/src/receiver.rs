//! A webhook receiver process for the tests: `scripts/webhook_receiver.py`
//! run by a Python that has the `standardwebhooks` package (an independent
//! implementation of the signature), recording every delivery it verified.

use crate::wait_for;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A Python with `standardwebhooks`: `.venv`'s (scripts/install-test-tools.sh)
/// or the one on PATH. None (skip) without one; a failure under `CI=true`.
pub fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [root.join(".venv/bin/python"), PathBuf::from("python3")];
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import standardwebhooks"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py);
        }
    }
    let why =
        "no Python with the standardwebhooks package (scripts/install-test-tools.sh installs it)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// The receiver process; killed (by PID) on drop.
pub struct Receiver {
    child: Option<Child>,
    py: PathBuf,
    port: u16,
    secret: String,
    out: PathBuf,
}

impl Receiver {
    pub fn start(py: &Path, port: u16, secret: &str, out: &Path) -> Receiver {
        let mut r = Receiver {
            child: None,
            py: py.to_path_buf(),
            port,
            secret: secret.to_string(),
            out: out.to_path_buf(),
        };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/webhook_receiver.py");
        let child = Command::new(&self.py)
            .arg(script)
            .args(["--port", &self.port.to_string(), "--secret", &self.secret])
            .arg("--out")
            .arg(&self.out)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the receiver");
        self.child = Some(child);
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .map(|_| ())
        })
        .expect("receiver listening");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every line recorded so far.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

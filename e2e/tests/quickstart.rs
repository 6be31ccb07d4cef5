//! The README's first command, as written: `scripts/quickstart.sh` brings up a
//! server and a daemon with no configuration, and the sample job runs.

use std::process::{Command, Stdio};
use std::time::Duration;
use sundial_e2e::{free_port, wait_for};

#[test]
fn quickstart_brings_up_server_daemon_and_a_running_sample_job() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port().unwrap();
    let log = std::fs::File::create(dir.path().join("quickstart.out")).unwrap();
    let mut child = Command::new("bash")
        .arg(root.join("scripts/quickstart.sh"))
        .env("SUNDIAL_LISTEN", format!("127.0.0.1:{port}"))
        .env("SUNDIAL_DATA_DIR", &data)
        .env("SUNDIAL_PROFILE", "debug")
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let http = reqwest::blocking::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let run = wait_for(Duration::from_secs(120), || {
        let key = std::fs::read_to_string(data.join("admin.key")).ok()?;
        let resp = http
            .get(format!("{base}/v1/runs?job=hello&state=succeeded&limit=1"))
            .bearer_auth(key.trim())
            .send()
            .ok()?;
        let body: serde_json::Value = resp.json().ok()?;
        body["items"].as_array()?.first().cloned()
    });
    let out = std::fs::read_to_string(dir.path().join("quickstart.out")).unwrap_or_default();
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let exited = wait_for(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let run = run.unwrap_or_else(|| panic!("the sample job never succeeded; output:\n{out}"));
    assert!(
        run["output"].as_str().unwrap().starts_with("hello from "),
        "{run}"
    );
    assert!(out.contains("Sundial is running at"), "{out}");
    assert!(exited.is_some(), "quickstart did not stop on SIGTERM");
    // Its server and daemon stopped with it: the port is free again.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

/// A first start on a new data directory has nothing to complain about:
/// no error is logged (a read before the database existed once waited the
/// read pool's whole timeout, logging "unable to open database file"). A
/// log written to a file carries no colour codes.
#[test]
fn a_first_start_logs_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = sundial_e2e::ServerProc::start(&dir.path().join("data")).unwrap();
    let log = server.log_text();
    assert!(log.contains("generated a cluster secret"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

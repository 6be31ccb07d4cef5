//! One process per directory: a second standalone server started on a data
//! directory in use, or a second daemon on a state directory in use, exits
//! at once with an error naming the holder's PID, and the first goes on
//! serving. The lock dies with its holder: after a `kill -9` the next
//! process starts, even while a job the dead daemon started still runs.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sundial_e2e::{binary, free_port, send_signal, wait_for, DaemonProc, ServerProc};

/// Runs `cmd` to its end, at most 20 s (then kills it and fails), and
/// checks that it was refused: exit code 1 and `message` on stderr.
fn assert_refused(cmd: &mut Command, message: &str) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "0")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after 20 s (it should have been refused): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(message), "{stderr}");
}

fn nodes(server: &ServerProc) -> Vec<Value> {
    let (_, n) = server.call("GET", "/v1/nodes", None).unwrap();
    n["items"].as_array().cloned().unwrap_or_default()
}

/// Triggers `job`; returns the run's id.
fn trigger(server: &ServerProc, job: &str) -> i64 {
    let (status, run) = server
        .call("POST", &format!("/v1/jobs/{job}/trigger"), None)
        .unwrap();
    assert_eq!(status, 201, "{run}");
    run["id"].as_i64().unwrap()
}

/// Triggers `job` and waits for its run to end; returns the run.
fn run_once(server: &ServerProc, job: &str) -> Value {
    let id = trigger(server, job);
    wait_for(Duration::from_secs(20), || {
        let (_, r) = server.call("GET", &format!("/v1/runs/{id}"), None).ok()?;
        (r["state"] != "pending" && r["state"] != "running").then_some(r)
    })
    .expect("run finished")
}

fn put_job(server: &ServerProc, id: &str, script: &str) {
    let spec = json!({"schedule": "0 0 0 1 1 *",
        "executor": {"type": "shell", "script": script}});
    let (status, body) = server
        .call("PUT", &format!("/v1/jobs/{id}"), Some(&spec))
        .unwrap();
    assert_eq!(status, 201, "{body}");
}

fn daemon(server: &ServerProc, token: &str, state: &Path) -> DaemonProc {
    DaemonProc::start(&server.base, token, "n1", state, &[]).unwrap()
}

#[test]
fn a_second_server_on_a_data_directory_in_use_is_refused_and_the_first_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProc::start(&data).unwrap();
    let pid = server.pid().unwrap();

    let port = free_port().unwrap().to_string();
    assert_refused(
        Command::new(binary("sundial-server").unwrap())
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data),
        &format!(
            "another sundial-server (pid {pid}) is using the data directory {}",
            data.display()
        ),
    );
    // It stopped before the database: the first server is still primary
    // of the same term, and writes.
    let (status, ready) = server.call("GET", "/readyz", None).unwrap();
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["epoch"], 1, "{ready}");
    put_job(&server, "still-writable", "true");
}

#[test]
fn a_second_daemon_on_a_state_directory_in_use_is_refused_and_the_lock_dies_with_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let token = server.join_token().unwrap();
    let state = dir.path().join("n1");
    let mut first = daemon(&server, &token, &state);
    wait_for(Duration::from_secs(20), || {
        (nodes(&server).len() == 1).then_some(())
    })
    .expect("the first daemon registered");
    let pid = first.pid().unwrap();

    assert_refused(
        Command::new(binary("sundial-daemon").unwrap())
            .args(["--server", &server.base, "--join-token", &token])
            .args(["--node-id", "n1", "--state-dir"])
            .arg(&state),
        &format!(
            "another sundial-daemon (pid {pid}) is using the state directory {}",
            state.display()
        ),
    );
    // The first daemon still runs jobs.
    put_job(&server, "quick", "echo ok");
    let run = run_once(&server, "quick");
    assert_eq!(run["state"], "succeeded", "{run}");

    // A job of the first daemon that outlives it does not hold the lock
    // (close-on-exec): after kill -9, the next daemon starts.
    let marker = dir.path().join("sleeper.pid");
    put_job(
        &server,
        "sleeper",
        &format!("echo $$ > {}; exec sleep 20", marker.display()),
    );
    trigger(&server, "sleeper");
    let sleeper: u32 = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&marker).ok()?.trim().parse().ok()
    })
    .expect("the sleeper started");
    first.kill9().unwrap();
    assert!(
        Path::new(&format!("/proc/{sleeper}")).exists(),
        "the job outlived its daemon"
    );
    let next = daemon(&server, &token, &state);
    let run = run_once(&server, "quick");
    assert_eq!(run["state"], "succeeded", "{run}");
    let held = std::fs::read_to_string(state.join("sundial-daemon.lock")).unwrap();
    assert_eq!(held.trim(), next.pid().unwrap().to_string());
    // The orphaned job is this test's to end.
    let _ = send_signal(sleeper, "KILL");
}

#[test]
fn a_daemon_stopped_before_it_could_join_exits_cleanly_and_frees_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("n1");
    // Nothing listens there: the daemon retries its join until stopped.
    let nowhere = format!("http://127.0.0.1:{}", free_port().unwrap());
    let waits = |d: &DaemonProc| d.log_text().matches("retrying join").count();
    let mut seen = 0;
    for round in 0..2 {
        // The two rounds share a log file: wait for this round's own line.
        let mut d = DaemonProc::start(&nowhere, "no-token-needed-yet", "n1", &state, &[]).unwrap();
        seen = wait_for(Duration::from_secs(20), || {
            let n = waits(&d);
            (n > seen).then_some(n)
        })
        .expect("the daemon waits for the server");
        let code = d.terminate(Duration::from_secs(10)).unwrap();
        assert_eq!(code, Some(0), "round {round}: {}", d.log_text());
    }
}

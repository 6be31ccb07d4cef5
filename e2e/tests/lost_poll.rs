//! Acceptance: a poll response lost on its way to the daemon (here a proxy
//! answers `502` in its place, as a load balancer does when the upstream
//! connection breaks) does not leave its runs waiting for their lease. The
//! daemon's next poll acknowledges the last response it did read (for its
//! first poll, the receipt registration gave it); the server sees that the
//! lost batch was never read and hands it back at once:
//! the run executes exactly once, as its next attempt, well before the
//! lease (60 s here) could have brought it back. Without receipts it would
//! have ended `lost` after a minute without ever running (the job has no
//! retries).
//!
//! The same across a restart: the answer is held at the proxy while the
//! server that sent it is killed and started again (a new term; the
//! in-memory record of the poll is gone with the old process). The
//! daemon's next poll still acknowledges the last answer it read, and the
//! new term, which loaded the running attempts with the receipts they were
//! handed out with, hands the lost one back at once.

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sundial_e2e::{wait_for, DaemonProc, LoopbackListener, ServerProc};

/// A loopback HTTP/1.1 proxy that forwards each request on its own upstream
/// connection and replaces the `drop_nth` poll response carrying runs with a
/// `502`. Stops accepting when dropped.
struct LossyProxy {
    port: u16,
    dropped: Arc<AtomicUsize>,
    gate: Arc<Gate>,
    _listener: LoopbackListener,
}

/// Holds the dropped response's `502` back until opened (when `held`), so
/// that the test can restart the server while the daemon's poll waits.
#[derive(Default)]
struct Gate {
    held: AtomicBool,
    open: AtomicBool,
}

impl Gate {
    /// Waits (bounded) until the gate opens, if it holds at all.
    fn pass(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.held.load(Ordering::SeqCst)
            && !self.open.load(Ordering::SeqCst)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl LossyProxy {
    fn start(upstream: u16, drop_nth: usize, hold: bool) -> LossyProxy {
        let dropped = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Gate::default());
        gate.held.store(hold, Ordering::SeqCst);
        let (lost, at_gate) = (dropped.clone(), gate.clone());
        let listener = LoopbackListener::start(move |client| {
            serve(client, upstream, drop_nth, &seen, &lost, &at_gate);
        })
        .unwrap();
        LossyProxy {
            port: listener.port,
            dropped,
            gate,
            _listener: listener,
        }
    }
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body); None at EOF.
fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(buf).ok()?;
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn serve(
    mut client: TcpStream,
    upstream: u16,
    drop_nth: usize,
    seen: &AtomicUsize,
    lost: &AtomicUsize,
    gate: &Gate,
) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(90)));
    // One request per connection: the upstream answers `Connection: close`,
    // and so does the response passed on.
    let Some((head, body)) = read_request(&mut client) else {
        return;
    };
    // One upstream connection per request, closed after its response.
    let mut lines: Vec<&str> = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = up.set_read_timeout(Some(Duration::from_secs(90)));
    let request = format!("{}\r\n\r\n", lines.join("\r\n"));
    if up.write_all(request.as_bytes()).is_err() || up.write_all(&body).is_err() {
        return;
    }
    let mut response = Vec::new();
    if up.read_to_end(&mut response).is_err() {
        return;
    }
    let is_poll = head.starts_with("POST /v1/agent/poll ");
    let has_runs = String::from_utf8_lossy(&response).contains("\"run_id\"");
    let out: &[u8] = if is_poll && has_runs && seen.fetch_add(1, Ordering::SeqCst) + 1 == drop_nth {
        lost.fetch_add(1, Ordering::SeqCst);
        gate.pass();
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    } else {
        &response
    };
    let _ = client.write_all(out);
}

fn run(server: &ServerProc, id: i64) -> Option<serde_json::Value> {
    let (status, r) = server.call("GET", &format!("/v1/runs/{id}"), None).ok()?;
    (status == 200).then_some(r)
}

/// A server with a 60 s lease, a daemon `n1` behind a [`LossyProxy`] that
/// loses its `drop_nth` answer with work in it (held until the gate opens
/// when `hold`), and a job `once` that writes "run attempt" lines to a
/// marks file.
struct Setup {
    server: ServerProc,
    proxy: LossyProxy,
    daemon: DaemonProc,
    marks: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn start(drop_nth: usize, hold: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProc::start_args(&dir.path().join("data"), &["--lease", "60s"]).unwrap();
        let port: u16 = server.base.rsplit(':').next().unwrap().parse().unwrap();
        let proxy = LossyProxy::start(port, drop_nth, hold);
        let token = server.join_token().unwrap();
        let daemon = DaemonProc::start(
            &format!("http://127.0.0.1:{}", proxy.port),
            &token,
            "n1",
            &dir.path().join("n1"),
            &[],
        )
        .unwrap();
        let marks = dir.path().join("marks");
        let script = format!(
            "echo \"$SUNDIAL_RUN_ID $SUNDIAL_ATTEMPT\" >> {}",
            marks.display()
        );
        let job =
            json!({"schedule": "0 0 0 1 1 *", "executor": {"type": "shell", "script": script}});
        assert_eq!(
            server.call("PUT", "/v1/jobs/once", Some(&job)).unwrap().0,
            201
        );
        Setup {
            server,
            proxy,
            daemon,
            marks,
            _dir: dir,
        }
    }

    fn trigger(&self) -> i64 {
        let (status, r) = self
            .server
            .call("POST", "/v1/jobs/once/trigger", None)
            .unwrap();
        assert_eq!(status, 201, "{r}");
        r["id"].as_i64().unwrap()
    }

    /// The run once it has ended, waiting at most `within`.
    fn finished(&self, id: i64, within: Duration) -> Option<serde_json::Value> {
        wait_for(within, || {
            let r = run(&self.server, id)?;
            (r["state"] != "pending" && r["state"] != "running").then_some(r)
        })
    }

    /// Asserts the run ended `succeeded` as `attempt`.
    #[track_caller]
    fn succeeded(&self, id: i64, attempt: u64) {
        let r = self
            .finished(id, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("run {id} did not finish"));
        assert_eq!(
            (r["state"].as_str(), r["attempt"].as_u64()),
            (Some("succeeded"), Some(attempt)),
            "{r}"
        );
    }

    /// Asserts each run executed exactly once, as the attempts given.
    fn executed_once(&self, runs: &[(i64, u32)]) {
        let text = std::fs::read_to_string(&self.marks).unwrap();
        let want: Vec<String> = runs.iter().map(|(id, a)| format!("{id} {a}")).collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), want, "{text}");
    }

    fn handed_back(&self) -> f64 {
        self.server
            .metric("sundial_runs_unread_handed_back_total")
            .unwrap()
    }

    fn stop(mut self) {
        self.daemon.terminate(Duration::from_secs(10)).unwrap();
    }
}

#[test]
fn a_lost_poll_response_is_handed_back_at_once_and_runs_once() {
    // The first poll response with runs in it never reaches the daemon:
    // its receipt to acknowledge comes from registration.
    let s = Setup::start(1, false);

    // The answer to the daemon's first poll with work in it is lost on the
    // way: the run is handed back at its next poll and runs as attempt 2.
    let started = Instant::now();
    let first = s.trigger();
    let r = s
        .finished(first, Duration::from_secs(20))
        .expect("the first run finished");
    let took = started.elapsed();
    assert_eq!(
        s.proxy.dropped.load(Ordering::SeqCst),
        1,
        "the proxy dropped a response"
    );
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["attempt"], 2, "handed back and run as attempt 2: {r}");
    assert!(
        took < Duration::from_secs(15),
        "handed back in {took:?}, not after the 60 s lease"
    );
    println!("lost poll response: run {first} succeeded as attempt 2 after {took:?}");

    // The next answers arrive: a run the daemon read is not handed back.
    let second = s.trigger();
    s.succeeded(second, 1);
    s.executed_once(&[(first, 2), (second, 1)]);
    assert_eq!(s.handed_back(), 1.0);
    s.stop();
}

#[test]
fn a_poll_response_lost_as_its_server_dies_is_handed_back_by_the_next_term() {
    // The second poll answer with work in it is held, then lost: the first
    // is read, so the lost one is handed out after an answer that was read.
    let mut s = Setup::start(2, true);

    // One answer read.
    let first = s.trigger();
    s.succeeded(first, 1);

    // The next is committed and held at the proxy: the server dies with it
    // on its way, and a new term starts on the same database.
    let lost = s.trigger();
    wait_for(Duration::from_secs(20), || {
        (s.proxy.dropped.load(Ordering::SeqCst) == 1).then_some(())
    })
    .expect("the proxy holds the second answer");
    let r = run(&s.server, lost).unwrap();
    assert_eq!(
        (r["state"].as_str(), r["node"].as_str()),
        (Some("running"), Some("n1")),
        "{r}"
    );
    s.server.kill9().unwrap();
    s.server.restart().unwrap();
    let released = Instant::now();
    s.proxy.gate.open.store(true, Ordering::SeqCst);

    // Its next poll acknowledges the first answer: the lost attempt is
    // handed back and runs as attempt 2, long before the 60 s lease.
    let r = s
        .finished(lost, Duration::from_secs(30))
        .expect("the lost run finished");
    let took = released.elapsed();
    assert_eq!(
        (r["state"].as_str(), r["attempt"].as_u64()),
        (Some("succeeded"), Some(2)),
        "{r}"
    );
    assert!(
        took < Duration::from_secs(20),
        "handed back in {took:?}, not after the 60 s lease"
    );
    println!(
        "answer lost with its server: run {lost} succeeded as attempt 2 {took:?} after the restart"
    );
    assert_eq!(s.handed_back(), 1.0);

    // A run the daemon reads in the new term is not handed back.
    let after = s.trigger();
    s.succeeded(after, 1);
    s.executed_once(&[(first, 1), (lost, 2), (after, 1)]);
    s.stop();
}

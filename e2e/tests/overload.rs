//! Acceptance (issue 14, overload): a client that stalls in its request head
//! is disconnected after the header read timeout; one that stalls in its
//! body gets `408` after the body read timeout; with a full admin budget the
//! next admin request gets `503 overloaded` + `Retry-After` while probes and
//! the agent API still answer; 1,000 idle slowloris connections do not stop
//! a job firing every second from getting its slots.

use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use sundial_e2e::{agent, wait_for, ServerProc, ADMIN_KEY};

/// Connects and sends `bytes` (a request cut short), leaving the socket open.
fn stalled(server: &ServerProc, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.write_all(bytes).unwrap();
    s
}

/// Reads until the server closes the connection or `limit` passes; returns
/// what it sent and how long it took to close (None if still open).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                return (
                    String::from_utf8_lossy(&got).into(),
                    Some(started.elapsed()),
                )
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (
                    String::from_utf8_lossy(&got).into(),
                    Some(started.elapsed()),
                )
            }
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
        }
        if started.elapsed() > limit {
            return (String::from_utf8_lossy(&got).into(), None);
        }
    }
}

fn slow_body_head(id: &str, length: usize) -> Vec<u8> {
    format!(
        "PUT /v1/jobs/{id} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {length}\r\n\r\n{{\"schedule\""
    )
    .into_bytes()
}

#[test]
fn stalled_head_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProc::start_args(&dir.path().join("data"), &["--header-read-timeout", "1s"]).unwrap();
    let opened = Instant::now();
    // Half a request head, then nothing.
    let mut half = stalled(&server, b"GET /v1/jobs HTTP/1.1\r\nhost: x\r\nauthoriz");
    // Nothing at all.
    let mut silent = stalled(&server, b"");
    for s in [&mut half, &mut silent] {
        let (_, closed) = read_until_closed(s, Duration::from_secs(10));
        assert!(
            closed.is_some(),
            "connection still open 10 s after a 1 s header timeout"
        );
        let took = opened.elapsed();
        assert!(
            took >= Duration::from_millis(800),
            "closed too early: {took:?}"
        );
    }
    // An idle keep-alive connection is closed the same way; a prompt one is served.
    let mut idle = stalled(&server, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    let (text, closed) = read_until_closed(&mut idle, Duration::from_secs(10));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed.is_some(), "idle keep-alive connection still open");
    assert!(
        server
            .metric("sundial_http_timeouts_total{kind=\"header\"}")
            .unwrap()
            >= 2.0
    );
}

#[test]
fn plain_port_speaks_http1_and_h2c_and_closes_a_stalled_preface() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProc::start_args(&dir.path().join("data"), &["--header-read-timeout", "1s"]).unwrap();
    let url = format!("{}/healthz", server.base);
    let h1 = Client::new().get(&url).send().unwrap();
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    let h2 = Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .unwrap();
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    // Half the HTTP/2 preface, then nothing: closed on the header timeout.
    let opened = Instant::now();
    let mut half = stalled(&server, b"PRI * HTTP/2.0\r\n");
    let (_, closed) = read_until_closed(&mut half, Duration::from_secs(10));
    assert!(closed.is_some(), "half a preface still open after 10 s");
    assert!(opened.elapsed() >= Duration::from_millis(800));
}

#[test]
fn stalled_body_gets_408_after_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProc::start_args(&dir.path().join("data"), &["--body-read-timeout", "1s"]).unwrap();
    let mut s = stalled(&server, &slow_body_head("slow", 200));
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(closed.is_some(), "connection left open after a 408");
    // Nothing was written, and the server still serves.
    let (status, _) = server.call("GET", "/v1/jobs/slow", None).unwrap();
    assert_eq!(status, 404);
    assert_eq!(
        server
            .metric("sundial_http_timeouts_total{kind=\"body\"}")
            .unwrap(),
        1.0
    );
}

#[test]
fn full_admin_budget_sheds_with_503_while_agents_and_probes_go_on() {
    const BUDGET: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start_args(
        &dir.path().join("data"),
        &[
            "--max-concurrent-requests",
            &BUDGET.to_string(),
            "--body-read-timeout",
            "20s",
        ],
    )
    .unwrap();
    let token = server.join_token().unwrap();
    // Admin requests that hold their slot: bodies that never finish.
    let mut slow: Vec<TcpStream> = (0..BUDGET)
        .map(|i| stalled(&server, &slow_body_head(&format!("slow{i}"), 500)))
        .collect();
    let http = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let in_flight = wait_for(Duration::from_secs(10), || {
        let n = server
            .metric("sundial_http_requests_in_flight{budget=\"api\"}")
            .ok()?;
        (n as usize == BUDGET).then_some(n)
    });
    assert!(in_flight.is_some(), "slow requests never took the budget");
    let started = Instant::now();
    let resp = http
        .get(format!("{}/v1/jobs", server.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shed request was queued"
    );
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    // Probes and the agent API have their own way in.
    let health = http.get(format!("{}/healthz", server.base)).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let (status, cred) = agent::join(&http, &server, &token, "node-ov");
    assert_eq!(status, 201, "{cred}");
    assert!(
        server
            .metric("sundial_http_requests_shed_total{budget=\"api\"}")
            .unwrap()
            >= 1.0
    );
    // Once the slow clients go, admin requests are served again.
    slow.clear();
    let served = wait_for(Duration::from_secs(10), || {
        let (status, _) = server.call("GET", "/v1/jobs", None).ok()?;
        (status == 200).then_some(())
    });
    assert!(served.is_some(), "admin API did not recover");
}

#[test]
fn connections_over_the_cap_get_503_and_are_closed() {
    const CAP: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start_args(
        &dir.path().join("data"),
        &["--max-connections", &CAP.to_string()],
    )
    .unwrap();
    // The accept loop takes connections in arrival order: these fill the cap.
    let held: Vec<TcpStream> = (0..CAP)
        .map(|_| stalled(&server, b"GET /healthz HTTP/1.1\r\n"))
        .collect();
    let mut extra = stalled(&server, b"");
    let (text, closed) = read_until_closed(&mut extra, Duration::from_secs(10));
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"overloaded\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(closed.is_some(), "refused connection left open");
    drop(held);
    let served = wait_for(Duration::from_secs(10), || {
        let (status, _) = server.call("GET", "/v1/jobs", None).ok()?;
        (status == 200).then_some(())
    });
    assert!(served.is_some(), "server did not take connections again");
    assert!(
        server
            .metric("sundial_http_connections_refused_total")
            .unwrap()
            >= 1.0
    );
}

#[test]
fn a_thousand_slowloris_connections_do_not_stop_the_scheduler() {
    const CONNS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProc::start_args(&dir.path().join("data"), &["--header-read-timeout", "60s"])
            .unwrap();
    let mut conns = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let head = format!("GET /v1/jobs?slow={i} HTTP/1.1\r\nhost: x\r\n");
        conns.push(stalled(&server, head.as_bytes()));
    }
    let open = wait_for(Duration::from_secs(20), || {
        let n = server.metric("sundial_http_connections_open").ok()?;
        (n as usize >= CONNS).then_some(n)
    });
    assert!(
        open.is_some(),
        "the slowloris connections were not all accepted"
    );
    let (status, body) = server
        .call(
            "PUT",
            "/v1/jobs/tick",
            Some(&json!({"schedule": "@every 1s",
                         "executor": {"type": "exec", "argv": ["/bin/true"]}})),
        )
        .unwrap();
    assert!(status == 200 || status == 201, "{status} {body}");
    let created = wait_for(Duration::from_secs(20), || {
        let runs = server.all_runs("tick").ok()?;
        (runs.len() >= 5).then_some(runs.len())
    });
    assert!(created.is_some(), "a job firing every second got no slots");
    // The slowloris connections are still there (the load lasted throughout).
    assert!(server.metric("sundial_http_connections_open").unwrap() as usize >= CONNS);
    drop(conns);
}

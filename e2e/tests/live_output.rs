//! Live output with real processes: a running job's lines reach
//! `curl -N …/v1/runs/{id}/output?follow=true` as they are printed (well
//! before the run ends); the stream ends with an `end` event and closes;
//! without `follow` the endpoint returns the text so far; a reconnect with
//! `Last-Event-ID` continues from that byte.

use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sundial_e2e::{ms, skip_without, ServerProc, ADMIN_KEY};
use sundial_proto::time::now_ms;

#[test]
fn curl_follows_a_running_jobs_output_as_it_is_printed() {
    if skip_without("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let _daemon = server.one_daemon(dir.path()).unwrap();
    let spec = json!({"schedule": "@yearly", "executor": {"type": "shell",
        "script": "for i in 1 2 3 4 5 6; do echo \"line $i\"; sleep 0.5; done; echo done"}});
    assert_eq!(
        server
            .call("PUT", "/v1/jobs/ticker", Some(&spec))
            .unwrap()
            .0,
        201
    );
    let (_, run) = server
        .call("POST", "/v1/jobs/ticker/trigger", None)
        .unwrap();
    let id = run["id"].as_i64().unwrap();

    let url = format!("{}/v1/runs/{id}/output?follow=true", server.base);
    let mut curl = Command::new("curl")
        .args([
            "-sN",
            "-m",
            "30",
            "-H",
            &format!("Authorization: Bearer {ADMIN_KEY}"),
            &url,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    // Read to the end: the server closes the stream after `end` (curl's
    // own -m 30 bounds it otherwise).
    let started = Instant::now();
    let mut seen: Vec<(i64, String)> = Vec::new();
    let reader = BufReader::new(curl.stdout.take().unwrap());
    for line in reader.lines() {
        seen.push((now_ms(), line.unwrap()));
    }
    let status = curl.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the stream did not close"
    );
    assert!(status.success(), "curl ended with {status}");
    let data: Vec<&(i64, String)> = seen
        .iter()
        .filter(|(_, l)| l.starts_with("data: line"))
        .collect();
    assert_eq!(
        data.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(),
        (1..=6)
            .map(|i| format!("data: line {i}"))
            .collect::<Vec<_>>(),
        "{seen:?}"
    );
    let (_, finished) = server.call("GET", &format!("/v1/runs/{id}"), None).unwrap();
    assert_eq!(finished["state"], "succeeded", "{finished}");
    let ended = ms(&finished, "finished_at");
    // Line 1 was printed ~3 s before the end; it must not wait for the end.
    let first = data[0].0;
    assert!(
        ended - first >= 1_500,
        "line 1 arrived {} ms before the run finished: not live",
        ended - first
    );
    assert!(seen.iter().any(|(_, l)| l.starts_with("event: end")));
    assert!(
        seen.iter()
            .any(|(_, l)| l.contains("\"state\":\"succeeded\"")),
        "{seen:?}"
    );
    eprintln!(
        "live output: line 1 arrived {} ms before the run ended",
        ended - first
    );

    // Without follow: the text; with Last-Event-ID: only what comes after.
    let http = reqwest::blocking::Client::new();
    let text = http
        .get(format!("{}/v1/runs/{id}/output", server.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        text,
        "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\ndone\n"
    );
    let resumed = http
        .get(&url)
        .bearer_auth(ADMIN_KEY)
        .header("Last-Event-ID", "14") // after "line 1\nline 2\n"
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(resumed.starts_with("event: output\n"), "{resumed}");
    assert!(
        resumed.contains("data: line 3\n") && !resumed.contains("line 2"),
        "{resumed}"
    );
    assert!(resumed.contains("event: end"), "{resumed}");
    let (status, _) = server.call("GET", "/v1/runs/999999/output", None).unwrap();
    assert_eq!(status, 404);
}

/// A retry starts the followed output over: attempt 1's lines once, then
/// `event: attempt`, then attempt 2's own lines from their first byte (the
/// stream used to replay attempt 1's text during the backoff and then skip
/// that many bytes of attempt 2).
#[test]
fn a_retry_starts_the_followed_output_over() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let _daemon = server.one_daemon(dir.path()).unwrap();
    let spec = json!({"schedule": "@yearly", "retries": {"max": 1, "backoff": "2s"},
        "executor": {"type": "shell", "script":
            "echo \"attempt $SUNDIAL_ATTEMPT begins\"; sleep 1.5; echo \"attempt $SUNDIAL_ATTEMPT ends\"; test \"$SUNDIAL_ATTEMPT\" = 2"}});
    let (status, _) = server.call("PUT", "/v1/jobs/twice", Some(&spec)).unwrap();
    assert_eq!(status, 201);
    let (_, run) = server.call("POST", "/v1/jobs/twice/trigger", None).unwrap();
    let id = run["id"].as_i64().unwrap();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap();
    // The whole stream: the server closes it after `end`.
    let stream = http
        .get(format!("{}/v1/runs/{id}/output?follow=true", server.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let lines: Vec<&str> = stream
        .lines()
        .filter(|l| l.starts_with("data: attempt ") || l.starts_with("event: attempt"))
        .collect();
    assert_eq!(
        lines,
        [
            "data: attempt 1 begins",
            "data: attempt 1 ends",
            "event: attempt",
            "data: attempt 2 begins",
            "data: attempt 2 ends",
        ],
        "{stream}"
    );
    assert!(stream.contains("\"state\":\"succeeded\""), "{stream}");
}

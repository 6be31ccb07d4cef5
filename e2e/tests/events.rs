//! The event stream with real processes: a failing job's `run.failed`
//! (after its retry) arrives on `GET /v1/events/stream`; job changes are
//! events too; a client that reconnects with `Last-Event-ID` — also after
//! the server was killed with -9 — gets exactly the events after that id,
//! none missed, none twice; the page API agrees with the stream.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use sundial_e2e::{ServerProc, ADMIN_KEY};

/// One SSE event as received.
#[derive(Debug, Clone)]
struct Received {
    id: i64,
    kind: String,
    data: Value,
}

/// Follows `/v1/events/stream` in a thread; events arrive on a channel. The
/// thread ends when the server closes the connection.
fn follow(base: &str, query: &str, last_id: Option<i64>) -> mpsc::Receiver<Received> {
    let (tx, rx) = mpsc::channel();
    let url = format!("{base}/v1/events/stream{query}");
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .unwrap();
        let mut req = http.get(url).bearer_auth(ADMIN_KEY);
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let Ok(resp) = req.send() else { return };
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let (mut id, mut kind, mut data) = (None, None, None);
        for line in BufReader::new(resp).lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if let (Some(i), Some(k), Some(d)) = (id.take(), kind.take(), data.take()) {
                    if tx
                        .send(Received {
                            id: i,
                            kind: k,
                            data: d,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str(v).ok();
            }
        }
    });
    rx
}

/// Receives until `done` holds for what arrived, or fails after `timeout`.
fn collect_until(
    rx: &mpsc::Receiver<Received>,
    got: &mut Vec<Received>,
    timeout: Duration,
    done: impl Fn(&[Received]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => got.push(e),
            Err(_) => panic!("stream ended or timed out; got {got:#?}"),
        }
    }
}

fn has(got: &[Received], kind: &str, job: &str) -> bool {
    got.iter()
        .any(|e| e.kind == kind && e.data["job_id"] == job)
}

#[test]
fn events_stream_resume_after_kill9_and_match_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&dir.path().join("data")).unwrap();
    let _daemon = server.one_daemon(dir.path()).unwrap();

    // Follow runs and jobs from now on.
    let rx = follow(&server.base, "?type=run.*,job.*", None);
    std::thread::sleep(Duration::from_millis(300));
    let yearly = "0 0 0 1 1 *";
    let failing = json!({"schedule": yearly, "retries": {"max": 1, "backoff": "1s"},
        "executor": {"type": "shell", "script": "echo boom; exit 3"}});
    let fine = json!({"schedule": yearly, "executor": {"type": "exec", "argv": ["true"]}});
    assert_eq!(
        server
            .call("PUT", "/v1/jobs/failing", Some(&failing))
            .unwrap()
            .0,
        201
    );
    assert_eq!(
        server.call("PUT", "/v1/jobs/fine", Some(&fine)).unwrap().0,
        201
    );
    server
        .call("POST", "/v1/jobs/failing/trigger", None)
        .unwrap();
    server.call("POST", "/v1/jobs/fine/trigger", None).unwrap();
    server.call("POST", "/v1/jobs/fine/pause", None).unwrap();
    server.call("POST", "/v1/jobs/fine/resume", None).unwrap();

    let mut got = Vec::new();
    collect_until(&rx, &mut got, Duration::from_secs(30), |g| {
        has(g, "run.failed", "failing")
            && has(g, "run.succeeded", "fine")
            && has(g, "job.resumed", "fine")
    });
    let kinds = |job: &str| -> Vec<String> {
        got.iter()
            .filter(|e| e.data["job_id"] == job)
            .map(|e| e.kind.clone())
            .collect()
    };
    assert_eq!(
        kinds("failing"),
        [
            "job.created",
            "run.started",
            "run.retrying",
            "run.started",
            "run.failed"
        ],
        "{got:#?}"
    );
    let failed = got.iter().find(|e| e.kind == "run.failed").unwrap();
    assert_eq!(failed.data["data"]["attempt"], 2, "{failed:?}");
    assert_eq!(failed.data["data"]["exit_code"], 3, "{failed:?}");
    assert_eq!(failed.data["node"], "n1");
    assert_eq!(failed.data["type"], "run.failed");
    assert!(failed.data["run_id"].as_i64().is_some());
    // The run and the pause race each other; each event is there once, runs in order.
    let mut fine = kinds("fine");
    let started = fine.iter().position(|k| k == "run.started").unwrap();
    let succeeded = fine.iter().position(|k| k == "run.succeeded").unwrap();
    assert!(started < succeeded, "{fine:?}");
    fine.sort();
    assert_eq!(
        fine,
        [
            "job.created",
            "job.paused",
            "job.resumed",
            "run.started",
            "run.succeeded"
        ],
        "{got:#?}"
    );
    let ids: Vec<i64> = got.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids grow: {ids:?}");

    // The page API returns the same events (same ids, same order).
    let (status, page) = server
        .call(
            "GET",
            &format!("/v1/events?after={}&type=run.*,job.*", ids[0] - 1),
            None,
        )
        .unwrap();
    assert_eq!(status, 200, "{page}");
    let page_ids: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(&page_ids[..ids.len()], &ids[..], "{page}");
    let (status, bad) = server.call("GET", "/v1/events?type=runs.*", None).unwrap();
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["field"], "type");

    // kill -9, and more events while no client follows.
    let resume_from = got[2].id;
    server.kill9().unwrap();
    server.restart().unwrap();
    server.call("POST", "/v1/jobs/fine/pause", None).unwrap();
    // Resume after the third event: everything after it, once, in order —
    // what was seen before the crash and what happened after it.
    let rx = follow(&server.base, "?type=run.*,job.*", Some(resume_from));
    let mut again = Vec::new();
    collect_until(&rx, &mut again, Duration::from_secs(20), |g| {
        g.iter().filter(|e| e.kind == "job.paused").count() >= 2
    });
    let again_ids: Vec<i64> = again.iter().map(|e| e.id).collect();
    assert_eq!(
        &again_ids[..ids.len() - 3],
        &ids[3..],
        "resumed stream repeats or misses"
    );
    let last = again.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), &last.data["job_id"]),
        ("job.paused", &json!("fine"))
    );
    assert!(again_ids.windows(2).all(|w| w[1] > w[0]));

    // The restart itself is an event (a new term).
    let (_, promoted) = server
        .call("GET", "/v1/events?after=0&type=ha.promoted", None)
        .unwrap();
    assert!(
        promoted["items"].as_array().unwrap().len() >= 2,
        "{promoted}"
    );
    let metric = server.metric("sundial_events").unwrap();
    assert!(metric >= ids.len() as f64, "sundial_events {metric}");
    eprintln!(
        "events: {} followed live, {} after a kill -9 resume from id {resume_from}",
        got.len(),
        again.len()
    );
}

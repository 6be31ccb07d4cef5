//! The event stream and webhooks across failovers: two servers over one
//! database (roles through the LiteFS contract), a real HAProxy in front, a
//! daemon, jobs every second, a webhook on `run.*` to a receiver that
//! verifies every signature independently, and an SSE client following
//! `/v1/events/stream` through HAProxy (reconnecting with `Last-Event-ID`).
//! Three kill -9 failovers in the middle of it. Afterwards: every `run.*`
//! event reached the receiver at least once (a repeat only with the same
//! `webhook-id`), and the SSE client saw every `run.*` event exactly once,
//! in order.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sundial_e2e::ha::{host, routed_to_primary, start_pair, term_epoch, HaPair};
use sundial_e2e::receiver::{python, Receiver};
use sundial_e2e::{
    admin_call, free_port, skip_without, wait_for, DaemonProc, HaproxyProc, ADMIN_KEY,
};

/// Follows the stream through `base`, reconnecting with the last id seen,
/// until `stop`; records every (id, type) received.
fn follow(base: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<(i64, String)>>>) {
    let http = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap();
    let mut last: Option<i64> = None;
    // Bounded: at most ~10 minutes of reconnects.
    for _ in 0..6_000 {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let mut req = http
            .get(format!("{base}/v1/events/stream?type=run.*&after=0"))
            .bearer_auth(ADMIN_KEY);
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id.to_string());
        }
        if let Ok(resp) = req.send() {
            if resp.status() == 200 {
                let (mut id, mut kind) = (None, None);
                for line in BufReader::new(resp).lines() {
                    let Ok(line) = line else { break };
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse::<i64>().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        kind = Some(v.to_string());
                    } else if line.is_empty() {
                        if let (Some(i), Some(k)) = (id.take(), kind.take()) {
                            seen.lock().unwrap().push((i, k));
                            last = Some(i);
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn events_and_webhooks_survive_kill9_failovers_behind_haproxy() {
    if skip_without("haproxy") {
        return;
    }
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let HaPair {
        shared,
        doubles,
        mut servers,
        ..
    } = start_pair(dir.path());
    let lb = HaproxyProc::start(dir.path(), servers[0].port, servers[1].port).unwrap();
    let url = lb.url();
    routed_to_primary(&lb, Duration::from_secs(10)).expect("HAProxy routes to the primary only");

    // The webhook and its receiver (the secret derives from the shared
    // cluster secret, so either server signs the same way).
    let port = free_port().unwrap();
    let (status, hook) = admin_call(
        &url,
        "POST",
        "/v1/webhooks",
        Some(&json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["run.*"]})),
    )
    .unwrap();
    assert_eq!(status, 201, "{hook}");
    let receiver = Receiver::start(
        &py,
        port,
        hook["secret"].as_str().unwrap(),
        &dir.path().join("received.jsonl"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let follower = {
        let (u, s, v) = (url.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || follow(u, s, v))
    };

    let (_, tok) =
        admin_call(&url, "POST", "/v1/join-tokens", Some(&json!({"ttl": "1h"}))).unwrap();
    let token = tok["token"].as_str().unwrap().to_string();
    let _daemon = DaemonProc::start(
        &url,
        &token,
        "n1",
        &dir.path().join("n1"),
        &["--capacity", "32"],
    )
    .unwrap();
    let spec = json!({"schedule": "*/1 * * * * *", "misfire": {"policy": "skip"},
        "retries": {"max": 5, "backoff": "500ms", "max_backoff": "1s"},
        "executor": {"type": "exec", "argv": ["true"]}});
    for i in 0..10 {
        let (status, body) =
            admin_call(&url, "PUT", &format!("/v1/jobs/j{i}"), Some(&spec)).unwrap();
        assert_eq!(status, 201, "{body}");
    }
    std::thread::sleep(Duration::from_secs(3));

    // Three kill -9 failovers while runs, deliveries and the stream go on.
    let mut primary = 0usize;
    for flip in 0..3 {
        let next = 1 - primary;
        servers[primary].kill9().unwrap();
        doubles[next].make_primary().unwrap();
        doubles[primary]
            .make_replica(Some(&host(&servers[next])))
            .unwrap();
        let epoch = wait_for(Duration::from_secs(15), || term_epoch(&servers[next].base))
            .unwrap_or_else(|| panic!("flip {flip}: no new primary"));
        wait_for(Duration::from_secs(15), || {
            (term_epoch(&url) == Some(epoch)).then_some(())
        })
        .unwrap_or_else(|| panic!("flip {flip}: HAProxy never routed to the new primary"));
        servers[primary].restart().unwrap();
        primary = next;
        std::thread::sleep(Duration::from_secs(3));
    }
    for i in 0..10 {
        admin_call(&url, "POST", &format!("/v1/jobs/j{i}/pause"), None).unwrap();
    }
    wait_for(Duration::from_secs(60), || {
        let (_, p) = admin_call(&url, "GET", "/v1/runs?state=pending&limit=1", None).ok()?;
        let (_, r) = admin_call(&url, "GET", "/v1/runs?state=running&limit=1", None).ok()?;
        (p["items"].as_array()?.is_empty() && r["items"].as_array()?.is_empty()).then_some(())
    })
    .expect("runs settle");

    // Every run.* event since the webhook was created, from the database.
    let db = rusqlite::Connection::open_with_flags(
        shared.join("sundial.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let expected: Vec<i64> = db
        .prepare("SELECT id FROM events WHERE type LIKE 'run.%' AND id > ?1 ORDER BY id")
        .unwrap()
        .query_map([hook["cursor"].as_i64().unwrap()], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(expected.len() >= 50, "{} run events", expected.len());
    let last = *expected.last().unwrap();

    // Webhook: each at least once, repeats only with the same webhook-id.
    let delivered = wait_for(Duration::from_secs(60), || {
        let got: Vec<Value> = receiver.received();
        let ids: BTreeSet<i64> = got
            .iter()
            .filter_map(|r| r["webhook_id"].as_str()?.parse().ok())
            .collect();
        expected.iter().all(|e| ids.contains(e)).then_some(got)
    })
    .unwrap_or_else(|| panic!("not every event reached the receiver"));
    let bad: Vec<&Value> = delivered
        .iter()
        .filter(|r| r.get("bad").is_some())
        .collect();
    assert!(bad.is_empty(), "signatures that did not verify: {bad:?}");
    let mut per_id: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &delivered {
        let id: i64 = r["webhook_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(r["body"]["id"], id, "the webhook-id is the event id");
        *per_id.entry(id).or_default() += 1;
    }
    let repeats: usize = per_id.values().map(|n| n - 1).sum();

    // SSE: exactly the run.* events, once each, in order.
    wait_for(Duration::from_secs(30), || {
        (seen.lock().unwrap().last().map(|s| s.0) >= Some(last)).then_some(())
    })
    .expect("the stream caught up");
    stop.store(true, Ordering::Release);
    let streamed: Vec<i64> = seen.lock().unwrap().iter().map(|s| s.0).collect();
    let streamed_upto: Vec<i64> = streamed.iter().copied().filter(|i| *i <= last).collect();
    let expected_all: Vec<i64> = db
        .prepare("SELECT id FROM events WHERE type LIKE 'run.%' AND id <= ?1 ORDER BY id")
        .unwrap()
        .query_map([last], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        streamed_upto, expected_all,
        "the stream through HAProxy missed or repeated events"
    );
    // The follower ends with the stop flag (or when the servers go away).
    drop(follower);
    eprintln!(
        "events across 3 kill -9 failovers: {} run events, webhook received all ({} repeats with the same id), stream saw each once",
        expected.len(),
        repeats
    );
}

//! `POST /v1/agent/complete`: several results in one signed request. Each
//! result is answered with its own status — recorded, duplicate, stale (not
//! this node's attempt) or not_found — in one transaction; an oversized batch
//! is refused whole with the JSON error shape and records nothing.

use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::time::Duration;
use sundial_e2e::agent::{join_key, send, signed};
use sundial_e2e::{wait_for, ServerProc};
use sundial_proto::sign::NodeKey;
use sundial_proto::time::{format_ms, now_ms};

fn nonce(n: u32) -> String {
    format!("{n:032x}")
}

fn result(run_id: i64, attempt: u64, outcome: &str) -> Value {
    let now = format_ms(now_ms());
    json!({"run_id": run_id, "result": {
        "attempt": attempt, "outcome": outcome, "exit_code": 0, "output": format!("out {run_id}"),
        "started_at": now, "finished_at": now}})
}

#[test]
fn a_batch_of_results_is_answered_one_status_each() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let http = Client::new();
    let mut n = 0u32;
    let mut next = || {
        n += 1;
        nonce(n)
    };
    let k1 = join_key(&http, &server, "b1");
    let k2 = join_key(&http, &server, "b2");
    for (key, node) in [(&k1, "b1"), (&k2, "b2")] {
        let reg = signed(
            key,
            node,
            "/v1/agent/register",
            &json!({"labels": {}, "capacity": 10, "executors": ["exec"]}),
            0,
            &next(),
        );
        assert_eq!(send(&http, &server, &reg).0, 200);
    }
    let (s, b) = server
        .call(
            "PUT",
            "/v1/jobs/batched",
            Some(
                &json!({"schedule": "@every 1h", "executor": {"type": "exec", "argv": ["true"]},
                         "target": {"nodes": ["b1"]}}),
            ),
        )
        .unwrap();
    assert!(s == 200 || s == 201, "{b}");
    let (s, b) = server
        .call(
            "PUT",
            "/v1/jobs/other",
            Some(
                &json!({"schedule": "@every 1h", "executor": {"type": "exec", "argv": ["true"]},
                         "target": {"nodes": ["b2"]}}),
            ),
        )
        .unwrap();
    assert!(s == 200 || s == 201, "{b}");
    for job in ["batched", "batched", "batched", "other"] {
        let (s, b) = server
            .call("POST", &format!("/v1/jobs/{job}/trigger"), None)
            .unwrap();
        assert!(s < 300, "{b}");
    }
    let take = |key: &NodeKey, node: &str, want: usize, nonce: String| -> Vec<i64> {
        let r = signed(
            key,
            node,
            "/v1/agent/poll",
            &json!({"max": 10, "wait_ms": 5000}),
            0,
            &nonce,
        );
        let (s, body) = send(&http, &server, &r);
        assert_eq!(s, 200, "{body}");
        let ids: Vec<i64> = body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids.len(), want, "{body}");
        ids
    };
    let mine = take(&k1, "b1", 3, next());
    let theirs = take(&k2, "b2", 1, next());

    // Too many results: refused whole, nothing recorded.
    let too_many: Vec<Value> = (0..1001).map(|_| result(mine[0], 1, "succeeded")).collect();
    let r = signed(
        &k1,
        "b1",
        "/v1/agent/complete",
        &json!({ "results": too_many }),
        0,
        &next(),
    );
    let (s, body) = send(&http, &server, &r);
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_many_results", "{body}");
    let (_, run) = server
        .call("GET", &format!("/v1/runs/{}", mine[0]), None)
        .unwrap();
    assert_eq!(run["state"], "running", "{run}");

    let batch = json!({"results": [
        result(mine[0], 1, "succeeded"),
        result(mine[1], 1, "failed"),
        result(mine[0], 1, "succeeded"),
        result(theirs[0], 1, "succeeded"),
        result(999_999, 1, "succeeded"),
    ]});
    let r = signed(&k1, "b1", "/v1/agent/complete", &batch, 0, &next());
    let (s, body) = send(&http, &server, &r);
    assert_eq!(s, 200, "{body}");
    let statuses: Vec<(i64, &str)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["run_id"].as_i64().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (mine[0], "recorded"),
            (mine[1], "recorded"),
            (mine[0], "duplicate"),
            (theirs[0], "stale"),
            (999_999, "not_found"),
        ],
        "{body}"
    );
    let state = |id: i64| {
        let (_, run) = server.call("GET", &format!("/v1/runs/{id}"), None).unwrap();
        run["state"].as_str().unwrap().to_string()
    };
    assert_eq!(state(mine[0]), "succeeded");
    assert_eq!(state(mine[1]), "failed");
    assert_eq!(state(mine[2]), "running", "not in the batch: untouched");
    assert_eq!(state(theirs[0]), "running", "another node's run: untouched");
    let (_, run) = server
        .call("GET", &format!("/v1/runs/{}", mine[0]), None)
        .unwrap();
    assert_eq!(run["output"], format!("out {}", mine[0]), "{run}");
    // A result larger than the general body limit (1 MiB) still arrives,
    // and is held to what the server keeps: 1 MiB of output, 4 KiB of error.
    let now = format_ms(now_ms());
    let big = json!({"attempt": 1, "outcome": "failed", "exit_code": 1,
        "output": "y".repeat(3 << 20), "error": "e".repeat(10_000),
        "started_at": now, "finished_at": now});
    let path = format!("/v1/agent/runs/{}/complete", mine[2]);
    let (s, body) = send(&http, &server, &signed(&k1, "b1", &path, &big, 0, &next()));
    assert_eq!(s, 200, "{body}");
    let (_, run) = server
        .call("GET", &format!("/v1/runs/{}", mine[2]), None)
        .unwrap();
    assert_eq!(run["output"].as_str().map(str::len), Some(1 << 20));
    assert_eq!(run["truncated"], true);
    assert_eq!(run["error"].as_str().map(str::len), Some(4096));
    // The counters saw each recorded result once.
    let done = wait_for(Duration::from_secs(5), || {
        let v = server
            .metric("sundial_runs_completed_total{outcome=\"succeeded\"}")
            .ok()?;
        (v >= 1.0).then_some(v)
    });
    assert_eq!(done, Some(1.0));
}

/// A real daemon reports runs that finish together in batches: fewer
/// complete calls than runs, every run recorded once.
#[test]
fn a_daemon_batches_results_that_finish_together() {
    use sundial_e2e::DaemonProc;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let token = server.join_token().unwrap();
    let _daemon = DaemonProc::start(
        &server.base,
        &token,
        "batcher",
        &dir.path().join("daemon"),
        &["--capacity", "100"],
    )
    .unwrap();
    const JOBS: usize = 40;
    for i in 0..JOBS {
        let (s, b) = server
            .call(
                "PUT",
                &format!("/v1/jobs/j{i}"),
                Some(&json!({"schedule": "@every 1s", "concurrency": "allow",
                             "executor": {"type": "exec", "argv": ["true"]}})),
            )
            .unwrap();
        assert!(s == 200 || s == 201, "{b}");
    }
    let completed = |route: &str| {
        server
            .metric(&format!(
                "sundial_http_requests_total{{method=\"POST\",route=\"{route}\",status=\"200\"}}"
            ))
            .unwrap()
    };
    let runs = wait_for(Duration::from_secs(30), || {
        let v = server
            .metric("sundial_runs_completed_total{outcome=\"succeeded\"}")
            .ok()?;
        (v >= (4 * JOBS) as f64).then_some(v)
    })
    .expect("runs completed");
    let batched = completed("/v1/agent/complete");
    let single = completed("/v1/agent/runs/{id}/complete");
    println!("{runs} runs recorded with {batched} batch calls and {single} single calls");
    assert!(batched >= 1.0, "no batch call was made");
    assert!(
        batched + single < runs,
        "{batched} + {single} calls for {runs} runs: nothing was batched"
    );
    // Every slot ran once: no result recorded twice, none failed.
    let every = server.every_run().unwrap();
    let failed: Vec<_> = every
        .iter()
        .filter(|r| r["state"] == "failed" || r["attempt"].as_i64() != Some(1))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

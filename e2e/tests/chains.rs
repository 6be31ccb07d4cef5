//! Job chains with real processes: A (every second) → B → C. Each A slot
//! that succeeds gets exactly one B run and each B exactly one C, also
//! across a kill -9 of the server in the middle; B sees its upstream run as
//! `SUNDIAL_UPSTREAM_RUN_ID`; a cycle and an unknown upstream are refused.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use sundial_e2e::{wait_for, wait_quiet, DaemonProc, ServerProc};

#[test]
fn a_b_c_fire_once_per_upstream_slot_across_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&dir.path().join("data")).unwrap();
    let token = server.join_token().unwrap();
    let _daemon = DaemonProc::start(
        &server.base,
        &token,
        "n1",
        &dir.path().join("n1"),
        &["--capacity", "16"],
    )
    .unwrap();
    server.wait_for_a_node();

    let echo_upstream = json!({"type": "shell", "script": "echo \"up=$SUNDIAL_UPSTREAM_RUN_ID\""});
    let specs = [
        (
            "a",
            json!({"schedule": "*/1 * * * * *", "executor": {"type": "exec", "argv": ["true"]},
                     "misfire": {"policy": "skip"}, "history": {"keep": 1000}}),
        ),
        (
            "b",
            json!({"schedule": "@yearly", "executor": echo_upstream, "history": {"keep": 1000},
                     "after": [{"job": "a"}]}),
        ),
        (
            "c",
            json!({"schedule": "@yearly", "executor": {"type": "exec", "argv": ["true"]},
                     "history": {"keep": 1000}, "after": [{"job": "b", "on": ["succeeded"]}]}),
        ),
    ];
    for (id, spec) in &specs {
        let (status, body) = server
            .call("PUT", &format!("/v1/jobs/{id}"), Some(spec))
            .unwrap();
        assert_eq!(status, 201, "{id}: {body}");
    }
    // Refusals: a cycle, an unknown upstream.
    let mut cyclic = specs[0].1.clone();
    cyclic["after"] = json!([{"job": "c"}]);
    let (status, err) = server.call("PUT", "/v1/jobs/a", Some(&cyclic)).unwrap();
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["field"], "after[0].job");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a cycle"),
        "{err}"
    );
    let (status, err) = server
        .call(
            "PUT",
            "/v1/jobs/d",
            Some(&json!({"schedule": "@yearly",
            "executor": {"type": "exec", "argv": ["true"]}, "after": [{"job": "nope"}]})),
        )
        .unwrap();
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not exist"));

    let c_runs = |s: &ServerProc| s.all_runs("c").map(|r| r.len()).unwrap_or(0);
    wait_for(Duration::from_secs(20), || {
        (c_runs(&server) >= 2).then_some(())
    })
    .expect("the chain ran end to end");
    // kill -9 while the chain keeps running.
    server.kill9().unwrap();
    server.restart().unwrap();
    let before = c_runs(&server);
    wait_for(Duration::from_secs(20), || {
        (c_runs(&server) >= before + 2).then_some(())
    })
    .expect("the chain runs on after the restart");
    server.call("POST", "/v1/jobs/a/pause", None).unwrap();
    wait_quiet(&server, Duration::from_secs(30)).unwrap();

    let runs: HashMap<&str, Vec<Value>> = ["a", "b", "c"]
        .into_iter()
        .map(|j| (j, server.all_runs(j).unwrap()))
        .collect();
    // One downstream run per succeeded upstream run, pointing at it; none twice.
    for (up, down) in [("a", "b"), ("b", "c")] {
        let succeeded: Vec<i64> = runs[up]
            .iter()
            .filter(|r| r["state"] == "succeeded")
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        let mut by_upstream: HashMap<i64, usize> = HashMap::new();
        for r in &runs[down] {
            assert_eq!(r["trigger"], "chain", "{r}");
            *by_upstream
                .entry(r["upstream_run_id"].as_i64().unwrap())
                .or_default() += 1;
        }
        assert!(
            by_upstream.values().all(|n| *n == 1),
            "{down} doubled: {by_upstream:?}"
        );
        let mut ups: Vec<i64> = by_upstream.keys().copied().collect();
        ups.sort();
        assert_eq!(ups, succeeded, "{down}: one run per succeeded {up} run");
        assert!(
            succeeded.len() >= 4,
            "{up}: {} succeeded runs",
            succeeded.len()
        );
    }
    for r in &runs["b"] {
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(
            r["output"].as_str().unwrap().trim(),
            format!("up={}", r["upstream_run_id"]),
            "the job sees its upstream run"
        );
    }
    eprintln!(
        "chains: a {} runs, b {}, c {} (across a kill -9)",
        runs["a"].len(),
        runs["b"].len(),
        runs["c"].len()
    );
}

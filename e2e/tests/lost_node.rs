//! Acceptance: kill -9 a daemon mid-run. Its attempt becomes lost when the
//! lease expires and is retried on another eligible node; a `forbid` job never
//! has two attempts running at once, before, during or after the kill.

use serde_json::json;
use std::time::{Duration, Instant};
use sundial_e2e::{wait_for, DaemonProc, ServerProc};

#[test]
fn killed_daemon_runs_are_retried_elsewhere_and_forbid_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start_args(&dir.path().join("data"), &["--lease", "2s"]).unwrap();
    let token = server.join_token().unwrap();
    let mut daemons: Vec<DaemonProc> = ["n1", "n2"]
        .iter()
        .map(|id| {
            DaemonProc::start(
                &server.base,
                &token,
                id,
                &dir.path().join(id),
                &["--labels", "role=worker"],
            )
            .unwrap()
        })
        .collect();
    wait_for(Duration::from_secs(20), || {
        let (_, nodes) = server.call("GET", "/v1/nodes", None).ok()?;
        (nodes["items"]
            .as_array()?
            .iter()
            .filter(|n| n["labels"]["role"] == "worker")
            .count()
            == 2)
            .then_some(())
    })
    .expect("two daemons registered");

    let slow = json!({"schedule": "0 0 0 1 1 *", "target": {"labels": {"role": "worker"}},
        "retries": {"max": 2, "backoff": "1s", "max_backoff": "2s"},
        "executor": {"type": "shell", "script": "sleep 3; echo done on $SUNDIAL_NODE_ID attempt $SUNDIAL_ATTEMPT"}});
    let forbid = json!({"schedule": "*/1 * * * * *", "concurrency": "forbid",
        "target": {"labels": {"role": "worker"}}, "retries": {"max": 1, "backoff": "1s"},
        "executor": {"type": "shell", "script": "sleep 2.5"}});
    assert_eq!(
        server.call("PUT", "/v1/jobs/slow", Some(&slow)).unwrap().0,
        201
    );
    assert_eq!(
        server
            .call("PUT", "/v1/jobs/forbid", Some(&forbid))
            .unwrap()
            .0,
        201
    );
    let (status, run) = server.call("POST", "/v1/jobs/slow/trigger", None).unwrap();
    assert_eq!(status, 201, "{run}");
    let run_id = run["id"].as_i64().unwrap();

    // Watch the forbid job the whole time: never two attempts running.
    let mut max_running = 0;
    let mut check_forbid = |server: &ServerProc| {
        let (_, page) = server
            .call("GET", "/v1/runs?job=forbid&state=running", None)
            .unwrap();
        let n = page["items"].as_array().unwrap().len();
        max_running = max_running.max(n);
        assert!(n <= 1, "forbid job has {n} attempts running: {page}");
    };

    let first_node = wait_for(Duration::from_secs(10), || {
        check_forbid(&server);
        let (_, r) = server
            .call("GET", &format!("/v1/runs/{run_id}"), None)
            .ok()?;
        (r["state"] == "running").then(|| r["node"].as_str().map(str::to_string))?
    })
    .expect("the slow run started");
    let victim = daemons
        .iter_mut()
        .find(|d| d.node_id == first_node)
        .unwrap();
    victim.kill9().unwrap();
    let killed = Instant::now();
    let survivor = if first_node == "n1" { "n2" } else { "n1" };

    let done = wait_for(Duration::from_secs(30), || {
        check_forbid(&server);
        let (_, r) = server
            .call("GET", &format!("/v1/runs/{run_id}"), None)
            .ok()?;
        (r["state"] == "succeeded").then_some(r)
    })
    .unwrap_or_else(|| {
        let (_, r) = server
            .call("GET", &format!("/v1/runs/{run_id}"), None)
            .unwrap();
        panic!(
            "the lost run was not retried to success: {r}\nserver log:\n{}",
            server.log_text()
        )
    });
    eprintln!(
        "run {run_id}: killed on {first_node}, finished after {:?}: {done}",
        killed.elapsed()
    );
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["node"], survivor);
    assert_eq!(done["output"], format!("done on {survivor} attempt 2\n"));
    assert!(server.metric("sundial_lease_expiries_total").unwrap() >= 1.0);

    // Keep watching the forbid job a little longer, then check it skipped overlapping slots.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        check_forbid(&server);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, skipped) = server
        .call("GET", "/v1/runs?job=forbid&state=skipped", None)
        .unwrap();
    assert!(
        !skipped["items"].as_array().unwrap().is_empty(),
        "forbid skipped nothing"
    );
    assert_eq!(max_running, 1, "the forbid job was observed running");
}

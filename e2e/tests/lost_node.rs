//! Acceptance: kill -9 a daemon mid-run. Its attempt becomes lost when the
//! lease expires and is retried on another eligible node; a `forbid` job never
//! has two attempts running at once, before, during or after the kill.

use serde_json::{json, Value};
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

/// A broadcast slot's run belongs to one node: when that node is gone, no
/// other may take it. Cancelled, it leaves the dispatch queue (and the
/// oldest wait) at once; once its node is revoked it ends `lost` by itself,
/// which ends the slot and starts its chained follower.
#[test]
fn a_broadcast_run_whose_node_is_gone_ends_and_leaves_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let token = server.join_token().unwrap();
    let mut daemons: Vec<DaemonProc> = ["n1", "n2"]
        .iter()
        .map(|id| {
            let labels = ["--labels", "role=cast"];
            DaemonProc::start(&server.base, &token, id, &dir.path().join(id), &labels).unwrap()
        })
        .collect();
    wait_for(Duration::from_secs(20), || {
        let (_, nodes) = server.call("GET", "/v1/nodes", None).ok()?;
        let items = nodes["items"].as_array()?;
        (items
            .iter()
            .filter(|n| n["labels"]["role"] == "cast")
            .count()
            == 2)
            .then_some(())
    })
    .expect("two daemons registered");
    let cast = json!({"schedule": "0 0 0 1 1 *", "target": {"labels": {"role": "cast"}, "all": true},
        "executor": {"type": "shell", "script": "echo hi"}});
    let after = json!({"schedule": "0 0 0 1 1 *", "after": [{"job": "cast", "on": ["lost"]}],
        "executor": {"type": "shell", "script": "echo after"}});
    for (id, spec) in [("cast", &cast), ("after", &after)] {
        let (status, body) = server
            .call("PUT", &format!("/v1/jobs/{id}"), Some(spec))
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    // n2 stops; it counts as live for two minutes, so each trigger makes it a run.
    daemons[1].kill9().unwrap();
    let trigger = || {
        let (status, body) = server.call("POST", "/v1/jobs/cast/trigger", None).unwrap();
        assert_eq!(status, 201, "{body}");
        let runs = server.all_runs("cast").unwrap();
        runs.iter()
            .filter(|r| r["node"] == "n2" && r["state"] == "pending")
            .filter_map(|r| r["id"].as_i64())
            .max()
            .unwrap_or_else(|| panic!("n2 has no pending run: {runs:?}"))
    };
    let oldest_wait = || {
        server
            .metric("sundial_dispatch_oldest_wait_seconds")
            .unwrap()
    };
    let waits = |want_zero: bool| {
        wait_for(Duration::from_secs(10), || {
            ((oldest_wait() == 0.0) == want_zero).then_some(())
        })
        .is_some()
    };

    let first = trigger();
    assert!(waits(false), "n2's run waits for n2");
    let (status, run) = server
        .call("POST", &format!("/v1/runs/{first}/cancel"), None)
        .unwrap();
    assert_eq!((status, &run["state"]), (200, &json!("cancelled")), "{run}");
    assert_eq!(oldest_wait(), 0.0, "the cancelled run left the queue");

    let second = trigger();
    assert!(waits(false), "n2's second run waits for n2");
    let (status, _) = server.call("DELETE", "/v1/nodes/n2", None).unwrap();
    assert_eq!(status, 204);
    let lost = wait_for(Duration::from_secs(10), || {
        let (_, r) = server
            .call("GET", &format!("/v1/runs/{second}"), None)
            .ok()?;
        (r["state"] == "lost").then_some(r)
    })
    .unwrap_or_else(|| panic!("n2's run did not end\n{}", server.log_text()));
    let error = lost["error"].as_str().unwrap();
    assert!(error.contains(r#"node "n2" was revoked"#), "{lost}");
    assert!(waits(true), "the lost run left the queue");
    // The slot ended (n1's run succeeded, n2's was lost): its follower ran.
    let follower = wait_for(Duration::from_secs(20), || {
        let runs = server.all_runs("after").ok()?;
        let r = runs.first()?;
        (r["state"] == "succeeded").then(|| r.clone())
    })
    .expect("the chained follower ran");
    assert_eq!(follower["trigger"], "chain", "{follower}");
    let (_, events) = server
        .call("GET", "/v1/events?type=run.lost", None)
        .unwrap();
    let lost_events: Vec<&Value> = events["items"].as_array().unwrap().iter().collect();
    assert_eq!(lost_events.len(), 1, "{events}");
    assert_eq!(lost_events[0]["run_id"], second);
}

/// A frozen daemon (SIGSTOP: its process and its open long-poll stay) lets
/// its attempt's lease expire: the retry goes to another node, never into
/// the poll the frozen one left parked on the server.
#[test]
fn a_retry_never_goes_to_the_frozen_node_that_lost_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start_args(&dir.path().join("data"), &["--lease", "3s"]).unwrap();
    let token = server.join_token().unwrap();
    let mut daemons: Vec<DaemonProc> = ["n1", "n2"]
        .iter()
        .map(|id| {
            let dir = dir.path().join(id);
            DaemonProc::start(&server.base, &token, id, &dir, &["--capacity", "4"]).unwrap()
        })
        .collect();
    wait_for(Duration::from_secs(20), || {
        let (_, nodes) = server.call("GET", "/v1/nodes", None).ok()?;
        (nodes["items"].as_array()?.len() == 2).then_some(())
    })
    .expect("two daemons registered");
    let job = json!({"schedule": "0 0 0 1 1 *",
        "retries": {"max": 1, "backoff": "1s", "max_backoff": "1s"},
        "executor": {"type": "shell", "script": "sleep 4; echo done on $SUNDIAL_NODE_ID"}});
    server.put_job("freeze", &job).unwrap();
    let run_id = server.trigger("freeze").unwrap();
    let first = wait_for(Duration::from_secs(10), || {
        let (_, r) = server
            .call("GET", &format!("/v1/runs/{run_id}"), None)
            .ok()?;
        (r["state"] == "running").then(|| r["node"].as_str().map(str::to_string))?
    })
    .expect("the run started");
    // Its daemon has capacity left, so a poll of it is parked on the server.
    std::thread::sleep(Duration::from_millis(500));
    let frozen = daemons.iter_mut().find(|d| d.node_id == first).unwrap();
    let pid = frozen.pid().unwrap().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let done = wait_for(Duration::from_secs(30), || {
        let (_, r) = server
            .call("GET", &format!("/v1/runs/{run_id}"), None)
            .ok()?;
        (!matches!(r["state"].as_str(), Some("pending" | "running"))).then_some(r)
    });
    signal("-CONT");
    let done = done.unwrap_or_else(|| panic!("the run never ended:\n{}", server.log_text()));
    let other = if first == "n1" { "n2" } else { "n1" };
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["node"], other, "{done}");
}

/// A revoked node stops its running attempt at its next heartbeat (the
/// server retries the run elsewhere once the lease expires; running on
/// would run it twice).
#[test]
fn a_revoked_daemon_stops_its_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start_args(&dir.path().join("data"), &["--lease", "3s"]).unwrap();
    let daemon = server.one_daemon(dir.path()).unwrap();
    let marker = dir.path().join("finished");
    let job = json!({"schedule": "0 0 0 1 1 *",
        "executor": {"type": "shell", "script": format!("sleep 6; touch {}", marker.display())}});
    server.put_job("long", &job).unwrap();
    let run_id = server.trigger("long").unwrap();
    wait_for(Duration::from_secs(10), || {
        let (_, r) = server
            .call("GET", &format!("/v1/runs/{run_id}"), None)
            .ok()?;
        (r["state"] == "running").then_some(())
    })
    .expect("the run started");
    let (status, body) = server.call("DELETE", "/v1/nodes/n1", None).unwrap();
    assert_eq!(status, 204, "{body}");
    wait_for(Duration::from_secs(5), || {
        daemon
            .log_text()
            .contains("this node was revoked: stopping the run")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the daemon did not stop the run:\n{}", daemon.log_text()));
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        !marker.exists(),
        "the job ran to its end after the revocation"
    );
}

//! Acceptance: kill -9 the server under load and restart it. Daemons spool
//! the results they could not deliver and send them on reconnect: no
//! completed result is lost and no slot is created twice.

use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use sundial_e2e::{wait_for, wait_quiet, DaemonProc, ServerProc};

#[test]
fn server_kill9_under_load_loses_no_result_and_repeats_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start_args(&dir.path().join("data"), &["--lease", "3s"]).unwrap();
    let token = server.join_token().unwrap();
    let mut daemons: Vec<DaemonProc> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| {
            DaemonProc::start(
                &server.base,
                &token,
                id,
                &dir.path().join(id),
                &["--capacity", "16"],
            )
            .unwrap()
        })
        .collect();
    wait_for(Duration::from_secs(20), || {
        let (_, nodes) = server.call("GET", "/v1/nodes", None).ok()?;
        (nodes["items"].as_array()?.len() == 3).then_some(())
    })
    .expect("three daemons joined");
    let ids: Vec<String> = (0..30).map(|i| format!("load-{i}")).collect();
    for id in &ids {
        let spec = json!({"schedule": "*/1 * * * * *", "retries": {"max": 3, "backoff": "1s"},
            "executor": {"type": "shell", "script": "sleep 0.7; echo $SUNDIAL_RUN_ID"}});
        assert_eq!(
            server
                .call("PUT", &format!("/v1/jobs/{id}"), Some(&spec))
                .unwrap()
                .0,
            201
        );
    }
    std::thread::sleep(Duration::from_millis(3000));
    // Mid-second, with runs in flight on every daemon: each second's runs
    // start on the second and sleep 0.7 s, so a kill between 0.7 s and the
    // next hand-out (0.9 s) would find none running and spool nothing.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into_second = u64::from(now.subsec_millis());
    std::thread::sleep(Duration::from_millis((1_350 - into_second) % 1_000));
    server.kill9().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let spooled: usize = daemons.iter().map(DaemonProc::spooled).sum();
    eprintln!("results spooled while the server was down: {spooled}");
    assert!(
        spooled > 0,
        "no result was spooled; the test did not exercise the spool"
    );
    server.restart().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for id in &ids {
        assert_eq!(
            server
                .call("POST", &format!("/v1/jobs/{id}/pause"), None)
                .unwrap()
                .0,
            200
        );
    }
    let runs = wait_quiet(&server, Duration::from_secs(60)).unwrap();
    let mut slots = HashSet::new();
    for r in &runs {
        let key = (
            r["job_id"].to_string(),
            r["scheduled_for"].to_string(),
            r["node"].to_string(),
        );
        assert!(
            slots.insert((r["job_id"].to_string(), r["scheduled_for"].to_string())),
            "slot twice: {key:?}"
        );
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(r["output"], format!("{}\n", r["id"]), "{r}");
    }
    wait_for(Duration::from_secs(20), || {
        (daemons.iter().map(DaemonProc::spooled).sum::<usize>() == 0).then_some(())
    })
    .expect("every spool drained");
    let delivered = daemons
        .iter()
        .map(|d| d.log_text().matches("spooled result delivered").count())
        .sum::<usize>();
    eprintln!(
        "{} runs, {} slots, {delivered} spooled results delivered",
        runs.len(),
        slots.len()
    );
    assert!(delivered >= spooled.min(1));
    for d in daemons.iter_mut() {
        assert_eq!(d.terminate(Duration::from_secs(20)).unwrap(), Some(0));
    }
}

/// A result spooled during a long outage reaches the restarted server
/// within its renewed lease (the spool retries at the heartbeat cadence,
/// and at once when a poll gets through): the run that succeeded is
/// recorded as such, not `lost`.
#[test]
fn a_result_spooled_through_a_long_outage_arrives_within_the_renewed_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start_args(&dir.path().join("data"), &["--lease", "3s"]).unwrap();
    let mut daemon = server.one_daemon(dir.path()).unwrap();
    let spec = json!({"schedule": "0 0 0 1 1 *",
        "executor": {"type": "shell", "script": "sleep 2; echo ok"}});
    let (status, _) = server.call("PUT", "/v1/jobs/slow", Some(&spec)).unwrap();
    assert_eq!(status, 201);
    let (status, run) = server.call("POST", "/v1/jobs/slow/trigger", None).unwrap();
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_i64().unwrap();
    wait_for(Duration::from_secs(10), || {
        let (_, r) = server.call("GET", &format!("/v1/runs/{id}"), None).ok()?;
        (r["state"] == "running").then_some(())
    })
    .expect("the run started");
    server.kill9().unwrap();
    // Long enough for the daemon's backoffs to grow past the lease.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(daemon.spooled(), 1, "the result waits in the spool");
    server.restart().unwrap();
    let done = wait_for(Duration::from_secs(20), || {
        let (_, r) = server.call("GET", &format!("/v1/runs/{id}"), None).ok()?;
        r["state"]
            .as_str()
            .is_some_and(|s| s != "running")
            .then_some(r)
    })
    .expect("the run ended");
    assert_eq!(done["state"], "succeeded", "{done}\n{}", daemon.log_text());
    assert_eq!(done["output"], "ok\n");
    assert_eq!(daemon.terminate(Duration::from_secs(20)).unwrap(), Some(0));
}

/// After an outage the daemon delivers the results it spooled before it
/// asks for new work: a `forbid` job's next slot, handed to it, is not
/// skipped as if the run that finished during the outage still ran.
#[test]
fn spooled_results_go_before_new_work_so_forbid_skips_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&dir.path().join("data")).unwrap();
    let mut daemon = server.one_daemon(dir.path()).unwrap();
    // Slots far enough apart that at most one waits when the daemon is
    // back (slots that wait together are handed out together, and forbid
    // rightly skips all but the first).
    let spec = json!({"schedule": "*/15 * * * * *", "concurrency": "forbid",
        "misfire": {"policy": "skip"},
        "executor": {"type": "shell", "script": "sleep 1; echo ok"}});
    let (status, _) = server.call("PUT", "/v1/jobs/f", Some(&spec)).unwrap();
    assert_eq!(status, 201);
    wait_for(Duration::from_secs(20), || {
        let (_, page) = server
            .call("GET", "/v1/runs?job=f&state=running", None)
            .ok()?;
        (!page["items"].as_array()?.is_empty()).then_some(())
    })
    .expect("a run started");
    server.kill9().unwrap();
    // Long enough for the daemon's retry backoffs to grow.
    std::thread::sleep(Duration::from_secs(14));
    assert_eq!(daemon.spooled(), 1, "the finished run's result waits");
    server.restart().unwrap();
    let restarted = sundial_proto::time::now_ms();
    // The first slot after the restart runs: it is not skipped.
    let after: Vec<serde_json::Value> = wait_for(Duration::from_secs(40), || {
        let runs = server.all_runs("f").ok()?;
        let later: Vec<_> = runs
            .into_iter()
            .filter(|r| sundial_e2e::ms(r, "scheduled_for") > restarted)
            .filter(|r| r["state"] != "pending" && r["state"] != "running")
            .collect();
        (!later.is_empty()).then_some(later)
    })
    .expect("a slot after the restart ended");
    for r in &after {
        assert_eq!(r["state"], "succeeded", "{r}\n{}", daemon.log_text());
    }
    assert_eq!(daemon.terminate(Duration::from_secs(20)).unwrap(), Some(0));
}

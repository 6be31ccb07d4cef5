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

//! Overdue alerts (a dead-man's switch) with real processes: a job with
//! `alert.overdue_after` and no successful run gets exactly one
//! `job.overdue`, also across a kill -9 of the server, and exactly one
//! `job.recovered` when a run succeeds.

use serde_json::{json, Value};
use std::time::Duration;
use sundial_e2e::{wait_for, DaemonProc, ServerProc};

fn events(server: &ServerProc, kind: &str) -> Vec<Value> {
    let (status, page) = server
        .call(
            "GET",
            &format!("/v1/events?type={kind}&job=watched&limit=1000"),
            None,
        )
        .unwrap();
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

#[test]
fn overdue_fires_once_survives_a_restart_and_recovers_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&dir.path().join("data")).unwrap();
    let token = server.join_token().unwrap();
    let _daemon =
        DaemonProc::start(&server.base, &token, "n1", &dir.path().join("n1"), &[]).unwrap();
    let spec = json!({"schedule": "@yearly", "executor": {"type": "exec", "argv": ["true"]},
                      "alert": {"overdue_after": "2s"}});
    assert_eq!(
        server
            .call("PUT", "/v1/jobs/watched", Some(&spec))
            .unwrap()
            .0,
        201
    );
    let (status, bad) = server
        .call(
            "PUT",
            "/v1/jobs/bad",
            Some(&json!({"schedule": "@yearly",
            "executor": {"type": "exec", "argv": ["true"]}, "alert": {"overdue_after": "10ms"}})),
        )
        .unwrap();
    assert_eq!(
        (status, bad["error"]["field"].as_str()),
        (400, Some("alert.overdue_after"))
    );

    let overdue = wait_for(Duration::from_secs(10), || {
        let e = events(&server, "job.overdue");
        (!e.is_empty()).then_some(e)
    })
    .expect("job.overdue within 10 s");
    assert_eq!(overdue[0]["data"]["overdue_after"], "2s", "{overdue:?}");
    let (_, job) = server.call("GET", "/v1/jobs/watched", None).unwrap();
    assert!(job["counters"]["overdue_since"].is_string(), "{job}");
    // Still overdue a while later, and after a kill -9: no second alert.
    std::thread::sleep(Duration::from_secs(3));
    server.kill9().unwrap();
    server.restart().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        events(&server, "job.overdue").len(),
        1,
        "overdue fired again"
    );

    // A successful run recovers it, once.
    server.wait_for_a_node();
    server
        .call("POST", "/v1/jobs/watched/trigger", None)
        .unwrap();
    let recovered = wait_for(Duration::from_secs(20), || {
        let e = events(&server, "job.recovered");
        (!e.is_empty()).then_some(e)
    })
    .expect("job.recovered after a success");
    assert_eq!(recovered.len(), 1);
    assert!(
        recovered[0]["data"]["run_id"].as_i64().is_some(),
        "{recovered:?}"
    );
    let (_, job) = server.call("GET", "/v1/jobs/watched", None).unwrap();
    assert!(job["counters"].get("overdue_since").is_none(), "{job}");
    assert!(job["counters"]["last_success_at"].is_string(), "{job}");
    eprintln!("overdue: 1 alert across a kill -9, 1 recovery");
}

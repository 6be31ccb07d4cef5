//! Acceptance: a timeout kills a job and every process it started (no orphan
//! survives); output over the cap is truncated and flagged.

use serde_json::json;
use std::time::Duration;
use sundial_e2e::{wait_for, DaemonProc, ServerProc};

fn alive(pid: i32) -> bool {
    // A zombie waiting for its reaper is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn timeout_kills_the_process_tree_and_output_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let token = server.join_token().unwrap();
    let _daemon = DaemonProc::start(
        &server.base,
        &token,
        "n1",
        &dir.path().join("n1"),
        &["--output-cap-bytes", "1000", "--kill-grace", "500ms"],
    )
    .unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let yearly = "0 0 0 1 1 *";
    let spawner = json!({"schedule": yearly, "timeout": "1s", "executor": {"type": "shell",
        "script": format!("sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 60' & echo started; wait", pidfile.display())}});
    let chatty = json!({"schedule": yearly, "executor": {"type": "shell",
        "script": "head -c 100000 /dev/zero | tr '\\0' x"}});
    assert_eq!(
        server
            .call("PUT", "/v1/jobs/spawner", Some(&spawner))
            .unwrap()
            .0,
        201
    );
    assert_eq!(
        server
            .call("PUT", "/v1/jobs/chatty", Some(&chatty))
            .unwrap()
            .0,
        201
    );
    server.wait_for_a_node();
    let (_, a) = server
        .call("POST", "/v1/jobs/spawner/trigger", None)
        .unwrap();
    let (_, b) = server
        .call("POST", "/v1/jobs/chatty/trigger", None)
        .unwrap();
    let finished = |id: &serde_json::Value| {
        let id = id.as_i64().unwrap();
        wait_for(Duration::from_secs(20), || {
            let (_, r) = server.call("GET", &format!("/v1/runs/{id}"), None).ok()?;
            (r["state"] != "pending" && r["state"] != "running").then_some(r)
        })
        .expect("run finished")
    };
    let timed_out = finished(&a["id"]);
    assert_eq!(timed_out["state"], "timed_out", "{timed_out}");
    assert_eq!(timed_out["output"], "started\n");
    assert_eq!(timed_out["error"], "timed out after 1s");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = wait_for(Duration::from_secs(5), || (!alive(pid)).then_some(()));
    assert!(
        gone.is_some(),
        "grandchild {pid} (ignoring SIGTERM) survived the timeout"
    );

    let capped = finished(&b["id"]);
    assert_eq!(capped["state"], "succeeded", "{capped}");
    assert_eq!(capped["truncated"], true);
    assert_eq!(capped["output"].as_str().unwrap().len(), 1000);
}

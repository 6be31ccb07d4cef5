//! Concurrency and edits on the way to a node: runs queued under a job's
//! old target follow the new one (through `PUT /v1/jobs/{id}` and bulk
//! apply alike), a `concurrency: replace` backlog handed out together starts
//! only its newest run, and a broadcast slot's runs are judged per node,
//! waited for together and, when no node can take them, explained.

use serde_json::{json, Value};
use std::time::Duration;
use sundial_e2e::{wait_for, DaemonProc, ServerProc};

fn job(target: Value, concurrency: &str) -> Value {
    json!({"schedule": "0 0 0 1 1 *", "target": target, "concurrency": concurrency,
        "executor": {"type": "shell", "script": "sleep 1; echo ran on $SUNDIAL_NODE_ID"}})
}

fn run(server: &ServerProc, id: i64) -> Value {
    server
        .call("GET", &format!("/v1/runs/{id}"), None)
        .unwrap()
        .1
}

/// Waits for every run in `ids` to end; returns them.
fn ended(server: &ServerProc, ids: &[i64]) -> Vec<Value> {
    wait_for(Duration::from_secs(20), || {
        let runs: Vec<Value> = ids.iter().map(|id| run(server, *id)).collect();
        runs.iter()
            .all(|r| !matches!(r["state"].as_str(), Some("pending" | "running")))
            .then_some(runs)
    })
    .unwrap_or_else(|| {
        let runs: Vec<Value> = ids.iter().map(|id| run(server, *id)).collect();
        panic!(
            "runs did not end: {runs:?}\nserver log:\n{}",
            server.log_text()
        )
    })
}

/// A server with daemons n1 and n2, and n3, which runs exec jobs only.
fn cluster(dir: &std::path::Path) -> (ServerProc, Vec<DaemonProc>) {
    let server = ServerProc::start(&dir.join("data")).unwrap();
    let token = server.join_token().unwrap();
    let flags: [&[&str]; 3] = [
        &[],
        &[],
        &["--allow-executors", "exec", "--labels", "role=narrow"],
    ];
    let daemons: Vec<DaemonProc> = ["n1", "n2", "n3"]
        .iter()
        .zip(flags)
        .map(|(id, f)| DaemonProc::start(&server.base, &token, id, &dir.join(id), f).unwrap())
        .collect();
    wait_for(Duration::from_secs(20), || {
        let (_, nodes) = server.call("GET", "/v1/nodes", None).ok()?;
        (nodes["items"].as_array()?.len() == 3).then_some(())
    })
    .expect("the daemons registered");
    (server, daemons)
}

#[test]
fn waiting_runs_follow_an_edited_target_and_a_replace_backlog_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _daemons) = cluster(dir.path());

    // Runs created while the jobs name a node that does not exist.
    let nowhere = json!({"nodes": ["nope"]});
    for id in ["edited", "applied"] {
        server.put_job(id, &job(nowhere.clone(), "allow")).unwrap();
    }
    server
        .put_job("backlog", &job(nowhere.clone(), "replace"))
        .unwrap();
    let edited = server.trigger("edited").unwrap();
    let applied = server.trigger("applied").unwrap();
    let backlog: Vec<i64> = (0..3).map(|_| server.trigger("backlog").unwrap()).collect();
    std::thread::sleep(Duration::from_millis(1500));
    for id in [edited, applied].iter().chain(&backlog) {
        assert_eq!(
            run(&server, *id)["state"],
            "pending",
            "no node may take run {id}"
        );
    }

    // One job edited alone, one through bulk apply: their waiting runs run.
    let there = json!({"nodes": ["n1"]});
    server
        .put_job("edited", &job(there.clone(), "allow"))
        .unwrap();
    let mut doc = job(there.clone(), "allow");
    doc["id"] = json!("applied");
    let (status, body) = server
        .call("POST", "/v1/jobs:apply", Some(&json!({"jobs": [doc]})))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plan"][0]["changes"], json!(["target"]), "{body}");
    for r in ended(&server, &[edited, applied]) {
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(r["node"], "n1", "{r}");
    }

    // The replace job's three waiting runs are handed out together: the
    // newest runs, the two it would replace at once end cancelled.
    server.put_job("backlog", &job(there, "replace")).unwrap();
    let runs = ended(&server, &backlog);
    let states: Vec<&str> = runs.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["cancelled", "cancelled", "succeeded"], "{runs:?}");
    for r in &runs[..2] {
        let error = r["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("replaced: "), "{r}");
        assert!(
            r["started_at"].is_null(),
            "a replaced run never started: {r}"
        );
    }
}

#[test]
fn a_broadcast_slot_is_judged_per_node_waited_for_whole_and_explained_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _daemons) = cluster(dir.path());

    // A broadcast no node can take says why: none live, or none allowing
    // the executor.
    for (labels, why) in [
        ("nobody", "none is live"),
        (
            "narrow",
            "1 live node(s) match its target but none allows the shell executor",
        ),
    ] {
        let spec = json!({"schedule": "0 0 0 1 1 *", "target": {"all": true, "labels": {"role": labels}},
            "executor": {"type": "shell", "script": "true"}});
        let id = format!("cast-{labels}");
        server.put_job(&id, &spec).unwrap();
        let (status, body) = server
            .call("POST", &format!("/v1/jobs/{id}/trigger"), None)
            .unwrap();
        assert_eq!(status, 409, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{body}");
    }
    // Fired on its schedule, it makes no run either: counted and logged.
    let every = json!({"schedule": "@every 1s", "target": {"all": true, "labels": {"role": "nobody"}},
        "executor": {"type": "shell", "script": "true"}});
    server.put_job("cast-every", &every).unwrap();
    wait_for(Duration::from_secs(10), || {
        (server.metric("sundial_broadcast_slots_empty_total").ok()? >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no empty broadcast counted:\n{}", server.log_text()));
    assert!(server.log_text().contains("no run made"));
    let (status, _) = server.call("DELETE", "/v1/jobs/cast-every", None).unwrap();
    assert_eq!(status, 204);

    // A broadcast `forbid` slot runs on both nodes at once: a node's run
    // is judged against that node's runs, not its sibling's.
    let cast = json!({"schedule": "0 0 0 1 1 *", "target": {"all": true}, "concurrency": "forbid",
        "executor": {"type": "shell", "script": "sleep 2"}});
    server.put_job("cast", &cast).unwrap();
    server.trigger("cast").unwrap();
    let ids: Vec<i64> = server
        .all_runs("cast")
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "n1 and n2 (n3 runs no shell job): {ids:?}");
    let mut nodes: Vec<String> = ended(&server, &ids)
        .iter()
        .map(|r| {
            assert_eq!(r["state"], "succeeded", "{r}");
            r["node"].as_str().unwrap().to_owned()
        })
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2"]);

    // `sundial jobs trigger --wait` of a broadcast job waits for every
    // node's run and exits with the slot's outcome: n2's exit code 7.
    let split = json!({"schedule": "0 0 0 1 1 *", "target": {"all": true, "nodes": ["n1", "n2"]},
        "executor": {"type": "shell", "script": "echo on $SUNDIAL_NODE_ID; [ $SUNDIAL_NODE_ID = n2 ] && { sleep 1; exit 7; }; exit 0"}});
    server.put_job("split", &split).unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(sundial_e2e::binary("sundial").unwrap())
            .args(args)
            .env("SUNDIAL_URL", &server.base)
            .env("SUNDIAL_KEY", sundial_e2e::ADMIN_KEY)
            .env("SUNDIAL_CLI_CONFIG", dir.path().join("cli.toml"))
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let o = cli(&["jobs", "trigger", "split", "--wait", "--timeout", "30"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(7), "{stdout}{stderr}");
    assert!(
        stdout.contains("on n1\n") && stdout.contains("on n2\n"),
        "{stdout}"
    );
    assert!(stderr.contains(" on n2 failed (exit code 7)"), "{stderr}");
    let o = cli(&["jobs", "trigger", "split", "--wait", "-o", "json"]);
    assert_eq!(o.status.code(), Some(7));
    let slot: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(slot.len(), 2, "{slot:?}");
}

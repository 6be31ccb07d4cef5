//! Acceptance: three daemons with different labels, 200 jobs mixing targets
//! (any node, label selector, node list, broadcast) and executors (exec,
//! shell, http): every slot runs exactly once per target node, with the right
//! output and exit code.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use sundial_e2e::{wait_for, wait_quiet, DaemonProc, EchoHttp, ServerProc};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Any,
    Fail,
    Workers,
    OnlyN1,
    Broadcast,
}

fn jobs(http_port: u16) -> Vec<(String, Kind, Value)> {
    let every = "*/2 * * * * *";
    let mut out = Vec::new();
    for i in 0..60 {
        let id = format!("any-{i}");
        let spec =
            json!({"schedule": every, "executor": {"type": "exec", "argv": ["/bin/echo", id]}});
        out.push((id, Kind::Any, spec));
    }
    for i in 0..10 {
        let spec = json!({"schedule": every, "executor": {"type": "shell", "script": "echo boom; exit 3"}});
        out.push((format!("fail-{i}"), Kind::Fail, spec));
    }
    for i in 0..50 {
        let spec = json!({"schedule": every, "target": {"labels": {"role": "worker"}},
            "executor": {"type": "shell", "script": "echo \"$SUNDIAL_JOB_ID@$SUNDIAL_NODE_ID\""}});
        out.push((format!("workers-{i}"), Kind::Workers, spec));
    }
    for i in 0..40 {
        let id = format!("n1-{i}");
        let spec = json!({"schedule": every, "target": {"nodes": ["n1"]},
            "executor": {"type": "http", "url": format!("http://127.0.0.1:{http_port}/{id}")}});
        out.push((id, Kind::OnlyN1, spec));
    }
    for i in 0..40 {
        let spec = json!({"schedule": every, "target": {"labels": {"role": "worker"}, "all": true},
            "executor": {"type": "shell", "script": "echo $SUNDIAL_NODE_ID"}});
        out.push((format!("bcast-{i}"), Kind::Broadcast, spec));
    }
    assert_eq!(out.len(), 200);
    out
}

#[test]
fn two_hundred_jobs_run_exactly_once_per_target_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let echo = EchoHttp::start().unwrap();
    let token = server.join_token().unwrap();
    let labels = [
        ("n1", "role=web"),
        ("n2", "role=worker,zone=a"),
        ("n3", "role=worker,zone=b"),
    ];
    let mut daemons: Vec<DaemonProc> = labels
        .iter()
        .map(|(id, l)| {
            DaemonProc::start(
                &server.base,
                &token,
                id,
                &dir.path().join(id),
                &["--labels", l, "--capacity", "16"],
            )
            .unwrap()
        })
        .collect();
    wait_for(Duration::from_secs(20), || {
        let (_, nodes) = server.call("GET", "/v1/nodes", None).ok()?;
        let ready = nodes["items"]
            .as_array()?
            .iter()
            .filter(|n| {
                n["status"] == "ready" && n["labels"].as_object().is_some_and(|l| !l.is_empty())
            })
            .count();
        (ready == 3).then_some(())
    })
    .expect("three daemons registered");

    let jobs = jobs(echo.port);
    for (id, _, spec) in &jobs {
        let (status, body) = server
            .call("PUT", &format!("/v1/jobs/{id}"), Some(spec))
            .unwrap();
        assert_eq!(status, 201, "{id}: {body}");
    }
    std::thread::sleep(Duration::from_secs(5));
    for (id, ..) in &jobs {
        let (status, _) = server
            .call("POST", &format!("/v1/jobs/{id}/pause"), None)
            .unwrap();
        assert_eq!(status, 200);
    }
    let runs = wait_quiet(&server, Duration::from_secs(60)).unwrap();

    let kinds: BTreeMap<&str, Kind> = jobs.iter().map(|(id, k, _)| (id.as_str(), *k)).collect();
    let mut slots: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for r in &runs {
        slots
            .entry((
                r["job_id"].as_str().unwrap().to_string(),
                r["scheduled_for"].as_str().unwrap().to_string(),
            ))
            .or_default()
            .push(r);
    }
    let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
    for ((job, at), rs) in &slots {
        let kind = kinds[job.as_str()];
        *per_kind.entry(format!("{kind:?}")).or_default() += rs.len();
        let nodes: Vec<&str> = rs
            .iter()
            .map(|r| r["node"].as_str().unwrap_or("?"))
            .collect();
        match kind {
            Kind::Broadcast => {
                let set: BTreeSet<&str> = nodes.iter().copied().collect();
                assert_eq!(nodes.len(), 2, "{job}@{at}: broadcast runs {nodes:?}");
                assert_eq!(set, BTreeSet::from(["n2", "n3"]), "{job}@{at}");
            }
            _ => assert_eq!(rs.len(), 1, "{job}@{at}: {} runs for one slot", rs.len()),
        }
        for r in rs {
            let node = r["node"].as_str().unwrap();
            let output = r["output"].as_str().unwrap_or("");
            assert_eq!(r["attempt"], 1, "{r}");
            match kind {
                Kind::Any => {
                    assert_eq!(r["state"], "succeeded", "{r}");
                    assert_eq!(r["exit_code"], 0);
                    assert_eq!(output, format!("{job}\n"));
                }
                Kind::Fail => {
                    assert_eq!(r["state"], "failed", "{r}");
                    assert_eq!(r["exit_code"], 3);
                    assert_eq!(output, "boom\n");
                    assert_eq!(r["error"], "exited with status 3");
                }
                Kind::Workers => {
                    assert_eq!(r["state"], "succeeded", "{r}");
                    assert!(node == "n2" || node == "n3", "{r}");
                    assert_eq!(output, format!("{job}@{node}\n"));
                }
                Kind::OnlyN1 => {
                    assert_eq!(r["state"], "succeeded", "{r}");
                    assert_eq!(node, "n1");
                    assert_eq!(r["exit_code"], 200);
                    assert_eq!(output, format!("/{job}"));
                }
                Kind::Broadcast => {
                    assert_eq!(r["state"], "succeeded", "{r}");
                    assert_eq!(output, format!("{node}\n"));
                }
            }
        }
    }
    // Every job fired at least twice in the 5 s window.
    let fired: BTreeSet<&str> = slots.keys().map(|(j, _)| j.as_str()).collect();
    assert_eq!(
        fired.len(),
        200,
        "jobs that never ran: {:?}",
        kinds
            .keys()
            .filter(|k| !fired.contains(*k))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "runs by kind: {per_kind:?}; {} slots, {} runs",
        slots.len(),
        runs.len()
    );
    for d in daemons.iter_mut() {
        assert_eq!(
            d.terminate(Duration::from_secs(20)).unwrap(),
            Some(0),
            "{}",
            d.log_text()
        );
        assert_eq!(d.spooled(), 0);
    }
}

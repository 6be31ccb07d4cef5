//! Acceptance: kill -9 the server, keep it down 5 s, start it again. Misfire
//! policies decide the gap (`skip` none, `run_once` one, `run_all` each up to
//! the cap); jobs, counters and history survive; no slot exists twice.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use sundial_e2e::misfire::Gap;
use sundial_e2e::{ms, wait_for, ServerProc};
use sundial_proto::time::now_ms;

const JOBS: [(&str, &str, u32); 4] = [
    ("skip", "skip", 10),
    ("once", "run_once", 10),
    ("all", "run_all", 100),
    ("capped", "run_all", 2),
];

fn spec(policy: &str, cap: u32) -> Value {
    json!({
        "schedule": "*/1 * * * * *",
        "executor": {"type": "exec", "argv": ["true"]},
        "misfire": {"policy": policy, "grace": "1s", "max_catch_up": cap},
        "history": {"keep": 1000},
    })
}

/// The job fields that must survive a restart unchanged.
fn stable(job: &Value) -> Value {
    let mut j = job.clone();
    for volatile in ["next_fire_at", "counters", "updated_at"] {
        j.as_object_mut().unwrap().remove(volatile);
    }
    j
}

#[test]
fn kill9_restart_applies_misfire_policies_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&dir.path().join("data")).unwrap();
    for (id, policy, cap) in JOBS {
        let (status, body) = server
            .call("PUT", &format!("/v1/jobs/{id}"), Some(&spec(policy, cap)))
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    // History with a finished run, so it has something to lose.
    let (status, manual) = server.call("POST", "/v1/jobs/skip/trigger", None).unwrap();
    assert_eq!(status, 201, "{manual}");
    let (status, _) = server
        .call("POST", &format!("/v1/runs/{}/cancel", manual["id"]), None)
        .unwrap();
    assert_eq!(status, 200);
    wait_for(Duration::from_secs(15), || {
        JOBS.iter()
            .all(|(id, ..)| server.all_runs(id).unwrap().len() >= 3)
            .then_some(())
    })
    .expect("three slots per job within 15 s");

    let (_, jobs_before) = server.call("GET", "/v1/jobs", None).unwrap();
    let runs_before: HashMap<&str, Vec<Value>> = JOBS
        .iter()
        .map(|(id, ..)| (*id, server.all_runs(id).unwrap()))
        .collect();

    server.kill9().unwrap();
    let killed_at = now_ms();
    std::thread::sleep(Duration::from_secs(5));
    let restarted_at = now_ms();
    server.restart().unwrap();

    // Wait until every job has an on-time slot at least a second after the restart:
    // by then the catch-up tick has certainly run.
    wait_for(Duration::from_secs(15), || {
        JOBS.iter()
            .all(|(id, ..)| {
                server.all_runs(id).unwrap().iter().any(|r| {
                    r["trigger"] == "schedule" && ms(r, "scheduled_for") >= restarted_at + 1000
                })
            })
            .then_some(())
    })
    .expect("scheduling resumed after restart");

    let (_, jobs_after) = server.call("GET", "/v1/jobs", None).unwrap();
    let before: Vec<Value> = jobs_before["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(stable)
        .collect();
    let after: Vec<Value> = jobs_after["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(stable)
        .collect();
    assert_eq!(before, after, "jobs changed across the restart");

    for (id, policy, cap) in JOBS {
        let runs = server.all_runs(id).unwrap();
        // History survives: every run seen before the crash is still there, unchanged.
        let by_id: HashMap<i64, &Value> = runs
            .iter()
            .map(|r| (r["id"].as_i64().unwrap(), r))
            .collect();
        for old in &runs_before[id] {
            let now = by_id
                .get(&old["id"].as_i64().unwrap())
                .unwrap_or_else(|| panic!("{id}: run {} lost", old["id"]));
            assert_eq!(now["scheduled_for"], old["scheduled_for"]);
            assert_eq!(now["state"], old["state"]);
        }
        // Counters survive and match the rows.
        let job = jobs_after["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .unwrap();
        assert_eq!(
            job["counters"]["total"].as_u64().unwrap() as usize,
            runs.len(),
            "{id} counters"
        );

        let gap = Gap::of(id, &runs, killed_at);
        assert!(
            gap.missed.len() >= 3,
            "{id}: expected a gap of several seconds, got {:?}",
            gap.missed
        );
        assert_eq!(
            gap.catch_up,
            gap.expected(policy, cap as usize),
            "{id} ({policy}, cap {cap}): catch-up slots; missed {} fires between {} and {}",
            gap.missed.len(),
            gap.last_pre,
            gap.first_on
        );
        // After the gap, on-time slots continue second by second.
        gap.assert_contiguous(id);
        eprintln!(
            "{id:7} policy={policy:9} cap={cap:3}: missed {} fires, created {} catch-up slots",
            gap.missed.len(),
            gap.catch_up.len()
        );
    }
    let code = server.terminate(Duration::from_secs(10)).unwrap();
    assert_eq!(code, Some(0), "clean exit on SIGTERM");
}

//! Acceptance (HA): two servers over one database file with roles driven
//! through the LiteFS contract, a real HAProxy in front, three daemons
//! connected through HAProxy and 200 jobs firing every second. Ten role flips,
//! half of them by kill -9 of the primary: zero slots created twice, zero
//! slots lost (`run_all`), every completed result recorded once. Failover
//! times are measured and printed.

use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use sundial_e2e::ha::{host, routed_to_primary, start_pair, term_epoch, HaPair};
use sundial_e2e::{admin_call, skip_without, wait_for, DaemonProc, HaproxyProc};

#[test]
fn ten_role_flips_behind_haproxy_lose_and_repeat_nothing() {
    if skip_without("haproxy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let HaPair {
        shared,
        doubles,
        mut servers,
        ..
    } = start_pair(dir.path());
    let lb = HaproxyProc::start(dir.path(), servers[0].port, servers[1].port).unwrap();
    let url = lb.url();
    routed_to_primary(&lb, Duration::from_secs(10)).expect("HAProxy routes to the primary only");

    let (_, tok) =
        admin_call(&url, "POST", "/v1/join-tokens", Some(&json!({"ttl": "1h"}))).unwrap();
    let token = tok["token"].as_str().unwrap().to_string();
    let _daemons: Vec<DaemonProc> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| {
            DaemonProc::start(
                &url,
                &token,
                id,
                &dir.path().join(id),
                &["--capacity", "32"],
            )
            .unwrap()
        })
        .collect();
    wait_for(Duration::from_secs(20), || {
        let (_, n) = admin_call(&url, "GET", "/v1/nodes", None).ok()?;
        (n["items"].as_array()?.len() == 3).then_some(())
    })
    .expect("three daemons joined through HAProxy");
    let spec = json!({"schedule": "*/1 * * * * *",
        "misfire": {"policy": "run_all", "grace": "1s", "max_catch_up": 1000},
        "retries": {"max": 10, "backoff": "500ms", "max_backoff": "2s"},
        "executor": {"type": "shell", "script": "echo $SUNDIAL_RUN_ID"}});
    for i in 0..200 {
        let (status, body) =
            admin_call(&url, "PUT", &format!("/v1/jobs/j{i}"), Some(&spec)).unwrap();
        assert_eq!(status, 201, "{body}");
    }
    std::thread::sleep(Duration::from_secs(3));

    let mut primary = 0usize;
    let mut promote = Vec::new();
    let mut routed = Vec::new();
    for flip in 0..10 {
        let next = 1 - primary;
        let kill = flip % 2 == 1;
        let dispatched_before = servers[next]
            .metric("sundial_runs_dispatched_total")
            .unwrap_or(0.0);
        let started = Instant::now();
        if kill {
            servers[primary].kill9().unwrap();
            doubles[next].make_primary().unwrap();
            doubles[primary]
                .make_replica(Some(&host(&servers[next])))
                .unwrap();
        } else {
            doubles[primary]
                .make_replica(Some(&host(&servers[next])))
                .unwrap();
            doubles[next].make_primary().unwrap();
        }
        let promoted = wait_for(Duration::from_secs(10), || {
            let m = servers[next].metric("sundial_runs_dispatched_total").ok()?;
            (m > dispatched_before).then(|| started.elapsed())
        })
        .unwrap_or_else(|| panic!("flip {flip}: the new primary never dispatched"));
        let new_epoch = term_epoch(&servers[next].base).expect("new primary epoch");
        let via_lb = wait_for(Duration::from_secs(15), || {
            (term_epoch(&url) == Some(new_epoch)).then(|| started.elapsed())
        })
        .unwrap_or_else(|| panic!("flip {flip}: HAProxy never routed to the new primary"));
        eprintln!(
            "flip {flip:2} ({}): new primary dispatching after {:4} ms, HAProxy routing after {:4} ms",
            if kill { "kill -9 " } else { "graceful" },
            promoted.as_millis(),
            via_lb.as_millis()
        );
        promote.push(promoted);
        routed.push(via_lb);
        if kill {
            servers[primary].restart().unwrap();
        }
        primary = next;
        std::thread::sleep(Duration::from_secs(2));
    }
    for i in 0..200 {
        let (status, _) = admin_call(&url, "POST", &format!("/v1/jobs/j{i}/pause"), None).unwrap();
        assert_eq!(status, 200);
    }
    // Everything settles: no run pending or running.
    let quiet = wait_for(Duration::from_secs(90), || {
        let (_, p) = admin_call(&url, "GET", "/v1/runs?state=pending&limit=1", None).ok()?;
        let (_, r) = admin_call(&url, "GET", "/v1/runs?state=running&limit=1", None).ok()?;
        (p["items"].as_array()?.is_empty() && r["items"].as_array()?.is_empty()).then_some(())
    });
    assert!(quiet.is_some(), "runs still pending or running");

    let db = rusqlite::Connection::open_with_flags(
        shared.join("sundial.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare("SELECT j.id, r.id, r.scheduled_for, r.trigger, r.state, coalesce(r.output, '') FROM runs r JOIN jobs j ON j.pk = r.job ORDER BY j.id, r.scheduled_for")
        .unwrap();
    let rows: Vec<(String, i64, i64, String, String, String)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut by_job: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut catch_up = 0;
    for (job, id, at, trigger, state, output) in &rows {
        assert_eq!(state, "succeeded", "{job} run {id} at {at} ended {state}");
        assert_eq!(
            output,
            &format!("{id}\n"),
            "run {id} recorded someone else's result"
        );
        if trigger == "catch_up" {
            catch_up += 1;
        }
        by_job.entry(job).or_default().push(*at);
    }
    assert_eq!(by_job.len(), 200);
    for (job, times) in &by_job {
        for pair in times.windows(2) {
            assert_ne!(pair[0], pair[1], "{job}: slot {} created twice", pair[0]);
            assert_eq!(
                pair[1] - pair[0],
                1000,
                "{job}: slots lost between {} and {}",
                pair[0],
                pair[1]
            );
        }
    }
    let worst_promote = promote.iter().max().unwrap();
    let worst_routed = routed.iter().max().unwrap();
    eprintln!(
        "{} runs over 200 jobs ({catch_up} catch-up), all succeeded once, no slot lost or repeated; \
         worst failover: dispatching {} ms, HAProxy {} ms",
        rows.len(),
        worst_promote.as_millis(),
        worst_routed.as_millis()
    );
    // Generous bounds catch regressions without making the test a benchmark;
    // the measured numbers are printed above (targets: 1 s and 3 s).
    assert!(*worst_promote < Duration::from_secs(5));
    assert!(*worst_routed < Duration::from_secs(10));
}

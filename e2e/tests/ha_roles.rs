//! Acceptance (HA): two servers over one database file, roles driven through
//! the LiteFS contract (`.primary` + `/info` + `/events`). A replica answers
//! reads, forwards writes, and returns 503 + Retry-After with no primary.
//! Split brain: the old primary is told nothing, the new one promotes, and the
//! old one writes nothing (epoch fencing) and steps down.

use serde_json::json;
use std::time::{Duration, Instant};
use sundial_e2e::ha::{host, is_primary, start_pair, HaPair};
use sundial_e2e::wait_for;

#[test]
fn replica_reads_forwards_refuses_without_primary_and_split_brain_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    // Both doubles drive their server's role until the end.
    let HaPair {
        doubles: [_d1, d2],
        servers: [s1, s2],
        ..
    } = start_pair(dir.path());

    assert!(is_primary(&s1));
    assert!(!is_primary(&s2), "the replica must fail the primary check");
    let (_, st) = s2.call("GET", "/v1/ha/status", None).unwrap();
    assert_eq!(st["role"], "replica", "{st}");
    assert_eq!(st["primary_url"], format!("http://{}", host(&s1)));
    // The replica's health check shows the cluster's epoch, not its own
    // (it has had no term).
    let (status, check) = s2.call("GET", "/v1/ha/primary", None).unwrap();
    assert_eq!(status, 503);
    assert_eq!(check["epoch"], st["epoch"], "{check} vs {st}");

    // Reads on the replica, writes forwarded to the primary.
    let spec = json!({"schedule": "*/1 * * * * *", "executor": {"type": "exec", "argv": ["true"]}});
    assert_eq!(
        s1.call("PUT", "/v1/jobs/on-primary", Some(&spec))
            .unwrap()
            .0,
        201
    );
    let (status, job) = s2.call("GET", "/v1/jobs/on-primary", None).unwrap();
    assert_eq!(status, 200, "replica read: {job}");
    let (status, body) = s2.call("PUT", "/v1/jobs/via-replica", Some(&spec)).unwrap();
    assert_eq!(status, 201, "forwarded write: {body}");
    assert_eq!(s1.call("GET", "/v1/jobs/via-replica", None).unwrap().0, 200);
    assert!(
        s2.metric("sundial_forwarded_requests_total{outcome=\"ok\"}")
            .unwrap()
            >= 1.0
    );

    // No primary known: 503 with Retry-After, nothing written.
    d2.make_replica(None).unwrap();
    wait_for(Duration::from_secs(5), || {
        let (_, st) = s2.call("GET", "/v1/ha/status", None).ok()?;
        st["primary_url"].is_null().then_some(())
    })
    .expect("replica forgot the primary");
    let resp = reqwest::blocking::Client::new()
        .put(format!("{}/v1/jobs/nowhere", s2.base))
        .bearer_auth(sundial_e2e::ADMIN_KEY)
        .json(&spec)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "no_primary");
    assert_eq!(s1.call("GET", "/v1/jobs/nowhere", None).unwrap().0, 404);

    // Split brain: s1 is told nothing; s2 becomes primary.
    let (_, before) = s1.call("GET", "/v1/ha/status", None).unwrap();
    let promoted_at = Instant::now();
    d2.make_primary().unwrap();
    wait_for(Duration::from_secs(5), || is_primary(&s2).then_some(())).expect("s2 promoted");
    let promote_ms = promoted_at.elapsed().as_millis();
    let (_, after) = s2.call("GET", "/v1/ha/status", None).unwrap();
    assert!(
        after["epoch"].as_i64() > before["epoch"].as_i64(),
        "epoch bumped: {before} → {after}"
    );
    // s1's scheduler writes every second: its next batch sees the new epoch.
    wait_for(Duration::from_secs(5), || (!is_primary(&s1)).then_some(())).expect("s1 stepped down");
    let (status, body) = s1
        .call("PUT", "/v1/jobs/from-deposed", Some(&spec))
        .unwrap();
    assert_ne!(status, 201, "the deposed primary accepted a write: {body}");
    assert_eq!(
        s2.call("GET", "/v1/jobs/from-deposed", None).unwrap().0,
        404
    );
    let (_, st1) = s1.call("GET", "/v1/ha/status", None).unwrap();
    assert_ne!(st1["role"], "primary", "{st1}");
    assert!(
        s1.log_text().contains("fenced"),
        "s1 log should say it was fenced"
    );
    // s1 stays down even though its LiteFS still says primary (no ping-pong).
    let slots = s1
        .metric("sundial_slots_created_total{trigger=\"schedule\"}")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!is_primary(&s1));
    assert_eq!(
        s1.metric("sundial_slots_created_total{trigger=\"schedule\"}")
            .unwrap(),
        slots
    );
    // The new primary keeps scheduling.
    let before_runs = s2.all_runs("on-primary").unwrap().len();
    wait_for(Duration::from_secs(5), || {
        (s2.all_runs("on-primary").ok()?.len() > before_runs + 1).then_some(())
    })
    .expect("s2 schedules");
    eprintln!("split brain: s2 promoted in {promote_ms} ms; s1 fenced and stepped down");
}

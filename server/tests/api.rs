//! Admin API behaviour against a real in-process server: scheduling, upserts,
//! pagination, scopes, bad input (nothing written), probes and metrics.

mod common;

use common::{snapshot, wait_for, TestServer, ADMIN_KEY};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use sundial_proto::time::parse_rfc3339_ms;

fn job(schedule: &str) -> Value {
    json!({"schedule": schedule, "executor": {"type": "exec", "argv": ["true"]}})
}

async fn runs_of(s: &TestServer, job: &str) -> Vec<Value> {
    let (status, body) = s
        .json(Method::GET, &format!("/v1/runs?job={job}&limit=1000"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn every_second_job_gets_one_slot_per_second_on_the_second() {
    let s = TestServer::start().await;
    let (status, body) = s
        .json(Method::PUT, "/v1/jobs/tick", Some(job("*/1 * * * * *")))
        .await;
    assert_eq!(status, 201, "{body}");
    let runs = wait_for(Duration::from_secs(10), || async {
        let r = runs_of(&s, "tick").await;
        (r.len() >= 4).then_some(r)
    })
    .await
    .expect("four slots within 10 s");
    let mut times: Vec<i64> = runs
        .iter()
        .map(|r| parse_rfc3339_ms(r["scheduled_for"].as_str().unwrap()).unwrap())
        .collect();
    times.sort();
    let unique: HashSet<i64> = times.iter().copied().collect();
    assert_eq!(
        unique.len(),
        times.len(),
        "a slot appeared twice: {times:?}"
    );
    for t in &times {
        assert_eq!(t % 1000, 0, "slot {t} is not on the second");
    }
    for pair in times.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "gap or duplicate between slots: {times:?}"
        );
    }
    for r in &runs {
        assert_eq!(r["state"], "pending");
        assert_eq!(r["trigger"], "schedule");
        assert_eq!(r["job_id"], "tick");
        assert_eq!(r["attempt"], 1);
    }
    s.stop().await;
}

#[tokio::test]
async fn upsert_list_pause_trigger_cancel_delete() {
    let s = TestServer::start().await;
    let spec = json!({
        "schedule": "0 30 2 * * *", "timezone": "Europe/Berlin",
        "executor": {"type": "exec", "argv": ["/usr/local/bin/report", "--daily"],
                     "env": {"MODE": "full"}, "cwd": "/srv"},
        "target": {"labels": {"role": "worker"}},
        "concurrency": "forbid",
        "misfire": {"policy": "run_once", "grace": "30s", "max_catch_up": 10},
        "timeout": "10m",
        "retries": {"max": 3, "backoff": "10s", "max_backoff": "5m"},
        "history": {"keep": 100, "max_age": "30d"},
        "enabled": true,
        "description": "Nightly sales report"
    });
    let (st, created) = s
        .json(Method::PUT, "/v1/jobs/nightly-report", Some(spec.clone()))
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["id"], "nightly-report");
    assert_eq!(created["timeout"], "10m");
    assert_eq!(created["counters"]["total"], 0);
    let next = created["next_fire_at"].as_str().unwrap().to_string();
    assert!(
        next.ends_with(":30:00.000Z"),
        "02:30 Berlin is :30 UTC: {next}"
    );
    // Idempotent: same spec → 200, nothing moves.
    let (st, again) = s
        .json(Method::PUT, "/v1/jobs/nightly-report", Some(spec.clone()))
        .await;
    assert_eq!(st, 200);
    assert_eq!(again["next_fire_at"], created["next_fire_at"]);
    assert_eq!(again["updated_at"], created["updated_at"]);
    // A changed field updates.
    let mut changed = spec.clone();
    changed["description"] = json!("changed");
    let (st, updated) = s
        .json(Method::PUT, "/v1/jobs/nightly-report", Some(changed))
        .await;
    assert_eq!(st, 200);
    assert_eq!(updated["description"], "changed");
    assert_eq!(updated["next_fire_at"], created["next_fire_at"]);

    // Pagination, newest first.
    for i in 0..4 {
        let (st, _) = s
            .json(Method::PUT, &format!("/v1/jobs/j{i}"), Some(job("@hourly")))
            .await;
        assert_eq!(st, 201);
    }
    let (_, page1) = s.json(Method::GET, "/v1/jobs?limit=2", None).await;
    let ids: Vec<&str> = page1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["j3", "j2"]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = s
        .json(
            Method::GET,
            &format!("/v1/jobs?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    let ids: Vec<&str> = page2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["j1", "j0"]);
    let cursor = page2["next_cursor"].as_str().unwrap();
    let (_, page3) = s
        .json(
            Method::GET,
            &format!("/v1/jobs?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page3["items"].as_array().unwrap().len(), 1);
    assert!(page3["next_cursor"].is_null());

    // Pause keeps the job out of the scheduler; resume recomputes the next fire.
    let (st, paused) = s.json(Method::POST, "/v1/jobs/j0/pause", None).await;
    assert_eq!(st, 200);
    assert_eq!(paused["paused"], true);
    let (_, resumed) = s.json(Method::POST, "/v1/jobs/j0/resume", None).await;
    assert_eq!(resumed["paused"], false);
    assert!(resumed["next_fire_at"].is_string());
    // An upsert does not unpause.
    s.json(Method::POST, "/v1/jobs/j1/pause", None).await;
    let (_, j1) = s
        .json(Method::PUT, "/v1/jobs/j1", Some(job("@daily")))
        .await;
    assert_eq!(j1["paused"], true);

    // Manual trigger is its own slot; two in a row are two slots.
    let (st, r1) = s.json(Method::POST, "/v1/jobs/j0/trigger", None).await;
    assert_eq!(st, 201, "{r1}");
    let (_, r2) = s.json(Method::POST, "/v1/jobs/j0/trigger", None).await;
    assert_ne!(r1["id"], r2["id"]);
    assert_eq!(r1["trigger"], "manual");
    let (_, j0) = s.json(Method::GET, "/v1/jobs/j0", None).await;
    assert_eq!(j0["counters"]["total"], 2);
    assert_eq!(j0["counters"]["last_run_id"], r2["id"]);

    // Cancel, then cancelling again is a conflict.
    let (st, c) = s
        .json(Method::POST, &format!("/v1/runs/{}/cancel", r1["id"]), None)
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["state"], "cancelled");
    assert!(c["finished_at"].is_string());
    let (st, c2) = s
        .json(Method::POST, &format!("/v1/runs/{}/cancel", r1["id"]), None)
        .await;
    assert_eq!(st, 409, "{c2}");
    let (_, filtered) = s
        .json(Method::GET, "/v1/runs?job=j0&state=cancelled", None)
        .await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);
    let (st, one) = s
        .json(Method::GET, &format!("/v1/runs/{}", r2["id"]), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(one["state"], "pending");

    // Delete removes the job and its runs.
    let (st, _) = s.json(Method::DELETE, "/v1/jobs/j0", None).await;
    assert_eq!(st, 204);
    let (st, _) = s.json(Method::GET, "/v1/jobs/j0", None).await;
    assert_eq!(st, 404);
    let (st, _) = s
        .json(Method::GET, &format!("/v1/runs/{}", r2["id"]), None)
        .await;
    assert_eq!(st, 404);
    s.stop().await;
}

#[tokio::test]
async fn read_keys_read_and_cannot_write() {
    let s = TestServer::start().await;
    let (st, key) = s
        .json(
            Method::POST,
            "/v1/api-keys",
            Some(json!({"scope": "read", "name": "grafana"})),
        )
        .await;
    assert_eq!(st, 201, "{key}");
    let secret = key["key"].as_str().unwrap().to_string();
    let resp = s.call_as(&secret, Method::GET, "/v1/jobs", None).await;
    assert_eq!(resp.status(), 200);
    let resp = s
        .call_as(&secret, Method::PUT, "/v1/jobs/x", Some(job("@hourly")))
        .await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    // Listing shows no secrets; deleting the key locks it out.
    let (_, list) = s.json(Method::GET, "/v1/api-keys", None).await;
    assert!(!list.to_string().contains(&secret));
    assert!(!list.to_string().contains(ADMIN_KEY));
    let id = key["id"].as_str().unwrap();
    let (st, _) = s
        .json(Method::DELETE, &format!("/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(st, 204);
    let resp = s.call_as(&secret, Method::GET, "/v1/jobs", None).await;
    assert_eq!(resp.status(), 401);
    // The database holds hashes only.
    let db = std::fs::read(s.db_path()).unwrap();
    let wal = std::fs::read(s.db_path().with_extension("db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes
            .windows(ADMIN_KEY.len())
            .any(|w| w == ADMIN_KEY.as_bytes()));
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let s = TestServer::start().await;
    let (st, _) = s
        .json(Method::PUT, "/v1/jobs/existing", Some(job("@hourly")))
        .await;
    assert_eq!(st, 201);
    // Let the scheduler settle so only the requests below could change anything.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = snapshot(&s.db_path());

    let exec = json!({"type": "exec", "argv": ["true"]});
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        // (method, path, raw body, status, code, field)
        (
            Method::PUT,
            "/v1/jobs/a",
            Some("{not json"),
            400,
            "invalid_json",
            None,
        ),
        (
            Method::PUT,
            "/v1/jobs/a",
            Some(r#"{"schedule":"@hourly"}"#),
            400,
            "missing_field",
            None,
        ),
        (
            Method::PUT,
            "/v1/jobs/a",
            Some(r#"{"schedule":"@hourly","executor":{"type":"exec","argv":["x"]},"retrys":{}}"#),
            400,
            "unknown_field",
            None,
        ),
        (
            Method::PUT,
            "/v1/jobs/a",
            Some(r#"{"schedule":"61 * * * *","executor":{"type":"exec","argv":["x"]}}"#),
            400,
            "invalid_schedule",
            Some("schedule"),
        ),
        (
            Method::PUT,
            "/v1/jobs/a",
            Some(
                r#"{"schedule":"@hourly","timezone":"Mars/Olympus","executor":{"type":"exec","argv":["x"]}}"#,
            ),
            400,
            "invalid_timezone",
            Some("timezone"),
        ),
        (
            Method::PUT,
            "/v1/jobs/a",
            Some(
                r#"{"schedule":"@hourly","timeout":"0s","executor":{"type":"exec","argv":["x"]}}"#,
            ),
            400,
            "invalid_value",
            Some("timeout"),
        ),
        (
            Method::PUT,
            "/v1/jobs/a",
            Some(
                r#"{"schedule":"@hourly","timeout":"-5m","executor":{"type":"exec","argv":["x"]}}"#,
            ),
            400,
            "invalid_value",
            Some("timeout"),
        ),
        (
            Method::PUT,
            "/v1/jobs/a",
            Some(
                r#"{"schedule":"@hourly","misfire":{"grace":"soon"},"executor":{"type":"exec","argv":["x"]}}"#,
            ),
            400,
            "invalid_value",
            Some("misfire.grace"),
        ),
        (
            Method::PUT,
            "/v1/jobs/a",
            Some(r#"{"schedule":"@every 0s","executor":{"type":"exec","argv":["x"]}}"#),
            400,
            "invalid_schedule",
            Some("schedule"),
        ),
        (
            Method::PUT,
            "/v1/jobs/a",
            Some(r#"{"schedule":"@hourly","executor":{"type":"exec","argv":[]}}"#),
            400,
            "invalid_value",
            Some("executor.argv"),
        ),
        (
            Method::PUT,
            "/v1/jobs/a",
            Some(
                r#"{"schedule":"@hourly","concurrency":"sometimes","executor":{"type":"exec","argv":["x"]}}"#,
            ),
            400,
            "invalid_value",
            Some("concurrency"),
        ),
        (
            Method::PUT,
            "/v1/jobs/bad%20id",
            Some(r#"{"schedule":"@hourly","executor":{"type":"exec","argv":["x"]}}"#),
            400,
            "invalid_id",
            Some("id"),
        ),
        (
            Method::PUT,
            "/v1/jobs/existing",
            Some(r#"{"schedule":"* * *","executor":{"type":"exec","argv":["x"]}}"#),
            400,
            "invalid_schedule",
            Some("schedule"),
        ),
        (Method::GET, "/v1/jobs/nope", None, 404, "not_found", None),
        (
            Method::DELETE,
            "/v1/jobs/nope",
            None,
            404,
            "not_found",
            None,
        ),
        (
            Method::POST,
            "/v1/jobs/nope/trigger",
            None,
            404,
            "not_found",
            None,
        ),
        (
            Method::POST,
            "/v1/jobs/nope/pause",
            None,
            404,
            "not_found",
            None,
        ),
        (Method::GET, "/v1/runs/999999", None, 404, "not_found", None),
        (Method::GET, "/v1/runs/abc", None, 404, "not_found", None),
        (
            Method::POST,
            "/v1/runs/999999/cancel",
            None,
            404,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/v1/runs?job=nope",
            None,
            404,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/v1/runs?state=done",
            None,
            400,
            "invalid_value",
            Some("state"),
        ),
        (
            Method::GET,
            "/v1/runs?cursor=xyz",
            None,
            400,
            "invalid_cursor",
            Some("cursor"),
        ),
        (
            Method::GET,
            "/v1/jobs?limit=0",
            None,
            400,
            "invalid_value",
            Some("limit"),
        ),
        (
            Method::GET,
            "/v1/jobs?bogus=1",
            None,
            400,
            "invalid_query",
            None,
        ),
        (
            Method::GET,
            "/v1/nothing-here",
            None,
            404,
            "not_found",
            None,
        ),
        (
            Method::PATCH,
            "/v1/jobs/existing",
            Some("{}"),
            405,
            "method_not_allowed",
            None,
        ),
        (
            Method::POST,
            "/v1/api-keys",
            Some(r#"{"scope":"root"}"#),
            400,
            "invalid_value",
            Some("scope"),
        ),
        (
            Method::DELETE,
            "/v1/api-keys/key_000000000000",
            None,
            404,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/v1/schedule/preview?schedule=bad",
            None,
            400,
            "invalid_schedule",
            Some("schedule"),
        ),
    ];
    for (method, path, body, status, code, field) in cases {
        let mut req = s
            .client
            .request(method.clone(), format!("{}{}", s.base, path))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let got = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_eq!(got, status, "{method} {path}: {text}");
        assert_eq!(v["error"]["code"], code, "{method} {path}: {text}");
        assert!(
            !v["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{text}"
        );
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{method} {path}: {text}");
            assert!(v["error"]["message"].as_str().unwrap().len() > 5);
        }
    }
    // Unknown-field errors name the field.
    let (_, body) = s
        .json(
            Method::PUT,
            "/v1/jobs/a",
            Some(json!({"schedule": "@hourly", "executor": exec, "retrys": {}})),
        )
        .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retrys"),
        "{body}"
    );

    // Oversized body: 413.
    let big = json!({"schedule": "@hourly", "executor": {"type": "shell", "script": "x".repeat(200_000)}});
    let resp = s.call(Method::PUT, "/v1/jobs/big", Some(big)).await;
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");

    // Missing, malformed and wrong keys: 401; no write either.
    let no_key = s
        .client
        .put(format!("{}/v1/jobs/a", s.base))
        .json(&job("@hourly"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let v: Value = no_key.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let basic = s
        .client
        .get(format!("{}/v1/jobs", s.base))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let wrong = s
        .call_as("sdk_wrong", Method::PUT, "/v1/jobs/a", Some(job("@hourly")))
        .await;
    assert_eq!(wrong.status(), 401);

    assert_eq!(
        before,
        snapshot(&s.db_path()),
        "a refused request changed the database"
    );
    s.stop().await;
}

#[tokio::test]
async fn probes_and_metrics_respond() {
    let s = TestServer::start().await;
    for path in ["/healthz", "/readyz", "/v1/ha/primary"] {
        let resp = s
            .client
            .get(format!("{}{}", s.base, path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let (st, status) = s.json(Method::GET, "/v1/ha/status", None).await;
    assert_eq!(st, 200);
    assert_eq!(status["role"], "primary");
    assert_eq!(status["epoch"], 1);
    s.json(Method::PUT, "/v1/jobs/m", Some(job("*/1 * * * * *")))
        .await;
    wait_for(Duration::from_secs(5), || async {
        (!runs_of(&s, "m").await.is_empty()).then_some(())
    })
    .await
    .expect("a slot");
    let resp = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let names: HashSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for want in [
        "sundial_jobs",
        "sundial_runs",
        "sundial_http_requests_total",
        "sundial_store_write_batch_size",
        "sundial_store_commit_seconds",
        "sundial_fire_lateness_seconds",
        "sundial_slots_created_total",
        "sundial_cluster_epoch",
    ] {
        assert!(names.contains(want), "missing {want} in:\n{text}");
    }
    let jobs = scrape
        .samples
        .iter()
        .find(|s| s.metric == "sundial_jobs")
        .unwrap();
    assert!(matches!(jobs.value, prometheus_parse::Value::Gauge(v) if v == 1.0));
    let pending = scrape
        .samples
        .iter()
        .find(|s| s.metric == "sundial_runs" && s.labels.get("state") == Some("pending"))
        .unwrap();
    assert!(matches!(pending.value, prometheus_parse::Value::Gauge(v) if v >= 1.0));
    // (prometheus-parse mis-reads braces inside label values, so check the line itself.)
    assert!(
        text.contains(
            r#"sundial_http_requests_total{method="PUT",route="/v1/jobs/{id}",status="201"} 1"#
        ),
        "PUT counted by route template:\n{text}"
    );
    // No node: the first slot's run waits, and the wait shows and grows.
    let waited = wait_for(Duration::from_secs(10), || async {
        let text = s
            .client
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("sundial_dispatch_oldest_wait_seconds "))?
            .parse()
            .ok()?;
        (value >= 1.5).then_some(value)
    })
    .await;
    assert!(waited.is_some(), "the oldest pending run's wait is shown");
    s.stop().await;
}

#[tokio::test]
async fn preview_lists_fires_without_storing() {
    let s = TestServer::start().await;
    let before = snapshot(&s.db_path());
    let (st, body) = s
        .json(Method::GET, "/v1/schedule/preview?schedule=0%2030%202%20*%20*%20*&timezone=Europe/Berlin&after=2026-03-28T00:00:00Z&count=3", None)
        .await;
    assert_eq!(st, 200, "{body}");
    let fires: Vec<&str> = body["fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    // 02:30 CET = 01:30Z; 2026-03-29 02:30 does not exist in Berlin → first instant after the gap (03:00 CEST = 01:00Z).
    assert_eq!(
        fires,
        [
            "2026-03-28T01:30:00.000Z",
            "2026-03-29T01:00:00.000Z",
            "2026-03-30T00:30:00.000Z"
        ]
    );
    assert_eq!(before, snapshot(&s.db_path()));
    s.stop().await;
}

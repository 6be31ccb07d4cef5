//! Job labels and bulk apply (`POST /v1/jobs:apply`) against a real in-process
//! server: label filters, plans, idempotence, dry runs, pruning, the raised
//! body limit, and all-or-nothing failure naming the document and field.

mod common;

use common::{snapshot, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use sundial_proto::{Action, ApplyResponse, ErrorBody, Job, List};

fn job(id: &str, schedule: &str, team: &str) -> Value {
    json!({"id": id, "schedule": schedule, "executor": {"type": "exec", "argv": ["true"]},
           "labels": {"team": team, "env": "prod"}})
}

async fn apply(s: &TestServer, body: Value) -> (u16, Value) {
    s.json(Method::POST, "/v1/jobs:apply", Some(body)).await
}

fn plan(v: Value) -> ApplyResponse {
    serde_json::from_value(v).unwrap()
}

fn count(p: &ApplyResponse, action: Action) -> usize {
    p.plan.iter().filter(|e| e.action == action).count()
}

#[tokio::test]
async fn labels_are_stored_returned_and_filter_the_list() {
    let s = TestServer::start().await;
    for (id, team) in [("a", "billing"), ("b", "billing"), ("c", "search")] {
        let mut spec = job(id, "@hourly", team);
        spec.as_object_mut().unwrap().remove("id");
        let (status, body) = s
            .json(Method::PUT, &format!("/v1/jobs/{id}"), Some(spec))
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["labels"]["team"], team);
    }
    let (status, body) = s
        .json(
            Method::GET,
            "/v1/jobs?label=team=billing&label=env=prod",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let list: List<Job> = serde_json::from_value(body).unwrap();
    let mut ids: Vec<_> = list.items.iter().map(|j| j.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    let (_, body) = s
        .json(
            Method::GET,
            "/v1/jobs?label=team=billing&label=env=dev",
            None,
        )
        .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 0);
    // Keys with dots and slashes select exactly (no JSON-path surprises).
    let dotted = json!({"jobs": [{"id": "k8s", "schedule": "@hourly",
        "executor": {"type": "exec", "argv": ["x"]},
        "labels": {"app.kubernetes.io/team": "billing", "app": "other"}}]});
    assert_eq!(apply(&s, dotted).await.0, 200);
    let (_, body) = s
        .json(
            Method::GET,
            "/v1/jobs?label=app.kubernetes.io/team=billing",
            None,
        )
        .await;
    let ids: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["k8s"]);
    let (status, body) = s.json(Method::GET, "/v1/jobs?label=team", None).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("label"))
    );
    // One key with two values matches no job: refused, whatever the order.
    for q in ["team=billing&label=team=x", "team=x&label=team=billing"] {
        let (status, body) = s
            .json(Method::GET, &format!("/v1/jobs?label={q}"), None)
            .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (400, Some("label")),
            "{body}"
        );
    }
    // The same pair twice is the same selector.
    let (status, _) = s
        .json(
            Method::GET,
            "/v1/jobs?label=team=billing&label=team=billing",
            None,
        )
        .await;
    assert_eq!(status, 200);
    // Bad labels on a job are refused with the field named.
    let (status, body) = s
        .json(
            Method::PUT,
            "/v1/jobs/d",
            Some(
                json!({"schedule": "@hourly", "executor": {"type": "exec", "argv": ["x"]},
                        "labels": {"-bad": "x"}}),
            ),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "labels.-bad");
    s.stop().await;
}

#[tokio::test]
async fn apply_plans_creates_is_idempotent_and_prunes() {
    let s = TestServer::start().await;
    // 2,000 jobs is larger than the server's general body limit in tests (64 KiB).
    let jobs: Vec<Value> = (0..2000)
        .map(|i| job(&format!("j{i:04}"), "0 0 3 * * *", "billing"))
        .collect();
    let (status, body) = apply(&s, json!({"jobs": jobs})).await;
    assert_eq!(status, 200, "{body}");
    let p = plan(body);
    assert!(p.applied);
    assert_eq!(count(&p, Action::Create), 2000);
    assert_eq!(p.plan[0].id, "j0000");
    let (_, one) = s.json(Method::GET, "/v1/jobs/j0007", None).await;
    assert!(one["next_fire_at"].is_string(), "{one}");

    // The same again: nothing changes.
    let (status, body) = apply(&s, json!({"jobs": jobs})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(count(&plan(body), Action::Unchanged), 2000);

    // A dry run with one changed schedule and pruning plans but writes nothing.
    let before = snapshot(&s.db_path());
    let mut fewer: Vec<Value> = jobs[..1500].to_vec();
    fewer[3]["schedule"] = json!("0 0 4 * * *");
    fewer[3]["description"] = json!("moved");
    let body = json!({"jobs": fewer, "prune": {"labels": {"team": "billing"}}, "dry_run": true});
    let (status, resp) = apply(&s, body.clone()).await;
    assert_eq!(status, 200, "{resp}");
    let p = plan(resp);
    assert!(!p.applied);
    assert_eq!(count(&p, Action::Unchanged), 1499);
    assert_eq!(count(&p, Action::Delete), 500);
    let update = p.plan.iter().find(|e| e.action == Action::Update).unwrap();
    assert_eq!(update.id, "j0003");
    assert_eq!(update.changes, ["description", "schedule"]);
    assert_eq!(snapshot(&s.db_path()), before, "a dry run wrote something");

    // For real: 500 deleted, one updated.
    let mut body = body;
    body["dry_run"] = json!(false);
    let (status, resp) = apply(&s, body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(count(&plan(resp), Action::Delete), 500);
    let (status, _) = s.json(Method::GET, "/v1/jobs/j1999", None).await;
    assert_eq!(status, 404);
    let (_, j3) = s.json(Method::GET, "/v1/jobs/j0003", None).await;
    assert_eq!(j3["schedule"], "0 0 4 * * *");

    // Prune only touches the selector: jobs of another team stay.
    let other = job("other", "@daily", "search");
    apply(&s, json!({"jobs": [other]})).await;
    let (status, resp) = apply(
        &s,
        json!({"jobs": [], "prune": {"labels": {"team": "billing"}}}),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(count(&plan(resp), Action::Delete), 1500);
    let (status, _) = s.json(Method::GET, "/v1/jobs/other", None).await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn an_invalid_document_changes_nothing_and_is_named() {
    let s = TestServer::start().await;
    apply(&s, json!({"jobs": [job("keep", "@hourly", "x")]})).await;
    let before = snapshot(&s.db_path());
    let cases = [
        (
            job("bad", "61 * * * *", "x"),
            "invalid_schedule",
            Some("schedule"),
        ),
        (
            json!({"id": "bad", "schedule": "@hourly", "executor": {"type": "exec", "argv": ["x"]}, "retrys": 1}),
            "unknown_field",
            None,
        ),
        (job("-bad", "@hourly", "x"), "invalid_id", Some("id")),
        (job("keep", "@daily", "x"), "duplicate_id", Some("id")),
        (
            json!({"id": "bad", "schedule": "@hourly", "executor": {"type": "exec", "argv": ["x"]}, "labels": {"a b": "c"}}),
            "invalid_value",
            Some("labels.a b"),
        ),
    ];
    for (bad, code, field) in cases {
        let jobs = json!([job("new1", "@hourly", "x"), job("keep", "@daily", "x"), bad]);
        let (status, body) = apply(
            &s,
            json!({"jobs": jobs, "prune": {"labels": {"team": "x"}}}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        let err: ErrorBody = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(err.error.index, Some(2), "{body}");
        assert_eq!(err.error.code, code, "{body}");
        if let Some(field) = field {
            assert_eq!(err.error.field.as_deref(), Some(field), "{body}");
        }
        assert!(err.error.message.starts_with("jobs[2]"), "{body}");
    }
    assert_eq!(
        snapshot(&s.db_path()),
        before,
        "a refused apply wrote something"
    );
    // An empty prune selector would delete everything: refused.
    let (status, body) = apply(&s, json!({"jobs": [], "prune": {"labels": {}}})).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("prune.labels"))
    );
    s.stop().await;
}

#[tokio::test]
async fn apply_needs_the_admin_scope() {
    let s = TestServer::start().await;
    let (status, key) = s
        .json(Method::POST, "/v1/api-keys", Some(json!({"scope": "read"})))
        .await;
    assert_eq!(status, 201);
    let resp = s
        .call_as(
            key["key"].as_str().unwrap(),
            Method::POST,
            "/v1/jobs:apply",
            Some(json!({"jobs": [], "dry_run": true})),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 403);
    s.stop().await;
}

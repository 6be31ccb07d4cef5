//! The API contract, checked by Schemathesis against a live server: it
//! reads `GET /v1/openapi.json` and sends generated requests (valid and
//! invalid) with the admin key to every admin endpoint. Every answer must be
//! below 500, have a status, content type and body the document lists, and
//! every refusal the JSON error shape (the document lists each refusal with
//! that schema, so schema conformance checks it).
//!
//! Seeded first: two jobs (one for `DELETE`), a cancelled run, a webhook, a join token, a joined
//! node and a read key; Schemathesis uses their ids for half the path
//! parameters (a dictionary per resource), so the endpoints behind an id are
//! exercised beyond `404`.
//!
//! Left out of the fuzz run, and why:
//! - the agent endpoints (`/v1/agent/*`): every request must carry a fresh
//!   HMAC signature over its exact body and a single-use nonce, which a
//!   generic fuzzer cannot produce, so all it could reach is the `401`; the
//!   protocol has its own tests (`agent_auth.rs`, `replay.rs`, `dispatch.rs`).
//! - `GET /v1/events/stream`: a Server-Sent Events stream that never ends by
//!   design; every request would run into the timeout. `events.rs` and
//!   `events_ha.rs` test it.
//!
//! `GET /v1/runs/{id}/output` stays in: its `id` is always the seeded
//! cancelled run, so `?follow=true` streams its `end` event and closes (the
//! SSE events are checked against their schema too). Unknown run ids are
//! covered by `GET /v1/runs/{id}`.
//!
//! Bounded: at most `MAX_EXAMPLES` cases per operation and phase, and the
//! runs are killed (and the test fails) after `WALL_CLOCK` in all.

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sundial_e2e::{skip_without, which, ServerProc, ADMIN_KEY};

const MAX_EXAMPLES: &str = "25";
const WALL_CLOCK: Duration = Duration::from_secs(180);

/// The checks every response must pass.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// Seeds one resource of each kind; returns the Schemathesis config binding
/// their ids to the path parameters.
fn seed(server: &ServerProc) -> String {
    let (status, _) = server
        .call(
            "PUT",
            "/v1/jobs/seed-job",
            Some(&json!({"schedule": "@every 1h", "executor": {"type": "exec", "argv": ["true"]}})),
        )
        .unwrap();
    assert_eq!(status, 201);
    let (status, _) = server
        .call(
            "PUT",
            "/v1/jobs/doomed-job",
            Some(&json!({"schedule": "@every 1h", "executor": {"type": "exec", "argv": ["true"]}})),
        )
        .unwrap();
    assert_eq!(status, 201);
    let (status, run) = server
        .call("POST", "/v1/jobs/seed-job/trigger", None)
        .unwrap();
    assert_eq!(status, 201, "{run}");
    let run_id = run["id"].as_i64().unwrap();
    let (status, _) = server
        .call("POST", &format!("/v1/runs/{run_id}/cancel"), None)
        .unwrap();
    assert_eq!(status, 200);
    let (status, hook) = server
        .call(
            "POST",
            "/v1/webhooks",
            Some(&json!({"url": "http://127.0.0.1:9/hook", "events": ["run.failed"]})),
        )
        .unwrap();
    assert_eq!(status, 201, "{hook}");
    let (status, token) = server
        .call("POST", "/v1/join-tokens", Some(&json!({"name": "seed"})))
        .unwrap();
    assert_eq!(status, 201, "{token}");
    let http = reqwest::blocking::Client::new();
    let (status, joined) =
        sundial_e2e::agent::join(&http, server, token["token"].as_str().unwrap(), "seed-node");
    assert_eq!(status, 201, "{joined}");
    let (status, key) = server
        .call(
            "POST",
            "/v1/api-keys",
            Some(&json!({"scope": "read", "name": "seed"})),
        )
        .unwrap();
    assert_eq!(status, 201, "{key}");

    let dictionaries = [
        (
            "jobs",
            "^/v1/jobs/\\\\{id\\\\}",
            "seed-job".to_string(),
            0.5,
        ),
        // Deleting the job would delete its run too and leave the rest of
        // the run 404s: `DELETE /v1/jobs/{id}` gets a job of its own, always
        // (ids learnt from `GET /v1/jobs` would otherwise include seed-job).
        (
            "doomed",
            "^/v1/jobs/\\\\{id\\\\}$",
            "doomed-job".to_string(),
            1.0,
        ),
        ("runs", "^/v1/runs/\\\\{id\\\\}$", run_id.to_string(), 0.5),
        (
            "cancel",
            "^/v1/runs/\\\\{id\\\\}/cancel$",
            run_id.to_string(),
            0.5,
        ),
        // Always the cancelled run: `follow=true` then ends at once.
        (
            "output",
            "^/v1/runs/\\\\{id\\\\}/output$",
            run_id.to_string(),
            1.0,
        ),
        (
            "webhooks",
            "^/v1/webhooks/\\\\{id\\\\}",
            str_of(&hook["id"]),
            0.5,
        ),
        (
            "tokens",
            "^/v1/join-tokens/\\\\{id\\\\}",
            str_of(&token["id"]),
            0.5,
        ),
        (
            "nodes",
            "^/v1/nodes/\\\\{id\\\\}",
            "seed-node".to_string(),
            0.5,
        ),
        (
            "keys",
            "^/v1/api-keys/\\\\{id\\\\}",
            str_of(&key["id"]),
            0.5,
        ),
    ];
    let mut config = String::new();
    for (name, regex, value, probability) in dictionaries {
        config.push_str(&format!(
            "[dictionaries.{name}]\nvalues = [\"{value}\"]\n\n\
             [[operations]]\ninclude-path-regex = \"{regex}\"\n\
             parameters = {{ \"path.id\" = {{ dictionary = \"{name}\", probability = {probability} }} }}\n"
        ));
        match name {
            "jobs" => config.push_str("exclude-method = \"DELETE\"\n"),
            "doomed" => config.push_str("include-method = \"DELETE\"\n"),
            _ => {}
        }
        config.push('\n');
    }
    config
}

fn str_of(v: &Value) -> String {
    v.as_str().expect("an id string").to_string()
}

/// The operations the run must test: every operation of the document but
/// the agent's, the event stream and the document itself.
fn admin_operations(server: &ServerProc) -> Vec<String> {
    let doc: Value = reqwest::blocking::get(format!("{}/v1/openapi.json", server.base))
        .unwrap()
        .json()
        .unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let agent = op["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("agent")));
            // Schemathesis reads the document itself and leaves its own URL out.
            if agent || path == "/v1/events/stream" || path == "/v1/openapi.json" {
                continue;
            }
            ops.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops
}

/// One bounded `schemathesis run` in `workdir` (its own Hypothesis and
/// Schemathesis caches, so nothing learnt in one run leaks into another);
/// prints its output and returns whether it passed and its JUnit report.
fn schemathesis(
    server: &ServerProc,
    config: &std::path::Path,
    workdir: &std::path::Path,
    select: &[&str],
    budget: Duration,
) -> (bool, String) {
    std::fs::create_dir_all(workdir).unwrap();
    let report = workdir.join("junit.xml");
    let output_path = workdir.join("schemathesis.out");
    let output = std::fs::File::create(&output_path).unwrap();
    let started = Instant::now();
    let mut child = Command::new(which("schemathesis").unwrap())
        .arg("--no-color")
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", server.base))
        .args(["--header", &format!("Authorization: Bearer {ADMIN_KEY}")])
        .args(["--checks", CHECKS])
        .args(select)
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--request-timeout", "10"])
        // Honour `Retry-After` when the failed-authentication limit answers 429
        // (Schemathesis also sends requests without the key).
        .args(["--rate-limit", "auto"])
        // One worker: Hypothesis has raced on its own lambda-source cache with more.
        .args(["--workers", "1"])
        .args(["--seed", "20261125"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&report)
        .current_dir(workdir)
        .stdin(Stdio::null())
        // To a file, not a pipe: a pipe nobody drains fills up and stalls the run.
        .stdout(Stdio::from(output.try_clone().unwrap()))
        .stderr(Stdio::from(output))
        .spawn()
        .expect("starting schemathesis");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > budget {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "{}",
        std::fs::read_to_string(&output_path).unwrap_or_default()
    );
    println!("schemathesis {select:?} took {:?}", started.elapsed());
    let Some(status) = status else {
        let log = server.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "schemathesis ran longer than {budget:?}; last server log lines (newest first):\n{}",
            tail.join("\n")
        );
    };
    (
        status.success(),
        std::fs::read_to_string(&report).unwrap_or_default(),
    )
}

#[test]
fn schemathesis_finds_no_contract_violations() {
    if skip_without("schemathesis") {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, seed(&server)).unwrap();
    let expected = admin_operations(&server);
    assert!(expected.len() >= 30, "{expected:?}");

    // Everything but the agent's endpoints, the event stream and key
    // deletion. A fuzzer holding an admin key may legally delete that very
    // key once it has created another admin key (it learns the ids from
    // `GET /v1/api-keys`), and would get nothing but 401s after that; so
    // `DELETE /v1/api-keys/{id}` runs on its own, in a fresh work dir where
    // it knows only the seeded read key's id (and generated ones).
    let (main_ok, main_report) = schemathesis(
        &server,
        &config,
        &dir.path().join("main"),
        &[
            "--exclude-tag",
            "agent",
            "--exclude-path",
            "/v1/events/stream",
            "--exclude-path",
            "/v1/api-keys/{id}",
        ],
        WALL_CLOCK,
    );
    let (keys_ok, keys_report) = schemathesis(
        &server,
        &config,
        &dir.path().join("keys"),
        &["--include-path", "/v1/api-keys/{id}"],
        WALL_CLOCK.saturating_sub(started.elapsed()),
    );
    assert!(
        main_ok && keys_ok,
        "schemathesis found contract violations (see above); server log:\n{}",
        server.log_text()
    );

    // Every admin operation was tested.
    let missing: Vec<&String> = expected
        .iter()
        .filter(|op| {
            let name = format!("name=\"{op}\"");
            !main_report.contains(&name) && !keys_report.contains(&name)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "operations schemathesis did not test: {missing:?}\n{main_report}\n{keys_report}"
    );
    assert!(
        !server.log_text().contains("panicked"),
        "a handler panicked"
    );
}

/// Regression (found probing the contract): an id in the path that is not
/// UTF-8 once percent-decoded was refused by axum's `Path` extractor with a
/// `text/plain` body instead of the JSON error shape.
/// Sends `body` as JSON with the admin key; the status, the content type
/// and the JSON answer.
fn admin_request(
    server: &ServerProc,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, Value) {
    let resp = reqwest::blocking::Client::new()
        .request(method.parse().unwrap(), format!("{}{path}", server.base))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    (status, ct, resp.json().unwrap())
}

#[test]
fn a_non_utf8_path_id_is_refused_with_the_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    for (method, path) in [
        ("GET", "/v1/jobs/%FF"),
        ("PUT", "/v1/jobs/%C3%28"),
        ("GET", "/v1/runs/%FF"),
        ("POST", "/v1/runs/%FF/cancel"),
        ("DELETE", "/v1/webhooks/%FE"),
        ("DELETE", "/v1/api-keys/%FF"),
        ("GET", "/v1/nodes/%FF"),
    ] {
        let (status, ct, body) = admin_request(&server, method, path, "{}");
        assert_eq!(status, 400, "{method} {path}");
        assert_eq!(ct, "application/json", "{method} {path}");
        assert_eq!(
            body["error"]["code"], "invalid_id",
            "{method} {path}: {body}"
        );
    }
}

/// An unknown query parameter is refused everywhere (`invalid_query`), on
/// endpoints that take none as on those that take some, and nothing is
/// written.
#[test]
fn an_unknown_query_parameter_is_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    for (method, path) in [
        ("GET", "/v1/nodes?foo=1"),
        ("GET", "/v1/api-keys?foo=1"),
        ("GET", "/v1/webhooks?foo"),
        ("GET", "/v1/join-tokens?foo=1"),
        ("GET", "/v1/jobs/j1?foo=1"),
        ("PUT", "/v1/jobs/j1?dry_run=true"),
        ("GET", "/v1/runs/1?foo=1"),
        ("GET", "/v1/ha/status?foo=1"),
        ("GET", "/v1/jobs?foo=1"),
        ("GET", "/v1/runs?foo=1"),
    ] {
        let spec = r#"{"schedule": "@hourly", "executor": {"type": "exec", "argv": ["true"]}}"#;
        let (status, _, body) = admin_request(&server, method, path, spec);
        assert_eq!(status, 400, "{method} {path}");
        assert_eq!(
            body["error"]["code"], "invalid_query",
            "{method} {path}: {body}"
        );
    }
    let (status, _) = server.call("GET", "/v1/jobs/j1", None).unwrap();
    assert_eq!(status, 404, "the refused PUT wrote nothing");
    let (status, _) = server.call("GET", "/v1/nodes", None).unwrap();
    assert_eq!(status, 200, "without a query string");
}

/// A join without a token is refused for that (401), before its body is
/// read: like every other endpoint, the credential comes first.
#[test]
fn a_join_without_a_token_is_unauthorized_whatever_its_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let http = reqwest::blocking::Client::new();
    for body in ["", "not json", r#"{"node_id": "n1"}"#] {
        let resp = http
            .post(format!("{}/v1/agent/join", server.base))
            .body(body)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{body:?}");
        let answer: Value = resp.json().unwrap();
        assert_eq!(answer["error"]["code"], "unauthorized", "{answer}");
    }
}

//! Acceptance (issue 14, audit log): every admin mutation made over HTTP —
//! jobs, bulk apply, pause/resume/trigger/cancel, API keys, join tokens,
//! node revocation, webhooks — leaves exactly one `GET /v1/audit` row with
//! its action, target, acting key and the client's address; failed
//! mutations leave none; paging and filters work; a read key gets 403; and
//! neither the audit JSON nor the database files contain a created key,
//! join token or webhook secret. Through a replica, the row is written on
//! the primary with the original client's address (`via` the replica).

use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use sundial_e2e::ha::{start_pair, HaPair};
use sundial_e2e::{agent, free_port, wait_for, ServerProc, ADMIN_KEY};

/// A client whose connections come from `ip` (any 127/8 address is loopback).
fn client_from(ip: [u8; 4]) -> Client {
    Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn call(
    http: &Client,
    base: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Checks a mutation's status and notes the audit row it must leave.
fn expect(
    rows: &mut Vec<(String, Option<String>)>,
    (status, body): (u16, Value),
    want: u16,
    action: &str,
    target: Option<String>,
) -> Value {
    assert_eq!(status, want, "{action}: {body}");
    rows.push((action.to_string(), target));
    body
}

fn job_spec(schedule: &str) -> Value {
    json!({"schedule": schedule, "executor": {"type": "exec", "argv": ["true"]},
           "target": {"labels": {"role": "nobody"}}})
}

/// Every audit row (following cursors), oldest first.
fn all_rows(http: &Client, base: &str, page: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            Some(c) => format!("/v1/audit?limit={page}&cursor={c}"),
            None => format!("/v1/audit?limit={page}"),
        };
        let (status, body) = call(http, base, ADMIN_KEY, "GET", &path, None);
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= page);
        out.extend(items.iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    out.reverse();
    out
}

fn bootstrap_key_id(http: &Client, base: &str) -> String {
    let (_, keys) = call(http, base, ADMIN_KEY, "GET", "/v1/api-keys", None);
    keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "bootstrap")
        .and_then(|k| k["id"].as_str())
        .expect("the bootstrap key")
        .to_string()
}

/// Whether `needle` occurs in any file of the database (main file, WAL).
fn database_contains(data_dir: &std::path::Path, needle: &str) -> bool {
    std::fs::read_dir(data_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("sundial.db"))
        .any(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
}

#[test]
fn every_admin_mutation_is_audited_once_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProc::start(&data).unwrap();
    let base = server.base.clone();
    let http = client_from([127, 0, 0, 2]);
    let admin = |method: &str, path: &str, body: Option<Value>| {
        call(&http, &base, ADMIN_KEY, method, path, body)
    };

    // (action, target) of every mutation, in order.
    let mut expected: Vec<(String, Option<String>)> = Vec::new();
    let a = Some("a".to_string());
    expect(
        &mut expected,
        admin("PUT", "/v1/jobs/a", Some(job_spec("@every 1h"))),
        201,
        "job.put",
        a.clone(),
    );
    expect(
        &mut expected,
        admin("PUT", "/v1/jobs/a", Some(job_spec("@every 1h"))),
        200,
        "job.put",
        a.clone(),
    );
    expect(
        &mut expected,
        admin("POST", "/v1/jobs/a/pause", None),
        200,
        "job.pause",
        a.clone(),
    );
    expect(
        &mut expected,
        admin("POST", "/v1/jobs/a/resume", None),
        200,
        "job.resume",
        a.clone(),
    );
    let run = expect(
        &mut expected,
        admin("POST", "/v1/jobs/a/trigger", None),
        201,
        "job.trigger",
        a.clone(),
    );
    let run_id = run["id"].as_i64().unwrap().to_string();
    expect(
        &mut expected,
        admin("POST", &format!("/v1/runs/{run_id}/cancel"), None),
        200,
        "run.cancel",
        Some(run_id.clone()),
    );
    let applied = expect(
        &mut expected,
        admin(
            "POST",
            "/v1/jobs:apply",
            Some(json!({"jobs": [
                {"id": "a", "schedule": "@every 1h", "executor": {"type": "exec", "argv": ["true"]},
                 "target": {"labels": {"role": "nobody"}}},
                {"id": "b", "schedule": "@every 2h", "executor": {"type": "exec", "argv": ["true"]}},
            ]})),
        ),
        200,
        "jobs.apply",
        None,
    );
    assert_eq!(applied["applied"], true, "{applied}");
    // A dry run changes nothing and is not audited.
    let (status, _) = admin(
        "POST",
        "/v1/jobs:apply",
        Some(
            json!({"jobs": [{"id": "c", "schedule": "@hourly", "executor": {"type": "exec", "argv": ["true"]}}], "dry_run": true}),
        ),
    );
    assert_eq!(status, 200);
    expect(
        &mut expected,
        admin("DELETE", "/v1/jobs/b", None),
        204,
        "job.delete",
        Some("b".into()),
    );

    let key = expect(
        &mut expected,
        admin(
            "POST",
            "/v1/api-keys",
            Some(json!({"scope": "read", "name": "auditor"})),
        ),
        201,
        "key.create",
        None,
    );
    let read_key = key["key"].as_str().unwrap().to_string();
    let read_key_id = key["id"].as_str().unwrap().to_string();
    expected.last_mut().unwrap().1 = Some(read_key_id.clone());
    let doomed = admin(
        "POST",
        "/v1/api-keys",
        Some(json!({"scope": "admin", "name": "temp"})),
    );
    let doomed_id = doomed.1["id"].as_str().unwrap().to_string();
    let doomed_key = doomed.1["key"].as_str().unwrap().to_string();
    expect(
        &mut expected,
        doomed,
        201,
        "key.create",
        Some(doomed_id.clone()),
    );
    expect(
        &mut expected,
        admin("DELETE", &format!("/v1/api-keys/{doomed_id}"), None),
        204,
        "key.delete",
        Some(doomed_id),
    );

    let token = admin(
        "POST",
        "/v1/join-tokens",
        Some(json!({"name": "ds", "ttl": "1h"})),
    );
    let token_id = token.1["id"].as_str().unwrap().to_string();
    let token_secret = token.1["token"].as_str().unwrap().to_string();
    expect(
        &mut expected,
        token,
        201,
        "token.create",
        Some(token_id.clone()),
    );
    let (status, joined) = agent::join(&Client::new(), &server, &token_secret, "n1");
    assert_eq!(status, 201, "{joined}");
    let node_key = joined["key"].as_str().unwrap().to_string();
    expect(
        &mut expected,
        admin("DELETE", "/v1/nodes/n1", None),
        204,
        "node.revoke",
        Some("n1".into()),
    );
    expect(
        &mut expected,
        admin("DELETE", &format!("/v1/join-tokens/{token_id}"), None),
        204,
        "token.delete",
        Some(token_id),
    );

    let port = free_port().unwrap();
    let hook = admin(
        "POST",
        "/v1/webhooks",
        Some(json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["job.*"]})),
    );
    let hook_id = hook.1["id"].as_str().unwrap().to_string();
    let hook_secret = hook.1["secret"].as_str().unwrap().to_string();
    assert!(hook_secret.starts_with("whsec_"), "{}", hook.1);
    expect(
        &mut expected,
        hook,
        201,
        "webhook.create",
        Some(hook_id.clone()),
    );
    // Nobody listens on the port: the test delivery fails, and is audited.
    expect(
        &mut expected,
        admin("POST", &format!("/v1/webhooks/{hook_id}/test"), None),
        200,
        "webhook.test",
        Some(hook_id.clone()),
    );
    expect(
        &mut expected,
        admin("DELETE", &format!("/v1/webhooks/{hook_id}"), None),
        204,
        "webhook.delete",
        Some(hook_id),
    );

    // Refused mutations write nothing.
    assert_eq!(admin("DELETE", "/v1/jobs/nope", None).0, 404);
    assert_eq!(
        admin("PUT", "/v1/jobs/bad", Some(json!({"schedule": "nonsense"}))).0,
        400
    );
    assert_eq!(admin("POST", "/v1/runs/999999/cancel", None).0, 404);
    assert_eq!(admin("DELETE", "/v1/nodes/ghost", None).0, 404);
    assert_eq!(
        call(&http, &base, &read_key, "DELETE", "/v1/jobs/a", None).0,
        403
    );

    // One row per mutation, in order, with the key and the client's address.
    let admin_id = bootstrap_key_id(&http, &base);
    let rows = all_rows(&http, &base, 1000);
    let got: Vec<(String, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["target"].as_str().map(String::from),
            )
        })
        .collect();
    assert_eq!(got, expected);
    for r in &rows {
        assert_eq!(r["key_id"], admin_id.as_str(), "{r}");
        assert_eq!(r["key_name"], "bootstrap", "{r}");
        assert_eq!(r["source"], "127.0.0.2", "{r}");
        assert_eq!(r["via"], Value::Null, "{r}");
        assert!(r["at"].is_string() && r["id"].is_i64(), "{r}");
    }
    // Digests chain: a create has no before; an unchanged put keeps its
    // digest; pausing changes it; a delete has no after.
    let d = |i: usize, side: &str| rows[i]["digest"][side].clone();
    assert_eq!(d(0, "before"), Value::Null);
    assert!(d(0, "after").as_str().is_some_and(|h| h.len() == 64));
    assert_eq!(d(1, "before"), d(0, "after"));
    assert_eq!(d(1, "after"), d(0, "after"));
    assert_eq!(d(2, "before"), d(1, "after"));
    assert_ne!(d(2, "after"), d(2, "before"));
    assert_eq!(
        d(3, "after"),
        d(1, "after"),
        "resumed: the same state as before the pause"
    );
    assert_ne!(d(5, "before"), d(5, "after"), "the cancel changed the run");
    assert_eq!(
        rows[6]["detail"],
        json!({"created": 1, "updated": 0, "deleted": 0, "unchanged": 1})
    );
    assert_eq!(d(7, "after"), Value::Null);
    assert_eq!(
        rows[4]["detail"]["runs"],
        json!([run_id.parse::<i64>().unwrap()])
    );

    // Cursor paging gives the same rows.
    assert_eq!(all_rows(&http, &base, 3), rows);

    // Filters.
    let get = |q: &str| {
        let (status, body) = admin("GET", &format!("/v1/audit?{q}"), None);
        (
            status,
            body["items"].as_array().cloned().unwrap_or_default(),
        )
    };
    let (s, items) = get("action=job.pause,job.resume");
    assert_eq!(s, 200);
    assert_eq!(
        items
            .iter()
            .map(|r| r["action"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["job.resume", "job.pause"]
    );
    let (_, items) = get("target=a");
    assert_eq!(items.len(), 5, "two puts, pause, resume, trigger");
    let (_, items) = get(&format!("key={admin_id}&action=key.create"));
    assert_eq!(items.len(), 2);
    let (_, items) = get(&format!("key={read_key_id}"));
    assert!(items.is_empty());
    let (_, items) = get("since=2100-01-01T00:00:00Z");
    assert!(items.is_empty());
    let (_, items) = get(&format!("until={}", rows[1]["at"].as_str().unwrap()));
    assert!(items.len() <= 1);
    assert_eq!(get("action=job.frobnicate").0, 400);
    assert_eq!(get("since=yesterday").0, 400);
    assert_eq!(get("colour=red").0, 400);

    // Admin scope only.
    let (status, body) = call(&http, &base, &read_key, "GET", "/v1/audit", None);
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        call(&http, &base, "sdk_wrong", "GET", "/v1/audit", None).0,
        401
    );

    // No secret in the audit JSON or anywhere in the database files.
    let (_, raw) = admin("GET", "/v1/audit?limit=1000", None);
    let text = raw.to_string();
    for (what, secret) in [
        ("read key", &read_key),
        ("deleted admin key", &doomed_key),
        ("join token", &token_secret),
        ("webhook secret", &hook_secret),
        ("node key", &node_key),
    ] {
        assert!(!text.contains(secret.as_str()), "{what} in the audit JSON");
        assert!(
            !database_contains(&data, secret),
            "{what} in the database files"
        );
        // Nor the part after the prefix (base64 of the random bytes).
        let tail = secret.split_once('_').map_or(secret.as_str(), |(_, t)| t);
        assert!(
            !database_contains(&data, tail),
            "{what} (without prefix) in the database files"
        );
    }
    assert!(
        !database_contains(&data, ADMIN_KEY),
        "the admin key in the database files"
    );
}

#[test]
fn a_replica_forwards_and_the_primary_audits_the_original_client() {
    let dir = tempfile::tempdir().unwrap();
    // The doubles drive the roles for as long as the test runs.
    let HaPair {
        doubles: _doubles,
        servers: [primary, replica],
        ..
    } = start_pair(dir.path());
    let http = client_from([127, 0, 0, 3]);
    // The replica learns its role from the double: wait until it forwards.
    let created = wait_for(Duration::from_secs(10), || {
        let (status, body) = call(
            &http,
            &replica.base,
            ADMIN_KEY,
            "PUT",
            "/v1/jobs/fwd",
            Some(job_spec("@every 1h")),
        );
        (status == 201).then_some(body)
    });
    assert!(created.is_some(), "the replica never forwarded the write");
    // A client claiming an address itself is not believed.
    let (status, _) = http
        .put(format!("{}/v1/jobs/fwd2", primary.base))
        .bearer_auth(ADMIN_KEY)
        .header("x-sundial-forwarded-for", "addr=203.0.113.9;ts=0;sig=00")
        .header("x-forwarded-for", "203.0.113.9")
        .json(&job_spec("@every 1h"))
        .send()
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 201);

    let rows = all_rows(&http, &primary.base, 100);
    let fwd = rows
        .iter()
        .find(|r| r["target"] == "fwd")
        .expect("the forwarded put's row");
    assert_eq!(fwd["action"], "job.put");
    assert_eq!(fwd["source"], "127.0.0.3", "{fwd}");
    assert_eq!(fwd["via"], "127.0.0.1", "{fwd}");
    assert_eq!(fwd["key_name"], "bootstrap", "{fwd}");
    let direct = rows
        .iter()
        .find(|r| r["target"] == "fwd2")
        .expect("the direct put's row");
    assert_eq!(direct["source"], "127.0.0.3", "{direct}");
    assert_eq!(direct["via"], Value::Null, "{direct}");
    // The replica serves the log too (it reads the shared file).
    let on_replica = all_rows(&http, &replica.base, 100);
    assert_eq!(on_replica.len(), rows.len());
    assert_eq!(rows.len(), 2, "{rows:?}");
}

/// A console form post: the session cookie and the page's CSRF field.
fn console_post(http: &Client, base: &str, cookie: &str, page: &str, action: &str) -> u16 {
    let html = http
        .get(format!("{base}{page}"))
        .header("cookie", cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    let csrf = html[at..].split('"').next().unwrap().to_string();
    http.post(format!("{base}{action}"))
        .header("cookie", cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn console_actions_are_audited_with_the_signed_in_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let base = server.base.clone();
    let (status, _) = server
        .call("PUT", "/v1/jobs/a", Some(&job_spec("@every 1h")))
        .unwrap();
    assert_eq!(status, 201);
    let http = Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Sign in: the login form's double-submit token, then the session cookie.
    let login = http.get(format!("{base}/ui/login")).send().unwrap();
    let pre: Vec<String> = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    let html = login.text().unwrap();
    let at = html.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = html[at..].split('"').next().unwrap().to_string();
    let signed_in = http
        .post(format!("{base}/ui/login"))
        .header("cookie", pre.join("; "))
        .form(&[("key", ADMIN_KEY), ("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(signed_in.status().as_u16(), 303);
    let cookie: Vec<String> = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string())
        .filter(|c| !c.ends_with('='))
        .collect();
    let cookie = cookie.join("; ");
    let status = console_post(
        &http,
        &base,
        &cookie,
        "/ui/jobs/a/confirm/pause",
        "/ui/jobs/a/pause",
    );
    assert_eq!(status, 303);

    let rows = all_rows(&client_from([127, 0, 0, 2]), &base, 100);
    let paused = rows
        .iter()
        .find(|r| r["action"] == "job.pause")
        .expect("the console's pause");
    assert_eq!(paused["target"], "a");
    assert_eq!(paused["key_name"], "bootstrap", "{paused}");
    assert_eq!(paused["source"], "127.0.0.4", "{paused}");
    assert_eq!(rows.len(), 2, "the put and the pause: {rows:?}");
}

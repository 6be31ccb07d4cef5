//! Webhooks with real processes: a receiver that verifies every signature
//! with an independent implementation (the `standardwebhooks` package) gets
//! `run.failed` for a failing job; while it is down for 10 s deliveries are
//! retried, and once it is back every event arrives, in order, each retry
//! with the same `webhook-id`; the Slack format and the test endpoint work;
//! the attempts are listed with their status codes.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use sundial_e2e::receiver::{python, Receiver};
use sundial_e2e::{free_port, wait_for, ServerProc};

fn ids_of(received: &[Value], path: &str) -> Vec<String> {
    received
        .iter()
        .filter(|r| r["path"] == path && r.get("bad").is_none())
        .map(|r| r["webhook_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn deliveries_are_signed_retried_in_order_and_arrive_after_an_outage() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let _daemon = server.one_daemon(dir.path()).unwrap();

    let port = free_port().unwrap();
    let slack_port = free_port().unwrap();
    let (status, hook) = server
        .call(
            "POST",
            "/v1/webhooks",
            Some(&json!({"url": format!("http://127.0.0.1:{port}/hook"),
                         "events": ["run.*", "job.*"]})),
        )
        .unwrap();
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let hook_id = hook["id"].as_str().unwrap().to_string();
    let (status, slack) = server
        .call(
            "POST",
            "/v1/webhooks",
            Some(&json!({"url": format!("http://127.0.0.1:{slack_port}/slack"),
                         "events": ["run.failed"], "jobs": {"labels": {"team": "billing"}}, "format": "slack"})),
        )
        .unwrap();
    assert_eq!(status, 201, "{slack}");
    // The secret is shown once.
    let (_, listed) = server.call("GET", "/v1/webhooks", None).unwrap();
    assert!(listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w.get("secret").is_none()));
    // Bad input is refused with the field named.
    for (bad, field) in [
        (json!({"url": "ftp://x/", "events": ["*"]}), "url"),
        (
            json!({"url": "http://127.0.0.1:1/", "events": []}),
            "events",
        ),
        (
            json!({"url": "http://127.0.0.1:1/", "events": ["runs.*"]}),
            "events",
        ),
    ] {
        let (status, e) = server.call("POST", "/v1/webhooks", Some(&bad)).unwrap();
        assert_eq!(
            (status, e["error"]["field"].as_str()),
            (400, Some(field)),
            "{e}"
        );
    }

    // One receiver per webhook, each holding that webhook's secret.
    let out = dir.path().join("received.jsonl");
    let mut receiver = Receiver::start(&py, port, &secret, &out);
    let slack_receiver = Receiver::start(
        &py,
        slack_port,
        slack["secret"].as_str().unwrap(),
        &dir.path().join("slack.jsonl"),
    );

    let yearly = "0 0 0 1 1 *";
    let failing = json!({"schedule": yearly, "labels": {"team": "billing"},
        "executor": {"type": "shell", "script": "echo boom; exit 3"}});
    assert_eq!(
        server
            .call("PUT", "/v1/jobs/failing", Some(&failing))
            .unwrap()
            .0,
        201
    );
    // Fails too, but carries no team=billing label: not for the slack webhook.
    let unlabelled = json!({"schedule": yearly,
        "executor": {"type": "shell", "script": "exit 4"}});
    assert_eq!(
        server
            .call("PUT", "/v1/jobs/unlabelled", Some(&unlabelled))
            .unwrap()
            .0,
        201
    );
    server
        .call("POST", "/v1/jobs/unlabelled/trigger", None)
        .unwrap();
    server
        .call("POST", "/v1/jobs/failing/trigger", None)
        .unwrap();
    let failed = wait_for(Duration::from_secs(20), || {
        receiver.received().into_iter().find(|r| {
            r["path"] == "/hook"
                && r["body"]["type"] == "run.failed"
                && r["body"]["job_id"] == "failing"
        })
    })
    .expect("run.failed delivered and verified");
    assert_eq!(failed["body"]["job_id"], "failing");
    assert_eq!(failed["body"]["data"]["exit_code"], 3);
    assert_eq!(
        failed["webhook_id"],
        failed["body"]["id"].to_string().as_str()
    );

    // The receiver goes away for 10 s while events keep happening.
    receiver.stop();
    for i in 0..3 {
        server
            .call(
                "PUT",
                &format!("/v1/jobs/during-{i}"),
                Some(&json!({"schedule": yearly,
                "executor": {"type": "exec", "argv": ["true"]}})),
            )
            .unwrap();
    }
    server
        .call("POST", "/v1/jobs/failing/trigger", None)
        .unwrap();
    std::thread::sleep(Duration::from_secs(10));
    let (_, log) = server
        .call(
            "GET",
            &format!("/v1/webhooks/{hook_id}/deliveries?limit=1000"),
            None,
        )
        .unwrap();
    let retrying: Vec<&Value> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["outcome"] == "retrying")
        .collect();
    assert!(retrying.len() >= 2, "retried while down: {log}");
    assert!(retrying
        .iter()
        .all(|d| d["status"].is_null() && d["error"].is_string()));
    let (_, state) = server
        .call("GET", &format!("/v1/webhooks/{hook_id}"), None)
        .unwrap();
    assert!(state["attempts"].as_u64().unwrap() >= 2, "{state}");
    receiver.spawn();

    // Every event of the webhook's types since it was created arrives, in order.
    let (_, all) = server
        .call(
            "GET",
            &format!(
                "/v1/events?after={}&type=run.*,job.*&limit=1000",
                hook["cursor"]
            ),
            None,
        )
        .unwrap();
    let expected: Vec<String> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].to_string())
        .collect();
    assert!(expected.len() >= 8, "{all}");
    let got = wait_for(Duration::from_secs(30), || {
        let got = ids_of(&receiver.received(), "/hook");
        let have: BTreeSet<&String> = got.iter().collect();
        expected.iter().all(|e| have.contains(e)).then_some(got)
    })
    .unwrap_or_else(|| panic!("not every event arrived: {:?}", receiver.received()));
    // In order, duplicates only as repeats of the same id.
    let mut first_seen: Vec<&String> = Vec::new();
    for id in &got {
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    let order: Vec<i64> = first_seen.iter().map(|s| s.parse().unwrap()).collect();
    assert!(
        order.windows(2).all(|w| w[1] > w[0]),
        "out of order: {order:?}"
    );
    let bad: Vec<Value> = receiver
        .received()
        .into_iter()
        .chain(slack_receiver.received())
        .filter(|r| r.get("bad").is_some())
        .collect();
    assert!(bad.is_empty(), "signatures that did not verify: {bad:?}");
    let (_, log) = server
        .call(
            "GET",
            &format!("/v1/webhooks/{hook_id}/deliveries?limit=1000"),
            None,
        )
        .unwrap();
    let delivered = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["outcome"] == "delivered")
        .count();
    assert!(delivered >= expected.len(), "{log}");
    assert!(log["items"][0]["status"] == 204 || log["items"][0]["outcome"] == "retrying");

    // The slack webhook: only run.failed of jobs labelled team=billing, as {"text": …}.
    let texts = wait_for(Duration::from_secs(20), || {
        let t: Vec<String> = slack_receiver
            .received()
            .iter()
            .filter_map(|r| r["body"]["text"].as_str().map(str::to_string))
            .collect();
        (t.len() >= 2).then_some(t)
    })
    .unwrap_or_else(|| {
        let id = slack["id"].as_str().unwrap();
        let (_, state) = server.call("GET", &format!("/v1/webhooks/{id}"), None).unwrap();
        let (_, log) = server
            .call("GET", &format!("/v1/webhooks/{id}/deliveries"), None)
            .unwrap();
        let (_, evs) = server.call("GET", "/v1/events?type=run.failed", None).unwrap();
        let (_, job) = server.call("GET", "/v1/jobs/failing", None).unwrap();
        panic!(
            "two slack messages: got {:?}; webhook {state}; deliveries {log}; events {evs}; job {job}",
            slack_receiver.received(),
        )
    });
    assert!(
        texts
            .iter()
            .all(|t| t.starts_with("Sundial: run.failed job=failing run=")),
        "{texts:?}"
    );
    // The test endpoint sends now and reports the attempt.
    let (status, test) = server
        .call("POST", &format!("/v1/webhooks/{hook_id}/test"), None)
        .unwrap();
    assert_eq!(status, 200, "{test}");
    assert_eq!(test["outcome"], "delivered", "{test}");
    assert_eq!(test["status"], 204);
    assert!(test["message_id"].as_str().unwrap().starts_with("test_"));
    let test_seen = wait_for(Duration::from_secs(5), || {
        receiver
            .received()
            .into_iter()
            .find(|r| r["body"]["type"] == "webhook.test")
    })
    .expect("test message verified by the receiver");
    assert_eq!(test_seen["webhook_id"], test["message_id"]);
    let lag = server.metric("sundial_webhook_lag_seconds_count").unwrap();
    assert!(lag >= expected.len() as f64, "lag observations: {lag}");
    let (status, _) = server
        .call("DELETE", &format!("/v1/webhooks/{hook_id}"), None)
        .unwrap();
    assert_eq!(status, 204);
    eprintln!(
        "webhooks: {} events delivered after a 10 s outage, {} attempts retried",
        expected.len(),
        retrying.len()
    );
}

/// CPU time (user + system, in clock ticks) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the line, the 12th and 13th after it.
    let rest: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
}

/// An event being retried that stops matching the webhook's label selector
/// (its job lost the label) is skipped: the webhook moves past it and goes
/// idle. It used to spin on it at full CPU until a matching event came.
#[test]
fn a_retried_event_that_stops_matching_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let closed = free_port().unwrap();
    let (status, hook) = server
        .call(
            "POST",
            "/v1/webhooks",
            Some(&json!({"url": format!("http://127.0.0.1:{closed}/hook"),
                         "events": ["job.*"], "jobs": {"labels": {"team": "x"}}})),
        )
        .unwrap();
    assert_eq!(status, 201, "{hook}");
    let path = format!("/v1/webhooks/{}", hook["id"].as_str().unwrap());
    let job = |team: &str| {
        json!({"schedule": "@yearly", "executor": {"type": "exec", "argv": ["true"]},
               "labels": {"team": team}})
    };
    let (status, _) = server
        .call("PUT", "/v1/jobs/lab1", Some(&job("x")))
        .unwrap();
    assert_eq!(status, 201);
    wait_for(Duration::from_secs(10), || {
        let (_, h) = server.call("GET", &path, None).ok()?;
        (h["attempts"].as_u64()? >= 1).then_some(())
    })
    .expect("job.created is being retried");
    // The job loses the label: neither its job.created nor its job.updated
    // is for this webhook any more.
    let (status, _) = server
        .call("PUT", "/v1/jobs/lab1", Some(&job("y")))
        .unwrap();
    assert_eq!(status, 200);
    let (_, events) = server.call("GET", "/v1/events?limit=1000", None).unwrap();
    let head = events["next_cursor"]
        .as_str()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    let idle = wait_for(Duration::from_secs(10), || {
        let (_, h) = server.call("GET", &path, None).ok()?;
        (h["cursor"].as_i64()? >= head && h["attempts"] == 0).then_some(h)
    });
    let (_, now) = server.call("GET", &path, None).unwrap();
    assert!(
        idle.is_some(),
        "the webhook is still on the skipped event: {now}"
    );
    // And it rests: well under a core over two seconds (it spun at >100 %).
    let pid = server.pid().unwrap();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 100,
        "the server used {used} ticks of CPU in 2 s while idle"
    );
}

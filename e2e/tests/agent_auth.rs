//! Acceptance: bad signature, stale timestamp, replayed nonce, revoked node
//! and wrong join token each get 401, are counted in metrics, and write nothing.

use reqwest::blocking::Client;
use serde_json::json;
use std::time::Duration;
use sundial_e2e::agent::{join, send, signed};
use sundial_e2e::ServerProc;
use sundial_proto::sign::NodeKey;

fn nonce(n: u8) -> String {
    format!("{:032x}", u128::from(n) * 0x0101_0101_0101_0101)
}

#[test]
fn forged_stale_replayed_revoked_and_wrong_token_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let http = Client::new();
    let token = server.join_token().unwrap();
    let (status, cred) = join(&http, &server, &token, "t1");
    assert_eq!(status, 201, "{cred}");
    let key = NodeKey::from_hex(cred["key"].as_str().unwrap()).unwrap();
    let register = json!({"labels": {"role": "test"}, "capacity": 1, "executors": ["exec"]});
    let ok = signed(&key, "t1", "/v1/agent/register", &register, 0, &nonce(1));
    assert_eq!(send(&http, &server, &ok).0, 200);
    let poll = signed(
        &key,
        "t1",
        "/v1/agent/poll",
        &json!({"max": 1, "wait_ms": 0}),
        0,
        &nonce(2),
    );
    assert_eq!(send(&http, &server, &poll).0, 200);
    // A second node, revoked: its old credential must stop working.
    let (_, cred2) = join(&http, &server, &token, "t2");
    let key2 = NodeKey::from_hex(cred2["key"].as_str().unwrap()).unwrap();
    assert_eq!(server.call("DELETE", "/v1/nodes/t2", None).unwrap().0, 204);
    // Let the last-seen flush (every 5 s) happen before taking the snapshot.
    std::thread::sleep(Duration::from_secs(6));
    let before = server.snapshot().unwrap();

    let mut forged = signed(&key, "t1", "/v1/agent/register", &register, 0, &nonce(3));
    forged.body = serde_json::to_vec(
        &json!({"labels": {"role": "admin"}, "capacity": 1, "executors": ["exec"]}),
    )
    .unwrap();
    let cases = [
        ("bad_signature", forged),
        (
            "stale_timestamp",
            signed(&key, "t1", "/v1/agent/register", &register, -301, &nonce(4)),
        ),
        ("replayed_nonce", poll),
        (
            "revoked_node",
            signed(&key2, "t2", "/v1/agent/register", &register, 0, &nonce(5)),
        ),
        (
            "unknown_node",
            signed(&key, "ghost", "/v1/agent/register", &register, 0, &nonce(6)),
        ),
    ];
    for (reason, req) in &cases {
        let (status, body) = send(&http, &server, req);
        assert_eq!(status, 401, "{reason}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{reason}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(reason),
            "{reason}: {body}"
        );
    }
    let (status, body) = join(&http, &server, "sjt_not-a-real-token", "t3");
    assert_eq!(status, 401, "{body}");
    let (status, _) = http
        .post(format!("{}/v1/agent/poll", server.base))
        .header("authorization", "Sundial-HMAC garbage")
        .body("{}")
        .send()
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 401);

    assert_eq!(
        before,
        server.snapshot().unwrap(),
        "a refused request wrote to the database"
    );
    for reason in [
        "bad_signature",
        "stale_timestamp",
        "replayed_nonce",
        "revoked_node",
        "unknown_node",
        "bad_join_token",
        "malformed_header",
    ] {
        let n = server
            .metric(&format!(
                "sundial_agent_auth_failures_total{{reason=\"{reason}\"}}"
            ))
            .unwrap();
        assert_eq!(n, 1.0, "metric for {reason}");
    }
    // The server logged each refusal.
    let log = server.log_text();
    assert_eq!(log.matches("agent request refused").count(), 7, "{log}");
}

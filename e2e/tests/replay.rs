//! Acceptance: a signed agent request captured before the server is killed
//! with SIGKILL and restarted, or before a failover to the other server, is
//! refused (401, counted as `replayed_nonce`) when replayed afterwards, while
//! freshly signed requests from the same node keep working.

use reqwest::blocking::Client;
use serde_json::json;
use std::time::Duration;
use sundial_e2e::agent::{join_key, send, signed, SignedRequest};
use sundial_e2e::ha::{is_primary, start_pair, HaPair};
use sundial_e2e::{wait_for, ServerProc};
use sundial_proto::sign::NodeKey;

fn poll(key: &NodeKey, node: &str, nonce: &str) -> SignedRequest {
    signed(
        key,
        node,
        "/v1/agent/poll",
        &json!({"max": 1, "wait_ms": 0}),
        0,
        nonce,
    )
}

const REPLAYED: &str = "sundial_agent_auth_failures_total{reason=\"replayed_nonce\"}";

#[test]
fn a_request_captured_before_kill9_is_refused_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&dir.path().join("data")).unwrap();
    let http = Client::new();
    let key = join_key(&http, &server, "r1");
    let register = signed(
        &key,
        "r1",
        "/v1/agent/register",
        &json!({"labels": {}, "capacity": 1, "executors": ["exec"]}),
        0,
        "11111111111111111111111111111111",
    );
    assert_eq!(send(&http, &server, &register).0, 200);
    let captured = poll(&key, "r1", "22222222222222222222222222222222");
    let (status, body) = send(&http, &server, &captured);
    assert_eq!(status, 200, "{body}");
    // Same process: the in-memory filter refuses it.
    assert_eq!(send(&http, &server, &captured).0, 401);

    server.kill9().unwrap();
    server.restart().unwrap();

    for replay in [&register, &captured] {
        let (status, body) = send(&http, &server, replay);
        assert_eq!(status, 401, "replay after restart accepted: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    assert_eq!(server.metric(REPLAYED).unwrap(), 2.0);
    // The legitimate daemon re-signs every request: it keeps working.
    let fresh = poll(&key, "r1", "33333333333333333333333333333333");
    let (status, body) = send(&http, &server, &fresh);
    assert_eq!(status, 200, "fresh request after restart: {body}");
}

#[test]
fn a_request_captured_before_a_failover_is_refused_by_the_new_primary() {
    let dir = tempfile::tempdir().unwrap();
    let HaPair {
        doubles: [d1, d2],
        servers: [s1, s2],
        ..
    } = start_pair(dir.path());
    assert!(is_primary(&s1) && !is_primary(&s2));

    let http = Client::new();
    let key = join_key(&http, &s1, "f1");
    let captured = poll(&key, "f1", "44444444444444444444444444444444");
    let (status, body) = send(&http, &s1, &captured);
    assert_eq!(status, 200, "{body}");

    // Failover: s2 becomes primary, s1 a replica that forwards to it.
    let host2 = format!("127.0.0.1:{}", s2.port);
    d1.make_replica(Some(&host2)).unwrap();
    d2.make_primary().unwrap();
    wait_for(Duration::from_secs(10), || {
        (is_primary(&s2) && !is_primary(&s1)).then_some(())
    })
    .expect("roles swapped");

    let (status, body) = send(&http, &s2, &captured);
    assert_eq!(status, 401, "replay to the new primary accepted: {body}");
    let (status, body) = send(&http, &s1, &captured);
    assert_eq!(
        status, 401,
        "replay through the new replica accepted: {body}"
    );
    assert_eq!(s2.metric(REPLAYED).unwrap(), 2.0);
    let fresh = poll(&key, "f1", "55555555555555555555555555555555");
    let (status, body) = send(&http, &s1, &fresh);
    assert_eq!(status, 200, "fresh request after failover: {body}");
}

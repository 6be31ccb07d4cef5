//! Hand-built agent requests for the auth tests: a request signed with a
//! node key (so a test can send it, tamper with it or replay it), a sender,
//! and the join call (and a join that returns the node key).

use crate::ServerProc;
use reqwest::blocking::Client;
use serde_json::{json, Value};
use sundial_proto::sign::{self, AuthHeader, NodeKey};
use sundial_proto::time::now_ms;

/// A signed agent POST, kept whole so it can be sent again.
pub struct SignedRequest {
    pub path: String,
    pub body: Vec<u8>,
    pub header: String,
}

/// Signs `body` for `POST path` as `node`, with a timestamp `ts_offset`
/// seconds from now.
pub fn signed(
    key: &NodeKey,
    node: &str,
    path: &str,
    body: &Value,
    ts_offset: i64,
    nonce: &str,
) -> SignedRequest {
    let body = serde_json::to_vec(body).unwrap();
    let ts = now_ms() / 1000 + ts_offset;
    let header = AuthHeader {
        node: node.to_string(),
        ts,
        nonce: nonce.to_string(),
        sig: sign::sign(key, "POST", path, ts, nonce, &body),
    };
    SignedRequest {
        path: path.to_string(),
        body,
        header: header.render(),
    }
}

/// Sends `r` to `server`; returns (status, JSON or Null).
pub fn send(http: &Client, server: &ServerProc, r: &SignedRequest) -> (u16, Value) {
    let resp = http
        .post(format!("{}{}", server.base, r.path))
        .header("authorization", &r.header)
        .header("content-type", "application/json")
        .body(r.body.clone())
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// `POST /v1/agent/join` with `token` for `node`; returns (status, JSON or Null).
pub fn join(http: &Client, server: &ServerProc, token: &str, node: &str) -> (u16, Value) {
    let resp = http
        .post(format!("{}/v1/agent/join", server.base))
        .header("authorization", format!("Sundial-Join {token}"))
        .json(&json!({"node_id": node}))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// Joins `node` with a fresh join token and returns its node key.
pub fn join_key(http: &Client, server: &ServerProc, node: &str) -> NodeKey {
    let token = server.join_token().unwrap();
    let (status, cred) = join(http, server, &token, node);
    assert_eq!(status, 201, "{cred}");
    NodeKey::from_hex(cred["key"].as_str().unwrap()).unwrap()
}

//! Acceptance: API keys carry the `sdk_` prefix, may expire (`expires_in` or
//! `expires_at`), an expired key gets 401 with a message saying so, and bad
//! expiry input is refused with the field named, creating nothing.

use serde_json::{json, Value};
use std::time::Duration;
use sundial_e2e::{binary, wait_for, ServerProc, ADMIN_KEY};

fn with_key(server: &ServerProc, key: &str) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/v1/jobs", server.base))
        .bearer_auth(key)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn keys_expire_with_a_clear_401_and_bad_expiry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let (status, created) = server
        .call(
            "POST",
            "/v1/api-keys",
            Some(&json!({"scope": "read", "name": "short", "expires_in": "2s"})),
        )
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sdk_") && key.len() == 47, "{key}");
    assert!(created["expires_at"].is_string(), "{created}");
    assert_eq!(with_key(&server, &key).0, 200);

    let (status, body) = wait_for(Duration::from_secs(10), || {
        let (status, body) = with_key(&server, &key);
        (status != 200).then_some((status, body))
    })
    .expect("the key never expired");
    assert_eq!(status, 401, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("expired"), "{message}");

    let (_, list) = server.call("GET", "/v1/api-keys", None).unwrap();
    let item = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == created["id"])
        .unwrap()
        .clone();
    assert_eq!(item["expires_at"], created["expires_at"], "{item}");
    assert!(item.get("last_used_at").is_some(), "{item}");

    let (status, body) = server
        .call(
            "POST",
            "/v1/api-keys",
            Some(&json!({"scope": "admin", "expires_at": "2030-01-01T00:00:00Z"})),
        )
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["expires_at"], "2030-01-01T00:00:00.000Z");

    let before = list["items"].as_array().unwrap().len() + 1;
    for (bad, field) in [
        (
            json!({"scope": "read", "expires_in": "1h", "expires_at": "2030-01-01T00:00:00Z"}),
            "expires_in",
        ),
        (
            json!({"scope": "read", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (json!({"scope": "read", "expires_in": "soon"}), "expires_in"),
        (json!({"scope": "read", "expires_in": "0s"}), "expires_in"),
    ] {
        let (status, body) = server.call("POST", "/v1/api-keys", Some(&bad)).unwrap();
        assert_eq!(status, 400, "{bad} → {body}");
        assert_eq!(body["error"]["field"], field, "{bad} → {body}");
    }
    let (_, list) = server.call("GET", "/v1/api-keys", None).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), before);
}

#[test]
fn cli_keys_create_takes_expires_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let out = std::process::Command::new(binary("sundial").unwrap())
        .args([
            "keys",
            "create",
            "--name",
            "ci",
            "--expires-in",
            "90d",
            "-o",
            "json",
        ])
        .env("SUNDIAL_CLI_CONFIG", dir.path().join("cli.toml"))
        .env("SUNDIAL_URL", &server.base)
        .env("SUNDIAL_KEY", ADMIN_KEY)
        .env_remove("SUNDIAL_KEY_FILE")
        .env_remove("SUNDIAL_CONTEXT")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expires = created["expires_at"].as_str().expect("expires_at");
    let at = sundial_proto::time::parse_rfc3339_ms(expires).unwrap();
    let days = (at - sundial_proto::time::now_ms()) / 86_400_000;
    assert!((89..=90).contains(&days), "{created}");
}

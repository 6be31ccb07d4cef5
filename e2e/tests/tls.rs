//! TLS: the server serves HTTPS with a certificate made at test time; a
//! daemon that trusts the CA joins and runs a job, and its `http` jobs trust
//! the CA too (besides the built-in roots: see the daemon's `client` tests);
//! a client that does not trust it is refused.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::json;
use std::time::Duration;
use sundial_e2e::{wait_for, DaemonProc, ServerProc, ADMIN_KEY};

#[test]
fn https_server_and_daemon_verifying_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();

    let server =
        ServerProc::start_tls(&dir.path().join("data"), &cert_pem, &key_pem, &ca_pem).unwrap();
    assert!(server.base.starts_with("https://localhost:"));
    let token = server.join_token().unwrap();
    let _daemon = DaemonProc::start(
        &server.base,
        &token,
        "tls-node",
        &dir.path().join("n"),
        &["--ca-file", ca_pem.to_str().unwrap()],
    )
    .unwrap();
    let spec = json!({"schedule": "0 0 0 1 1 *", "executor": {"type": "exec", "argv": ["/bin/echo", "over tls"]}});
    assert_eq!(
        server.call("PUT", "/v1/jobs/tls", Some(&spec)).unwrap().0,
        201
    );
    wait_for(Duration::from_secs(20), || {
        let (_, n) = server.call("GET", "/v1/nodes", None).ok()?;
        (n["items"].as_array()?.len() == 1).then_some(())
    })
    .expect("the daemon joined over HTTPS");
    let (_, run) = server.call("POST", "/v1/jobs/tls/trigger", None).unwrap();
    let id = run["id"].as_i64().unwrap();
    let done = wait_for(Duration::from_secs(20), || {
        let (_, r) = server.call("GET", &format!("/v1/runs/{id}"), None).ok()?;
        (r["state"] == "succeeded").then_some(r)
    })
    .expect("the job ran");
    assert_eq!(done["output"], "over tls\n");

    // An `http` job to an endpoint signed by the same private CA.
    let spec = json!({"schedule": "0 0 0 1 1 *", "executor": {
        "type": "http", "method": "GET", "url": format!("{}/healthz", server.base),
        "expect_status": [200]}});
    assert_eq!(
        server
            .call("PUT", "/v1/jobs/tls-http", Some(&spec))
            .unwrap()
            .0,
        201
    );
    let (_, run) = server
        .call("POST", "/v1/jobs/tls-http/trigger", None)
        .unwrap();
    let id = run["id"].as_i64().unwrap();
    let done = wait_for(Duration::from_secs(20), || {
        let (_, r) = server.call("GET", &format!("/v1/runs/{id}"), None).ok()?;
        matches!(r["state"].as_str(), Some("succeeded" | "failed")).then_some(r)
    })
    .expect("the http job ended");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["exit_code"], 200, "{done}");

    // A client without the CA cannot talk to it.
    let untrusting = reqwest::blocking::Client::new();
    let err = untrusting
        .get(format!("{}/v1/jobs", server.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .unwrap_err();
    assert!(
        err.is_connect()
            || err.to_string().contains("certificate")
            || format!("{err:?}").contains("UnknownIssuer"),
        "{err:?}"
    );
}

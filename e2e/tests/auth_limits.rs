//! Acceptance: repeated authentication failures are rate limited per source
//! address (admin keys, agent signatures, join tokens): after the burst the
//! source gets `429` + `Retry-After` before its credential is evaluated, the
//! refusals are counted in `sundial_auth_rate_limited_total`, the log never
//! holds a presented secret, and the source recovers once the bucket refills.
//! Also measures a brute force of admin keys over loopback (printed; the
//! number is in docs/benchmarks.md) and checks its evaluated-guess bound.

use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use sundial_e2e::{ServerProc, ADMIN_KEY};
use sundial_proto::sign::{self, AuthHeader, NodeKey};
use sundial_proto::time::now_ms;

/// The server's per-source burst (`auth_limit::PER_SOURCE`).
const BURST: usize = 20;

fn get_jobs(http: &Client, server: &ServerProc, key: &str) -> reqwest::blocking::Response {
    http.get(format!("{}/v1/jobs", server.base))
        .bearer_auth(key)
        .send()
        .unwrap()
}

#[test]
fn admin_key_failures_are_limited_per_source_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let http = Client::new();
    let secret_guess = "sdk_guess-that-must-never-be-logged";
    let mut unauthorized = 0;
    let mut limited = None;
    for _ in 0..BURST + 5 {
        let resp = get_jobs(&http, &server, secret_guess);
        match resp.status().as_u16() {
            401 => unauthorized += 1,
            429 => {
                limited = Some(resp);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(unauthorized, BURST, "failures allowed before the limit");
    let resp = limited.expect("no 429 after the burst");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Blocked before evaluation: even the right key waits.
    assert_eq!(get_jobs(&http, &server, ADMIN_KEY).status(), 429);
    std::thread::sleep(Duration::from_secs(retry));
    assert_eq!(get_jobs(&http, &server, ADMIN_KEY).status(), 200);
    assert!(
        server
            .metric("sundial_auth_rate_limited_total{by=\"source\",kind=\"api_key\"}")
            .unwrap()
            >= 2.0
    );
    let log = server.log_text();
    assert!(
        log.contains("authentication failures rate limited"),
        "{log}"
    );
    assert!(
        !log.contains(secret_guess),
        "a presented key reached the log"
    );
    assert!(!log.contains(ADMIN_KEY), "the admin key reached the log");
}

#[test]
fn agent_signature_and_join_token_failures_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let http = Client::new();
    let forged = NodeKey::from_hex(&"ab".repeat(32)).unwrap();
    let body = serde_json::to_vec(&json!({"max": 1, "wait_ms": 0})).unwrap();
    let mut statuses = Vec::new();
    for n in 0..BURST + 1 {
        let ts = now_ms() / 1000;
        let nonce = format!("{n:032x}");
        let header = AuthHeader {
            node: "victim".into(),
            ts,
            nonce: nonce.clone(),
            sig: sign::sign(&forged, "POST", "/v1/agent/poll", ts, &nonce, &body),
        };
        let resp = http
            .post(format!("{}/v1/agent/poll", server.base))
            .header("authorization", header.render())
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert!(statuses[..BURST].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses[BURST], 429, "{statuses:?}");
    // The source stays blocked for join tokens too (one bucket per address).
    let resp = http
        .post(format!("{}/v1/agent/join", server.base))
        .header("authorization", "Sundial-Join not-a-token")
        .json(&json!({"node_id": "n1"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(
        server
            .metric("sundial_auth_rate_limited_total{by=\"source\",kind=\"agent\"}")
            .unwrap()
            >= 1.0
    );
    assert!(
        server
            .metric("sundial_auth_rate_limited_total{by=\"source\",kind=\"join_token\"}")
            .unwrap()
            >= 1.0
    );
    assert!(!server.log_text().contains("not-a-token"));
}

/// Brute force of admin keys from one loopback client for a few seconds:
/// how many requests the server answers and how many guesses it evaluates.
#[test]
fn brute_force_of_admin_keys_over_loopback_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let http = Client::new();
    let seconds = 5.0;
    let started = Instant::now();
    let (mut sent, mut evaluated, mut limited) = (0u64, 0u64, 0u64);
    while started.elapsed().as_secs_f64() < seconds {
        let guess = format!("sdk_{sent:040x}");
        match get_jobs(&http, &server, &guess).status().as_u16() {
            401 => evaluated += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
        sent += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "brute force over loopback: {sent} requests in {elapsed:.1} s ({:.0}/s), \
         {evaluated} guesses evaluated ({:.1}/s), {limited} answered 429",
        sent as f64 / elapsed,
        evaluated as f64 / elapsed
    );
    // The burst, then one a second (and one for the partial second).
    assert!(
        evaluated as f64 <= BURST as f64 + elapsed + 1.0,
        "{evaluated} guesses evaluated in {elapsed:.1} s"
    );
    assert!(limited > 0);
}

/// The console's sign-in form (login cookie + CSRF field) posting `key`.
fn console_sign_in(http: &Client, server: &ServerProc, key: &str) -> reqwest::blocking::Response {
    let page = http
        .get(format!("{}/ui/login", server.base))
        .send()
        .unwrap();
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|c| c.to_str().ok()?.split(';').next().map(str::to_string))
        .collect::<Vec<_>>()
        .join("; ");
    let html = page.text().unwrap();
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    let csrf = html[at..].split('"').next().unwrap().to_string();
    http.post(format!("{}/ui/login", server.base))
        .header("cookie", cookie)
        .form(&[("key", key), ("csrf", csrf.as_str())])
        .send()
        .unwrap()
}

#[test]
fn console_sign_in_failures_are_limited_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let http = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for n in 0..BURST {
        let resp = console_sign_in(&http, &server, "sdk_wrong-console-guess");
        assert_eq!(resp.status().as_u16(), 401, "attempt {n}");
    }
    let resp = console_sign_in(&http, &server, ADMIN_KEY);
    assert_eq!(resp.status().as_u16(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.text().unwrap().contains("Too many failed sign-ins"));
    assert!(!server.log_text().contains("sdk_wrong-console-guess"));
}

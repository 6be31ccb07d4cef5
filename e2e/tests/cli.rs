//! The `sundial` CLI against real servers (and a real daemon): apply / diff /
//! prune / export round trips, all-or-nothing failure, exit codes,
//! `trigger --wait`, `runs logs --follow`, contexts and TLS.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use sundial_e2e::{binary, free_port, wait_for, DaemonProc, ServerProc, ADMIN_KEY};
use sundial_proto::{Job, Run, RunState};

/// Runs `sundial` with a private config file and no inherited connection settings.
fn sundial(cfg: &Path, server: Option<&str>, args: &[&str]) -> Output {
    sundial_cmd(cfg, server, args).output().unwrap()
}

/// The `sundial` command [`sundial`] runs, for a test that changes its
/// environment or its pipes first.
fn sundial_cmd(cfg: &Path, server: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("sundial").unwrap());
    cmd.args(args)
        .env("SUNDIAL_CLI_CONFIG", cfg)
        .env("NO_COLOR", "1")
        .env_remove("SUNDIAL_URL")
        .env_remove("SUNDIAL_KEY_FILE")
        .env_remove("SUNDIAL_CA_FILE")
        .env_remove("SUNDIAL_CONTEXT")
        .stdin(Stdio::null());
    match server {
        Some(url) => cmd.env("SUNDIAL_URL", url).env("SUNDIAL_KEY", ADMIN_KEY),
        None => cmd.env_remove("SUNDIAL_KEY"),
    };
    cmd
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[track_caller]
fn ok(o: Output) -> String {
    assert_eq!(code(&o), 0, "stdout:\n{}\nstderr:\n{}", out(&o), err(&o));
    out(&o)
}

fn jobs_json(cfg: &Path, url: &str, extra: &[&str]) -> Vec<Job> {
    let mut args = vec!["jobs", "ls", "-o", "json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(sundial(cfg, Some(url), &args))).unwrap()
}

const BILLING_YAML: &str = r#"
id: invoices
schedule: "0 0 3 * * *"
timezone: Europe/Berlin
executor: {type: exec, argv: [/bin/echo, invoices]}
labels: {team: billing}
---
id: reminders
schedule: "@every 1h"
executor: {type: shell, script: "echo remind"}
labels: {team: billing}
timeout: 5m
"#;

const BILLING_TOML: &str = r#"
id = "ledger"
schedule = "0 15 * * * *"
labels = { team = "billing" }
[executor]
type = "exec"
argv = ["/bin/true"]
"#;

const SEARCH_JSON: &str = r#"[{"id": "reindex", "schedule": "@daily",
  "executor": {"type": "exec", "argv": ["/bin/true"]}, "labels": {"team": "search"}}]"#;

#[test]
fn apply_diff_prune_and_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let url = server.base.as_str();
    let cfg = dir.path().join("config.toml");
    let m = dir.path().join("manifests");
    std::fs::create_dir_all(m.join("more")).unwrap();
    std::fs::write(m.join("billing.yaml"), BILLING_YAML).unwrap();
    std::fs::write(m.join("more/ledger.toml"), BILLING_TOML).unwrap();
    let search = dir.path().join("search.json");
    std::fs::write(&search, SEARCH_JSON).unwrap();
    let m_s = m.to_str().unwrap();

    let text = ok(sundial(&cfg, Some(url), &["apply", "-f", m_s]));
    assert!(text.contains("+ create  invoices"), "{text}");
    assert!(text.contains("+ create  ledger"), "{text}");
    assert!(
        text.contains("Applied: 3 created, 0 updated, 0 deleted, 0 unchanged."),
        "{text}"
    );
    ok(sundial(
        &cfg,
        Some(url),
        &["apply", "-f", search.to_str().unwrap()],
    ));
    let stored = jobs_json(&cfg, url, &[]);
    assert_eq!(stored.len(), 4);
    let before: Vec<Job> = jobs_json(&cfg, url, &["-l", "team=billing"]);
    assert_eq!(before.len(), 3);

    // Twice: nothing changes (not even next fires), and diff agrees.
    let text = ok(sundial(&cfg, Some(url), &["apply", "-f", m_s]));
    assert!(text.contains("No changes: 3 jobs unchanged."), "{text}");
    assert_eq!(jobs_json(&cfg, url, &["-l", "team=billing"]), before);
    ok(sundial(&cfg, Some(url), &["diff", "-f", m_s]));

    // A change: diff shows the field and exits 1 without writing; apply writes it.
    std::fs::write(
        m.join("billing.yaml"),
        BILLING_YAML.replace("0 0 3 * * *", "0 0 4 * * *"),
    )
    .unwrap();
    let d = sundial(&cfg, Some(url), &["diff", "-f", m_s]);
    assert_eq!(code(&d), 1, "{}{}", out(&d), err(&d));
    assert!(out(&d).contains("~ update  invoices"), "{}", out(&d));
    assert!(
        out(&d).contains(r#"schedule: "0 0 3 * * *" → "0 0 4 * * *""#),
        "{}",
        out(&d)
    );
    let (_, inv) = server.call("GET", "/v1/jobs/invoices", None).unwrap();
    assert_eq!(inv["schedule"], "0 0 3 * * *", "diff wrote something");
    // `diff | head` that stops reading: never 0 ("no changes").
    let mut child = sundial_cmd(&cfg, Some(url), &["diff", "-f", m_s])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(141));
    let dry = ok(sundial(&cfg, Some(url), &["apply", "-f", m_s, "--dry-run"]));
    assert!(dry.contains("Plan: 0 to create, 1 to update"), "{dry}");
    let text = ok(sundial(&cfg, Some(url), &["apply", "-f", m_s]));
    assert!(
        text.contains("Applied: 0 created, 1 updated, 0 deleted, 2 unchanged."),
        "{text}"
    );
    let (_, inv) = server.call("GET", "/v1/jobs/invoices", None).unwrap();
    assert_eq!(inv["schedule"], "0 0 4 * * *");

    // Prune: ledger leaves the files; only team=billing jobs are candidates.
    std::fs::remove_file(m.join("more/ledger.toml")).unwrap();
    let text = ok(sundial(
        &cfg,
        Some(url),
        &["apply", "-f", m_s, "--prune", "-l", "team=billing"],
    ));
    assert!(text.contains("- delete  ledger"), "{text}");
    let ids: Vec<String> = jobs_json(&cfg, url, &[])
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert!(!ids.contains(&"ledger".to_string()), "{ids:?}");
    assert!(
        ids.contains(&"reindex".to_string()),
        "prune touched another team: {ids:?}"
    );
    // --prune without a selector is a usage error.
    let u = sundial(&cfg, Some(url), &["apply", "-f", m_s, "--prune"]);
    assert_eq!(code(&u), 2, "{}", err(&u));
    // So is a key given twice with two values (no job matches both; the
    // last one used to win, and a prune deleted what the first excluded).
    let u = sundial(
        &cfg,
        Some(url),
        &[
            "apply",
            "-f",
            m_s,
            "--prune",
            "-l",
            "team=none",
            "-l",
            "team=search",
        ],
    );
    assert_eq!(code(&u), 2, "{}", err(&u));
    assert!(err(&u).contains("one value per label key"), "{}", err(&u));
    // A prune with files that hold no jobs (a truncated file) is refused.
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let u = sundial(
        &cfg,
        Some(url),
        &[
            "apply",
            "-f",
            empty.to_str().unwrap(),
            "--prune",
            "-l",
            "team=billing",
        ],
    );
    assert_eq!(code(&u), 2, "{}", err(&u));
    assert!(
        err(&u).contains("holds no jobs") && err(&u).contains("refusing"),
        "{}",
        err(&u)
    );

    // Export round trips in every format: applying it is a no-op.
    for (fmt, ext) in [("yaml", "yaml"), ("toml", "toml"), ("json", "json")] {
        let text = ok(sundial(&cfg, Some(url), &["export", "-o", fmt]));
        let file = dir.path().join(format!("export.{ext}"));
        std::fs::write(&file, &text).unwrap();
        let plan = ok(sundial(
            &cfg,
            Some(url),
            &["apply", "-f", file.to_str().unwrap()],
        ));
        assert!(
            plan.contains("No changes: 3 jobs unchanged."),
            "{fmt}: {plan}\n{text}"
        );
    }
    let text = ok(sundial(&cfg, Some(url), &["export", "-l", "team=search"]));
    assert!(
        text.contains("id: reindex") && !text.contains("invoices"),
        "{text}"
    );

    // The plan as JSON parses into the proto type.
    let p: sundial_proto::ApplyResponse = serde_json::from_str(&ok(sundial(
        &cfg,
        Some(url),
        &["diff", "-f", m_s, "-o", "json"],
    )))
    .unwrap();
    assert!(!p.applied);
    assert_eq!(p.plan.len(), 2);
}

#[test]
fn an_invalid_document_changes_nothing_and_exit_codes_hold() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let url = server.base.as_str();
    let cfg = dir.path().join("config.toml");
    let file = dir.path().join("jobs.yaml");
    let mut docs: Vec<String> = (0..50)
        .map(|i| format!("id: j{i}\nschedule: '@hourly'\nexecutor: {{type: exec, argv: [x]}}\n"))
        .collect();
    docs[37] = "id: j37\nschedule: '61 * * * *'\nexecutor: {type: exec, argv: [x]}\n".into();
    std::fs::write(&file, docs.join("---\n")).unwrap();
    let o = sundial(&cfg, Some(url), &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}{}", out(&o), err(&o));
    let e = err(&o);
    assert!(
        e.contains("jobs.yaml: document 38: job \"j37\": field schedule"),
        "{e}"
    );
    assert!(e.contains("invalid_schedule"), "{e}");
    assert!(
        jobs_json(&cfg, url, &[]).is_empty(),
        "a refused apply wrote jobs"
    );

    // A local decoding error names file, document and field before anything is sent.
    std::fs::write(
        &file,
        "id: a\nschedule: '@hourly'\nexecutor: {type: exec, argv: [x]}\nretrys: 3\n",
    )
    .unwrap();
    let o = sundial(&cfg, Some(url), &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    assert!(
        err(&o).contains("document 1: job \"a\"") && err(&o).contains("retrys"),
        "{}",
        err(&o)
    );

    // No key anywhere: the server's 401, and where a key could come from.
    let o = sundial(&cfg, None, &["--server", url, "jobs", "ls"]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(
        err(&o).contains("401 unauthorized")
            && err(&o).contains("no API key was sent: pass --key-file"),
        "{}",
        err(&o)
    );

    // 3 not found, 2 usage, 5 unreachable, 4 conflict.
    assert_eq!(code(&sundial(&cfg, Some(url), &["jobs", "get", "nope"])), 3);
    assert_eq!(code(&sundial(&cfg, Some(url), &["jobs", "frobnicate"])), 2);
    let closed = format!("http://127.0.0.1:{}", free_port().unwrap());
    let o = sundial(&cfg, Some(&closed), &["jobs", "ls"]);
    assert_eq!(code(&o), 5, "{}", err(&o));
    // A server that is not an http(s) URL is a usage error, nothing sent.
    let o = sundial(&cfg, Some("127.0.0.1:8080"), &["jobs", "ls"]);
    assert_eq!(code(&o), 2, "{}", err(&o));
    assert!(err(&o).contains("is not a URL"), "{}", err(&o));
    // An empty setting in the environment counts as unset.
    let o = sundial_cmd(&cfg, Some(url), &["jobs", "ls", "-o", "json"])
        .env("SUNDIAL_CA_FILE", "")
        .env("SUNDIAL_KEY_FILE", "")
        .env("SUNDIAL_CONTEXT", "")
        .output()
        .unwrap();
    ok(o);
    let spec =
        serde_json::json!({"schedule": "0 0 0 1 1 *", "executor": {"type": "exec", "argv": ["x"]}});
    server.call("PUT", "/v1/jobs/idle", Some(&spec)).unwrap();
    let run: Run = serde_json::from_str(&ok(sundial(
        &cfg,
        Some(url),
        &["jobs", "trigger", "idle", "-o", "json"],
    )))
    .unwrap();
    let id = run.id.to_string();
    ok(sundial(&cfg, Some(url), &["runs", "cancel", &id]));
    assert_eq!(code(&sundial(&cfg, Some(url), &["runs", "cancel", &id])), 4);

    // Waiting with no node to take the run: one hint once it has waited
    // a while, then the timeout (exit 1), the run left pending.
    let o = sundial(
        &cfg,
        Some(url),
        &["jobs", "trigger", "idle", "--wait", "--timeout", "6"],
    );
    assert_eq!(code(&o), 1, "{}{}", out(&o), err(&o));
    let e = err(&o);
    assert_eq!(e.matches("no node has taken it yet").count(), 1, "{e}");
    assert!(e.contains("`sundial jobs describe idle`"), "{e}");
    assert!(e.contains("still pending after 6s"), "{e}");

    // A paused job shows no next fires, in the API and in `describe`.
    ok(sundial(&cfg, Some(url), &["jobs", "pause", "idle"]));
    let (_, job) = server.call("GET", "/v1/jobs/idle", None).unwrap();
    assert!(job["next_fire_at"].is_null(), "{job}");
    let described = ok(sundial(&cfg, Some(url), &["jobs", "describe", "idle"]));
    assert!(
        described.contains("Next fires:\n  (none while paused)"),
        "{described}"
    );
}

#[test]
fn trigger_wait_returns_the_run_exit_code_and_logs_follow() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&dir.path().join("data")).unwrap();
    let base = server.base.clone();
    let url = base.as_str();
    let cfg = dir.path().join("config.toml");
    let token = server.join_token().unwrap();
    let _daemon = DaemonProc::start(url, &token, "cli-node", &dir.path().join("n"), &[]).unwrap();
    let file = dir.path().join("jobs.yaml");
    std::fs::write(
        &file,
        r#"
id: fine
schedule: "0 0 0 1 1 *"
executor: {type: shell, script: "echo fine"}
---
id: seven
schedule: "0 0 0 1 1 *"
executor: {type: shell, script: "echo boom; exit 7"}
---
id: slow
schedule: "0 0 0 1 1 *"
executor: {type: shell, script: "echo start; sleep 2; echo end"}
"#,
    )
    .unwrap();
    ok(sundial(
        &cfg,
        Some(url),
        &["apply", "-f", file.to_str().unwrap()],
    ));
    wait_for(Duration::from_secs(30), || {
        let o = sundial(&cfg, Some(url), &["nodes", "ls", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        (v.as_array()?.iter().any(|n| n["status"] == "ready")).then_some(())
    })
    .expect("the daemon joined");

    let o = sundial(&cfg, Some(url), &["jobs", "trigger", "fine", "--wait"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(out(&o), "fine\n");
    let o = sundial(&cfg, Some(url), &["jobs", "trigger", "seven", "--wait"]);
    assert_eq!(code(&o), 7, "{}{}", out(&o), err(&o));
    assert_eq!(out(&o), "boom\n");
    let o = sundial(
        &cfg,
        Some(url),
        &["jobs", "trigger", "seven", "--wait", "-o", "json"],
    );
    assert_eq!(code(&o), 7);
    let run: Run = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((run.state, run.exit_code), (RunState::Failed, Some(7)));

    // --wait tells when the attempt starts, and where.
    let o = sundial(&cfg, Some(url), &["jobs", "trigger", "slow", "--wait"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(out(&o), "start\nend\n");
    assert!(
        err(&o).contains("Attempt 1 running on cli-node."),
        "{}",
        err(&o)
    );

    // Follow a running job: its output arrives and the command ends with the run.
    let run: Run = serde_json::from_str(&ok(sundial(
        &cfg,
        Some(url),
        &["jobs", "trigger", "slow", "-o", "json"],
    )))
    .unwrap();
    let id = run.id.to_string();
    wait_for(Duration::from_secs(20), || {
        let r: Run = serde_json::from_str(&ok(sundial(
            &cfg,
            Some(url),
            &["runs", "get", &id, "-o", "json"],
        )))
        .ok()?;
        (r.state == RunState::Running).then_some(())
    })
    .expect("the slow run started");
    let o = sundial(&cfg, Some(url), &["runs", "logs", &id, "--follow"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(out(&o), "start\nend\n");
    let runs: Vec<Run> = serde_json::from_str(&ok(sundial(
        &cfg,
        Some(url),
        &["runs", "ls", "--job", "seven", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs
        .iter()
        .all(|r| r.job_id == "seven" && r.exit_code == Some(7)));
    let table = ok(sundial(
        &cfg,
        Some(url),
        &["runs", "ls", "--state", "succeeded"],
    ));
    // The header, `fine` and `slow` twice.
    assert_eq!(table.lines().count(), 4, "{table}");
    // `-o json` lists runs whole; a table asks for them without output.
    assert!(runs.iter().all(|r| r.output.is_some()), "{runs:?}");
    let (_, bare) = server
        .call("GET", "/v1/runs?job=seven&output=false", None)
        .unwrap();
    let items = bare["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{bare}");
    assert!(
        items
            .iter()
            .all(|r| r["output"].is_null() && r["exit_code"] == 7),
        "{bare}"
    );
    for bad in ["output=maybe", "node="] {
        let (status, refused) = server
            .call("GET", &format!("/v1/runs?{bad}"), None)
            .unwrap();
        assert_eq!(status, 400, "{bad}: {refused}");
    }

    // A wait rides out a restart of the server: the run goes on meanwhile.
    let waiting = sundial_cmd(&cfg, Some(url), &["jobs", "trigger", "slow", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), || {
        let (_, runs) = server.call("GET", "/v1/runs?state=running", None).ok()?;
        (!runs["items"].as_array()?.is_empty()).then_some(())
    })
    .expect("the slow run started");
    server.terminate(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    server.restart().unwrap();
    let o = waiting.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(out(&o), "start\nend\n");
    assert!(err(&o).contains("Lost the server"), "{}", err(&o));
}

fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn contexts_over_tls_and_keys_shown_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let server = ServerProc::start_tls(&dir.path().join("data"), &cert, &key, &ca).unwrap();
    let plain = ServerProc::start(&dir.path().join("plain")).unwrap();
    let cfg = dir.path().join("config.toml");
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, format!("{ADMIN_KEY}\n")).unwrap();
    let (cfg_s, ca_s, kf) = (
        cfg.as_path(),
        ca.to_str().unwrap(),
        key_file.to_str().unwrap(),
    );

    ok(sundial(
        cfg_s,
        None,
        &[
            "config",
            "set-context",
            "secure",
            "--url",
            &server.base,
            "--key",
            kf,
            "--ca",
            ca_s,
        ],
    ));
    ok(sundial(
        cfg_s,
        None,
        &[
            "config",
            "set-context",
            "local",
            "--url",
            &plain.base,
            "--key",
            kf,
        ],
    ));
    let listed = ok(sundial(cfg_s, None, &["config", "get-contexts"]));
    assert!(
        listed.contains("secure") && listed.contains("local"),
        "{listed}"
    );
    assert!(!listed.contains(ADMIN_KEY), "a key was printed: {listed}");
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains(ADMIN_KEY));
    assert_eq!(
        ok(sundial(cfg_s, None, &["config", "current-context"])),
        "secure\n"
    );

    // The first context became current: status over HTTPS with its CA and key file.
    let st: serde_json::Value =
        serde_json::from_str(&ok(sundial(cfg_s, None, &["status", "-o", "json"]))).unwrap();
    assert_eq!(st["role"], "primary");
    assert!(st["server"]
        .as_str()
        .unwrap()
        .starts_with("https://localhost:"));
    // Switching contexts, and --context for one command.
    ok(sundial(cfg_s, None, &["config", "use-context", "local"]));
    let st: serde_json::Value =
        serde_json::from_str(&ok(sundial(cfg_s, None, &["status", "-o", "json"]))).unwrap();
    assert_eq!(st["server"], plain.base.as_str());
    let st: serde_json::Value = serde_json::from_str(&ok(sundial(
        cfg_s,
        None,
        &["--context", "secure", "status", "-o", "json"],
    )))
    .unwrap();
    assert!(st["server"].as_str().unwrap().starts_with("https://"));
    assert_eq!(
        code(&sundial(cfg_s, None, &["--context", "nope", "status"])),
        2
    );
    // Without the CA the server's certificate is refused.
    let o = sundial(cfg_s, Some(&server.base), &["status"]);
    assert_eq!(code(&o), 5, "{}", err(&o));
    // --ca-file on the command line works too.
    ok(sundial(
        cfg_s,
        Some(&server.base),
        &["--ca-file", ca_s, "jobs", "ls"],
    ));

    // A new key is printed once, at creation; listing never shows it.
    let created = ok(sundial(
        cfg_s,
        None,
        &[
            "--context",
            "secure",
            "keys",
            "create",
            "--scope",
            "read",
            "--name",
            "ci",
            "-o",
            "json",
        ],
    ));
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let new_key = created["key"].as_str().unwrap();
    let listed = ok(sundial(
        cfg_s,
        None,
        &["--context", "secure", "keys", "ls", "-o", "json"],
    ));
    assert!(
        listed.contains("\"ci\"") && !listed.contains(new_key),
        "{listed}"
    );
    let token = ok(sundial(
        cfg_s,
        None,
        &["--context", "secure", "tokens", "create", "--name", "ds"],
    ));
    let secret = token.lines().last().unwrap();
    assert!(secret.starts_with("sjt_"), "{token}");
    let listed = ok(sundial(
        cfg_s,
        None,
        &["--context", "secure", "tokens", "ls"],
    ));
    assert!(
        listed.contains("ds") && !listed.contains(secret),
        "{listed}"
    );
}

#[test]
fn a_large_apply_is_one_atomic_request() {
    // Above 5,000 documents apply skips the planning request; still all or nothing.
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data")).unwrap();
    let url = server.base.as_str();
    let cfg = dir.path().join("config.toml");
    let doc = |i: usize, hour: usize| {
        format!("id: big-{i}\nschedule: '0 {} {hour} * * *'\nexecutor: {{type: exec, argv: [x]}}\nlabels: {{bulk: 'yes'}}\n", i % 60)
    };
    let file = dir.path().join("big.yaml");
    let docs: Vec<String> = (0..6000).map(|i| doc(i, 3)).collect();
    std::fs::write(&file, docs.join("---\n")).unwrap();
    let text = ok(sundial(
        &cfg,
        Some(url),
        &["apply", "-f", file.to_str().unwrap()],
    ));
    assert!(
        text.contains("Applied: 6000 created"),
        "{}",
        text.lines().last().unwrap_or("")
    );
    let mut docs: Vec<String> = (0..6000).map(|i| doc(i, 4)).collect();
    docs.push("id: broken\nschedule: '@every nope'\nexecutor: {type: exec, argv: [x]}\n".into());
    std::fs::write(&file, docs.join("---\n")).unwrap();
    let o = sundial(&cfg, Some(url), &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(
        err(&o).contains("big.yaml: document 6001: job \"broken\""),
        "{}",
        err(&o)
    );
    let stored = jobs_json(&cfg, url, &["-l", "bulk=yes"]);
    assert_eq!(stored.len(), 6000);
    assert!(
        stored.iter().all(|j| j.spec.schedule.ends_with(" 3 * * *")),
        "a refused apply wrote"
    );
}

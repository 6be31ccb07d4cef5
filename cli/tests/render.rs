//! Snapshot tests of the human output with a fixed clock and zone, and
//! `-o json` output parsed back into the proto types.

use std::collections::HashMap;
use sundial_cli::output::{structured, OutputFormat, View};
use sundial_cli::plan;
use sundial_cli::render;
use sundial_proto::time::parse_rfc3339_ms;
use sundial_proto::{ApplyResponse, Job, JobSpec, Run};

fn at(s: &str) -> i64 {
    parse_rfc3339_ms(s).unwrap()
}

fn view() -> View {
    View {
        now: at("2026-11-25T12:00:00Z"),
        tz: Some(chrono_tz::Europe::Berlin),
        color: false,
    }
}

fn job(id: &str, extra: serde_json::Value) -> Job {
    let mut v = serde_json::json!({
        "id": id, "schedule": "0 30 2 * * *", "timezone": "Europe/Berlin",
        "executor": {"type": "exec", "argv": ["/usr/local/bin/report", "--daily"]},
        "paused": false, "next_fire_at": "2026-11-26T01:30:00Z",
        "created_at": "2026-11-01T00:00:00Z", "updated_at": "2026-11-01T00:00:00Z",
        "counters": {"total": 12, "succeeded": 11, "failed": 1, "last_run_id": 7,
                     "last_run_at": "2026-11-25T01:30:00Z", "last_state": "succeeded"}
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn run(id: i64, state: &str, exit: Option<i32>) -> Run {
    serde_json::from_value(serde_json::json!({
        "id": id, "job_id": "nightly", "scheduled_for": "2026-11-25T01:30:00Z", "node": "n1",
        "trigger": "schedule", "attempt": 1, "state": state,
        "created_at": "2026-11-25T01:30:00Z", "started_at": "2026-11-25T01:30:00.010Z",
        "finished_at": "2026-11-25T01:32:05Z", "exit_code": exit,
        "output": "line one\nline two\n", "truncated": false, "error": null
    }))
    .unwrap()
}

fn jobs() -> Vec<Job> {
    vec![
        job(
            "nightly",
            serde_json::json!({"labels": {"team": "billing"}, "target": {"labels": {"role": "worker"}}}),
        ),
        job(
            "ping",
            serde_json::json!({"schedule": "@every 30s", "timezone": "UTC", "paused": true,
                "executor": {"type": "http", "url": "http://x/health"},
                "counters": {"total": 0, "succeeded": 0, "failed": 0}}),
        ),
    ]
}

#[test]
fn jobs_table_snapshot() {
    let got = render::jobs_table(&view(), &jobs(), false);
    let want = "\
ID       SCHEDULE      TZ             NEXT FIRE                            LAST       PAUSED
nightly  0 30 2 * * *  Europe/Berlin  2026-11-26 02:30:00 CET (in 13h30m)  succeeded  no
ping     @every 30s    UTC            paused                               -          yes
";
    assert_eq!(got, want, "\n{got}");
    let wide = render::jobs_table(&view(), &jobs(), true);
    let first = wide.lines().nth(1).unwrap();
    assert!(
        first.ends_with(
            "12    1       exec /usr/local/bin/report --daily  labels role=worker  team=billing"
        ),
        "{wide}"
    );
}

#[test]
fn a_job_without_a_next_fire_says_why() {
    let once = job(
        "once",
        serde_json::json!({"schedule": "@at 2026-11-01T00:00:00Z", "timezone": "UTC",
            "next_fire_at": null}),
    );
    let off = job(
        "off",
        serde_json::json!({"enabled": false, "next_fire_at": null}),
    );
    let got = render::jobs_table(&view(), &[once.clone(), off], false);
    let want = "\
ID    SCHEDULE                  TZ             NEXT FIRE  LAST       PAUSED
once  @at 2026-11-01T00:00:00Z  UTC            passed     succeeded  no
off   0 30 2 * * *              Europe/Berlin  disabled   succeeded  no
";
    assert_eq!(got, want, "\n{got}");
    let described = render::describe(&view(), &once, &[], &[]);
    assert!(
        described.contains("\nNext fire:    - (its @at instant has passed)\n"),
        "{described}"
    );
    // A description cannot drive the terminal, and its lines stay under it.
    let mut odd = once.clone();
    odd.spec.description = "line1\nline2\u{1b}[31mRED\rOVER".into();
    assert_eq!(render::free_text("naïve 日本\ttab", 2), "naïve 日本\ttab");
    let described = render::describe(&view(), &odd, &[], &[]);
    assert!(
        described.contains("\nDescription:  line1\n              line2\\u{1b}[31mRED\\rOVER\n"),
        "{described}"
    );
}

#[test]
fn runs_snapshot() {
    let got = render::runs_table(&view(), &[run(7, "failed", Some(3))]);
    let want = "\
ID  JOB      SCHEDULED                TRIGGER   STATE   ATTEMPT  EXIT  NODE  DURATION
7   nightly  2026-11-25 02:30:00 CET  schedule  failed  1        3     n1    2m4s
";
    assert_eq!(got, want, "\n{got}");
    let detail = render::run_detail(&view(), &run(7, "succeeded", Some(0)));
    let want = "\
Run:          7
Job:          nightly
State:        succeeded
Trigger:      schedule
Scheduled:    2026-11-25 02:30:00 CET (10h30m ago)
Started:      2026-11-25 02:30:00 CET (10h29m ago)
Finished:     2026-11-25 02:32:05 CET (10h27m ago)
Duration:     2m4s
Attempt:      1
Node:         n1
Exit code:    0
Output:
  line one
  line two
";
    assert_eq!(detail, want, "\n{detail}");
    // A chained run names the upstream run that started it.
    let mut chained = run(9, "succeeded", Some(0));
    chained.trigger = sundial_proto::Trigger::Chain;
    chained.upstream_run_id = Some(7);
    let detail = render::run_detail(&view(), &chained);
    assert!(
        detail.contains("\nTrigger:      chain (upstream run 7)\n"),
        "{detail}"
    );
}

#[test]
fn duration_says_running_only_while_an_attempt_runs() {
    let mut running = run(8, "running", None);
    running.finished_at = None;
    // Pending again for a retry: the last attempt's start stays, nothing runs.
    let mut retry = run(9, "pending", None);
    retry.attempt = 2;
    retry.finished_at = None;
    let got = render::runs_table(&view(), &[running, retry]);
    let want = "\
ID  JOB      SCHEDULED                TRIGGER   STATE    ATTEMPT  EXIT  NODE  DURATION
8   nightly  2026-11-25 02:30:00 CET  schedule  running  1        -     n1    running
9   nightly  2026-11-25 02:30:00 CET  schedule  pending  2        -     n1    -
";
    assert_eq!(got, want, "\n{got}");
}

#[test]
fn preview_marks_dst_gap_repeat_and_offset_change() {
    let tz = chrono_tz::Europe::Berlin;
    let fires = render::fires(
        tz,
        &[
            at("2026-03-28T01:30:00Z"),
            at("2026-03-29T01:00:00Z"),
            at("2026-03-30T00:30:00Z"),
            at("2026-10-25T00:30:00Z"),
            at("2026-10-25T01:30:00Z"),
        ],
    );
    let got = render::fires_table(&fires);
    let want = "\
LOCAL                     UTC                   OFFSET  NOTE
2026-03-28 02:30:00 CET   2026-03-28T01:30:00Z  +01:00
2026-03-29 03:00:00 CEST  2026-03-29T01:00:00Z  +02:00  DST gap: clocks jumped forward here; the skipped local times fire now
2026-03-30 02:30:00 CEST  2026-03-30T00:30:00Z  +02:00
2026-10-25 02:30:00 CEST  2026-10-25T00:30:00Z  +02:00  DST repeat: this local time occurs twice; first occurrence
2026-10-25 02:30:00 CET   2026-10-25T01:30:00Z  +01:00  DST repeat: this local time occurs twice; second occurrence
";
    assert_eq!(got, want, "\n{got}");
}

#[test]
fn plan_snapshot_with_field_diff() {
    let old: JobSpec = jobs()[0].spec.clone();
    let mut new = old.clone();
    new.schedule = "0 0 3 * * *".into();
    new.labels.insert("tier".into(), "gold".into());
    let resp: ApplyResponse = serde_json::from_value(serde_json::json!({
        "plan": [
            {"id": "a", "action": "create", "changes": []},
            {"id": "nightly", "action": "update", "changes": ["labels", "schedule"]},
            {"id": "b", "action": "unchanged", "changes": []},
            {"id": "c", "action": "update", "changes": ["timeout"]},
            {"id": "old", "action": "delete", "changes": []}
        ],
        "applied": false
    }))
    .unwrap();
    let news: HashMap<&str, &JobSpec> = [("nightly", &new)].into();
    let olds: HashMap<String, JobSpec> = [("nightly".to_string(), old)].into();
    let got = plan::render(&view(), &resp, &news, &olds);
    let want = "\
+ create  a
~ update  nightly
      labels.tier: (none) → \"gold\"
      schedule: \"0 30 2 * * *\" → \"0 0 3 * * *\"
~ update  c
      changed: timeout
- delete  old
= 1 unchanged
";
    assert_eq!(got, want, "\n{got}");
    assert_eq!(
        plan::summary(plan::Counts::of(&resp), false),
        "Plan: 1 to create, 2 to update, 1 to delete, 1 unchanged."
    );
}

#[test]
fn one_shot_jobs_whose_instant_has_passed_are_warned_about() {
    let base: JobSpec = jobs()[0].spec.clone();
    let with = |schedule: &str| JobSpec {
        schedule: schedule.into(),
        ..base.clone()
    };
    let (past, lower, future, cron, moved, relabelled, gone) = (
        with("@at 2026-11-25T11:59:59Z"),
        with("@AT 2026-11-25T13:00:00+02:00"),
        with("@at 2026-11-25T12:00:01Z"),
        with("0 30 2 * * *"),
        with("@at 2020-01-01T00:00:00Z"),
        with("@at 2020-01-01T00:00:00Z"),
        with("@at 2020-01-01T00:00:00Z"),
    );
    let resp: ApplyResponse = serde_json::from_value(serde_json::json!({
        "plan": [
            {"id": "past", "action": "create", "changes": []},
            {"id": "lower", "action": "create", "changes": []},
            {"id": "future", "action": "create", "changes": []},
            {"id": "cron", "action": "create", "changes": []},
            {"id": "moved", "action": "update", "changes": ["schedule"]},
            {"id": "relabelled", "action": "update", "changes": ["labels"]},
            {"id": "gone", "action": "unchanged", "changes": []}
        ],
        "applied": true
    }))
    .unwrap();
    let news: HashMap<&str, &JobSpec> = [
        ("past", &past),
        ("lower", &lower),
        ("future", &future),
        ("cron", &cron),
        ("moved", &moved),
        ("relabelled", &relabelled),
        ("gone", &gone),
    ]
    .into();
    let got = plan::passed_at(&resp, &news, at("2026-11-25T12:00:00Z"));
    assert_eq!(
        got,
        [
            "warning: job \"past\": @at 2026-11-25T11:59:59Z has passed; it will never fire (run it now with `sundial jobs trigger past`)",
            "warning: job \"lower\": @AT 2026-11-25T13:00:00+02:00 has passed; it will never fire (run it now with `sundial jobs trigger lower`)",
            "warning: job \"moved\": @at 2020-01-01T00:00:00Z has passed; it will never fire (run it now with `sundial jobs trigger moved`)",
        ]
    );
}

#[test]
fn status_snapshot() {
    let st = render::Status {
        server: "https://sundial:8443".into(),
        mode: "static".into(),
        role: "primary".into(),
        epoch: 4,
        primary: Some("sundial-0".into()),
        since: Some("2026-11-25T09:00:00Z".into()),
        nodes_ready: 3,
        nodes_down: 1,
        nodes_revoked: 0,
        queue_depth: 1000,
        queue_more: true,
        running: 2,
        failing_jobs: vec!["etl".into()],
    };
    let want = "\
Server:       https://sundial:8443
Role:         primary (static)
Epoch:        4
Primary:      sundial-0
Since:        3h ago
Nodes:        3 ready, 1 down, 0 revoked
Queue:        1000+ pending, 2 running
Failing jobs: 1 (etl)
";
    assert_eq!(render::status(&view(), &st), want);
}

#[test]
fn colour_only_when_asked() {
    let mut v = view();
    assert!(!render::runs_table(&v, &[run(1, "failed", None)]).contains('\x1b'));
    v.color = true;
    assert!(render::runs_table(&v, &[run(1, "failed", None)]).contains("\x1b[31mfailed\x1b[0m"));
}

#[test]
fn json_output_parses_back_into_proto_types() {
    let js = jobs();
    let text = structured(OutputFormat::Json, &js).unwrap();
    let back: Vec<Job> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, js);
    let r = run(9, "succeeded", Some(0));
    let back: Run = serde_json::from_str(&structured(OutputFormat::Json, &r).unwrap()).unwrap();
    assert_eq!(back, r);
    let yaml = structured(OutputFormat::Yaml, &js).unwrap();
    let back: Vec<Job> = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(back, js);
}

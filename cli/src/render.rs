//! Human renderings of API objects — pure functions of the data and a
//! [`View`] (clock, zone, colour), so tests pin them with fixed strings.

use crate::output::{self, labels, table, View};
use chrono::{Offset, TimeZone, Utc};
use serde_json::Value;
use sundial_proto::{Executor, Job, JobManifest, Run, Target};

/// `exec /bin/report --daily`, `shell: echo hi`, `http POST https://…`.
pub fn executor(e: &Executor) -> String {
    match e {
        Executor::Exec { argv, .. } => format!("exec {}", argv.join(" ")),
        Executor::Shell { script, .. } => {
            let first = script.lines().next().unwrap_or("");
            let more = if script.lines().count() > 1 {
                " …"
            } else {
                ""
            };
            format!("shell: {first}{more}")
        }
        Executor::Http { method, url, .. } => format!("http {method} {url}"),
    }
}

/// `any node`, `nodes n1,n2`, `labels role=worker`, `all labels role=worker`.
pub fn target(t: &Target) -> String {
    let mut parts = Vec::new();
    if !t.nodes.is_empty() {
        parts.push(format!("nodes {}", t.nodes.join(",")));
    }
    if !t.labels.is_empty() {
        parts.push(format!("labels {}", labels(&t.labels)));
    }
    let what = if parts.is_empty() {
        if t.all {
            "every node".to_string()
        } else {
            "any node".to_string()
        }
    } else {
        parts.join(" ")
    };
    if t.all && !what.starts_with("every") {
        format!("all {what}")
    } else {
        what
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `jobs ls`: id, schedule, zone, next fire, last state, paused (+ wide columns).
pub fn jobs_table(view: &View, jobs: &[Job], wide: bool) -> String {
    let mut headers = vec!["ID", "SCHEDULE", "TZ", "NEXT FIRE", "LAST", "PAUSED"];
    if wide {
        headers.extend(["RUNS", "FAILED", "EXECUTOR", "TARGET", "LABELS"]);
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let next = next_fire(view, j, false);
            let mut row = vec![
                j.id.clone(),
                j.spec.schedule.clone(),
                j.spec.timezone.clone(),
                next,
                j.counters
                    .last_state
                    .as_deref()
                    .map(|s| view.state(s))
                    .unwrap_or_else(|| "-".into()),
                yes_no(j.paused).into(),
            ];
            if wide {
                row.extend([
                    j.counters.total.to_string(),
                    j.counters.failed.to_string(),
                    executor(&j.spec.executor),
                    target(&j.spec.target),
                    labels(&j.spec.labels),
                ]);
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

/// `runs ls`.
pub fn runs_table(view: &View, runs: &[Run]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.job_id.clone(),
                view.local(r.scheduled_for),
                r.trigger.to_string(),
                view.state(r.state.as_str()),
                r.attempt.to_string(),
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.node.clone().unwrap_or_else(|| "-".into()),
                duration(r),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "JOB",
            "SCHEDULED",
            "TRIGGER",
            "STATE",
            "ATTEMPT",
            "EXIT",
            "NODE",
            "DURATION",
        ],
        &rows,
    )
}

/// How long the run took, `running` while an attempt runs, `-` otherwise. A
/// run pending again for a retry keeps its last attempt's start and shows `-`.
fn duration(r: &Run) -> String {
    if r.state == sundial_proto::RunState::Running {
        return "running".into();
    }
    match (r.started_at, r.finished_at) {
        (Some(s), Some(f)) if f >= s => {
            let ms = f - s;
            if ms < 1000 {
                format!("{ms}ms")
            } else {
                output::short_duration((ms / 1000) as u64)
            }
        }
        _ => "-".into(),
    }
}

/// `runs get`.
pub fn run_detail(view: &View, r: &Run) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
    line("Run:", r.id.to_string());
    line("Job:", r.job_id.clone());
    line("State:", view.state(r.state.as_str()));
    match r.upstream_run_id {
        Some(up) => line("Trigger:", format!("{} (upstream run {up})", r.trigger)),
        None => line("Trigger:", r.trigger.to_string()),
    }
    line("Scheduled:", view.when(Some(r.scheduled_for)));
    line("Started:", view.when(r.started_at));
    line("Finished:", view.when(r.finished_at));
    line("Duration:", duration(r));
    line("Attempt:", r.attempt.to_string());
    line("Node:", r.node.clone().unwrap_or_else(|| "-".into()));
    line(
        "Exit code:",
        r.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    if let Some(e) = &r.error {
        line("Error:", e.clone());
    }
    if let Some(o) = r.output.as_deref().filter(|o| !o.is_empty()) {
        out.push_str("Output:\n");
        for l in o.lines() {
            out.push_str(&format!("  {l}\n"));
        }
        if r.truncated {
            out.push_str("  [output truncated]\n");
        }
    }
    out
}

/// One fire of a preview, with its DST note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    pub local: String,
    pub utc: String,
    pub offset: String,
    pub note: String,
}

/// Local time, UTC, offset and a DST note for each fire instant in `tz`:
/// `DST gap: …` when the fire falls on a spring-forward transition (the
/// local time before it did not exist), `DST repeat: …` when its local time
/// occurs twice, and `offset now …` when the offset differs from the previous fire.
pub fn fires(tz: chrono_tz::Tz, instants: &[i64]) -> Vec<Fire> {
    let mut out = Vec::new();
    let mut prev_offset: Option<i32> = None;
    for &t in instants {
        let Some(utc) = Utc.timestamp_millis_opt(t).single() else {
            continue;
        };
        let local = utc.with_timezone(&tz);
        let offset = local.offset().fix().local_minus_utc();
        let before = Utc
            .timestamp_millis_opt(t - 1)
            .single()
            .map(|b| b.with_timezone(&tz).offset().fix().local_minus_utc())
            .unwrap_or(offset);
        let mut note = String::new();
        if offset > before {
            note = "DST gap: clocks jumped forward here; the skipped local times fire now".into();
        } else if let chrono::LocalResult::Ambiguous(first, _) =
            tz.from_local_datetime(&local.naive_local())
        {
            note = if first.timestamp_millis() == t {
                "DST repeat: this local time occurs twice; first occurrence".into()
            } else {
                "DST repeat: this local time occurs twice; second occurrence".into()
            };
        } else if prev_offset.is_some_and(|p| p != offset) {
            note = format!("offset now {}", local.format("%:z"));
        }
        prev_offset = Some(offset);
        out.push(Fire {
            local: local.format("%Y-%m-%d %H:%M:%S %Z").to_string(),
            utc: utc.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            offset: local.format("%:z").to_string(),
            note,
        });
    }
    out
}

/// `preview` and the fires part of `jobs describe`.
pub fn fires_table(fires: &[Fire]) -> String {
    let rows: Vec<Vec<String>> = fires
        .iter()
        .map(|f| {
            vec![
                f.local.clone(),
                f.utc.clone(),
                f.offset.clone(),
                f.note.clone(),
            ]
        })
        .collect();
    table(&["LOCAL", "UTC", "OFFSET", "NOTE"], &rows)
}

fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|l| format!("{by}{l}\n"))
        .collect::<String>()
}

/// A job's next fire, or why it has none: disabled, paused, or a one-shot
/// job whose `@at` instant has passed (`long`: said in a sentence).
pub fn next_fire(view: &View, job: &Job, long: bool) -> String {
    let why = if !job.spec.enabled {
        "disabled"
    } else if job.paused {
        "paused"
    } else if let Some(t) = job.next_fire_at {
        return view.when(Some(t));
    } else if job
        .spec
        .schedule
        .trim()
        .get(..3)
        .is_some_and(|p| p.eq_ignore_ascii_case("@at"))
    {
        if long {
            "its @at instant has passed"
        } else {
            "passed"
        }
    } else {
        return "-".into();
    };
    if long {
        format!("- ({why})")
    } else {
        why.into()
    }
}

/// Free text (a description) for a terminal: its lines indented by
/// `indent` after the first, and control characters other than line
/// breaks and tabs shown as escapes, so text cannot recolour, move or
/// overwrite what is printed around it.
pub fn free_text(text: &str, indent: usize) -> String {
    let pad = format!("\n{:indent$}", "");
    text.lines()
        .map(|line| {
            line.chars()
                .map(|c| {
                    if c.is_control() && c != '\t' {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(&pad)
}

/// `jobs describe`: summary, spec as YAML, next fires and last runs.
pub fn describe(view: &View, job: &Job, next: &[Fire], last: &[Run]) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
    line("Job:", job.id.clone());
    line(
        "Schedule:",
        format!("{} ({})", job.spec.schedule, job.spec.timezone),
    );
    line("Enabled:", yes_no(job.spec.enabled).into());
    line("Paused:", yes_no(job.paused).into());
    line("Next fire:", next_fire(view, job, true));
    line("Executor:", executor(&job.spec.executor));
    line("Target:", target(&job.spec.target));
    line("Labels:", labels(&job.spec.labels));
    if !job.spec.description.is_empty() {
        line("Description:", free_text(&job.spec.description, 14));
    }
    line(
        "Runs:",
        format!(
            "{} total, {} succeeded, {} failed",
            job.counters.total, job.counters.succeeded, job.counters.failed
        ),
    );
    out.push_str("\nSpec:\n");
    let manifest = JobManifest {
        id: job.id.clone(),
        spec: job.spec.clone(),
    };
    let yaml = serde_yaml_ng::to_string(&manifest).unwrap_or_default();
    out.push_str(&indent(&yaml, "  "));
    out.push_str("\nNext fires:\n");
    if !job.spec.enabled || job.paused {
        // It does not fire: the schedule's next instants would mislead.
        let why = if job.paused { "paused" } else { "disabled" };
        out.push_str(&format!("  (none while {why})\n"));
    } else if next.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&indent(&fires_table(next), "  "));
    }
    out.push_str("\nLast runs:\n");
    if last.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&indent(&runs_table(view, last), "  "));
    }
    out
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn when_str(view: &View, v: &Value, k: &str) -> String {
    v[k].as_str()
        .and_then(output::instant)
        .map(|t| format!("{} ({})", view.local(t), view.relative(t)))
        .unwrap_or_else(|| "-".into())
}

/// `nodes ls`.
pub fn nodes_table(view: &View, items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|n| {
            let status = s(n, "status");
            let painted = match status.as_str() {
                "ready" => view.paint(output::Paint::Green, &status),
                "down" | "revoked" => view.paint(output::Paint::Red, &status),
                _ => status,
            };
            let labels = n["labels"]
                .as_object()
                .map(|m| {
                    let mut v: Vec<String> = m
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect();
                    v.sort();
                    if v.is_empty() {
                        "-".into()
                    } else {
                        v.join(",")
                    }
                })
                .unwrap_or_else(|| "-".into());
            let executors = n["executors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                s(n, "id"),
                painted,
                labels,
                s(n, "capacity"),
                executors,
                s(n, "version"),
                view.relative_opt(n["last_seen"].as_str()),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATUS",
            "LABELS",
            "CAPACITY",
            "EXECUTORS",
            "VERSION",
            "LAST SEEN",
        ],
        &rows,
    )
}

/// `keys ls` (never shows a key: the API does not return them).
pub fn keys_table(view: &View, items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|k| {
            vec![
                s(k, "id"),
                s(k, "scope"),
                s(k, "name"),
                when_str(view, k, "created_at"),
                when_str(view, k, "expires_at"),
                when_str(view, k, "last_used_at"),
            ]
        })
        .collect();
    table(
        &["ID", "SCOPE", "NAME", "CREATED", "EXPIRES", "LAST USED"],
        &rows,
    )
}

/// `tokens ls` (never shows a token).
pub fn tokens_table(view: &View, items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|t| {
            let max = match &t["max_uses"] {
                Value::Null => "∞".to_string(),
                v => v.to_string(),
            };
            vec![
                s(t, "id"),
                s(t, "name"),
                format!("{}/{}", s(t, "uses"), max),
                when_str(view, t, "expires_at"),
            ]
        })
        .collect();
    table(&["ID", "NAME", "USES", "EXPIRES"], &rows)
}

/// What `status` gathers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    pub server: String,
    pub mode: String,
    pub role: String,
    pub epoch: i64,
    pub primary: Option<String>,
    pub since: Option<String>,
    pub nodes_ready: usize,
    pub nodes_down: usize,
    pub nodes_revoked: usize,
    /// Pending runs (a lower bound when `queue_more` is set).
    pub queue_depth: usize,
    pub queue_more: bool,
    pub running: usize,
    /// Jobs whose last run failed, timed out or was lost (among recent failures).
    pub failing_jobs: Vec<String>,
}

/// `status`.
pub fn status(view: &View, st: &Status) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
    line("Server:", st.server.clone());
    line("Role:", format!("{} ({})", st.role, st.mode));
    line("Epoch:", st.epoch.to_string());
    line("Primary:", st.primary.clone().unwrap_or_else(|| "-".into()));
    line("Since:", view.relative_opt(st.since.as_deref()));
    let down = if st.nodes_down > 0 {
        view.paint(output::Paint::Red, &format!("{} down", st.nodes_down))
    } else {
        "0 down".into()
    };
    line(
        "Nodes:",
        format!(
            "{} ready, {down}, {} revoked",
            st.nodes_ready, st.nodes_revoked
        ),
    );
    line(
        "Queue:",
        format!(
            "{}{} pending, {} running",
            st.queue_depth,
            if st.queue_more { "+" } else { "" },
            st.running
        ),
    );
    let failing = if st.failing_jobs.is_empty() {
        "none".to_string()
    } else {
        view.paint(
            output::Paint::Red,
            &format!("{} ({})", st.failing_jobs.len(), st.failing_jobs.join(", ")),
        )
    };
    line("Failing jobs:", failing);
    out
}

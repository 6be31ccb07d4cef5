//! Validation of API input beyond what serde checks: job ids, schedules, time
//! zones, executors, targets and limits. Every error names the offending field.

use crate::schedule::Schedule;
use axum::http::{Method, Uri};
use sundial_proto::{Executor, JobSpec};

/// A refused input: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    fn value(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid::new("invalid_value", field, message)
    }
}

/// Longest job id, node id or label key/value accepted.
pub const MAX_ID_LEN: usize = 128;

/// Most nodes one job's `target.nodes` may list.
pub const MAX_TARGET_NODES: usize = 1000;

/// Job ids: 1–128 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn job_id(id: &str) -> Result<(), Invalid> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "invalid_id",
            "id",
            format!(
                "job id {id:?} must be 1-{MAX_ID_LEN} characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ))
    }
}

/// Node ids follow the job id rules (host names and Kubernetes node names fit).
pub fn node_id(id: &str) -> Result<(), Invalid> {
    job_id(id).map_err(|_| {
        Invalid::new(
            "invalid_id",
            "node_id",
            format!(
                "node id {id:?} must be 1-{MAX_ID_LEN} characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        )
    })
}

/// Parses a schedule, mapping errors onto the right field and code.
pub fn schedule(expr: &str, timezone: &str) -> Result<Schedule, Invalid> {
    Schedule::parse_input(expr, timezone).map_err(|e| {
        let field = e.field();
        let code = if field == "timezone" {
            "invalid_timezone"
        } else {
            "invalid_schedule"
        };
        Invalid::new(code, field, e.to_string())
    })
}

fn env_keys(field: &str, env: &std::collections::BTreeMap<String, String>) -> Result<(), Invalid> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Invalid::value(
                format!("{field}.env"),
                format!("environment variable {k:?} is not valid (empty, '=' or NUL)"),
            ));
        }
    }
    Ok(())
}

/// A process's working directory: absent, or a non-empty path without NUL.
fn process_cwd(cwd: Option<&str>) -> Result<(), Invalid> {
    match cwd {
        Some("") => Err(Invalid::value("executor.cwd", "cwd must not be empty")),
        Some(c) if c.contains('\0') => Err(Invalid::value(
            "executor.cwd",
            "cwd must not contain NUL bytes",
        )),
        _ => Ok(()),
    }
}

fn executor(e: &Executor) -> Result<(), Invalid> {
    match e {
        Executor::Exec { argv, env, cwd } => {
            if argv.first().is_none_or(|a| a.is_empty()) {
                return Err(Invalid::value(
                    "executor.argv",
                    "argv must name a program: a non-empty list whose first element is not empty",
                ));
            }
            if argv.iter().any(|a| a.contains('\0')) {
                return Err(Invalid::value(
                    "executor.argv",
                    "argv must not contain NUL bytes",
                ));
            }
            env_keys("executor", env)?;
            process_cwd(cwd.as_deref())?;
        }
        Executor::Shell { script, env, cwd } => {
            if script.trim().is_empty() {
                return Err(Invalid::value(
                    "executor.script",
                    "script must not be empty",
                ));
            }
            if script.contains('\0') {
                return Err(Invalid::value(
                    "executor.script",
                    "script must not contain NUL bytes",
                ));
            }
            env_keys("executor", env)?;
            process_cwd(cwd.as_deref())?;
        }
        Executor::Http {
            method,
            url,
            headers,
            expect_status,
            ..
        } => {
            if Method::from_bytes(method.as_bytes()).is_err() {
                return Err(Invalid::value(
                    "executor.method",
                    format!("{method:?} is not an HTTP method"),
                ));
            }
            let uri: Uri = url.parse().map_err(|_| {
                Invalid::value("executor.url", format!("{url:?} is not a valid URL"))
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(Invalid::value(
                    "executor.url",
                    format!("{url:?} must be an absolute http:// or https:// URL"),
                ));
            }
            for (name, value) in headers {
                if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(Invalid::value(
                        "executor.headers",
                        format!("{name:?} is not a valid header name"),
                    ));
                }
                if axum::http::HeaderValue::from_str(value).is_err() {
                    return Err(Invalid::value(
                        format!("executor.headers.{name}"),
                        "a header value must not contain control characters such as a line break",
                    ));
                }
            }
            if expect_status.is_empty() || expect_status.iter().any(|s| !(100..=599).contains(s)) {
                return Err(Invalid::value(
                    "executor.expect_status",
                    "expect_status must list HTTP status codes between 100 and 599",
                ));
            }
        }
    }
    Ok(())
}

/// Validates a whole spec and returns its parsed schedule.
pub fn spec(spec: &JobSpec) -> Result<Schedule, Invalid> {
    let parsed = schedule(&spec.schedule, &spec.timezone)?;
    spec_fields(spec)?;
    Ok(parsed)
}

/// Everything [`spec`] checks except the schedule (bulk apply parses each
/// distinct schedule once).
pub fn spec_fields(spec: &JobSpec) -> Result<(), Invalid> {
    executor(&spec.executor)?;
    // One entry per upstream: its `on` lists every state that triggers.
    for (i, a) in spec.after.iter().enumerate() {
        if spec.after[..i].iter().any(|b| b.job == a.job) {
            return Err(Invalid::value(
                format!("after[{i}].job"),
                format!(
                    "upstream job {:?} is listed twice; list it once with every state in its `on`",
                    a.job
                ),
            ));
        }
    }
    if spec.target.nodes.len() > MAX_TARGET_NODES {
        return Err(Invalid::value(
            "target.nodes",
            format!("at most {MAX_TARGET_NODES} nodes per target (use target.labels for more)"),
        ));
    }
    for (i, n) in spec.target.nodes.iter().enumerate() {
        // The rule a node's own id is held to at join: another id could
        // never run the job.
        node_id(n).map_err(|e| Invalid::value(format!("target.nodes[{i}]"), e.message))?;
        if spec.target.nodes[..i].contains(n) {
            return Err(Invalid::value(
                format!("target.nodes[{i}]"),
                format!("node {n:?} is listed twice"),
            ));
        }
    }
    sundial_proto::label::check_all(&spec.target.labels).map_err(|(k, m)| {
        Invalid::value(
            if k.is_empty() {
                "target.labels".to_string()
            } else {
                format!("target.labels.{k}")
            },
            m,
        )
    })?;
    if !(1..=10_000).contains(&spec.misfire.max_catch_up) {
        return Err(Invalid::value(
            "misfire.max_catch_up",
            "max_catch_up must be between 1 and 10000",
        ));
    }
    if spec.retries.max > 100 {
        return Err(Invalid::value(
            "retries.max",
            "retries.max must be at most 100",
        ));
    }
    if spec.retries.backoff > spec.retries.max_backoff {
        return Err(Invalid::value(
            "retries.backoff",
            "retries.backoff must not exceed retries.max_backoff",
        ));
    }
    if spec.history.keep == Some(0) {
        return Err(Invalid::value(
            "history.keep",
            "history.keep must be at least 1",
        ));
    }
    labels(&spec.labels)?;
    if let Some(a) = &spec.alert {
        if a.overdue_after.as_millis() < 1_000 {
            return Err(Invalid::value(
                "alert.overdue_after",
                "alert.overdue_after must be at least 1s",
            ));
        }
    }
    if spec.description.len() > 4096 {
        return Err(Invalid::value(
            "description",
            "description is longer than 4096 bytes",
        ));
    }
    Ok(())
}

/// Most job labels one job may carry.
pub const MAX_LABELS: usize = sundial_proto::label::MAX_LABELS;

/// Job labels: keys 1-128 of `[A-Za-z0-9._/-]` starting with a letter or
/// digit; values at most 256 bytes without control characters.
pub fn labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), Invalid> {
    if labels.len() > MAX_LABELS {
        return Err(Invalid::value(
            "labels",
            format!("at most {MAX_LABELS} labels per job"),
        ));
    }
    for (k, v) in labels {
        label_pair(k, v).map_err(|m| Invalid::value(format!("labels.{k}"), m))?;
    }
    Ok(())
}

/// Adds `key=value` to a label selector (all labels must match). A key
/// given again with another value is refused: a job has one value per key,
/// so the selector could match nothing.
pub fn selector_label(
    selector: &mut std::collections::BTreeMap<String, String>,
    key: &str,
    value: &str,
) -> Result<(), String> {
    label_pair(key, value)?;
    match selector.get(key) {
        Some(old) if old != value => Err(format!(
            "label {key}={old} and {key}={value}: a job has one value per label key, so no job matches both"
        )),
        _ => {
            selector.insert(key.to_string(), value.to_string());
            Ok(())
        }
    }
}

/// Checks one label key and value (also used for selectors); the message
/// says what is wrong. The rule is [`sundial_proto::label::check`].
pub fn label_pair(key: &str, value: &str) -> Result<(), String> {
    sundial_proto::label::check(key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> JobSpec {
        serde_json::from_str(r#"{"schedule":"@hourly","executor":{"type":"exec","argv":["true"]}}"#)
            .unwrap()
    }

    #[test]
    fn target_labels_follow_the_label_rule() {
        let mut s = base();
        s.target.labels.insert("k\n".into(), "a".into());
        assert_eq!(spec_fields(&s).unwrap_err().field, "target.labels.k\n");
        let mut s = base();
        s.target.labels.insert("k".into(), "a\u{0}b".into());
        assert_eq!(spec_fields(&s).unwrap_err().field, "target.labels.k");
        let mut s = base();
        s.target.labels.insert("zone".into(), "eu-1".into());
        assert!(spec_fields(&s).is_ok());
    }

    #[test]
    fn ids() {
        assert!(job_id("nightly-report.v2_x").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(129), "ü"] {
            assert_eq!(job_id(bad).unwrap_err().field, "id", "{bad}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut JobSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.schedule = "61 * * * *".into()), "schedule"),
            (Box::new(|s| s.timezone = "Mars/Olympus".into()), "timezone"),
            (
                Box::new(|s| {
                    s.executor = Executor::Exec {
                        argv: vec![],
                        env: Default::default(),
                        cwd: None,
                    }
                }),
                "executor.argv",
            ),
            (
                Box::new(|s| {
                    s.executor = Executor::Http {
                        method: "GET".into(),
                        url: "ftp://x".into(),
                        headers: Default::default(),
                        body: None,
                        expect_status: vec![200],
                    }
                }),
                "executor.url",
            ),
            (
                Box::new(|s| {
                    s.executor = Executor::Shell {
                        script: "echo a\0b".into(),
                        env: Default::default(),
                        cwd: None,
                    }
                }),
                "executor.script",
            ),
            (
                Box::new(|s| {
                    s.executor = Executor::Shell {
                        script: "true".into(),
                        env: Default::default(),
                        cwd: Some("/tmp\0x".into()),
                    }
                }),
                "executor.cwd",
            ),
            (
                Box::new(|s| s.schedule = "@every 36501d".into()),
                "schedule",
            ),
            (
                Box::new(|s| {
                    s.after = serde_json::from_value(serde_json::json!(
                        [{"job": "up"}, {"job": "up", "on": ["failed"]}]
                    ))
                    .unwrap()
                }),
                "after[1].job",
            ),
            (
                Box::new(|s| {
                    s.executor = Executor::Http {
                        method: "GET".into(),
                        url: "http://x/".into(),
                        headers: [("X-A".to_string(), "a\r\nb".to_string())].into(),
                        body: None,
                        expect_status: vec![200],
                    }
                }),
                "executor.headers.X-A",
            ),
            (
                Box::new(|s| s.misfire.max_catch_up = 0),
                "misfire.max_catch_up",
            ),
            (Box::new(|s| s.history.keep = Some(0)), "history.keep"),
            (Box::new(|s| s.retries.max = 1000), "retries.max"),
            (
                Box::new(|s| s.target.nodes = vec!["n1".into(), "has space".into()]),
                "target.nodes[1]",
            ),
            (
                Box::new(|s| s.target.nodes = vec!["n1".into(), "n2".into(), "n1".into()]),
                "target.nodes[2]",
            ),
            (
                Box::new(|s| s.target.nodes = (0..=1000).map(|i| format!("n{i}")).collect()),
                "target.nodes",
            ),
            (
                Box::new(|s| {
                    s.labels.insert("bad key".into(), "x".into());
                }),
                "labels.bad key",
            ),
            (
                Box::new(|s| {
                    s.labels.insert("team".into(), "a\nb".into());
                }),
                "labels.team",
            ),
        ];
        for (mutate, field) in cases {
            let mut s = base();
            mutate(&mut s);
            assert_eq!(spec(&s).unwrap_err().field, field);
        }
        assert!(spec(&base()).is_ok());
    }
}

//! Job definitions: what `PUT /v1/jobs/{id}` accepts ([`JobSpec`]) and what the
//! job endpoints return ([`Job`]). See `docs/api.md` for the field reference.
//!
//! Every struct refuses unknown fields so that a typo (`"retrys"`) is an error
//! instead of a silently ignored setting.

use crate::duration::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The body of `PUT /v1/jobs/{id}`. Defaults are filled in by serde, so the
/// stored form of a spec is always complete and canonical.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({
    "schedule": "0 30 2 * * *", "timezone": "Europe/Berlin",
    "executor": {"type": "exec", "argv": ["/usr/local/bin/report", "--daily"]},
    "concurrency": "forbid", "retries": {"max": 3, "backoff": "10s", "max_backoff": "5m"},
    "description": "Nightly sales report"
}))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Cron (5 or 6 fields), a macro (`@hourly`…), `@every <duration>` or `@at <RFC3339>`.
    #[schema(example = "0 30 2 * * *")]
    pub schedule: String,
    /// IANA time zone the schedule is read in.
    #[schema(example = "Europe/Berlin")]
    #[serde(default = "default_timezone")]
    pub timezone: String,
    pub executor: Executor,
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub concurrency: Concurrency,
    #[serde(default)]
    pub misfire: Misfire,
    /// Longest a single attempt may run; `null` means no limit.
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Retries,
    /// Retention for this job's finished runs; unset fields use the server's defaults.
    #[serde(default)]
    pub history: History,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
    /// Job chains: run this job when a slot of each listed upstream job ends
    /// in one of the listed states (one run per upstream slot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<After>,
    /// Alerts about this job (a dead-man's switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Alert>,
    /// Job labels, for selection (`GET /v1/jobs?label=k=v`) and pruning in
    /// bulk apply. Not where the job runs: that is `target.labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Alerts of a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// When no run has succeeded for this long, one `job.overdue` event
    /// fires (and one `job.recovered` when a run succeeds again).
    pub overdue_after: Duration,
}

/// One upstream of a chained job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct After {
    /// The upstream job's id.
    pub job: String,
    /// The end states that trigger a run [default: succeeded].
    #[serde(default = "default_after_on")]
    pub on: Vec<crate::RunState>,
}

fn default_after_on() -> Vec<crate::RunState> {
    vec![crate::RunState::Succeeded]
}

fn default_timezone() -> String {
    "UTC".to_string()
}

fn default_true() -> bool {
    true
}

/// How an attempt is executed on a node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Executor {
    /// Run a program directly (no shell).
    Exec {
        argv: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        cwd: Option<String>,
    },
    /// Run a script with `/bin/sh -c`.
    Shell {
        script: String,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        cwd: Option<String>,
    },
    /// Make an HTTP request; success is a status in `expect_status`.
    Http {
        #[serde(default = "default_method")]
        method: String,
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        body: Option<String>,
        #[serde(default = "default_expect_status")]
        expect_status: Vec<u16>,
    },
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_expect_status() -> Vec<u16> {
    vec![200, 201, 202, 204]
}

impl Executor {
    /// The executor's kind, as used in allowlists.
    pub fn kind(&self) -> ExecutorKind {
        match self {
            Executor::Exec { .. } => ExecutorKind::Exec,
            Executor::Shell { .. } => ExecutorKind::Shell,
            Executor::Http { .. } => ExecutorKind::Http,
        }
    }
}

/// The kinds of executor (`exec`, `shell`, `http`): what a daemon's
/// allowlist names and what a job needs of a node.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    Exec,
    Shell,
    Http,
}

impl ExecutorKind {
    pub const ALL: [ExecutorKind; 3] =
        [ExecutorKind::Exec, ExecutorKind::Shell, ExecutorKind::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Exec => "exec",
            ExecutorKind::Shell => "shell",
            ExecutorKind::Http => "http",
        }
    }
}

impl std::fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExecutorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown executor {s:?}; expected exec, shell or http"))
    }
}

/// Which nodes run the job. An empty target means "any one node".
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Run on these node ids (one of them, or each of them with `all`):
    /// at most 1000, each once, each a valid node id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 1000)]
    pub nodes: Vec<String>,
    /// Run on nodes carrying all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Broadcast: one run per matching node instead of one run in total.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What happens when a slot comes due while an earlier run of the job is active.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Start the new run regardless.
    #[default]
    Allow,
    /// Record the new slot as `skipped`.
    Forbid,
    /// Cancel the active run and start the new one.
    Replace,
}

impl Concurrency {
    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Allow => "allow",
            Concurrency::Forbid => "forbid",
            Concurrency::Replace => "replace",
        }
    }
}

/// What to do with slots that were missed (server down, failover) by more than `grace`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Misfire {
    #[serde(default)]
    pub policy: MisfirePolicy,
    /// A slot later than this is a misfire; within it, it simply runs late.
    #[serde(default = "default_grace")]
    pub grace: Duration,
    /// Upper bound on slots created by `run_all` after one outage.
    #[serde(default = "default_max_catch_up")]
    #[schema(minimum = 1, maximum = 10000)]
    pub max_catch_up: u32,
}

fn default_grace() -> Duration {
    Duration::from_secs_const(30)
}

fn default_max_catch_up() -> u32 {
    10
}

impl Default for Misfire {
    fn default() -> Self {
        Misfire {
            policy: MisfirePolicy::default(),
            grace: default_grace(),
            max_catch_up: default_max_catch_up(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// Drop missed slots.
    Skip,
    /// Create one slot (the most recent missed one) for the whole gap.
    #[default]
    RunOnce,
    /// Create every missed slot, the most recent `max_catch_up` of them.
    RunAll,
}

impl MisfirePolicy {
    pub const ALL: [MisfirePolicy; 3] = [
        MisfirePolicy::Skip,
        MisfirePolicy::RunOnce,
        MisfirePolicy::RunAll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MisfirePolicy::Skip => "skip",
            MisfirePolicy::RunOnce => "run_once",
            MisfirePolicy::RunAll => "run_all",
        }
    }
}

impl std::str::FromStr for MisfirePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MisfirePolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown misfire policy {s:?}; expected skip, run_once or run_all")
            })
    }
}

/// Retry policy: attempts of the same slot with exponential backoff.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Extra attempts after the first one fails (0 = no retries).
    #[serde(default)]
    #[schema(maximum = 100)]
    pub max: u32,
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
}

fn default_backoff() -> Duration {
    Duration::from_secs_const(10)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs_const(300)
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            max: 0,
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

/// Per-job retention of finished runs. Unset values fall back to the server defaults.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// Finished runs kept (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub keep: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

/// Run counters kept on the job row (no scan of the runs table).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct JobCounters {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// The most recently created run of this job, if any.
    #[serde(default)]
    pub last_run_id: Option<i64>,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(default, with = "crate::time::rfc3339_opt")]
    pub last_run_at: Option<i64>,
    #[serde(default)]
    pub last_state: Option<String>,
    /// When a run of this job last succeeded.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_success_at: Option<i64>,
    /// Since when the job is overdue (its `alert.overdue_after` passed with no success).
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub overdue_since: Option<i64>,
}

/// A stored job as the API returns it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Job {
    pub id: String,
    /// Described by the spec's schema, merged in (see the server's OpenAPI document).
    #[schema(ignore)]
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Set by `POST /v1/jobs/{id}/pause`; an upsert does not change it.
    pub paused: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "crate::time::rfc3339_opt")]
    pub next_fire_at: Option<i64>,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: i64,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "crate::time::rfc3339")]
    pub updated_at: i64,
    pub counters: JobCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec: JobSpec = serde_json::from_str(
            r#"{"schedule":"@every 30s","executor":{"type":"exec","argv":["true"]}}"#,
        )
        .unwrap();
        assert_eq!(spec.timezone, "UTC");
        assert_eq!(spec.concurrency, Concurrency::Allow);
        assert_eq!(spec.misfire.policy, MisfirePolicy::RunOnce);
        assert_eq!(spec.misfire.grace.as_millis(), 30_000);
        assert!(spec.enabled);
        assert_eq!(spec.target, Target::default());
    }

    #[test]
    fn design_example_parses() {
        let spec: JobSpec = serde_json::from_str(
            r#"{
              "schedule": "0 30 2 * * *", "timezone": "Europe/Berlin",
              "executor": {"type": "exec", "argv": ["/usr/local/bin/report", "--daily"],
                           "env": {"MODE": "full"}, "cwd": "/srv"},
              "target": {"labels": {"role": "worker"}},
              "concurrency": "forbid",
              "misfire": {"policy": "run_once", "grace": "30s", "max_catch_up": 10},
              "timeout": "10m",
              "retries": {"max": 3, "backoff": "10s", "max_backoff": "5m"},
              "history": {"keep": 100, "max_age": "30d"},
              "enabled": true,
              "description": "Nightly sales report"
            }"#,
        )
        .unwrap();
        assert_eq!(spec.retries.max, 3);
        assert_eq!(spec.timeout.unwrap().as_millis(), 600_000);
        let http: Executor = serde_json::from_str(
            r#"{"type":"http","method":"POST","url":"http://x","headers":{"a":"b"},"body":"{}","expect_status":[200,204]}"#,
        )
        .unwrap();
        assert_eq!(http.kind(), ExecutorKind::Http);
        for k in ExecutorKind::ALL {
            assert_eq!(k.as_str().parse::<ExecutorKind>().unwrap(), k);
        }
        for p in MisfirePolicy::ALL {
            assert_eq!(p.as_str().parse::<MisfirePolicy>().unwrap(), p);
        }
        assert!("once".parse::<MisfirePolicy>().is_err());
        assert!("ssh".parse::<ExecutorKind>().is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<JobSpec>(
            r#"{"schedule":"@hourly","executor":{"type":"exec","argv":["x"]},"retrys":{}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("retrys"), "{err}");
        let err = serde_json::from_str::<JobSpec>(
            r#"{"schedule":"@hourly","executor":{"type":"exec","argv":["x"],"shell":true}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("shell"), "{err}");
    }

    #[test]
    fn job_round_trips_with_flattened_spec() {
        let spec: JobSpec = serde_json::from_str(
            r#"{"schedule":"@hourly","executor":{"type":"shell","script":"echo hi"}}"#,
        )
        .unwrap();
        let job = Job {
            id: "j".into(),
            spec,
            paused: false,
            next_fire_at: Some(0),
            created_at: 0,
            updated_at: 0,
            counters: JobCounters::default(),
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains(r#""schedule":"@hourly""#));
        assert!(text.contains(r#""next_fire_at":"1970-01-01T00:00:00.000Z""#));
        let back: Job = serde_json::from_str(&text).unwrap();
        assert_eq!(back, job);
    }
}

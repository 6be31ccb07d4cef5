//! Runs: one attempt history per scheduled slot, as the runs endpoints return them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The lifecycle state of a run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Lost,
    Cancelled,
    Skipped,
}

impl RunState {
    pub const ALL: [RunState; 8] = [
        RunState::Pending,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::TimedOut,
        RunState::Lost,
        RunState::Cancelled,
        RunState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::TimedOut => "timed_out",
            RunState::Lost => "lost",
            RunState::Cancelled => "cancelled",
            RunState::Skipped => "skipped",
        }
    }

    /// A terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunState::Pending | RunState::Running)
    }
}

/// The attempt a run's stored output belongs to. A retry makes the run
/// `pending` as its next attempt but keeps the output of the one that
/// ended until the new one is assigned, so a pending attempt `n > 1` still
/// shows attempt `n - 1`'s output.
pub fn output_attempt(state: RunState, attempt: u32) -> u32 {
    if state == RunState::Pending && attempt > 1 {
        attempt - 1
    } else {
        attempt
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown run state {s:?}; expected one of {}",
                    RunState::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}

/// How a slot came to exist.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// An on-time fire of the schedule.
    Schedule,
    /// A missed fire created after downtime by the misfire policy.
    CatchUp,
    /// `POST /v1/jobs/{id}/trigger`.
    Manual,
    /// A slot of an upstream job ended (the job's `after`).
    Chain,
}

impl Trigger {
    pub const ALL: [Trigger; 4] = [
        Trigger::Schedule,
        Trigger::CatchUp,
        Trigger::Manual,
        Trigger::Chain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
            Trigger::Chain => "chain",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Trigger {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Trigger::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown trigger {s:?}; expected one of {}",
                    Trigger::ALL.map(|t| t.as_str()).join(", ")
                )
            })
    }
}

/// One run of a job: a slot and its latest attempt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Run {
    pub id: i64,
    pub job_id: String,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "crate::time::rfc3339")]
    pub scheduled_for: i64,
    /// The node the run targets or ran on; null when not yet assigned.
    pub node: Option<String>,
    pub trigger: Trigger,
    /// The upstream run that started this one (trigger `chain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_run_id: Option<i64>,
    pub attempt: u32,
    pub state: RunState,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: i64,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "crate::time::rfc3339_opt")]
    pub started_at: Option<i64>,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "crate::time::rfc3339_opt")]
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
    pub truncated: bool,
    pub error: Option<String>,
}

/// A page of a list endpoint, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for st in RunState::ALL {
            assert_eq!(st.as_str().parse::<RunState>().unwrap(), st);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
        assert!("done"
            .parse::<RunState>()
            .unwrap_err()
            .contains("timed_out"));
        for t in Trigger::ALL {
            assert_eq!(t.as_str().parse::<Trigger>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert!("cron".parse::<Trigger>().unwrap_err().contains("catch_up"));
    }
}

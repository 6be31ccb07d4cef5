//! The agent protocol: what daemons and the server exchange on `/v1/agent/*`.
//! Every request except `join` is signed (see [`crate::sign`]).

use crate::job::Executor;
use crate::time::{rfc3339, rfc3339_opt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/agent/join`, authorized by `Authorization: Sundial-Join <token>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub node_id: String,
}

/// The node credential a join returns; the daemon stores it (mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub node_id: String,
    pub generation: u64,
    /// Hex of the 32-byte node key.
    pub key: String,
}

/// `POST /v1/agent/register`: what the node offers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    #[serde(default)]
    pub version: String,
    /// Executor types this node accepts (`exec`, `shell`, `http`).
    pub executors: Vec<String>,
}

/// `POST /v1/agent/poll`: ask for up to `max` runs, waiting up to `wait_ms`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    pub max: u32,
    #[serde(default = "default_wait")]
    pub wait_ms: u64,
    /// The `receipt` of the last poll response this process read. Sent once
    /// the server has shown it gives receipts: runs handed to a poll sent
    /// with this same `ack` were never read (the response was lost), and the
    /// server hands them back at once instead of waiting for their lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
}

fn default_wait() -> u64 {
    30_000
}

/// One unit of work handed to a node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Assignment {
    pub run_id: i64,
    pub job_id: String,
    pub attempt: u32,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "rfc3339")]
    pub scheduled_for: i64,
    pub executor: Executor,
    /// Longest the attempt may run, in milliseconds (None: no limit).
    pub timeout_ms: Option<u64>,
    /// Heartbeat at least this often (ms) or the lease expires.
    pub lease_ms: u64,
    /// The upstream run that started this one (job chains): the job sees it
    /// as `SUNDIAL_UPSTREAM_RUN_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_run_id: Option<i64>,
    /// Start this long after receiving the assignment (ms; 0 or absent: at
    /// once). The server hands out runs due within its dispatch lookahead
    /// before their time, so the daemon starts them on the dot; a relative
    /// delay, so a daemon's clock skew can never start a run early.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_in_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PollResponse {
    pub runs: Vec<Assignment>,
    /// Names this response; the node sends it back as `ack` in its next poll
    /// once it has read it. Absent from servers without receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<u64>,
}

/// `POST /v1/agent/runs/{id}/heartbeat`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub attempt: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    /// The operator cancelled the run (or it was replaced): stop it.
    pub cancel: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "rfc3339_opt")]
    pub lease_expires_at: Option<i64>,
}

/// `POST /v1/agent/runs/{id}/output`: what a running attempt printed since
/// `offset` (bytes of output the server already has), sent about once a
/// second so `GET /v1/runs/{id}/output?follow=true` shows it live.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputRequest {
    pub attempt: u32,
    pub offset: u64,
    pub chunk: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OutputResponse {
    /// Bytes of output the server now holds: the next chunk starts there.
    pub stored: u64,
}

/// How an attempt ended, as the daemon reports it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// The daemon gave the run back (drain): the server retries it.
    HandedBack,
}

/// `POST /v1/agent/runs/{id}/complete` (idempotent).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub attempt: u32,
    pub outcome: Outcome,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "rfc3339")]
    pub started_at: i64,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "rfc3339")]
    pub finished_at: i64,
}

/// Most output the server keeps for one run (live output and the final
/// result alike), whatever a daemon sends; a daemon's `--output-cap-bytes`
/// may not exceed it.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// Most bytes of a result's `error` the server keeps.
pub const MAX_ERROR_BYTES: usize = 4096;

impl CompleteRequest {
    /// Holds the result to what the server keeps: output past
    /// [`MAX_OUTPUT_BYTES`] is cut (at a character boundary) and the result
    /// marked `truncated`; an error past [`MAX_ERROR_BYTES`] is cut.
    pub fn bound(&mut self) {
        if self.output.len() > MAX_OUTPUT_BYTES {
            self.output
                .truncate(floor_char_boundary(&self.output, MAX_OUTPUT_BYTES));
            self.truncated = true;
        }
        if let Some(e) = &mut self.error {
            if e.len() > MAX_ERROR_BYTES {
                e.truncate(floor_char_boundary(e, MAX_ERROR_BYTES));
            }
        }
    }
}

/// The largest character boundary of `s` at or before `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// `POST /v1/agent/complete`: several results in one signed request (each
/// handled as its own `/runs/{id}/complete` would be, in one transaction).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBatch {
    pub results: Vec<CompleteItem>,
}

/// One result of a [`CompleteBatch`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteItem {
    pub run_id: i64,
    pub result: CompleteRequest,
}

/// Most results in one [`CompleteBatch`].
pub const MAX_COMPLETE_BATCH: usize = 1_000;

/// The answer to a [`CompleteBatch`]: one status per result, in order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CompleteBatchResponse {
    pub results: Vec<CompleteItemStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CompleteItemStatus {
    pub run_id: i64,
    /// `recorded`, `duplicate`, `stale` (a newer attempt exists, or this
    /// attempt is not this node's) or `not_found`; every status means "done,
    /// do not send again".
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CompleteResponse {
    /// `recorded`, `duplicate` (already recorded) or `stale` (a newer attempt exists).
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_held_to_what_the_server_keeps() {
        let mut r = CompleteRequest {
            attempt: 1,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            // Two-byte characters: the cut falls inside one.
            output: "é".repeat(MAX_OUTPUT_BYTES / 2 + 1),
            truncated: false,
            error: Some("x".repeat(MAX_ERROR_BYTES + 5)),
            started_at: 0,
            finished_at: 1,
        };
        r.bound();
        assert_eq!(r.output.len(), MAX_OUTPUT_BYTES);
        assert!(r.truncated);
        assert_eq!(r.error.as_deref().map(str::len), Some(MAX_ERROR_BYTES));
        let mut odd = CompleteRequest {
            output: format!("a{}", "é".repeat(MAX_OUTPUT_BYTES / 2)),
            ..r.clone()
        };
        odd.bound();
        assert_eq!(
            odd.output.len(),
            MAX_OUTPUT_BYTES - 1,
            "cut before the split character"
        );
        let mut small = CompleteRequest {
            output: "ok".into(),
            truncated: false,
            error: None,
            ..r
        };
        small.bound();
        assert_eq!((small.output.as_str(), small.truncated), ("ok", false));
    }
}

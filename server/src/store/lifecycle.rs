//! A run's life after its slot exists: assignment to a node (with the job's
//! concurrency policy), heartbeats, completion (idempotent), lease expiry and
//! retries with exponential backoff. Each function runs inside a writer batch.

use super::{runs, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use sundial_proto::agent::{Assignment, CompleteRequest, Outcome};
use sundial_proto::{Concurrency, JobSpec, RunState, Target};

/// What the dispatcher keeps in memory for a pending run.
#[derive(Debug, Clone)]
pub struct Queued {
    pub run_id: i64,
    pub job_pk: i64,
    /// The node of a broadcast slot, '' for any eligible node.
    pub slot_node: String,
    /// Not dispatched before this instant (scheduled time or retry backoff).
    pub ready_at: i64,
    pub target: std::sync::Arc<Target>,
    pub executor_kind: String,
}

fn parse_target(text: &str) -> Target {
    serde_json::from_str(text).unwrap_or_default()
}

const QUEUED_SELECT: &str =
    "SELECT r.id, r.job, r.node, max(r.scheduled_for, r.not_before), j.target, j.executor_kind
     FROM runs r JOIN jobs j ON j.pk = r.job";

fn queued_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Queued> {
    let target: String = r.get(4)?;
    Ok(Queued {
        run_id: r.get(0)?,
        job_pk: r.get(1)?,
        slot_node: r.get(2)?,
        ready_at: r.get(3)?,
        target: std::sync::Arc::new(parse_target(&target)),
        executor_kind: r.get(5)?,
    })
}

/// Every pending run (loaded when a server becomes primary).
pub fn load_pending(conn: &Connection) -> Result<Vec<Queued>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "{QUEUED_SELECT} WHERE r.state = 'pending' ORDER BY r.id"
    ))?;
    let rows = stmt.query_map([], queued_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The queue entry of one pending run.
pub fn queued(conn: &Connection, run_id: i64) -> Result<Option<Queued>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "{QUEUED_SELECT} WHERE r.id = ?1 AND r.state = 'pending'"
        ))?
        .query_row([run_id], queued_from_row)
        .optional()?)
}

/// Retry delay before attempt `next_attempt` (2, 3, …): backoff × 2^(n-2), capped.
pub fn backoff_ms(spec: &JobSpec, next_attempt: u32) -> i64 {
    let base = spec.retries.backoff.as_millis_i64();
    let cap = spec.retries.max_backoff.as_millis_i64();
    let shift = next_attempt.saturating_sub(2).min(30);
    base.saturating_mul(1i64 << shift).min(cap)
}

fn job_spec(conn: &Connection, job_pk: i64) -> Result<JobSpec, StoreError> {
    let text: String = conn
        .prepare_cached("SELECT spec FROM jobs WHERE pk = ?1")?
        .query_row([job_pk], |r| r.get(0))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("job spec: {e}")))
}

/// Result of trying to assign queued runs to a node.
#[derive(Debug, Default)]
pub struct Assigned {
    pub runs: Vec<Assignment>,
    /// Runs that must wait (e.g. a retry under `forbid` while another attempt runs).
    pub later: Vec<Queued>,
    /// Runs recorded as `skipped` by `forbid`.
    pub skipped: usize,
}

/// Assigns `candidates` to `node`, applying each job's concurrency policy.
pub fn assign(
    conn: &Connection,
    node: &str,
    candidates: Vec<Queued>,
    now: i64,
    lease_ms: i64,
) -> Result<Assigned, StoreError> {
    let mut out = Assigned::default();
    for mut c in candidates {
        let row: Option<(String, u32, i64, String)> = conn
            .prepare_cached(
                "SELECT r.state, r.attempt, r.scheduled_for, j.id FROM runs r JOIN jobs j ON j.pk = r.job
                 WHERE r.id = ?1",
            )?
            .query_row([c.run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        let Some((state, attempt, scheduled_for, job_id)) = row else {
            continue; // deleted with its job
        };
        if state != "pending" {
            continue; // cancelled meanwhile
        }
        let spec = job_spec(conn, c.job_pk)?;
        match spec.concurrency {
            Concurrency::Allow => {}
            Concurrency::Forbid => {
                let active: bool = conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM runs WHERE job = ?1 AND state = 'running')",
                    )?
                    .query_row([c.job_pk], |r| r.get(0))?;
                if active {
                    if attempt == 1 {
                        runs::finish(
                            conn,
                            c.run_id,
                            RunState::Skipped,
                            now,
                            Some(
                                "skipped: concurrency is forbid and a previous run is still active",
                            ),
                        )?;
                        out.skipped += 1;
                    } else {
                        // A retry waits for the active attempt rather than being dropped.
                        c.ready_at = now + 1_000;
                        out.later.push(c);
                    }
                    continue;
                }
            }
            Concurrency::Replace => {
                conn.prepare_cached(
                    "UPDATE runs SET cancel_requested = 1 WHERE job = ?1 AND state = 'running'",
                )?
                .execute([c.job_pk])?;
            }
        }
        conn.prepare_cached(
            "UPDATE runs SET state = 'running', assigned_node = ?2, lease_expires_at = ?3,
                 started_at = ?4, cancel_requested = 0
             WHERE id = ?1 AND state = 'pending'",
        )?
        .execute(params![c.run_id, node, now + lease_ms, now])?;
        conn.prepare_cached(
            "UPDATE jobs SET last_state = 'running' WHERE pk = ?1 AND last_run_id = ?2",
        )?
        .execute(params![c.job_pk, c.run_id])?;
        out.runs.push(Assignment {
            run_id: c.run_id,
            job_id,
            attempt,
            scheduled_for,
            executor: spec.executor,
            timeout_ms: spec.timeout.map(|t| t.as_millis()),
            lease_ms: lease_ms as u64,
        });
    }
    Ok(out)
}

/// Why an agent call about a run was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunCall {
    /// The run does not exist.
    Unknown,
    /// The run is not (or no longer) this node's current attempt.
    NotYours,
}

/// Extends a running attempt's lease. Returns (cancel requested, new expiry).
pub fn heartbeat(
    conn: &Connection,
    node: &str,
    run_id: i64,
    attempt: u32,
    now: i64,
    lease_ms: i64,
) -> Result<Result<(bool, i64), RunCall>, StoreError> {
    let row: Option<(String, u32, Option<String>, bool)> = conn
        .prepare_cached(
            "SELECT state, attempt, assigned_node, cancel_requested FROM runs WHERE id = ?1",
        )?
        .query_row([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((state, current, assigned, cancel)) = row else {
        return Ok(Err(RunCall::Unknown));
    };
    if state != "running" || current != attempt || assigned.as_deref() != Some(node) {
        // The attempt was taken away (lease expired, cancelled): tell the node to stop.
        return Ok(Ok((true, now)));
    }
    let expires = now + lease_ms;
    conn.prepare_cached("UPDATE runs SET lease_expires_at = ?2 WHERE id = ?1")?
        .execute(params![run_id, expires])?;
    Ok(Ok((cancel, expires)))
}

/// How a completion was taken.
#[derive(Debug, Clone)]
pub enum Completion {
    /// Recorded; `requeue` holds the retry if one was scheduled.
    Recorded {
        requeue: Option<Queued>,
        state: RunState,
    },
    /// The same result arrived before (a retried delivery).
    Duplicate,
    /// A newer attempt exists, or the attempt was reassigned; ignored.
    Stale,
}

/// Records an attempt's result. Idempotent: a repeated delivery is `Duplicate`.
pub fn complete(
    conn: &Connection,
    node: &str,
    run_id: i64,
    req: &CompleteRequest,
    now: i64,
) -> Result<Result<Completion, RunCall>, StoreError> {
    let row: Option<(String, u32, Option<String>, i64, bool)> = conn
        .prepare_cached(
            "SELECT state, attempt, assigned_node, job, cancel_requested FROM runs WHERE id = ?1",
        )?
        .query_row([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((state, attempt, assigned, job_pk, cancel_requested)) = row else {
        return Ok(Err(RunCall::Unknown));
    };
    let state: RunState = state.parse().map_err(|e: String| StoreError::Corrupt(e))?;
    if req.attempt == attempt && assigned.as_deref() == Some(node) && state.is_terminal() {
        return Ok(Ok(Completion::Duplicate));
    }
    if req.attempt != attempt || assigned.as_deref() != Some(node) || state != RunState::Running {
        return Ok(Ok(Completion::Stale));
    }
    conn.prepare_cached(
        "UPDATE runs SET exit_code = ?2, output = ?3, truncated = ?4, error = ?5,
             started_at = ?6, lease_expires_at = NULL
         WHERE id = ?1",
    )?
    .execute(params![
        run_id,
        req.exit_code,
        req.output,
        req.truncated,
        req.error,
        req.started_at,
    ])?;
    let spec = job_spec(conn, job_pk)?;
    let retry_budget = attempt <= spec.retries.max;
    let (final_state, retry) = match req.outcome {
        Outcome::Succeeded => (RunState::Succeeded, false),
        Outcome::Cancelled => (RunState::Cancelled, false),
        Outcome::Failed if retry_budget && !cancel_requested => (RunState::Failed, true),
        Outcome::TimedOut if retry_budget && !cancel_requested => (RunState::TimedOut, true),
        Outcome::Failed => (RunState::Failed, false),
        Outcome::TimedOut => (RunState::TimedOut, false),
        Outcome::HandedBack if cancel_requested => (RunState::Cancelled, false),
        Outcome::HandedBack => (RunState::Pending, true),
    };
    if retry {
        let delay = if req.outcome == Outcome::HandedBack {
            0
        } else {
            backoff_ms(&spec, attempt + 1)
        };
        let requeue = retry_run(conn, run_id, node, now + delay)?;
        return Ok(Ok(Completion::Recorded {
            requeue,
            state: RunState::Pending,
        }));
    }
    runs::finish_at(conn, run_id, final_state, req.finished_at, None)?;
    Ok(Ok(Completion::Recorded {
        requeue: None,
        state: final_state,
    }))
}

/// Puts a run back in the queue as its next attempt.
fn retry_run(
    conn: &Connection,
    run_id: i64,
    last_node: &str,
    not_before: i64,
) -> Result<Option<Queued>, StoreError> {
    conn.prepare_cached(
        "UPDATE runs SET state = 'pending', attempt = attempt + 1, assigned_node = NULL,
             last_node = ?2, not_before = ?3, lease_expires_at = NULL
         WHERE id = ?1",
    )?
    .execute(params![run_id, last_node, not_before])?;
    queued(conn, run_id)
}

/// Expires leases older than `now`: the attempt is `lost` and retried per the
/// job's policy (or the run ends `lost`/`cancelled`). Returns the retries to queue
/// and the number of expired leases.
pub fn expire_leases(conn: &Connection, now: i64) -> Result<(Vec<Queued>, usize), StoreError> {
    let expired: Vec<(i64, u32, Option<String>, i64, bool)> = conn
        .prepare_cached(
            "SELECT id, attempt, assigned_node, job, cancel_requested FROM runs
             WHERE state = 'running' AND lease_expires_at < ?1 LIMIT 10000",
        )?
        .query_map([now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut requeue = Vec::new();
    for (run_id, attempt, node, job_pk, cancel) in &expired {
        let node = node.clone().unwrap_or_default();
        let spec = job_spec(conn, *job_pk)?;
        let msg = format!("attempt {attempt} lost: lease expired on node {node:?}");
        if *cancel {
            runs::finish_at(conn, *run_id, RunState::Cancelled, now, Some(&msg))?;
        } else if *attempt <= spec.retries.max {
            conn.prepare_cached("UPDATE runs SET error = ?2 WHERE id = ?1")?
                .execute(params![run_id, msg])?;
            if let Some(q) = retry_run(conn, *run_id, &node, now + backoff_ms(&spec, attempt + 1))?
            {
                requeue.push(q);
            }
        } else {
            runs::finish_at(conn, *run_id, RunState::Lost, now, Some(&msg))?;
        }
    }
    Ok((requeue, expired.len()))
}

/// After a restart or promotion, daemons had no one to heartbeat to: give
/// every running attempt a fresh lease before expiring anything.
pub fn renew_all_leases(conn: &Connection, now: i64, lease_ms: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE runs SET lease_expires_at = max(coalesce(lease_expires_at, 0), ?1) WHERE state = 'running'",
        [now + lease_ms],
    )?)
}

/// Operator cancel: a pending run ends at once; a running one is flagged and
/// the node is told in its next heartbeat reply.
pub fn cancel(conn: &Connection, run_id: i64, now: i64) -> Result<sundial_proto::Run, StoreError> {
    let state: Option<String> = conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .optional()?;
    match state.as_deref() {
        None => Err(StoreError::NotFound {
            kind: "run",
            id: run_id.to_string(),
        }),
        Some("running") => {
            conn.prepare_cached("UPDATE runs SET cancel_requested = 1 WHERE id = ?1")?
                .execute([run_id])?;
            runs::get(conn, run_id)?.ok_or(StoreError::NotFound {
                kind: "run",
                id: run_id.to_string(),
            })
        }
        Some(_) => runs::finish(
            conn,
            run_id,
            RunState::Cancelled,
            now,
            Some("cancelled by operator"),
        ),
    }
}

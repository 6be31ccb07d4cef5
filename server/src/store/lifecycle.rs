//! A run's whole life and its job's counters: the one owner of every run
//! transition. Slots are created here (for the scheduler and for manual
//! triggers alike: one copy of slot insertion), then assigned (with the
//! job's concurrency policy), heart-beaten, completed (idempotent), retried,
//! handed back, cancelled or expired — each as [`transition::next`] decides
//! — and the job's counters (its `job_stats` row: `runs_total`,
//! `runs_succeeded`, `runs_failed`, `last_run_*`, `last_state`,
//! `last_success_at`; a scheduled fire moves the row's `next_fire_at` in
//! the same statement) move with them, and each
//! transition appends its event (`run.started`, `run.retrying`, `run.<end
//! state>`) to the outbox. Each function runs inside a writer batch, so a
//! transition, its counters and its event commit together.
//!
//! Rows become types here: a state, trigger, target or executor kind that
//! does not parse is a [`StoreError::Corrupt`] naming the row, never a default.

use super::prepared::Prepared;
use super::transition::{self, Event, RetryAt, Step};
use super::{chains, column_str as text, events, run_value, runs, spec_cache, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::Arc;
use sundial_proto::agent::{Assignment, CompleteRequest, Outcome};
use sundial_proto::{Concurrency, ExecutorKind, JobSpec, RunState, Target, Trigger};

/// What the dispatcher keeps in memory for a pending run.
#[derive(Debug, Clone)]
pub struct Queued {
    pub run_id: i64,
    pub job_pk: i64,
    /// The node of a broadcast slot, '' for any eligible node.
    pub slot_node: String,
    /// Not started before this instant (scheduled time or retry backoff).
    pub ready_at: i64,
    pub target: Arc<Target>,
    pub executor_kind: ExecutorKind,
    /// Not handed out ahead of `ready_at`: its job's concurrency policy
    /// must be judged at the run's own time (a previous run was active when
    /// it was offered early).
    pub on_time_only: bool,
    /// A chained slot its write just created: counted in
    /// `slots_created_total{trigger="chain"}` when the dispatcher first
    /// queues it (after that write committed), then cleared.
    pub new_chain_slot: bool,
}

/// Parses a job's stored target (JSON); an error names the job.
pub fn parse_target(job: &str, text: &str) -> Result<Target, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("job {job}: stored target {text:?}: {e}")))
}

/// Parses a job's stored executor kind; an error names the job.
pub fn parse_executor_kind(job: &str, text: &str) -> Result<ExecutorKind, StoreError> {
    text.parse()
        .map_err(|e: String| StoreError::Corrupt(format!("job {job}: {e}")))
}

// ---------------------------------------------------------------------------
// Slots

/// The job a slot is created for: what the queue entry needs.
#[derive(Debug, Clone)]
pub struct SlotJob {
    pub pk: i64,
    pub target: Arc<Target>,
    pub executor_kind: ExecutorKind,
}

/// The nodes one fire creates a slot for: each live matching node of a
/// broadcast (fixed at fire time), or `''` (any one node).
pub fn slot_nodes(target: &Target, broadcast_targets: impl FnOnce() -> Vec<String>) -> Vec<String> {
    if target.all {
        broadcast_targets()
    } else {
        vec![String::new()]
    }
}

/// The slots of one fire and the newest of them, for [`record_slots`].
#[derive(Debug, Default)]
pub struct Fired {
    pub queued: Vec<Queued>,
    /// (run id, scheduled time) of the newest slot created.
    pub last: Option<(i64, i64)>,
}

/// Creates the slots of one fire at `at` — one per entry of `nodes` —
/// unless they exist (the UNIQUE key, never timing, decides). Appends the
/// new ones to `fired`; returns how many were new.
pub fn create_slots(
    p: &mut Prepared<'_>,
    job: &SlotJob,
    trigger: Trigger,
    at: i64,
    nodes: &[String],
    now: i64,
    fired: &mut Fired,
) -> Result<usize, StoreError> {
    insert_slots(p, job, trigger, at, nodes, None, now, fired)
}

/// Whether a chained slot was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainSlot {
    Created,
    /// This upstream slot already has its run (a repeat: nothing to do).
    Exists,
    /// The instant is taken by another chained slot of the job: try the next.
    Collides,
}

/// The slot a chain creates for `job` after the upstream slot whose first
/// run is `upstream_run` (one per upstream slot, by a UNIQUE index).
pub fn create_chain_slots(
    p: &mut Prepared<'_>,
    job: &SlotJob,
    at: i64,
    nodes: &[String],
    upstream_run: i64,
    now: i64,
    fired: &mut Fired,
) -> Result<ChainSlot, StoreError> {
    let conn = p.conn();
    let exists: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM runs WHERE job = ?1 AND upstream_run = ?2)")?
        .query_row(params![job.pk, upstream_run], |r| r.get(0))?;
    if exists {
        return Ok(ChainSlot::Exists);
    }
    let taken: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM runs WHERE job = ?1 AND trigger = 'chain' AND scheduled_for = ?2)",
        )?
        .query_row(params![job.pk, at], |r| r.get(0))?;
    if taken {
        return Ok(ChainSlot::Collides);
    }
    insert_slots(
        p,
        job,
        Trigger::Chain,
        at,
        nodes,
        Some(upstream_run),
        now,
        fired,
    )?;
    Ok(ChainSlot::Created)
}

#[allow(clippy::too_many_arguments)]
fn insert_slots(
    p: &mut Prepared<'_>,
    job: &SlotJob,
    trigger: Trigger,
    at: i64,
    nodes: &[String],
    upstream_run: Option<i64>,
    now: i64,
    fired: &mut Fired,
) -> Result<usize, StoreError> {
    let conn = p.conn();
    let insert = p.stmt(
        "INSERT INTO runs (job, trigger, scheduled_for, node, state, created_at, upstream_run)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6)
         ON CONFLICT (job, trigger, scheduled_for, node) DO NOTHING",
    )?;
    let mut created = 0;
    for node in nodes {
        if insert.execute(params![
            job.pk,
            trigger.as_str(),
            at,
            node,
            now,
            upstream_run
        ])? == 0
        {
            continue;
        }
        let run_id = conn.last_insert_rowid();
        created += 1;
        fired.last = Some((run_id, at));
        fired.queued.push(Queued {
            run_id,
            job_pk: job.pk,
            slot_node: node.clone(),
            ready_at: at,
            target: job.target.clone(),
            executor_kind: job.executor_kind,
            on_time_only: false,
            new_chain_slot: trigger == Trigger::Chain,
        });
    }
    Ok(created)
}

/// What a fire does to the job's `next_fire_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextFire {
    /// A scheduled fire: move it (None: the job never fires again).
    Set(Option<i64>),
    /// A manual trigger: leave the schedule alone.
    Keep,
}

/// The job after a fire: next fire moved (a scheduled fire), and, when
/// slots were created, their count and the newest noted in its counters.
pub fn record_slots(
    p: &mut Prepared<'_>,
    job_pk: i64,
    next: NextFire,
    fired: &Fired,
) -> Result<(), StoreError> {
    // One statement for the job's row in each case: a scheduled fire that
    // created slots (the hot path) moves the next fire and the counters
    // together.
    let changed = match (next, fired.last) {
        (NextFire::Set(next), Some((run_id, at))) => p
            .stmt(
                "UPDATE job_stats SET next_fire_at = ?2, runs_total = runs_total + ?3,
                     last_run_id = ?4, last_run_at = ?5, last_state = 'pending'
                 WHERE pk = ?1",
            )?
            .execute(params![job_pk, next, fired.queued.len() as i64, run_id, at])?,
        (NextFire::Set(next), None) => return super::jobs::set_next_fire(p.conn(), job_pk, next),
        (NextFire::Keep, Some((run_id, at))) => p
            .stmt(
                "UPDATE job_stats SET runs_total = runs_total + ?2, last_run_id = ?3,
                     last_run_at = ?4, last_state = 'pending'
                 WHERE pk = ?1",
            )?
            .execute(params![job_pk, fired.queued.len() as i64, run_id, at])?,
        (NextFire::Keep, None) => return Ok(()),
    };
    stats_written(changed, job_pk)
}

/// A job's row in `job_stats` is written with the job: an update that
/// finds none is a damaged database, not something to skip.
pub(super) fn stats_written(changed: usize, job_pk: i64) -> Result<(), StoreError> {
    if changed == 0 {
        return Err(StoreError::Corrupt(format!(
            "job {job_pk}: no row in job_stats"
        )));
    }
    Ok(())
}

/// A manual trigger: its own slot(s) at `now` — or the next free
/// millisecond, so two triggers in one millisecond are two slots.
/// Returns the first new run's id and the queue entries.
pub fn trigger_manual(
    conn: &Connection,
    job: &SlotJob,
    nodes: &[String],
    now: i64,
) -> Result<(i64, Vec<Queued>), StoreError> {
    let mut p = Prepared::new(conn);
    for offset in 0..1000 {
        let mut fired = Fired::default();
        create_slots(
            &mut p,
            job,
            Trigger::Manual,
            now + offset,
            nodes,
            now,
            &mut fired,
        )?;
        if let Some(first) = fired.queued.first().map(|q| q.run_id) {
            record_slots(&mut p, job.pk, NextFire::Keep, &fired)?;
            return Ok((first, fired.queued));
        }
    }
    Err(StoreError::Conflict(
        "too many manual triggers at once".into(),
    ))
}

// ---------------------------------------------------------------------------
// Queue

const QUEUED_SELECT: &str =
    "SELECT r.id, r.job, r.node, max(r.scheduled_for, r.not_before), j.target, j.executor_kind, j.id
     FROM runs r JOIN jobs j ON j.pk = r.job";

fn queued_from_row(r: &rusqlite::Row<'_>) -> Result<Queued, StoreError> {
    let job: String = r.get(6)?;
    let target: String = r.get(4)?;
    let kind: String = r.get(5)?;
    Ok(Queued {
        run_id: r.get(0)?,
        job_pk: r.get(1)?,
        slot_node: r.get(2)?,
        ready_at: r.get(3)?,
        target: Arc::new(parse_target(&job, &target)?),
        executor_kind: parse_executor_kind(&job, &kind)?,
        on_time_only: false,
        new_chain_slot: false,
    })
}

/// Where a job's queued runs may go: its target and executor kind as
/// stored now. Read after a write that changed them, so runs queued under
/// the old ones follow ([`crate::dispatch::Dispatcher::retarget`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub job_pk: i64,
    pub target: Arc<Target>,
    pub executor_kind: ExecutorKind,
}

/// The [`Placement`] of job `id`, `None` when there is no such job.
pub fn placement(conn: &Connection, id: &str) -> Result<Option<Placement>, StoreError> {
    let row: Option<(i64, String, String)> = conn
        .prepare_cached("SELECT pk, target, executor_kind FROM jobs WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    row.map(|(job_pk, target, kind)| {
        Ok(Placement {
            job_pk,
            target: Arc::new(parse_target(id, &target)?),
            executor_kind: parse_executor_kind(id, &kind)?,
        })
    })
    .transpose()
}

/// Every pending run (loaded when a server becomes primary). A run whose
/// job row does not parse is left pending, not dispatched, and logged.
pub fn load_pending(conn: &Connection) -> Result<Vec<Queued>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "{QUEUED_SELECT} WHERE r.state = 'pending' ORDER BY r.id"
    ))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        match queued_from_row(row) {
            Ok(q) => out.push(q),
            Err(e) => {
                let id: i64 = row.get(0)?;
                tracing::error!(run = id, error = %e, "pending run not queued: its job row is not valid");
            }
        }
    }
    Ok(out)
}

/// One running attempt and the receipt of the poll that handed it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOut {
    pub node: String,
    pub run_id: i64,
    pub attempt: u32,
    pub receipt: u64,
}

/// Every running attempt handed out with a receipt (loaded when a server
/// becomes primary, see `crate::receipts`). A row whose receipt is not
/// one (negative) is logged and left out: that attempt keeps its lease,
/// and the promotion goes on.
pub fn load_handed_out(conn: &Connection) -> Result<Vec<HandedOut>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT assigned_node, id, attempt, receipt FROM runs
         WHERE state = 'running' AND receipt IS NOT NULL AND assigned_node IS NOT NULL",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let run_id: i64 = row.get(1)?;
        let receipt: i64 = row.get(3)?;
        let Ok(receipt) = u64::try_from(receipt) else {
            tracing::error!(
                run = run_id,
                receipt,
                "running attempt not carried: its receipt is negative"
            );
            continue;
        };
        out.push(HandedOut {
            node: row.get(0)?,
            run_id,
            attempt: row.get(2)?,
            receipt,
        });
    }
    Ok(out)
}

/// The queue entry of one pending run.
pub fn queued(conn: &Connection, run_id: i64) -> Result<Option<Queued>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "{QUEUED_SELECT} WHERE r.id = ?1 AND r.state = 'pending'"
    ))?;
    let mut rows = stmt.query([run_id])?;
    match rows.next()? {
        Some(row) => Ok(Some(queued_from_row(row)?)),
        None => Ok(None),
    }
}

// ---------------------------------------------------------------------------
// Transitions

/// Retry delay before attempt `next_attempt` (2, 3, …): backoff × 2^(n-2), capped.
pub fn backoff_ms(spec: &JobSpec, next_attempt: u32) -> i64 {
    let base = spec.retries.backoff.as_millis_i64();
    let cap = spec.retries.max_backoff.as_millis_i64();
    let shift = next_attempt.saturating_sub(2).min(30);
    base.saturating_mul(1i64 << shift).min(cap)
}

/// The job's spec, parsed once per stored text ([`spec_cache`]).
fn job_spec(conn: &Connection, job_pk: i64) -> Result<Arc<JobSpec>, StoreError> {
    spec_cache::get(conn, job_pk)
}

/// The fields of a run row that transitions decide on.
struct RunRow {
    state: RunState,
    attempt: u32,
    assigned: Option<String>,
    job_pk: i64,
    cancel_requested: bool,
}

fn run_row(conn: &Connection, run_id: i64) -> Result<Option<RunRow>, StoreError> {
    let row: Option<(String, u32, Option<String>, i64, bool)> = conn
        .prepare_cached(
            "SELECT state, attempt, assigned_node, job, cancel_requested FROM runs WHERE id = ?1",
        )?
        .query_row([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    row.map(|(state, attempt, assigned, job_pk, cancel_requested)| {
        Ok(RunRow {
            state: run_value(run_id, &state)?,
            attempt,
            assigned,
            job_pk,
            cancel_requested,
        })
    })
    .transpose()
}

/// What [`finish`] needs of a run as it was before it ended: its event's
/// details and its job's overdue mark. Read with the row a transition
/// decides on, so that ending a run reads it once.
struct Before {
    details: events::RunDetails,
    overdue_since: Option<i64>,
}

/// The columns of [`Before`], in [`before_at`]'s order (`r`: the run, `j`:
/// its job).
macro_rules! before_columns {
    () => {
        concat!(events::run_details_columns!(), ", j.overdue_since")
    };
}

/// [`Before`] from [`before_columns`] read at column `at` onwards.
fn before_at(r: &rusqlite::Row<'_>, at: usize, run_id: i64) -> Result<Before, StoreError> {
    Ok(Before {
        details: events::details_at(r, at, run_id)?,
        overdue_since: r.get(at + events::RUN_DETAILS_WIDTH)?,
    })
}

/// A run as [`finish`] needs it (None: the run is gone).
fn before(conn: &Connection, run_id: i64) -> Result<Option<Before>, StoreError> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        before_columns!(),
        " FROM runs r JOIN jobs j ON j.pk = r.job WHERE r.id = ?1"
    ))?;
    let mut rows = stmt.query([run_id])?;
    rows.next()?.map(|r| before_at(r, 0, run_id)).transpose()
}

/// A run's row, its job's spec and what ending it needs, in one read
/// (completion needs all three).
fn run_row_and_spec(
    p: &mut Prepared<'_>,
    run_id: i64,
) -> Result<Option<(RunRow, Arc<JobSpec>, Before)>, StoreError> {
    let stmt = p.stmt(concat!(
        "SELECT r.state, r.attempt, r.assigned_node, r.job, r.cancel_requested, j.spec, ",
        before_columns!(),
        " FROM runs r JOIN jobs j ON j.pk = r.job WHERE r.id = ?1"
    ))?;
    let mut rows = stmt.query([run_id])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let job_pk: i64 = r.get(3)?;
    let row = RunRow {
        state: run_value(run_id, text(r, 0)?)?,
        attempt: r.get(1)?,
        assigned: r.get(2)?,
        job_pk,
        cancel_requested: r.get(4)?,
    };
    let spec = spec_cache::of_text(job_pk, r.get_ref(5)?)?;
    Ok(Some((row, spec, before_at(r, 6, run_id)?)))
}

/// Notes a running run as its job's latest state (when it is the latest run).
fn note_running(p: &mut Prepared<'_>, job_pk: i64, run_id: i64) -> Result<(), StoreError> {
    p.stmt("UPDATE job_stats SET last_state = 'running' WHERE pk = ?1 AND last_run_id = ?2")?
        .execute(params![job_pk, run_id])?;
    Ok(())
}

/// How a run reaches its terminal state.
#[derive(Debug, Clone, Copy)]
enum Ending<'a> {
    /// Its attempt's result, as the daemon reported it (stored with the state).
    Result(&'a CompleteRequest),
    /// The server's reason (skipped, lost, cancelled).
    Reason(&'a str),
}

/// Moves a run to a terminal state and its job's counters with it, writes
/// its event, and starts the jobs chained to its slot (returned for the
/// dispatch queue). One write of the run row, one of the job row. `before`
/// is the run as read before this (its event's details follow from it and
/// `ending`, so the row is not read back).
fn finish(
    p: &mut Prepared<'_>,
    run_id: i64,
    job_pk: i64,
    state: RunState,
    at: i64,
    ending: Ending<'_>,
    before: Before,
) -> Result<Vec<Queued>, StoreError> {
    debug_assert!(state.is_terminal());
    // No `RETURNING`: it gives the statement a journal to truncate, which
    // costs more than reading the row back.
    let changed = match ending {
        Ending::Result(req) => p
            .stmt(
                "UPDATE runs SET state = ?2, finished_at = ?3, error = ?4, exit_code = ?5,
                     output = ?6, truncated = ?7, started_at = ?8, lease_expires_at = NULL
                 WHERE id = ?1",
            )?
            .execute(params![
                run_id,
                state.as_str(),
                at,
                req.error,
                req.exit_code,
                req.output,
                req.truncated,
                req.started_at
            ])?,
        Ending::Reason(error) => p
            .stmt(
                "UPDATE runs SET state = ?2, finished_at = ?3, error = ?4, lease_expires_at = NULL
                 WHERE id = ?1",
            )?
            .execute(params![run_id, state.as_str(), at, error])?,
    };
    if changed == 0 {
        return Ok(Vec::new()); // deleted with its job
    }
    // The row as the update left it: the ending's result or reason replaces
    // the last attempt's (a terminal run waits for no backoff).
    let mut run = before.details;
    match ending {
        Ending::Result(req) => {
            run.exit_code = req.exit_code;
            run.error.clone_from(&req.error);
        }
        Ending::Reason(error) => run.error = Some(error.to_owned()),
    }
    let (succeeded, failed) = transition::counts(state);
    // A success of an overdue job recovers it (one `job.recovered`).
    let overdue_since = before.overdue_since.filter(|_| succeeded > 0);
    let changed = p
        .stmt(
            "UPDATE job_stats SET runs_succeeded = runs_succeeded + ?1,
                 runs_failed = runs_failed + ?2,
                 last_state = CASE WHEN last_run_id = ?3 THEN ?4 ELSE last_state END,
                 last_success_at = CASE WHEN ?1 > 0 THEN ?6 ELSE last_success_at END
             WHERE pk = ?5",
        )?
        .execute(params![
            succeeded,
            failed,
            run_id,
            state.as_str(),
            job_pk,
            at
        ])?;
    stats_written(changed, job_pk)?;
    if overdue_since.is_some() {
        p.conn()
            .prepare_cached("UPDATE jobs SET overdue_since = NULL WHERE pk = ?1")?
            .execute([job_pk])?;
    }
    events::append_run_details(p, at, events::for_state(state), run_id, &run)?;
    if let Some(since) = overdue_since {
        events::append_job(
            p.conn(),
            at,
            events::EventType::JobRecovered,
            job_pk,
            &serde_json::json!({ "overdue_since": sundial_proto::time::format_ms(since), "run_id": run_id }),
        )?;
    }
    chains::fire(p, run_id, &run.job_id, at)
}

/// [`finish`] for the server's own reason, reading the run first: the paths
/// off the hot one (skip, expiry, hand-back, cancel).
fn finish_for_reason(
    p: &mut Prepared<'_>,
    run_id: i64,
    job_pk: i64,
    state: RunState,
    at: i64,
    reason: &str,
) -> Result<Vec<Queued>, StoreError> {
    match before(p.conn(), run_id)? {
        Some(run) => finish(p, run_id, job_pk, state, at, Ending::Reason(reason), run),
        None => Ok(Vec::new()), // deleted with its job
    }
}

/// Puts a run back in the queue as its next attempt.
fn retry(
    p: &mut Prepared<'_>,
    run_id: i64,
    last_node: &str,
    now: i64,
    not_before: i64,
) -> Result<Option<Queued>, StoreError> {
    p.stmt(
        "UPDATE runs SET state = 'pending', attempt = attempt + 1, assigned_node = NULL,
             last_node = ?2, not_before = ?3, lease_expires_at = NULL
         WHERE id = ?1",
    )?
    .execute(params![run_id, last_node, not_before])?;
    events::append_run(p, now, events::EventType::RunRetrying, run_id)?;
    queued(p.conn(), run_id)
}

/// Result of trying to assign queued runs to a node.
#[derive(Debug, Default)]
pub struct Assigned {
    pub runs: Vec<Assignment>,
    /// Runs to queue again or anew: a retry under `forbid` waiting for the
    /// active attempt, and runs chained to a skipped slot.
    pub later: Vec<Queued>,
    /// Runs recorded as `skipped` by `forbid`.
    pub skipped: usize,
    /// Pending runs `replace` ended as `cancelled`: a newer slot of their
    /// job was handed out with them.
    pub replaced: usize,
}

/// Assigns `candidates` to `node`, applying each job's concurrency policy;
/// `receipt` is the poll's (kept with each attempt it hands out).
pub fn assign(
    conn: &Connection,
    node: &str,
    candidates: &[Queued],
    now: i64,
    lease_ms: i64,
    receipt: u64,
) -> Result<Assigned, StoreError> {
    let mut out = Assigned::default();
    let mut p = Prepared::new(conn);
    for c in candidates {
        // The run, its job and whether another of its runs is active: one
        // read. A broadcast slot's run is judged against the runs of its
        // own node (its siblings on other nodes are the same slot).
        let stmt = p.stmt(
            "SELECT r.state, r.attempt, r.scheduled_for, j.id, r.upstream_run, r.trigger,
                 r.exit_code, r.error, j.spec,
                 EXISTS (SELECT 1 FROM runs WHERE job = r.job AND state = 'running'
                     AND (r.node = '' OR node = r.node))
             FROM runs r JOIN jobs j ON j.pk = r.job WHERE r.id = ?1",
        )?;
        let mut rows = stmt.query([c.run_id])?;
        let Some(row) = rows.next()? else {
            continue; // deleted with its job
        };
        let state: RunState = run_value(c.run_id, text(row, 0)?)?;
        if state != RunState::Pending {
            continue; // cancelled meanwhile: the table would only say Ignore/AlreadyFinished
        }
        let attempt: u32 = row.get(1)?;
        let scheduled_for: i64 = row.get(2)?;
        let job_id: String = row.get(3)?;
        let upstream_run_id: Option<i64> = row.get(4)?;
        let trigger: Trigger = run_value(c.run_id, text(row, 5)?)?;
        let exit_code: Option<i32> = row.get(6)?;
        let error: Option<String> = row.get(7)?;
        let spec = spec_cache::of_text(c.job_pk, row.get_ref(8)?)?;
        let other_running: bool = row.get(9)?;
        drop(rows);
        let event = Event::Assign {
            concurrency: spec.concurrency,
            other_running,
            first_attempt: attempt == 1,
            superseded: spec.concurrency == Concurrency::Replace
                && newer_run_due(&mut p, c, scheduled_for, now)?,
        };
        let step = transition::next(state, event);
        let early = c.ready_at > now;
        if early && step != Step::Start {
            // Offered ahead of its time while a previous run is active: the
            // policy decides at the run's own time, not now.
            out.later.push(Queued {
                on_time_only: true,
                ..c.clone()
            });
            continue;
        }
        // Handed out early, it starts at its time: that is when it starts.
        let starts_at = now.max(c.ready_at);
        match step {
            Step::Start => {}
            Step::StartReplacing => {
                p.conn()
                    .prepare_cached(
                        "UPDATE runs SET cancel_requested = 1
                         WHERE job = ?1 AND state = 'running' AND (?2 = '' OR node = ?2)",
                    )?
                    .execute(params![c.job_pk, c.slot_node])?;
            }
            Step::Skip => {
                let chained = finish_for_reason(
                    &mut p,
                    c.run_id,
                    c.job_pk,
                    RunState::Skipped,
                    now,
                    "skipped: concurrency is forbid and a previous run is still active",
                )?;
                out.later.extend(chained);
                out.skipped += 1;
                continue;
            }
            Step::Defer => {
                out.later.push(Queued {
                    ready_at: now + 1_000,
                    ..c.clone()
                });
                continue;
            }
            Step::Finish(ended) => {
                let chained = finish_for_reason(
                    &mut p,
                    c.run_id,
                    c.job_pk,
                    ended,
                    now,
                    "replaced: concurrency is replace and a newer slot of the job was handed out with it",
                )?;
                out.later.extend(chained);
                out.replaced += 1;
                continue;
            }
            _ => continue,
        }
        // A new attempt starts with no output: live output fills it, the
        // attempt's result replaces it.
        p.stmt(
            "UPDATE runs SET state = 'running', assigned_node = ?2, lease_expires_at = ?3,
                 started_at = ?4, cancel_requested = 0, output = NULL, truncated = 0,
                 receipt = ?5
             WHERE id = ?1 AND state = 'pending'",
        )?
        .execute(params![
            c.run_id,
            node,
            starts_at + lease_ms,
            starts_at,
            receipt as i64
        ])?;
        note_running(&mut p, c.job_pk, c.run_id)?;
        let details = events::RunDetails {
            job_id,
            node: Some(node.to_owned()),
            attempt,
            trigger,
            scheduled_for,
            exit_code,
            error,
            not_before: None,
        };
        events::append_run_details(
            &mut p,
            starts_at,
            events::EventType::RunStarted,
            c.run_id,
            &details,
        )?;
        out.runs.push(Assignment {
            run_id: c.run_id,
            job_id: details.job_id,
            attempt,
            scheduled_for,
            executor: spec.executor.clone(),
            timeout_ms: spec.timeout.map(|t| t.as_millis()),
            lease_ms: lease_ms as u64,
            upstream_run_id,
            start_in_ms: (starts_at - now) as u64,
        });
    }
    Ok(out)
}

/// Whether a newer slot's run of `c`'s job (of the same node, for a
/// broadcast slot) is running or pending and due at `now`: under `replace`
/// it would replace `c` at once, so `c` never starts. This holds however
/// a backlog is split among polls, and an older slot handed out after a
/// newer one does not stop it.
fn newer_run_due(
    p: &mut Prepared<'_>,
    c: &Queued,
    scheduled_for: i64,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(p.stmt(
        "SELECT EXISTS (SELECT 1 FROM runs
                 WHERE job = ?1 AND id > ?2 AND scheduled_for > ?3 AND (?4 = '' OR node = ?4)
                   AND (state = 'running'
                        OR (state = 'pending' AND max(scheduled_for, not_before) <= ?5)))",
    )?
    .query_row(
        params![c.job_pk, c.run_id, scheduled_for, c.slot_node, now],
        |r| r.get(0),
    )?)
}

/// Why an agent call about a run was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunCall {
    /// The run does not exist.
    Unknown,
    /// The attempt is not (or no longer) this node's running attempt.
    NotCurrent,
}

/// Most output kept for one run, whatever daemons send (live output; a
/// result is held to the same by [`CompleteRequest::bound`]).
pub const MAX_OUTPUT_BYTES: u64 = sundial_proto::agent::MAX_OUTPUT_BYTES as u64;

/// Appends what a running attempt printed since byte `offset` of its
/// stored output (live output). Idempotent: a chunk the server already has
/// is not stored twice. Returns how many bytes are stored now; the daemon
/// continues from there.
pub fn append_output(
    conn: &Connection,
    node: &str,
    run_id: i64,
    attempt: u32,
    offset: u64,
    chunk: &str,
) -> Result<Result<u64, RunCall>, StoreError> {
    let Some(row) = run_row(conn, run_id)? else {
        return Ok(Err(RunCall::Unknown));
    };
    let current = row.attempt == attempt && row.assigned.as_deref() == Some(node);
    if !current || row.state != RunState::Running {
        return Ok(Err(RunCall::NotCurrent));
    }
    let stored: u64 = conn
        .prepare_cached(
            "SELECT length(CAST(coalesce(output, '') AS BLOB)) FROM runs WHERE id = ?1",
        )?
        .query_row([run_id], |r| r.get::<_, i64>(0))? as u64;
    let end = offset + chunk.len() as u64;
    // A gap (offset past what is stored), a repeat, or over the cap: nothing to add.
    if offset > stored || end <= stored || end > MAX_OUTPUT_BYTES {
        return Ok(Ok(stored));
    }
    let Some(new) = chunk.get((stored - offset) as usize..) else {
        return Ok(Ok(stored)); // the overlap ends inside a character: resend from `stored`
    };
    conn.prepare_cached("UPDATE runs SET output = coalesce(output, '') || ?2 WHERE id = ?1")?
        .execute(params![run_id, new])?;
    Ok(Ok(end))
}

/// Extends a running attempt's lease. Returns (stop, new expiry): `stop` is
/// true when the operator asked for a cancel or the attempt is no longer
/// this node's to run (lease expired, reassigned, finished).
pub fn heartbeat(
    conn: &Connection,
    node: &str,
    run_id: i64,
    attempt: u32,
    now: i64,
    lease_ms: i64,
) -> Result<Result<(bool, i64), RunCall>, StoreError> {
    let Some(row) = run_row(conn, run_id)? else {
        return Ok(Err(RunCall::Unknown));
    };
    let current = row.attempt == attempt && row.assigned.as_deref() == Some(node);
    if !current || transition::next(row.state, Event::Heartbeat) != Step::Extend {
        return Ok(Ok((true, now)));
    }
    let expires = now + lease_ms;
    conn.prepare_cached("UPDATE runs SET lease_expires_at = ?2 WHERE id = ?1")?
        .execute(params![run_id, expires])?;
    Ok(Ok((row.cancel_requested, expires)))
}

/// How a completion was taken.
#[derive(Debug, Clone)]
pub enum Completion {
    /// Recorded; `requeue` holds what to queue: the retry, or the runs
    /// chained to the slot that ended.
    Recorded {
        requeue: Vec<Queued>,
        state: RunState,
    },
    /// The same result arrived before (a retried delivery).
    Duplicate,
    /// A newer attempt exists, or the attempt was reassigned; ignored.
    Stale,
}

/// Records an attempt's result. Idempotent: a repeated delivery is `Duplicate`.
pub fn complete(
    p: &mut Prepared<'_>,
    node: &str,
    run_id: i64,
    req: &CompleteRequest,
    now: i64,
) -> Result<Result<Completion, RunCall>, StoreError> {
    let Some((row, spec, before)) = run_row_and_spec(p, run_id)? else {
        return Ok(Err(RunCall::Unknown));
    };
    let current = req.attempt == row.attempt && row.assigned.as_deref() == Some(node);
    if !current {
        return Ok(Ok(Completion::Stale));
    }
    let event = Event::Complete {
        outcome: req.outcome,
        retries_left: row.attempt <= spec.retries.max,
        cancel_requested: row.cancel_requested,
    };
    let step = transition::next(row.state, event);
    match step {
        Step::AlreadyFinished(_) => return Ok(Ok(Completion::Duplicate)),
        Step::Retry(_) | Step::Finish(_) => {}
        _ => return Ok(Ok(Completion::Stale)),
    }
    match step {
        Step::Retry(at) => {
            p.stmt(
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
            let delay = match at {
                RetryAt::Now => 0,
                RetryAt::Backoff => backoff_ms(&spec, row.attempt + 1),
            };
            let requeue = retry(p, run_id, node, now, now + delay)?;
            Ok(Ok(Completion::Recorded {
                requeue: requeue.into_iter().collect(),
                state: RunState::Pending,
            }))
        }
        Step::Finish(state) => {
            let chained = finish(
                p,
                run_id,
                row.job_pk,
                state,
                req.finished_at,
                Ending::Result(req),
                before,
            )?;
            Ok(Ok(Completion::Recorded {
                requeue: chained,
                state,
            }))
        }
        _ => unreachable!("filtered above"),
    }
}

/// Expires leases older than `now`: the attempt is `lost` and retried per the
/// job's policy (or the run ends `lost`/`cancelled`). Returns the retries to queue
/// and the node of each expired lease.
pub fn expire_leases(
    conn: &Connection,
    now: i64,
) -> Result<(Vec<Queued>, Vec<String>), StoreError> {
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
    let mut p = Prepared::new(conn);
    for (run_id, attempt, node, job_pk, cancel_requested) in &expired {
        let node = node.clone().unwrap_or_default();
        let spec = job_spec(conn, *job_pk)?;
        let msg = format!("attempt {attempt} lost: lease expired on node {node:?}");
        let event = Event::LeaseExpired {
            retries_left: *attempt <= spec.retries.max,
            cancel_requested: *cancel_requested,
        };
        let step = transition::next(RunState::Running, event);
        let at = now + backoff_ms(&spec, attempt + 1);
        let Some(runs) = end_attempt(&mut p, *run_id, *job_pk, &node, step, &msg, now, at)? else {
            unreachable!("lease expiry of a running run: {step:?}")
        };
        requeue.extend(runs);
    }
    let nodes = expired.into_iter().filter_map(|e| e.2).collect();
    Ok((requeue, nodes))
}

/// What [`end_runs_of_gone_nodes`] did: the runs it ended (to drop from
/// the dispatch queue) and the runs chained to their slots (to queue).
#[derive(Debug, Default)]
pub struct GoneNodeRuns {
    pub ended: Vec<i64>,
    pub chained: Vec<Queued>,
}

/// A pending broadcast run and what the database knows of its node
/// (`revoked` is None when there is no such node), and the job's executor
/// when the node does not allow it.
struct GoneNodeRun {
    run_id: i64,
    job_pk: i64,
    node: String,
    revoked: Option<bool>,
    last_seen: Option<i64>,
    refused: Option<String>,
}

impl GoneNodeRun {
    /// The run's error: why it never started.
    fn reason(&self) -> String {
        let node = &self.node;
        if let (Some(false), Some(kind)) = (self.revoked, &self.refused) {
            return format!(
                "node {node:?} does not allow the {kind} executor (its --allow-executors): it can never start this run"
            );
        }
        match (self.revoked, self.last_seen) {
            (None, _) => format!("node {node:?} is unknown: no node may start this run"),
            (Some(true), _) => format!("node {node:?} was revoked before it started this run"),
            (Some(false), Some(seen)) => format!(
                "node {node:?} is down (no contact since {}): it never started this run",
                sundial_proto::time::format_ms(seen)
            ),
            (Some(false), None) => {
                format!("node {node:?} is down (never heard from): it never started this run")
            }
        }
    }
}

/// SQL: node `n` lists its executors (it registered) and the job `j`'s is
/// not among them.
const REFUSES: &str = "(json_array_length(n.executors) > 0
    AND NOT EXISTS (SELECT 1 FROM json_each(n.executors) WHERE value = j.executor_kind))";

/// Ends, as `lost`, the pending runs of broadcast slots whose node is down
/// (marked by the alerts loop after two minutes without contact), revoked
/// or unknown, or no longer allows the job's executor (the job's executor
/// was edited, or the daemon restarted with a narrower
/// `--allow-executors`): no other node may take them, so they would wait
/// for ever. `live(node)` is the dispatcher's in-memory view: a node it
/// heard from since (its last contact not yet written) keeps its runs,
/// unless it refuses the executor. A running attempt is left to its
/// lease. At most 1,000 runs per call.
pub fn end_runs_of_gone_nodes(
    conn: &Connection,
    now: i64,
    live: impl Fn(&str) -> bool,
) -> Result<GoneNodeRuns, StoreError> {
    // Through the partial index of migration 19 (named: without it the
    // planner walks every pending run by `runs_by_state`).
    let gone: Vec<GoneNodeRun> = conn
        .prepare_cached(&format!(
            "SELECT r.id, r.job, r.node, n.revoked, n.last_seen, j.executor_kind,
                 {REFUSES}
             FROM runs r INDEXED BY runs_pending_by_node
                 JOIN jobs j ON j.pk = r.job
                 LEFT JOIN nodes n ON n.id = r.node
             WHERE r.state = 'pending' AND r.node != ''
               AND (n.id IS NULL OR n.revoked = 1 OR n.down_since IS NOT NULL OR {REFUSES})
             LIMIT 1000"
        ))?
        .query_map([], |r| {
            let refused: Option<bool> = r.get(6)?;
            Ok(GoneNodeRun {
                run_id: r.get(0)?,
                job_pk: r.get(1)?,
                node: r.get(2)?,
                revoked: r.get(3)?,
                last_seen: r.get(4)?,
                refused: refused.unwrap_or(false).then(|| r.get(5)).transpose()?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut out = GoneNodeRuns::default();
    let mut p = Prepared::new(conn);
    for run in gone {
        if run.revoked == Some(false) && run.refused.is_none() && live(&run.node) {
            continue;
        }
        match transition::next(RunState::Pending, Event::NodeGone) {
            Step::Finish(state) => {
                let reason = run.reason();
                out.chained.extend(finish_for_reason(
                    &mut p, run.run_id, run.job_pk, state, now, &reason,
                )?);
                out.ended.push(run.run_id);
            }
            other => unreachable!("a pending run whose node is gone: {other:?}"),
        }
    }
    Ok(out)
}

/// Ends a running attempt for the server's own `reason` (its lease expired,
/// its assignment was never read) as `step` says: retried from `retry_at`
/// with the reason kept as its error, or finished with it. Returns the runs
/// to queue, or None for a step that ends nothing.
#[allow(clippy::too_many_arguments)]
fn end_attempt(
    p: &mut Prepared<'_>,
    run_id: i64,
    job_pk: i64,
    node: &str,
    step: Step,
    reason: &str,
    now: i64,
    retry_at: i64,
) -> Result<Option<Vec<Queued>>, StoreError> {
    match step {
        Step::Retry(_) => {
            p.stmt("UPDATE runs SET error = ?2 WHERE id = ?1")?
                .execute(params![run_id, reason])?;
            Ok(Some(
                retry(p, run_id, node, now, retry_at)?.into_iter().collect(),
            ))
        }
        Step::Finish(state) => Ok(Some(finish_for_reason(
            p, run_id, job_pk, state, now, reason,
        )?)),
        _ => Ok(None),
    }
}

/// Hands back attempts whose assignment `node` never read (its poll
/// response was lost, see `crate::receipts`): each one still running there
/// as that attempt goes back to `pending` as its next attempt at once, as a
/// daemon's own hand-back does, whatever its retry budget, since it never
/// started; one whose cancel was requested ends `cancelled`. Attempts that
/// moved on meanwhile (expired, cancelled, reported) are left alone.
/// Returns the runs to queue and the number handed back.
pub fn hand_back_unread(
    conn: &Connection,
    node: &str,
    attempts: &[(i64, u32)],
    now: i64,
) -> Result<(Vec<Queued>, usize), StoreError> {
    let mut requeue = Vec::new();
    let mut handed = 0;
    let mut p = Prepared::new(conn);
    for &(run_id, attempt) in attempts {
        let Some(row) = run_row(conn, run_id)? else {
            continue;
        };
        if row.attempt != attempt || row.assigned.as_deref() != Some(node) {
            continue;
        }
        let event = Event::Complete {
            outcome: Outcome::HandedBack,
            retries_left: true,
            cancel_requested: row.cancel_requested,
        };
        let msg =
            format!("attempt {attempt} handed back: node {node:?} never received its assignment");
        let step = transition::next(row.state, event);
        // Retried at once: it never started.
        if let Some(runs) = end_attempt(&mut p, run_id, row.job_pk, node, step, &msg, now, now)? {
            requeue.extend(runs);
            handed += 1;
        }
    }
    Ok((requeue, handed))
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
/// the node is told in its next heartbeat reply; a finished one is a conflict.
/// Returns the run and the runs chained to its slot (to queue).
pub fn cancel(
    conn: &Connection,
    run_id: i64,
    now: i64,
) -> Result<(sundial_proto::Run, Vec<Queued>), StoreError> {
    let not_found = || StoreError::NotFound {
        kind: "run",
        id: run_id.to_string(),
    };
    let row = run_row(conn, run_id)?.ok_or_else(not_found)?;
    let chained = match transition::next(row.state, Event::Cancel) {
        Step::RequestCancel => {
            conn.prepare_cached("UPDATE runs SET cancel_requested = 1 WHERE id = ?1")?
                .execute([run_id])?;
            Vec::new()
        }
        Step::Finish(state) => finish_for_reason(
            &mut Prepared::new(conn),
            run_id,
            row.job_pk,
            state,
            now,
            "cancelled by operator",
        )?,
        Step::AlreadyFinished(state) => {
            return Err(StoreError::Conflict(format!(
                "run {run_id} already finished as {state}"
            )))
        }
        other => unreachable!("cancel: {other:?}"),
    };
    Ok((runs::get(conn, run_id)?.ok_or_else(not_found)?, chained))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs;
    use crate::store::test_support::{one_slot, result_of as done, slot_job, slot_on, temp_store};
    use sundial_proto::agent::Outcome;

    fn spec(extra: &str) -> JobSpec {
        serde_json::from_str(&format!(
            r#"{{"schedule":"@hourly","executor":{{"type":"exec","argv":["true"]}}{extra}}}"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn a_job_without_its_counters_row_fails_loudly() {
        let (_dir, store) = temp_store();
        let err = store
            .write(|c| {
                let job = slot_job(c, "j", &spec(""));
                c.execute("DELETE FROM job_stats WHERE pk = ?1", [job.pk])?;
                let mut fired = Fired::default();
                let mut p = Prepared::new(c);
                create_slots(
                    &mut p,
                    &job,
                    Trigger::Schedule,
                    1_000,
                    &[String::new()],
                    0,
                    &mut fired,
                )?;
                record_slots(&mut p, job.pk, NextFire::Set(Some(2_000)), &fired)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("job_stats")),
            "{err:?}"
        );
    }

    /// One result in a batch of its own.
    fn complete_one(
        c: &Connection,
        node: &str,
        run_id: i64,
        req: &CompleteRequest,
        now: i64,
    ) -> Result<Result<Completion, RunCall>, StoreError> {
        complete(&mut Prepared::new(c), node, run_id, req, now)
    }

    fn state(c: &Connection, run: i64) -> (RunState, u32, bool) {
        let r = run_row(c, run).unwrap().unwrap();
        (r.state, r.attempt, r.cancel_requested)
    }

    #[tokio::test]
    async fn running_attempts_load_with_the_receipt_they_were_handed_out_with() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                let job = slot_job(c, "h", &spec(""));
                let first = one_slot(c, &job, 1_000);
                let second = one_slot(c, &job, 2_000);
                let pending = one_slot(c, &job, 3_000);
                assign(c, "n1", std::slice::from_ref(&first), 1_000, 30_000, 41)?;
                assign(c, "n2", std::slice::from_ref(&second), 2_000, 30_000, 42)?;
                let mut got = load_handed_out(c)?;
                got.sort_by_key(|h| h.run_id);
                let want = |node: &str, run_id, receipt| HandedOut {
                    node: node.into(),
                    run_id,
                    attempt: 1,
                    receipt,
                };
                assert_eq!(
                    got,
                    [want("n1", first.run_id, 41), want("n2", second.run_id, 42)],
                    "running attempts only, not {}",
                    pending.run_id
                );
                // Handed back as never read: it runs again as attempt 2,
                // and is no longer running with its old receipt.
                let (requeue, handed) = hand_back_unread(c, "n1", &[(first.run_id, 1)], 1_500)?;
                assert_eq!((requeue.len(), handed), (1, 1));
                assert_eq!(state(c, first.run_id), (RunState::Pending, 2, false));
                assert_eq!(load_handed_out(c)?, [want("n2", second.run_id, 42)]);
                // A row whose receipt is not one is left out, not an error.
                c.execute(
                    "UPDATE runs SET receipt = -1 WHERE id = ?1",
                    [second.run_id],
                )?;
                assert_eq!(load_handed_out(c)?, []);
                c.execute(
                    "UPDATE runs SET receipt = 42 WHERE id = ?1",
                    [second.run_id],
                )?;
                // A hand-back naming another node or attempt changes nothing.
                let (_, handed) = hand_back_unread(c, "n1", &[(second.run_id, 1)], 1_600)?;
                let (_, stale) = hand_back_unread(c, "n2", &[(second.run_id, 2)], 1_600)?;
                assert_eq!((handed, stale), (0, 0));
                assert_eq!(state(c, second.run_id), (RunState::Running, 1, false));
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn replace_flags_the_running_attempt_and_starts_the_new_one() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                let job = slot_job(c, "r", &spec(r#","concurrency":"replace""#));
                let first = one_slot(c, &job, 1_000);
                let a = assign(c, "n1", std::slice::from_ref(&first), 1_000, 30_000, 0)?;
                assert_eq!(a.runs.len(), 1);
                let second = one_slot(c, &job, 2_000);
                let b = assign(c, "n2", std::slice::from_ref(&second), 2_000, 30_000, 0)?;
                assert_eq!(b.runs.len(), 1, "replace starts the new run");
                assert_eq!(state(c, first.run_id), (RunState::Running, 1, true));
                assert_eq!(state(c, second.run_id), (RunState::Running, 1, false));
                // The replaced attempt hears "stop" in its heartbeat…
                assert_eq!(
                    heartbeat(c, "n1", first.run_id, 1, 2_100, 30_000)?,
                    Ok((true, 32_100))
                );
                // …and a hand-back of it ends it as cancelled, not requeued.
                let r = complete_one(c, "n1", first.run_id, &done(Outcome::HandedBack, 1), 2_200)?;
                assert!(
                    matches!(&r, Ok(Completion::Recorded { requeue, state: RunState::Cancelled }) if requeue.is_empty()),
                    "{r:?}"
                );
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn a_replace_backlog_handed_out_together_starts_only_its_newest_run() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                let job = slot_job(c, "r", &spec(r#","concurrency":"replace""#));
                let other = slot_job(c, "a", &spec(r#","concurrency":"allow""#));
                // Three missed slots of each job, due, and one replace slot
                // 50 ms ahead (handed out early): the newest due one wins.
                let mut batch: Vec<Queued> =
                    (0..3).map(|i| one_slot(c, &job, 1_000 + i * 10)).collect();
                batch.extend((0..3).map(|i| one_slot(c, &other, 1_000 + i * 10)));
                let ahead = one_slot(c, &job, 1_100);
                batch.push(ahead.clone());
                batch.sort_by_key(|q| (q.ready_at, q.run_id));
                let a = assign(c, "n1", &batch, 1_050, 30_000, 0)?;
                let started: Vec<i64> = a.runs.iter().map(|r| r.run_id).collect();
                assert_eq!(a.replaced, 2);
                assert_eq!(started.len(), 4, "{started:?}");
                let replace_runs: Vec<&Queued> =
                    batch.iter().filter(|q| q.job_pk == job.pk).collect();
                for q in &replace_runs[..2] {
                    assert_eq!(state(c, q.run_id), (RunState::Cancelled, 1, false));
                    let error: String =
                        c.query_row("SELECT error FROM runs WHERE id = ?1", [q.run_id], |r| {
                            r.get(0)
                        })?;
                    assert!(error.starts_with("replaced: "), "{error}");
                }
                let newest = replace_runs[2].run_id;
                assert!(started.contains(&newest));
                // The early one is not due: it replaces the newest at its
                // own time, as a run handed out early never judges early.
                assert!(!started.contains(&ahead.run_id));
                assert!(a
                    .later
                    .iter()
                    .any(|q| q.run_id == ahead.run_id && q.on_time_only));
                // `allow` runs all of its backlog.
                for q in batch.iter().filter(|q| q.job_pk == other.pk) {
                    assert!(started.contains(&q.run_id));
                }
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn a_replace_run_older_than_one_started_ends_and_stops_nothing() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                // A backlog split among two polls, the newer half written first.
                let job = slot_job(c, "r", &spec(r#","concurrency":"replace""#));
                let older = one_slot(c, &job, 1_000);
                let newer = one_slot(c, &job, 2_000);
                let a = assign(c, "n1", std::slice::from_ref(&newer), 2_000, 30_000, 0)?;
                assert_eq!(a.runs.len(), 1);
                let b = assign(c, "n2", std::slice::from_ref(&older), 2_000, 30_000, 0)?;
                assert_eq!((b.runs.len(), b.replaced), (0, 1));
                assert_eq!(state(c, older.run_id), (RunState::Cancelled, 1, false));
                assert_eq!(state(c, newer.run_id), (RunState::Running, 1, false));
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn a_broadcast_slot_judges_concurrency_per_node() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                for policy in ["forbid", "replace"] {
                    let extra = format!(r#","concurrency":"{policy}","target":{{"all":true}}"#);
                    let job = slot_job(c, policy, &spec(&extra));
                    let slot = slot_on(c, &job, 1_000, &["n1", "n2"]);
                    // Each node's run of the slot starts; neither skips or
                    // stops its sibling.
                    for (node, q) in ["n1", "n2"].into_iter().zip(&slot) {
                        let a = assign(c, node, std::slice::from_ref(q), 1_000, 30_000, 0)?;
                        assert_eq!((a.runs.len(), a.skipped), (1, 0), "{policy} on {node}");
                    }
                    for q in &slot {
                        assert_eq!(
                            state(c, q.run_id),
                            (RunState::Running, 1, false),
                            "{policy}"
                        );
                    }
                    // The next slot is judged against its own node's run.
                    let next = slot_on(c, &job, 2_000, &["n1", "n2"]);
                    let a = assign(c, "n1", &next[..1], 2_000, 30_000, 0)?;
                    match policy {
                        "forbid" => assert_eq!((a.runs.len(), a.skipped), (0, 1)),
                        _ => {
                            assert_eq!(a.runs.len(), 1);
                            assert_eq!(state(c, slot[0].run_id), (RunState::Running, 1, true));
                            assert_eq!(state(c, slot[1].run_id), (RunState::Running, 1, false));
                        }
                    }
                }
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn a_run_handed_out_early_starts_at_its_time_unless_its_policy_must_wait() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                // allow: handed out 80 ms early, it starts at its time.
                let job = slot_job(c, "early", &spec(r#","concurrency":"allow""#));
                let q = one_slot(c, &job, 1_000);
                let a = assign(c, "n1", std::slice::from_ref(&q), 920, 30_000, 0)?;
                assert_eq!(a.runs.len(), 1);
                assert_eq!(a.runs[0].start_in_ms, 80);
                let started: i64 = c.query_row(
                    "SELECT started_at FROM runs WHERE id = ?1",
                    [q.run_id],
                    |r| r.get(0),
                )?;
                assert_eq!(started, 1_000, "started at its time, not at the hand-out");
                // On time: no delay.
                let q2 = one_slot(c, &job, 2_000);
                let b = assign(c, "n1", std::slice::from_ref(&q2), 2_000, 30_000, 0)?;
                assert_eq!(b.runs[0].start_in_ms, 0);

                // forbid with a run still active: not judged early — held
                // to its time, not skipped.
                let f = slot_job(c, "forbid", &spec(r#","concurrency":"forbid""#));
                let first = one_slot(c, &f, 1_000);
                assign(c, "n1", std::slice::from_ref(&first), 1_000, 30_000, 0)?;
                let second = one_slot(c, &f, 2_000);
                let held = assign(c, "n2", std::slice::from_ref(&second), 1_950, 30_000, 0)?;
                assert!(held.runs.is_empty());
                assert_eq!(held.skipped, 0);
                assert_eq!(held.later.len(), 1);
                assert!(held.later[0].on_time_only);
                assert_eq!(held.later[0].ready_at, 2_000);
                assert_eq!(state(c, second.run_id), (RunState::Pending, 1, false));
                // At its time the policy applies as before.
                let at_time = assign(c, "n2", &held.later, 2_000, 30_000, 0)?;
                assert_eq!(at_time.skipped, 1);
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn a_handed_back_run_is_requeued_at_once_as_its_next_attempt() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                let job = slot_job(c, "h", &spec(r#","retries":{"max":0}"#));
                let q = one_slot(c, &job, 1_000);
                assign(c, "n1", std::slice::from_ref(&q), 1_000, 30_000, 0)?;
                let r = complete_one(c, "n1", q.run_id, &done(Outcome::HandedBack, 1), 5_000)?;
                let Ok(Completion::Recorded {
                    requeue: mut again,
                    state: RunState::Pending,
                }) = r
                else {
                    panic!("{r:?}");
                };
                let again = again.pop().unwrap();
                // No backoff (not a failure), even with no retries left.
                assert_eq!(again.ready_at, 5_000);
                assert_eq!(state(c, q.run_id), (RunState::Pending, 2, false));
                // The old attempt's late result is stale; the new one runs elsewhere.
                let stale = complete_one(c, "n1", q.run_id, &done(Outcome::Succeeded, 1), 5_100)?;
                assert!(matches!(stale, Ok(Completion::Stale)));
                let b = assign(c, "n2", &[again], 5_200, 30_000, 0)?;
                assert_eq!(b.runs[0].attempt, 2);
                let ok = complete_one(c, "n2", q.run_id, &done(Outcome::Succeeded, 2), 6_000)?;
                assert!(matches!(
                    ok,
                    Ok(Completion::Recorded {
                        state: RunState::Succeeded,
                        ..
                    })
                ));
                let dup = complete_one(c, "n2", q.run_id, &done(Outcome::Succeeded, 2), 6_001)?;
                assert!(matches!(dup, Ok(Completion::Duplicate)));
                let j = jobs::require(c, "h")?;
                assert_eq!((j.counters.total, j.counters.succeeded), (1, 1));
                assert_eq!(j.counters.last_state.as_deref(), Some("succeeded"));
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    /// One batch's statements serve every kind of result in it: a retry, a
    /// success, a repeat and an unknown run, through one [`Prepared`], with
    /// the same rows and events as one call each.
    #[tokio::test]
    async fn one_batch_of_mixed_results_shares_its_statements() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                let flaky = slot_job(c, "flaky", &spec(r#","retries":{"max":1,"backoff":"1s"}"#));
                let steady = slot_job(c, "steady", &spec(""));
                let (a, b) = (one_slot(c, &flaky, 1_000), one_slot(c, &steady, 1_000));
                assign(c, "n1", &[a.clone(), b.clone()], 1_000, 30_000, 0)?;
                let mut p = Prepared::new(c);
                let failed = complete(&mut p, "n1", a.run_id, &done(Outcome::Failed, 1), 2_000)?;
                let ok = complete(&mut p, "n1", b.run_id, &done(Outcome::Succeeded, 1), 2_000)?;
                let dup = complete(&mut p, "n1", b.run_id, &done(Outcome::Succeeded, 1), 2_001)?;
                let gone = complete(&mut p, "n1", 999_999, &done(Outcome::Succeeded, 1), 2_002)?;
                drop(p);
                assert!(
                    matches!(&failed, Ok(Completion::Recorded { state: RunState::Pending, requeue }) if requeue.len() == 1),
                    "{failed:?}"
                );
                assert!(
                    matches!(ok, Ok(Completion::Recorded { state: RunState::Succeeded, .. })),
                    "{ok:?}"
                );
                assert!(matches!(dup, Ok(Completion::Duplicate)), "{dup:?}");
                assert!(matches!(gone, Err(RunCall::Unknown)), "{gone:?}");
                assert_eq!(state(c, a.run_id), (RunState::Pending, 2, false));
                assert_eq!(state(c, b.run_id).0, RunState::Succeeded);
                let kinds: Vec<(String, i64)> = c
                    .prepare("SELECT type, run_id FROM events WHERE run_id IS NOT NULL ORDER BY id")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let want = [
                    ("run.started", a.run_id),
                    ("run.started", b.run_id),
                    ("run.retrying", a.run_id),
                    ("run.succeeded", b.run_id),
                ];
                assert_eq!(
                    kinds,
                    want.map(|(k, r)| (k.to_owned(), r)).to_vec(),
                    "one event per transition, none for the repeat"
                );
                let (succeeded, failed): (i64, i64) = c.query_row(
                    "SELECT sum(runs_succeeded), sum(runs_failed) FROM job_stats",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                assert_eq!((succeeded, failed), (1, 0), "a retry is not a failure yet");
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    /// The last event written, as (type, job, run, node, data).
    fn last_event(c: &Connection) -> (String, Option<String>, Option<i64>, Option<String>, String) {
        c.query_row(
            "SELECT type, job_id, run_id, node_id, data FROM events ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap()
    }

    /// Assign and finish build their events from what they wrote; each must
    /// equal the event read back from the run's row afterwards.
    fn assert_event_matches_row(c: &Connection, run_id: i64) {
        let fast = last_event(c);
        let kind: events::EventType = fast.0.parse().unwrap();
        events::append_run(&mut Prepared::new(c), 0, kind, run_id).unwrap();
        assert_eq!(fast, last_event(c));
    }

    #[tokio::test]
    async fn run_events_carry_the_row_as_the_transition_left_it() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                let job = slot_job(c, "ev", &spec(r#","retries":{"max":1,"backoff":"1s"}"#));
                let q = one_slot(c, &job, 1_000);
                assign(c, "n1", std::slice::from_ref(&q), 1_000, 30_000, 0)?;
                assert_event_matches_row(c, q.run_id);
                let failed = CompleteRequest {
                    exit_code: Some(3),
                    error: Some("exit status 3".into()),
                    output: "boom".into(),
                    ..done(Outcome::Failed, 1)
                };
                let r = complete_one(c, "n1", q.run_id, &failed, 2_000)?;
                let Ok(Completion::Recorded { mut requeue, .. }) = r else {
                    panic!("{r:?}");
                };
                // run.retrying (read from the row: not_before set).
                let (kind, .., data) = last_event(c);
                assert_eq!(kind, "run.retrying");
                assert!(data.contains(r#""not_before":"1970-01-01T00:00:03.000Z""#), "{data}");
                // The second attempt's start still shows the first one's result,
                // as the row does until the new result replaces it.
                let again = requeue.pop().unwrap();
                assign(c, "n2", &[again], 3_000, 30_000, 0)?;
                assert_event_matches_row(c, q.run_id);
                let ok = CompleteRequest {
                    exit_code: Some(0),
                    ..done(Outcome::Succeeded, 2)
                };
                let r = complete_one(c, "n2", q.run_id, &ok, 4_000)?;
                assert!(matches!(r, Ok(Completion::Recorded { .. })), "{r:?}");
                let (kind, job_id, run, node, data) = last_event(c);
                assert_eq!(
                    (kind.as_str(), job_id.as_deref(), run, node.as_deref()),
                    ("run.succeeded", Some("ev"), Some(q.run_id), Some("n2"))
                );
                assert_eq!(
                    data,
                    r#"{"attempt":2,"trigger":"schedule","scheduled_for":"1970-01-01T00:00:01.000Z","exit_code":0,"error":null,"not_before":null}"#
                );
                assert_event_matches_row(c, q.run_id);
                // A run the server ends (cancel of a pending one) too.
                let q2 = one_slot(c, &job, 9_000);
                cancel(c, q2.run_id, 9_500)?;
                let (kind, .., data) = last_event(c);
                assert_eq!(kind, "run.cancelled");
                assert!(data.contains(r#""error":"cancelled by operator""#), "{data}");
                assert_event_matches_row(c, q2.run_id);
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn an_expiry_and_a_recovery_carry_the_row_as_the_transition_left_it() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                let job = slot_job(c, "ex", &spec(""));
                let mark_overdue = |c: &Connection| {
                    c.execute(
                        "UPDATE jobs SET overdue_since = 500 WHERE pk = ?1",
                        [job.pk],
                    )
                };
                let overdue_mark = |c: &Connection| {
                    c.query_row(
                        "SELECT overdue_since FROM jobs WHERE pk = ?1",
                        [job.pk],
                        |r| r.get::<_, Option<i64>>(0),
                    )
                };
                // A lease that expires with no retries left: lost, on its node.
                let q = one_slot(c, &job, 1_000);
                assign(c, "n1", std::slice::from_ref(&q), 1_000, 30_000, 0)?;
                let (requeue, expired) = expire_leases(c, 40_000)?;
                assert_eq!((requeue.len(), expired), (0, vec!["n1".to_string()]));
                let (kind, job_id, _, node, data) = last_event(c);
                assert_eq!(
                    (kind.as_str(), job_id.as_deref(), node.as_deref()),
                    ("run.lost", Some("ex"), Some("n1"))
                );
                assert!(data.contains("lease"), "{data}");
                assert_event_matches_row(c, q.run_id);
                // A success of an overdue job: its run's event, then the
                // job's recovery, and the mark is cleared.
                mark_overdue(c)?;
                let q2 = one_slot(c, &job, 50_000);
                assign(c, "n2", std::slice::from_ref(&q2), 50_000, 30_000, 0)?;
                let r = complete_one(c, "n2", q2.run_id, &done(Outcome::Succeeded, 1), 51_000)?;
                assert!(matches!(r, Ok(Completion::Recorded { .. })), "{r:?}");
                let (kind, .., data) = last_event(c);
                assert_eq!(kind, "job.recovered");
                assert!(
                    data.contains(r#""overdue_since":"1970-01-01T00:00:00.500Z""#),
                    "{data}"
                );
                let (kind, run_id): (String, i64) = c.query_row(
                    "SELECT type, run_id FROM events ORDER BY id DESC LIMIT 1 OFFSET 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                assert_eq!((kind.as_str(), run_id), ("run.succeeded", q2.run_id));
                let mark: Option<i64> = overdue_mark(c)?;
                assert_eq!(mark, None);
                // A failure does not recover it.
                mark_overdue(c)?;
                let q3 = one_slot(c, &job, 60_000);
                assign(c, "n2", std::slice::from_ref(&q3), 60_000, 30_000, 0)?;
                complete_one(c, "n2", q3.run_id, &done(Outcome::Failed, 1), 61_000)?.unwrap();
                assert_eq!(last_event(c).0, "run.failed");
                assert_event_matches_row(c, q3.run_id);
                let mark: Option<i64> = overdue_mark(c)?;
                assert_eq!(mark, Some(500));
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn pending_broadcast_runs_of_a_gone_node_end_lost() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                use crate::store::nodes;
                for n in ["up", "down", "back", "revoked", "narrow", "wide"] {
                    nodes::join(c, n, 0)?;
                }
                // Registered: "narrow" runs only shell jobs (this one is exec).
                let none = std::collections::BTreeMap::new();
                nodes::register(c, "narrow", &none, 1, &[ExecutorKind::Shell], "v", 200_000)?;
                nodes::register(c, "wide", &none, 1, &[ExecutorKind::Exec], "v", 200_000)?;
                let job = slot_job(c, "b", &spec(r#","target":{"all":true}"#));
                let any = slot_job(c, "any", &spec(""));
                let nodes: Vec<String> =
                    ["up", "down", "back", "revoked", "unknown", "narrow", "wide"]
                        .map(String::from)
                        .into();
                let mut fired = Fired::default();
                let mut p = Prepared::new(c);
                create_slots(
                    &mut p,
                    &job,
                    Trigger::Schedule,
                    1_000,
                    &nodes,
                    0,
                    &mut fired,
                )?;
                record_slots(&mut p, job.pk, NextFire::Keep, &fired)?;
                let by_node = |n: &str| {
                    fired
                        .queued
                        .iter()
                        .find(|q| q.slot_node == n)
                        .map(|q| q.run_id)
                        .unwrap()
                };
                // "up" took its run; a slot for any node waits too.
                let up = fired.queued.iter().find(|q| q.slot_node == "up").cloned();
                assign(c, "up", &[up.unwrap()], 1_000, 30_000, 0)?;
                let other = one_slot(c, &any, 1_000);
                let seen = [("up", 200_000), ("down", 5_000), ("back", 10_000)];
                nodes::touch_many(c, &seen.map(|(n, at)| (n.to_string(), at)))?;
                nodes::revoke(c, "revoked", 200_000)?;
                // Marked down: "down" and "back".
                assert_eq!(nodes::mark_down(c, 200_000, 120_000)?, 2);
                // "back" polled again: the dispatcher knows, the database not
                // yet; "narrow" is live but can never run this exec job.
                let gone = end_runs_of_gone_nodes(c, 200_000, |n| {
                    ["back", "narrow", "wide"].contains(&n)
                })?;
                let mut ended = gone.ended.clone();
                ended.sort();
                let mut want = vec![
                    by_node("down"),
                    by_node("revoked"),
                    by_node("unknown"),
                    by_node("narrow"),
                ];
                want.sort();
                assert_eq!(ended, want);
                let state = |id: i64| -> Result<(String, Option<String>), StoreError> {
                    Ok(
                        c.query_row("SELECT state, error FROM runs WHERE id = ?1", [id], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?,
                    )
                };
                let (s, e) = state(by_node("down"))?;
                assert_eq!(s, "lost");
                let e = e.unwrap();
                assert!(
                    e.contains(r#"node "down" is down (no contact since 1970-01-01T00:00:05"#),
                    "{e}"
                );
                let e = state(by_node("revoked"))?.1.unwrap();
                assert!(e.contains("was revoked"), "{e}");
                let e = state(by_node("unknown"))?.1.unwrap();
                assert!(e.contains("is unknown"), "{e}");
                let e = state(by_node("narrow"))?.1.unwrap();
                assert!(
                    e.contains(r#"node "narrow" does not allow the exec executor"#),
                    "{e}"
                );
                assert_eq!(state(by_node("wide"))?.0, "pending");
                assert_eq!(state(by_node("back"))?.0, "pending");
                assert_eq!(state(by_node("up"))?.0, "running");
                assert_eq!(state(other.run_id)?.0, "pending");
                // Counted as failures, each with its event; nothing is repeated.
                let (failed, lost): (i64, i64) = c.query_row(
                    "SELECT s.runs_failed,
                        (SELECT count(*) FROM events WHERE type = 'run.lost')
                     FROM job_stats s WHERE s.pk = ?1",
                    [job.pk],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                assert_eq!((failed, lost), (4, 4));
                // Once the dispatcher no longer hears from it either.
                let later = end_runs_of_gone_nodes(c, 201_000, |_| false)?;
                assert_eq!(later.ended, vec![by_node("back")]);
                assert!(end_runs_of_gone_nodes(c, 202_000, |_| false)?
                    .ended
                    .is_empty());
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn a_corrupt_target_is_an_error_naming_the_job() {
        let (_dir, store) = temp_store();
        let err = store
            .write(|c| {
                let job = slot_job(c, "x", &spec(""));
                let q = one_slot(c, &job, 1_000);
                c.execute(
                    "UPDATE jobs SET target = 'not json' WHERE pk = ?1",
                    [job.pk],
                )?;
                let e = queued(c, q.run_id).unwrap_err();
                assert!(e.to_string().contains("job x: stored target"), "{e}");
                // A pending run of a corrupt job is not loaded (and not dispatched anywhere).
                assert!(load_pending(c)?.is_empty());
                Ok(cancel(c, q.run_id + 1000, 0).unwrap_err().to_string())
            })
            .await
            .unwrap();
        assert!(err.contains("not found"), "{err}");
        store.close().await;
    }
}

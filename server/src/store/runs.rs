//! The `runs` table: slot creation (exactly once per `(job, trigger,
//! scheduled_for, node)`), reads with cursor pagination, state changes with
//! the job's counters kept in step, and history pruning.

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use sundial_proto::{Run, RunState};

/// How a slot came to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An on-time fire of the schedule.
    Schedule,
    /// A missed fire created after downtime by the misfire policy.
    CatchUp,
    /// `POST /v1/jobs/{id}/trigger`.
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
        }
    }
}

const RUN_COLUMNS: &str = "r.id, j.id, r.scheduled_for, coalesce(r.assigned_node, r.node), r.trigger, r.attempt, r.state, \
     r.created_at, r.started_at, r.finished_at, r.exit_code, r.output, r.truncated, r.error";

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<Run> {
    let state: String = row.get(6)?;
    let state = state.parse::<RunState>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, e.into())
    })?;
    let node: String = row.get(3)?;
    Ok(Run {
        id: row.get(0)?,
        job_id: row.get(1)?,
        scheduled_for: row.get(2)?,
        node: (!node.is_empty()).then_some(node),
        trigger: row.get(4)?,
        attempt: row.get(5)?,
        state,
        created_at: row.get(7)?,
        started_at: row.get(8)?,
        finished_at: row.get(9)?,
        exit_code: row.get(10)?,
        output: row.get(11)?,
        truncated: row.get(12)?,
        error: row.get(13)?,
    })
}

/// Creates a slot unless it already exists. Returns the new run id, or `None`
/// when the slot was already there (the UNIQUE key, never timing, decides).
pub fn insert_slot(
    conn: &Connection,
    job_pk: i64,
    trigger: Trigger,
    scheduled_for: i64,
    node: &str,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let Some(id) = insert_slot_only(conn, job_pk, trigger, scheduled_for, node, now)? else {
        return Ok(None);
    };
    conn.prepare_cached(
        "UPDATE jobs SET runs_total = runs_total + 1, last_run_id = ?2, last_run_at = ?3,
             last_state = 'pending'
         WHERE pk = ?1",
    )?
    .execute(params![job_pk, id, scheduled_for])?;
    Ok(Some(id))
}

/// [`insert_slot`] without the job's counters: the scheduler updates the job
/// row once per fire instead (see `jobs::record_fire`).
pub fn insert_slot_only(
    conn: &Connection,
    job_pk: i64,
    trigger: Trigger,
    scheduled_for: i64,
    node: &str,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO runs (job, trigger, scheduled_for, node, state, created_at)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5)
             ON CONFLICT (job, trigger, scheduled_for, node) DO NOTHING",
        )?
        .execute(params![job_pk, trigger.as_str(), scheduled_for, node, now])?;
    if inserted == 0 {
        return Ok(None);
    }
    Ok(Some(conn.last_insert_rowid()))
}

/// Reads one run.
pub fn get(conn: &Connection, id: i64) -> Result<Option<Run>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN jobs j ON j.pk = r.job WHERE r.id = ?1"
        ))?
        .query_row([id], run_from_row)
        .optional()?)
}

/// Filters for [`list`]; `None` means "any".
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub job_pk: Option<i64>,
    pub state: Option<RunState>,
    pub node: Option<String>,
}

/// A page of runs, newest first. The cursor is the last returned id.
pub fn list(
    conn: &Connection,
    filter: &Filter,
    cursor: Option<i64>,
    limit: usize,
) -> Result<(Vec<Run>, Option<i64>), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM runs r JOIN jobs j ON j.pk = r.job
         WHERE r.id < ?1
           AND (?2 IS NULL OR r.job = ?2)
           AND (?3 IS NULL OR r.state = ?3)
           AND (?4 IS NULL OR r.node = ?4 OR r.assigned_node = ?4)
         ORDER BY r.id DESC LIMIT ?5"
    ))?;
    let mut rows = stmt.query(params![
        cursor.unwrap_or(i64::MAX),
        filter.job_pk,
        filter.state.map(|s| s.as_str()),
        filter.node,
        limit as i64 + 1,
    ])?;
    let mut items: Vec<Run> = Vec::with_capacity(limit.min(1024));
    while let Some(row) = rows.next()? {
        if items.len() == limit {
            let last = items.last().map(|r| r.id);
            return Ok((items, last));
        }
        items.push(run_from_row(row)?);
    }
    Ok((items, None))
}

/// Moves a run to a terminal state and updates its job's counters.
/// Refuses when the run is already terminal (the first result wins).
pub fn finish(
    conn: &Connection,
    id: i64,
    state: RunState,
    now: i64,
    error: Option<&str>,
) -> Result<Run, StoreError> {
    finish_at(conn, id, state, now, error)
}

/// [`finish`] with an explicit finish time (as reported by the node).
pub fn finish_at(
    conn: &Connection,
    id: i64,
    state: RunState,
    now: i64,
    error: Option<&str>,
) -> Result<Run, StoreError> {
    debug_assert!(state.is_terminal());
    let run = get(conn, id)?.ok_or_else(|| StoreError::NotFound {
        kind: "run",
        id: id.to_string(),
    })?;
    if run.state.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "run {id} already finished as {}",
            run.state
        )));
    }
    conn.prepare_cached(
        "UPDATE runs SET state = ?2, finished_at = ?3, error = coalesce(?4, error),
             lease_expires_at = NULL
         WHERE id = ?1",
    )?
    .execute(params![id, state.as_str(), now, error])?;
    let (succeeded, failed) = match state {
        RunState::Succeeded => (1, 0),
        RunState::Failed | RunState::TimedOut | RunState::Lost => (0, 1),
        _ => (0, 0),
    };
    conn.prepare_cached(
        "UPDATE jobs SET runs_succeeded = runs_succeeded + ?1, runs_failed = runs_failed + ?2,
             last_state = CASE WHEN last_run_id = ?3 THEN ?4 ELSE last_state END
         WHERE pk = (SELECT job FROM runs WHERE id = ?3)",
    )?
    .execute(params![succeeded, failed, id, state.as_str()])?;
    get(conn, id)?.ok_or(StoreError::NotFound {
        kind: "run",
        id: id.to_string(),
    })
}

/// Counts runs per state (for metrics).
pub fn count_by_state(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT state, count(*) FROM runs GROUP BY state")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Retention defaults applied to jobs that set none.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: u32,
    pub max_age_ms: i64,
}

/// Prunes finished runs of up to `batch` jobs with `pk > after`, keeping each
/// job's newest `keep` runs and any younger than `max_age`. Pending and running
/// runs are never pruned. Returns (runs deleted, last job pk visited or None at the end).
pub fn prune(
    conn: &Connection,
    after: i64,
    batch: usize,
    now: i64,
    defaults: Retention,
) -> Result<(usize, Option<i64>), StoreError> {
    let mut jobs = conn.prepare_cached(
        "SELECT pk, coalesce(keep_runs, ?2), coalesce(max_age_ms, ?3) FROM jobs
         WHERE pk > ?1 ORDER BY pk LIMIT ?4",
    )?;
    let targets: Vec<(i64, i64, i64)> = jobs
        .query_map(
            params![after, defaults.keep, defaults.max_age_ms, batch as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?
        .collect::<Result<_, _>>()?;
    let mut delete = conn.prepare_cached(
        "DELETE FROM runs WHERE job = ?1 AND state NOT IN ('pending', 'running') AND (
             created_at < ?2
             OR id <= coalesce(
                 (SELECT id FROM runs WHERE job = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?3), -1))",
    )?;
    let mut deleted = 0;
    for (pk, keep, max_age) in &targets {
        deleted += delete.execute(params![pk, now - max_age, keep])?;
    }
    let last = if targets.len() < batch {
        None
    } else {
        targets.last().map(|t| t.0)
    };
    Ok((deleted, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs;
    use crate::store::test_support::temp_store;
    use sundial_proto::JobSpec;

    fn spec(history: &str) -> JobSpec {
        serde_json::from_str(&format!(
            r#"{{"schedule":"@hourly","executor":{{"type":"exec","argv":["true"]}},"history":{history}}}"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn slots_are_unique_and_prune_keeps_newest_and_active() {
        let (_dir, store) = temp_store();
        let out = store
            .write(|c| {
                let (job, _) = jobs::upsert(c, "j", &spec(r#"{"keep":3}"#), 0, |_| None)?;
                let pk = jobs::pk_of(c, &job.id)?.unwrap();
                let mut ids = Vec::new();
                for t in 0..10 {
                    ids.push(insert_slot(c, pk, Trigger::Schedule, t * 1000, "", 1)?.unwrap());
                }
                // The same slot again is refused by the UNIQUE key, not by timing.
                assert_eq!(insert_slot(c, pk, Trigger::Schedule, 0, "", 2)?, None);
                // A manual slot at the same instant is a different slot.
                assert!(insert_slot(c, pk, Trigger::Manual, 0, "", 2)?.is_some());
                // Finish all but the last two; those stay pending.
                for id in &ids[..8] {
                    finish(c, *id, RunState::Succeeded, 5, None)?;
                }
                let defaults = Retention {
                    keep: 100,
                    max_age_ms: 1_000_000,
                };
                let (deleted, last) = prune(c, 0, 100, 10, defaults)?;
                Ok((deleted, last, ids))
            })
            .await
            .unwrap();
        let (deleted, last, ids) = out;
        assert_eq!(last, None);
        // 11 runs; keep newest 3 (manual + 2 pending); 8 finished older ones go.
        assert_eq!(deleted, 8);
        let left: Vec<i64> = store
            .read(|c| {
                let mut st = c.prepare("SELECT id FROM runs ORDER BY id")?;
                let r = st.query_map([], |r| r.get(0))?;
                Ok(r.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 3);
        assert!(left.contains(&ids[8]) && left.contains(&ids[9]));
        let job = store.read(|c| jobs::require(c, "j")).await.unwrap();
        assert_eq!(job.counters.total, 11);
        assert_eq!(job.counters.succeeded, 8);
        store.close().await;
    }

    #[tokio::test]
    async fn prune_by_age_uses_job_then_default() {
        let (_dir, store) = temp_store();
        let deleted = store
            .write(|c| {
                let (a, _) = jobs::upsert(c, "a", &spec(r#"{"max_age":"1s"}"#), 0, |_| None)?;
                let (b, _) = jobs::upsert(c, "b", &spec("{}"), 0, |_| None)?;
                for job in [&a, &b] {
                    let pk = jobs::pk_of(c, &job.id)?.unwrap();
                    let id = insert_slot(c, pk, Trigger::Schedule, 0, "", 0)?.unwrap();
                    finish(c, id, RunState::Failed, 1, Some("boom"))?;
                }
                // At t = 5 s: job a (max_age 1 s) loses its run; b uses the 1 h default.
                let defaults = Retention {
                    keep: 100,
                    max_age_ms: 3_600_000,
                };
                Ok(prune(c, 0, 100, 5_000, defaults)?.0)
            })
            .await
            .unwrap();
        assert_eq!(deleted, 1);
        let b = store.read(|c| jobs::require(c, "b")).await.unwrap();
        assert_eq!(b.counters.failed, 1);
        assert_eq!(b.counters.last_state.as_deref(), Some("failed"));
        store.close().await;
    }
}

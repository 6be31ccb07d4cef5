//! The `runs` table's reads (one run, cursor pages, counts by state) and
//! history pruning. Every change of a run — slot creation included — is in
//! [`super::lifecycle`], which keeps the job's counters in step.

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use sundial_proto::{Run, RunState, Trigger};

const RUN_COLUMNS: &str = "r.id, j.id, r.scheduled_for, coalesce(r.assigned_node, r.node), r.trigger, r.attempt, r.state, \
     r.created_at, r.started_at, r.finished_at, r.exit_code, r.output, r.truncated, r.error, r.upstream_run";
/// [`RUN_COLUMNS`] with `output` left out (null): a list for a table.
const RUN_COLUMNS_NO_OUTPUT: &str = "r.id, j.id, r.scheduled_for, coalesce(r.assigned_node, r.node), r.trigger, r.attempt, r.state, \
     r.created_at, r.started_at, r.finished_at, r.exit_code, NULL, r.truncated, r.error, r.upstream_run";

/// A text column that must parse into `T`; an error names the run.
fn typed<T: std::str::FromStr<Err = String>>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    text.parse::<T>().map_err(|e| {
        let id: i64 = row.get(0).unwrap_or_default();
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("run {id}: {e}").into(),
        )
    })
}

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<Run> {
    let state: RunState = typed(row, 6)?;
    let node: String = row.get(3)?;
    Ok(Run {
        id: row.get(0)?,
        job_id: row.get(1)?,
        scheduled_for: row.get(2)?,
        node: (!node.is_empty()).then_some(node),
        trigger: typed::<Trigger>(row, 4)?,
        upstream_run_id: row.get(14)?,
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

/// Reads one run.
pub fn get(conn: &Connection, id: i64) -> Result<Option<Run>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN jobs j ON j.pk = r.job WHERE r.id = ?1"
        ))?
        .query_row([id], run_from_row)
        .optional()?)
}

/// Which of `ids` are runs still `pending`.
pub fn pending_among(
    conn: &Connection,
    ids: &[i64],
) -> Result<std::collections::HashSet<i64>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM runs WHERE id = ?1 AND state = 'pending'")?;
    let mut pending = std::collections::HashSet::new();
    for &id in ids {
        if stmt.exists([id])? {
            pending.insert(id);
        }
    }
    Ok(pending)
}

/// A run's output from byte `offset` on, with what a follower needs.
#[derive(Debug)]
pub struct OutputTail {
    pub state: RunState,
    pub attempt: u32,
    pub exit_code: Option<i32>,
    /// Bytes of output stored in all.
    pub len: u64,
    /// The bytes after `offset`.
    pub tail: Vec<u8>,
}

/// Reads a run's output after byte `offset` (None: no such run); which
/// attempt it belongs to is [`sundial_proto::run::output_attempt`].
pub fn output_tail(
    conn: &Connection,
    id: i64,
    offset: u64,
) -> Result<Option<OutputTail>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT state, attempt, exit_code, length(CAST(coalesce(output, '') AS BLOB)),
                    substr(CAST(coalesce(output, '') AS BLOB), ?2 + 1)
             FROM runs WHERE id = ?1",
        )?
        .query_row(params![id, offset as i64], |r| {
            let state: String = r.get(0)?;
            Ok(OutputTail {
                state: state.parse().map_err(|e: String| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        format!("run {id}: {e}").into(),
                    )
                })?,
                attempt: r.get(1)?,
                exit_code: r.get(2)?,
                len: r.get::<_, i64>(3)? as u64,
                tail: r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
            })
        })
        .optional()?)
}

/// Filters for [`list`]; `None` means "any".
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub job_pk: Option<i64>,
    pub state: Option<RunState>,
    pub node: Option<String>,
    /// Each run's output (up to 1 MiB each); `false` leaves it `null`.
    pub output: bool,
}

/// A page of runs, newest first. The cursor is the last returned id.
pub fn list(
    conn: &Connection,
    filter: &Filter,
    cursor: Option<i64>,
    limit: usize,
) -> Result<(Vec<Run>, Option<i64>), StoreError> {
    let columns = if filter.output {
        RUN_COLUMNS
    } else {
        RUN_COLUMNS_NO_OUTPUT
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {columns} FROM runs r JOIN jobs j ON j.pk = r.job
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

/// Counts runs per state (for metrics).
pub fn count_by_state(conn: &Connection) -> Result<Vec<(RunState, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT state, count(*) FROM runs GROUP BY state")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
    rows.map(|r| {
        let (state, n) = r?;
        let state = state
            .parse::<RunState>()
            .map_err(|e| StoreError::Corrupt(format!("runs.state: {e}")))?;
        Ok((state, n))
    })
    .collect()
}

/// Retention defaults applied to jobs that set none.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: u32,
    pub max_age_ms: i64,
}

/// Prunes finished runs of up to `batch` jobs with `pk > after`, keeping each
/// job's newest `keep` finished runs and any that finished less than
/// `max_age` ago. Pending and running runs are never pruned, and do not
/// count against `keep` (a backlog would otherwise prune the history
/// away); nor is a broadcast slot's finished run while another run of its
/// slot has not ended: the slot's outcome, which its chains follow, is
/// read from its runs when the last one ends. Returns (runs deleted, last
/// job pk visited or None at the end).
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
             coalesce(finished_at, created_at) < ?2
             OR id <= coalesce(
                 (SELECT id FROM runs WHERE job = ?1 AND state NOT IN ('pending', 'running')
                  ORDER BY id DESC LIMIT 1 OFFSET ?3), -1))
           AND NOT (node != '' AND EXISTS (
             SELECT 1 FROM runs s WHERE s.job = runs.job AND s.trigger = runs.trigger
                 AND s.scheduled_for = runs.scheduled_for AND s.state IN ('pending', 'running')))",
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
    use crate::store::lifecycle::{self, Fired, NextFire, SlotJob};
    use crate::store::prepared::Prepared;
    use crate::store::test_support::temp_store;
    use std::sync::Arc;
    use sundial_proto::agent::{CompleteRequest, Outcome};
    use sundial_proto::JobSpec;

    fn spec(history: &str) -> JobSpec {
        serde_json::from_str(&format!(
            r#"{{"schedule":"@hourly","executor":{{"type":"exec","argv":["true"]}},"history":{history}}}"#
        ))
        .unwrap()
    }

    fn slot_job(c: &Connection, id: &str, history: &str) -> SlotJob {
        let spec = spec(history);
        jobs::upsert(c, id, &spec, 0, |_| None).unwrap();
        SlotJob {
            pk: jobs::pk_of(c, id).unwrap().unwrap(),
            target: Arc::new(spec.target.clone()),
            executor_kind: spec.executor.kind(),
        }
    }

    /// Creates one slot; None when it already existed.
    fn slot(c: &Connection, job: &SlotJob, trigger: Trigger, at: i64) -> Option<i64> {
        let mut fired = Fired::default();
        let mut p = Prepared::new(c);
        lifecycle::create_slots(&mut p, job, trigger, at, &[String::new()], 1, &mut fired).unwrap();
        lifecycle::record_slots(&mut p, job.pk, NextFire::Keep, &fired).unwrap();
        fired.queued.first().map(|q| q.run_id)
    }

    /// Runs a slot to the end with `outcome` on node n.
    fn run_to_end(c: &Connection, id: i64, outcome: Outcome) {
        let q = lifecycle::queued(c, id).unwrap().unwrap();
        lifecycle::assign(c, "n", &[q], 2, 30_000, 0).unwrap();
        let req = CompleteRequest {
            attempt: 1,
            outcome,
            exit_code: None,
            output: String::new(),
            truncated: false,
            error: Some("boom".into()),
            started_at: 2,
            finished_at: 5,
        };
        lifecycle::complete(&mut Prepared::new(c), "n", id, &req, 5)
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn slots_are_unique_and_prune_keeps_newest_and_active() {
        let (_dir, store) = temp_store();
        let out = store
            .write(|c| {
                let job = slot_job(c, "j", r#"{"keep":3}"#);
                let mut ids = Vec::new();
                for t in 0..10 {
                    ids.push(slot(c, &job, Trigger::Schedule, t * 1000).unwrap());
                }
                // The same slot again is refused by the UNIQUE key, not by timing.
                assert_eq!(slot(c, &job, Trigger::Schedule, 0), None);
                // A manual slot at the same instant is a different slot.
                assert!(slot(c, &job, Trigger::Manual, 0).is_some());
                // Finish all but the last two; those stay pending.
                for id in &ids[..8] {
                    run_to_end(c, *id, Outcome::Succeeded);
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
        // 11 runs, 3 of them pending (manual + 2): the newest 3 finished
        // runs stay beside them, the 5 older finished ones go.
        assert_eq!(deleted, 5);
        let left: Vec<i64> = store
            .read(|c| {
                let mut st = c.prepare("SELECT id FROM runs ORDER BY id")?;
                let r = st.query_map([], |r| r.get(0))?;
                Ok(r.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 6);
        for id in &ids[5..] {
            assert!(left.contains(id), "run {id} of {ids:?} is gone: {left:?}");
        }
        let job = store.read(|c| jobs::require(c, "j")).await.unwrap();
        assert_eq!(job.counters.total, 11);
        assert_eq!(job.counters.succeeded, 8);
        store.close().await;
    }

    #[tokio::test]
    async fn age_counts_from_the_end_and_an_unended_broadcast_slot_keeps_its_runs() {
        let (_dir, store) = temp_store();
        let left = store
            .write(|c| {
                let job = slot_job(c, "b", r#"{"max_age":"1s","keep":1}"#);
                // A broadcast slot on n1 and n2 created at 0: n1's run
                // failed at 5, n2's still runs.
                let cast = crate::store::test_support::slot_on(c, &job, 0, &["n1", "n2"]);
                for (node, q) in ["n1", "n2"].into_iter().zip(&cast) {
                    lifecycle::assign(c, node, std::slice::from_ref(q), 2, 30_000, 0)?;
                }
                let failed = CompleteRequest {
                    attempt: 1,
                    outcome: Outcome::Failed,
                    exit_code: Some(1),
                    output: String::new(),
                    truncated: false,
                    error: None,
                    started_at: 2,
                    finished_at: 5,
                };
                lifecycle::complete(&mut Prepared::new(c), "n1", cast[0].run_id, &failed, 5)?
                    .unwrap();
                // A run of another job created long ago that finished just now.
                let long = slot_job(c, "long", r#"{"max_age":"1s"}"#);
                let id = slot(c, &long, Trigger::Schedule, 0).unwrap();
                let q = lifecycle::queued(c, id)?.unwrap();
                lifecycle::assign(c, "n", &[q], 2, 30_000, 0)?;
                let done = CompleteRequest {
                    outcome: Outcome::Succeeded,
                    finished_at: 9_500,
                    ..failed.clone()
                };
                lifecycle::complete(&mut Prepared::new(c), "n", id, &done, 9_500)?.unwrap();
                let defaults = Retention {
                    keep: 100,
                    max_age_ms: 3_600_000,
                };
                // At 10 s both are past max_age counted from creation; the
                // long run finished 0.5 s ago and n1's slot has not ended.
                assert_eq!(prune(c, 0, 100, 10_000, defaults)?.0, 0);
                // Once n2's run ends the slot has ended: both go (by age).
                lifecycle::complete(
                    &mut Prepared::new(c),
                    "n2",
                    cast[1].run_id,
                    &CompleteRequest {
                        outcome: Outcome::Succeeded,
                        finished_at: 10_000,
                        ..failed.clone()
                    },
                    10_000,
                )?
                .unwrap();
                assert_eq!(prune(c, 0, 100, 20_000, defaults)?.0, 3);
                let left: i64 = c.query_row("SELECT count(*) FROM runs", [], |r| r.get(0))?;
                Ok(left)
            })
            .await
            .unwrap();
        assert_eq!(left, 0);
        store.close().await;
    }

    #[tokio::test]
    async fn prune_by_age_uses_job_then_default() {
        let (_dir, store) = temp_store();
        let deleted = store
            .write(|c| {
                let a = slot_job(c, "a", r#"{"max_age":"1s"}"#);
                let b = slot_job(c, "b", "{}");
                for job in [&a, &b] {
                    let id = slot(c, job, Trigger::Schedule, 0).unwrap();
                    run_to_end(c, id, Outcome::Failed);
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

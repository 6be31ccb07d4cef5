//! The `jobs` table: upserts, reads, pause/resume, deletion and the queries the
//! scheduler uses to find due jobs. The full spec is stored as canonical JSON;
//! the fields the scheduler needs are also columns so due-job scans never parse JSON.
//! What changes with every fire (the next fire, with the `enabled` and
//! `paused` flags its due index filters on) lives in the job's narrow
//! `job_stats` row beside its run counters, not in the wide spec row.

use super::events::{self, EventType};
use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use sundial_proto::{ExecutorKind, Job, JobCounters, JobSpec, MisfirePolicy};

/// The jobs joined with their narrow rows (`job_stats`, one row per job,
/// written with it: next fire, `enabled`, `paused` and run counters):
/// `FROM {WITH_STATS}` for a read that needs both.
/// `USING (pk)` keeps `pk` and every other column name unqualified.
pub(crate) const WITH_STATS: &str = "jobs JOIN job_stats USING (pk)";

/// Columns selected for a full [`Job`] (from [`WITH_STATS`]).
const JOB_COLUMNS: &str = "id, spec, paused, next_fire_at, created_at, updated_at, \
     runs_total, runs_succeeded, runs_failed, last_run_id, last_run_at, last_state, \
     last_success_at, overdue_since";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let spec_text: String = row.get(1)?;
    let spec = serde_json::from_str(&spec_text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let paused: bool = row.get(2)?;
    let spec: JobSpec = spec;
    // A paused or disabled job does not fire: no next fire to show (the
    // row keeps its own, for the scheduler's bookkeeping).
    let next_fire_at = if paused || !spec.enabled {
        None
    } else {
        row.get(3)?
    };
    Ok(Job {
        id: row.get(0)?,
        spec,
        paused,
        next_fire_at,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
        counters: JobCounters {
            total: row.get::<_, i64>(6)? as u64,
            succeeded: row.get::<_, i64>(7)? as u64,
            failed: row.get::<_, i64>(8)? as u64,
            last_run_id: row.get(9)?,
            last_run_at: row.get(10)?,
            last_state: row.get(11)?,
            last_success_at: row.get(12)?,
            overdue_since: row.get(13)?,
        },
    })
}

/// Reads one job by id.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Job>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM {WITH_STATS} WHERE id = ?1"
    ))?;
    Ok(stmt.query_row([id], job_from_row).optional()?)
}

/// Like [`get`] but a missing job is an error.
pub fn require(conn: &Connection, id: &str) -> Result<Job, StoreError> {
    get(conn, id)?.ok_or_else(|| StoreError::NotFound {
        kind: "job",
        id: id.to_string(),
    })
}

/// A page of jobs, newest first; the cursor is the last row's internal key.
pub fn list(
    conn: &Connection,
    cursor: Option<i64>,
    limit: usize,
) -> Result<(Vec<Job>, Option<i64>), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS}, pk FROM {WITH_STATS} WHERE pk < ?1 ORDER BY pk DESC LIMIT ?2"
    ))?;
    let mut rows = stmt.query(params![cursor.unwrap_or(i64::MAX), limit as i64 + 1])?;
    let mut items = Vec::with_capacity(limit.min(1024));
    let mut last_pk = None;
    while let Some(row) = rows.next()? {
        if items.len() == limit {
            return Ok((items, last_pk));
        }
        last_pk = Some(row.get::<_, i64>(14)?);
        items.push(job_from_row(row)?);
    }
    Ok((items, None))
}

/// Number of stored jobs.
pub fn count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))?)
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Created,
    Updated,
    Unchanged,
}

/// Inserts or updates a job. `next_fire` computes the first fire after an
/// instant for the new schedule; it is only called when the schedule, its time
/// zone or its enabled flag changed, so re-registering an unchanged job
/// (services do that at start-up) keeps its place in time.
pub fn upsert(
    conn: &Connection,
    id: &str,
    spec: &JobSpec,
    now: i64,
    next_fire: impl Fn(i64) -> Option<i64>,
) -> Result<(Job, Upserted), StoreError> {
    let outcome = write_spec(conn, id, spec, now, next_fire)?;
    if outcome != Upserted::Unchanged {
        set_after(conn, id, spec)?;
    }
    Ok((require(conn, id)?, outcome))
}

/// Stores a written job's `after` edges (refusing unknown upstreams and
/// cycles). Bulk apply calls it once every job of the request is written,
/// so a manifest may list a job before its upstream.
pub fn set_after(conn: &Connection, id: &str, spec: &JobSpec) -> Result<(), StoreError> {
    if spec.after.is_empty() {
        // The common case, in one statement: no upstreams (any more).
        conn.prepare_cached(
            "DELETE FROM job_after WHERE downstream = (SELECT pk FROM jobs WHERE id = ?1)",
        )?
        .execute([id])?;
        return Ok(());
    }
    let pk = pk_of(conn, id)?.ok_or_else(|| StoreError::NotFound {
        kind: "job",
        id: id.to_string(),
    })?;
    super::chains::set_edges(conn, pk, id, &spec.after)
}

/// Writes a job's `after` edges already checked by the caller (a bulk apply
/// checks every document against one [`super::chains::Graph`] first).
pub fn write_after(conn: &Connection, id: &str, spec: &JobSpec) -> Result<(), StoreError> {
    let pk = pk_of(conn, id)?.ok_or_else(|| StoreError::NotFound {
        kind: "job",
        id: id.to_string(),
    })?;
    super::chains::write_edges(conn, pk, &spec.after)
}

/// The write half of [`upsert`], without reading the job back (bulk apply
/// writes many jobs and needs only the outcome).
pub fn write_spec(
    conn: &Connection,
    id: &str,
    spec: &JobSpec,
    now: i64,
    next_fire: impl Fn(i64) -> Option<i64>,
) -> Result<Upserted, StoreError> {
    // The alert threshold; without one a job is no longer overdue.
    let overdue_after_ms = spec.alert.as_ref().map(|a| a.overdue_after.as_millis_i64());
    let labels_text = serde_json::to_string(&spec.labels)
        .map_err(|e| StoreError::Corrupt(format!("encoding labels: {e}")))?;
    let spec_text = serde_json::to_string(spec)
        .map_err(|e| StoreError::Corrupt(format!("encoding spec: {e}")))?;
    let target_text = serde_json::to_string(&spec.target)
        .map_err(|e| StoreError::Corrupt(format!("encoding target: {e}")))?;
    type Existing = (i64, String, String, String, bool, Option<i64>);
    let existing: Option<Existing> = conn
        .prepare_cached(&format!(
            "SELECT pk, spec, schedule, timezone, enabled, next_fire_at FROM {WITH_STATS}
             WHERE id = ?1"
        ))?
        .query_row([id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let outcome = match existing {
        Some((_, old_text, ..)) if old_text == spec_text => Upserted::Unchanged,
        Some((pk, _, schedule, timezone, enabled, next_fire_at)) => {
            let timing_changed =
                schedule != spec.schedule || timezone != spec.timezone || enabled != spec.enabled;
            let next = if timing_changed {
                next_fire(now)
            } else {
                next_fire_at
            };
            conn.prepare_cached(
                "UPDATE jobs SET spec = ?2, schedule = ?3, timezone = ?4, misfire = ?5, grace_ms = ?6,
                    max_catch_up = ?7, concurrency = ?8, keep_runs = ?9, max_age_ms = ?10,
                    updated_at = ?11, target = ?12, executor_kind = ?13, labels = ?14,
                    overdue_after_ms = ?15,
                    overdue_since = CASE WHEN ?15 IS NULL THEN NULL ELSE overdue_since END
                 WHERE pk = ?1",
            )?
            .execute(params![
                pk,
                spec_text,
                spec.schedule,
                spec.timezone,
                spec.misfire.policy.as_str(),
                spec.misfire.grace.as_millis_i64(),
                spec.misfire.max_catch_up,
                spec.concurrency.as_str(),
                spec.history.keep,
                spec.history.max_age.map(|d| d.as_millis_i64()),
                now,
                target_text,
                spec.executor.kind().as_str(),
                labels_text,
                overdue_after_ms,
            ])?;
            if overdue_after_ms.is_some() {
                super::events::reconsider_overdue(conn, pk, now)?;
            }
            let changed = conn
                .prepare_cached(
                    "UPDATE job_stats SET enabled = ?2, next_fire_at = ?3 WHERE pk = ?1",
                )?
                .execute(params![pk, spec.enabled, next])?;
            super::lifecycle::stats_written(changed, pk)?;
            Upserted::Updated
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO jobs (id, spec, schedule, timezone, misfire, grace_ms, max_catch_up,
                    concurrency, keep_runs, max_age_ms, created_at, updated_at,
                    target, executor_kind, labels, overdue_after_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, ?14, ?15)",
            )?
            .execute(params![
                id,
                spec_text,
                spec.schedule,
                spec.timezone,
                spec.misfire.policy.as_str(),
                spec.misfire.grace.as_millis_i64(),
                spec.misfire.max_catch_up,
                spec.concurrency.as_str(),
                spec.history.keep,
                spec.history.max_age.map(|d| d.as_millis_i64()),
                now,
                target_text,
                spec.executor.kind().as_str(),
                labels_text,
                overdue_after_ms,
            ])?;
            conn.prepare_cached(
                "INSERT INTO job_stats (pk, enabled, next_fire_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                conn.last_insert_rowid(),
                spec.enabled,
                next_fire(now)
            ])?;
            Upserted::Created
        }
    };
    let kind = match outcome {
        Upserted::Created => Some(EventType::JobCreated),
        Upserted::Updated => Some(EventType::JobUpdated),
        Upserted::Unchanged => None,
    };
    if let Some(kind) = kind {
        events::append(
            conn,
            now,
            kind,
            Some(id),
            None,
            None,
            &serde_json::json!({}),
        )?;
    }
    Ok(outcome)
}

/// Deletes a job and (by cascade) its runs. Returns false when it did not exist.
pub fn delete(conn: &Connection, id: &str, now: i64) -> Result<bool, StoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM jobs WHERE id = ?1")?
        .execute([id])?
        > 0;
    if deleted {
        events::append(
            conn,
            now,
            EventType::JobDeleted,
            Some(id),
            None,
            None,
            &serde_json::json!({}),
        )?;
    }
    Ok(deleted)
}

/// Pauses or resumes a job. Resuming recomputes the next fire from `now`:
/// slots that fell due while paused are not created.
pub fn set_paused(
    conn: &Connection,
    id: &str,
    paused: bool,
    now: i64,
    next_fire: impl Fn(&JobSpec, i64) -> Option<i64>,
) -> Result<Job, StoreError> {
    let current = require(conn, id)?;
    if current.paused == paused {
        return Ok(current);
    }
    let next = if paused {
        current.next_fire_at
    } else {
        next_fire(&current.spec, now)
    };
    conn.prepare_cached("UPDATE jobs SET updated_at = ?2 WHERE id = ?1")?
        .execute(params![id, now])?;
    conn.prepare_cached(
        "UPDATE job_stats SET paused = ?2, next_fire_at = ?3
         WHERE pk = (SELECT pk FROM jobs WHERE id = ?1)",
    )?
    .execute(params![id, paused, next])?;
    let kind = if paused {
        EventType::JobPaused
    } else {
        EventType::JobResumed
    };
    events::append(
        conn,
        now,
        kind,
        Some(id),
        None,
        None,
        &serde_json::json!({}),
    )?;
    require(conn, id)
}

/// The scheduler's view of a due job: just what firing needs. The schedule
/// and target stay text here; the scheduler parses and caches them.
#[derive(Debug, Clone)]
pub struct DueJob {
    pub pk: i64,
    pub id: String,
    pub schedule: String,
    pub timezone: String,
    pub misfire: MisfirePolicy,
    pub grace_ms: i64,
    pub max_catch_up: i64,
    pub next_fire_at: i64,
    /// JSON of the job's target.
    pub target: String,
    pub executor_kind: ExecutorKind,
}

/// A due job whose row does not parse (a hand-edited database).
#[derive(Debug)]
pub struct BadRow {
    pub pk: i64,
    pub id: String,
    pub error: StoreError,
}

/// Jobs whose `next_fire_at` is at or before `now`, earliest first. A row
/// whose policy or executor kind does not parse comes back as a [`BadRow`]
/// (so one bad row never stops the others).
pub fn due(
    conn: &Connection,
    now: i64,
    limit: usize,
) -> Result<Vec<Result<DueJob, BadRow>>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT pk, id, schedule, timezone, misfire, grace_ms, max_catch_up, next_fire_at,
                target, executor_kind
         FROM job_stats JOIN jobs USING (pk)
         WHERE next_fire_at IS NOT NULL AND enabled = 1 AND paused = 0 AND next_fire_at <= ?1
         ORDER BY next_fire_at LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![now, limit as i64])?;
    let mut out = Vec::with_capacity(limit.min(1024));
    while let Some(r) = rows.next()? {
        let pk: i64 = r.get(0)?;
        let id: String = r.get(1)?;
        let misfire: String = r.get(4)?;
        let kind: String = r.get(9)?;
        let parsed = misfire
            .parse::<MisfirePolicy>()
            .map_err(|e| format!("job {id}: {e}"))
            .and_then(|m| {
                let k =
                    super::lifecycle::parse_executor_kind(&id, &kind).map_err(|e| e.to_string())?;
                Ok((m, k))
            });
        out.push(match parsed {
            Ok((misfire, executor_kind)) => Ok(DueJob {
                pk,
                schedule: r.get(2)?,
                timezone: r.get(3)?,
                misfire,
                grace_ms: r.get(5)?,
                max_catch_up: r.get(6)?,
                next_fire_at: r.get(7)?,
                target: r.get(8)?,
                executor_kind,
                id,
            }),
            Err(e) => Err(BadRow {
                pk,
                id,
                error: StoreError::Corrupt(e),
            }),
        });
    }
    Ok(out)
}

/// The earliest pending fire among active jobs.
pub fn earliest_fire(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT min(next_fire_at) FROM job_stats
             WHERE next_fire_at IS NOT NULL AND enabled = 1 AND paused = 0",
        )?
        .query_row([], |r| r.get(0))?)
}

/// How many active jobs fire in `[from, until)`, counting at most `cap`
/// (a bounded walk of the `jobs_due` index).
pub fn fires_between(
    conn: &Connection,
    from: i64,
    until: i64,
    cap: usize,
) -> Result<usize, StoreError> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM job_stats
             WHERE next_fire_at IS NOT NULL AND enabled = 1 AND paused = 0
               AND next_fire_at >= ?1 AND next_fire_at < ?2 LIMIT ?3)",
        )?
        .query_row(params![from, until, cap as i64], |r| r.get(0))?;
    Ok(n as usize)
}

/// Moves a job's next fire (None: it never fires again).
pub fn set_next_fire(conn: &Connection, pk: i64, next: Option<i64>) -> Result<(), StoreError> {
    let changed = conn
        .prepare_cached("UPDATE job_stats SET next_fire_at = ?2 WHERE pk = ?1")?
        .execute(params![pk, next])?;
    super::lifecycle::stats_written(changed, pk)
}

/// The internal key of a job, for run queries.
pub fn pk_of(conn: &Connection, id: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT pk FROM jobs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// SQL condition and parameters for "carries all these job labels"
/// (parameters numbered from `first`).
pub(crate) fn label_condition(
    selector: &std::collections::BTreeMap<String, String>,
    first: usize,
) -> (String, Vec<String>) {
    let mut sql = String::new();
    let mut args = Vec::with_capacity(selector.len() * 2);
    for (i, (k, v)) in selector.iter().enumerate() {
        let n = first + 2 * i;
        sql.push_str(&format!(" AND json_extract(labels, ?{n}) = ?{}", n + 1));
        // Keys are validated (no quotes), so quoting the key is exact.
        args.push(format!("$.\"{k}\""));
        args.push(v.clone());
    }
    (sql, args)
}

/// Like [`list`], limited to jobs carrying all the labels of `selector`.
pub fn list_matching(
    conn: &Connection,
    selector: &std::collections::BTreeMap<String, String>,
    cursor: Option<i64>,
    limit: usize,
) -> Result<(Vec<Job>, Option<i64>), StoreError> {
    if selector.is_empty() {
        return list(conn, cursor, limit);
    }
    let (cond, args) = label_condition(selector, 3);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS}, pk FROM {WITH_STATS} WHERE pk < ?1{cond} ORDER BY pk DESC LIMIT ?2"
    ))?;
    let mut values: Vec<rusqlite::types::Value> =
        vec![cursor.unwrap_or(i64::MAX).into(), (limit as i64 + 1).into()];
    values.extend(args.into_iter().map(rusqlite::types::Value::from));
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    let mut items = Vec::with_capacity(limit.min(1024));
    let mut last_pk = None;
    while let Some(row) = rows.next()? {
        if items.len() == limit {
            return Ok((items, last_pk));
        }
        last_pk = Some(row.get::<_, i64>(14)?);
        items.push(job_from_row(row)?);
    }
    Ok((items, None))
}

/// Ids of every job carrying all the labels of `selector` (non-empty).
/// Whether job `id` exists and carries every label of `selector`.
pub fn has_labels(
    conn: &Connection,
    id: &str,
    selector: &std::collections::BTreeMap<String, String>,
) -> Result<bool, StoreError> {
    let (cond, args) = label_condition(selector, 2);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1{cond})"
    ))?;
    let mut values: Vec<rusqlite::types::Value> = vec![id.to_string().into()];
    values.extend(args.into_iter().map(rusqlite::types::Value::from));
    Ok(stmt.query_row(rusqlite::params_from_iter(values), |r| r.get(0))?)
}

pub fn ids_matching(
    conn: &Connection,
    selector: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<String>, StoreError> {
    let (cond, args) = label_condition(selector, 1);
    let mut stmt = conn.prepare_cached(&format!("SELECT id FROM jobs WHERE 1 = 1{cond}"))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The stored canonical spec JSON of a job, if it exists.
pub fn spec_text(conn: &Connection, id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT spec FROM jobs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;

    /// A paused or disabled job shows no next fire; resumed, it does again.
    #[tokio::test]
    async fn a_job_that_does_not_fire_shows_no_next_fire() {
        let (_dir, store) = temp_store();
        let shown = store
            .write(|c| {
                let spec = |enabled: bool| -> JobSpec {
                    serde_json::from_value(serde_json::json!({"schedule": "@every 1m",
                        "enabled": enabled, "executor": {"type": "exec", "argv": ["true"]}}))
                    .unwrap()
                };
                let next = |_: i64| Some(60_000);
                upsert(c, "j", &spec(true), 0, next)?;
                let fresh = require(c, "j")?.next_fire_at;
                let paused = set_paused(c, "j", true, 1, |_, _| Some(60_000))?.next_fire_at;
                let resumed = set_paused(c, "j", false, 2, |_, _| Some(62_000))?.next_fire_at;
                upsert(c, "j", &spec(false), 3, next)?;
                let disabled = require(c, "j")?.next_fire_at;
                Ok((fresh, paused, resumed, disabled))
            })
            .await
            .unwrap();
        assert_eq!(shown, (Some(60_000), None, Some(62_000), None));
        store.close().await;
    }

    #[tokio::test]
    async fn a_due_row_that_does_not_parse_is_an_error_naming_the_job() {
        let (_dir, store) = temp_store();
        let due = store
            .write(|c| {
                let spec: JobSpec = serde_json::from_str(
                    r#"{"schedule":"@every 1s","executor":{"type":"exec","argv":["true"]}}"#,
                )
                .unwrap();
                for id in ["good", "bad-misfire", "bad-kind"] {
                    upsert(c, id, &spec, 0, |_| Some(1_000))?;
                }
                c.execute(
                    "UPDATE jobs SET misfire = 'sometimes' WHERE id = 'bad-misfire'",
                    [],
                )?;
                c.execute(
                    "UPDATE jobs SET executor_kind = 'ssh' WHERE id = 'bad-kind'",
                    [],
                )?;
                due(c, 10_000, 10)
            })
            .await
            .unwrap();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for d in due {
            match d {
                Ok(j) => good.push(j.id),
                Err(b) => bad.push(format!("{}: {}", b.id, b.error)),
            }
        }
        assert_eq!(good, vec!["good"]);
        bad.sort();
        assert_eq!(bad.len(), 2);
        assert!(
            bad[0].starts_with("bad-kind:") && bad[0].contains("unknown executor \"ssh\""),
            "{bad:?}"
        );
        assert!(
            bad[1].contains("job bad-misfire: unknown misfire policy \"sometimes\""),
            "{bad:?}"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn has_labels_matches_all_labels_of_the_selector() {
        let (_dir, store) = temp_store();
        let got = store
            .write(|c| {
                let spec: JobSpec = serde_json::from_str(
                    r#"{"schedule":"@yearly","labels":{"team":"billing","tier":"1"},"executor":{"type":"exec","argv":["true"]}}"#,
                )
                .unwrap();
                upsert(c, "a", &spec, 0, |_| None)?;
                let sel = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
                    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
                };
                Ok((
                    has_labels(c, "a", &sel(&[("team", "billing")]))?,
                    has_labels(c, "a", &sel(&[("team", "billing"), ("tier", "1")]))?,
                    has_labels(c, "a", &sel(&[("team", "ops")]))?,
                    has_labels(c, "nope", &sel(&[("team", "billing")]))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(got, (true, true, false, false));
        store.close().await;
    }
}

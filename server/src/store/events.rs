//! The `events` table: the outbox. Every function that changes a run, job,
//! node, key or join token appends its event here inside the same writer
//! batch, so an event exists exactly when its change committed. Ids only
//! grow — pruning never deletes the newest event, so the next rowid is past
//! every id handed out — and a reader's cursor (`after`, SSE
//! `Last-Event-ID`) stays valid across restarts and failovers. Pruned by
//! count and age like run history.

use super::prepared::Prepared;
use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::Value;
pub use sundial_proto::event::EventType;
use sundial_proto::event::{Event, TypePattern};
use sundial_proto::time::format_ms;
use sundial_proto::{RunState, Trigger};

/// Appends an event about a job, run or node (any may be absent).
pub fn append(
    conn: &Connection,
    at: i64,
    kind: EventType,
    job_id: Option<&str>,
    run_id: Option<i64>,
    node: Option<&str>,
    data: &Value,
) -> Result<(), StoreError> {
    insert(
        &mut Prepared::new(conn),
        at,
        kind,
        job_id,
        run_id,
        node,
        &data.to_string(),
    )
}

/// The one-row insert every event goes through. A single-row `VALUES`
/// insert needs no statement journal; an `INSERT … SELECT` calling SQL
/// functions does (SQLite must be able to undo its earlier rows), and
/// truncating that journal after each run event was ~10 % of the writer's
/// time at 10,000 runs/s. Held in the batch's [`Prepared`]: the run path
/// writes one per transition.
fn insert(
    p: &mut Prepared<'_>,
    at: i64,
    kind: EventType,
    job_id: Option<&str>,
    run_id: Option<i64>,
    node: Option<&str>,
    data: &str,
) -> Result<(), StoreError> {
    p.stmt(
        "INSERT INTO events (at, type, job_id, run_id, node_id, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![at, kind.as_str(), job_id, run_id, node, data])?;
    Ok(())
}

/// Appends an event about a job known by its internal key.
pub fn append_job(
    conn: &Connection,
    at: i64,
    kind: EventType,
    job_pk: i64,
    data: &Value,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO events (at, type, job_id, data) SELECT ?1, ?2, id, ?4 FROM jobs WHERE pk = ?3",
    )?
    .execute(params![at, kind.as_str(), job_pk, data.to_string()])?;
    Ok(())
}

/// Jobs that just became overdue (no success within their
/// `alert.overdue_after`, counted from their creation when they never
/// succeeded): marks each with `overdue_since` and writes one `job.overdue`.
/// Paused and disabled jobs are not watched. Returns how many.
pub fn mark_overdue(conn: &Connection, now: i64) -> Result<usize, StoreError> {
    let due: Vec<(i64, i64, Option<i64>)> = conn
        .prepare_cached(&format!(
            "SELECT pk, overdue_after_ms, last_success_at FROM {}
             WHERE overdue_after_ms IS NOT NULL AND overdue_since IS NULL
               AND enabled = 1 AND paused = 0
               AND coalesce(last_success_at, created_at) + overdue_after_ms <= ?1",
            super::jobs::WITH_STATS
        ))?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (pk, after_ms, last) in &due {
        conn.prepare_cached("UPDATE jobs SET overdue_since = ?2 WHERE pk = ?1")?
            .execute(params![pk, now])?;
        append_job(
            conn,
            now,
            EventType::JobOverdue,
            *pk,
            &serde_json::json!({
                "overdue_after": sundial_proto::Duration::from_millis(*after_ms as u64).map(|d| d.to_string()),
                "last_success_at": last.map(sundial_proto::time::format_ms),
            }),
        )?;
    }
    Ok(due.len())
}

/// An overdue job whose `alert.overdue_after` was just raised past the time
/// since its last success (or creation) is not overdue any more: clears the
/// mark and writes `job.recovered` (`run_id` null), so the new threshold can
/// fire its own `job.overdue` later. Returns whether it did.
pub fn reconsider_overdue(conn: &Connection, pk: i64, now: i64) -> Result<bool, StoreError> {
    let since: Option<i64> = conn
        .prepare_cached(&format!(
            "SELECT overdue_since FROM {}
             WHERE pk = ?1 AND overdue_since IS NOT NULL AND overdue_after_ms IS NOT NULL
               AND coalesce(last_success_at, created_at) + overdue_after_ms > ?2",
            super::jobs::WITH_STATS
        ))?
        .query_row(params![pk, now], |r| r.get(0))
        .optional()?;
    let Some(since) = since else {
        return Ok(false);
    };
    conn.prepare_cached("UPDATE jobs SET overdue_since = NULL WHERE pk = ?1")?
        .execute([pk])?;
    append_job(
        conn,
        now,
        EventType::JobRecovered,
        pk,
        &serde_json::json!({ "overdue_since": sundial_proto::time::format_ms(since), "run_id": null }),
    )?;
    Ok(true)
}

/// A run's details as its events carry them (`data`): `{"attempt",
/// "trigger", "scheduled_for", "exit_code", "error", "not_before"}`, from
/// the run's row as the transition leaves it. Assignment builds this from
/// what it read and wrote, an ending from what it read before it wrote
/// (`lifecycle::finish`); a retry reads it back with [`stored_run`]. Either
/// way the JSON is built here, not in SQL.
#[derive(Debug, Clone)]
pub struct RunDetails {
    pub job_id: String,
    /// The assigned node, else the last one, else the slot's own node.
    pub node: Option<String>,
    pub attempt: u32,
    pub trigger: Trigger,
    pub scheduled_for: i64,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// Set only while the run waits for a retry's backoff.
    pub not_before: Option<i64>,
}

#[derive(Serialize)]
struct RunData<'a> {
    attempt: u32,
    trigger: &'static str,
    scheduled_for: String,
    exit_code: Option<i32>,
    error: Option<&'a str>,
    not_before: Option<String>,
}

/// Appends an event about a run from its details.
pub fn append_run_details(
    p: &mut Prepared<'_>,
    at: i64,
    kind: EventType,
    run_id: i64,
    d: &RunDetails,
) -> Result<(), StoreError> {
    let data = RunData {
        attempt: d.attempt,
        trigger: d.trigger.as_str(),
        scheduled_for: format_ms(d.scheduled_for),
        exit_code: d.exit_code,
        error: d.error.as_deref(),
        not_before: d.not_before.map(format_ms),
    };
    let data = serde_json::to_string(&data)
        .map_err(|e| StoreError::Corrupt(format!("run {run_id}: event data: {e}")))?;
    insert(
        p,
        at,
        kind,
        Some(&d.job_id),
        Some(run_id),
        d.node.as_deref(),
        &data,
    )
}

/// The columns [`details_at`] reads, for a caller's own `SELECT` over
/// `runs r JOIN jobs j ON j.pk = r.job`.
macro_rules! run_details_columns {
    () => {
        "j.id, coalesce(r.assigned_node, r.last_node, nullif(r.node, '')), r.attempt,
         r.trigger, r.scheduled_for, r.exit_code, r.error"
    };
}
pub(crate) use run_details_columns;
/// How many columns [`run_details_columns`] names: a caller's own columns
/// after them start at `at +` this.
pub(crate) const RUN_DETAILS_WIDTH: usize = 7;

/// A run's details from [`run_details_columns`] read at column `at` onwards
/// (`not_before` unset: only a pending run has one).
pub(crate) fn details_at(r: &Row<'_>, at: usize, run_id: i64) -> Result<RunDetails, StoreError> {
    let trigger: Trigger = super::run_value(run_id, super::column_str(r, at + 3)?)?;
    Ok(RunDetails {
        job_id: r.get(at)?,
        node: r.get(at + 1)?,
        attempt: r.get(at + 2)?,
        trigger,
        scheduled_for: r.get(at + 4)?,
        exit_code: r.get(at + 5)?,
        error: r.get(at + 6)?,
        not_before: None,
    })
}

/// Reads a run's event details from its row (None: the run is gone).
pub fn stored_run(conn: &Connection, run_id: i64) -> Result<Option<RunDetails>, StoreError> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        run_details_columns!(),
        ", r.state, r.not_before FROM runs r JOIN jobs j ON j.pk = r.job WHERE r.id = ?1"
    ))?;
    let mut rows = stmt.query([run_id])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let mut details = details_at(r, 0, run_id)?;
    let state: RunState = super::run_value(run_id, super::column_str(r, RUN_DETAILS_WIDTH)?)?;
    let not_before: i64 = r.get(RUN_DETAILS_WIDTH + 1)?;
    details.not_before = (state == RunState::Pending && not_before > 0).then_some(not_before);
    Ok(Some(details))
}

/// Appends an event about a run, its details read from the run's row (see
/// [`RunDetails`]). A run that is gone gets no event.
pub fn append_run(
    p: &mut Prepared<'_>,
    at: i64,
    kind: EventType,
    run_id: i64,
) -> Result<(), StoreError> {
    match stored_run(p.conn(), run_id)? {
        Some(run) => append_run_details(p, at, kind, run_id, &run),
        None => Ok(()),
    }
}

/// The event of a run that reached `state` (a terminal state or running).
pub fn for_state(state: sundial_proto::RunState) -> EventType {
    use sundial_proto::RunState as S;
    match state {
        S::Pending => EventType::RunRetrying,
        S::Running => EventType::RunStarted,
        S::Succeeded => EventType::RunSucceeded,
        S::Failed => EventType::RunFailed,
        S::TimedOut => EventType::RunTimedOut,
        S::Lost => EventType::RunLost,
        S::Cancelled => EventType::RunCancelled,
        S::Skipped => EventType::RunSkipped,
    }
}

/// Filters for [`list`]; empty means "any".
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub types: Vec<TypePattern>,
    /// One job (narrows the scan itself).
    pub job: Option<String>,
    /// Any of these jobs (a webhook's selector).
    pub job_ids: Vec<String>,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        (self.types.is_empty() || self.types.iter().any(|p| p.matches(e.kind)))
            && self
                .job
                .as_deref()
                .is_none_or(|j| e.job_id.as_deref() == Some(j))
            && (self.job_ids.is_empty()
                || e.job_id.as_ref().is_some_and(|j| self.job_ids.contains(j)))
    }
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    let kind: String = row.get(2)?;
    let data: String = row.get(6)?;
    let bad = |i: usize, e: String| {
        let id: i64 = row.get(0).unwrap_or_default();
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("event {id}: {e}").into(),
        )
    };
    Ok(Event {
        id: row.get(0)?,
        at: row.get(1)?,
        kind: kind.parse().map_err(|e| bad(2, e))?,
        job_id: row.get(3)?,
        run_id: row.get(4)?,
        node: row.get(5)?,
        data: serde_json::from_str(&data).map_err(|e| bad(6, e.to_string()))?,
    })
}

/// Most events scanned per page when a filter skips many of them.
const SCAN_LIMIT: usize = 10_000;

/// A page of events.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Event>,
    /// Where the next read continues: the last id examined (also when the
    /// filter skipped it, so a sparse filter never rescans).
    pub cursor: i64,
    /// More events are already stored after `cursor`.
    pub more: bool,
}

/// Events after `after`, oldest first, at most `limit`.
pub fn list(
    conn: &Connection,
    after: i64,
    filter: &Filter,
    limit: usize,
) -> Result<Page, StoreError> {
    // The job filter is applied here like the others, not in SQL: without
    // an index on job_id, SQL would scan the whole table for a quiet job,
    // and the cursor would not move past the other jobs' events.
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, type, job_id, run_id, node_id, data FROM events
         WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![after, SCAN_LIMIT as i64 + 1])?;
    let mut page = Page {
        items: Vec::with_capacity(limit.min(1024)),
        cursor: after,
        more: false,
    };
    let mut scanned = 0;
    while let Some(row) = rows.next()? {
        if scanned == SCAN_LIMIT || page.items.len() == limit {
            page.more = true;
            break;
        }
        scanned += 1;
        let e = from_row(row)?;
        page.cursor = e.id;
        if filter.matches(&e) {
            page.items.push(e);
        }
    }
    Ok(page)
}

/// The newest event id (0 when there is none) and the number stored.
pub fn stats(conn: &Connection) -> Result<(i64, i64), StoreError> {
    Ok(conn.query_row(
        "SELECT coalesce(max(id), 0), count(*) FROM events",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Deletes events older than `min_at` and beyond the newest `keep`, at most
/// `batch` per call (so a sweep never holds the writer for long), but never
/// the newest event: it keeps ids growing. An event some webhook has not
/// delivered or given up yet (past its cursor) is kept beyond `keep`; only
/// age removes it (`--events-max-age` is at least `--webhook-retry-for`, by
/// which time the webhook has given it up). Returns how many were deleted.
pub fn prune(conn: &Connection, keep: u64, min_at: i64, batch: usize) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM events WHERE id IN (
                 SELECT id FROM events
                 WHERE (at < ?1
                    OR (id <= coalesce((SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?2), -1)
                        AND id <= coalesce((SELECT min(cursor) FROM webhooks), id)))
                   AND id < (SELECT max(id) FROM events)
                 ORDER BY id LIMIT ?3)",
        )?
        .execute(params![min_at, keep as i64, batch as i64])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use serde_json::json;

    #[tokio::test]
    async fn the_run_details_width_counts_its_columns() {
        let (_dir, store) = temp_store();
        let n = store
            .read(|c| {
                let stmt = c.prepare(concat!(
                    "SELECT ",
                    run_details_columns!(),
                    " FROM runs r JOIN jobs j ON j.pk = r.job"
                ))?;
                Ok(stmt.column_count())
            })
            .await
            .unwrap();
        assert_eq!(n, RUN_DETAILS_WIDTH);
        store.close().await;
    }

    #[tokio::test]
    async fn ids_grow_filters_apply_and_pruning_keeps_the_cursor_valid() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                // Start from an empty table (opening the store recorded its promotion).
                c.execute("DELETE FROM events", [])?;
                for i in 0..10 {
                    let kind = if i % 2 == 0 {
                        EventType::JobCreated
                    } else {
                        EventType::RunFailed
                    };
                    let job = if i < 5 { "a" } else { "b" };
                    append(c, i, kind, Some(job), None, None, &json!({"i": i}))?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let all = store
            .read(|c| list(c, 0, &Filter::default(), 100))
            .await
            .unwrap();
        assert_eq!(all.items.len(), 10);
        assert!(!all.more, "caught up");
        let ids: Vec<i64> = all.items.iter().map(|e| e.id).collect();
        assert_eq!(all.cursor, *ids.last().unwrap());
        assert!(ids.windows(2).all(|w| w[1] > w[0]));
        let filter = Filter {
            types: vec!["run.*".parse().unwrap()],
            job: Some("b".into()),
            job_ids: Vec::new(),
        };
        let b_runs = store.read(move |c| list(c, 0, &filter, 100)).await.unwrap();
        assert_eq!(
            b_runs
                .items
                .iter()
                .map(|e| e.data["i"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            vec![5, 7, 9]
        );
        // A job with no events: nothing, but the cursor moves past the
        // others' events, so the next read does not scan them again.
        let quiet = Filter {
            job: Some("nobody".into()),
            ..Filter::default()
        };
        let none = store.read(move |c| list(c, 0, &quiet, 100)).await.unwrap();
        assert!(none.items.is_empty());
        assert_eq!(none.cursor, all.cursor);
        // A page ends at `limit`, with a cursor to continue from.
        let page = store
            .read(|c| list(c, 0, &Filter::default(), 3))
            .await
            .unwrap();
        assert_eq!(page.items.len(), 3);
        assert!(page.more);
        assert_eq!(page.cursor, page.items[2].id);
        // Prune to the newest 4, then append: ids keep growing past the old maximum.
        let max = *ids.last().unwrap();
        let deleted = store.write(|c| prune(c, 4, 0, 100)).await.unwrap();
        assert_eq!(deleted, 6);
        store
            .write(|c| prune(c, 0, i64::MAX, 100).map(|_| ()))
            .await
            .unwrap();
        store
            .write(|c| append(c, 20, EventType::HaPromoted, None, None, None, &json!({})))
            .await
            .unwrap();
        let after = store
            .read(|c| list(c, 0, &Filter::default(), 10))
            .await
            .unwrap()
            .items;
        // Pruning everything kept the newest event, so the next id is past it.
        assert_eq!(after.len(), 2, "{after:?}");
        assert_eq!(after[0].id, max);
        assert!(after[1].id > max, "{} > {max}", after[1].id);
        store.close().await;
    }

    /// Raising an overdue job's threshold past its silence clears the mark
    /// (one `job.recovered`), so the new threshold alerts on its own.
    #[tokio::test]
    async fn a_raised_threshold_recovers_an_overdue_job() {
        let (_dir, store) = temp_store();
        let spec = |after: &str| -> sundial_proto::JobSpec {
            serde_json::from_value(json!({"schedule": "@yearly",
                "executor": {"type": "exec", "argv": ["true"]},
                "alert": {"overdue_after": after}}))
            .unwrap()
        };
        let write = |after: &'static str, now: i64| {
            store.write(move |c| {
                crate::store::jobs::write_spec(c, "od", &spec(after), now, |_| None).map(|_| ())
            })
        };
        let last = || {
            store.read(|c| {
                Ok(c.query_row(
                    "SELECT type, data FROM events WHERE type IN ('job.overdue', 'job.recovered')
                     ORDER BY id DESC LIMIT 1",
                    [],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )?)
            })
        };
        write("2s", 0).await.unwrap();
        assert_eq!(store.write(|c| mark_overdue(c, 3_000)).await.unwrap(), 1);
        // Lowered or unchanged: still overdue, nothing written.
        write("1s", 4_000).await.unwrap();
        assert_eq!(last().await.unwrap().0, "job.overdue");
        // Raised past the 4 s of silence: recovered, and quiet under 1 h.
        write("1h", 4_000).await.unwrap();
        let (kind, data) = last().await.unwrap();
        assert_eq!(kind, "job.recovered");
        assert!(data.contains(r#""run_id":null"#), "{data}");
        assert_eq!(store.write(|c| mark_overdue(c, 5_000)).await.unwrap(), 0);
        assert_eq!(
            store.write(|c| mark_overdue(c, 3_600_001)).await.unwrap(),
            1
        );
        store.close().await;
    }

    /// Beyond `keep`, events a webhook has not delivered yet stay; age
    /// still removes them.
    #[tokio::test]
    async fn pruning_keeps_what_a_webhook_has_not_delivered() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                (0..10).try_for_each(|i| {
                    append(c, i, EventType::JobCreated, None, None, None, &json!({}))
                })
            })
            .await
            .unwrap();
        let page = store
            .read(|c| list(c, 0, &Filter::default(), 100))
            .await
            .unwrap();
        let behind = page.items[2].id;
        store
            .write(move |c| {
                c.execute(
                    "INSERT INTO webhooks (id, spec, salt, cursor, created_at)
                     VALUES ('wh_slow', '{}', x'00', ?1, 0)",
                    [behind],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let deleted = store.write(|c| prune(c, 2, 0, 100)).await.unwrap();
        assert_eq!(deleted, 3, "only what the webhook is past");
        store
            .write(|c| prune(c, 2, i64::MAX, 100).map(|_| ()))
            .await
            .unwrap();
        let (_, left) = store.read(stats).await.unwrap();
        assert_eq!(left, 1, "age removes all but the newest");
        store.close().await;
    }
}

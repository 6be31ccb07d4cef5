//! The console's read-only queries: the overview's counts and lists and the
//! jobs page's search. Each is indexed or bounded (see `docs/benchmarks.md`
//! for their time with 100,000 jobs); rows become [`Job`]s through
//! [`jobs::get`], so the job encoding stays in one place.

use crate::store::{jobs, StoreError};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection};
use std::collections::BTreeMap;
use sundial_proto::{Job, RunState};

/// Runs created since `since`, counted by state (newest first, stops at the
/// first older run; ids grow with creation time). Reads at most `cap` rows;
/// the flag says whether the count stopped there (shown as "at least").
pub fn runs_by_state_since(
    conn: &Connection,
    since: i64,
    cap: usize,
) -> Result<(Vec<(RunState, u64)>, bool), StoreError> {
    let mut stmt = conn.prepare_cached("SELECT state, created_at FROM runs ORDER BY id DESC")?;
    let mut rows = stmt.query([])?;
    let mut counts = [0u64; RunState::ALL.len()];
    let mut seen = 0usize;
    let mut capped = false;
    while let Some(row) = rows.next()? {
        let created: i64 = row.get(1)?;
        if created < since {
            break;
        }
        if seen >= cap {
            capped = true;
            break;
        }
        seen += 1;
        let state: String = row.get(0)?;
        if let Some(i) = RunState::ALL.iter().position(|s| s.as_str() == state) {
            counts[i] += 1;
        }
    }
    let by_state = RunState::ALL
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (*s, n))
        .collect();
    Ok((by_state, capped))
}

/// Jobs whose latest run failed, timed out or was lost, most recent first.
pub fn failing_jobs(conn: &Connection, limit: usize) -> Result<Vec<Job>, StoreError> {
    ids_to_jobs(
        conn,
        &format!(
            "SELECT id FROM {} WHERE last_state IN ('failed', 'timed_out', 'lost')
             ORDER BY last_run_at DESC LIMIT ?1",
            jobs::WITH_STATS
        ),
        params![limit as i64],
    )
}

/// Jobs marked overdue (no success within their `overdue_after`), longest
/// overdue first (the partial index `jobs_overdue`), and how many there are.
pub fn overdue_since(conn: &Connection, limit: usize) -> Result<(Vec<Job>, u64), StoreError> {
    let total: i64 = conn
        .prepare_cached("SELECT count(*) FROM jobs WHERE overdue_since IS NOT NULL")?
        .query_row([], |r| r.get(0))?;
    let jobs = ids_to_jobs(
        conn,
        "SELECT id FROM jobs WHERE overdue_since IS NOT NULL ORDER BY overdue_since LIMIT ?1",
        params![limit as i64],
    )?;
    Ok((jobs, total as u64))
}

/// Active jobs whose next fire is more than `late_ms` in the past (the
/// scheduler should have fired them): overdue.
pub fn overdue_jobs(
    conn: &Connection,
    now: i64,
    late_ms: i64,
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    ids_to_jobs(
        conn,
        &format!(
            "SELECT id FROM {}
             WHERE next_fire_at IS NOT NULL AND enabled = 1 AND paused = 0 AND next_fire_at < ?1
             ORDER BY next_fire_at LIMIT ?2",
            jobs::WITH_STATS
        ),
        params![now - late_ms, limit as i64],
    )
}

/// Active jobs firing in `[from, to)`, earliest first, and how many there are.
pub fn next_fires(
    conn: &Connection,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<(Vec<(String, i64)>, u64), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, next_fire_at FROM {}
         WHERE next_fire_at IS NOT NULL AND enabled = 1 AND paused = 0
           AND next_fire_at >= ?1 AND next_fire_at < ?2
         ORDER BY next_fire_at LIMIT ?3",
        jobs::WITH_STATS
    ))?;
    let rows = stmt.query_map(params![from, to, limit as i64], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    let items = rows.collect::<Result<Vec<_>, _>>()?;
    let total: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM job_stats
             WHERE next_fire_at IS NOT NULL AND enabled = 1 AND paused = 0
               AND next_fire_at >= ?1 AND next_fire_at < ?2",
        )?
        .query_row(params![from, to], |r| r.get(0))?;
    Ok((items, total as u64))
}

fn ids_to_jobs(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Job>, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached(sql)?
        .query_map(params, |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(job) = jobs::get(conn, &id)? {
            out.push(job);
        }
    }
    Ok(out)
}

/// Latest-run filter of the jobs page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastState {
    Any,
    /// No run yet.
    Never,
    Is(RunState),
}

/// Sort orders of the jobs page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// By id, A→Z (the unique index).
    Id,
    /// Soonest next fire first; jobs that never fire again last.
    NextFire,
    /// Most recent run first; jobs that never ran last.
    LastRun,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        match s {
            "" | "id" => Some(Sort::Id),
            "next" => Some(Sort::NextFire),
            "last" => Some(Sort::LastRun),
            _ => None,
        }
    }

    fn order_by(self) -> &'static str {
        match self {
            Sort::Id => "id",
            Sort::NextFire => "next_fire_at IS NULL, next_fire_at, id",
            Sort::LastRun => "last_run_at IS NULL, last_run_at DESC, id",
        }
    }
}

/// The jobs page's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSearch {
    /// Case-insensitive substring of the job id ('' = any).
    pub text: String,
    /// Job labels the job must all carry (validated keys and values).
    pub labels: BTreeMap<String, String>,
    pub state: LastState,
    /// Some(true): paused only; Some(false): not paused only.
    pub paused: Option<bool>,
    pub sort: Sort,
    pub offset: usize,
    pub limit: usize,
}

/// One page of jobs matching `q`, and the number of matches.
pub fn search_jobs(conn: &Connection, q: &JobSearch) -> Result<(Vec<Job>, u64), StoreError> {
    // Only fixed SQL fragments are concatenated; every value is a numbered
    // parameter (the label condition is the store's, `jobs::label_condition`).
    let mut filter = String::from(" WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if !q.text.is_empty() {
        args.push(Value::Text(q.text.to_lowercase()));
        filter.push_str(&format!(" AND instr(lower(id), ?{}) > 0", args.len()));
    }
    match q.state {
        LastState::Any => {}
        LastState::Never => filter.push_str(" AND last_state IS NULL"),
        LastState::Is(s) => {
            args.push(Value::Text(s.as_str().to_string()));
            filter.push_str(&format!(" AND last_state = ?{}", args.len()));
        }
    }
    if let Some(p) = q.paused {
        args.push(Value::Integer(p as i64));
        filter.push_str(&format!(" AND paused = ?{}", args.len()));
    }
    let (cond, label_args) = jobs::label_condition(&q.labels, args.len() + 1);
    filter.push_str(&cond);
    args.extend(label_args.into_iter().map(Value::Text));
    // The narrow rows (counters, next fire, paused) only when the filter or
    // the order reads them: a join over every job costs the plain pages
    // more than it saves them. The count reads only the table(s) its filter
    // needs (every job has its narrow row). A page that joins walks `jobs`
    // first (`CROSS JOIN` fixes the order): by id it then stops after its
    // page instead of sorting every match, which the planner, left alone,
    // chose when both filters were on the narrow row (30 → 70 ms in the
    // console bench).
    const JOBS_THEN_STATS: &str = "jobs CROSS JOIN job_stats USING (pk)";
    let reads_jobs = !q.text.is_empty() || !q.labels.is_empty();
    let reads_stats = q.state != LastState::Any || q.paused.is_some();
    let count_from = match (reads_jobs, reads_stats) {
        (_, false) => "jobs",
        (false, true) => "job_stats",
        (true, true) => JOBS_THEN_STATS,
    };
    let from = if reads_stats || q.sort != Sort::Id {
        JOBS_THEN_STATS
    } else {
        "jobs"
    };
    let total: i64 = conn
        .prepare_cached(&format!("SELECT count(*) FROM {count_from}{filter}"))?
        .query_row(params_from_iter(args.iter()), |r| r.get(0))?;
    let n = args.len();
    let mut page_args = args;
    page_args.push(Value::Integer(q.limit as i64));
    page_args.push(Value::Integer(q.offset as i64));
    let jobs = ids_to_jobs(
        conn,
        &format!(
            "SELECT id FROM {from}{filter} ORDER BY {} LIMIT ?{} OFFSET ?{}",
            q.sort.order_by(),
            n + 1,
            n + 2
        ),
        params_from_iter(page_args.iter()),
    )?;
    Ok((jobs, total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use sundial_proto::JobSpec;

    fn spec(desc: &str) -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "schedule": "@every 1h", "executor": {"type": "exec", "argv": ["true"]},
            "description": desc
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn search_filters_sorts_and_pages() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                for i in 0..30 {
                    let id = format!("job-{i:02}");
                    jobs::upsert(c, &id, &spec("d"), 0, |_| Some(1000 - i))?;
                }
                jobs::set_paused(c, "job-07", true, 0, |_, _| None)?;
                let mut labelled = spec("d");
                labelled.labels = [("team", "pay"), ("tier", "1")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                jobs::upsert(c, "job-05", &labelled, 0, |_| Some(2000))?;
                labelled.labels.remove("tier");
                jobs::upsert(c, "job-06", &labelled, 0, |_| Some(2000))?;
                c.execute(
                    "UPDATE job_stats SET last_state = 'failed', last_run_at = 5
                     WHERE pk = (SELECT pk FROM jobs WHERE id = 'job-03')",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let base = JobSearch {
            text: String::new(),
            labels: BTreeMap::new(),
            state: LastState::Any,
            paused: None,
            sort: Sort::Id,
            offset: 0,
            limit: 10,
        };
        let (page, total) = store
            .read({
                let q = base.clone();
                move |c| search_jobs(c, &q)
            })
            .await
            .unwrap();
        assert_eq!(total, 30);
        assert_eq!(page.len(), 10);
        assert_eq!(page[0].id, "job-00");
        let q = JobSearch {
            offset: 25,
            ..base.clone()
        };
        let (page, _) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!(page.len(), 5);
        let q = JobSearch {
            text: "JOB-1".into(),
            ..base.clone()
        };
        let (_, total) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!(total, 10);
        let q = JobSearch {
            paused: Some(true),
            ..base.clone()
        };
        let (page, total) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!((total, page[0].id.as_str()), (1, "job-07"));
        let q = JobSearch {
            state: LastState::Is(RunState::Failed),
            ..base.clone()
        };
        let (page, total) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!((total, page[0].id.as_str()), (1, "job-03"));
        let q = JobSearch {
            state: LastState::Never,
            ..base.clone()
        };
        let (_, total) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!(total, 29);
        let q = JobSearch {
            sort: Sort::NextFire,
            ..base.clone()
        };
        let (page, _) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!(page[0].id, "job-29");
        // Runs of the last hour, counted up to a cap.
        store
            .write(|c| {
                let pk = jobs::pk_of(c, "job-01")?.unwrap_or_default();
                for (i, state) in ["succeeded", "failed", "succeeded"].iter().enumerate() {
                    c.execute(
                        "INSERT INTO runs (job, trigger, scheduled_for, state, created_at)
                         VALUES (?1, 'manual', ?2, ?3, ?4)",
                        rusqlite::params![pk, i as i64, state, 100 + i as i64],
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let (counts, capped) = store
            .read(|c| runs_by_state_since(c, 101, 10))
            .await
            .unwrap();
        assert!(!capped);
        assert_eq!(
            counts,
            vec![(RunState::Succeeded, 1), (RunState::Failed, 1)]
        );
        let (_, capped) = store.read(|c| runs_by_state_since(c, 0, 2)).await.unwrap();
        assert!(capped);
        // Job labels: every pair must match (AND), beside the other filters.
        let with = |pairs: &[(&str, &str)]| JobSearch {
            labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..base.clone()
        };
        let q = with(&[("team", "pay")]);
        let (page, total) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!((total, page[0].id.as_str()), (2, "job-05"));
        let q = with(&[("team", "pay"), ("tier", "1")]);
        let (page, total) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!((total, page[0].id.as_str()), (1, "job-05"));
        let q = JobSearch {
            text: "06".into(),
            ..with(&[("team", "pay")])
        };
        let (page, total) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!((total, page[0].id.as_str()), (1, "job-06"));
        let q = with(&[("team", "ops")]);
        let (_, total) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!(total, 0);
        // Overdue jobs (marked by the overdue watch), longest overdue first.
        store
            .write(|c| {
                c.execute(
                    "UPDATE jobs SET overdue_since = 50 WHERE id IN ('job-11', 'job-12')",
                    [],
                )?;
                c.execute("UPDATE jobs SET overdue_since = 40 WHERE id = 'job-12'", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let (late, total) = store.read(|c| overdue_since(c, 1)).await.unwrap();
        assert_eq!((total, late[0].id.as_str()), (2, "job-12"));
        assert_eq!(late[0].counters.overdue_since, Some(40));
        // A quote in the search text is data, not SQL.
        let q = JobSearch {
            text: "' OR 1=1 --".into(),
            ..base
        };
        let (_, total) = store.read(move |c| search_jobs(c, &q)).await.unwrap();
        assert_eq!(total, 0);
        store.close().await;
    }
}

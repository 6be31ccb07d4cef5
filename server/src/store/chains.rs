//! Job chains: a job's `after` list as rows of `job_after` (kept in step by
//! [`set_edges`] on every upsert; [`Graph::check`] refuses unknown upstreams
//! and cycles, for a bulk apply's dry run too), and [`fire`], which the run
//! lifecycle calls in the same transaction as a run's final transition:
//! when that ends an upstream *slot* in a listed state, each follower gets
//! exactly one run (`trigger: chain`, `upstream_run` = the slot's first run; a UNIQUE index
//! makes a second one impossible, across crashes and failovers too).
//!
//! A broadcast slot (one run per node) ends when its last run ends; its
//! state is `succeeded` when every run succeeded, otherwise the first of
//! `failed`, `timed_out`, `lost`, `cancelled`, `skipped` among its runs.

use super::lifecycle::{self, Fired, NextFire, Queued, SlotJob};
use super::prepared::Prepared;
use super::{nodes, StoreError};
use crate::registry::{self, NodeInfo};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use sundial_proto::{After, JobSpec, RunState};

/// Longest chain of `after` links followed when looking for a cycle.
const MAX_DEPTH: usize = 1000;

/// The chain graph a check reads: the stored edges, except that the jobs of
/// `pending` (the documents of a bulk apply, which may not be written yet)
/// exist and have their new `after` lists.
pub struct Graph<'a> {
    conn: &'a Connection,
    pending: HashMap<&'a str, &'a [After]>,
}

impl<'a> Graph<'a> {
    /// The graph as stored.
    pub fn stored(conn: &'a Connection) -> Self {
        Graph {
            conn,
            pending: HashMap::new(),
        }
    }

    /// The stored graph with `pending` jobs' `after` lists in place of theirs.
    pub fn with_pending(
        conn: &'a Connection,
        pending: impl IntoIterator<Item = (&'a str, &'a [After])>,
    ) -> Self {
        Graph {
            conn,
            pending: pending.into_iter().collect(),
        }
    }

    fn exists(&self, job: &str) -> Result<bool, StoreError> {
        if self.pending.contains_key(job) {
            return Ok(true);
        }
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)")?
            .query_row([job], |r| r.get(0))?)
    }

    /// True when `downstream` already has a stored edge to `upstream`: an
    /// upstream deleted since is kept (it fires again once recreated).
    fn kept_edge(&self, downstream: &str, upstream: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM job_after a JOIN jobs j ON j.pk = a.downstream
                 WHERE j.id = ?1 AND a.upstream = ?2)",
            )?
            .query_row([downstream, upstream], |r| r.get(0))?)
    }

    fn upstreams(&self, job: &str) -> Result<Vec<String>, StoreError> {
        if let Some(after) = self.pending.get(job) {
            return Ok(after.iter().map(|a| a.job.clone()).collect());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT a.upstream FROM job_after a JOIN jobs j ON j.pk = a.downstream WHERE j.id = ?1",
        )?;
        let ups = stmt
            .query_map([job], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ups)
    }

    /// Refuses `after` for `job_id`: an upstream that does not exist (unless
    /// the job already runs after it), the job itself, a non-final state and
    /// a cycle, naming the field.
    pub fn check(&self, job_id: &str, after: &[After]) -> Result<(), StoreError> {
        for (i, a) in after.iter().enumerate() {
            let field = format!("after[{i}].job");
            if a.job == job_id {
                return Err(StoreError::Invalid {
                    field,
                    message: format!("job {job_id:?} cannot run after itself"),
                });
            }
            if !self.exists(&a.job)? && !self.kept_edge(job_id, &a.job)? {
                return Err(StoreError::Invalid {
                    field,
                    message: format!("upstream job {:?} does not exist", a.job),
                });
            }
            if let Some(s) = a.on.iter().find(|s| !s.is_terminal()) {
                return Err(StoreError::Invalid {
                    field: format!("after[{i}].on"),
                    message: format!("{s} is not a final state; use succeeded, failed, timed_out, lost, cancelled or skipped"),
                });
            }
            if a.on.is_empty() {
                return Err(StoreError::Invalid {
                    field: format!("after[{i}].on"),
                    message: "name at least one final state".into(),
                });
            }
            if let Some(path) = self.path_to(&a.job, job_id)? {
                return Err(StoreError::Invalid {
                    field,
                    message: format!(
                        "a cycle: {job_id} after {} (which runs after {})",
                        a.job,
                        path.join(" after ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// If `from` already runs (directly or not) after `target`, the chain of
    /// upstreams from `from` to `target`.
    fn path_to(&self, from: &str, target: &str) -> Result<Option<Vec<String>>, StoreError> {
        // Depth-first over upstream edges, remembering the path.
        let mut stack: Vec<(String, Vec<String>)> = vec![(from.to_string(), Vec::new())];
        let mut seen = HashSet::new();
        while let Some((job, path)) = stack.pop() {
            if path.len() > MAX_DEPTH || !seen.insert(job.clone()) {
                continue;
            }
            for up in self.upstreams(&job)? {
                let mut p = path.clone();
                p.push(up.clone());
                if up == target {
                    return Ok(Some(p));
                }
                stack.push((up, p));
            }
        }
        Ok(None)
    }
}

/// Replaces the `after` edges of `job` (its pk and id) after checking them
/// against the stored graph ([`Graph::check`]).
pub fn set_edges(
    conn: &Connection,
    job_pk: i64,
    job_id: &str,
    after: &[After],
) -> Result<(), StoreError> {
    Graph::stored(conn).check(job_id, after)?;
    write_edges(conn, job_pk, after)
}

/// Replaces the `after` edges of the job `job_pk`, unchecked: the caller
/// checked them ([`Graph::check`]).
pub fn write_edges(conn: &Connection, job_pk: i64, after: &[After]) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM job_after WHERE downstream = ?1")?
        .execute([job_pk])?;
    for a in after {
        let states: Vec<&str> = a.on.iter().map(|s| s.as_str()).collect();
        conn.prepare_cached(
            "INSERT INTO job_after (downstream, upstream, states) VALUES (?1, ?2, ?3)
             ON CONFLICT (upstream, downstream) DO UPDATE SET states = ?3",
        )?
        .execute(params![job_pk, a.job, states.join(",")])?;
    }
    Ok(())
}

/// The run's slot, if it just ended: (job id, first run of the slot, the
/// slot's end state). None while other runs of a broadcast slot go on.
fn ended_slot(
    conn: &Connection,
    run_id: i64,
) -> Result<Option<(String, i64, RunState)>, StoreError> {
    let row: Option<(String, i64, String, i64, String)> = conn
        .prepare_cached(
            "SELECT j.id, r.job, r.trigger, r.scheduled_for, r.node
             FROM runs r JOIN jobs j ON j.pk = r.job WHERE r.id = ?1",
        )?
        .query_row([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((job_id, job_pk, trigger, at, node)) = row else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, state, node FROM runs WHERE job = ?1 AND trigger = ?2 AND scheduled_for = ?3
         ORDER BY id",
    )?;
    let mut states = Vec::new();
    let mut first = run_id;
    for row in stmt.query_map(params![job_pk, trigger, at], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })? {
        let (id, state, n) = row?;
        // A non-broadcast slot is the run itself.
        if node.is_empty() && id != run_id {
            continue;
        }
        if !node.is_empty() && n.is_empty() {
            continue;
        }
        let state: RunState = state
            .parse()
            .map_err(|e: String| StoreError::Corrupt(format!("run {id}: {e}")))?;
        if !state.is_terminal() {
            return Ok(None);
        }
        first = first.min(id);
        states.push(state);
    }
    let order = [
        RunState::Failed,
        RunState::TimedOut,
        RunState::Lost,
        RunState::Cancelled,
        RunState::Skipped,
    ];
    let state = order
        .into_iter()
        .find(|s| states.contains(s))
        .unwrap_or(RunState::Succeeded);
    Ok(Some((job_id, first, state)))
}

/// After `run_id` (of the job `job_id`) reached a final state: creates the
/// runs of every job that follows its slot's end state. Returns them for the
/// dispatch queue.
pub fn fire(
    p: &mut Prepared<'_>,
    run_id: i64,
    job_id: &str,
    now: i64,
) -> Result<Vec<Queued>, StoreError> {
    let mut out = Vec::new();
    // Most jobs have no followers: one probe of the primary key, held for
    // the batch (every ending asks).
    let has_followers: bool = p
        .stmt("SELECT EXISTS (SELECT 1 FROM job_after WHERE upstream = ?1)")?
        .query_row([job_id], |r| r.get(0))?;
    let conn = p.conn();
    if !has_followers {
        return Ok(out);
    }
    let Some((upstream, first_run, state)) = ended_slot(conn, run_id)? else {
        return Ok(out);
    };
    let followers: Vec<(i64, String, String, bool, String)> = conn
        .prepare_cached(
            "SELECT j.pk, j.spec, a.states, (s.enabled = 1 AND s.paused = 0), j.id
             FROM job_after a JOIN jobs j ON j.pk = a.downstream
                 JOIN job_stats s ON s.pk = a.downstream
             WHERE a.upstream = ?1",
        )?
        .query_map([&upstream], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    for (pk, spec_text, states, active, follower) in followers {
        if !active || !states.split(',').any(|s| s == state.as_str()) {
            continue;
        }
        let spec: JobSpec = serde_json::from_str(&spec_text)
            .map_err(|e| StoreError::Corrupt(format!("job {pk}: stored spec: {e}")))?;
        let job = SlotJob {
            pk,
            target: Arc::new(spec.target.clone()),
            executor_kind: spec.executor.kind(),
        };
        // A broadcast follower fans out over the nodes as the database knows them.
        let known: Vec<NodeInfo> = if spec.target.all {
            nodes::list(conn)?.into_iter().map(NodeInfo::from).collect()
        } else {
            Vec::new()
        };
        let nodes = lifecycle::slot_nodes(&spec.target, || {
            registry::broadcast_targets(known.iter(), &spec.target, job.executor_kind, now)
        });
        if spec.target.all && nodes.is_empty() {
            tracing::warn!(
                job = %follower,
                "chained broadcast job with no live node matching its target and allowing its executor: no run made"
            );
        }
        // The next free millisecond from now (two upstream slots may end at once).
        for offset in 0..1000 {
            let mut fired = Fired::default();
            let created = lifecycle::create_chain_slots(
                p,
                &job,
                now + offset,
                &nodes,
                first_run,
                now,
                &mut fired,
            )?;
            match created {
                lifecycle::ChainSlot::Created => {
                    lifecycle::record_slots(p, pk, NextFire::Keep, &fired)?;
                    out.append(&mut fired.queued);
                    break;
                }
                // Already chained from this upstream slot (idempotent).
                lifecycle::ChainSlot::Exists => break,
                lifecycle::ChainSlot::Collides => continue,
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs;
    use crate::store::lifecycle::{assign, complete, queued, Completion};
    use crate::store::test_support::{result_of, temp_store};
    use sundial_proto::agent::Outcome;

    fn spec(after: &str) -> JobSpec {
        serde_json::from_str(&format!(
            r#"{{"schedule":"@yearly","executor":{{"type":"exec","argv":["true"]}},"after":{after}}}"#
        ))
        .unwrap()
    }

    /// An upsert as its own operation: refused means nothing written.
    fn put(c: &Connection, id: &str, after: &str) -> Result<(), StoreError> {
        c.execute_batch("SAVEPOINT put")?;
        let r = jobs::upsert(c, id, &spec(after), 0, |_| None).map(|_| ());
        if r.is_err() {
            c.execute_batch("ROLLBACK TO put")?;
        }
        c.execute_batch("RELEASE put")?;
        r
    }

    fn end(c: &Connection, run: i64, outcome: Outcome) -> Vec<Queued> {
        let q = queued(c, run).unwrap().unwrap();
        assign(c, "n", &[q], 1, 30_000, 0).unwrap();
        let req = result_of(outcome, 1);
        match complete(&mut Prepared::new(c), "n", run, &req, 2)
            .unwrap()
            .unwrap()
        {
            Completion::Recorded { requeue, .. } => requeue,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unknown_upstreams_and_cycles_are_refused_and_chains_fire_once() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                let err = put(c, "b", r#"[{"job": "a"}]"#).unwrap_err();
                assert!(
                    err.to_string()
                        .contains("after[0].job: upstream job \"a\" does not exist"),
                    "{err}"
                );
                put(c, "a", "[]")?;
                put(c, "b", r#"[{"job": "a"}]"#)?;
                put(c, "c", r#"[{"job": "b", "on": ["succeeded", "failed"]}]"#)?;
                let err = put(c, "a", r#"[{"job": "c"}]"#).unwrap_err();
                assert!(
                    err.to_string()
                        .contains("a cycle: a after c (which runs after b after a)"),
                    "{err}"
                );
                let err = put(c, "a", r#"[{"job": "a"}]"#).unwrap_err();
                assert!(err.to_string().contains("cannot run after itself"), "{err}");
                let err = put(c, "d", r#"[{"job": "a", "on": ["running"]}]"#).unwrap_err();
                assert!(err.to_string().contains("after[0].on"), "{err}");
                // a refused upsert changed nothing: a still has no upstream.
                let a = jobs::require(c, "a")?;
                assert!(a.spec.after.is_empty());

                // a succeeds → one b run, with a's run as its upstream.
                let a_pk = jobs::pk_of(c, "a")?.unwrap();
                let job = SlotJob {
                    pk: a_pk,
                    target: Arc::new(Default::default()),
                    executor_kind: sundial_proto::ExecutorKind::Exec,
                };
                let (a_run, _) = lifecycle::trigger_manual(c, &job, &[String::new()], 10)?;
                let chained = end(c, a_run, Outcome::Succeeded);
                assert_eq!(chained.len(), 1);
                let b_run = chained[0].run_id;
                let b = crate::store::runs::get(c, b_run)?.unwrap();
                assert_eq!(
                    (b.job_id.as_str(), b.trigger, b.upstream_run_id),
                    ("b", sundial_proto::Trigger::Chain, Some(a_run))
                );
                // Firing again for the same upstream slot creates nothing.
                assert!(fire(&mut Prepared::new(c), a_run, "a", 20)?.is_empty());
                // b fails → c (on failed) runs; a failing → no b (on succeeded only).
                assert_eq!(end(c, b_run, Outcome::Failed).len(), 1);
                let (a2, _) = lifecycle::trigger_manual(c, &job, &[String::new()], 30)?;
                assert!(end(c, a2, Outcome::Failed).is_empty());
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }
}

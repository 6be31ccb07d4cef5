//! The writer's run path on its own, for `sundial-bench run-path`: every
//! job fires once a second and each slot is created, assigned and completed
//! through the store's single writer, in the batch shapes the server uses
//! (one write per scheduler tick, per dispatcher poll and per batched
//! completion). No network and no daemons, so an A/B comparison of a store
//! change is not drowned by the rest of a busy machine. Public only for the
//! bench crate.

use super::lifecycle::{self, Fired, NextFire, Queued, SlotJob};
use super::prepared::Prepared;
use super::{jobs, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sundial_proto::agent::{CompleteRequest, Outcome};
use sundial_proto::{JobSpec, Trigger};

/// What one simulated second cost, by phase.
#[derive(Debug, Default, Clone, Copy)]
pub struct Second {
    pub slots: Duration,
    pub assign: Duration,
    pub complete: Duration,
}

/// Creates `jobs` every-second jobs in `store`, then runs `seconds` of their
/// slots end to end, `batch` runs per assignment or completion write.
/// Returns each second's phase times; every run must have succeeded.
pub async fn run(
    store: &Store,
    jobs: usize,
    seconds: usize,
    batch: usize,
) -> Result<Vec<Second>, StoreError> {
    let spec: JobSpec = serde_json::from_str(
        r#"{"schedule":"*/1 * * * * *","executor":{"type":"http","method":"GET","url":"http://127.0.0.1:9/noop"}}"#,
    )
    .map_err(|e| StoreError::Corrupt(format!("bench spec: {e}")))?;
    let spec = Arc::new(spec);
    let mut slot_jobs = Vec::with_capacity(jobs);
    for start in (0..jobs).step_by(1000) {
        let spec = spec.clone();
        let end = (start + 1000).min(jobs);
        let made = store
            .write(move |c| {
                (start..end)
                    .map(|i| {
                        let id = format!("bench-{i:06}");
                        jobs::upsert(c, &id, &spec, 0, |_| None)?;
                        let pk = jobs::pk_of(c, &id)?.ok_or_else(|| {
                            StoreError::Corrupt(format!("job {id} vanished after its insert"))
                        })?;
                        Ok(SlotJob {
                            pk,
                            target: Arc::new(spec.target.clone()),
                            executor_kind: spec.executor.kind(),
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await?;
        slot_jobs.extend(made);
    }
    let slot_jobs = Arc::new(slot_jobs);
    let base = sundial_proto::time::now_ms() / 1000 * 1000 + 1000;
    let mut out = Vec::with_capacity(seconds);
    for s in 0..seconds {
        let at = base + s as i64 * 1000;
        let mut second = Second::default();
        let t = Instant::now();
        let js = slot_jobs.clone();
        let queued: Vec<Queued> = store
            .write(move |c| {
                let mut all = Vec::with_capacity(js.len());
                let mut p = Prepared::new(c);
                for job in js.iter() {
                    let mut fired = Fired::default();
                    lifecycle::create_slots(
                        &mut p,
                        job,
                        Trigger::Schedule,
                        at,
                        &[String::new()],
                        at,
                        &mut fired,
                    )?;
                    lifecycle::record_slots(
                        &mut p,
                        job.pk,
                        NextFire::Set(Some(at + 1000)),
                        &fired,
                    )?;
                    all.append(&mut fired.queued);
                }
                Ok(all)
            })
            .await?;
        second.slots = t.elapsed();
        let t = Instant::now();
        let mut started = Vec::with_capacity(queued.len());
        for (n, chunk) in queued.chunks(batch.max(1)).enumerate() {
            let node = format!("node-{}", n % 10);
            let chunk = chunk.to_vec();
            let (node, assigned) = store
                .write(move |c| {
                    lifecycle::assign(c, &node, &chunk, at, 30_000, 0).map(|a| (node, a))
                })
                .await?;
            started.extend(assigned.runs.into_iter().map(|r| (node.clone(), r)));
        }
        second.assign = t.elapsed();
        if started.len() != queued.len() {
            return Err(StoreError::Corrupt(format!(
                "{} of {} slots were assigned",
                started.len(),
                queued.len()
            )));
        }
        let t = Instant::now();
        for chunk in started.chunks(batch.max(1)) {
            let chunk: Vec<(String, i64, u32)> = chunk
                .iter()
                .map(|(node, a)| (node.clone(), a.run_id, a.attempt))
                .collect();
            store
                .write(move |c| {
                    let mut p = Prepared::new(c);
                    for (node, run_id, attempt) in &chunk {
                        let req = CompleteRequest {
                            attempt: *attempt,
                            outcome: Outcome::Succeeded,
                            exit_code: None,
                            output: String::new(),
                            truncated: false,
                            error: None,
                            started_at: at,
                            finished_at: at + 1,
                        };
                        match lifecycle::complete(&mut p, node, *run_id, &req, at + 1)? {
                            Ok(lifecycle::Completion::Recorded { .. }) => {}
                            other => {
                                return Err(StoreError::Corrupt(format!(
                                    "run {run_id}: completion not recorded: {other:?}"
                                )))
                            }
                        }
                    }
                    Ok(())
                })
                .await?;
        }
        second.complete = t.elapsed();
        out.push(second);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;

    #[tokio::test]
    async fn every_slot_is_created_assigned_and_completed() {
        let (_dir, store) = temp_store();
        let seconds = run(&store, 30, 2, 7).await.unwrap();
        assert_eq!(seconds.len(), 2);
        let (total, succeeded): (i64, i64) = store
            .read_blocking(|c| {
                Ok(c.query_row(
                    "SELECT count(*), count(*) FILTER (WHERE state = 'succeeded') FROM runs",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .unwrap();
        assert_eq!((total, succeeded), (60, 60));
        store.close().await;
    }
}

//! History retention: a background sweep that deletes finished runs beyond
//! each job's `history.keep` or older than its `history.max_age`, a few hundred
//! jobs per write so it never holds the writer for long, and events beyond
//! `--events-keep` or older than `--events-max-age`, and audit rows beyond
//! `--audit-keep` or older than `--audit-max-age`.

use crate::loops::{self, Loop, Loops};
use crate::metrics::Metrics;
use crate::store::runs::{self, Retention};
use crate::store::{audit, events, webhooks, Store};
use std::sync::Arc;
use std::time::Duration;
use sundial_proto::time::now_ms;
use tokio_util::sync::CancellationToken;

/// Jobs examined per write transaction.
const JOBS_PER_BATCH: usize = 500;
/// Pause between batches within a sweep.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Events deleted per write transaction.
const EVENTS_PER_BATCH: usize = 5_000;

/// What the sweep keeps.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Run history defaults for jobs that set none.
    pub runs: Retention,
    /// Newest events kept.
    pub events_keep: u64,
    /// Events older than this are deleted.
    pub events_max_age_ms: i64,
    /// Newest audit rows kept.
    pub audit_keep: u64,
    /// Audit rows older than this are deleted.
    pub audit_max_age_ms: i64,
}

/// Runs one full sweep over all jobs and the event table; returns how many
/// runs and events were deleted.
pub async fn sweep(store: &Store, policy: Policy, metrics: &Metrics) -> anyhow::Result<usize> {
    let mut after = 0i64;
    let mut total = 0;
    let defaults = policy.runs;
    loop {
        let (deleted, last) = store
            .write(move |c| runs::prune(c, after, JOBS_PER_BATCH, now_ms(), defaults))
            .await?;
        total += deleted;
        metrics.runs_pruned.inc_by(deleted as u64);
        match last {
            Some(pk) => after = pk,
            None => break,
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
    loop {
        let min_at = now_ms() - policy.events_max_age_ms;
        let deleted = store
            .write(move |c| events::prune(c, policy.events_keep, min_at, EVENTS_PER_BATCH))
            .await?;
        total += deleted;
        metrics.events_pruned.inc_by(deleted as u64);
        if deleted < EVENTS_PER_BATCH {
            break;
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
    loop {
        let min_at = now_ms() - policy.audit_max_age_ms;
        let deleted = store
            .write(move |c| audit::prune(c, policy.audit_keep, min_at, EVENTS_PER_BATCH))
            .await?;
        total += deleted;
        if deleted < EVENTS_PER_BATCH {
            break;
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
    // Delivery records live as long as events do.
    loop {
        let min_at = now_ms() - policy.events_max_age_ms;
        let deleted = store
            .write(move |c| webhooks::prune_deliveries(c, min_at, EVENTS_PER_BATCH))
            .await?;
        total += deleted;
        if deleted < EVENTS_PER_BATCH {
            return Ok(total);
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
}

/// Sweeps every `interval` until the term ends. A failed sweep is reported
/// to [`Loops`] and tried again after a backoff (capped at `interval`).
pub async fn run(
    store: Arc<Store>,
    policy: Policy,
    metrics: Arc<Metrics>,
    loops: Arc<Loops>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = loops::retry_backoff();
    let mut wait = interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        loops.begin(Loop::Retention);
        wait = match sweep(&store, policy, &metrics).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(deleted = n, "pruned run history and events");
                }
                backoff.reset();
                loops.ok(Loop::Retention);
                interval
            }
            Err(e) => {
                let d = backoff.next_delay().min(interval);
                loops.failed(Loop::Retention, &format!("{e:#}"), d);
                d
            }
        };
    }
}

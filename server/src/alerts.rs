//! Alerts (primary only): once a second, jobs whose `alert.overdue_after`
//! passed without a successful run are marked overdue with one
//! `job.overdue` event (and so one webhook), and nodes not heard from for
//! [`LIVE_WINDOW_MS`] are marked down with one `node.down`. The marks live
//! in the database, so a restart or failover does not repeat them; a
//! successful run clears a job's with one `job.recovered` (in the run
//! lifecycle), contact clears a node's. The pending runs of broadcast
//! slots whose node is down or revoked, or no longer allows the job's
//! executor, then end `lost`
//! ([`lifecycle::end_runs_of_gone_nodes`]), since no other node may take
//! them; the dispatcher drops them from its queue.

use crate::dispatch::Dispatcher;
use crate::loops::{self, Loop, Loops};
use crate::registry::{Registry, LIVE_WINDOW_MS};
use crate::store::{events, lifecycle, nodes};
use std::sync::Arc;
use std::time::Duration;
use sundial_proto::time::now_ms;
use tokio_util::sync::CancellationToken;

/// How often overdue jobs are looked for.
const EVERY: Duration = Duration::from_secs(1);

/// Checks for overdue jobs and silent nodes until the term ends.
pub async fn run(
    dispatcher: Arc<Dispatcher>,
    registry: Arc<Registry>,
    loops: Arc<Loops>,
    term: CancellationToken,
) {
    let mut backoff = loops::retry_backoff();
    loop {
        let wait = {
            loops.begin(Loop::Alerts);
            let registry = registry.clone();
            let marked = dispatcher
                .write_then_queue(move |c| {
                    let now = now_ms();
                    let jobs = events::mark_overdue(c, now)?;
                    let nodes = nodes::mark_down(c, now, LIVE_WINDOW_MS)?;
                    let gone =
                        lifecycle::end_runs_of_gone_nodes(c, now, |n| registry.is_live(n, now))?;
                    Ok(((jobs, nodes, gone.ended), gone.chained))
                })
                .await;
            match marked {
                Ok((jobs, nodes, ended)) => {
                    if !ended.is_empty() {
                        dispatcher.forget(&ended);
                        tracing::warn!(
                            runs = ended.len(),
                            "broadcast runs lost: their node is down or revoked, or does not allow their executor"
                        );
                    }
                    if jobs > 0 {
                        tracing::warn!(
                            jobs,
                            "jobs overdue: no successful run within alert.overdue_after"
                        );
                    }
                    if nodes > 0 {
                        tracing::warn!(nodes, "nodes down: no contact for two minutes");
                    }
                    backoff.reset();
                    loops.ok(Loop::Alerts);
                    EVERY
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    loops.failed(Loop::Alerts, &e, d);
                    d
                }
            }
        };
        tokio::select! {
            _ = term.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

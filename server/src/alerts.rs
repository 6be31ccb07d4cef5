//! Alerts (primary only): once a second, jobs whose `alert.overdue_after`
//! passed without a successful run are marked overdue with one
//! `job.overdue` event (and so one webhook), and nodes not heard from for
//! [`LIVE_WINDOW_MS`] are marked down with one `node.down`. The marks live
//! in the database, so a restart or failover does not repeat them; a
//! successful run clears a job's with one `job.recovered` (in the run
//! lifecycle), contact clears a node's.

use crate::loops::{self, Loop, Loops};
use crate::registry::LIVE_WINDOW_MS;
use crate::store::{events, nodes, Store};
use std::sync::Arc;
use std::time::Duration;
use sundial_proto::time::now_ms;
use tokio_util::sync::CancellationToken;

/// How often overdue jobs are looked for.
const EVERY: Duration = Duration::from_secs(1);

/// Checks for overdue jobs and silent nodes until the term ends.
pub async fn run(store: Arc<Store>, loops: Arc<Loops>, term: CancellationToken) {
    let mut backoff = loops::retry_backoff();
    loop {
        let wait = {
            loops.begin(Loop::Alerts);
            let marked = store
                .write(|c| {
                    let now = now_ms();
                    Ok((
                        events::mark_overdue(c, now)?,
                        nodes::mark_down(c, now, LIVE_WINDOW_MS)?,
                    ))
                })
                .await;
            match marked {
                Ok((jobs, nodes)) => {
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

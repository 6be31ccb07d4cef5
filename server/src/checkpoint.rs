//! WAL checkpoints off the writer thread. SQLite's default is to checkpoint
//! on the committing connection once the WAL passes 1,000 pages; at 10,000
//! runs/s that was 12 % of the single writer's time (docs/benchmarks.md
//! §14). While this server is primary, this loop copies committed WAL
//! frames into the database file from a connection of its own, about ten
//! times a second when something was committed (a `PASSIVE` checkpoint:
//! it never waits for, or blocks, the writer or a reader).
//!
//! The writer keeps a backstop ([`WRITER_AUTOCHECKPOINT_PAGES`]): a WAL
//! that grows that long (this loop failing, or a writer busy enough that
//! the WAL never drains between its transactions) is checkpointed by the
//! writer itself. By then most frames are already copied, so the writer
//! finishes the job quickly and its next transaction starts the WAL over.
//! A failed pass is reported to [`Loops`] and retried; the loop ends only
//! with its term.

use crate::loops::{self, Loop, Loops};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use rusqlite::Connection;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the loop looks for new commits to copy.
pub const EVERY: Duration = Duration::from_millis(100);

/// WAL pages after which the writer checkpoints on its own (SQLite's
/// `wal_autocheckpoint`; 1,000 by default). 10,000 pages of 4 KiB: 40 MiB.
pub const WRITER_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// One `PASSIVE` checkpoint on `conn`; returns the frames in the WAL.
pub fn passive(conn: &Connection) -> Result<i64, StoreError> {
    // The row is (busy, frames in the WAL, frames copied into the file).
    Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?)
}

/// Checkpoints while `term` lasts.
pub async fn run(
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    loops: Arc<Loops>,
    term: CancellationToken,
) {
    let mut commits = store.commits();
    let mut conn: Option<Connection> = None;
    let mut backoff = loops::retry_backoff();
    let mut wait = EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.cancelled() => return,
        }
        // Nothing committed since the last pass: nothing to copy.
        if !commits.has_changed().unwrap_or(true) && conn.is_some() {
            continue;
        }
        commits.mark_unchanged();
        loops.begin(Loop::Checkpoint);
        let store = store.clone();
        let held = conn.take();
        let pass = tokio::task::spawn_blocking(move || {
            let c = match held {
                Some(c) => c,
                None => store.open_checkpointer()?,
            };
            let frames = passive(&c)?;
            Ok::<_, StoreError>((c, frames))
        })
        .await
        .map_err(|e| StoreError::Io(format!("checkpoint task failed: {e}")))
        .and_then(|r| r);
        wait = match pass {
            Ok((c, frames)) => {
                conn = Some(c);
                metrics.wal_frames.set(frames);
                backoff.reset();
                loops.ok(Loop::Checkpoint);
                EVERY
            }
            Err(e) => {
                // The connection is dropped and opened again next time.
                let d = backoff.next_delay();
                loops.failed(Loop::Checkpoint, &e, d);
                d
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use crate::store::DB_FILE;

    #[tokio::test]
    async fn the_loop_copies_committed_frames_into_the_database_file() {
        let (dir, store) = temp_store();
        let store = Arc::new(store);
        store
            .write(|c| {
                c.execute_batch(
                    "CREATE TABLE t (x BLOB);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
                     INSERT INTO t SELECT zeroblob(4000) FROM n",
                )
                .map_err(StoreError::from)
            })
            .await
            .unwrap();
        // 50 pages sit in the WAL: the writer's own checkpoint waits for
        // 10,000, so only the loop can put them in the database file.
        let file = dir.path().join(DB_FILE);
        let before = std::fs::metadata(&file).unwrap().len();
        let metrics = Arc::new(Metrics::new());
        let loops = Arc::new(Loops::new(metrics.clone()));
        let term = CancellationToken::new();
        let task = tokio::spawn(run(
            store.clone(),
            metrics.clone(),
            loops.clone(),
            term.clone(),
        ));
        let mut grown = 0;
        for _ in 0..50 {
            tokio::time::sleep(EVERY).await;
            grown = std::fs::metadata(&file)
                .unwrap()
                .len()
                .saturating_sub(before);
            if grown >= 50 * 4000 {
                break;
            }
        }
        assert!(
            grown >= 50 * 4000,
            "the database file grew by {grown} bytes only"
        );
        assert!(metrics.wal_frames.get() >= 50);
        let status = loops
            .statuses()
            .into_iter()
            .find(|s| s.name == "checkpoint");
        assert!(status.is_some_and(|s| s.healthy));
        term.cancel();
        task.await.unwrap();
    }
}

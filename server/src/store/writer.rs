//! The single writer: one thread owns the read-write connection and applies
//! queued operations in batches, one transaction per batch (group commit).
//!
//! Callers hand in closures; each runs inside its own savepoint so one failing
//! operation rolls back alone, and every caller gets its reply only after the
//! batch has committed. Batch size and commit latency go to the metrics.
//!
//! Fencing: the writer belongs to one term as primary (an epoch). Every batch
//! first reads the cluster epoch inside its transaction; if another server
//! has bumped it, the batch is rolled back, every caller gets
//! [`StoreError::Fenced`], and the writer refuses all further work.

use super::StoreError;
use crate::metrics::Metrics;
use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

/// Called once the batch an operation belonged to has committed (or failed to).
type Reply = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// An operation: runs inside the batch transaction and returns its reply.
type Op = Box<dyn FnOnce(&Connection) -> Reply + Send>;

enum Msg {
    Op(Op),
    Shutdown(oneshot::Sender<()>),
}

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 4096;

/// Handle to the writer thread. Cheap to share behind an `Arc`.
pub struct Writer {
    sender: mpsc::Sender<Msg>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    fenced: Arc<AtomicBool>,
}

/// Called once when the writer finds it was fenced off.
pub type OnFenced = Box<dyn Fn(i64) + Send + Sync>;

impl Writer {
    /// Starts the writer thread over an open read-write connection.
    /// `epoch` is this term's fencing token; `on_fenced` hears the epoch that replaced it.
    pub fn spawn(
        conn: Connection,
        metrics: Arc<Metrics>,
        epoch: i64,
        on_fenced: OnFenced,
    ) -> Result<Writer, StoreError> {
        let (sender, receiver) = mpsc::channel();
        let fenced = Arc::new(AtomicBool::new(false));
        let term = Term {
            epoch,
            fenced: fenced.clone(),
            on_fenced,
        };
        let thread = std::thread::Builder::new()
            .name("sundial-writer".into())
            .spawn(move || run(conn, receiver, metrics, term))
            .map_err(|e| StoreError::Io(format!("starting writer thread: {e}")))?;
        Ok(Writer {
            sender,
            thread: std::sync::Mutex::new(Some(thread)),
            fenced,
        })
    }

    /// True once a newer primary's epoch was seen.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Runs `f` inside the next batch transaction and waits for the commit.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: Op = Box::new(move |conn: &Connection| {
            let result = in_savepoint(conn, f);
            Box::new(move |committed: Result<(), &StoreError>| {
                let out = match committed {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::Commit(e.to_string())),
                };
                let _ = tx.send(out);
            })
        });
        self.sender
            .send(Msg::Op(op))
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(result) => result,
            Err(_) if self.is_fenced() => Err(StoreError::Fenced),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Applies everything already queued, checkpoints the WAL and stops the thread.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.sender.send(Msg::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT op")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE op")?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")?;
            Err(e)
        }
    }
}

/// The term this writer serves and how it learns it is over.
struct Term {
    epoch: i64,
    fenced: Arc<AtomicBool>,
    on_fenced: OnFenced,
}

fn run(conn: Connection, receiver: mpsc::Receiver<Msg>, metrics: Arc<Metrics>, term: Term) {
    let mut batch: Vec<Op> = Vec::with_capacity(64);
    let mut replies: Vec<Reply> = Vec::with_capacity(64);
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    loop {
        match receiver.recv() {
            Ok(Msg::Op(op)) => batch.push(op),
            Ok(Msg::Shutdown(tx)) => shutdown = Some(tx),
            Err(_) => break,
        }
        // Gather whatever else is already waiting: this is the group commit.
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(Msg::Op(op)) => batch.push(op),
                Ok(Msg::Shutdown(tx)) => shutdown = Some(tx),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            apply(&conn, &mut batch, &mut replies, &metrics, &term);
        }
        if shutdown.is_some() {
            // Drain stragglers queued behind the shutdown request.
            while let Ok(Msg::Op(op)) = receiver.try_recv() {
                batch.push(op);
            }
            if !batch.is_empty() {
                apply(&conn, &mut batch, &mut replies, &metrics, &term);
            }
            break;
        }
    }
    if !term.fenced.load(Ordering::Acquire) {
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "final WAL checkpoint failed");
        }
    }
    drop(conn);
    tracing::debug!("writer stopped");
    if let Some(tx) = shutdown {
        let _ = tx.send(());
    }
}

/// Reads the cluster epoch inside the open transaction.
fn current_epoch(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT epoch FROM cluster WHERE id = 1", [], |r| r.get(0))?)
}

fn apply(
    conn: &Connection,
    batch: &mut Vec<Op>,
    replies: &mut Vec<Reply>,
    metrics: &Metrics,
    term: &Term,
) {
    let started = Instant::now();
    let size = batch.len();
    if term.fenced.load(Ordering::Acquire) {
        // Dropping the ops drops their reply channels: callers see the refusal.
        batch.clear();
        return;
    }
    let outcome = match conn.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => match current_epoch(conn) {
            Ok(epoch) if epoch != term.epoch => {
                let _ = conn.execute_batch("ROLLBACK");
                term.fenced.store(true, Ordering::Release);
                tracing::error!(
                    mine = term.epoch,
                    current = epoch,
                    "fenced: another server is primary; refusing writes"
                );
                (term.on_fenced)(epoch);
                batch.clear();
                return;
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                batch.clear();
                tracing::error!(error = %e, "reading the epoch");
                return;
            }
            Ok(_) => {
                replies.extend(batch.drain(..).map(|op| op(conn)));
                conn.execute_batch("COMMIT").map_err(|e| {
                    let _ = conn.execute_batch("ROLLBACK");
                    StoreError::Commit(e.to_string())
                })
            }
        },
        Err(e) => {
            batch.clear();
            Err(StoreError::Commit(format!("begin: {e}")))
        }
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %e, batch = size, "write batch failed");
    }
    metrics.write_batch_size.observe(size as f64);
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    for reply in replies.drain(..) {
        reply(outcome.as_ref().map(|_| ()));
    }
    // A failed BEGIN leaves no replies: their ops were dropped, so callers see Closed.
}

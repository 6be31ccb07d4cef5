//! The single writer: one thread owns the read-write connection and applies
//! queued operations in batches, one transaction per batch (group commit).
//!
//! Callers hand in closures; each runs inside its own savepoint so one failing
//! operation rolls back alone, and every caller gets its reply only after the
//! batch has committed. Batch size and commit latency go to the metrics.

use super::StoreError;
use crate::metrics::Metrics;
use rusqlite::Connection;
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
}

impl Writer {
    /// Starts the writer thread over an open read-write connection.
    pub fn spawn(conn: Connection, metrics: Arc<Metrics>) -> Result<Writer, StoreError> {
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sundial-writer".into())
            .spawn(move || run(conn, receiver, metrics))
            .map_err(|e| StoreError::Io(format!("starting writer thread: {e}")))?;
        Ok(Writer {
            sender,
            thread: std::sync::Mutex::new(Some(thread)),
        })
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
        rx.await.map_err(|_| StoreError::Closed)?
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

fn run(conn: Connection, receiver: mpsc::Receiver<Msg>, metrics: Arc<Metrics>) {
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
            apply(&conn, &mut batch, &mut replies, &metrics);
        }
        if shutdown.is_some() {
            // Drain stragglers queued behind the shutdown request.
            while let Ok(Msg::Op(op)) = receiver.try_recv() {
                batch.push(op);
            }
            if !batch.is_empty() {
                apply(&conn, &mut batch, &mut replies, &metrics);
            }
            break;
        }
    }
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "final WAL checkpoint failed");
    }
    drop(conn);
    tracing::debug!("writer stopped");
    if let Some(tx) = shutdown {
        let _ = tx.send(());
    }
}

fn apply(conn: &Connection, batch: &mut Vec<Op>, replies: &mut Vec<Reply>, metrics: &Metrics) {
    let started = Instant::now();
    let size = batch.len();
    let outcome = match conn.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => {
            replies.extend(batch.drain(..).map(|op| op(conn)));
            conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                StoreError::Commit(e.to_string())
            })
        }
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

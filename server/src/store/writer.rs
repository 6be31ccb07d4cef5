//! The single writer: one thread owns the read-write connection and applies
//! queued operations in batches, one transaction per batch (group commit).
//!
//! Callers hand in closures; each runs inside its own savepoint so one failing
//! operation rolls back alone, and every caller gets its reply only after the
//! batch has committed. Batch size and commit latency go to the metrics.
//! A caller may add a follow-up ([`Writer::call_then`]) that this thread
//! runs on the outcome before answering, so a change in memory that must
//! follow a commit happens even when the caller has stopped waiting.
//!
//! Fencing: the writer belongs to one term as primary (an epoch). Every batch
//! first reads the cluster epoch inside its transaction; if another server
//! has bumped it, the batch is rolled back, every caller gets
//! [`StoreError::Fenced`], and the writer refuses all further work.
//!
//! Failures never drop a caller: when `BEGIN`, the epoch read or `COMMIT`
//! fails (another connection holds the lock past the busy timeout, the disk
//! is full, an I/O error), or SQLite rolls the transaction back under an
//! operation, every caller of the batch gets [`StoreError::Unavailable`]
//! with the cause and the writer goes on with the next batch. Only a writer
//! that is gone answers [`StoreError::Closed`].

use super::{StoreError, Transient};
use crate::metrics::Metrics;
use rusqlite::Connection;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

/// Called once the batch an operation belonged to has committed (or failed to).
type Reply = Box<dyn FnOnce(Result<(), &Failure>) + Send>;

/// An operation queued for the next batch.
trait Operation: Send {
    /// Runs inside the batch transaction; returns the reply to send once
    /// the batch's fate is known, and the transient error it hit, if any.
    fn apply(self: Box<Self>, conn: &Connection) -> (Reply, Option<Failure>);
    /// The batch never ran this operation: tell the caller why.
    fn refuse(self: Box<Self>, error: StoreError);
}

type Op = Box<dyn Operation>;

/// Why a whole batch was not committed; every caller in it gets this.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Retry later (busy, full, I/O; nothing of the batch was written).
    Transient(Transient, String),
    /// Another server holds a newer epoch.
    Fenced,
    /// COMMIT failed for a reason that is not transient.
    Commit(String),
}

impl Failure {
    fn from_sqlite(what: &str, e: &rusqlite::Error) -> Failure {
        match Transient::of(e) {
            Some(cause) => Failure::Transient(cause, format!("{what}: {e}")),
            None => Failure::Commit(format!("{what}: {e}")),
        }
    }

    fn error(&self) -> StoreError {
        match self {
            Failure::Transient(cause, detail) => StoreError::unavailable(*cause, detail.clone()),
            Failure::Fenced => StoreError::Fenced,
            Failure::Commit(m) => StoreError::Commit(m.clone()),
        }
    }
}

/// A caller's closure, what follows its outcome, and where the answer goes.
///
/// `then` runs on the writer thread once the batch's fate is known — after
/// the commit, or with the error — whether or not the caller still waits
/// for the answer. It must be quick and must not block.
struct Call<F, A, T, U> {
    f: F,
    then: A,
    tx: oneshot::Sender<Result<U, StoreError>>,
    result: PhantomData<fn() -> T>,
}

/// Runs a call's `then`; a panic in it becomes an error, not a dead writer.
fn follow<T, U>(
    then: impl FnOnce(Result<T, StoreError>) -> Result<U, StoreError>,
    out: Result<T, StoreError>,
) -> Result<U, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(out)))
        .unwrap_or_else(|_| Err(StoreError::Io("the follow-up of a write panicked".into())))
}

impl<F, A, T, U> Operation for Call<F, A, T, U>
where
    T: Send + 'static,
    U: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    A: FnOnce(Result<T, StoreError>) -> Result<U, StoreError> + Send + 'static,
{
    fn apply(self: Box<Self>, conn: &Connection) -> (Reply, Option<Failure>) {
        let Call { f, then, tx, .. } = *self;
        let result = in_savepoint(conn, f);
        let hit = match &result {
            Err(StoreError::Unavailable { cause, detail }) => {
                Some(Failure::Transient(*cause, detail.clone()))
            }
            _ => None,
        };
        let reply: Reply = Box::new(move |committed: Result<(), &Failure>| {
            let out = match committed {
                Ok(()) => result,
                Err(failure) => Err(failure.error()),
            };
            let _ = tx.send(follow(then, out));
        });
        (reply, hit)
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        let Call { then, tx, .. } = *self;
        let _ = tx.send(follow(then, Err(error)));
    }
}

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
        commits: Arc<tokio::sync::watch::Sender<u64>>,
    ) -> Result<Writer, StoreError> {
        let (sender, receiver) = mpsc::channel();
        let fenced = Arc::new(AtomicBool::new(false));
        let term = Term {
            commits,
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

    /// Runs `f` inside the next batch transaction and waits for the commit,
    /// with `then` run on the outcome on the writer thread — after the
    /// commit, or with the error — even if the caller has stopped waiting.
    pub async fn call_then<T, U, F, A>(&self, f: F, then: A) -> Result<U, StoreError>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        A: FnOnce(Result<T, StoreError>) -> Result<U, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: Op = Box::new(Call {
            f,
            then,
            tx,
            result: PhantomData,
        });
        if let Err(mpsc::SendError(Msg::Op(op))) = self.sender.send(Msg::Op(op)) {
            op.refuse(StoreError::Closed);
        }
        match rx.await {
            Ok(result) => result,
            // Every queued operation gets an answer; none means the thread is gone.
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

/// Runs one operation in its own savepoint, so its failure (or panic)
/// rolls back only its own writes.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Cached statements: the savepoint is on every operation's path.
    conn.prepare_cached("SAVEPOINT op")?.execute([])?;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
        .unwrap_or_else(|_| Err(StoreError::Io("a write operation panicked".into())));
    match result {
        Ok(v) => {
            conn.prepare_cached("RELEASE op")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            // SQLite may already have rolled the whole transaction back (full
            // disk, I/O error); `apply` notices that and fails the batch.
            if !conn.is_autocommit() {
                conn.execute_batch("ROLLBACK TO op; RELEASE op")?;
            }
            Err(e)
        }
    }
}

/// The term this writer serves and how it learns it is over.
struct Term {
    /// Counts committed batches; readers that follow the database (event
    /// streams) wait on it.
    commits: Arc<tokio::sync::watch::Sender<u64>>,
    epoch: i64,
    fenced: Arc<AtomicBool>,
    on_fenced: OnFenced,
}

fn run(conn: Connection, receiver: mpsc::Receiver<Msg>, metrics: Arc<Metrics>, term: Term) {
    let mut batch: VecDeque<Op> = VecDeque::with_capacity(64);
    let mut replies: Vec<Reply> = Vec::with_capacity(64);
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    loop {
        match receiver.recv() {
            Ok(Msg::Op(op)) => batch.push_back(op),
            Ok(Msg::Shutdown(tx)) => shutdown = Some(tx),
            Err(_) => break,
        }
        // Gather whatever else is already waiting: this is the group commit.
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(Msg::Op(op)) => batch.push_back(op),
                Ok(Msg::Shutdown(tx)) => shutdown = Some(tx),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let outcome = apply(&conn, &mut batch, &mut replies, &metrics, &term);
            if let Err(busy @ Failure::Transient(Transient::Busy, _)) = &outcome {
                // What queued while this batch waited out the busy timeout
                // is answered now ("retry"), not after another full timeout —
                // before any caller of this batch hears back, so nothing
                // they send next is caught by it.
                while let Ok(msg) = receiver.try_recv() {
                    match msg {
                        Msg::Op(op) => op.refuse(busy.error()),
                        Msg::Shutdown(tx) => shutdown = Some(tx),
                    }
                }
            }
            answer(&mut batch, &mut replies, &outcome);
        }
        if shutdown.is_some() {
            // Drain stragglers queued behind the shutdown request.
            while let Ok(Msg::Op(op)) = receiver.try_recv() {
                batch.push_back(op);
            }
            if !batch.is_empty() {
                let outcome = apply(&conn, &mut batch, &mut replies, &metrics, &term);
                answer(&mut batch, &mut replies, &outcome);
            }
            break;
        }
    }
    if !term.fenced.load(Ordering::Acquire) {
        final_checkpoint(&conn);
    }
    drop(conn);
    tracing::debug!("writer stopped");
    if let Some(tx) = shutdown {
        let _ = tx.send(());
    }
}

/// How long the final checkpoint waits for readers: it holds the write
/// lock meanwhile, so the next primary (or this server's restart) would
/// wait the whole busy timeout behind a reader's open snapshot.
const FINAL_CHECKPOINT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Checkpoints the WAL into the database as the writer stops, waiting for
/// readers [`FINAL_CHECKPOINT_WAIT`] at most; what a reader still needs
/// is left in the WAL for the next checkpoint, with a warning.
fn final_checkpoint(conn: &Connection) {
    if let Err(e) = conn.busy_timeout(FINAL_CHECKPOINT_WAIT) {
        tracing::warn!(error = %e, "final WAL checkpoint: setting its wait");
    }
    let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match result {
        Ok((0, _, _)) => {}
        Ok((_, wal_pages, checkpointed)) => tracing::warn!(
            wal_pages,
            checkpointed,
            "final WAL checkpoint incomplete: a reader holds part of the WAL; the next checkpoint takes the rest"
        ),
        Err(e) => tracing::warn!(error = %e, "final WAL checkpoint failed"),
    }
}

/// Reads the cluster epoch inside the open transaction.
fn current_epoch(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT epoch FROM cluster WHERE id = 1", [], |r| r.get(0))
}

/// Tells every caller of a batch its fate: the replies of the operations it
/// ran, and a refusal to those it never reached (left in `batch`).
fn answer(batch: &mut VecDeque<Op>, replies: &mut Vec<Reply>, outcome: &Result<(), Failure>) {
    if let Err(failure) = outcome {
        for op in batch.drain(..) {
            op.refuse(failure.error());
        }
    }
    for reply in replies.drain(..) {
        reply(outcome.as_ref().map(|_| ()));
    }
}

/// Applies one batch in one transaction; the replies of the operations it
/// ran wait in `replies`, those it never reached stay in `batch`, both for
/// [`answer`].
fn apply(
    conn: &Connection,
    batch: &mut VecDeque<Op>,
    replies: &mut Vec<Reply>,
    metrics: &Metrics,
    term: &Term,
) -> Result<(), Failure> {
    let started = Instant::now();
    let size = batch.len();
    let outcome = run_batch(conn, batch, replies, term);
    if outcome.is_ok() {
        term.commits.send_modify(|n| *n = n.wrapping_add(1));
    }
    // Operations the batch never reached stay in `batch`: [`answer`]
    // refuses them once the caller is done with the queue.
    if let Err(failure) = &outcome {
        match failure {
            Failure::Fenced => {}
            other => {
                metrics.write_failures.inc();
                tracing::error!(error = %other.error(), batch = size, "write batch failed; its callers were told to retry");
            }
        }
    }
    metrics.write_batch_size.observe(size as f64);
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    outcome
}

/// BEGIN, fence check, the operations, COMMIT. On error the transaction is
/// rolled back; operations not yet run are left in `batch`.
fn run_batch(
    conn: &Connection,
    batch: &mut VecDeque<Op>,
    replies: &mut Vec<Reply>,
    term: &Term,
) -> Result<(), Failure> {
    if term.fenced.load(Ordering::Acquire) {
        return Err(Failure::Fenced);
    }
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| Failure::from_sqlite("begin", &e))?;
    let result = (|| {
        let epoch = current_epoch(conn).map_err(|e| {
            // Any failure to read the fencing token is "retry later".
            let cause = Transient::of(&e).unwrap_or(Transient::Io);
            Failure::Transient(cause, format!("reading the epoch: {e}"))
        })?;
        if epoch != term.epoch {
            term.fenced.store(true, Ordering::Release);
            tracing::error!(
                mine = term.epoch,
                current = epoch,
                "fenced: another server is primary; refusing writes"
            );
            (term.on_fenced)(epoch);
            return Err(Failure::Fenced);
        }
        while let Some(op) = batch.pop_front() {
            let (reply, hit) = op.apply(conn);
            replies.push(reply);
            if conn.is_autocommit() {
                // SQLite rolled the transaction back under this operation:
                // what came before it is gone too, so the batch fails whole.
                return Err(hit.unwrap_or_else(|| {
                    Failure::Transient(
                        Transient::Io,
                        "SQLite rolled back the write transaction".into(),
                    )
                }));
            }
        }
        conn.execute_batch("COMMIT")
            .map_err(|e| Failure::from_sqlite("commit", &e))
    })();
    if result.is_err() && !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "rollback after a failed batch");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;
    use crate::store::{Store, StoreError, Transient, DB_FILE};
    use std::sync::Arc;
    use std::time::Duration;

    fn store(busy_ms: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_with(
            &dir.path().join(DB_FILE),
            Arc::new(Metrics::new()),
            Duration::from_millis(busy_ms),
        )
        .unwrap();
        (dir, s)
    }

    /// The writer's last checkpoint does not wait the busy timeout for a
    /// reader's open snapshot: stopping (a demotion, a shutdown) stays fast,
    /// and the next primary is not kept from the write lock.
    #[tokio::test]
    async fn stopping_does_not_wait_for_a_reader() {
        let (dir, s) = store(5_000);
        s.write(insert_key("k1")).await.unwrap();
        let reader = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let n: i64 = reader
            .query_row("SELECT count(*) FROM api_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "the reader holds a snapshot");
        s.write(insert_key("k2")).await.unwrap();
        let started = std::time::Instant::now();
        s.close().await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "stopping took {took:?}");
        reader.execute_batch("COMMIT").unwrap();
    }

    fn insert_key(
        id: &'static str,
    ) -> impl FnOnce(&rusqlite::Connection) -> Result<(), StoreError> {
        move |c| {
            c.execute(
                "INSERT INTO api_keys (id, hash, scope, created_at) VALUES (?1, ?1, 'read', 0)",
                [id],
            )?;
            Ok(())
        }
    }

    fn keys(s: &Store) -> Vec<String> {
        s.read_blocking(|c| {
            let mut st = c.prepare("SELECT id FROM api_keys ORDER BY id")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_locked_database_is_retryable_and_the_writer_goes_on() {
        let (dir, s) = store(200);
        let outside = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        outside.execute_batch("BEGIN IMMEDIATE").unwrap();
        let err = s.write(insert_key("a")).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Unavailable {
                    cause: Transient::Busy,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("database unavailable (busy)"),
            "{err}"
        );
        outside.execute_batch("COMMIT").unwrap();
        s.write(insert_key("b")).await.unwrap();
        assert_eq!(keys(&s), vec!["b"]);
        s.close().await;
    }

    #[tokio::test]
    async fn a_failed_epoch_read_is_retryable() {
        let (dir, s) = store(200);
        let outside = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        outside
            .execute_batch("ALTER TABLE cluster RENAME TO cluster_away")
            .unwrap();
        let err = s.write(insert_key("a")).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("reading the epoch"), "{err}");
        outside
            .execute_batch("ALTER TABLE cluster_away RENAME TO cluster")
            .unwrap();
        s.write(insert_key("b")).await.unwrap();
        assert_eq!(keys(&s), vec!["b"]);
        s.close().await;
    }

    #[tokio::test]
    async fn a_full_disk_fails_the_write_and_the_writer_recovers() {
        let (_dir, s) = store(200);
        // Cap the file at its current size: the next growth is SQLITE_FULL.
        s.write(|c| {
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            c.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
            Ok(())
        })
        .await
        .unwrap();
        let big = s.write(|c| {
            c.execute(
                "INSERT INTO api_keys (id, hash, scope, created_at) VALUES ('big', zeroblob(1000000), 'read', 0)",
                [],
            )?;
            Ok(())
        });
        let small = s.write(insert_key("small"));
        let (big, small) = tokio::join!(big, small);
        let big = big.unwrap_err();
        assert!(
            matches!(
                big,
                StoreError::Unavailable {
                    cause: Transient::DiskFull,
                    ..
                }
            ),
            "{big:?}"
        );
        // The small write either committed on its own or was told to retry.
        if let Err(e) = &small {
            assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        }
        s.write(|c| {
            c.query_row("PRAGMA max_page_count = 1073741823", [], |_| Ok(()))?;
            Ok(())
        })
        .await
        .unwrap();
        s.write(insert_key("after")).await.unwrap();
        assert!(keys(&s).contains(&"after".to_string()));
        s.close().await;
    }

    #[tokio::test]
    async fn a_panicking_operation_fails_alone() {
        let (_dir, s) = store(200);
        let bad = s.write(|_| -> Result<(), StoreError> { panic!("boom") });
        let good = s.write(insert_key("good"));
        let (bad, good) = tokio::join!(bad, good);
        assert!(matches!(bad, Err(StoreError::Io(_))), "{bad:?}");
        good.unwrap();
        s.write(insert_key("later")).await.unwrap();
        assert_eq!(keys(&s), vec!["good", "later"]);
        s.close().await;
    }
}

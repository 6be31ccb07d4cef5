//! The SQLite store: opening the database with Sundial's pragmas, migrations,
//! the single writer ([`writer`]) and a pool of read-only connections.
//!
//! Domain queries live beside this file, one per table: [`jobs`] (and
//! [`apply`], a whole directory of them at once), [`runs`] (reads and
//! pruning), [`nodes`], [`keys`], [`tokens`], [`nonces`], [`webhooks`],
//! [`chains`] (`job_after`), [`events`] (the outbox) and [`audit`]. Every change of a
//! run — slot creation, assignment, heartbeat, completion, retry, hand-back,
//! cancel, lease expiry — and the job counters that follow it belong to
//! [`lifecycle`], which asks the pure state table in [`transition`] what
//! each event does. [`migrations`] versions the schema. They take a
//! `&Connection` so the same code serves reads (pool) and writes (inside a
//! [`writer`] batch); the run path's writes take the batch's [`prepared`]
//! statements instead, prepared once for all its runs. [`spec_cache`] keeps
//! parsed job specs for it. [`path_bench`] drives the run path through the
//! writer for `sundial-bench run-path`. [`litestream`] tells from the
//! database whether Litestream replicates it (the server's checkpoints must
//! then be off).

pub(crate) mod apply;
pub(crate) mod audit;
pub(crate) mod chains;
pub(crate) mod events;
pub mod jobs;
pub(crate) mod keys;
pub(crate) mod lifecycle;
pub(crate) mod litestream;
pub(crate) mod migrations;
pub(crate) mod nodes;
pub(crate) mod nonces;
pub mod path_bench;
pub(crate) mod prepared;
pub(crate) mod runs;
pub(crate) mod spec_cache;
pub(crate) mod tokens;
pub(crate) mod transition;
pub(crate) mod webhooks;
pub(crate) mod writer;

use crate::metrics::Metrics;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use writer::Writer;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "sundial.db";

/// Everything that can go wrong in the store. Each variant has one meaning:
/// [`StoreError::Unavailable`] is "retry later" (the database is busy, the
/// disk is full, an I/O error); [`StoreError::Closed`] is "the writer is
/// gone" (shutdown); [`StoreError::NotPrimary`] and [`StoreError::Fenced`]
/// are "this server may not write".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    #[error("read pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error(transparent)]
    Migration(#[from] migrations::MigrationError),
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// Input the store refuses (it needs the database to tell: an unknown
    /// upstream job, a cycle); `field` names the input.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// [`StoreError::Invalid`] about document `index` of a bulk apply.
    #[error("jobs[{index}].{field}: {message}")]
    InvalidDoc {
        index: usize,
        field: String,
        message: String,
    },
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("{0}")]
    Io(String),
    /// The write was not applied and may succeed later: nothing was written.
    #[error("database unavailable ({cause}), nothing was written: {detail}")]
    Unavailable { cause: Transient, detail: String },
    #[error("the database writer is not running")]
    Closed,
    #[error("this server is not the primary; writes go to the primary")]
    NotPrimary,
    #[error("fenced: another server became primary (epoch moved on)")]
    Fenced,
}

/// Why the database could not take a write just now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// Another connection holds the write lock past the busy timeout.
    Busy,
    /// The disk (or the file system holding the data directory) is full.
    DiskFull,
    /// The operating system reported an I/O error.
    Io,
}

impl Transient {
    pub fn as_str(self) -> &'static str {
        match self {
            Transient::Busy => "busy",
            Transient::DiskFull => "disk full",
            Transient::Io => "I/O error",
        }
    }

    /// The transient condition behind a SQLite error, if it is one.
    pub fn of(e: &rusqlite::Error) -> Option<Transient> {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code()? {
            C::DatabaseBusy | C::DatabaseLocked => Some(Transient::Busy),
            C::DiskFull => Some(Transient::DiskFull),
            C::SystemIoFailure | C::CannotOpen | C::OutOfMemory => Some(Transient::Io),
            _ => None,
        }
    }
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<rusqlite::Error> for StoreError {
    /// Busy, locked, full and I/O errors become [`StoreError::Unavailable`]
    /// wherever they surface, so every caller sees "retry later".
    fn from(e: rusqlite::Error) -> StoreError {
        match Transient::of(&e) {
            Some(cause) => StoreError::Unavailable {
                cause,
                detail: e.to_string(),
            },
            None => StoreError::Sqlite(e),
        }
    }
}

impl StoreError {
    /// A transient condition: the same call may succeed later.
    pub fn unavailable(cause: Transient, detail: impl Into<String>) -> StoreError {
        StoreError::Unavailable {
            cause,
            detail: detail.into(),
        }
    }
}

/// Handle to the database: at most one writer (while primary), many readers.
pub struct Store {
    writer: std::sync::RwLock<Option<Arc<Writer>>>,
    pool: r2d2::Pool<SqliteConnectionManager>,
    path: PathBuf,
    metrics: Arc<Metrics>,
    busy_timeout: Duration,
    /// WAL pages after which the writer checkpoints (0: never).
    wal_autocheckpoint: u32,
    /// Bumped after every committed write batch (see [`Store::commits`]).
    commits: Arc<tokio::sync::watch::Sender<u64>>,
}

/// How long a connection waits for another's lock before giving up with
/// "busy" (the server's `--busy-timeout`).
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// WAL pages after which the writer checkpoints by default (SQLite's own
/// default; the server's `--wal-autocheckpoint`).
pub const DEFAULT_WAL_AUTOCHECKPOINT: u32 = 1000;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

/// Applies the pragmas every connection needs.
fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    // Room for every statement on the run path (rusqlite keeps 16 by
    // default: the hot path's ~30 statements would be re-prepared each time).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

/// Opens the read-write connection: WAL, pragmas, migrations, cluster row.
///
/// `wal_autocheckpoint` 0 turns the writer's checkpoints off. Litestream
/// then owns them: it checkpoints only what it has copied, and while it is
/// down (crashed, restarting) the WAL only grows, so a restarted Litestream
/// finds every frame it missed. A checkpoint by the server in that window
/// lets SQLite restart the WAL over frames Litestream never read, and
/// Litestream 0.5 can miss that and keep a replica that restores corrupt
/// (docs/dr.md).
fn open_rw(
    path: &Path,
    busy_timeout: Duration,
    wal_autocheckpoint: u32,
) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    // WAL first: it is persistent and shared by every later connection.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Io(format!(
            "could not enable WAL mode on {} (got {mode})",
            path.display()
        )));
    }
    configure(&conn, busy_timeout)?;
    // Savepoints and sorts stay in memory: no temp-file writes on the hot path.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "wal_autocheckpoint", wal_autocheckpoint)?;
    migrations::migrate(&mut conn)?;
    ensure_cluster_row(&conn)?;
    // Advice only: a failed look is logged, never a failed promotion.
    match litestream::checkpoint_conflict(&conn, wal_autocheckpoint) {
        Ok(false) => {}
        Ok(true) => tracing::warn!(wal_autocheckpoint, "{}", litestream::CONFLICT),
        Err(e) => tracing::warn!(error = %e, "could not look for Litestream's tables"),
    }
    Ok(conn)
}

impl Store {
    /// Opens the database read-only (a replica). The file may not exist yet;
    /// reads fail until it does.
    pub fn open_replica(path: &Path, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        Store::open_replica_with(path, metrics, DEFAULT_BUSY_TIMEOUT)
    }

    /// [`Store::open_replica`] with a busy timeout other than the default.
    pub fn open_replica_with(
        path: &Path,
        metrics: Arc<Metrics>,
        busy_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let manager = SqliteConnectionManager::file(path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(move |c| {
                c.busy_timeout(busy_timeout)?;
                c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                c.pragma_update(None, "query_only", "ON")
            });
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(5))
            .build_unchecked(manager);
        Ok(Store {
            writer: std::sync::RwLock::new(None),
            pool,
            path: path.to_path_buf(),
            metrics,
            busy_timeout,
            wal_autocheckpoint: DEFAULT_WAL_AUTOCHECKPOINT,
            commits: Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// Opens (creating if needed) the database, migrates it and becomes its
    /// writer at once (standalone servers and tests).
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        Store::open_with(path, metrics, DEFAULT_BUSY_TIMEOUT)
    }

    /// [`Store::open`] with a busy timeout other than the default.
    pub fn open_with(
        path: &Path,
        metrics: Arc<Metrics>,
        busy_timeout: Duration,
    ) -> Result<Store, StoreError> {
        // Create and migrate before the read pool connects.
        drop(open_rw(path, busy_timeout, DEFAULT_WAL_AUTOCHECKPOINT)?);
        let store = Store::open_replica_with(path, metrics, busy_timeout)?;
        store.promote_blocking(Box::new(|_| {}))?;
        Ok(store)
    }

    /// Sets the WAL pages after which this store's writer checkpoints (0:
    /// never, Litestream owns checkpoints); takes effect at the next
    /// promotion.
    pub fn with_wal_autocheckpoint(mut self, pages: u32) -> Store {
        self.wal_autocheckpoint = pages;
        self
    }

    /// Becomes the writer: opens read-write, migrates, bumps the epoch and
    /// starts the writer thread for the new term. Returns the new epoch.
    pub fn promote_blocking(&self, on_fenced: writer::OnFenced) -> Result<i64, StoreError> {
        let conn = open_rw(&self.path, self.busy_timeout, self.wal_autocheckpoint)?;
        let epoch = bump_epoch(&conn)?;
        let writer = Writer::spawn(
            conn,
            self.metrics.clone(),
            epoch,
            on_fenced,
            self.commits.clone(),
        )?;
        let old = self
            .writer
            .write()
            .map_err(|_| StoreError::Io("writer lock poisoned".into()))?
            .replace(Arc::new(writer));
        if old.is_some() {
            tracing::warn!("promoted while a writer was still open; the old one is dropped");
        }
        Ok(epoch)
    }

    /// Stops being the writer: flushes what is queued (unless fenced) and closes.
    pub async fn demote(&self) {
        let writer = self.writer.write().ok().and_then(|mut w| w.take());
        if let Some(w) = writer {
            w.shutdown().await;
        }
    }

    /// True while this store holds an unfenced writer.
    pub fn is_writer(&self) -> bool {
        self.current_writer().is_some_and(|w| !w.is_fenced())
    }

    fn current_writer(&self) -> Option<Arc<Writer>> {
        self.writer.read().ok().and_then(|w| w.clone())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// WAL pages after which this store's writer checkpoints (0: never).
    pub fn wal_autocheckpoint(&self) -> u32 {
        self.wal_autocheckpoint
    }

    /// Size of the database's WAL file in bytes (0 when there is none). It
    /// levels off once checkpoints reuse the file, and grows without bound
    /// while nothing checkpoints (`--wal-autocheckpoint 0` and Litestream
    /// down).
    pub fn wal_bytes(&self) -> u64 {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map_or(0, |m| m.len())
    }

    /// Changes after every write batch this server commits. A replica never
    /// commits: its followers poll as well (the file changes under it).
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Runs `f` in the next write batch; the result arrives after commit.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(f, |out| out).await
    }

    /// Commits `f`, then hands its outcome to `then`, which the writer runs
    /// once the batch's fate is known — even if the caller is dropped
    /// meanwhile. `then` must be quick and must not block (it runs on the
    /// writer thread).
    ///
    /// For a write whose commit must be followed by a change in memory
    /// (queue the runs it left, mark a node revoked in the registry, forget
    /// cached keys, wake the scheduler): an HTTP handler's future is dropped
    /// when its client goes away, and a change made after its `.await` would
    /// then never happen while the database says it should have.
    pub async fn write_then<T, U, F, A>(&self, f: F, then: A) -> Result<U, StoreError>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        A: FnOnce(Result<T, StoreError>) -> Result<U, StoreError> + Send + 'static,
    {
        match self.current_writer() {
            Some(w) => w.call_then(f, then).await,
            None => then(Err(StoreError::NotPrimary)),
        }
    }

    /// Runs `f` on a pooled read-only connection off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get()?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Io(format!("read task failed: {e}")))?
    }

    /// Synchronous read for start-up code and tests.
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.pool.get()?;
        f(&conn)
    }

    /// Flushes queued writes, checkpoints and stops the writer.
    pub async fn close(&self) {
        self.demote().await;
    }
}

fn ensure_cluster_row(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO cluster (id, epoch, created_at) VALUES (1, 0, ?1) ON CONFLICT (id) DO NOTHING",
        [sundial_proto::time::now_ms()],
    )?;
    Ok(())
}

/// Starts a new term as primary: increments and returns the cluster epoch,
/// with its `ha.promoted` event, in one transaction.
pub fn bump_epoch(conn: &Connection) -> Result<i64, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let bumped = (|| {
        let epoch: i64 = conn.query_row(
            "UPDATE cluster SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
            [],
            |r| r.get(0),
        )?;
        events::append(
            conn,
            sundial_proto::time::now_ms(),
            sundial_proto::event::EventType::HaPromoted,
            None,
            None,
            None,
            &serde_json::json!({ "epoch": epoch }),
        )?;
        Ok(epoch)
    })();
    match bumped {
        Ok(epoch) => {
            conn.execute_batch("COMMIT")?;
            Ok(epoch)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Reads the cluster epoch (fencing token).
pub fn epoch(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT epoch FROM cluster WHERE id = 1", [], |r| r.get(0))?)
}

/// A run's stored state or trigger as its type: a value that does not parse
/// is corrupt, and the error names the run.
pub(crate) fn run_value<T: std::str::FromStr<Err = String>>(
    run_id: i64,
    text: &str,
) -> Result<T, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("run {run_id}: {e}")))
}

/// Column `i` of a row as text, borrowed (a non-text value is an error).
pub(crate) fn column_str<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r str, StoreError> {
    Ok(row.get_ref(i)?.as_str().map_err(rusqlite::Error::from)?)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use sundial_proto::JobSpec;

    /// A store in a fresh temporary directory (kept alive by the returned guard).
    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(DB_FILE), Arc::new(Metrics::new())).unwrap();
        (dir, store)
    }

    /// Stores job `id` with `spec`, ready to have slots created.
    pub fn slot_job(c: &Connection, id: &str, spec: &JobSpec) -> lifecycle::SlotJob {
        jobs::upsert(c, id, spec, 0, |_| None).unwrap();
        lifecycle::SlotJob {
            pk: jobs::pk_of(c, id).unwrap().unwrap(),
            target: Arc::new(spec.target.clone()),
            executor_kind: spec.executor.kind(),
        }
    }

    /// Holds the writer thread (an operation blocks on it) until the
    /// returned sender is dropped, or for 10 s at most: the next writes wait
    /// in its queue, as they would behind a busy database.
    pub fn hold_writer(store: &Store) -> std::sync::mpsc::Sender<()> {
        use futures_util::FutureExt;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let hold = store.write(move |_| {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(10));
            Ok(())
        });
        // Polled once, the operation is on its way to the writer thread.
        assert!(hold.now_or_never().is_none());
        tx
    }

    /// A daemon's result of `attempt` with `outcome` (exit 0, no output,
    /// started at 1, finished at 2).
    pub fn result_of(
        outcome: sundial_proto::agent::Outcome,
        attempt: u32,
    ) -> sundial_proto::agent::CompleteRequest {
        sundial_proto::agent::CompleteRequest {
            attempt,
            outcome,
            exit_code: Some(0),
            output: String::new(),
            truncated: false,
            error: None,
            started_at: 1,
            finished_at: 2,
        }
    }

    /// Creates `job`'s scheduled slot at `at`; returns its queue entry.
    pub fn one_slot(c: &Connection, job: &lifecycle::SlotJob, at: i64) -> lifecycle::Queued {
        slot_on(c, job, at, &[""]).pop().unwrap()
    }

    /// Creates `job`'s scheduled slot at `at` with one run per node of
    /// `nodes` ("" for any node: not a broadcast); returns their queue entries.
    pub fn slot_on(
        c: &Connection,
        job: &lifecycle::SlotJob,
        at: i64,
        nodes: &[&str],
    ) -> Vec<lifecycle::Queued> {
        let mut fired = lifecycle::Fired::default();
        let mut p = super::prepared::Prepared::new(c);
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        lifecycle::create_slots(
            &mut p,
            job,
            sundial_proto::Trigger::Schedule,
            at,
            &nodes,
            0,
            &mut fired,
        )
        .unwrap();
        lifecycle::record_slots(&mut p, job.pk, lifecycle::NextFire::Keep, &fired).unwrap();
        fired.queued
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::temp_store;
    use super::{Metrics, Store, DB_FILE};
    use std::sync::Arc;

    #[tokio::test]
    async fn pragmas_and_group_commit() {
        let (_dir, store) = temp_store();
        let mode: String = store
            .read_blocking(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
        // Many concurrent writers, each sees its own result after commit.
        let store = std::sync::Arc::new(store);
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.write(move |c| {
                    c.execute(
                        "INSERT INTO api_keys (id, hash, scope, created_at) VALUES (?1, ?2, 'read', 0)",
                        rusqlite::params![format!("k{i}"), vec![i as u8, (i >> 8) as u8]],
                    )?;
                    Ok(i)
                })
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), i as i64);
        }
        let n: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM api_keys", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 200);
        store.close().await;
    }

    /// The writer's `PRAGMA wal_autocheckpoint`.
    async fn writer_wal_autocheckpoint(store: &Store) -> i64 {
        store
            .write(|c| Ok(c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?))
            .await
            .unwrap()
    }

    /// SQLite's 1,000 pages by default, what [`Store::with_wal_autocheckpoint`]
    /// set after a promotion. (What that does to the WAL:
    /// `server/tests/wal_checkpoints.rs`.)
    #[tokio::test]
    async fn the_writer_takes_its_wal_autocheckpoint_from_the_store() {
        let (_dir, store) = temp_store();
        assert_eq!(writer_wal_autocheckpoint(&store).await, 1000);
        store.close().await;

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_replica(&dir.path().join(DB_FILE), Arc::new(Metrics::new()))
            .unwrap()
            .with_wal_autocheckpoint(0);
        store.promote_blocking(Box::new(|_| {})).unwrap();
        assert_eq!(writer_wal_autocheckpoint(&store).await, 0);
        store.close().await;
    }

    #[tokio::test]
    async fn failing_op_rolls_back_alone() {
        let (_dir, store) = temp_store();
        let bad = store.write(|c| {
            c.execute(
                "INSERT INTO api_keys (id, hash, scope, created_at) VALUES ('a', x'01', 'read', 0)",
                [],
            )?;
            Err::<(), _>(super::StoreError::Conflict("nope".into()))
        });
        let good = store.write(|c| {
            c.execute(
                "INSERT INTO api_keys (id, hash, scope, created_at) VALUES ('b', x'02', 'read', 0)",
                [],
            )?;
            Ok(())
        });
        let (bad, good) = tokio::join!(bad, good);
        assert!(bad.is_err());
        good.unwrap();
        let ids: Vec<String> = store
            .read(|c| {
                let mut st = c.prepare("SELECT id FROM api_keys ORDER BY id")?;
                let rows = st.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(ids, vec!["b".to_string()]);
        store.close().await;
    }
}

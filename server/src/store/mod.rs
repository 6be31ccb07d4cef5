//! The SQLite store: opening the database with Sundial's pragmas, migrations,
//! the single writer ([`writer`]) and a pool of read-only connections.
//!
//! Domain queries live beside this file, one per table: [`jobs`], [`runs`],
//! [`keys`]. They take a `&Connection` so the same code serves reads (pool)
//! and writes (inside a writer batch).

pub mod apply;
pub mod jobs;
pub mod keys;
pub mod lifecycle;
pub mod migrations;
pub mod nodes;
pub mod runs;
pub mod tokens;
pub mod writer;

use crate::metrics::Metrics;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use writer::Writer;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "sundial.db";

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("read pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error(transparent)]
    Migration(#[from] migrations::MigrationError),
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("{0}")]
    Io(String),
    #[error("the database writer is not running")]
    Closed,
    #[error("this server is not the primary; writes go to the primary")]
    NotPrimary,
    #[error("fenced: another server became primary (epoch moved on)")]
    Fenced,
}

/// Handle to the database: at most one writer (while primary), many readers.
pub struct Store {
    writer: std::sync::RwLock<Option<Arc<Writer>>>,
    pool: r2d2::Pool<SqliteConnectionManager>,
    path: PathBuf,
    metrics: Arc<Metrics>,
}

/// Applies the pragmas every connection needs.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_millis(5000))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

/// Opens the read-write connection: WAL, pragmas, migrations, cluster row.
fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    // WAL first: it is persistent and shared by every later connection.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Io(format!(
            "could not enable WAL mode on {} (got {mode})",
            path.display()
        )));
    }
    configure(&conn)?;
    // Savepoints and sorts stay in memory: no temp-file writes on the hot path.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    migrations::migrate(&mut conn)?;
    ensure_cluster_row(&conn)?;
    Ok(conn)
}

impl Store {
    /// Opens the database read-only (a replica). The file may not exist yet;
    /// reads fail until it does.
    pub fn open_replica(path: &Path, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        let manager = SqliteConnectionManager::file(path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(|c| {
                c.busy_timeout(Duration::from_millis(5000))?;
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
        })
    }

    /// Opens (creating if needed) the database, migrates it and becomes its
    /// writer at once (standalone servers and tests).
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        // Create and migrate before the read pool connects.
        drop(open_rw(path)?);
        let store = Store::open_replica(path, metrics)?;
        store.promote_blocking(Box::new(|_| {}))?;
        Ok(store)
    }

    /// Becomes the writer: opens read-write, migrates, bumps the epoch and
    /// starts the writer thread for the new term. Returns the new epoch.
    pub fn promote_blocking(&self, on_fenced: writer::OnFenced) -> Result<i64, StoreError> {
        let conn = open_rw(&self.path)?;
        let epoch = bump_epoch(&conn)?;
        let writer = Writer::spawn(conn, self.metrics.clone(), epoch, on_fenced)?;
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

    /// Runs `f` in the next write batch; the result arrives after commit.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match self.current_writer() {
            Some(w) => w.call(f).await,
            None => Err(StoreError::NotPrimary),
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

/// Starts a new term as primary: increments and returns the cluster epoch.
pub fn bump_epoch(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "UPDATE cluster SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
        [],
        |r| r.get(0),
    )?)
}

/// Reads the cluster epoch (fencing token).
pub fn epoch(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT epoch FROM cluster WHERE id = 1", [], |r| r.get(0))?)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A store in a fresh temporary directory (kept alive by the returned guard).
    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(DB_FILE), Arc::new(Metrics::new())).unwrap();
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::temp_store;

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

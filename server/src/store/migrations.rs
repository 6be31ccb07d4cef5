//! Versioned schema migrations, applied in order inside one transaction each.
//! The applied version lives in SQLite's `user_version` pragma.

use rusqlite::Connection;

/// Each entry upgrades the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, runs, api keys, nodes, join tokens, cluster state.
    r#"
    CREATE TABLE cluster (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        epoch       INTEGER NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        id          TEXT PRIMARY KEY,
        hash        BLOB NOT NULL UNIQUE,
        scope       TEXT NOT NULL CHECK (scope IN ('admin', 'read')),
        name        TEXT NOT NULL DEFAULT '',
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE jobs (
        pk             INTEGER PRIMARY KEY,
        id             TEXT NOT NULL UNIQUE,
        spec           TEXT NOT NULL,
        schedule       TEXT NOT NULL,
        timezone       TEXT NOT NULL,
        misfire        TEXT NOT NULL,
        grace_ms       INTEGER NOT NULL,
        max_catch_up   INTEGER NOT NULL,
        concurrency    TEXT NOT NULL,
        target         TEXT NOT NULL DEFAULT '{}',
        executor_kind  TEXT NOT NULL DEFAULT 'exec',
        enabled        INTEGER NOT NULL,
        paused         INTEGER NOT NULL DEFAULT 0,
        next_fire_at   INTEGER,
        keep_runs      INTEGER,
        max_age_ms     INTEGER,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL,
        runs_total     INTEGER NOT NULL DEFAULT 0,
        runs_succeeded INTEGER NOT NULL DEFAULT 0,
        runs_failed    INTEGER NOT NULL DEFAULT 0,
        last_run_id    INTEGER,
        last_run_at    INTEGER,
        last_state     TEXT
    );
    CREATE INDEX jobs_due ON jobs (next_fire_at)
        WHERE next_fire_at IS NOT NULL AND enabled = 1 AND paused = 0;
    CREATE TABLE runs (
        id             INTEGER PRIMARY KEY,
        job            INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        trigger        TEXT NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'manual')),
        scheduled_for  INTEGER NOT NULL,
        node           TEXT NOT NULL DEFAULT '',
        attempt        INTEGER NOT NULL DEFAULT 1,
        state          TEXT NOT NULL,
        created_at     INTEGER NOT NULL,
        started_at     INTEGER,
        finished_at    INTEGER,
        exit_code      INTEGER,
        output         TEXT,
        truncated      INTEGER NOT NULL DEFAULT 0,
        error          TEXT,
        assigned_node  TEXT,
        last_node      TEXT,
        lease_expires_at INTEGER,
        not_before     INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        UNIQUE (job, trigger, scheduled_for, node)
    );
    CREATE INDEX runs_by_job ON runs (job, id);
    CREATE INDEX runs_by_state ON runs (state, id);
    CREATE INDEX runs_active_by_job ON runs (job) WHERE state = 'running';
    CREATE TABLE nodes (
        id          TEXT PRIMARY KEY,
        generation  INTEGER NOT NULL DEFAULT 1,
        revoked     INTEGER NOT NULL DEFAULT 0,
        labels      TEXT NOT NULL DEFAULT '{}',
        capacity    INTEGER NOT NULL DEFAULT 0,
        executors   TEXT NOT NULL DEFAULT '[]',
        version     TEXT NOT NULL DEFAULT '',
        joined_at   INTEGER NOT NULL,
        last_seen   INTEGER
    );
    CREATE TABLE join_tokens (
        id          TEXT PRIMARY KEY,
        hash        BLOB NOT NULL UNIQUE,
        name        TEXT NOT NULL DEFAULT '',
        expires_at  INTEGER NOT NULL,
        max_uses    INTEGER,
        uses        INTEGER NOT NULL DEFAULT 0,
        created_at  INTEGER NOT NULL
    );
    "#,
    // Job labels (selection and pruning by `POST /v1/jobs:apply`), as JSON.
    r#"
    ALTER TABLE jobs ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Errors while bringing a database up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade sundial-server")]
    TooNew { found: i64, supported: i64 },
    #[error("applying migration {version}: {source}")]
    Apply {
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error("reading schema version: {0}")]
    Read(#[from] rusqlite::Error),
}

/// Applies every migration newer than the database's `user_version`.
pub fn migrate(conn: &mut Connection) -> Result<i64, MigrationError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(MigrationError::TooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        };
        apply(conn).map_err(|source| MigrationError::Apply { version, source })?;
    }
    Ok(SCHEMA_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_fresh_and_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(migrate(&mut conn).unwrap(), SCHEMA_VERSION);
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn refuses_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(MigrationError::TooNew { .. })
        ));
    }
}

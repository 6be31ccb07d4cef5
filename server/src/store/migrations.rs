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
    // 2: runs.state is one of the run states (CHECK, like trigger); trigger
    // may be 'chain', with the upstream run that started it (one chained run
    // per upstream slot: UNIQUE). SQLite cannot add a CHECK to a column, so
    // the table is rebuilt; a row with any other state fails the migration
    // (nothing is changed) rather than being carried over.
    r#"
    CREATE TABLE runs_v2 (
        id             INTEGER PRIMARY KEY,
        job            INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        trigger        TEXT NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'manual', 'chain')),
        scheduled_for  INTEGER NOT NULL,
        node           TEXT NOT NULL DEFAULT '',
        attempt        INTEGER NOT NULL DEFAULT 1,
        state          TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded',
                           'failed', 'timed_out', 'lost', 'cancelled', 'skipped')),
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
        upstream_run   INTEGER,
        UNIQUE (job, trigger, scheduled_for, node)
    );
    INSERT INTO runs_v2 (id, job, trigger, scheduled_for, node, attempt, state, created_at,
        started_at, finished_at, exit_code, output, truncated, error, assigned_node, last_node,
        lease_expires_at, not_before, cancel_requested)
    SELECT id, job, trigger, scheduled_for, node, attempt, state, created_at,
        started_at, finished_at, exit_code, output, truncated, error, assigned_node, last_node,
        lease_expires_at, not_before, cancel_requested FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_v2 RENAME TO runs;
    CREATE INDEX runs_by_job ON runs (job, id);
    CREATE INDEX runs_by_state ON runs (state, id);
    CREATE INDEX runs_active_by_job ON runs (job) WHERE state = 'running';
    CREATE UNIQUE INDEX runs_by_upstream ON runs (job, upstream_run, node)
        WHERE upstream_run IS NOT NULL;
    "#,
    // 3: the event outbox. Ids never go back, because they are every
    // reader's cursor: pruning never deletes the newest event, so the next
    // rowid is always past every id handed out (no AUTOINCREMENT needed,
    // which would cost a write of sqlite_sequence per event).
    r#"
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY,
        at       INTEGER NOT NULL,
        type     TEXT NOT NULL,
        job_id   TEXT,
        run_id   INTEGER,
        node_id  TEXT,
        data     TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_by_job ON events (job_id, id);
    CREATE INDEX events_by_time ON events (at);
    "#,
    // 4: webhooks and their delivery log. No secret is stored: a webhook's
    // secret is derived from the cluster secret and its salt.
    r#"
    CREATE TABLE webhooks (
        id               TEXT PRIMARY KEY,
        spec             TEXT NOT NULL,
        salt             BLOB NOT NULL,
        cursor           INTEGER NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        first_attempt_at INTEGER,
        next_attempt_at  INTEGER,
        last_error       TEXT,
        created_at       INTEGER NOT NULL
    );
    CREATE TABLE webhook_deliveries (
        id          INTEGER PRIMARY KEY,
        webhook_id  TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        message_id  TEXT NOT NULL,
        event_id    INTEGER,
        attempt     INTEGER NOT NULL,
        at          INTEGER NOT NULL,
        status      INTEGER,
        latency_ms  INTEGER NOT NULL,
        error       TEXT,
        outcome     TEXT NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'failed'))
    );
    CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id, id);
    CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (at);
    "#,
    // 5: job chains: which job runs after which (by upstream id, so an
    // upstream deleted and created again keeps its followers).
    r#"
    CREATE TABLE job_after (
        downstream  INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        upstream    TEXT NOT NULL,
        states      TEXT NOT NULL,
        PRIMARY KEY (upstream, downstream)
    );
    CREATE INDEX job_after_by_downstream ON job_after (downstream);
    "#,
    // 6: web console sessions. Only a hash of the session token is
    // stored; the key id ties a session to its API key (deleting the key ends it).
    r#"
    CREATE TABLE ui_sessions (
        token_hash  BLOB PRIMARY KEY,
        key_id      TEXT NOT NULL,
        scope       TEXT NOT NULL CHECK (scope IN ('admin', 'read')),
        csrf        TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
    "#,
    // 7: job labels (selection and pruning by `POST /v1/jobs:apply`), as JSON.
    r#"
    ALTER TABLE jobs ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
    "#,
    // 8: overdue alerts: the job's threshold, its last success and since
    // when it is overdue (so an alert fires once, across failovers too).
    r#"
    ALTER TABLE jobs ADD COLUMN overdue_after_ms INTEGER;
    ALTER TABLE jobs ADD COLUMN last_success_at INTEGER;
    ALTER TABLE jobs ADD COLUMN overdue_since INTEGER;
    CREATE INDEX jobs_watched ON jobs (pk) WHERE overdue_after_ms IS NOT NULL;
    CREATE INDEX jobs_overdue ON jobs (overdue_since) WHERE overdue_since IS NOT NULL;
    "#,
    // 9: since when a node is down (no contact for two minutes), so
    // `node.down` fires once, across failovers too.
    r#"
    ALTER TABLE nodes ADD COLUMN down_since INTEGER;
    "#,
    // 10: accepted agent nonces, so a signed request captured before a restart
    // or a failover cannot be replayed within the timestamp window (pruned
    // past it). `ts` is the request's signed timestamp (unix seconds).
    r#"
    CREATE TABLE agent_nonces (
        node   TEXT NOT NULL,
        nonce  TEXT NOT NULL,
        ts     INTEGER NOT NULL,
        PRIMARY KEY (node, nonce)
    ) WITHOUT ROWID;
    CREATE INDEX agent_nonces_ts ON agent_nonces (ts);
    "#,
    // 11: API key expiry (NULL: never) and last use (updated in batches,
    // about once a minute, NULL until first used).
    r#"
    ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
    ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
    "#,
    // 12: the audit log of admin mutations (store/audit.rs), written with
    // the change it records. AUTOINCREMENT: ids never repeat after pruning,
    // so paging cursors stay valid. No secrets: digests of non-secret state.
    r#"
    CREATE TABLE audit (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        at            INTEGER NOT NULL,
        key_id        TEXT NOT NULL,
        key_name      TEXT,
        source        TEXT,
        via           TEXT,
        action        TEXT NOT NULL,
        target        TEXT,
        before_digest TEXT,
        after_digest  TEXT,
        detail        TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_at ON audit (at);
    CREATE INDEX audit_target ON audit (target, id);
    CREATE INDEX audit_key ON audit (key_id, id);
    "#,
    // 13: the same CHECKs on runs.trigger and runs.state, written as OR
    // chains. SQLite evaluates a CHECK's `IN (…)` list of more than two
    // constants by building an ephemeral index on every insert and every
    // state change (four per run: 3–4 % of the writer at 10,000 runs/s);
    // an OR chain compares in place and stops at the first match. The
    // table is rebuilt (SQLite cannot change a CHECK); rows and ids carry
    // over unchanged.
    r#"
    CREATE TABLE runs_v3 (
        id             INTEGER PRIMARY KEY,
        job            INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        trigger        TEXT NOT NULL CHECK (trigger = 'schedule' OR trigger = 'manual'
                           OR trigger = 'chain' OR trigger = 'catch_up'),
        scheduled_for  INTEGER NOT NULL,
        node           TEXT NOT NULL DEFAULT '',
        attempt        INTEGER NOT NULL DEFAULT 1,
        state          TEXT NOT NULL CHECK (state = 'pending' OR state = 'running'
                           OR state = 'succeeded' OR state = 'failed' OR state = 'timed_out'
                           OR state = 'lost' OR state = 'cancelled' OR state = 'skipped'),
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
        upstream_run   INTEGER,
        UNIQUE (job, trigger, scheduled_for, node)
    );
    INSERT INTO runs_v3 (id, job, trigger, scheduled_for, node, attempt, state, created_at,
        started_at, finished_at, exit_code, output, truncated, error, assigned_node, last_node,
        lease_expires_at, not_before, cancel_requested, upstream_run)
    SELECT id, job, trigger, scheduled_for, node, attempt, state, created_at,
        started_at, finished_at, exit_code, output, truncated, error, assigned_node, last_node,
        lease_expires_at, not_before, cancel_requested, upstream_run FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_v3 RENAME TO runs;
    CREATE INDEX runs_by_job ON runs (job, id);
    CREATE INDEX runs_by_state ON runs (state, id);
    CREATE INDEX runs_active_by_job ON runs (job) WHERE state = 'running';
    CREATE UNIQUE INDEX runs_by_upstream ON runs (job, upstream_run, node)
        WHERE upstream_run IS NOT NULL;
    "#,
    // 14: no secondary index on events. No query used them: the stream
    // (`GET /v1/events`, also with `?job=`) and pruning walk the rowid with
    // a bounded scan. `events_by_job` cost the most: keyed by the job's id,
    // each run's two events landed on two random leaves, so a transaction
    // assigning or completing a few hundred runs of different jobs wrote a
    // page to the WAL per event.
    r#"
    DROP INDEX IF EXISTS events_by_job;
    DROP INDEX IF EXISTS events_by_time;
    "#,
    // 15: a job's run counters move to a narrow table of their own. Every
    // assignment and result updates them; in `jobs` (a few hundred bytes a
    // row with the spec) a transaction of a few hundred runs of different
    // jobs dirtied a page per job, in `job_stats` (~40 bytes a row) the
    // same runs share a few dozen pages. Readers join on `pk`
    // ([`super::jobs::WITH_STATS`]).
    r#"
    CREATE TABLE job_stats (
        pk              INTEGER PRIMARY KEY REFERENCES jobs (pk) ON DELETE CASCADE,
        runs_total      INTEGER NOT NULL DEFAULT 0,
        runs_succeeded  INTEGER NOT NULL DEFAULT 0,
        runs_failed     INTEGER NOT NULL DEFAULT 0,
        last_run_id     INTEGER,
        last_run_at     INTEGER,
        last_state      TEXT,
        last_success_at INTEGER
    );
    INSERT INTO job_stats (pk, runs_total, runs_succeeded, runs_failed, last_run_id,
        last_run_at, last_state, last_success_at)
    SELECT pk, runs_total, runs_succeeded, runs_failed, last_run_id,
        last_run_at, last_state, last_success_at FROM jobs;
    ALTER TABLE jobs DROP COLUMN runs_total;
    ALTER TABLE jobs DROP COLUMN runs_succeeded;
    ALTER TABLE jobs DROP COLUMN runs_failed;
    ALTER TABLE jobs DROP COLUMN last_run_id;
    ALTER TABLE jobs DROP COLUMN last_run_at;
    ALTER TABLE jobs DROP COLUMN last_state;
    ALTER TABLE jobs DROP COLUMN last_success_at;
    "#,
    // 16: what the scheduler writes and reads per job moves to the narrow
    // row too: the next fire, and the two flags that say whether it fires
    // (`enabled`, a copy of the spec's, and `paused`), with the due index
    // on them. Each fire moved the next fire in `jobs`: one rewritten
    // page per ~10 jobs (the rows carry the spec), which was half of a
    // slot's writer time; the same fire now updates the counters row it
    // already wrote.
    r#"
    ALTER TABLE job_stats ADD COLUMN enabled INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE job_stats ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE job_stats ADD COLUMN next_fire_at INTEGER;
    UPDATE job_stats SET (enabled, paused, next_fire_at) =
        (SELECT enabled, paused, next_fire_at FROM jobs WHERE jobs.pk = job_stats.pk);
    DROP INDEX jobs_due;
    ALTER TABLE jobs DROP COLUMN enabled;
    ALTER TABLE jobs DROP COLUMN paused;
    ALTER TABLE jobs DROP COLUMN next_fire_at;
    CREATE INDEX jobs_due ON job_stats (next_fire_at)
        WHERE next_fire_at IS NOT NULL AND enabled = 1 AND paused = 0;
    "#,
    // 17: the receipt of the poll that handed out a run's current attempt
    // (crate::receipts), so that a server that becomes primary can hand
    // back what an earlier term gave out and its node never read.
    r#"
    ALTER TABLE runs ADD COLUMN receipt INTEGER;
    "#,
    // 18: run ids are never handed out twice. Without AUTOINCREMENT,
    // SQLite gives a new row the largest id + 1, so deleting the job that
    // owned the newest runs handed their ids out again: a daemon still
    // running the deleted job's run reported its result onto another job's
    // run, and `SUNDIAL_RUN_ID` and the events repeated. The table is
    // rebuilt (the only way to add AUTOINCREMENT); rows and ids carry over,
    // and the sequence starts past every run id a row or an event still
    // names.
    r#"
    CREATE TABLE runs_v4 (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        job            INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        trigger        TEXT NOT NULL CHECK (trigger = 'schedule' OR trigger = 'manual'
                           OR trigger = 'chain' OR trigger = 'catch_up'),
        scheduled_for  INTEGER NOT NULL,
        node           TEXT NOT NULL DEFAULT '',
        attempt        INTEGER NOT NULL DEFAULT 1,
        state          TEXT NOT NULL CHECK (state = 'pending' OR state = 'running'
                           OR state = 'succeeded' OR state = 'failed' OR state = 'timed_out'
                           OR state = 'lost' OR state = 'cancelled' OR state = 'skipped'),
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
        upstream_run   INTEGER,
        receipt        INTEGER,
        UNIQUE (job, trigger, scheduled_for, node)
    );
    INSERT INTO runs_v4 (id, job, trigger, scheduled_for, node, attempt, state, created_at,
        started_at, finished_at, exit_code, output, truncated, error, assigned_node, last_node,
        lease_expires_at, not_before, cancel_requested, upstream_run, receipt)
    SELECT id, job, trigger, scheduled_for, node, attempt, state, created_at,
        started_at, finished_at, exit_code, output, truncated, error, assigned_node, last_node,
        lease_expires_at, not_before, cancel_requested, upstream_run, receipt FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_v4 RENAME TO runs;
    CREATE INDEX runs_by_job ON runs (job, id);
    CREATE INDEX runs_by_state ON runs (state, id);
    CREATE INDEX runs_active_by_job ON runs (job) WHERE state = 'running';
    CREATE UNIQUE INDEX runs_by_upstream ON runs (job, upstream_run, node)
        WHERE upstream_run IS NOT NULL;
    DELETE FROM sqlite_sequence WHERE name = 'runs';
    INSERT INTO sqlite_sequence (name, seq) SELECT 'runs', max(
        coalesce((SELECT max(id) FROM runs), 0),
        coalesce((SELECT max(run_id) FROM events), 0),
        coalesce((SELECT max(last_run_id) FROM job_stats), 0));
    "#,
    // 19: the pending runs of broadcast slots by node, for the alerts
    // loop that ends those whose node is down or revoked
    // (`lifecycle::end_runs_of_gone_nodes`) once a second. Partial: a
    // slot for any node (`node = ''`, the hot path's) never enters it, and
    // a backlog of those while every daemon is away is not scanned.
    r#"
    CREATE INDEX runs_pending_by_node ON runs (node) WHERE state = 'pending' AND node != '';
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

    /// An in-memory database brought to `version` (no later migration).
    fn at_version(version: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version as i64)
            .unwrap();
        conn
    }

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
    fn runs_state_is_checked_and_v1_rows_carry_over() {
        let mut conn = Connection::open_in_memory().unwrap();
        // A version-1 database with a run in it.
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO jobs (pk, id, spec, schedule, timezone, misfire, grace_ms, max_catch_up,
                 concurrency, enabled, created_at, updated_at)
             VALUES (1, 'j', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 1, 0, 0);
             INSERT INTO runs (job, trigger, scheduled_for, state, created_at)
             VALUES (1, 'schedule', 1000, 'succeeded', 1);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let state: String = conn
            .query_row(
                "SELECT state FROM runs WHERE scheduled_for = 1000",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(state, "succeeded");
        let bad = conn.execute(
            "INSERT INTO runs (job, trigger, scheduled_for, state, created_at)
             VALUES (1, 'schedule', 2000, 'done', 1)",
            [],
        );
        assert!(bad.unwrap_err().to_string().contains("CHECK"));
        // A version-1 row with an unknown state stops the migration, changing nothing.
        let mut old = Connection::open_in_memory().unwrap();
        old.execute_batch(MIGRATIONS[0]).unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        old.execute_batch(
            "INSERT INTO jobs (pk, id, spec, schedule, timezone, misfire, grace_ms, max_catch_up,
                 concurrency, enabled, created_at, updated_at)
             VALUES (1, 'j', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 1, 0, 0);
             INSERT INTO runs (job, trigger, scheduled_for, state, created_at)
             VALUES (1, 'schedule', 1000, 'weird', 1);",
        )
        .unwrap();
        let err = migrate(&mut old).unwrap_err();
        assert!(
            matches!(err, MigrationError::Apply { version: 2, .. }),
            "{err}"
        );
        let v: i64 = old
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
    }

    #[test]
    fn v13_keeps_every_run_and_its_checks() {
        let mut conn = at_version(12);
        conn.execute_batch(
            "INSERT INTO jobs (pk, id, spec, schedule, timezone, misfire, grace_ms, max_catch_up,
                 concurrency, enabled, created_at, updated_at)
             VALUES (1, 'j', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 1, 0, 0);
             INSERT INTO runs (id, job, trigger, scheduled_for, state, created_at, output)
             VALUES (7, 1, 'schedule', 1000, 'succeeded', 1, 'out'),
                    (9, 1, 'catch_up', 2000, 'running', 2, NULL),
                    (12, 1, 'chain', 3000, 'pending', 3, NULL);",
        )
        .unwrap();
        let before: Vec<(i64, String, String)> = {
            let mut st = conn
                .prepare("SELECT id, trigger, state FROM runs ORDER BY id")
                .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        migrate(&mut conn).unwrap();
        let mut st = conn
            .prepare("SELECT id, trigger, state FROM runs ORDER BY id")
            .unwrap();
        let after: Vec<(i64, String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(before, after);
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'runs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            !sql.contains(" IN ("),
            "no IN lists in the runs CHECKs: {sql}"
        );
        // The checks still refuse what they refused, and the indexes are back.
        for (trigger, state) in [("schedule", "done"), ("cron", "pending")] {
            let bad = conn.execute(
                "INSERT INTO runs (job, trigger, scheduled_for, state, created_at)
                 VALUES (1, ?1, 5000, ?2, 1)",
                [trigger, state],
            );
            assert!(bad.unwrap_err().to_string().contains("CHECK"));
        }
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'runs'
                   AND name IN ('runs_by_job', 'runs_by_state', 'runs_active_by_job', 'runs_by_upstream')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 4);
        // New rows continue past the old ids.
        conn.execute(
            "INSERT INTO runs (job, trigger, scheduled_for, state, created_at)
             VALUES (1, 'manual', 6000, 'pending', 1)",
            [],
        )
        .unwrap();
        assert!(conn.last_insert_rowid() > 12);
    }

    #[test]
    fn v14_drops_the_event_indexes_and_keeps_every_event() {
        let mut conn = at_version(13);
        conn.execute_batch(
            "INSERT INTO events (id, at, type, job_id, data) VALUES
                 (3, 10, 'job.created', 'a', '{}'), (8, 20, 'run.started', 'b', '{}');",
        )
        .unwrap();
        let indexes = |c: &Connection| -> i64 {
            c.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(indexes(&conn), 2);
        migrate(&mut conn).unwrap();
        assert_eq!(indexes(&conn), 0);
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM events ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, [3, 8]);
        // The stream's query (also with a job filter) walks the rowid.
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM events
                 WHERE id > ?1 AND (?2 IS NULL OR job_id = ?2) ORDER BY id LIMIT ?3",
                rusqlite::params![0, "b", 10],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("INTEGER PRIMARY KEY"), "{plan}");
    }

    #[test]
    fn v15_moves_the_run_counters_to_job_stats() {
        let mut conn = at_version(14);
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        conn.execute_batch(
            "INSERT INTO jobs (pk, id, spec, schedule, timezone, misfire, grace_ms, max_catch_up,
                 concurrency, enabled, created_at, updated_at, runs_total, runs_succeeded,
                 runs_failed, last_run_id, last_run_at, last_state, last_success_at, overdue_since)
             VALUES (4, 'a', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 1, 0, 0,
                     7, 5, 2, 70, 7000, 'failed', 6000, 6500),
                    (9, 'b', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 1, 0, 0,
                     0, 0, 0, NULL, NULL, NULL, NULL, NULL);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        type Stats = (
            i64,
            i64,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<i64>,
        );
        let stats: Vec<Stats> = conn
            .prepare(
                "SELECT pk, runs_total, runs_succeeded, runs_failed, last_run_id, last_run_at,
                        last_state, last_success_at FROM job_stats ORDER BY pk",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            stats,
            vec![
                (
                    4,
                    7,
                    5,
                    2,
                    Some(70),
                    Some(7000),
                    Some("failed".into()),
                    Some(6000)
                ),
                (9, 0, 0, 0, None, None, None, None),
            ]
        );
        // The counters left `jobs`; what stays there is untouched.
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'jobs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            !sql.contains("runs_total") && !sql.contains("last_state"),
            "{sql}"
        );
        let overdue: Option<i64> = conn
            .query_row("SELECT overdue_since FROM jobs WHERE pk = 4", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(overdue, Some(6500));
        // A job's counters go with it.
        conn.execute("DELETE FROM jobs WHERE pk = 4", []).unwrap();
        let left: i64 = conn
            .query_row("SELECT count(*) FROM job_stats", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
    }

    #[test]
    fn v16_moves_the_next_fire_and_the_flags_to_job_stats() {
        let mut conn = at_version(15);
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        // Active, paused and disabled, each with a next fire; one that
        // never fires again.
        conn.execute_batch(
            "INSERT INTO jobs (pk, id, spec, schedule, timezone, misfire, grace_ms, max_catch_up,
                 concurrency, enabled, paused, next_fire_at, created_at, updated_at)
             VALUES (1, 'active', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 1, 0, 3000, 0, 0),
                    (2, 'paused', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 1, 1, 1000, 0, 0),
                    (3, 'disabled', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 0, 0, 2000, 0, 0),
                    (4, 'done', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 1, 0, NULL, 0, 0);
             INSERT INTO job_stats (pk, runs_total) VALUES (1, 7), (2, 0), (3, 0), (4, 1);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let rows: Vec<(i64, bool, bool, Option<i64>, i64)> = conn
            .prepare(
                "SELECT pk, enabled, paused, next_fire_at, runs_total FROM job_stats ORDER BY pk",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (1, true, false, Some(3000), 7),
                (2, true, true, Some(1000), 0),
                (3, false, false, Some(2000), 0),
                (4, true, false, None, 1),
            ]
        );
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'jobs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            !sql.contains("next_fire_at") && !sql.contains("paused") && !sql.contains("enabled"),
            "{sql}"
        );
        // The due index holds the active job only, and the scheduler's
        // query walks it.
        let plan: String = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT pk FROM job_stats
                 WHERE next_fire_at IS NOT NULL AND enabled = 1 AND paused = 0
                   AND next_fire_at <= 5000 ORDER BY next_fire_at",
            )
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("; ");
        assert!(plan.contains("USING INDEX jobs_due"), "{plan}");
        let due: Vec<i64> = conn
            .prepare(
                "SELECT pk FROM job_stats INDEXED BY jobs_due
                 WHERE next_fire_at IS NOT NULL AND enabled = 1 AND paused = 0",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(due, vec![1]);
    }

    #[test]
    fn v18_never_hands_a_run_id_out_twice() {
        let mut conn = at_version(17);
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        // Runs 1-3 of two jobs; run 5 (gone) is still named by an event.
        conn.execute_batch(
            "INSERT INTO jobs (pk, id, spec, schedule, timezone, misfire, grace_ms, max_catch_up,
                 concurrency, created_at, updated_at)
             VALUES (1, 'a', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 0, 0),
                    (2, 'b', '{}', '@hourly', 'UTC', 'skip', 0, 1, 'allow', 0, 0);
             INSERT INTO runs (id, job, trigger, scheduled_for, state, created_at, receipt)
             VALUES (1, 1, 'schedule', 1, 'succeeded', 0, NULL),
                    (2, 1, 'schedule', 2, 'running', 0, 77),
                    (3, 2, 'schedule', 3, 'pending', 0, NULL);
             INSERT INTO events (at, type, run_id) VALUES (0, 'run.created', 5);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let kept: Vec<(i64, Option<i64>)> = conn
            .prepare("SELECT id, receipt FROM runs ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, vec![(1, None), (2, Some(77)), (3, None)]);
        assert_eq!(insert_for(&conn, 1), 6, "past the id an event still names");
        // Deleting the job that owns the newest runs frees no id.
        conn.execute("DELETE FROM jobs WHERE pk = 1", []).unwrap();
        assert_eq!(insert_for(&conn, 2), 7);
    }

    /// A new manual run of job `pk`; its id.
    fn insert_for(conn: &Connection, pk: i64) -> i64 {
        conn.execute(
            "INSERT INTO runs (job, trigger, scheduled_for, state, created_at)
             VALUES (?1, 'manual', 0, 'pending', 0)",
            [pk],
        )
        .unwrap();
        conn.last_insert_rowid()
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

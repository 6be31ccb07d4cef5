//! Offline inspection of a database file (`sundial-server check`): integrity,
//! schema version against this build, consistency between tables (foreign
//! keys, a `job_stats` row per job), and what the file holds (jobs, runs by
//! state, nodes, epoch). Used after a restore (`scripts/restore.sh`) and by
//! operators before pointing a server at a file. Opens the file read-only and
//! never writes it; a file with no `-wal` or `-shm` beside it (a restored
//! copy, a backup) is opened immutable, so the check creates neither.

use crate::store::migrations::SCHEMA_VERSION;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Why a file is not a usable Sundial database.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{path}: no such file")]
    Missing { path: String },
    #[error("{path}: is a directory; name the database file in it (e.g. {path}/sundial.db)")]
    Directory { path: String },
    #[error("{path}: cannot open as SQLite: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: integrity check failed: {detail}")]
    Integrity { path: String, detail: String },
    #[error("{path}: not a Sundial database (schema version 0, no tables)")]
    NotSundial { path: String },
    #[error("{path}: schema version {found} is newer than this build supports ({supported}); use a newer sundial-server")]
    TooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("{path}: inconsistent: {detail}")]
    Inconsistent { path: String, detail: String },
    #[error("{path}: reading {what}: {source}")]
    Query {
        path: String,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

impl CheckError {
    /// A stable name for the kind of failure (the `--json` output's `error.kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            CheckError::Missing { .. } => "missing",
            CheckError::Directory { .. } => "directory",
            CheckError::Open { .. } => "open",
            CheckError::Integrity { .. } => "integrity",
            CheckError::NotSundial { .. } => "not_sundial",
            CheckError::TooNew { .. } => "too_new",
            CheckError::Inconsistent { .. } => "inconsistent",
            CheckError::Query { .. } => "query",
        }
    }

    /// The failure as `--json` prints it: `{"path", "error": {"kind", "message"}}`.
    pub fn to_json(&self, path: &Path) -> serde_json::Value {
        serde_json::json!({
            "path": path.display().to_string(),
            "error": {"kind": self.kind(), "message": self.to_string()},
        })
    }
}

/// What a healthy file holds.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Report {
    pub path: String,
    /// `ok` from `PRAGMA integrity_check`.
    pub integrity: String,
    pub schema_version: i64,
    /// The version this build writes; a lower `schema_version` is migrated on start.
    pub supported_schema_version: i64,
    pub epoch: i64,
    pub jobs: i64,
    pub runs: i64,
    pub runs_by_state: BTreeMap<String, i64>,
    pub nodes: i64,
    /// Newest `scheduled_for` of any run (unix ms), if there are runs.
    pub newest_run_scheduled_for: Option<i64>,
    /// Newest `finished_at` of any run (unix ms), if any run finished.
    pub newest_run_finished_at: Option<i64>,
}

/// Checks the database file at `path`.
pub fn check(path: &Path) -> Result<Report, CheckError> {
    let name = path.display().to_string();
    if path.is_dir() {
        return Err(CheckError::Directory { path: name });
    }
    if !path.is_file() {
        return Err(CheckError::Missing { path: name });
    }
    let conn = open_read_only(path).map_err(|source| CheckError::Open {
        path: name.clone(),
        source,
    })?;
    let q = |what: &'static str| {
        let path = name.clone();
        move |source| CheckError::Query {
            path: path.clone(),
            what,
            source,
        }
    };
    // integrity_check returns "ok" or one row per problem; a file that is not
    // SQLite at all fails here with "file is not a database".
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|source| CheckError::Open {
            path: name.clone(),
            source,
        })?;
    if problems != ["ok"] {
        return Err(CheckError::Integrity {
            path: name,
            detail: problems.join("; "),
        });
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(q("schema version"))?;
    if version == 0 {
        return Err(CheckError::NotSundial { path: name });
    }
    if version > SCHEMA_VERSION {
        return Err(CheckError::TooNew {
            path: name,
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let count = |sql: &str, what: &'static str| -> Result<i64, CheckError> {
        conn.query_row(sql, [], |r| r.get(0)).map_err(q(what))
    };
    let inconsistencies = consistency(&conn, version).map_err(q("consistency"))?;
    if !inconsistencies.is_empty() {
        return Err(CheckError::Inconsistent {
            path: name,
            detail: inconsistencies.join("; "),
        });
    }
    let epoch = count("SELECT coalesce(max(epoch), 0) FROM cluster", "epoch")?;
    let jobs = count("SELECT count(*) FROM jobs", "jobs")?;
    let nodes = count("SELECT count(*) FROM nodes", "nodes")?;
    let mut runs_by_state = BTreeMap::new();
    let mut runs = 0;
    {
        let mut stmt = conn
            .prepare("SELECT state, count(*) FROM runs GROUP BY state ORDER BY state")
            .map_err(q("runs"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(q("runs"))?;
        for row in rows {
            let (state, n) = row.map_err(q("runs"))?;
            runs += n;
            runs_by_state.insert(state, n);
        }
    }
    let (newest_run_scheduled_for, newest_run_finished_at) = conn
        .query_row(
            "SELECT max(scheduled_for), max(finished_at) FROM runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(q("run times"))?;
    Ok(Report {
        path: name,
        integrity: "ok".into(),
        schema_version: version,
        supported_schema_version: SCHEMA_VERSION,
        epoch,
        jobs,
        runs,
        runs_by_state,
        nodes,
        newest_run_scheduled_for,
        newest_run_finished_at,
    })
}

/// Opens `path` read-only. Without a `-wal` or `-shm` beside it no
/// connection has the file open in WAL mode (a server keeps both while it
/// runs), and the check is for files no server writes meanwhile (restored
/// copies, backups, stopped servers): it is opened immutable, which reads
/// the file alone and creates neither. Otherwise the WAL is read too.
fn open_read_only(path: &Path) -> Result<Connection, rusqlite::Error> {
    let beside = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p).exists()
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if beside("-wal") || beside("-shm") {
        return Connection::open_with_flags(path, flags);
    }
    Connection::open_with_flags(
        format!("file:{}?immutable=1", uri_path(path)),
        flags | OpenFlags::SQLITE_OPEN_URI,
    )
}

/// `path` for a `file:` URI: the characters a URI gives a meaning to
/// percent-encoded.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'%' | b'?' | b'#' => out.push_str(&format!("%{b:02X}")),
            // Non-ASCII: each byte of its UTF-8 (or other) encoding
            // percent-encoded; SQLite decodes them back to the same bytes.
            0x80.. => out.push_str(&format!("%{b:02X}")),
            _ => out.push(*b as char),
        }
    }
    out
}

/// The schema version that moved a job's run counters to `job_stats`
/// (its next fire followed in 16).
const JOB_STATS_SINCE: i64 = 15;

/// What the integrity check cannot see: rows whose parent is gone (the
/// server enforces foreign keys; an outside edit may not have), and jobs
/// without their `job_stats` row (next fire, flags, counters): such a job
/// never fires, the API's reads skip it and its next run transition
/// fails. Returns one line per kind of problem.
fn consistency(conn: &Connection, version: i64) -> Result<Vec<String>, rusqlite::Error> {
    let mut out = Vec::new();
    let mut orphans: BTreeMap<(String, String), i64> = BTreeMap::new();
    {
        let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(2)?)))?;
        for row in rows {
            *orphans.entry(row?).or_default() += 1;
        }
    }
    for ((table, parent), n) in orphans {
        out.push(format!(
            "{n} row(s) of {table} refer to a missing {parent} row"
        ));
    }
    if version >= JOB_STATS_SINCE {
        let mut stmt = conn.prepare(
            "SELECT j.id FROM jobs j LEFT JOIN job_stats s USING (pk)
             WHERE s.pk IS NULL ORDER BY j.id",
        )?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        if !ids.is_empty() {
            let shown: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
            let more = if ids.len() > shown.len() { ", …" } else { "" };
            out.push(format!(
                "{} job(s) have no row in job_stats (next fire, counters) ({}{more})",
                ids.len(),
                shown.join(", ")
            ));
        }
    }
    Ok(out)
}

impl Report {
    /// Human-readable lines, one fact each.
    pub fn to_text(&self) -> String {
        let when = |ms: Option<i64>| {
            ms.and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_else(|| "-".into())
        };
        let states = if self.runs_by_state.is_empty() {
            "-".to_string()
        } else {
            self.runs_by_state
                .iter()
                .map(|(s, n)| format!("{s}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let migrate = if self.schema_version < self.supported_schema_version {
            " (older: migrated when the server starts)"
        } else {
            ""
        };
        format!(
            "database:       {}\nintegrity:      {}\nschema version: {} (this build: {}){}\nepoch:          {}\njobs:           {}\nruns:           {} ({})\nnodes:          {}\nnewest run:     scheduled {} / finished {}\n",
            self.path,
            self.integrity,
            self.schema_version,
            self.supported_schema_version,
            migrate,
            self.epoch,
            self.jobs,
            self.runs,
            states,
            self.nodes,
            when(self.newest_run_scheduled_for),
            when(self.newest_run_finished_at),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with the current schema, in rollback-journal mode so the
    /// whole state is in the one file.
    fn fresh_db(dir: &Path) -> std::path::PathBuf {
        std::fs::create_dir_all(dir).expect("mkdir");
        let path = dir.join(crate::store::DB_FILE);
        let mut conn = Connection::open(&path).expect("open");
        crate::store::migrations::migrate(&mut conn).expect("migrate");
        path
    }

    #[test]
    fn a_new_database_checks_clean() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fresh_db(dir.path());
        let r = check(&path).expect("check");
        assert_eq!(r.integrity, "ok");
        assert_eq!(r.schema_version, SCHEMA_VERSION);
        assert_eq!((r.jobs, r.runs, r.nodes), (0, 0, 0));
        assert!(r.runs_by_state.is_empty());
        assert!(r.to_text().contains("jobs:           0"));
    }

    #[test]
    fn a_wal_database_no_one_has_open_is_checked_without_leaving_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A name a `file:` URI must encode.
        let sub = dir.path().join("odd ?#% dir");
        let path = fresh_db(&sub);
        {
            let c = Connection::open(&path).expect("open");
            let mode: String = c
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .expect("wal");
            assert_eq!(mode, "wal");
            crate::store::test_support::slot_job(
                &c,
                "a",
                &serde_json::from_str(
                    r#"{"schedule":"@hourly","executor":{"type":"exec","argv":["true"]}}"#,
                )
                .expect("spec"),
            );
        } // closed: the WAL is checkpointed and removed
        let listing = || {
            let mut names: Vec<String> = std::fs::read_dir(&sub)
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(listing(), ["sundial.db"]);
        let r = check(&path).expect("check");
        assert_eq!(r.jobs, 1);
        assert_eq!(listing(), ["sundial.db"], "the check left files behind");
        // Open by a server (a WAL beside it): what is only in the WAL counts.
        let c = Connection::open(&path).expect("open");
        c.execute_batch("PRAGMA wal_autocheckpoint=0")
            .expect("no checkpoints");
        c.execute("DELETE FROM job_stats", []).expect("delete");
        c.execute("DELETE FROM jobs", []).expect("delete");
        assert_eq!(check(&path).expect("check").jobs, 0);
    }

    #[test]
    fn refuses_missing_garbage_foreign_and_too_new_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.db");
        assert!(matches!(check(&missing), Err(CheckError::Missing { .. })));
        let err = check(dir.path()).expect_err("a directory");
        assert_eq!(err.kind(), "directory");
        assert!(
            err.to_string().contains("name the database file in it"),
            "{err}"
        );
        let json = err.to_json(dir.path());
        assert_eq!(json["error"]["kind"], "directory");
        assert_eq!(json["path"], dir.path().display().to_string());

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x42u8; 8192]).expect("write");
        assert!(matches!(check(&garbage), Err(CheckError::Open { .. })));

        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign)
            .and_then(|c| c.execute_batch("CREATE TABLE t (x)"))
            .expect("foreign db");
        assert!(matches!(
            check(&foreign),
            Err(CheckError::NotSundial { .. })
        ));

        let path = fresh_db(&dir.path().join("newer"));
        Connection::open(&path)
            .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
            .expect("bump version");
        let err = check(&path).expect_err("too new");
        assert!(err.to_string().contains("newer than this build"), "{err}");
    }

    #[test]
    fn a_job_without_counters_or_a_run_without_its_job_is_inconsistent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fresh_db(dir.path());
        let spec: sundial_proto::JobSpec = serde_json::from_str(
            r#"{"schedule":"@hourly","executor":{"type":"exec","argv":["true"]}}"#,
        )
        .expect("spec");
        let b_pk = {
            let c = Connection::open(&path).expect("open");
            crate::store::test_support::slot_job(&c, "a", &spec);
            let b = crate::store::test_support::slot_job(&c, "b", &spec).pk;
            // As an outside edit could leave the file.
            c.execute("DELETE FROM job_stats WHERE pk = ?1", [b])
                .expect("drop counters");
            b
        };
        let err = check(&path).expect_err("a job without counters");
        assert!(matches!(err, CheckError::Inconsistent { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("1 job(s) have no row in job_stats (next fire, counters) (b)"),
            "{err}"
        );
        // Counters back, then the job deleted with foreign keys off.
        Connection::open(&path)
            .and_then(|c| {
                c.execute("INSERT INTO job_stats (pk) VALUES (?1)", [b_pk])?;
                c.pragma_update(None, "foreign_keys", "OFF")?;
                c.execute("DELETE FROM jobs WHERE pk = ?1", [b_pk])
            })
            .expect("orphan");
        let err = check(&path).expect_err("counters without a job");
        assert!(
            err.to_string()
                .contains("1 row(s) of job_stats refer to a missing jobs row"),
            "{err}"
        );
        Connection::open(&path)
            .and_then(|c| c.execute("DELETE FROM job_stats WHERE pk = ?1", [b_pk]))
            .expect("repair");
        let r = check(&path).expect("consistent again");
        assert_eq!(r.jobs, 1);
    }

    #[test]
    fn a_damaged_page_fails_the_integrity_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fresh_db(dir.path());
        // Enough rows for several pages, then overwrite the middle of the file.
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(
                "CREATE TABLE filler (x BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
                 INSERT INTO filler SELECT randomblob(500) FROM n;
                 CREATE INDEX filler_x ON filler (x);",
            )
            .expect("fill");
        }
        let mut bytes = std::fs::read(&path).expect("read");
        let page = 4096;
        assert!(bytes.len() > 20 * page);
        for b in &mut bytes[10 * page + 16..12 * page] {
            *b = 0xA5;
        }
        std::fs::write(&path, bytes).expect("write");
        match check(&path) {
            Err(CheckError::Integrity { .. }) | Err(CheckError::Open { .. }) => {}
            other => panic!("damaged file passed: {other:?}"),
        }
    }
}

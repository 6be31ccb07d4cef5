//! Acceptance for disaster recovery: real Litestream 0.5 replicating with the
//! repository's `litestream.yml` to a real S3 API (`moto_server`) and to a
//! file replica; `scripts/restore.sh` brings the database back.
//!
//! - crash: load jobs and runs (a daemon completes them), kill -9 server,
//!   Litestream and daemon, delete the data directory, restore, start: every
//!   job is back, every run acknowledged more than 1 s before the crash is
//!   back, the scheduler resumes per misfire policy. RPO measured and printed.
//! - point in time: a restore to a chosen timestamp returns exactly the rows
//!   of that moment; the latest restore returns the rows at the end.
//! - size: restore of a ~100 MB database, timed and printed.
//! - refusals: restore.sh refuses to overwrite, bad timestamps and missing
//!   backups with clear errors and replaces nothing.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sundial_e2e::litestream::{
    dump, restore_sh, LitestreamProc, MotoProc, Replica, Restore, SERVER_FLAGS,
};
use sundial_e2e::misfire::Gap;
use sundial_e2e::{admin_call, ms, skip_without, wait_for, DaemonProc, ServerProc};
use sundial_proto::time::{format_ms, now_ms};

const BUCKET: &str = "sundial-dr";

/// Every-second jobs and their misfire policies (policy, cap).
const JOBS: [(&str, &str, u32); 6] = [
    ("skip-a", "skip", 10),
    ("skip-b", "skip", 10),
    ("once-a", "run_once", 10),
    ("once-b", "run_once", 10),
    ("all-a", "run_all", 100),
    ("all-capped", "run_all", 3),
];

fn tools_missing() -> bool {
    skip_without("litestream") | skip_without("moto_server")
}

/// A backend for one test: moto (kept alive by the returned guard) or a directory.
fn backend(dir: &Path, kind: &str) -> (Replica, Option<MotoProc>) {
    match kind {
        "s3" => {
            let moto = MotoProc::start(dir, BUCKET).expect("moto_server");
            let replica = Replica::S3 {
                endpoint: moto.endpoint.clone(),
                bucket: BUCKET.into(),
                path: "sundial/test".into(),
            };
            (replica, Some(moto))
        }
        _ => (
            Replica::File {
                dir: dir.join("replica"),
            },
            None,
        ),
    }
}

/// One test's world: a temporary directory, a replica (moto kept alive for
/// S3), the data directory and the Litestream config for that replica.
struct Rig {
    dir: tempfile::TempDir,
    replica: Replica,
    _moto: Option<MotoProc>,
    data: PathBuf,
    db: PathBuf,
    config: PathBuf,
}

impl Rig {
    /// None (the test skips, or fails under CI=true) without Litestream and moto.
    fn new(kind: &str) -> Option<Rig> {
        if tools_missing() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (replica, _moto) = backend(dir.path(), kind);
        let data = dir.path().join("data");
        let db = data.join("sundial.db");
        let config = replica.config(dir.path()).unwrap();
        Some(Rig {
            dir,
            replica,
            _moto,
            data,
            db,
            config,
        })
    }

    /// `litestream replicate` for this rig's database.
    fn litestream(&self) -> LitestreamProc {
        LitestreamProc::start(
            &self.config,
            &self.replica.env(&self.db),
            &self.dir.path().join("ls.log"),
        )
        .unwrap()
    }
}

fn job_spec(policy: &str, cap: u32) -> Value {
    json!({
        "schedule": "*/1 * * * * *",
        "executor": {"type": "shell", "script": "echo run $SUNDIAL_RUN_ID"},
        "misfire": {"policy": policy, "grace": "1s", "max_catch_up": cap},
        "history": {"keep": 1000},
    })
}

/// Job fields that must come back unchanged.
fn stable(job: &Value) -> Value {
    let mut j = job.clone();
    if let Some(o) = j.as_object_mut() {
        for volatile in ["next_fire_at", "counters", "updated_at"] {
            o.remove(volatile);
        }
    }
    j
}

/// Latest event of a run row read from the database (unix ms).
type RunRow = (i64, String, i64, i64);

/// (id, state, scheduled_for, time of its latest change) of every run.
fn run_rows(db: &Path) -> HashMap<i64, RunRow> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open db");
    let mut stmt = conn
        .prepare(
            "SELECT id, state, scheduled_for,
                    max(created_at, coalesce(started_at, 0), coalesce(finished_at, 0))
             FROM runs",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query");
    rows.map(|r| {
        let row: RunRow = r.expect("row");
        (row.0, row)
    })
    .collect()
}

fn crash_restore(kind: &str) {
    let Some(rig) = Rig::new(kind) else {
        return;
    };
    let dir = &rig.dir;
    let (replica, data, db, config) = (
        rig.replica.clone(),
        rig.data.clone(),
        rig.db.clone(),
        rig.config.clone(),
    );
    let mut server = ServerProc::start_args(&data, SERVER_FLAGS).unwrap();
    let mut litestream = rig.litestream();

    let token = server.join_token().unwrap();
    let mut daemon = DaemonProc::start(
        &server.base,
        &token,
        "dr-node",
        &dir.path().join("daemon"),
        &["--capacity", "32"],
    )
    .unwrap();
    for (id, policy, cap) in JOBS {
        let (status, body) = server
            .call(
                "PUT",
                &format!("/v1/jobs/{id}"),
                Some(&job_spec(policy, cap)),
            )
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    // Load: several seconds of slots, most of them run to completion.
    wait_for(Duration::from_secs(30), || {
        let runs = server.every_run().ok()?;
        (runs.iter().filter(|r| r["state"] == "succeeded").count() >= 5 * JOBS.len()).then_some(())
    })
    .unwrap_or_else(|| panic!("runs did not complete; daemon log:\n{}", daemon.log_text()));

    // A steady stream of acknowledged writes up to the crash, for the RPO:
    // each PUT stores its own send time in the job's description.
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (base, stop) = (server.base.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last_acked = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t = now_ms();
                let spec = json!({
                    "schedule": "@at 2099-01-01T00:00:00Z",
                    "executor": {"type": "exec", "argv": ["true"]},
                    "description": t.to_string(),
                });
                match admin_call(&base, "PUT", "/v1/jobs/ticker", Some(&spec)) {
                    Ok((200 | 201, _)) => last_acked = t,
                    _ => break,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            last_acked
        })
    };

    // What the API acknowledged now must survive a crash a second later.
    let (_, jobs_acked) = server.call("GET", "/v1/jobs", None).unwrap();
    let runs_acked = server.every_run().unwrap();
    let acked_at = now_ms();
    std::thread::sleep(Duration::from_millis(1200));

    // The state of the live file right before the crash, for the RPO.
    let live = run_rows(&db);
    // Litestream first: whatever the server acknowledges after this is lost,
    // as when the machine dies.
    let killed_at = now_ms();
    litestream.kill9().unwrap();
    server.kill9().unwrap();
    daemon.kill9().unwrap();
    stop.store(true, Ordering::Relaxed);
    let last_acked_tick = ticker.join().unwrap();
    assert!(killed_at - acked_at > 1000);

    std::fs::remove_dir_all(&data).unwrap();
    let restore = restore_to(&replica, &config, &db, &db, &[]);
    assert!(
        restore.ok,
        "restore failed: {}\nlitestream log:\n{}",
        restore.output,
        litestream.log_text()
    );
    assert!(
        restore.output.contains("integrity:      ok"),
        "{}",
        restore.output
    );

    // RPO: the oldest change present in the live file but not in the restore.
    let restored = run_rows(&db);
    let restored_tick: i64 =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
            .query_row(
                "SELECT json_extract(spec, '$.description') FROM jobs WHERE id = 'ticker'",
                [],
                |r| r.get::<_, String>(0),
            )
            .unwrap()
            .parse()
            .unwrap();
    // RPO: acknowledged writes lost = the ticks between the newest restored
    // one and the newest acknowledged one.
    let rpo_acked = last_acked_tick - restored_tick;
    let lost: Vec<&RunRow> = live
        .values()
        .filter(|row| restored.get(&row.0) != Some(row))
        .collect();
    eprintln!(
        "[{kind}] restore of {} runs took {:.3} s; RPO: newest acknowledged write restored was {} ms older than the newest acknowledged ({} ms before the kill); {} of {} run rows changed after the last sync",
        restored.len(),
        restore.elapsed.as_secs_f64(),
        rpo_acked,
        killed_at - restored_tick,
        lost.len(),
        live.len(),
    );

    // The outage: a few seconds of missed fires for the misfire policies.
    std::thread::sleep(Duration::from_secs(3));
    let restarted_at = now_ms();
    server.restart().unwrap();
    daemon.restart().unwrap();

    // Every job is back, unchanged.
    let (_, jobs_now) = server.call("GET", "/v1/jobs", None).unwrap();
    let list = |v: &Value| -> Vec<Value> {
        v["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(stable)
            .collect()
    };
    let without_ticker =
        |v: Vec<Value>| -> Vec<Value> { v.into_iter().filter(|j| j["id"] != "ticker").collect() };
    assert_eq!(
        without_ticker(list(&jobs_acked)),
        without_ticker(list(&jobs_now)),
        "jobs after restore"
    );

    // Every run acknowledged >1 s before the crash is back; finished ones unchanged.
    let now_by_id: HashMap<i64, Value> = server
        .every_run()
        .unwrap()
        .into_iter()
        .map(|r| (r["id"].as_i64().unwrap_or(-1), r))
        .collect();
    let terminal = sundial_e2e::invariants::TERMINAL;
    for old in &runs_acked {
        let id = old["id"].as_i64().unwrap();
        let now = now_by_id
            .get(&id)
            .unwrap_or_else(|| panic!("run {id} acknowledged before the crash is gone: {old}"));
        assert_eq!(now["scheduled_for"], old["scheduled_for"], "run {id}");
        assert_eq!(now["job_id"], old["job_id"], "run {id}");
        if terminal.contains(&old["state"].as_str().unwrap_or("")) {
            assert_eq!(now["state"], old["state"], "run {id}");
            assert_eq!(now["output"], old["output"], "run {id}");
        }
    }

    // The scheduler resumes per misfire policy.
    wait_for(Duration::from_secs(20), || {
        JOBS.iter()
            .all(|(id, ..)| {
                server.all_runs(id).is_ok_and(|runs| {
                    runs.iter().any(|r| {
                        r["trigger"] == "schedule" && ms(r, "scheduled_for") >= restarted_at + 1000
                    })
                })
            })
            .then_some(())
    })
    .expect("scheduling resumed after the restore");
    for (id, policy, cap) in JOBS {
        let runs = server.all_runs(id).unwrap();
        let gap = Gap::of(id, &runs, restarted_at);
        assert!(
            !gap.missed.is_empty(),
            "{id}: no missed fires between {} and {}",
            gap.last_pre,
            gap.first_on
        );
        assert_eq!(
            gap.catch_up,
            gap.expected(policy, cap as usize),
            "[{kind}] {id} ({policy}, cap {cap}): catch-up after restore; missed {}",
            gap.missed.len()
        );
        gap.assert_contiguous(id);
    }
    // Runs flow again: the daemon (whose node came back with the database) completes new ones.
    wait_for(Duration::from_secs(20), || {
        server
            .every_run()
            .ok()?
            .iter()
            .any(|r| r["state"] == "succeeded" && ms(r, "scheduled_for") >= restarted_at)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no run completed after restore:\n{}", daemon.log_text()));
    assert!(
        rpo_acked <= 1000,
        "[{kind}] RPO {rpo_acked} ms is over the 1 s target"
    );
    daemon.terminate(Duration::from_secs(15)).unwrap();
    assert_eq!(server.terminate(Duration::from_secs(10)).unwrap(), Some(0));
}

#[test]
fn s3_crash_delete_restore_resumes() {
    crash_restore("s3");
}

#[test]
fn file_replica_crash_delete_restore_resumes() {
    crash_restore("file");
}

/// `scripts/restore.sh --config CONFIG --db DB --output OUT EXTRA…`.
fn restore_to(replica: &Replica, config: &Path, db: &Path, out: &Path, extra: &[&str]) -> Restore {
    let path = |p: &Path| p.to_str().expect("test paths are UTF-8").to_string();
    let (config, dbs, out) = (path(config), path(db), path(out));
    let mut args = vec!["--config", &config, "--db", &dbs, "--output", &out];
    args.extend_from_slice(extra);
    restore_sh(replica, db, &args).expect("running scripts/restore.sh")
}

/// Restores the latest state into a scratch file until it equals `want`
/// (the replica has caught up): an awaited condition, not a sleep.
fn wait_replicated(replica: &Replica, config: &Path, db: &Path, scratch: &Path, want: &str) {
    let mut last = String::new();
    let done = wait_for(Duration::from_secs(30), || {
        let _ = std::fs::remove_file(scratch);
        let r = restore_to(replica, config, db, scratch, &[]);
        if !r.ok {
            last = r.output;
            return None;
        }
        let got = dump(scratch).ok()?;
        (got == want).then_some(())
    });
    let _ = std::fs::remove_file(scratch);
    assert!(done.is_some(), "replica never caught up; last: {last}");
}

fn point_in_time(kind: &str) {
    let Some(rig) = Rig::new(kind) else {
        return;
    };
    let dir = &rig.dir;
    let (replica, data, db, config) = (
        rig.replica.clone(),
        rig.data.clone(),
        rig.db.clone(),
        rig.config.clone(),
    );
    let mut server = ServerProc::start_args(&data, SERVER_FLAGS).unwrap();
    let mut litestream = rig.litestream();
    let scratch = dir.path().join("scratch.db");

    // State A: quiet jobs (one-shots in the far future: nothing fires).
    let quiet = |n: u32| {
        json!({
            "schedule": "@at 2099-01-01T00:00:00Z",
            "executor": {"type": "exec", "argv": ["true"]},
            "description": format!("version {n}"),
        })
    };
    for i in 0..20 {
        let (s, b) = server
            .call("PUT", &format!("/v1/jobs/pit-{i:02}"), Some(&quiet(1)))
            .unwrap();
        assert_eq!(s, 201, "{b}");
    }
    let state_a = dump(&db).unwrap();
    wait_replicated(&replica, &config, &db, &scratch, &state_a);
    let t1 = now_ms();
    std::thread::sleep(Duration::from_millis(1100));

    // State B: more jobs, a changed one, a deleted one, a paused one.
    for i in 20..30 {
        let (s, _) = server
            .call("PUT", &format!("/v1/jobs/pit-{i:02}"), Some(&quiet(1)))
            .unwrap();
        assert_eq!(s, 201);
    }
    let (s, _) = server
        .call("PUT", "/v1/jobs/pit-03", Some(&quiet(2)))
        .unwrap();
    assert_eq!(s, 200);
    let (s, _) = server.call("DELETE", "/v1/jobs/pit-04", None).unwrap();
    assert!(s == 200 || s == 204, "delete: {s}");
    let (s, _) = server.call("POST", "/v1/jobs/pit-05/pause", None).unwrap();
    assert_eq!(s, 200);
    let state_b = dump(&db).unwrap();
    assert_ne!(state_a, state_b);
    wait_replicated(&replica, &config, &db, &scratch, &state_b);

    server.kill9().unwrap();
    litestream.kill9().unwrap();

    // Restore to t1: exactly state A.
    let at = format_ms(t1);
    let pit = dir.path().join("pit/sundial.db");
    let r = restore_to(&replica, &config, &db, &pit, &["--timestamp", &at]);
    assert!(r.ok, "point-in-time restore: {}", r.output);
    assert_eq!(dump(&pit).unwrap(), state_a, "[{kind}] state at {at}");
    assert!(r.output.contains("jobs:           20"), "{}", r.output);
    eprintln!(
        "[{kind}] point-in-time restore to {at}: {:.3} s, state A exactly",
        r.elapsed.as_secs_f64()
    );

    // Latest: exactly state B.
    let latest = dir.path().join("latest/sundial.db");
    let r = restore_to(&replica, &config, &db, &latest, &[]);
    assert!(r.ok, "latest restore: {}", r.output);
    assert_eq!(dump(&latest).unwrap(), state_b, "[{kind}] latest state");

    // The point-in-time copy serves: start a server on it and read a job back.
    let pit_server = ServerProc::start(pit.parent().unwrap()).unwrap();
    let (s, job) = pit_server.call("GET", "/v1/jobs/pit-04", None).unwrap();
    assert_eq!(s, 200, "the job deleted after t1 is there at t1: {job}");
    assert_eq!(job["description"], "version 1");
}

#[test]
fn s3_point_in_time_restore_is_exact() {
    point_in_time("s3");
}

#[test]
fn file_point_in_time_restore_is_exact() {
    point_in_time("file");
}

/// Creates a database of at least `bytes` through the server's schema: a
/// job, then runs with large outputs written directly (as history would be).
fn big_database(data: &Path, bytes: u64) -> PathBuf {
    let mut server = ServerProc::start(data).unwrap();
    let (s, b) = server
        .call(
            "PUT",
            "/v1/jobs/big",
            Some(&json!({
                "schedule": "@at 2099-01-01T00:00:00Z",
                "executor": {"type": "exec", "argv": ["true"]},
                "history": {"keep": 1000000},
            })),
        )
        .unwrap();
    assert_eq!(s, 201, "{b}");
    assert_eq!(server.terminate(Duration::from_secs(10)).unwrap(), Some(0));
    let db = data.join("sundial.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows = bytes / 4096 + 1;
    conn.execute_batch(&format!(
        "BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
         INSERT INTO runs (job, trigger, scheduled_for, state, created_at, finished_at, output)
         SELECT (SELECT pk FROM jobs WHERE id = 'big'), 'schedule', 1700000000000 + i * 1000,
                'succeeded', 1700000000000 + i * 1000, 1700000000000 + i * 1000 + 5,
                hex(randomblob(2000))
         FROM n;
         COMMIT;
         PRAGMA wal_checkpoint(TRUNCATE);"
    ))
    .unwrap();
    drop(conn);
    db
}

#[test]
fn restore_of_100_mb_is_measured() {
    if tools_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (replica, _moto) = backend(dir.path(), "s3");
    let data = dir.path().join("data");
    let db = big_database(&data, 100 * 1024 * 1024);
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size >= 100 * 1024 * 1024, "database is only {size} bytes");
    let want = dump(&db).unwrap();

    let config = replica.config(dir.path()).unwrap();
    let started = Instant::now();
    let mut litestream =
        LitestreamProc::start(&config, &replica.env(&db), &dir.path().join("ls.log")).unwrap();
    let scratch = dir.path().join("scratch.db");
    wait_replicated(&replica, &config, &db, &scratch, &want);
    let replicated = started.elapsed();
    litestream.terminate(Duration::from_secs(30)).unwrap();

    let out = dir.path().join("restored/sundial.db");
    let r = restore_to(&replica, &config, &db, &out, &[]);
    assert!(r.ok, "{}", r.output);
    assert_eq!(
        dump(&out).unwrap(),
        want,
        "restored 100 MB database differs"
    );
    let line = r
        .output
        .lines()
        .find(|l| l.contains("restored") && l.contains("bytes in"))
        .unwrap_or("");
    eprintln!(
        "[s3] database {:.1} MiB: replicated (initial snapshot to moto) within {:.1} s; {} (scripts/restore.sh total incl. check: {:.2} s; target <= 10 s)",
        size as f64 / 1048576.0,
        replicated.as_secs_f64(),
        line.trim_start_matches("restore: "),
        r.elapsed.as_secs_f64()
    );
    // A bound against pathologies, not the target: this is a test, not a benchmark.
    assert!(
        r.elapsed < Duration::from_secs(120),
        "restore took {:?}",
        r.elapsed
    );
}

#[test]
fn restore_refusals_are_clear_and_replace_nothing() {
    if tools_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (replica, _moto) = backend(dir.path(), "file");
    let data = dir.path().join("data");
    let db = data.join("sundial.db");
    let config = replica.config(dir.path()).unwrap();
    let cfg = config.to_str().unwrap();
    let dbs = db.to_str().unwrap();

    // No backup yet: a clear failure, nothing written.
    let out = dir.path().join("out/sundial.db");
    let outs = out.to_str().unwrap();
    let r = restore_sh(
        &replica,
        &db,
        &["--config", cfg, "--db", dbs, "--output", outs],
    )
    .unwrap();
    assert_eq!(r.code, Some(1), "{}", r.output);
    assert!(r.output.contains("nothing was replaced"), "{}", r.output);
    assert!(!out.exists());

    // Usage errors exit 2 with a reason.
    for (args, needle) in [
        (
            vec!["--config", cfg, "--db", dbs],
            "--output FILE is required",
        ),
        (
            vec![
                "--config",
                cfg,
                "--db",
                dbs,
                "--output",
                outs,
                "--timestamp",
                "yesterday",
            ],
            "RFC 3339",
        ),
        (vec!["--output", outs, "--bogus"], "unknown argument"),
        (
            vec![
                "--config",
                cfg,
                "--replica-url",
                "file:///x",
                "--output",
                outs,
            ],
            "not both",
        ),
    ] {
        let r = restore_sh(&replica, &db, &args).unwrap();
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.output);
        assert!(r.output.contains(needle), "{args:?}: {}", r.output);
    }

    // With a backup: an existing file is not overwritten without --force…
    let mut server = ServerProc::start_args(&data, SERVER_FLAGS).unwrap();
    let (s, _) = server
        .call(
            "PUT",
            "/v1/jobs/keep",
            Some(&json!({"schedule": "@at 2099-01-01T00:00:00Z",
                         "executor": {"type": "exec", "argv": ["true"]}})),
        )
        .unwrap();
    assert_eq!(s, 201);
    let mut litestream =
        LitestreamProc::start(&config, &replica.env(&db), &dir.path().join("ls.log")).unwrap();
    let scratch = dir.path().join("scratch.db");
    let want = dump(&db).unwrap();
    wait_replicated(&replica, &config, &db, &scratch, &want);

    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, b"precious").unwrap();
    let r = restore_sh(
        &replica,
        &db,
        &["--config", cfg, "--db", dbs, "--output", outs],
    )
    .unwrap();
    assert_eq!(r.code, Some(2), "{}", r.output);
    assert!(r.output.contains("refusing to overwrite"), "{}", r.output);
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    // …nor the database a running server has open, even with --force, nor
    // its data directory given in place of the file…
    for (output, needle) in [
        (dbs, "is open by process"),
        (data.to_str().unwrap(), "is a directory"),
    ] {
        let r = restore_sh(
            &replica,
            &db,
            &["--config", cfg, "--db", dbs, "--output", output, "--force"],
        )
        .unwrap();
        assert_eq!(r.code, Some(2), "{}", r.output);
        assert!(r.output.contains(needle), "{}", r.output);
    }
    assert!(db.exists(), "the data directory is untouched");

    // …and a timestamp before the first backup finds nothing.
    let r = restore_sh(
        &replica,
        &db,
        &[
            "--config",
            cfg,
            "--db",
            dbs,
            "--output",
            dir.path().join("early.db").to_str().unwrap(),
            "--timestamp",
            "2001-01-01T00:00:00Z",
        ],
    )
    .unwrap();
    assert_eq!(r.code, Some(1), "{}", r.output);
    assert!(!dir.path().join("early.db").exists());

    // With --force the old file is kept aside and the restore checked in.
    let r = restore_sh(
        &replica,
        &db,
        &["--config", cfg, "--db", dbs, "--output", outs, "--force"],
    )
    .unwrap();
    assert!(r.ok, "{}", r.output);
    assert_eq!(dump(&out).unwrap(), want);
    let aside: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "the replaced file is kept");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"precious");
    litestream.kill9().unwrap();
    server.kill9().unwrap();
}

/// `scripts/litestream-primary.sh` follows LiteFS's `.primary` contract:
/// Litestream runs while the file is absent (primary), stops when it appears
/// (replica), starts again on promotion, and SIGTERM ends it all.
#[test]
fn litestream_runs_only_on_the_litefs_primary() {
    if tools_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (replica, _moto) = backend(dir.path(), "file");
    let litefs = dir.path().join("litefs");
    let db = litefs.join("sundial.db");
    let mut server = ServerProc::start_args(&litefs, SERVER_FLAGS).unwrap();
    let config = replica.config(dir.path()).unwrap();
    let log = dir.path().join("wrapper.log");
    let out = std::fs::File::create(&log).unwrap();
    let wrapper = std::process::Command::new("bash")
        .arg(sundial_e2e::litestream::repo_root().join("scripts/litestream-primary.sh"))
        .args([
            "--litefs-dir",
            litefs.to_str().unwrap(),
            "--interval",
            "0.2",
        ])
        .args(["--config", config.to_str().unwrap()])
        .arg("--litestream")
        .arg(sundial_e2e::litestream::litestream_bin().unwrap())
        .envs(replica.env(&db))
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    // Ends the wrapper (and so its Litestream) even when an assertion fails.
    let mut wrapper = TermOnDrop(Some(wrapper));
    let log_count = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(needle)
            .count()
    };
    let scratch = dir.path().join("scratch.db");
    let put = |n: u32| {
        let (s, _) = server
            .call(
                "PUT",
                &format!("/v1/jobs/p{n}"),
                Some(&json!({"schedule": "@at 2099-01-01T00:00:00Z",
                             "executor": {"type": "exec", "argv": ["true"]}})),
            )
            .unwrap();
        assert!(s == 201, "PUT p{n}: {s}");
    };

    // Primary: Litestream runs and replicates.
    put(1);
    let want = dump(&db).unwrap();
    wait_replicated(&replica, &config, &db, &scratch, &want);
    assert_eq!(log_count("started Litestream"), 1);

    // Replica: .primary appears, Litestream is stopped; writes are not replicated.
    std::fs::write(litefs.join(".primary"), "sundial-1").unwrap();
    wait_for(Duration::from_secs(10), || {
        (log_count("Litestream must not run here") == 1).then_some(())
    })
    .expect("wrapper stopped Litestream on demotion");
    put(2);
    std::thread::sleep(Duration::from_millis(800));
    let r = restore_to(&replica, &config, &db, &scratch, &[]);
    assert!(r.ok, "{}", r.output);
    assert_eq!(dump(&scratch).unwrap(), want, "replicated while replica");
    std::fs::remove_file(&scratch).unwrap();

    // Promoted again: Litestream restarts and catches up.
    std::fs::remove_file(litefs.join(".primary")).unwrap();
    let want = dump(&db).unwrap();
    wait_replicated(&replica, &config, &db, &scratch, &want);
    assert_eq!(log_count("started Litestream"), 2);

    let status = wrapper.terminate().expect("wrapper ignored SIGTERM");
    assert!(status.success(), "wrapper exit: {status}");
    server.kill9().unwrap();
}

/// A child that gets SIGTERM (then, after 15 s, SIGKILL) when dropped.
struct TermOnDrop(Option<std::process::Child>);

impl TermOnDrop {
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let exited = wait_for(Duration::from_secs(15), || child.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        exited
    }
}

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The server tells when it checkpoints a database that the real Litestream
/// replicates: once Litestream has synced (its `_litestream_*` tables are in
/// the database) `sundial_db_litestream_checkpoint_conflict` is 1 and every
/// promotion logs the advice; with `SERVER_FLAGS` (`--wal-autocheckpoint
/// 0`, the kit's setting) the gauge is 0 and nothing is logged.
#[test]
fn checkpoints_beside_a_real_litestream_are_flagged() {
    const CONFLICT: &str = "sundial_db_litestream_checkpoint_conflict";
    const ADVICE: &str = "while this server checkpoints the WAL itself";
    let Some(rig) = Rig::new("file") else {
        return;
    };
    let mut server = ServerProc::start(&rig.data).unwrap();
    let mut litestream = rig.litestream();
    wait_for(Duration::from_secs(30), || {
        (server.metric(CONFLICT).ok()? == 1.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{CONFLICT} never went to 1 beside Litestream; its log:\n{}",
            litestream.log_text()
        )
    });
    assert!(
        !server.log_text().contains(ADVICE),
        "no advice before Litestream's first sync"
    );
    server.terminate(Duration::from_secs(10)).unwrap();
    server.restart().unwrap();
    assert!(
        server.log_text().contains(ADVICE),
        "the promotion after Litestream's first sync logs the advice:\n{}",
        server.log_text()
    );
    server.terminate(Duration::from_secs(10)).unwrap();

    let mut server = ServerProc::start_args(&rig.data, SERVER_FLAGS).unwrap();
    assert_eq!(server.metric(CONFLICT).unwrap(), 0.0);
    assert!(!server.log_text().contains(ADVICE), "{}", server.log_text());
    server.terminate(Duration::from_secs(10)).unwrap();
    litestream.terminate(Duration::from_secs(10)).unwrap();
}

//! Acceptance for "nothing stops silently": the database is locked by an
//! outside connection for twice the busy timeout, and the data directory's
//! file system fills up. In both cases writes get clear, retryable errors,
//! `/readyz` says what is wrong, nothing is doubled or corrupted, and the
//! server resumes on its own once the cause is gone.

use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sundial_e2e::misfire::Gap;
use sundial_e2e::{binary, ms, wait_for, ServerProc, ADMIN_KEY};
use sundial_proto::time::now_ms;

const JOBS: [(&str, &str, u32); 4] = [
    ("skip", "skip", 10),
    ("once", "run_once", 10),
    ("all", "run_all", 100),
    ("capped", "run_all", 2),
];

fn every_second(policy: &str, cap: u32) -> Value {
    json!({
        "schedule": "*/1 * * * * *",
        "executor": {"type": "exec", "argv": ["true"]},
        "misfire": {"policy": policy, "grace": "1s", "max_catch_up": cap},
        "history": {"keep": 1000},
    })
}

/// GET /readyz → (status, body).
fn readyz(http: &reqwest::blocking::Client, base: &str) -> (u16, Value) {
    match http.get(format!("{base}/readyz")).send() {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({"error": e.to_string()})),
    }
}

/// Polls `/readyz` every 100 ms in a thread until stopped; returns what it saw.
struct ReadyzWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(i64, u16, Value)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadyzWatch {
    fn start(base: &str) -> ReadyzWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v, base) = (stop.clone(), seen.clone(), base.to_string());
        let thread = std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            // Bounded: at most 10 minutes of polling.
            for _ in 0..6_000 {
                if s.load(Ordering::Acquire) {
                    break;
                }
                let (status, body) = readyz(&http, &base);
                v.lock().unwrap().push((now_ms(), status, body));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        ReadyzWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(i64, u16, Value)> {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

#[test]
fn a_write_lock_held_past_the_busy_timeout_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let busy = Duration::from_secs(2);
    let server = ServerProc::start_args(
        &dir.path().join("data"),
        &["--busy-timeout", "2s", "--stall-after", "500ms"],
    )
    .unwrap();
    for (id, policy, cap) in JOBS {
        let (status, body) = server
            .call(
                "PUT",
                &format!("/v1/jobs/{id}"),
                Some(&every_second(policy, cap)),
            )
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    wait_for(Duration::from_secs(10), || {
        JOBS.iter()
            .all(|(id, ..)| server.all_runs(id).unwrap().len() >= 2)
            .then_some(())
    })
    .expect("two slots per job before the lock");

    let watch = ReadyzWatch::start(&server.base);
    // The outside connection: a sqlite3 shell's `BEGIN IMMEDIATE`.
    let outside = rusqlite::Connection::open(server.data_dir.join("sundial.db")).unwrap();
    outside.execute_batch("BEGIN IMMEDIATE").unwrap();
    let locked_at = now_ms();
    // An API write meanwhile: a clear, retryable refusal, not a 500.
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let resp = http
        .put(format!("{}/v1/jobs/during-lock", server.base))
        .bearer_auth(ADMIN_KEY)
        .json(&every_second("skip", 1))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "database_busy", "{body}");
    let hold = (busy * 2).saturating_sub(Duration::from_millis((now_ms() - locked_at) as u64));
    std::thread::sleep(hold);
    outside.execute_batch("COMMIT").unwrap();
    let released_at = now_ms();
    drop(outside);
    eprintln!("write lock held for {} ms", released_at - locked_at);

    // Slots resume within 2 s of the release.
    let resumed = wait_for(Duration::from_secs(5), || {
        JOBS.iter()
            .map(|(id, ..)| {
                server
                    .all_runs(id)
                    .unwrap()
                    .iter()
                    .map(|r| ms(r, "created_at"))
                    .filter(|&c| c >= locked_at)
                    .min()
            })
            .collect::<Option<Vec<i64>>>()
    })
    .expect("every job has a slot after the release");
    let worst = resumed.iter().max().unwrap() - released_at;
    eprintln!("first slot after the release: {resumed:?} (worst {worst} ms after release)");
    assert!(worst <= 2_000, "slots resumed {worst} ms after the release");

    // /readyz: 200 again once the scheduler recovered.
    let http2 = reqwest::blocking::Client::new();
    wait_for(Duration::from_secs(5), || {
        (readyz(&http2, &server.base).0 == 200).then_some(())
    })
    .expect("/readyz back to 200");
    // Two more on-time seconds, so every gap is closed on both sides.
    std::thread::sleep(Duration::from_millis(2_200));
    let seen = watch.finish();
    let during: Vec<&(i64, u16, Value)> = seen
        .iter()
        .filter(|(at, ..)| *at > locked_at && *at < released_at)
        .collect();
    let unready: Vec<&&(i64, u16, Value)> = during.iter().filter(|(_, s, _)| *s == 503).collect();
    assert!(
        !unready.is_empty(),
        "/readyz never answered 503 during the lock: {during:?}"
    );
    let reasons: Vec<&str> = unready
        .iter()
        .map(|(_, _, b)| b["error"].as_str().unwrap_or_default())
        .collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("scheduler ") || r.starts_with("lease_reaper ")),
        "503 names the stuck loop: {reasons:?}"
    );
    let why = reasons
        .iter()
        .find(|r| r.starts_with("scheduler "))
        .unwrap_or_else(|| panic!("no 503 named the scheduler: {reasons:?}"));
    eprintln!("/readyz during the lock: {why}");
    let last = seen.last().unwrap();
    assert_eq!(last.1, 200, "/readyz at the end: {:?}", last.2);

    // Nothing doubled, missed slots per misfire policy, no hole afterwards.
    let mut all_slots = HashSet::new();
    for (id, policy, cap) in JOBS {
        let runs = server.all_runs(id).unwrap();
        for r in &runs {
            assert!(
                all_slots.insert((id, ms(r, "scheduled_for"), r["trigger"].to_string())),
                "{id}: slot doubled: {r}"
            );
        }
        let gap = Gap::of(id, &runs, locked_at);
        assert!(
            gap.missed.len() >= 2,
            "{id}: expected missed fires during the lock, got {:?}",
            gap.missed
        );
        assert_eq!(
            gap.catch_up,
            gap.expected(policy, cap as usize),
            "{id} ({policy}, cap {cap}): catch-up slots for {} missed fires",
            gap.missed.len()
        );
        gap.assert_contiguous(id);
        eprintln!(
            "{id:7} policy={policy:9} cap={cap:3}: missed {} fires, created {} catch-up slots",
            gap.missed.len(),
            gap.catch_up.len()
        );
    }
    let loop_errors: f64 = ["scheduler", "lease_reaper"]
        .iter()
        .map(|l| {
            server
                .metric(&format!("sundial_loop_errors_total{{loop=\"{l}\"}}"))
                .unwrap()
        })
        .sum();
    assert!(loop_errors >= 1.0, "no loop saw the lock");
    assert!(server.metric("sundial_store_write_failures_total").unwrap() >= 1.0);
    let log = server.log_text();
    assert!(
        !log.contains("scheduler stopped"),
        "the scheduler stopped:\n{log}"
    );
    assert!(log.contains("background loop recovered"), "{log}");
}

/// A tmpfs of a few MB mounted for one test at `<tempdir>/fs`; unmounted
/// on drop. The mount point sits one level down so that what the harness
/// writes beside it (the server's log, `<data dir>.<port>.log`) lands in the
/// temporary directory, off the full file system, and goes with it.
struct SmallFs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (e.g. "4m"); None (skip) when mounting is
    /// not allowed here, which fails the test under `CI=true`.
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("fs")).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path().join("fs"))
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir, mounted: true }),
            other => {
                let why = format!("cannot mount a tmpfs (needs root): {other:?}");
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{why}");
                }
                eprintln!("SKIPPED: {why}");
                None
            }
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("fs")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// Writes zeros to `path` until the file system refuses; returns bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    // Bounded: a few MB file system, at most 64 MiB written.
    while total < 64 << 20 {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    let _ = f.flush();
    total
}

#[test]
fn a_full_disk_gives_clear_errors_and_the_server_recovers_by_itself() {
    let Some(fs) = SmallFs::mount("4m") else {
        return;
    };
    // The data directory is the mount itself; the server's log lives beside it.
    let server = ServerProc::start_args(&fs.path(), &["--stall-after", "500ms"]).unwrap();
    for (id, policy, cap) in JOBS {
        let (status, body) = server
            .call(
                "PUT",
                &format!("/v1/jobs/{id}"),
                Some(&every_second(policy, cap)),
            )
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    wait_for(Duration::from_secs(10), || {
        (server.all_runs("once").unwrap().len() >= 2).then_some(())
    })
    .expect("slots before the disk fills");

    let filler = fs.path().join("filler");
    let filled = fill(&filler);
    eprintln!("filled the file system with {filled} bytes");
    // Writes beyond what the WAL has room for now fail with a clear error.
    let big = "x".repeat(4_000);
    let mut refused = None;
    for i in 0..2_000 {
        let mut spec = every_second("skip", 1);
        spec["description"] = json!(big);
        let (status, body) = server
            .call("PUT", &format!("/v1/jobs/big-{i}"), Some(&spec))
            .unwrap();
        match status {
            200 | 201 => continue,
            _ => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("a write was refused once the disk was full");
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "disk_full", "{body}");
    eprintln!("refused write: {status} {body}");
    // The scheduler hits the full disk too, keeps retrying, and says so.
    let unready = wait_for(Duration::from_secs(20), || {
        let (s, b) = readyz(&reqwest::blocking::Client::new(), &server.base);
        (s == 503).then_some(b)
    })
    .expect("/readyz reports the failing scheduler");
    eprintln!("/readyz while full: {unready}");
    assert!(
        unready["error"]
            .as_str()
            .unwrap_or_default()
            .contains("disk full"),
        "{unready}"
    );

    // Space returns: the server recovers on its own.
    std::fs::remove_file(&filler).unwrap();
    let freed_at = now_ms();
    let started = Instant::now();
    wait_for(Duration::from_secs(10), || {
        let (s, _) = readyz(&reqwest::blocking::Client::new(), &server.base);
        (s == 200).then_some(())
    })
    .expect("/readyz back to 200 after space returned");
    wait_for(Duration::from_secs(10), || {
        server
            .all_runs("once")
            .unwrap()
            .iter()
            .any(|r| ms(r, "created_at") > freed_at)
            .then_some(())
    })
    .expect("slots created again after space returned");
    eprintln!(
        "recovered {} ms after space returned",
        started.elapsed().as_millis()
    );
    let mut spec = every_second("skip", 1);
    spec["description"] = json!(big);
    let (status, body) = server
        .call("PUT", "/v1/jobs/big-after", Some(&spec))
        .unwrap();
    assert!(status == 200 || status == 201, "{status} {body}");

    // Nothing doubled; nothing corrupted.
    for (id, ..) in JOBS {
        let runs = server.all_runs(id).unwrap();
        let slots: HashSet<(i64, String)> = runs
            .iter()
            .map(|r| (ms(r, "scheduled_for"), r["trigger"].to_string()))
            .collect();
        assert_eq!(slots.len(), runs.len(), "{id}: a slot exists twice");
    }
    let data_dir = server.data_dir.clone();
    let mut server = server;
    let code = server.terminate(Duration::from_secs(10)).unwrap();
    assert_eq!(code, Some(0), "clean exit on SIGTERM");
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(&data_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    let check = Command::new(binary("sundial-server").unwrap())
        .args(["check", "--db"])
        .arg(data_dir.join("sundial.db"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "check failed: {text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    eprintln!("sundial-server check after the full disk:\n{text}");
    assert_eq!(listing(), before, "the check left files behind");
    // Pointed at the directory, with --json: the failure is JSON too.
    let check = Command::new(binary("sundial-server").unwrap())
        .args(["check", "--json", "--db"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let failure: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(failure["error"]["kind"], "directory", "{failure}");
}

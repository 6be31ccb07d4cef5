//! Chaos soak: an HA pair (two servers over one database file, roles driven
//! through the LiteFS contract by a test double) behind a real HAProxy,
//! three daemons connected through HAProxy, Litestream replicating to S3
//! (`moto_server`), and every-second jobs covering every misfire policy ×
//! every concurrency policy, a capped `run_all` and a broadcast job.
//!
//! For the soak's length the test injects random faults, one at a time,
//! each healed before the next — the point is that the invariants hold, not
//! to break quorum:
//! - kill -9 of the primary (the test, standing in for LiteFS, moves the
//!   lease to the replica after a random detection delay; the dead server
//!   comes back as a replica after another random delay) or of the replica;
//! - SIGSTOP/SIGCONT of the primary shorter than the failover timeout, and
//!   longer (the lease moves while it is stopped; on SIGCONT it must step
//!   down, its writes fenced by the epoch), and of the replica;
//! - kill -9/restart and SIGSTOP/SIGCONT of a daemon (shorter and longer
//!   than the run lease), kill -9/restart and SIGSTOP/SIGCONT of Litestream.
//!
//! After each fault the system must recover (HAProxy routes to a primary,
//! runs complete again). The windows when no primary was up are recorded.
//! A thread polls `GET /v1/runs` through HAProxy the whole time and notes
//! each run it sees finished, and when.
//!
//! At the end, under load, Litestream is killed (the disaster for the
//! backup: "the end"); jobs are paused and runs settle; the live history is
//! read; servers and daemons are killed; the database is restored from S3
//! with `scripts/restore.sh` into a fresh directory and checked with
//! `sundial-server check`. [`sundial_e2e::invariants`] then asserts over the
//! whole history: no slot doubled, no expected slot missing beyond its
//! misfire policy during an outage, every result recorded once, `forbid`
//! never overlapping and `replace` stopping what it overlaps; and the
//! restore holds every run seen finished more than 1 s before the end.
//! Faults injected and survived, slots and runs checked are printed.
//!
//! Length: `SUNDIAL_SOAK_SECS` seconds of fault injection (default 180; the
//! whole test stays under 5 minutes on 2 cores). The faults come from a
//! seeded RNG; the seed is printed and `SUNDIAL_SOAK_SEED=<n>` replays the
//! same sequence of faults and delays (a real machine's timing still varies):
//!
//! `SUNDIAL_SOAK_FAULTS=KillLitestream,StopLitestream` limits the faults to
//! those kinds (names as printed).
//!
//! ```text
//! SUNDIAL_SOAK_SECS=1800 SUNDIAL_SOAK_SEED=42 \
//!   cargo test -p sundial-e2e --test chaos_soak -- --nocapture
//! ```

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sundial_e2e::ha::{host, is_primary, routed_to_primary, start_pair, term_epoch, HaPair};
use sundial_e2e::invariants::{self, Concurrency, JobExpect, Misfire, Seen, Window, TERMINAL};
use sundial_e2e::litestream::{restore_sh, LitestreamProc, MotoProc, Replica};
use sundial_e2e::{
    admin_call, binary, ms, send_signal, skip_without, wait_for, DaemonProc, HaproxyProc,
    LitefsDouble, ServerProc, ADMIN_KEY,
};
use sundial_proto::time::now_ms;

/// Misfire grace of every job.
const GRACE: &str = "2s";
/// The simulated LiteFS lease: a primary silent this long loses the role.
const FAILOVER_AFTER_MS: u64 = 2_500;
/// Retries of every job (`max_attempts` is one more).
const RETRIES: u32 = 4;
/// Outage windows are observed from outside; this much slack either side.
const TOLERANCE_MS: i64 = 500;
/// How long the system gets to recover from one fault.
const RECOVERY: Duration = Duration::from_secs(60);
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const BUCKET: &str = "sundial-chaos";
/// A run of 0.3, 0.8 or 1.6 s (by run id), so runs of one job sometimes
/// overlap the next second's; prints what the checker expects.
const SCRIPT: &str = "case $((SUNDIAL_RUN_ID % 3)) in 0) sleep 0.3;; 1) sleep 0.8;; *) sleep 1.6;; esac; echo $SUNDIAL_RUN_ID $SUNDIAL_ATTEMPT";

/// The faults, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillPrimary,
    KillReplica,
    StopPrimaryShort,
    StopPrimaryLong,
    StopReplica,
    KillDaemon,
    StopDaemonShort,
    StopDaemonLong,
    KillLitestream,
    StopLitestream,
}

const FAULTS: [Fault; 10] = [
    Fault::KillPrimary,
    Fault::KillReplica,
    Fault::StopPrimaryShort,
    Fault::StopPrimaryLong,
    Fault::StopReplica,
    Fault::KillDaemon,
    Fault::StopDaemonShort,
    Fault::StopDaemonLong,
    Fault::KillLitestream,
    Fault::StopLitestream,
];

/// The jobs: every misfire policy × every concurrency policy, a capped
/// `run_all`, and a broadcast job.
fn job_plan() -> Vec<(String, Misfire, Concurrency, bool)> {
    let mut out = Vec::new();
    for (m, misfire) in [
        ("skip", Misfire::Skip),
        ("once", Misfire::RunOnce),
        ("all", Misfire::RunAll { cap: 1000 }),
    ] {
        for (c, conc) in [
            ("allow", Concurrency::Allow),
            ("forbid", Concurrency::Forbid),
            ("replace", Concurrency::Replace),
        ] {
            out.push((format!("{m}-{c}"), misfire, conc, false));
        }
    }
    out.push((
        "all3-allow".into(),
        Misfire::RunAll { cap: 3 },
        Concurrency::Allow,
        false,
    ));
    out.push((
        "bcast-once".into(),
        Misfire::RunOnce,
        Concurrency::Allow,
        true,
    ));
    out
}

fn job_spec(misfire: Misfire, conc: Concurrency, broadcast: bool) -> Value {
    let (policy, cap) = match misfire {
        Misfire::Skip => ("skip", 10),
        Misfire::RunOnce => ("run_once", 10),
        Misfire::RunAll { cap } => ("run_all", cap),
    };
    let concurrency = match conc {
        Concurrency::Allow => "allow",
        Concurrency::Forbid => "forbid",
        Concurrency::Replace => "replace",
    };
    let mut spec = json!({
        "schedule": "*/1 * * * * *",
        "misfire": {"policy": policy, "grace": GRACE, "max_catch_up": cap},
        "concurrency": concurrency,
        "retries": {"max": RETRIES, "backoff": "500ms", "max_backoff": "2s"},
        "history": {"keep": 1_000_000},
        "executor": {"type": "shell", "script": SCRIPT},
    });
    if broadcast {
        spec["target"] = json!({"all": true});
        spec["executor"] =
            json!({"type": "shell", "script": "echo $SUNDIAL_RUN_ID $SUNDIAL_ATTEMPT"});
    }
    spec
}

/// A client with a short timeout for calls through HAProxy.
fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client")
}

fn get(http: &reqwest::blocking::Client, url: &str) -> Option<Value> {
    let resp = http.get(url).bearer_auth(ADMIN_KEY).send().ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.json().ok()
}

/// What the observer thread saw: runs finished (first sight), polls.
#[derive(Default)]
struct Observed {
    seen: BTreeMap<i64, Seen>,
    polls: usize,
    failed_polls: usize,
}

/// Polls the newest runs through `url` until `stop`, noting each run the
/// first time it is seen finished.
fn observe(url: String, stop: Arc<AtomicBool>, out: Arc<Mutex<Observed>>) {
    let http = client();
    while !stop.load(Ordering::Acquire) {
        let page = get(&http, &format!("{url}/v1/runs?limit=300"));
        let at = now_ms();
        let mut o = out.lock().expect("observer lock");
        o.polls += 1;
        match page.as_ref().and_then(|p| p["items"].as_array()) {
            Some(items) => {
                for r in items {
                    let (Some(id), Some(state)) = (r["id"].as_i64(), r["state"].as_str()) else {
                        continue;
                    };
                    if TERMINAL.contains(&state) {
                        o.seen.entry(id).or_insert_with(|| Seen {
                            run_id: id,
                            state: state.to_string(),
                            seen_at: at,
                        });
                    }
                }
            }
            None => o.failed_polls += 1,
        }
        drop(o);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Everything the soak runs, and what it recorded about outages.
struct Cluster {
    dir: PathBuf,
    shared: PathBuf,
    doubles: [LitefsDouble; 2],
    servers: Vec<ServerProc>,
    primary: usize,
    _lb: HaproxyProc,
    url: String,
    daemons: Vec<DaemonProc>,
    replica: Replica,
    ls_config: PathBuf,
    litestream: LitestreamProc,
    /// When no primary was up.
    outages: Vec<Window>,
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

impl Cluster {
    fn db(&self) -> PathBuf {
        self.shared.join("sundial.db")
    }

    fn start_litestream(&self) -> LitestreamProc {
        LitestreamProc::start(
            &self.ls_config,
            &self.replica.env(&self.db()),
            &self.dir.join("litestream.log"),
        )
        .expect("litestream")
    }

    /// Moves the lease to the other server: the promotion, as LiteFS does it.
    fn flip(&mut self) -> anyhow::Result<()> {
        let (p, o) = (self.primary, 1 - self.primary);
        self.doubles[o].make_primary()?;
        self.doubles[p].make_replica(Some(&host(&self.servers[o])))?;
        self.primary = o;
        Ok(())
    }

    /// Waits until `server` answers as primary with an epoch above `above`;
    /// returns when it was seen.
    fn wait_promoted(&self, server: usize, above: Option<i64>, timeout: Duration) -> Option<i64> {
        wait_for(timeout, || {
            term_epoch(&self.servers[server].base)
                .filter(|e| Some(*e) > above)
                .map(|_| now_ms())
        })
    }

    fn pid_of_server(&self, i: usize) -> anyhow::Result<u32> {
        self.servers[i]
            .pid()
            .ok_or_else(|| anyhow::anyhow!("server {i} is not running"))
    }

    /// Injects one fault and heals it. Errors mean the system did not come
    /// back the way it must.
    fn inject(&mut self, fault: Fault, rng: &mut StdRng) -> anyhow::Result<String> {
        let (p, r) = (self.primary, 1 - self.primary);
        match fault {
            Fault::KillPrimary => {
                let epoch = term_epoch(&self.servers[p].base);
                let from = now_ms();
                self.servers[p].kill9()?;
                let detect = rng.random_range(300..6_000);
                sleep_ms(detect);
                self.flip()?;
                let to = self
                    .wait_promoted(r, epoch, Duration::from_secs(30))
                    .ok_or_else(|| anyhow::anyhow!("the replica never took over"))?;
                self.outages.push(Window { from, to });
                let down = rng.random_range(300..5_000);
                sleep_ms(down);
                self.servers[p].restart()?;
                Ok(format!(
                    "server {p} killed, lease moved after {detect} ms, outage {} ms, back as replica after {down} ms",
                    to - from
                ))
            }
            Fault::KillReplica => {
                self.servers[r].kill9()?;
                let down = rng.random_range(300..5_000);
                sleep_ms(down);
                self.servers[r].restart()?;
                Ok(format!("replica {r} down {down} ms"))
            }
            Fault::StopPrimaryShort => {
                let pid = self.pid_of_server(p)?;
                let from = now_ms();
                send_signal(pid, "STOP")?;
                let pause = rng.random_range(300..FAILOVER_AFTER_MS - 300);
                sleep_ms(pause);
                send_signal(pid, "CONT")?;
                let to = self
                    .wait_promoted(p, None, Duration::from_secs(30))
                    .ok_or_else(|| anyhow::anyhow!("the primary did not answer after SIGCONT"))?;
                self.outages.push(Window { from, to });
                Ok(format!("primary {p} stopped {pause} ms"))
            }
            Fault::StopPrimaryLong => {
                let pid = self.pid_of_server(p)?;
                let epoch = term_epoch(&self.servers[p].base);
                let from = now_ms();
                send_signal(pid, "STOP")?;
                let pause = rng.random_range(FAILOVER_AFTER_MS + 3_000..10_000);
                let moved = FAILOVER_AFTER_MS + rng.random_range(0..2_500);
                sleep_ms(moved);
                self.flip()?;
                // The new primary may need the stopped one's write lock:
                // wait for it until the pause ends, then resume the old one.
                let left = (from + pause as i64 - now_ms()).max(0) as u64;
                let early = self.wait_promoted(r, epoch, Duration::from_millis(left));
                if early.is_some() {
                    sleep_ms((from + pause as i64 - now_ms()).max(0) as u64);
                }
                send_signal(pid, "CONT")?;
                let to = match early {
                    Some(t) => t,
                    None => self
                        .wait_promoted(r, epoch, Duration::from_secs(30))
                        .ok_or_else(|| anyhow::anyhow!("the replica never took over"))?,
                };
                self.outages.push(Window { from, to });
                wait_for(Duration::from_secs(15), || {
                    (!is_primary(&self.servers[p])).then_some(())
                })
                .ok_or_else(|| {
                    anyhow::anyhow!("the deposed primary {p} still answers as primary")
                })?;
                Ok(format!(
                    "primary {p} stopped {pause} ms, lease moved at {moved} ms, outage {} ms{}",
                    to - from,
                    if early.is_none() {
                        " (promotion waited for SIGCONT)"
                    } else {
                        ""
                    }
                ))
            }
            Fault::StopReplica => {
                let pid = self.pid_of_server(r)?;
                send_signal(pid, "STOP")?;
                let pause = rng.random_range(300..8_000);
                sleep_ms(pause);
                send_signal(pid, "CONT")?;
                Ok(format!("replica {r} stopped {pause} ms"))
            }
            Fault::KillDaemon => {
                let d = rng.random_range(0..self.daemons.len());
                self.daemons[d].kill9()?;
                let down = rng.random_range(300..5_000);
                sleep_ms(down);
                self.daemons[d].restart()?;
                Ok(format!("daemon {} down {down} ms", NODES[d]))
            }
            Fault::StopDaemonShort | Fault::StopDaemonLong => {
                let d = rng.random_range(0..self.daemons.len());
                let pid = self.daemons[d]
                    .pid()
                    .ok_or_else(|| anyhow::anyhow!("daemon {d} is not running"))?;
                let pause = if fault == Fault::StopDaemonShort {
                    rng.random_range(300..2_000)
                } else {
                    rng.random_range(4_000..9_000)
                };
                send_signal(pid, "STOP")?;
                sleep_ms(pause);
                send_signal(pid, "CONT")?;
                Ok(format!("daemon {} stopped {pause} ms", NODES[d]))
            }
            Fault::KillLitestream => {
                self.litestream.kill9()?;
                let down = rng.random_range(300..4_000);
                sleep_ms(down);
                self.litestream = self.start_litestream();
                Ok(format!("litestream down {down} ms"))
            }
            Fault::StopLitestream => {
                let pid = self
                    .litestream
                    .pid()
                    .ok_or_else(|| anyhow::anyhow!("litestream is not running"))?;
                send_signal(pid, "STOP")?;
                let pause = rng.random_range(300..5_000);
                sleep_ms(pause);
                send_signal(pid, "CONT")?;
                Ok(format!("litestream stopped {pause} ms"))
            }
        }
    }

    /// Recovery: HAProxy routes to a primary and a run finishes after `since`.
    fn recovered(&self, since: i64) -> Option<Duration> {
        let started = Instant::now();
        let http = client();
        wait_for(RECOVERY, || {
            term_epoch(&self.url)?;
            let page = get(
                &http,
                &format!("{}/v1/runs?state=succeeded&limit=50", self.url),
            )?;
            page["items"]
                .as_array()?
                .iter()
                .any(|r| r["finished_at"].is_string() && ms(r, "finished_at") > since)
                .then(|| started.elapsed())
        })
    }

    /// Log tails for a failure message.
    fn logs(&self) -> String {
        let tail = |name: &str, text: String| {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(30);
            format!("--- {name} ---\n{}\n", lines[from..].join("\n"))
        };
        let mut out = String::new();
        for (i, s) in self.servers.iter().enumerate() {
            out += &tail(&format!("server {i}"), s.log_text());
        }
        for d in &self.daemons {
            out += &tail(&d.node_id, d.log_text());
        }
        out += &tail("litestream", self.litestream.log_text());
        out
    }
}

/// The fault kinds to draw from: all, or those named in
/// `SUNDIAL_SOAK_FAULTS` (comma-separated, e.g. `KillPrimary,StopLitestream`).
fn fault_kinds() -> Vec<Fault> {
    let Ok(list) = std::env::var("SUNDIAL_SOAK_FAULTS") else {
        return FAULTS.to_vec();
    };
    list.split(',')
        .map(|name| {
            FAULTS
                .iter()
                .copied()
                .find(|f| format!("{f:?}") == name.trim())
                .unwrap_or_else(|| {
                    panic!("SUNDIAL_SOAK_FAULTS: no fault {name:?}; one of {FAULTS:?}")
                })
        })
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a whole number: {e}")),
    )
}

/// The test's directory, kept (and named) when the test fails.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl KeepOnPanic {
    fn path(&self) -> PathBuf {
        self.0
            .as_ref()
            .map(|t| t.path().to_path_buf())
            .expect("the directory is there until drop")
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(t) = self.0.take() {
                eprintln!("files kept for inspection in {}", t.keep().display());
            }
        }
    }
}

/// Runs `sundial-server check --db FILE --json`: its report, or why the
/// file did not pass.
fn server_check(db: &Path) -> Result<Value, String> {
    let out = std::process::Command::new(binary("sundial-server").map_err(|e| e.to_string())?)
        .args(["check", "--json", "--db"])
        .arg(db)
        .output()
        .map_err(|e| format!("running sundial-server check: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "sundial-server check {} failed: {text}{}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let report: Value =
        serde_json::from_str(&text).map_err(|e| format!("check --json printed {text:?}: {e}"))?;
    if report["integrity"] != "ok" {
        return Err(format!("check {}: {report}", db.display()));
    }
    Ok(report)
}

#[test]
fn chaos_soak_keeps_every_invariant() {
    if skip_without("haproxy") | skip_without("litestream") | skip_without("moto_server") {
        return;
    }
    let soak = Duration::from_secs(env_u64("SUNDIAL_SOAK_SECS").unwrap_or(180));
    let seed = env_u64("SUNDIAL_SOAK_SEED").unwrap_or_else(|| now_ms() as u64);
    eprintln!(
        "chaos soak: {} s of faults, seed {seed} (replay: SUNDIAL_SOAK_SEED={seed})",
        soak.as_secs()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = KeepOnPanic(Some(tempfile::tempdir().unwrap()));
    let dir = tmp.path();

    // The HA pair over one file, HAProxy in front.
    let HaPair {
        shared,
        doubles,
        servers,
        ..
    } = start_pair(&dir);
    let servers = Vec::from(servers);
    let lb = HaproxyProc::start(&dir, servers[0].port, servers[1].port).unwrap();
    let url = lb.url();
    routed_to_primary(&lb, Duration::from_secs(10)).expect("HAProxy routes to the primary only");

    // Litestream to moto, with the repository's litestream.yml.
    let moto = MotoProc::start(&dir, BUCKET).expect("moto_server");
    let replica = Replica::S3 {
        endpoint: moto.endpoint.clone(),
        bucket: BUCKET.into(),
        path: "sundial/chaos".into(),
    };
    let ls_config = replica.config(&dir).unwrap();
    let litestream = LitestreamProc::start(
        &ls_config,
        &replica.env(&shared.join("sundial.db")),
        &dir.join("litestream.log"),
    )
    .unwrap();

    // Three daemons through HAProxy.
    let (_, tok) =
        admin_call(&url, "POST", "/v1/join-tokens", Some(&json!({"ttl": "1h"}))).unwrap();
    let token = tok["token"].as_str().unwrap().to_string();
    let daemons: Vec<DaemonProc> = NODES
        .iter()
        .map(|id| {
            DaemonProc::start(&url, &token, id, &dir.join(id), &["--capacity", "16"]).unwrap()
        })
        .collect();
    wait_for(Duration::from_secs(30), || {
        let (_, n) = admin_call(&url, "GET", "/v1/nodes", None).ok()?;
        (n["items"].as_array()?.len() == NODES.len()).then_some(())
    })
    .expect("three daemons joined through HAProxy");

    let mut cluster = Cluster {
        dir: dir.clone(),
        shared: shared.clone(),
        doubles,
        servers,
        primary: 0,
        _lb: lb,
        url: url.clone(),
        daemons,
        replica: replica.clone(),
        ls_config: ls_config.clone(),
        litestream,
        outages: Vec::new(),
    };

    let plan = job_plan();
    for (id, misfire, conc, broadcast) in &plan {
        let (status, body) = admin_call(
            &url,
            "PUT",
            &format!("/v1/jobs/{id}"),
            Some(&job_spec(*misfire, *conc, *broadcast)),
        )
        .unwrap();
        assert_eq!(status, 201, "{id}: {body}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let observer = {
        let (u, s, o) = (url.clone(), stop.clone(), observed.clone());
        std::thread::spawn(move || observe(u, s, o))
    };
    let first = cluster.recovered(now_ms());
    assert!(
        first.is_some(),
        "no run completed before the faults:\n{}",
        cluster.logs()
    );

    // The soak: one fault at a time; every kind once first (in a random
    // order), then at random.
    let kinds = fault_kinds();
    let mut order = kinds.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut survived: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let soak_started = Instant::now();
    let mut n = 0;
    while soak_started.elapsed() + Duration::from_secs(5) < soak {
        let fault = order
            .get(n)
            .copied()
            .unwrap_or_else(|| kinds[rng.random_range(0..kinds.len())]);
        n += 1;
        *injected.entry(fault).or_default() += 1;
        let t = soak_started.elapsed().as_secs_f64();
        let result = cluster.inject(fault, &mut rng);
        let healed = now_ms();
        let outcome = result.and_then(|what| {
            let took = cluster
                .recovered(healed)
                .ok_or_else(|| anyhow::anyhow!("no run completed within {RECOVERY:?}"))?;
            Ok(format!(
                "{what}; runs completing {} ms after healing",
                took.as_millis()
            ))
        });
        match outcome {
            Ok(what) => {
                *survived.entry(fault).or_default() += 1;
                eprintln!("[{t:6.1} s] fault {n:3} {fault:?}: {what}");
            }
            Err(e) => {
                let msg = format!("fault {n} {fault:?} at {t:.1} s (seed {seed}): {e:#}");
                eprintln!("[{t:6.1} s] NOT SURVIVED: {msg}");
                failures.push(msg);
                break;
            }
        }
        sleep_ms(rng.random_range(500..3_000));
    }
    assert!(failures.is_empty(), "{failures:?}\n{}", cluster.logs());

    // The end: Litestream dies under load. What was seen finished more than
    // 1 s before must be in the backup.
    wait_for(Duration::from_secs(30), || term_epoch(&url)).expect("a primary at the end");
    sleep_ms(3_000);
    let end = now_ms();
    cluster.litestream.kill9().unwrap();

    // Pause every job, let runs settle, read the whole history.
    let mut paused: HashMap<String, (i64, i64)> = HashMap::new();
    for (id, ..) in &plan {
        let sent = now_ms();
        let (status, body) =
            admin_call(&url, "POST", &format!("/v1/jobs/{id}/pause"), None).unwrap();
        assert_eq!(status, 200, "pause {id}: {body}");
        paused.insert(id.clone(), (sent, now_ms()));
    }
    let http = client();
    let quiet = wait_for(Duration::from_secs(120), || {
        let p = get(&http, &format!("{url}/v1/runs?state=pending&limit=1"))?;
        let r = get(&http, &format!("{url}/v1/runs?state=running&limit=1"))?;
        (p["items"].as_array()?.is_empty() && r["items"].as_array()?.is_empty()).then_some(())
    });
    let stuck = || {
        ["pending", "running"]
            .map(|state| {
                let r = http
                    .get(format!("{url}/v1/runs?state={state}&limit=20"))
                    .bearer_auth(ADMIN_KEY)
                    .send();
                match r {
                    Ok(r) => format!("{state}: {} {}", r.status(), r.text().unwrap_or_default()),
                    Err(e) => format!("{state}: {e}"),
                }
            })
            .join("\n")
    };
    assert!(
        quiet.is_some(),
        "runs still pending or running:\n{}\n{}",
        stuck(),
        cluster.logs()
    );
    sleep_ms(1_000); // one more observer poll over the settled runs
                     // No result is left in a daemon's spool.
    let spooled = wait_for(Duration::from_secs(30), || {
        (cluster
            .daemons
            .iter()
            .map(DaemonProc::spooled)
            .sum::<usize>()
            == 0)
            .then_some(())
    });
    stop.store(true, Ordering::Release);
    observer.join().unwrap();
    let observed = std::mem::take(&mut *observed.lock().unwrap());

    let live_db = cluster.db();
    let live = invariants::read_runs(&live_db).unwrap();
    let events = invariants::read_events(&live_db).unwrap();
    let created = invariants::read_job_created(&live_db).unwrap();
    for s in cluster.servers.iter_mut() {
        s.kill9().unwrap();
    }
    for d in cluster.daemons.iter_mut() {
        d.kill9().unwrap();
    }
    // The live file itself is sound after all that.
    let mut all: Vec<String> = Vec::new();
    if let Err(e) = server_check(&live_db) {
        all.push(format!("the live database: {e}"));
    }
    if spooled.is_none() {
        for d in cluster.daemons.iter().filter(|d| d.spooled() > 0) {
            all.push(format!(
                "{}: {} result(s) still spooled at the end",
                d.node_id,
                d.spooled()
            ));
        }
    }
    // No process panicked along the way.
    let logs = cluster
        .servers
        .iter()
        .map(|s| ("server".to_string(), s.log_text()))
        .chain(
            cluster
                .daemons
                .iter()
                .map(|d| (d.node_id.clone(), d.log_text())),
        );
    for (who, text) in logs {
        if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
            all.push(format!("{who} panicked: {line}"));
        }
    }

    // Restore from S3 into a fresh directory and check it.
    let restored_db = dir.join("restored/sundial.db");
    let (cfg, dbs, out) = (
        ls_config.to_str().unwrap(),
        live_db.to_str().unwrap(),
        restored_db.to_str().unwrap(),
    );
    let restore = restore_sh(
        &replica,
        &live_db,
        &["--config", cfg, "--db", dbs, "--output", out],
    )
    .unwrap();
    let checked = if restore.ok {
        server_check(&restored_db)
    } else {
        Err(format!("restore failed: {}", restore.output))
    };
    let (restored, check) = match checked {
        Ok(report) => (
            invariants::read_runs(&restored_db).unwrap(),
            report["runs_by_state"].clone(),
        ),
        Err(e) => {
            let crashes = injected.get(&Fault::KillLitestream).copied().unwrap_or(0);
            let live_sound = !all.iter().any(|v| v.starts_with("the live database"));
            let hint = if live_sound && crashes > 0 && e.contains("failed its check") {
                format!(
                    "\n(the live database passes its check and Litestream was killed {crashes} time(s): \
                     a Litestream 0.5 replica restores corrupt when the server checkpointed while \
                     Litestream was down, benbjohnson/litestream#1164; the servers here run with \
                     --wal-autocheckpoint 0 to prevent it: see docs/dr.md)"
                )
            } else {
                String::new()
            };
            all.push(format!("the restore from Litestream: {e}{hint}"));
            (Vec::new(), Value::Null)
        }
    };

    // The invariants.
    let jobs: Vec<JobExpect> = plan
        .iter()
        .map(|(id, misfire, conc, broadcast)| {
            let created_at = created[id];
            let (sent, acked) = paused[id];
            JobExpect {
                id: id.clone(),
                misfire: *misfire,
                concurrency: *conc,
                created_at,
                // Whole seconds, one clear of creation and of the pause.
                first_slot: (created_at / 1000 + 2) * 1000,
                last_slot: ((sent - 500) / 1000) * 1000,
                no_slot_after: acked + 1000,
                nodes: broadcast.then(|| NODES.iter().map(|n| n.to_string()).collect()),
                max_attempts: RETRIES + 1,
            }
        })
        .collect();
    let report = invariants::check(&jobs, &live, &events, &cluster.outages, TOLERANCE_MS);
    let seen: Vec<Seen> = observed.seen.values().cloned().collect();
    let (restore_violations, required) = invariants::check_restored(&seen, &restored, &live, end);

    let fenced: usize = cluster
        .servers
        .iter()
        .map(|s| s.log_text().matches("fenced by a newer primary").count())
        .sum();
    let total_injected: usize = injected.values().sum();
    let total_survived: usize = survived.values().sum();
    let outage_ms: i64 = cluster.outages.iter().map(|w| w.to - w.from).sum();
    eprintln!("--- chaos soak summary (seed {seed}) ---");
    for fault in FAULTS {
        eprintln!(
            "  {:<18} injected {:3}  survived {:3}",
            format!("{fault:?}"),
            injected.get(&fault).copied().unwrap_or(0),
            survived.get(&fault).copied().unwrap_or(0)
        );
    }
    eprintln!(
        "  faults: {total_injected} injected, {total_survived} survived; {} outage windows, {outage_ms} ms without a primary; deposed primaries fenced by the epoch: {fenced}",
        cluster.outages.len()
    );
    eprintln!(
        "  slots checked {}, runs checked {}, dropped by policy {}, catch-up {}, forbid skips {}, replaced {}, lost {}, allow overlaps {}",
        report.slots_checked,
        report.runs_checked,
        report.dropped_by_policy,
        report.catch_up,
        report.skipped_by_forbid,
        report.replaced,
        report.lost,
        report.overlaps_allowed
    );
    eprintln!(
        "  observer: {} polls ({} failed), {} runs seen finished; restore: {} runs, {} seen finished more than 1 s before the end required in it; check: {}",
        observed.polls,
        observed.failed_polls,
        seen.len(),
        restored.len(),
        required,
        check
    );

    all.extend(report.violations.iter().cloned());
    if !restored.is_empty() {
        all.extend(restore_violations);
    }
    if !all.is_empty() {
        panic!(
            "{} invariant violation(s) (seed {seed}):\n{}",
            all.len(),
            all.iter().take(60).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(total_injected, total_survived);
    assert!(total_injected >= kinds.len().min(soak.as_secs() as usize / 20));
    assert!(
        required > 0,
        "the observer saw no run finished before the end"
    );
    assert!(report.slots_checked > 0 && report.runs_checked > 0);
    drop(moto);
}

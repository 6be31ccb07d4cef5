//! `sundial-bench`: runs one benchmark scenario against the real
//! `sundial-server` binary (release build) and prints a result table.
//! See `docs/benchmarks.md` for what each scenario measures and how to read it.

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sundial_bench::{
    cpu_seconds, load, machine, open_ro, quiet_daily_schedule, rss_kb, scrape, summary, wall_ms,
    Histogram, Timeline, Watcher,
};
use sundial_e2e::{ServerProc, ADMIN_KEY};

/// The server's allocator: `run-path` runs the server's writer in this
/// process, and its allocations should cost what they cost in the server.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod burst_dispatch;
mod console;
mod dispatch;
mod idle;
mod run_path;
mod slowloris;

#[derive(Parser)]
#[command(about = "Sundial benchmark scenarios (see docs/benchmarks.md)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Keep the temporary data directory (and server log) and print its path.
    #[arg(long, global = true)]
    keep: bool,
    /// Record a `perf` profile of the server during the measured phase into this file
    /// (`run-path` has no server process: it profiles its own, warm-up included).
    #[arg(long, global = true)]
    perf: Option<PathBuf>,
    /// With --perf: unwind with DWARF (`--call-graph dwarf`) instead of frame pointers.
    #[arg(long, global = true)]
    perf_dwarf: bool,
    /// Interval of the read-only database watcher, in milliseconds.
    #[arg(long, global = true, default_value_t = 1)]
    poll_ms: u64,
}

#[derive(Subcommand)]
enum Scenario {
    /// Start-up with a large pre-populated database: readiness, first fire, memory.
    Startup {
        #[arg(long, default_value_t = 1_000_000)]
        jobs: u64,
        /// Jobs per write operation while populating.
        #[arg(long, default_value_t = 20_000)]
        chunk: u64,
    },
    /// Bulk `PUT /v1/jobs/{id}` over keep-alive connections.
    Upsert {
        #[arg(long, default_value_t = 100_000)]
        jobs: u64,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Tokio worker threads of the load generator (the server gets the rest).
        #[arg(long, default_value_t = 1)]
        client_threads: usize,
    },
    /// Many jobs due in the same second.
    Burst {
        #[arg(long, default_value_t = 10_000)]
        jobs: u64,
        /// Consecutive fire seconds (10 s apart) to measure.
        #[arg(long, default_value_t = 2)]
        fires: u32,
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
    /// Steady state: jobs firing every second; per-run lateness.
    Lateness {
        #[arg(long, default_value_t = 1000)]
        jobs: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
    /// End-to-end no-op runs through real daemons; sweeps the offered load.
    Dispatch {
        /// `sundial-daemon` processes.
        #[arg(long, default_value_t = 10)]
        daemons: usize,
        /// `--capacity` of each daemon (runs executed at once).
        #[arg(long, default_value_t = 1000)]
        capacity: u32,
        /// Offered loads to sweep (every-second jobs), ascending.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
        rates: Vec<u64>,
        /// Measured window per step, seconds.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Seconds between creating a step's jobs and its window.
        #[arg(long, default_value_t = 3)]
        settle: u64,
        /// Seconds after a window before its runs are read back.
        #[arg(long, default_value_t = 3)]
        drain: u64,
        /// No-op executor: `exec` (/bin/true) or `http` (GET to a local responder).
        #[arg(long, default_value = "exec")]
        executor: String,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Also deliver every run event to a webhook (a local responder).
        #[arg(long)]
        webhook: bool,
    },
    /// `--jobs` one-shot jobs due on the same second, run by real daemons:
    /// are they all started within 1 s?
    BurstDispatch {
        #[arg(long, default_value_t = 10_000)]
        jobs: u64,
        #[arg(long, default_value_t = 10)]
        daemons: usize,
        #[arg(long, default_value_t = 1000)]
        capacity: u32,
        /// No-op executor: `exec` (/bin/true) or `http` (GET to a local responder).
        #[arg(long, default_value = "http")]
        executor: String,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds from the start of job creation to the due second.
        #[arg(long, default_value_t = 20)]
        lead: u64,
        /// Seconds after the due second before the runs are read back.
        #[arg(long, default_value_t = 5)]
        drain: u64,
    },
    /// Server time of the web console's pages over a large database.
    Console {
        #[arg(long, default_value_t = 100_000)]
        jobs: u64,
        /// Finished runs to add (1,000 on job-0000001, the rest spread).
        #[arg(long, default_value_t = 200_000)]
        runs: u64,
        /// Timed requests per page (after one warm-up).
        #[arg(long, default_value_t = 20)]
        requests: usize,
    },
    /// Many simulated daemons holding long-polls against one server.
    IdleDaemons {
        #[arg(long, default_value_t = 10_000)]
        daemons: usize,
        /// `wait_ms` of each long-poll (the real daemon uses 30 s).
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
        /// Seconds to hold all polls open while measuring.
        #[arg(long, default_value_t = 60)]
        hold: u64,
        /// Joins/registrations in flight at once.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
        /// Tokio worker threads of the simulator.
        #[arg(long, default_value_t = 1)]
        client_threads: usize,
        /// Bound on the connect phase, seconds.
        #[arg(long, default_value_t = 300)]
        connect_timeout: u64,
    },
    /// The writer's run path alone (slots, assignment, completion), no network.
    RunPath {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Simulated seconds (each fires every job once); the first is warm-up.
        #[arg(long, default_value_t = 6)]
        seconds: usize,
        /// Runs per assignment or completion write (a dispatcher poll, a batched completion).
        #[arg(long, default_value_t = 200)]
        batch: usize,
    },
    /// Fire lateness of every-second jobs with and without stalled (slowloris) connections.
    Slowloris {
        #[arg(long, default_value_t = 10)]
        jobs: u64,
        /// Seconds of each measured window.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Stalled connections held open during the second window.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.perf.is_some()
        && matches!(
            cli.scenario,
            Scenario::BurstDispatch { .. } | Scenario::Console { .. } | Scenario::Slowloris { .. }
        )
    {
        bail!("--perf is not supported by this scenario (it is by startup, upsert, burst, lateness, dispatch, idle-daemons and run-path)");
    }
    println!("{}", machine());
    let left = sundial_bench::wait_time_wait_drained(1_000, Duration::from_secs(70));
    println!("TCP sockets in TIME_WAIT at start: {left}");
    let tmp = tempfile::Builder::new()
        .prefix("sundial-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).context("creating the data directory")?;
    let opts = Opts {
        perf: cli.perf.clone(),
        perf_dwarf: cli.perf_dwarf,
        poll: Duration::from_millis(cli.poll_ms.max(1)),
    };
    let result = match cli.scenario {
        Scenario::Startup { jobs, chunk } => startup(&data, &opts, jobs, chunk.max(1)),
        Scenario::Upsert {
            jobs,
            clients,
            client_threads,
        } => upsert(&data, &opts, jobs, clients.max(1), client_threads.max(1)),
        Scenario::Burst {
            jobs,
            fires,
            clients,
        } => burst(&data, &opts, jobs, fires.max(1), clients.max(1)),
        Scenario::Lateness {
            jobs,
            seconds,
            clients,
        } => lateness(&data, &opts, jobs, seconds.max(1), clients.max(1)),
        Scenario::Dispatch {
            daemons,
            capacity,
            rates,
            seconds,
            settle,
            drain,
            executor,
            clients,
            webhook,
        } => dispatch::run(
            &data,
            &opts,
            &dispatch::Args {
                daemons: daemons.max(1),
                capacity: capacity.max(1),
                rates,
                seconds: seconds.max(1),
                settle: settle.max(1),
                drain,
                executor,
                clients: clients.max(1),
                webhook,
            },
        ),
        Scenario::BurstDispatch {
            jobs,
            daemons,
            capacity,
            executor,
            clients,
            lead,
            drain,
        } => burst_dispatch::run(
            &data,
            &burst_dispatch::Args {
                jobs: jobs.max(1),
                daemons: daemons.max(1),
                capacity: capacity.max(1),
                executor,
                clients: clients.max(1),
                lead: lead.max(2),
                drain: drain.max(1),
            },
        ),
        Scenario::Console {
            jobs,
            runs,
            requests,
        } => console::run(
            &data,
            &console::Args {
                jobs: jobs.max(100),
                runs: runs.max(1000),
                requests: requests.max(1),
            },
        ),
        Scenario::IdleDaemons {
            daemons,
            wait_ms,
            hold,
            parallel,
            client_threads,
            connect_timeout,
        } => idle::run(
            &data,
            &opts,
            &idle::Args {
                daemons: daemons.max(1),
                wait_ms,
                hold: hold.max(1),
                parallel: parallel.max(1),
                threads: client_threads.max(1),
                connect_timeout: connect_timeout.max(1),
            },
        ),
        Scenario::RunPath {
            jobs,
            seconds,
            batch,
        } => run_path::run(
            &data,
            &opts,
            &run_path::Args {
                jobs: jobs.max(1),
                seconds: seconds.max(1),
                batch: batch.max(1),
            },
        ),
        Scenario::Slowloris {
            jobs,
            seconds,
            connections,
        } => slowloris::run(
            &data,
            &slowloris::Args {
                jobs: jobs.max(1),
                seconds: seconds.max(1),
                connections: connections.max(1),
            },
        ),
    };
    if cli.keep {
        let kept = tmp.keep();
        println!("kept data directory: {}", kept.display());
    }
    result
}

struct Opts {
    perf: Option<PathBuf>,
    perf_dwarf: bool,
    poll: Duration,
}

/// A `perf record` attached to the server for the measured phase.
struct Perf {
    child: Option<Child>,
}

impl Perf {
    fn start(opts: &Opts, pid: u32) -> Result<Perf> {
        let Some(out) = &opts.perf else {
            return Ok(Perf { child: None });
        };
        let unwind = if opts.perf_dwarf {
            ["--call-graph", "dwarf,16384"]
        } else {
            ["--call-graph", "fp"]
        };
        let child = Command::new("perf")
            .args(["record", "-F", "2999"])
            .args(unwind)
            .args(["-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning perf (is it installed?)")?;
        // perf needs a moment to attach.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Perf { child: Some(child) })
    }

    fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status()
                .context("signalling perf")?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill()?;
                    child.wait()?;
                    bail!("perf did not stop within 60 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            println!("perf profile written (perf report -i <file> --no-children)");
        }
        Ok(())
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn http_client() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

fn server_pid(server: &ServerProc) -> Result<u32> {
    server.pid().context("server process is not running")
}

fn stop_server(mut server: ServerProc) -> Result<()> {
    let code = server
        .terminate(Duration::from_secs(30))
        .context("stopping the server")?;
    if code != Some(0) {
        println!("note: server exited with {code:?}");
    }
    Ok(())
}

fn row(name: &str, value: String, target: &str) {
    println!("| {name:<48} | {value:>22} | {target:<18} |");
}

fn header(title: &str) {
    println!("\n## {title}\n");
    println!("| {:<48} | {:>22} | {:<18} |", "metric", "value", "target");
    println!("|{:-<50}|{:->24}|{:-<20}|", "", "", "");
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

/// Removes terminal colour escapes (`ESC [ ... m`) from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------- startup

fn populate(db: &Path, jobs: u64, chunk: u64) -> Result<Duration> {
    use sundial_proto::{Executor, JobSpec};
    use sundial_server::schedule::Schedule;
    use sundial_server::store::{jobs as store_jobs, Store};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let started = Instant::now();
    let now = wall_ms();
    rt.block_on(async move {
        let metrics = Arc::new(sundial_server::metrics::Metrics::new());
        let store = Arc::new(Store::open(db, metrics).context("opening the store")?);
        let mut start = 0u64;
        let mut last_report = Instant::now();
        while start < jobs {
            let end = (start + chunk).min(jobs);
            store
                .write(move |c| {
                    for i in start..end {
                        // Job 0 fires every second; the rest are daily and quiet.
                        let schedule = if i == 0 {
                            "*/1 * * * * *".to_string()
                        } else {
                            quiet_daily_schedule(i, now, 15)
                        };
                        let parsed = Schedule::parse(&schedule, "UTC").map_err(|e| {
                            sundial_server::store::StoreError::Corrupt(format!("{schedule}: {e}"))
                        })?;
                        let spec = JobSpec {
                            schedule,
                            timezone: "UTC".into(),
                            executor: Executor::Exec {
                                argv: vec!["true".into()],
                                env: Default::default(),
                                cwd: None,
                            },
                            target: Default::default(),
                            concurrency: Default::default(),
                            misfire: Default::default(),
                            timeout: None,
                            retries: Default::default(),
                            history: Default::default(),
                            enabled: true,
                            description: String::new(),
                            after: Vec::new(),
                            alert: None,
                            labels: Default::default(),
                        };
                        store_jobs::upsert(c, &format!("job-{i:07}"), &spec, now, |t| {
                            parsed.next_after(t)
                        })?;
                    }
                    Ok(())
                })
                .await
                .with_context(|| format!("writing jobs {start}..{end}"))?;
            start = end;
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!("  populated {start}/{jobs} jobs ...");
                last_report = Instant::now();
            }
        }
        store.close().await;
        anyhow::Ok(())
    })?;
    Ok(started.elapsed())
}

fn startup(data: &Path, opts: &Opts, jobs: u64, chunk: u64) -> Result<()> {
    let db = data.join("sundial.db");
    println!("populating {jobs} jobs in {}", data.display());
    let population = populate(&db, jobs, chunk)?;
    let db_bytes: u64 = std::fs::read_dir(data)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("populated in {:.1} s", population.as_secs_f64());
    // Let the page cache settle and note the load before timing.
    std::thread::sleep(Duration::from_secs(2));
    println!("before spawn: {}", load());

    let watcher = Watcher::start(db.clone(), opts.poll, Duration::from_secs(120));
    let t0_wall = wall_ms();
    let t0 = Instant::now();
    let server = ServerProc::start(data).context("starting the server")?;
    let ready = t0.elapsed();
    let pid = server_pid(&server)?;
    let perf = Perf::start(opts, pid)?;

    // First run row (any trigger), polled read-only.
    let conn = open_ro(&db)?;
    let first = |sql: &str| -> Result<Option<(i64, i64, String)>> {
        use rusqlite::OptionalExtension;
        Ok(conn
            .query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut first_any = None;
    let mut first_sched = None;
    while Instant::now() < deadline && (first_any.is_none() || first_sched.is_none()) {
        if first_any.is_none() {
            first_any = first("SELECT id, scheduled_for, trigger FROM runs ORDER BY id LIMIT 1")?;
        }
        if first_sched.is_none() {
            first_sched = first(&format!(
                "SELECT id, scheduled_for, trigger FROM runs
                 WHERE trigger = 'schedule' AND scheduled_for >= {t0_wall} ORDER BY id LIMIT 1"
            ))?;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(conn);
    let until_5s = Duration::from_secs(5).saturating_sub(t0.elapsed());
    std::thread::sleep(until_5s);
    let (rss, hwm) = rss_kb(pid)?;
    let cpu = cpu_seconds(&pid.to_string())?;
    perf.stop()?;
    let tl = watcher.finish();
    // A Prometheus scrape refreshes the stored-data gauges (counts over all jobs).
    let http = http_client()?;
    let scrape_started = Instant::now();
    scrape(&http, &server.base)?;
    let scrape_ms = scrape_started.elapsed().as_millis();
    let (rss_after_scrape, _) = rss_kb(pid)?;
    let promoted = tl
        .epoch
        .iter()
        .find(|(_, e)| *e >= 2)
        .map(|(t, _)| t - t0_wall);
    let log = server.log_text();
    stop_server(server)?;

    header(&format!("startup: {jobs} jobs"));
    row(
        "population (library, batched writes)",
        format!("{:.1} s", population.as_secs_f64()),
        "",
    );
    row(
        "database size after population",
        format!("{:.0} MiB", db_bytes as f64 / 1048576.0),
        "",
    );
    row(
        "spawn → /readyz 200 (50 ms poll)",
        format!("{} ms", ready.as_millis()),
        "",
    );
    row(
        "spawn → epoch bumped (promoted)",
        promoted.map_or("not seen".into(), |ms| format!("{ms} ms")),
        "",
    );
    let visible = |id: i64, tl: &Timeline| tl.visible_at(id).map(|t| t - t0_wall);
    match &first_any {
        Some((id, at, trigger)) => {
            let v = visible(*id, &tl);
            let ok = v.is_some_and(|ms| ms <= 2000);
            row(
                &format!("spawn → first run row ({trigger})"),
                v.map_or("?".into(), |ms| format!("{ms} ms")),
                &format!("≤ 2000 ms {}", verdict(ok)),
            );
            row(
                "  its scheduled_for − spawn",
                format!("{} ms", at - t0_wall),
                "",
            );
        }
        None => row(
            "spawn → first run row",
            "none in 30 s".into(),
            "≤ 2000 ms MISSED",
        ),
    }
    match &first_sched {
        Some((id, at, _)) => {
            let v = visible(*id, &tl);
            row(
                "spawn → first on-time slot (scheduled ≥ spawn)",
                v.map_or("?".into(), |ms| format!("{ms} ms")),
                "",
            );
            row(
                "  its lateness (visible − scheduled_for)",
                tl.visible_at(*id)
                    .map_or("?".into(), |t| format!("{} ms", t - at)),
                "",
            );
        }
        None => row("spawn → first on-time slot", "none in 30 s".into(), ""),
    }
    let rss_mb = rss as f64 / 1024.0;
    row(
        "VmRSS at spawn + 5 s",
        format!("{rss_mb:.1} MiB"),
        &format!("≤ 300 MB {}", verdict(rss_mb * 1.048576 <= 300.0)),
    );
    row(
        "VmHWM at spawn + 5 s",
        format!("{:.1} MiB", hwm as f64 / 1024.0),
        "",
    );
    row("server CPU time in first 5 s", format!("{cpu:.2} s"), "");
    row("GET /metrics after that", format!("{scrape_ms} ms"), "");
    row(
        "VmRSS after the scrape",
        format!("{:.1} MiB", rss_after_scrape as f64 / 1024.0),
        "",
    );
    row("watcher polls", tl.polls.to_string(), "");
    if let Some(line) = log.lines().find(|l| l.contains("promoted to primary")) {
        println!("\nserver log: {}", strip_ansi(line.trim()));
    }
    Ok(())
}

// ---------------------------------------------------------------- load generator

/// Result of a batch of PUTs.
struct Load {
    latencies_us: Vec<i64>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    /// Load generator CPU seconds (this process).
    client_cpu: f64,
}

/// PUTs `jobs` distinct jobs (`{prefix}-{i}`, schedule from `schedule(i)`,
/// executor `exec ["true"]`) with `clients` concurrent keep-alive connections.
fn put_jobs(
    base: &str,
    prefix: &str,
    jobs: u64,
    clients: usize,
    threads: usize,
    schedule: impl Fn(u64) -> String + Send + Sync + 'static,
) -> Result<Load> {
    put_job_bodies(base, prefix, jobs, clients, threads, move |i| {
        serde_json::json!({
            "schedule": schedule(i),
            "executor": {"type": "exec", "argv": ["true"]},
        })
    })
}

/// PUTs `jobs` distinct jobs (`{prefix}-{i}`, body from `body(i)`) with
/// `clients` concurrent keep-alive connections.
fn put_job_bodies(
    base: &str,
    prefix: &str,
    jobs: u64,
    clients: usize,
    threads: usize,
    body: impl Fn(u64) -> serde_json::Value + Send + Sync + 'static,
) -> Result<Load> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let cpu_before = cpu_seconds("self")?;
    let base = base.to_string();
    let prefix = prefix.to_string();
    let make_body = Arc::new(body);
    let load = rt.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(clients)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(clients);
        for _ in 0..clients {
            let (http, next, base, prefix, make_body) = (
                http.clone(),
                next.clone(),
                base.clone(),
                prefix.clone(),
                make_body.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0usize;
                let mut first_error = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                    if i >= jobs {
                        break;
                    }
                    let body = make_body(i);
                    let t = Instant::now();
                    let resp = http
                        .put(format!("{base}/v1/jobs/{prefix}-{i}"))
                        .bearer_auth(ADMIN_KEY)
                        .json(&body)
                        .send()
                        .await;
                    let outcome = match resp {
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            if status.as_u16() == 201 {
                                Ok(())
                            } else {
                                Err(format!("{status}: {text}"))
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    lat.push(t.elapsed().as_micros() as i64);
                    if let Err(e) = outcome {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
                (lat, errors, first_error)
            }));
        }
        let mut load = Load {
            latencies_us: Vec::with_capacity(jobs as usize),
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            client_cpu: 0.0,
        };
        for t in tasks {
            let (lat, errors, first_error) = t.await.context("client task")?;
            load.latencies_us.extend(lat);
            load.errors += errors;
            if load.first_error.is_none() {
                load.first_error = first_error;
            }
        }
        load.elapsed = started.elapsed();
        anyhow::Ok(load)
    })?;
    drop(rt);
    let mut load = load;
    load.client_cpu = cpu_seconds("self")? - cpu_before;
    if let Some(e) = &load.first_error {
        println!("first error: {e}");
    }
    Ok(load)
}

fn report_load(load: &mut Load, jobs: u64, with_target: bool) {
    let rate = jobs as f64 / load.elapsed.as_secs_f64();
    row(
        "jobs created",
        format!("{} ({} errors)", jobs as usize - load.errors, load.errors),
        "",
    );
    row(
        "wall time",
        format!("{:.2} s", load.elapsed.as_secs_f64()),
        "",
    );
    row(
        "throughput",
        format!("{rate:.0} jobs/s"),
        &if with_target {
            format!("≥ 20000 {}", verdict(rate >= 20_000.0))
        } else {
            String::new()
        },
    );
    let s = summary(&mut load.latencies_us, "µs");
    for part in s
        .split(' ')
        .filter(|p| p.starts_with('p') || p.starts_with("max"))
    {
        if let Some((k, v)) = part.split_once('=') {
            row(&format!("request latency {k}"), format!("{v} µs"), "");
        }
    }
}

// ---------------------------------------------------------------- upsert

fn upsert(data: &Path, opts: &Opts, jobs: u64, clients: usize, threads: usize) -> Result<()> {
    let server = ServerProc::start(data).context("starting the server")?;
    let pid = server_pid(&server)?;
    let http = http_client()?;
    let before = scrape(&http, &server.base)?;
    println!("before load: {}", load());
    let perf = Perf::start(opts, pid)?;
    let server_cpu0 = cpu_seconds(&pid.to_string())?;
    let now = wall_ms();
    let mut result = put_jobs(&server.base, "bench", jobs, clients, threads, move |i| {
        quiet_daily_schedule(i, now, 15)
    })?;
    let server_cpu = cpu_seconds(&pid.to_string())? - server_cpu0;
    perf.stop()?;
    let after = scrape(&http, &server.base)?;
    let (count_status, count) = server.call("GET", "/v1/jobs?limit=1", None)?;
    ensure!(count_status == 200, "GET /v1/jobs: {count_status} {count}");
    stop_server(server)?;

    header(&format!(
        "upsert: {jobs} jobs, {clients} clients, {threads} client thread(s)"
    ));
    report_load(&mut result, jobs, true);
    let batch = Histogram::parse(&after, "sundial_store_write_batch_size")
        .since(&Histogram::parse(&before, "sundial_store_write_batch_size"));
    let commit = Histogram::parse(&after, "sundial_store_commit_seconds")
        .since(&Histogram::parse(&before, "sundial_store_commit_seconds"));
    row(
        "write batches (transactions)",
        format!("{}", batch.count),
        "",
    );
    row(
        "mean write batch size (sum/count)",
        format!(
            "{:.1} ({}/{})",
            batch.sum / batch.count.max(1.0),
            batch.sum,
            batch.count
        ),
        "",
    );
    row(
        "mean batch apply+commit time",
        format!("{:.2} ms", commit.sum / commit.count.max(1.0) * 1000.0),
        "",
    );
    row(
        "writer busy (sum of batch times)",
        format!(
            "{:.2} s ({:.0}% of wall)",
            commit.sum,
            commit.sum / result.elapsed.as_secs_f64() * 100.0
        ),
        "",
    );
    row(
        "server CPU (user+sys)",
        format!(
            "{server_cpu:.2} s ({:.2} cores)",
            server_cpu / result.elapsed.as_secs_f64()
        ),
        "",
    );
    row(
        "load generator CPU (user+sys)",
        format!(
            "{:.2} s ({:.2} cores)",
            result.client_cpu,
            result.client_cpu / result.elapsed.as_secs_f64()
        ),
        "",
    );
    println!("\nwrite batch size histogram (delta over the load):");
    println!("{}", batch.render(1.0, ""));
    Ok(())
}

// ---------------------------------------------------------------- burst

/// Sleeps until wall-clock `at_ms`.
fn sleep_until_wall(at_ms: i64) {
    let wait = at_ms - wall_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
}

/// Per fire second: (count, min id, max id, max created_at).
fn slots_at(db: &Path, at: i64) -> Result<(i64, i64, i64, i64)> {
    let conn = open_ro(db)?;
    Ok(conn.query_row(
        "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0), coalesce(max(created_at), 0)
         FROM runs WHERE scheduled_for = ?1 AND trigger = 'schedule'",
        [at],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?)
}

fn burst(data: &Path, opts: &Opts, jobs: u64, fires: u32, clients: usize) -> Result<()> {
    let db = data.join("sundial.db");
    let server = ServerProc::start(data).context("starting the server")?;
    let pid = server_pid(&server)?;
    let http = http_client()?;
    let mut created = put_jobs(&server.base, "burst", jobs, clients, 1, |_| {
        "*/10 * * * * *".to_string()
    })?;
    ensure!(created.errors == 0, "{} PUTs failed", created.errors);
    let done = wall_ms();
    // The first 10 s boundary at least 1.5 s after the last job was created.
    let first = ((done + 1500) / 10_000 + 1) * 10_000;
    println!(
        "created {jobs} jobs in {:.2} s; measuring fires at {} (+{} ms)",
        created.elapsed.as_secs_f64(),
        sundial_proto::time::format_ms(first),
        first - done
    );
    sleep_until_wall(first - 1000);
    println!("before fire: {}", load());
    let before = scrape(&http, &server.base)?;
    let watcher = Watcher::start(
        db.clone(),
        opts.poll,
        Duration::from_secs(15 * u64::from(fires) + 30),
    );
    let perf = Perf::start(opts, pid)?;
    let last = first + 10_000 * i64::from(fires - 1);
    // Wait (bounded) until every measured second has all its slots.
    let deadline = last + 10_000;
    sleep_until_wall(last + 1000);
    while wall_ms() < deadline && slots_at(&db, last)?.0 < jobs as i64 {
        std::thread::sleep(Duration::from_millis(100));
    }
    perf.stop()?;
    let tl = watcher.finish();
    let after = scrape(&http, &server.base)?;
    stop_server(server)?;

    header(&format!("burst: {jobs} jobs due on the same second"));
    report_load(&mut created, jobs, false);
    let mut all_ok = true;
    for k in 0..fires {
        let at = first + 10_000 * i64::from(k);
        let (count, min_id, max_id, max_created) = slots_at(&db, at)?;
        let label = format!("fire {} ({})", k + 1, sundial_proto::time::format_ms(at));
        let count_ok = count == jobs as i64;
        row(
            &format!("{label}: slots"),
            count.to_string(),
            &format!("= {jobs} {}", verdict(count_ok)),
        );
        row(
            "  last created_at − scheduled_for",
            format!("{} ms", max_created - at),
            "",
        );
        let first_vis = tl.visible_at(min_id).map(|t| t - at);
        let last_vis = tl.visible_at(max_id).map(|t| t - at);
        let ok = count_ok && last_vis.is_some_and(|ms| ms <= 1000);
        all_ok &= ok;
        row(
            "  first slot committed (watcher) − sched.",
            first_vis.map_or("?".into(), |ms| format!("{ms} ms")),
            "",
        );
        row(
            "  last slot committed (watcher) − sched.",
            last_vis.map_or("?".into(), |ms| format!("{ms} ms")),
            &format!("≤ 1000 ms {}", verdict(ok)),
        );
    }
    let late = Histogram::parse(&after, "sundial_fire_lateness_seconds")
        .since(&Histogram::parse(&before, "sundial_fire_lateness_seconds"));
    let commit = Histogram::parse(&after, "sundial_store_commit_seconds")
        .since(&Histogram::parse(&before, "sundial_store_commit_seconds"));
    let batch = Histogram::parse(&after, "sundial_store_write_batch_size")
        .since(&Histogram::parse(&before, "sundial_store_write_batch_size"));
    println!("\nsundial_fire_lateness_seconds (delta over the measured fires, ms):");
    println!("{}", late.render(1000.0, "ms"));
    println!("sundial_store_commit_seconds (delta, ms):");
    println!("{}", commit.render(1000.0, "ms"));
    println!("sundial_store_write_batch_size (delta):");
    println!("{}", batch.render(1.0, ""));
    println!(
        "\nburst target (all {jobs} slots committed within 1 s): {}",
        verdict(all_ok)
    );
    Ok(())
}

// ---------------------------------------------------------------- lateness

fn lateness(data: &Path, opts: &Opts, jobs: u64, seconds: u64, clients: usize) -> Result<()> {
    let db = data.join("sundial.db");
    let server = ServerProc::start(data).context("starting the server")?;
    let pid = server_pid(&server)?;
    let http = http_client()?;
    let created = put_jobs(&server.base, "late", jobs, clients, 1, |_| {
        "*/1 * * * * *".to_string()
    })?;
    ensure!(created.errors == 0, "{} PUTs failed", created.errors);
    let done = wall_ms();
    let window_start = (done / 1000 + 3) * 1000;
    let window_end = window_start + seconds as i64 * 1000;
    sleep_until_wall(window_start - 700);
    println!("before window: {}", load());
    let before = scrape(&http, &server.base)?;
    let watcher = Watcher::start(db.clone(), opts.poll, Duration::from_secs(seconds + 30));
    let perf = Perf::start(opts, pid)?;
    let cpu0 = cpu_seconds(&pid.to_string())?;
    sleep_until_wall(window_end + 1000);
    let server_cpu = cpu_seconds(&pid.to_string())? - cpu0;
    perf.stop()?;
    let tl = watcher.finish();
    let after = scrape(&http, &server.base)?;
    stop_server(server)?;

    let conn = open_ro(&db)?;
    let mut stmt = conn.prepare(
        "SELECT id, scheduled_for, created_at FROM runs
         WHERE trigger = 'schedule' AND scheduled_for >= ?1 AND scheduled_for < ?2",
    )?;
    let rows: Vec<(i64, i64, i64)> = stmt
        .query_map([window_start, window_end], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut created_late: Vec<i64> = rows.iter().map(|(_, s, c)| c - s).collect();
    let mut visible_late: Vec<i64> = rows
        .iter()
        .filter_map(|(id, s, _)| tl.visible_at(*id).map(|t| t - s))
        .collect();
    // Worst slot of each second (the last one committed).
    let mut per_second: Vec<i64> = (0..seconds as i64)
        .filter_map(|k| {
            let at = window_start + k * 1000;
            rows.iter()
                .filter(|(_, s, _)| *s == at)
                .filter_map(|(id, s, _)| tl.visible_at(*id).map(|t| t - s))
                .max()
        })
        .collect();

    header(&format!(
        "lateness: {jobs} jobs every second for {seconds} s"
    ));
    row(
        "slots in window",
        rows.len().to_string(),
        &format!("= {}", jobs * seconds),
    );
    created_late.sort_unstable();
    let p99 = sundial_bench::percentile(&created_late, 99.0);
    let line = summary(&mut created_late, "ms");
    row("created_at − scheduled_for", String::new(), "");
    for part in line
        .split(' ')
        .filter(|p| p.starts_with('p') || p.starts_with("max"))
    {
        if let Some((k, v)) = part.split_once('=') {
            let target = if k == "p99" {
                format!("≤ 10 ms {}", verdict(p99.is_some_and(|v| v <= 10)))
            } else {
                String::new()
            };
            row(&format!("  {k}"), format!("{v} ms"), &target);
        }
    }
    let line = summary(&mut visible_late, "ms");
    row(
        "committed (watcher) − scheduled_for",
        format!("n={}", visible_late.len()),
        "",
    );
    for part in line
        .split(' ')
        .filter(|p| p.starts_with('p') || p.starts_with("max"))
    {
        if let Some((k, v)) = part.split_once('=') {
            row(&format!("  {k}"), format!("{v} ms"), "");
        }
    }
    let line = summary(&mut per_second, "ms");
    row("last slot of each second committed", String::new(), "");
    for part in line
        .split(' ')
        .filter(|p| p.starts_with('p') || p.starts_with("max"))
    {
        if let Some((k, v)) = part.split_once('=') {
            row(&format!("  {k}"), format!("{v} ms"), "");
        }
    }
    row(
        "server CPU over the window",
        format!(
            "{server_cpu:.2} s ({:.2} cores)",
            server_cpu / (seconds as f64 + 1.7)
        ),
        "",
    );
    row("watcher polls", tl.polls.to_string(), "");
    let late = Histogram::parse(&after, "sundial_fire_lateness_seconds")
        .since(&Histogram::parse(&before, "sundial_fire_lateness_seconds"));
    let commit = Histogram::parse(&after, "sundial_store_commit_seconds")
        .since(&Histogram::parse(&before, "sundial_store_commit_seconds"));
    println!("\nsundial_fire_lateness_seconds (delta over the window, ms):");
    println!("{}", late.render(1000.0, "ms"));
    println!("sundial_store_commit_seconds (delta over the window, ms):");
    println!("{}", commit.render(1000.0, "ms"));
    Ok(())
}

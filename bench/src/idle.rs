//! The `idle-daemons` scenario: one process simulates many daemons. Each
//! joins with the shared join token, registers, and then keeps one long-poll
//! open on its own connection (re-polling when it returns), using the real
//! daemon's client (`sundial_daemon::client`: `Sundial-HMAC` signing from
//! `sundial_proto::sign`). Measured on the server: time until every daemon
//! holds a poll, open descriptors, `VmRSS`/`VmHWM`, and CPU while idle.

use crate::harness::{http_client, server_pid, stop_server, Opts};
use crate::perf::Perf;
use crate::report::{header, row, verdict};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sundial_bench::{cpu_seconds, fd_count, load, nofile_limit, rss_kb, scrape};
use sundial_daemon::client::{join, Client};
use sundial_e2e::ServerProc;
use sundial_proto::agent::RegisterRequest;
use tokio::sync::Semaphore;

/// Command-line settings of the scenario.
pub struct Args {
    pub daemons: usize,
    pub wait_ms: u64,
    pub hold: u64,
    pub parallel: usize,
    pub threads: usize,
    pub connect_timeout: u64,
}

/// Upper bound on long-polls per simulated daemon (the deadline ends it first).
const MAX_POLLS: usize = 10_000;
/// Attempts at join and at register before a simulated daemon gives up.
const ATTEMPTS: usize = 3;

/// Progress shared by the simulated daemons.
#[derive(Default)]
struct Counters {
    joined: AtomicUsize,
    polling: AtomicUsize,
    polls_returned: AtomicU64,
    errors: AtomicU64,
    gave_up: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(what);
        }
    }
}

/// Makes sure this process (and so the server it spawns) may open `need` files.
fn ensure_nofile(need: u64) -> Result<(u64, u64)> {
    let (soft, hard) = nofile_limit("self")?;
    if soft >= need {
        return Ok((soft, hard));
    }
    if hard >= need {
        // Raise the soft limit to the hard one for this process only.
        let status = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .status()
            .context("running prlimit to raise RLIMIT_NOFILE")?;
        if !status.success() {
            bail!("prlimit --nofile={hard}:{hard} failed: {status}");
        }
    }
    let (soft, hard) = nofile_limit("self")?;
    if soft < need {
        bail!("RLIMIT_NOFILE is {soft} (hard {hard}); {need} needed: raise `ulimit -n`");
    }
    Ok((soft, hard))
}

/// Joins and registers simulated daemon `i`; retries a few times. Returns
/// the client and registration's poll receipt (the first poll's ack).
async fn connect(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    i: usize,
) -> Result<(Client, Option<u64>)> {
    let node_id = format!("sim-{i:05}");
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match join(http, base, token, &node_id).await {
            Ok(cred) => {
                let client = Client::new(http.clone(), base, &cred)?;
                let req = RegisterRequest {
                    labels: [("sim".to_string(), "idle".to_string())].into(),
                    capacity: 1,
                    version: "bench".into(),
                    executors: vec!["exec".into()],
                };
                for _ in 0..ATTEMPTS {
                    match client.register(&req).await {
                        Ok(reply) => {
                            let receipt = reply.get("receipt").and_then(|r| r.as_u64());
                            return Ok((client, receipt));
                        }
                        Err(e) => last = Some(format!("register {node_id}: {e}")),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                break;
            }
            Err(e) => last = Some(format!("join {node_id}: {e}")),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!(last.unwrap_or_else(|| format!("{node_id}: no attempt made")))
}

/// What every simulated daemon shares.
struct Sim {
    http: reqwest::Client,
    base: String,
    token: String,
    gate: Semaphore,
    counters: Counters,
    wait: Duration,
    until: tokio::time::Instant,
}

/// One simulated daemon: join and register (at most `gate` at a time), then
/// long-poll until `until`.
async fn simulate(i: usize, sim: Arc<Sim>) {
    let counters = &sim.counters;
    let until = sim.until;
    let (client, receipt) = {
        let Ok(_permit) = sim.gate.acquire().await else {
            return;
        };
        match connect(&sim.http, &sim.base, &sim.token, i).await {
            Ok(c) => c,
            Err(e) => {
                counters.error(format!("{e:#}"));
                counters.gave_up.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };
    counters.joined.fetch_add(1, Ordering::Relaxed);
    let mut first = true;
    // Acknowledged like the real daemon, so the server keeps the same state.
    let mut ack = receipt;
    for _ in 0..MAX_POLLS {
        if tokio::time::Instant::now() >= until {
            break;
        }
        if first {
            counters.polling.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        match tokio::time::timeout_at(until, client.poll(1, sim.wait, ack)).await {
            Ok(Ok(resp)) => {
                ack = resp.receipt.or(ack);
                counters.polls_returned.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                counters.error(format!("poll {}: {e}", client.node_id()));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => break,
        }
    }
}

/// Server readings at one instant.
struct Reading {
    cpu: f64,
    fds: usize,
    rss_kb: u64,
}

fn read_server(pid: u32) -> Result<Reading> {
    Ok(Reading {
        cpu: cpu_seconds(&pid.to_string())?,
        fds: fd_count(pid)?,
        rss_kb: rss_kb(pid)?.0,
    })
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// The `idle-daemons` scenario (see the module doc).
pub fn run(data: &Path, opts: &Opts, args: &Args) -> Result<()> {
    let n = args.daemons;
    let (soft, hard) = ensure_nofile(n as u64 + 1024)?;
    let server = ServerProc::start(data).context("starting the server")?;
    let pid = server_pid(&server)?;
    let (server_soft, _) = nofile_limit(&pid.to_string())?;
    if server_soft < n as u64 + 256 {
        bail!("the server may open only {server_soft} files; {n} connections needed");
    }
    let token = server.join_token()?;
    let idle0 = read_server(pid)?;
    println!("before connecting: {}", load());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .thread_name("sim-daemon")
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(n)
        .tcp_nodelay(true)
        .http1_only()
        .build()
        .context("building the HTTP client")?;
    let t0 = Instant::now();
    let sim = Arc::new(Sim {
        http,
        base: server.base.clone(),
        token,
        gate: Semaphore::new(args.parallel),
        counters: Counters::default(),
        wait: Duration::from_millis(args.wait_ms),
        until: tokio::time::Instant::now()
            + Duration::from_secs(args.connect_timeout + args.hold + 30),
    });
    let counters = &sim.counters;
    let handles: Vec<_> = (0..n).map(|i| rt.spawn(simulate(i, sim.clone()))).collect();

    // Connect phase: until every daemon has a poll out and the server holds
    // a descriptor for each.
    let deadline = t0 + Duration::from_secs(args.connect_timeout);
    let mut joined_at = None;
    let mut connected_at = None;
    let mut last_print = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let joined = counters.joined.load(Ordering::Relaxed);
        let polling = counters.polling.load(Ordering::Relaxed);
        let gave_up = counters.gave_up.load(Ordering::Relaxed);
        let fds = fd_count(pid)?;
        if joined + gave_up >= n && joined_at.is_none() {
            joined_at = Some(t0.elapsed());
        }
        if polling >= n && fds >= n {
            connected_at = Some(t0.elapsed());
            break;
        }
        if joined + gave_up >= n && gave_up > 0 {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!(
                "  {:>5.1} s: joined {joined}, polling {polling}, server fds {fds}",
                t0.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
    }
    let connected = read_server(pid)?;
    let (_, hwm_connect) = rss_kb(pid)?;

    // Hold phase: everyone polling; sample memory and descriptors each second.
    std::thread::sleep(Duration::from_secs(2));
    println!("holding {} s: {}", args.hold, load());
    let perf = Perf::start(opts, pid)?;
    let h0 = read_server(pid)?;
    let bench0 = cpu_seconds("self")?;
    let polls0 = counters.polls_returned.load(Ordering::Relaxed);
    let errors0 = counters.errors.load(Ordering::Relaxed);
    let hold_started = Instant::now();
    let (mut rss_max, mut fds_min, mut fds_max) = (h0.rss_kb, h0.fds, h0.fds);
    while hold_started.elapsed() < Duration::from_secs(args.hold) {
        std::thread::sleep(Duration::from_secs(1));
        let r = read_server(pid)?;
        rss_max = rss_max.max(r.rss_kb);
        fds_min = fds_min.min(r.fds);
        fds_max = fds_max.max(r.fds);
    }
    let h1 = read_server(pid)?;
    let held = hold_started.elapsed().as_secs_f64();
    let bench_cpu = cpu_seconds("self")? - bench0;
    perf.stop()?;
    let polls = counters.polls_returned.load(Ordering::Relaxed) - polls0;
    let hold_errors = counters.errors.load(Ordering::Relaxed) - errors0;
    let (rss_end, hwm) = rss_kb(pid)?;
    let (bench_rss, _) = rss_kb(std::process::id())?;
    let metrics = scrape(&http_client()?, &server.base)?;

    for h in &handles {
        h.abort();
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    stop_server(server)?;

    header(&format!(
        "idle-daemons: {n} simulated daemons, long-poll {} ms",
        args.wait_ms
    ));
    row(
        "RLIMIT_NOFILE bench (soft/hard) / server soft",
        format!("{soft}/{hard} / {server_soft}"),
        "",
    );
    row(
        "joined + registered",
        counters.joined.load(Ordering::Relaxed).to_string(),
        &format!("= {n}"),
    );
    row(
        "gave up (join/register failed 3×)",
        counters.gave_up.load(Ordering::Relaxed).to_string(),
        "= 0",
    );
    row(
        "time until all joined + registered",
        joined_at.map_or("not reached".into(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        }),
        "",
    );
    row(
        "time until all polling (server fds ≥ N)",
        connected_at.map_or("not reached".into(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        }),
        "",
    );
    row(
        "server CPU during connect phase",
        format!("{:.2} s", connected.cpu - idle0.cpu),
        "",
    );
    row(
        "server fds: before / connected",
        format!("{} / {}", idle0.fds, connected.fds),
        "",
    );
    row(
        "server fds during hold (min / max)",
        format!("{fds_min} / {fds_max}"),
        "",
    );
    row("server VmRSS before connecting", mib(idle0.rss_kb), "");
    row("server VmHWM after connect phase", mib(hwm_connect), "");
    let rss_mb = rss_max as f64 / 1024.0 * 1.048576;
    row(
        "server VmRSS while all poll (max / end)",
        format!("{} / {}", mib(rss_max), mib(rss_end)),
        &format!(
            "≤ 250 MB {}",
            verdict(rss_mb <= 250.0 && connected_at.is_some())
        ),
    );
    let hwm_mb = hwm as f64 / 1024.0 * 1.048576;
    row(
        "server VmHWM (whole run)",
        mib(hwm),
        &format!("≤ 250 MB {}", verdict(hwm_mb <= 250.0)),
    );
    row(
        "  per connected daemon (RSS − RSS before)",
        format!(
            "{:.1} KiB",
            (rss_max.saturating_sub(idle0.rss_kb)) as f64 / n.max(1) as f64
        ),
        "",
    );
    let cpu = h1.cpu - h0.cpu;
    row(
        "server CPU while idle",
        format!("{cpu:.2} s in {held:.0} s ({:.3} cores)", cpu / held),
        "",
    );
    row(
        "long-polls returned (empty) during hold",
        format!("{polls} ({:.0}/s)", polls as f64 / held),
        "",
    );
    row("client errors during hold", hold_errors.to_string(), "= 0");
    row(
        "bench process CPU during hold / VmRSS",
        format!("{bench_cpu:.2} s / {}", mib(bench_rss)),
        "",
    );
    row(
        "server auth failures (all reasons)",
        format!("{:.0}", auth_failures(&metrics)),
        "",
    );
    if let Ok(first) = counters.first_error.lock() {
        if let Some(e) = first.as_ref() {
            println!("\nfirst client error: {e}");
        }
    }
    Ok(())
}

/// Sum of `sundial_agent_auth_failures_total{reason=…}` over all reasons.
fn auth_failures(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("sundial_agent_auth_failures_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

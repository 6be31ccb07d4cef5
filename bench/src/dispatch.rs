//! The `dispatch` scenario: end-to-end no-op runs. The real server fires
//! every-second jobs, real `sundial-daemon` processes long-poll, execute a
//! no-op (`exec /bin/true`, or `http GET` against an in-process keep-alive
//! responder) and report completion. The offered load is swept upwards
//! (jobs per second); for each step the runs scheduled in a window are read
//! back from the database: completions per second and fire-to-start lateness
//! (`started_at − scheduled_for`, the daemon's own start stamp), next to the
//! server's metrics deltas and the CPU of every process involved.

use crate::harness::{http_client, server_pid, sleep_until_wall, stop_server, Opts};
use crate::load::put_job_bodies;
use crate::perf::Perf;
use crate::report::{header, row, verdict};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use sundial_bench::{
    children_cpu_seconds, cpu_seconds, load, machine_cpu, open_ro, percentile, sample, scrape,
    wall_ms, Histogram,
};
use sundial_e2e::{binary, ServerProc};

/// Command-line settings of the scenario.
pub struct Args {
    pub daemons: usize,
    pub capacity: u32,
    pub rates: Vec<u64>,
    pub seconds: u64,
    pub settle: u64,
    pub drain: u64,
    pub executor: String,
    pub clients: usize,
    /// Also deliver every `run.*` event to a webhook (a local 200 responder).
    pub webhook: bool,
}

// ---------------------------------------------------------------- daemons

/// Real `sundial-daemon` processes, spawned as the e2e harness does but with
/// their PIDs at hand for CPU accounting. Stopped by PID: SIGTERM (drain),
/// bounded wait, then SIGKILL.
pub(crate) struct Daemons {
    children: Vec<Child>,
}

impl Daemons {
    pub(crate) fn start(
        dir: &Path,
        base: &str,
        token: &str,
        count: usize,
        capacity: u32,
    ) -> Result<Daemons> {
        let exe = binary("sundial-daemon")?;
        let mut d = Daemons {
            children: Vec::with_capacity(count),
        };
        for i in 0..count {
            let state = dir.join(format!("daemon-{i:02}"));
            std::fs::create_dir_all(&state)
                .with_context(|| format!("creating {}", state.display()))?;
            let log = std::fs::File::create(state.with_extension("log"))
                .context("creating a daemon log")?;
            let child = Command::new(&exe)
                .args(["--server", base, "--join-token", token])
                .args(["--node-id", &format!("bench-{i:02}")])
                .arg("--state-dir")
                .arg(&state)
                .args(["--capacity", &capacity.to_string()])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("cloning the log handle")?)
                .stderr(log)
                .spawn()
                .context("spawning sundial-daemon")?;
            d.children.push(child);
        }
        Ok(d)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Summed user+system CPU seconds of all daemons.
    fn cpu(&self) -> Result<f64> {
        self.pids()
            .iter()
            .map(|p| cpu_seconds(&p.to_string()))
            .sum()
    }

    /// Summed CPU seconds of the jobs (child processes) the daemons reaped.
    fn children_cpu(&self) -> Result<f64> {
        self.pids()
            .iter()
            .map(|p| children_cpu_seconds(&p.to_string()))
            .sum()
    }

    /// SIGTERM to each daemon by PID, then a bounded wait for all of them.
    pub(crate) fn terminate(mut self, timeout: Duration) -> Result<()> {
        for c in &self.children {
            Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()
                .context("signalling a daemon")?;
        }
        let deadline = Instant::now() + timeout;
        let mut slow = 0;
        for c in &mut self.children {
            while c.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    c.kill()?;
                    c.wait()?;
                    slow += 1;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.children.clear();
        if slow > 0 {
            println!("note: {slow} daemon(s) did not exit within {timeout:?} of SIGTERM");
        }
        Ok(())
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits (bounded) until `count` nodes registered with `capacity`.
pub(crate) fn wait_registered(server: &ServerProc, count: usize, capacity: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.call("GET", "/v1/nodes", None)?;
        let ready = body["items"].as_array().map_or(0, |items| {
            items
                .iter()
                .filter(|n| n["capacity"].as_u64() == Some(u64::from(capacity)))
                .count()
        });
        if status == 200 && ready >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {count} daemons registered within 30 s ({status})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------- http target

/// A keep-alive HTTP/1.1 responder on loopback for `http` executor jobs:
/// answers every request with `200 ok`. Runs on its own one-thread runtime;
/// stops when dropped.
pub(crate) struct Responder {
    pub(crate) port: u16,
    rt: Option<tokio::runtime::Runtime>,
}

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

impl Responder {
    pub(crate) fn start() -> Result<Responder> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-responder")
            .enable_all()
            .build()
            .context("building the responder runtime")?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding the responder")?;
        let port = listener.local_addr()?.port();
        rt.spawn(async move {
            // Ends when the runtime is dropped.
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream));
            }
        });
        Ok(Responder { port, rt: Some(rt) })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Answers each complete request (head plus `content-length` body) on one
/// connection; closes after 60 s of silence, at EOF or on garbage.
async fn serve_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(len) = request_len(&buf) {
            if buf.len() < len {
                break;
            }
            buf.drain(..len);
            if stream.write_all(RESPONSE).await.is_err() {
                return;
            }
        }
        if buf.len() > 1 << 20 {
            return;
        }
        let read = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}

/// Length of the first request in `buf` (head + body) once its head is complete.
fn request_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let body = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    Some(head_end + body)
}

// ---------------------------------------------------------------- measurement

/// CPU seconds of the processes involved, at one instant.
#[derive(Clone, Copy)]
struct Cpu {
    server: f64,
    daemons: f64,
    jobs: f64,
    bench: f64,
    machine: f64,
    iowait: f64,
}

fn cpu_now(server: u32, daemons: &Daemons) -> Result<Cpu> {
    let (machine, iowait) = machine_cpu()?;
    Ok(Cpu {
        server: cpu_seconds(&server.to_string())?,
        daemons: daemons.cpu()?,
        jobs: daemons.children_cpu()?,
        bench: cpu_seconds("self")?,
        machine,
        iowait,
    })
}

/// For each scheduled second, the runs of its busiest daemon divided by the
/// mean per daemon (the second's runs over `daemons`).
fn per_second_spread(runs: &[RunRow], daemons: usize) -> Vec<f64> {
    let mut by_second: std::collections::BTreeMap<i64, std::collections::HashMap<&str, usize>> =
        Default::default();
    for r in runs {
        let Some(node) = r.node.as_deref() else {
            continue;
        };
        *by_second
            .entry(r.scheduled_for.div_euclid(1000))
            .or_default()
            .entry(node)
            .or_default() += 1;
    }
    by_second
        .values()
        .map(|nodes| {
            let total: usize = nodes.values().sum();
            let busiest = nodes.values().copied().max().unwrap_or(0);
            busiest as f64 * daemons.max(1) as f64 / total.max(1) as f64
        })
        .collect()
}

/// One run scheduled inside a step's window, as read back from the database.
pub(crate) struct RunRow {
    pub(crate) scheduled_for: i64,
    pub(crate) created_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    pub(crate) state: String,
    pub(crate) node: Option<String>,
}

pub(crate) fn window_runs(db: &Path, from: i64, to: i64) -> Result<Vec<RunRow>> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare(
        "SELECT scheduled_for, created_at, started_at, finished_at, state, assigned_node FROM runs
         WHERE trigger = 'schedule' AND scheduled_for >= ?1 AND scheduled_for < ?2",
    )?;
    let rows = stmt
        .query_map([from, to], |r| {
            Ok(RunRow {
                scheduled_for: r.get(0)?,
                created_at: r.get(1)?,
                started_at: r.get(2)?,
                finished_at: r.get(3)?,
                state: r.get(4)?,
                node: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
        .context("reading the window's runs")?;
    Ok(rows)
}

/// Runs (any) whose `finished_at` falls in each whole second of [from, to).
fn finished_per_second(db: &Path, from: i64, to: i64) -> Result<Vec<i64>> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare(
        "SELECT (finished_at - ?1) / 1000, count(*) FROM runs
         WHERE finished_at >= ?1 AND finished_at < ?2 GROUP BY 1",
    )?;
    let seconds = ((to - from) / 1000).max(1) as usize;
    let mut out = vec![0i64; seconds];
    let pairs = stmt
        .query_map([from, to], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
        .context("counting completions per second")?;
    for (k, n) in pairs {
        if let Some(slot) = usize::try_from(k).ok().and_then(|k| out.get_mut(k)) {
            *slot = n;
        }
    }
    Ok(out)
}

/// Metrics scraped at the start and the end of a window.
struct Scrapes {
    before: String,
    after: String,
}

impl Scrapes {
    fn delta(&self, name: &str) -> f64 {
        sample(&self.after, name) - sample(&self.before, name)
    }

    fn hist(&self, name: &str) -> Histogram {
        Histogram::between(&self.before, &self.after, name)
    }
}

/// What one load step measured.
struct Step {
    rate: u64,
    load_before: String,
    runs: Vec<RunRow>,
    per_second: Vec<i64>,
    metrics: Scrapes,
    cpu: (Cpu, Cpu),
    window_s: f64,
}

pub(crate) fn pct_row(name: &str, values: &mut [i64], target: Option<(i64, &str)>) {
    values.sort_unstable();
    let f = |p: f64| percentile(values, p).map_or("-".to_string(), |v| v.to_string());
    let line = format!("{} / {} / {} / {} ms", f(50.0), f(90.0), f(99.0), f(100.0));
    let t = match target {
        Some((limit, label)) => {
            let ok = percentile(values, 99.0).is_some_and(|v| v <= limit);
            format!("p99 ≤ {limit} ms {} {label}", verdict(ok))
        }
        None => String::new(),
    };
    row(&format!("{name} p50/p90/p99/max"), line, &t);
}

fn report_step(s: &mut Step, args: &Args) {
    header(&format!(
        "dispatch: {} jobs every second, {} daemons, executor {}",
        s.rate, args.daemons, args.executor
    ));
    row("load before the window", s.load_before.clone(), "");
    let expected = s.rate * args.seconds;
    let done: Vec<&RunRow> = s.runs.iter().filter(|r| r.finished_at.is_some()).collect();
    row(
        "slots scheduled in window",
        s.runs.len().to_string(),
        &format!("= {expected}"),
    );
    let mut states: Vec<(String, usize)> = Vec::new();
    for r in &s.runs {
        match states.iter_mut().find(|(st, _)| *st == r.state) {
            Some((_, n)) => *n += 1,
            None => states.push((r.state.clone(), 1)),
        }
    }
    states.sort();
    let states = states
        .iter()
        .map(|(st, n)| format!("{st} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    row(
        &format!("  their states {} s after the window", args.drain),
        states,
        "",
    );
    let mut per_node: Vec<(String, usize)> = Vec::new();
    for r in &s.runs {
        let node = r.node.clone().unwrap_or_default();
        match per_node.iter_mut().find(|(n, _)| *n == node) {
            Some((_, k)) => *k += 1,
            None => per_node.push((node, 1)),
        }
    }
    row(
        "  runs per daemon (min / max, daemons used)",
        format!(
            "{} / {}, {}",
            per_node.iter().map(|(_, k)| *k).min().unwrap_or(0),
            per_node.iter().map(|(_, k)| *k).max().unwrap_or(0),
            per_node.len()
        ),
        "",
    );
    // The fairness target is per second: with idle daemons of equal
    // capacity, none gets more than 2× the mean of a second's runs.
    let mut spread = per_second_spread(&s.runs, args.daemons);
    if !spread.is_empty() {
        spread.sort_by(f64::total_cmp);
        let worst = spread[spread.len() - 1];
        row(
            "  busiest daemon of a second ÷ mean (median / worst second)",
            format!("{:.2} / {:.2}", spread[spread.len() / 2], worst),
            &format!("≤ 2 {}", verdict(worst <= 2.0)),
        );
    }
    let finished: i64 = s.per_second.iter().sum();
    let rate = finished as f64 / s.window_s;
    let is_target_step = s.rate >= 10_000;
    let t = if is_target_step {
        let ok = rate >= 0.99 * 10_000.0 && done.len() == s.runs.len();
        format!("≥ 10000/s {}", verdict(ok))
    } else {
        String::new()
    };
    row(
        "completed runs/s (finished_at in window)",
        format!("{rate:.0}"),
        &t,
    );
    let (lo, hi) = (
        s.per_second.iter().min().copied().unwrap_or(0),
        s.per_second.iter().max().copied().unwrap_or(0),
    );
    row("  slowest / fastest second", format!("{lo} / {hi}"), "");
    let recorded = s
        .metrics
        .delta("sundial_runs_completed_total{outcome=\"succeeded\"}");
    row(
        "results recorded/s (runs_completed_total)",
        format!("{:.0}", recorded / s.window_s),
        "",
    );
    let dispatched = s.metrics.delta("sundial_runs_dispatched_total");
    row(
        "assignments/s (runs_dispatched_total)",
        format!("{:.0}", dispatched / s.window_s),
        "",
    );
    row(
        "dispatch queue depth at window end",
        format!(
            "{:.0}",
            sample(&s.metrics.after, "sundial_dispatch_queue_depth")
        ),
        "",
    );
    let mut created: Vec<i64> = s
        .runs
        .iter()
        .map(|r| r.created_at - r.scheduled_for)
        .collect();
    pct_row("created_at − scheduled_for", &mut created, None);
    let mut start: Vec<i64> = done
        .iter()
        .filter_map(|r| r.started_at.map(|t| t - r.scheduled_for))
        .collect();
    let target = (s.rate <= 1_000).then_some((10, "(at ≤ 1,000/s)"));
    pct_row("fire-to-start (daemon started_at)", &mut start, target);
    let mut finish: Vec<i64> = done
        .iter()
        .filter_map(|r| r.finished_at.map(|t| t - r.scheduled_for))
        .collect();
    pct_row("fire-to-finish (daemon finished_at)", &mut finish, None);
    let assign = s.metrics.hist("sundial_start_lateness_seconds");
    let bound = |q: f64| {
        assign
            .quantile_bound(q)
            .map_or("-".into(), |b| format!("≤ {} ms", b * 1000.0))
    };
    row(
        "server start_lateness (assignment) mean",
        format!(
            "{:.1} ms (n={})",
            assign.sum / assign.count.max(1.0) * 1000.0,
            assign.count
        ),
        "",
    );
    row(
        "  bucket holding p50 / p99",
        format!("{} / {}", bound(0.5), bound(0.99)),
        "",
    );
    let commit = s.metrics.hist("sundial_store_commit_seconds");
    let batch = s.metrics.hist("sundial_store_write_batch_size");
    row(
        "write transactions/s, mean ops per batch",
        format!(
            "{:.0}/s, {:.1}",
            commit.count / s.window_s,
            batch.sum / batch.count.max(1.0)
        ),
        "",
    );
    row(
        "writer busy (sum of batch times / wall)",
        format!("{:.0} %", commit.sum / s.window_s * 100.0),
        "",
    );
    let (a, b) = s.cpu;
    let cores = |x: f64| format!("{x:.2} s ({:.2} cores)", x / s.window_s);
    let daemons = format!("{} daemons' CPU (sum)", args.daemons);
    for (label, used) in [
        ("server CPU", b.server - a.server),
        (daemons.as_str(), b.daemons - a.daemons),
        (
            "jobs' CPU (reaped children of the daemons)",
            b.jobs - a.jobs,
        ),
        ("bench process CPU (responder, metrics)", b.bench - a.bench),
        ("machine CPU busy (/proc/stat)", b.machine - a.machine),
        ("machine iowait (/proc/stat)", b.iowait - a.iowait),
    ] {
        row(label, cores(used), "");
    }
    // The whole machine's budget: on a small box the daemons and the
    // target share the cores with the server (docs/benchmarks.md §16).
    let completed = finished as f64;
    if completed > 0.0 {
        let us = |x: f64| x * 1e6 / completed;
        row(
            "CPU per completed run: server / daemons / machine",
            format!(
                "{:.0} / {:.0} / {:.0} µs",
                us(b.server - a.server),
                us(b.daemons - a.daemons),
                us(b.machine - a.machine)
            ),
            "",
        );
    }
    let lag = s.metrics.hist("sundial_webhook_lag_seconds");
    if lag.count > 0.0 {
        let delivered = s
            .metrics
            .delta("sundial_webhook_deliveries_total{outcome=\"delivered\"}");
        let lbound = |q: f64| {
            lag.quantile_bound(q)
                .map_or("-".into(), |b| format!("≤ {} ms", b * 1000.0))
        };
        row(
            "webhook deliveries/s (run.* events)",
            format!("{:.0}", delivered / s.window_s),
            "",
        );
        row(
            "  webhook lag (event → delivered) p50 / p99 bucket",
            format!("{} / {}", lbound(0.5), lbound(0.99)),
            "",
        );
        row(
            "  webhook backlog at window end (events)",
            format!("{:.0}", sample(&s.metrics.after, "sundial_webhook_backlog")),
            "",
        );
    }
    println!("\nsundial_start_lateness_seconds (delta over the window, ms):");
    println!("{}", assign.render(1000.0, "ms"));
}

// ---------------------------------------------------------------- scenario

fn job_body(executor: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "schedule": "*/1 * * * * *",
        "executor": executor,
        "concurrency": "allow",
    })
}

/// Runs one load step: brings the number of every-second jobs up to `rate`,
/// lets it settle, measures a window, waits for the window's runs to finish.
#[allow(clippy::too_many_arguments)]
fn step(
    server: &ServerProc,
    daemons: &Daemons,
    opts: &Opts,
    args: &Args,
    executor: &serde_json::Value,
    have: u64,
    rate: u64,
    profile: bool,
) -> Result<Step> {
    let pid = server_pid(server)?;
    let db = server.data_dir.join("sundial.db");
    let http = http_client()?;
    let exec = executor.clone();
    let created = put_job_bodies(
        &server.base,
        &format!("disp{rate}"),
        rate - have,
        args.clients,
        1,
        move |_| job_body(&exec),
    )?;
    if created.errors > 0 {
        bail!("{} of {} PUTs failed", created.errors, rate - have);
    }
    let window_start = (wall_ms() / 1000 + args.settle as i64) * 1000;
    let window_end = window_start + args.seconds as i64 * 1000;
    sleep_until_wall(window_start - 800);
    let load_before = load();
    println!("step {rate}/s: {load_before}");
    let perf = if profile {
        Some(Perf::start(opts, pid)?)
    } else {
        None
    };
    // Metrics and CPU are read half a second before each boundary, between
    // two fire seconds, so a second's assignments fall wholly in or out.
    sleep_until_wall(window_start - 500);
    let before = scrape(&http, &server.base)?;
    let cpu0 = cpu_now(pid, daemons)?;
    let t0 = Instant::now();
    sleep_until_wall(window_end - 500);
    let after = scrape(&http, &server.base)?;
    let cpu1 = cpu_now(pid, daemons)?;
    let window_s = t0.elapsed().as_secs_f64();
    if let Some(p) = perf {
        p.stop()?;
    }
    sleep_until_wall(window_end + args.drain as i64 * 1000);
    Ok(Step {
        rate,
        load_before,
        runs: window_runs(&db, window_start, window_end)?,
        per_second: finished_per_second(&db, window_start, window_end)?,
        metrics: Scrapes { before, after },
        cpu: (cpu0, cpu1),
        window_s,
    })
}

/// The no-op job executor named by `--executor`: `exec` (`/bin/true`) or
/// `http` (a GET to a local responder, returned to be kept running).
pub(crate) fn noop_executor(kind: &str) -> Result<(Option<Responder>, serde_json::Value)> {
    Ok(match kind {
        "http" => {
            let r = Responder::start()?;
            let url = format!("http://127.0.0.1:{}/noop", r.port);
            (
                Some(r),
                serde_json::json!({"type": "http", "method": "GET", "url": url}),
            )
        }
        "exec" => (
            None,
            serde_json::json!({"type": "exec", "argv": ["/bin/true"]}),
        ),
        other => bail!("--executor must be exec or http, not {other:?}"),
    })
}

/// The `dispatch` scenario (see the module doc).
pub fn run(data: &Path, opts: &Opts, args: &Args) -> Result<()> {
    let mut rates = args.rates.clone();
    rates.sort_unstable();
    rates.dedup();
    rates.retain(|r| *r > 0);
    if rates.is_empty() {
        bail!("--rates needs at least one positive rate");
    }
    let (responder, executor) = noop_executor(&args.executor)?;
    let server = ServerProc::start(data).context("starting the server")?;
    let token = server.join_token()?;
    let hook_responder = if args.webhook {
        let r = Responder::start()?;
        let (status, body) = server.call(
            "POST",
            "/v1/webhooks",
            Some(&serde_json::json!({
                "url": format!("http://127.0.0.1:{}/hook", r.port), "events": ["run.*"],
            })),
        )?;
        if status != 201 {
            bail!("creating the webhook: {status} {body}");
        }
        println!("webhook on run.* → 127.0.0.1:{}", r.port);
        Some(r)
    } else {
        None
    };
    let dir: PathBuf = data.with_extension("daemons");
    let daemons = Daemons::start(&dir, &server.base, &token, args.daemons, args.capacity)?;
    wait_registered(&server, args.daemons, args.capacity)?;
    println!(
        "{} daemons registered (capacity {}); executor {executor}",
        args.daemons, args.capacity
    );
    let mut steps = Vec::with_capacity(rates.len());
    let mut have = 0;
    let last = rates.len() - 1;
    for (i, rate) in rates.iter().copied().enumerate() {
        let s = step(
            &server,
            &daemons,
            opts,
            args,
            &executor,
            have,
            rate,
            i == last,
        )?;
        have = rate;
        steps.push(s);
    }
    daemons.terminate(Duration::from_secs(40))?;
    stop_server(server)?;
    drop(responder);
    drop(hook_responder);
    for s in &mut steps {
        report_step(s, args);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::request_len;

    #[test]
    fn request_lengths() {
        assert_eq!(request_len(b"GET / HTTP/1.1\r\nhost: x\r\n"), None);
        assert_eq!(request_len(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"), Some(27));
        let post = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(request_len(post), Some(post.len()));
    }
}

//! The `slowloris` scenario: does a flood of stalled connections delay the
//! scheduler? A real server and a real `sundial-daemon` run every-second
//! jobs; fire lateness (the server's `sundial_fire_lateness_seconds`, and
//! `created_at − scheduled_for` of each slot, negative when the slot is
//! written ahead of its time) and start lateness (`started_at −
//! scheduled_for`, through the agent API) are measured over a window
//! without load, then over a window while
//! `--connections` clients each hold a connection with half a request head
//! sent. The server closes those after its header read timeout; the clients
//! reconnect at once (so the window also carries that churn).

use crate::harness::{http_client, server_pid, sleep_until_wall, stop_server};
use crate::load::put_jobs;
use crate::report::{header, row, verdict};
use anyhow::{bail, ensure, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sundial_bench::{cpu_seconds, load, open_ro, percentile, sample, scrape, wall_ms, Histogram};
use sundial_e2e::{DaemonProc, ServerProc};

/// Command-line settings of the scenario.
pub struct Args {
    pub jobs: u64,
    pub seconds: u64,
    pub connections: usize,
}

/// Clients that keep `count` stalled connections open, reconnecting each
/// one the server closes. Stops when dropped.
struct Slowloris {
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    reconnects: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn stall(port: u16, i: usize) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let head = format!("GET /v1/jobs?slowloris={i} HTTP/1.1\r\nhost: bench\r\nx-pad: ");
    s.write_all(head.as_bytes()).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// True while the server has neither closed `s` nor answered on it.
fn still_stalled(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    matches!(s.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

impl Slowloris {
    fn start(port: u16, count: usize) -> Slowloris {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let reconnects = Arc::new(AtomicUsize::new(0));
        let (st, op, rc) = (stop.clone(), open.clone(), reconnects.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
            while !st.load(Ordering::Relaxed) {
                let mut n = 0;
                for (i, c) in conns.iter_mut().enumerate() {
                    let alive = c.as_mut().is_some_and(still_stalled);
                    if !alive {
                        if c.is_some() {
                            rc.fetch_add(1, Ordering::Relaxed);
                        }
                        *c = stall(port, i);
                    }
                    n += usize::from(c.is_some());
                }
                op.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Slowloris {
            stop,
            open,
            reconnects,
            thread: Some(thread),
        }
    }
}

impl Drop for Slowloris {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits (bounded) until the daemon registered.
fn wait_registered(server: &ServerProc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.call("GET", "/v1/nodes", None)?;
        if status == 200 && body["items"].as_array().is_some_and(|i| !i.is_empty()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the daemon did not register within 30 s ({status} {body})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One measured window's numbers.
struct Window {
    slots: usize,
    created: Vec<i64>,
    started: Vec<i64>,
    fire_hist: Histogram,
    start_hist: Histogram,
    server_cpu: f64,
}

fn measure(server: &ServerProc, db: &Path, seconds: u64) -> Result<Window> {
    let http = http_client()?;
    let pid = server_pid(server)?;
    let window_start = (wall_ms() / 1000 + 2) * 1000;
    let window_end = window_start + seconds as i64 * 1000;
    sleep_until_wall(window_start - 500);
    let before = scrape(&http, &server.base)?;
    let cpu0 = cpu_seconds(&pid.to_string())?;
    sleep_until_wall(window_end);
    let server_cpu = cpu_seconds(&pid.to_string())? - cpu0;
    let after = scrape(&http, &server.base)?;
    // Let the last slots start and finish before reading them back.
    sleep_until_wall(window_end + 3000);
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare(
        "SELECT scheduled_for, created_at, started_at FROM runs
         WHERE trigger = 'schedule' AND scheduled_for >= ?1 AND scheduled_for < ?2",
    )?;
    let rows: Vec<(i64, i64, Option<i64>)> = stmt
        .query_map([window_start, window_end], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut created: Vec<i64> = rows.iter().map(|(s, c, _)| c - s).collect();
    let mut started: Vec<i64> = rows
        .iter()
        .filter_map(|(s, _, st)| st.map(|t| t - s))
        .collect();
    created.sort_unstable();
    started.sort_unstable();
    Ok(Window {
        slots: rows.len(),
        created,
        started,
        fire_hist: Histogram::between(&before, &after, "sundial_fire_lateness_seconds"),
        start_hist: Histogram::between(&before, &after, "sundial_start_lateness_seconds"),
        server_cpu,
    })
}

fn ms(v: Option<i64>) -> String {
    v.map_or("-".into(), |v| format!("{v} ms"))
}

fn report(name: &str, w: &Window, args: &Args, with_target: bool) {
    row(
        &format!("{name}: slots in window"),
        w.slots.to_string(),
        &format!("= {}", args.jobs * args.seconds),
    );
    let fire_p99 = w.fire_hist.quantile_bound(0.99);
    let bound = |b: Option<f64>| b.map_or("-".into(), |v| format!("≤ {} ms", v * 1000.0));
    row(
        &format!("{name}: sundial_fire_lateness p50 / p99"),
        format!(
            "{} / {}",
            bound(w.fire_hist.quantile_bound(0.5)),
            bound(fire_p99)
        ),
        &if with_target {
            format!(
                "p99 ≤ 10 ms {}",
                verdict(fire_p99.is_some_and(|v| v <= 0.010))
            )
        } else {
            String::new()
        },
    );
    row(
        &format!("{name}: created_at − scheduled_for p50 / p99"),
        format!(
            "{} / {}",
            ms(percentile(&w.created, 50.0)),
            ms(percentile(&w.created, 99.0))
        ),
        "",
    );
    row(
        &format!("{name}: created_at − scheduled_for max"),
        ms(percentile(&w.created, 100.0)),
        "",
    );
    row(
        &format!("{name}: sundial_start_lateness p99"),
        bound(w.start_hist.quantile_bound(0.99)),
        "",
    );
    row(
        &format!("{name}: start lateness p50 / p99 (n)"),
        format!(
            "{} / {} ({})",
            ms(percentile(&w.started, 50.0)),
            ms(percentile(&w.started, 99.0)),
            w.started.len()
        ),
        "",
    );
    row(
        &format!("{name}: server CPU"),
        format!(
            "{:.2} s ({:.2} cores)",
            w.server_cpu,
            w.server_cpu / (args.seconds as f64 + 0.5)
        ),
        "",
    );
}

pub fn run(data: &Path, args: &Args) -> Result<()> {
    let db = data.join("sundial.db");
    let server = ServerProc::start(data).context("starting the server")?;
    let token = server.join_token()?;
    let state = data.with_file_name("daemon-0");
    std::fs::create_dir_all(&state).context("creating the daemon state directory")?;
    let mut daemon = DaemonProc::start(&server.base, &token, "bench-0", &state, &[])
        .context("starting the daemon")?;
    wait_registered(&server)?;
    let created = put_jobs(&server.base, "tick", args.jobs, 4, 1, |_| {
        "*/1 * * * * *".to_string()
    })?;
    ensure!(created.errors == 0, "{} PUTs failed", created.errors);

    println!("baseline window: {}", load());
    let baseline = measure(&server, &db, args.seconds)?;

    let http = http_client()?;
    let flood = Slowloris::start(server.port, args.connections);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(&http, &server.base)?;
        let open = sample(&text, "sundial_http_connections_open") as usize;
        if open >= args.connections {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {open} of {} slowloris connections open after 60 s",
                args.connections
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("slowloris window: {}", load());
    let reconnects0 = flood.reconnects.load(Ordering::Relaxed);
    let loaded = measure(&server, &db, args.seconds)?;
    let reconnects = flood.reconnects.load(Ordering::Relaxed) - reconnects0;
    let held = flood.open.load(Ordering::Relaxed);
    let text = scrape(&http, &server.base)?;
    drop(flood);
    daemon
        .terminate(Duration::from_secs(10))
        .context("stopping the daemon")?;
    stop_server(server)?;

    header(&format!(
        "slowloris: {} jobs every second, {} s windows, {} stalled connections",
        args.jobs, args.seconds, args.connections
    ));
    report("baseline", &baseline, args, false);
    report("slowloris", &loaded, args, true);
    row("slowloris: connections held (end)", held.to_string(), "");
    row(
        "slowloris: closed by the server and reopened",
        reconnects.to_string(),
        "",
    );
    row(
        "header timeouts (server total)",
        format!(
            "{}",
            sample(&text, "sundial_http_timeouts_total{kind=\"header\"}")
        ),
        "",
    );
    println!("\nsundial_fire_lateness_seconds, baseline window (ms):");
    println!("{}", baseline.fire_hist.render(1000.0, "ms"));
    println!("sundial_fire_lateness_seconds, slowloris window (ms):");
    println!("{}", loaded.fire_hist.render(1000.0, "ms"));
    Ok(())
}

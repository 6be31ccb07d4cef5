//! The `startup` scenario: start-up over a large pre-populated database
//! (readiness, promotion, the first slot, memory).

use crate::harness::{http_client, server_pid, stop_server, Opts};
use crate::perf::Perf;
use crate::report::{header, row, strip_ansi, verdict};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sundial_bench::{
    cpu_seconds, load, open_ro, quiet_daily_schedule, rss_kb, scrape, wall_ms, Timeline, Watcher,
};
use sundial_e2e::ServerProc;

/// Writes `jobs` jobs straight into the store (job 0 every second, the
/// rest daily and quiet), `chunk` per write; returns how long it took.
pub(crate) fn populate(db: &Path, jobs: u64, chunk: u64) -> Result<Duration> {
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

pub(crate) fn run(data: &Path, opts: &Opts, jobs: u64, chunk: u64) -> Result<()> {
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

//! The `lateness` scenario: jobs firing every second; how late each slot
//! is created and committed.

use crate::harness::{http_client, server_pid, sleep_until_wall, stop_server, Opts};
use crate::load::put_jobs;
use crate::perf::Perf;
use crate::report::{header, percentiles, row, verdict};
use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::time::Duration;
use sundial_bench::{cpu_seconds, load, open_ro, scrape, summary, wall_ms, Histogram, Watcher};
use sundial_e2e::ServerProc;

pub(crate) fn run(data: &Path, opts: &Opts, jobs: u64, seconds: u64, clients: usize) -> Result<()> {
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
    for (k, v) in percentiles(&line) {
        let target = if k == "p99" {
            format!("≤ 10 ms {}", verdict(p99.is_some_and(|v| v <= 10)))
        } else {
            String::new()
        };
        row(&format!("  {k}"), format!("{v} ms"), &target);
    }
    let line = summary(&mut visible_late, "ms");
    row(
        "committed (watcher) − scheduled_for",
        format!("n={}", visible_late.len()),
        "",
    );
    for (k, v) in percentiles(&line) {
        row(&format!("  {k}"), format!("{v} ms"), "");
    }
    let line = summary(&mut per_second, "ms");
    row("last slot of each second committed", String::new(), "");
    for (k, v) in percentiles(&line) {
        row(&format!("  {k}"), format!("{v} ms"), "");
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
    let late = Histogram::between(&before, &after, "sundial_fire_lateness_seconds");
    let commit = Histogram::between(&before, &after, "sundial_store_commit_seconds");
    println!("\nsundial_fire_lateness_seconds (delta over the window, ms):");
    println!("{}", late.render(1000.0, "ms"));
    println!("sundial_store_commit_seconds (delta over the window, ms):");
    println!("{}", commit.render(1000.0, "ms"));
    Ok(())
}

//! The `burst` scenario: many jobs due on the same second; are all their
//! slots committed within 1 s?

use crate::harness::{http_client, server_pid, sleep_until_wall, stop_server, Opts};
use crate::load::{put_jobs, report_load};
use crate::perf::Perf;
use crate::report::{header, row, verdict};
use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::time::Duration;
use sundial_bench::{load, open_ro, scrape, wall_ms, Histogram, Watcher};
use sundial_e2e::ServerProc;

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

pub(crate) fn run(data: &Path, opts: &Opts, jobs: u64, fires: u32, clients: usize) -> Result<()> {
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
    let late = Histogram::between(&before, &after, "sundial_fire_lateness_seconds");
    let commit = Histogram::between(&before, &after, "sundial_store_commit_seconds");
    let batch = Histogram::between(&before, &after, "sundial_store_write_batch_size");
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

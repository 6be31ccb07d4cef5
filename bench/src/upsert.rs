//! The `upsert` scenario: bulk `PUT /v1/jobs/{id}` over keep-alive
//! connections, with the writer's batches and the server's CPU.

use crate::harness::{http_client, server_pid, stop_server, Opts};
use crate::load::{put_jobs, report_load};
use crate::perf::Perf;
use crate::report::{header, row};
use anyhow::{ensure, Context, Result};
use std::path::Path;
use sundial_bench::{cpu_seconds, load, quiet_daily_schedule, scrape, wall_ms, Histogram};
use sundial_e2e::ServerProc;

pub(crate) fn run(
    data: &Path,
    opts: &Opts,
    jobs: u64,
    clients: usize,
    threads: usize,
) -> Result<()> {
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
    let batch = Histogram::between(&before, &after, "sundial_store_write_batch_size");
    let commit = Histogram::between(&before, &after, "sundial_store_commit_seconds");
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

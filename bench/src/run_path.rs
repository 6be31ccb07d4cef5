//! `run-path`: the server's writer path without network or daemons. Every
//! job fires each second; its slot is created, assigned and completed
//! through the store's single writer in the server's batch shapes
//! ([`sundial_server::store::path_bench`]). It reports the writer's time per
//! run by phase, which is what bounds `dispatch` throughput, with far less
//! noise than a whole-machine run: use it to compare store changes A/B.

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use sundial_server::metrics::Metrics;
use sundial_server::store::{path_bench, Store};

use crate::harness::Opts;
use crate::perf::Perf;
use crate::report::{header, row};

pub struct Args {
    pub jobs: usize,
    pub seconds: usize,
    pub batch: usize,
}

fn us_per_run(d: Duration, runs: usize) -> f64 {
    d.as_secs_f64() * 1e6 / runs as f64
}

pub fn run(data: &Path, opts: &Opts, args: &Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let db = data.join("sundial.db");
    let seconds = rt.block_on(async {
        let store = Store::open(&db, Arc::new(Metrics::new())).context("opening the store")?;
        // The writer runs in this process, so `--perf` attaches here.
        let perf = Perf::start(opts, std::process::id())?;
        let out = path_bench::run(&store, args.jobs, args.seconds, args.batch).await;
        perf.stop()?;
        store.close().await;
        out.context("running the path")
    })?;
    header(&format!(
        "run-path: {} jobs every second, {} seconds, {} runs per assign/complete write",
        args.jobs, args.seconds, args.batch
    ));
    // The first second warms caches and statement caches: reported, not averaged.
    let steady = if seconds.len() > 1 {
        &seconds[1..]
    } else {
        &seconds[..]
    };
    let runs = args.jobs * steady.len();
    let sum = |f: fn(&path_bench::Second) -> Duration| steady.iter().map(f).sum::<Duration>();
    let (slots, assign, complete) = (sum(|s| s.slots), sum(|s| s.assign), sum(|s| s.complete));
    let total = slots + assign + complete;
    for (name, d) in [
        ("slot creation (µs per run)", slots),
        ("assignment (µs per run)", assign),
        ("completion (µs per run)", complete),
        ("whole path (µs per run)", total),
    ] {
        row(name, format!("{:.1}", us_per_run(d, runs)), "");
    }
    row(
        "writer-bound runs/s (1 / whole path)",
        format!("{:.0}", 1e6 / us_per_run(total, runs)),
        "",
    );
    if let Some(first) = seconds.first() {
        row(
            "first second, whole path (µs per run)",
            format!(
                "{:.1}",
                us_per_run(first.slots + first.assign + first.complete, args.jobs)
            ),
            "",
        );
    }
    if let (Some(first), Some(last)) = (steady.first(), steady.last()) {
        for (name, f) in [
            ("slot creation", first.slots, last.slots),
            ("assignment", first.assign, last.assign),
            ("completion", first.complete, last.complete),
        ]
        .map(|(n, a, b)| (n, (a, b)))
        {
            row(
                &format!("{name}: first / last measured second"),
                format!(
                    "{:.1} / {:.1}",
                    us_per_run(f.0, args.jobs),
                    us_per_run(f.1, args.jobs)
                ),
                "",
            );
        }
    }
    let per_second: Vec<String> = steady
        .iter()
        .map(|s| {
            format!(
                "{:.1}",
                us_per_run(s.slots + s.assign + s.complete, args.jobs)
            )
        })
        .collect();
    println!(
        "\nwhole path per second (µs per run): {}",
        per_second.join(", ")
    );
    Ok(())
}

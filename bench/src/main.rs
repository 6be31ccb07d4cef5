//! `sundial-bench`: runs one benchmark scenario against the real
//! `sundial-server` binary (release build) and prints a result table.
//! See `docs/benchmarks.md` for what each scenario measures and how to read it.
//! `cli` parses the scenario, one module per scenario runs it; `harness`,
//! `load`, `perf` and `report` are what they share.

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::Cli;
use harness::Opts;
use std::time::Duration;
use sundial_bench::machine;

/// The server's allocator: `run-path` runs the server's writer in this
/// process, and its allocations should cost what they cost in the server.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod burst;
mod burst_dispatch;
mod cli;
mod console;
mod dispatch;
mod harness;
mod idle;
mod lateness;
mod load;
mod perf;
mod report;
mod run_path;
mod slowloris;
mod startup;
mod upsert;

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.perf.is_some() && !cli.scenario.takes_perf() {
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

    let result = cli.scenario.run(&data, &opts);
    if cli.keep {
        let kept = tmp.keep();
        println!("kept data directory: {}", kept.display());
    }
    result
}

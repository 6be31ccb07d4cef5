//! The `burst-dispatch` scenario: `--jobs` one-shot jobs (`@at`) all due on
//! the same second, run by real `sundial-daemon` processes (no-op `exec` or
//! `http` executor, as in `dispatch`). Reads the runs back from the database
//! and reports how long after that second each one started on its daemon
//! (the daemon's own `started_at` stamp), how many started within 1 s, and
//! how the runs spread over the daemons.

use crate::dispatch::{noop_executor, pct_row, wait_registered, window_runs, Daemons};
use crate::harness::{sleep_until_wall, stop_server};
use crate::load::put_job_bodies;
use crate::report::{header, row, verdict};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use sundial_bench::{load, wall_ms};
use sundial_e2e::ServerProc;

/// Command-line settings of the scenario.
pub struct Args {
    pub jobs: u64,
    pub daemons: usize,
    pub capacity: u32,
    pub executor: String,
    pub clients: usize,
    /// Seconds from the start of job creation to the due second.
    pub lead: u64,
    /// Seconds after the due second before the runs are read back.
    pub drain: u64,
}

pub fn run(data: &Path, args: &Args) -> Result<()> {
    let (responder, executor) = noop_executor(&args.executor)?;
    let server = ServerProc::start(data).context("starting the server")?;
    let token = server.join_token()?;
    let dir: PathBuf = data.with_extension("daemons");
    let daemons = Daemons::start(&dir, &server.base, &token, args.daemons, args.capacity)?;
    wait_registered(&server, args.daemons, args.capacity)?;
    let due = (wall_ms() / 1000 + args.lead as i64) * 1000;
    let at = sundial_proto::time::format_ms(due);
    println!(
        "{} daemons (capacity {}); {} jobs due at {at}; executor {executor}",
        args.daemons, args.capacity, args.jobs
    );
    let exec = executor.clone();
    let created = put_job_bodies(
        &server.base,
        "burst",
        args.jobs,
        args.clients,
        1,
        move |_| {
            serde_json::json!({
                "schedule": format!("@at {at}"),
                "executor": exec,
                "concurrency": "allow",
            })
        },
    )?;
    if created.errors > 0 {
        bail!("{} of {} PUTs failed", created.errors, args.jobs);
    }
    let ready = wall_ms();
    if ready > due - 500 {
        bail!(
            "creating the jobs ended {} ms before the due second; raise --lead",
            due - ready
        );
    }
    let load_before = load();
    sleep_until_wall(due + args.drain as i64 * 1000);
    let db = server.data_dir.join("sundial.db");
    let runs = window_runs(&db, due, due + 1000)?;
    daemons.terminate(Duration::from_secs(40))?;
    stop_server(server)?;
    drop(responder);

    header(&format!(
        "burst-dispatch: {} jobs due on one second, {} daemons, executor {}",
        args.jobs, args.daemons, args.executor
    ));
    println!("{load_before}");
    let mut starts: Vec<i64> = runs
        .iter()
        .filter_map(|r| r.started_at.map(|s| s - r.scheduled_for))
        .collect();
    let mut created_at: Vec<i64> = runs.iter().map(|r| r.created_at - due).collect();
    let within = starts.iter().filter(|d| **d <= 1000).count();
    row("runs created for the second", runs.len().to_string(), "");
    row("runs started (daemon stamp)", starts.len().to_string(), "");
    let all = within as u64 == args.jobs;
    row(
        "started within 1 s of the second",
        within.to_string(),
        &format!("= {} {}", args.jobs, verdict(all)),
    );
    pct_row("slot created − due", &mut created_at, None);
    pct_row("fire-to-start (daemon started_at)", &mut starts, None);
    let mut per_node: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &runs {
        *per_node
            .entry(r.node.as_deref().unwrap_or("-"))
            .or_default() += 1;
    }
    let (min, max) = per_node
        .values()
        .fold((u64::MAX, 0), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let mean = runs.len() as f64 / args.daemons.max(1) as f64;
    row(
        "runs per daemon (min / max, mean)",
        format!(
            "{} / {max}, {mean:.0}",
            if min == u64::MAX { 0 } else { min }
        ),
        &format!(
            "max ≤ 2× mean {}",
            verdict((max as f64) <= 2.0 * mean.max(1.0))
        ),
    );
    let mut states: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &runs {
        *states.entry(r.state.as_str()).or_default() += 1;
    }
    let states: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
    row("their states", states.join(", "), "");
    Ok(())
}

//! The command line of `sundial-bench`: one subcommand per scenario, the
//! flags they share, and the dispatch from a parsed scenario to its module.

use crate::harness::Opts;
use crate::{
    burst, burst_dispatch, console, dispatch, idle, lateness, run_path, slowloris, startup, upsert,
};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(about = "Sundial benchmark scenarios (see docs/benchmarks.md)")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
    /// Keep the temporary data directory (and server log) and print its path.
    #[arg(long, global = true)]
    pub(crate) keep: bool,
    /// Record a `perf` profile of the server during the measured phase into this file
    /// (`run-path` has no server process: it profiles its own, warm-up included).
    #[arg(long, global = true)]
    pub(crate) perf: Option<PathBuf>,
    /// With --perf: unwind with DWARF (`--call-graph dwarf`) instead of frame pointers.
    #[arg(long, global = true)]
    pub(crate) perf_dwarf: bool,
    /// Interval of the read-only database watcher, in milliseconds.
    #[arg(long, global = true, default_value_t = 1)]
    pub(crate) poll_ms: u64,
}

#[derive(Subcommand)]
pub(crate) enum Scenario {
    /// Start-up with a large pre-populated database: readiness, first fire, memory.
    Startup {
        #[arg(long, default_value_t = 1_000_000)]
        jobs: u64,
        /// Jobs per write operation while populating.
        #[arg(long, default_value_t = 20_000)]
        chunk: u64,
    },
    /// Bulk `PUT /v1/jobs/{id}` over keep-alive connections.
    Upsert {
        #[arg(long, default_value_t = 100_000)]
        jobs: u64,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Tokio worker threads of the load generator (the server gets the rest).
        #[arg(long, default_value_t = 1)]
        client_threads: usize,
    },
    /// Many jobs due in the same second.
    Burst {
        #[arg(long, default_value_t = 10_000)]
        jobs: u64,
        /// Consecutive fire seconds (10 s apart) to measure.
        #[arg(long, default_value_t = 2)]
        fires: u32,
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
    /// Steady state: jobs firing every second; per-run lateness.
    Lateness {
        #[arg(long, default_value_t = 1000)]
        jobs: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
    /// End-to-end no-op runs through real daemons; sweeps the offered load.
    Dispatch {
        /// `sundial-daemon` processes.
        #[arg(long, default_value_t = 10)]
        daemons: usize,
        /// `--capacity` of each daemon (runs executed at once).
        #[arg(long, default_value_t = 1000)]
        capacity: u32,
        /// Offered loads to sweep (every-second jobs), ascending.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
        rates: Vec<u64>,
        /// Measured window per step, seconds.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Seconds between creating a step's jobs and its window.
        #[arg(long, default_value_t = 3)]
        settle: u64,
        /// Seconds after a window before its runs are read back.
        #[arg(long, default_value_t = 3)]
        drain: u64,
        /// No-op executor: `exec` (/bin/true) or `http` (GET to a local responder).
        #[arg(long, default_value = "exec")]
        executor: String,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Also deliver every run event to a webhook (a local responder).
        #[arg(long)]
        webhook: bool,
    },
    /// `--jobs` one-shot jobs due on the same second, run by real daemons:
    /// are they all started within 1 s?
    BurstDispatch {
        #[arg(long, default_value_t = 10_000)]
        jobs: u64,
        #[arg(long, default_value_t = 10)]
        daemons: usize,
        #[arg(long, default_value_t = 1000)]
        capacity: u32,
        /// No-op executor: `exec` (/bin/true) or `http` (GET to a local responder).
        #[arg(long, default_value = "http")]
        executor: String,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds from the start of job creation to the due second.
        #[arg(long, default_value_t = 20)]
        lead: u64,
        /// Seconds after the due second before the runs are read back.
        #[arg(long, default_value_t = 5)]
        drain: u64,
    },
    /// Server time of the web console's pages over a large database.
    Console {
        #[arg(long, default_value_t = 100_000)]
        jobs: u64,
        /// Finished runs to add (1,000 on job-0000001, the rest spread).
        #[arg(long, default_value_t = 200_000)]
        runs: u64,
        /// Timed requests per page (after one warm-up).
        #[arg(long, default_value_t = 20)]
        requests: usize,
    },
    /// Many simulated daemons holding long-polls against one server.
    IdleDaemons {
        #[arg(long, default_value_t = 10_000)]
        daemons: usize,
        /// `wait_ms` of each long-poll (the real daemon uses 30 s).
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
        /// Seconds to hold all polls open while measuring.
        #[arg(long, default_value_t = 60)]
        hold: u64,
        /// Joins/registrations in flight at once.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
        /// Tokio worker threads of the simulator.
        #[arg(long, default_value_t = 1)]
        client_threads: usize,
        /// Bound on the connect phase, seconds.
        #[arg(long, default_value_t = 300)]
        connect_timeout: u64,
    },
    /// The writer's run path alone (slots, assignment, completion), no network.
    RunPath {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Simulated seconds (each fires every job once); the first is warm-up.
        #[arg(long, default_value_t = 6)]
        seconds: usize,
        /// Runs per assignment or completion write (a dispatcher poll, a batched completion).
        #[arg(long, default_value_t = 200)]
        batch: usize,
    },
    /// Fire lateness of every-second jobs with and without stalled (slowloris) connections.
    Slowloris {
        #[arg(long, default_value_t = 10)]
        jobs: u64,
        /// Seconds of each measured window.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Stalled connections held open during the second window.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
}

impl Scenario {
    /// Whether `--perf` can profile this scenario.
    pub(crate) fn takes_perf(&self) -> bool {
        !matches!(
            self,
            Scenario::BurstDispatch { .. } | Scenario::Console { .. } | Scenario::Slowloris { .. }
        )
    }

    /// Runs the scenario in `data` (a fresh directory); flags below their
    /// minimum are raised to it.
    pub(crate) fn run(self, data: &Path, opts: &Opts) -> Result<()> {
        match self {
            Scenario::Startup { jobs, chunk } => startup::run(data, opts, jobs, chunk.max(1)),
            Scenario::Upsert {
                jobs,
                clients,
                client_threads,
            } => upsert::run(data, opts, jobs, clients.max(1), client_threads.max(1)),
            Scenario::Burst {
                jobs,
                fires,
                clients,
            } => burst::run(data, opts, jobs, fires.max(1), clients.max(1)),
            Scenario::Lateness {
                jobs,
                seconds,
                clients,
            } => lateness::run(data, opts, jobs, seconds.max(1), clients.max(1)),
            Scenario::Dispatch {
                daemons,
                capacity,
                rates,
                seconds,
                settle,
                drain,
                executor,
                clients,
                webhook,
            } => dispatch::run(
                data,
                opts,
                &dispatch::Args {
                    daemons: daemons.max(1),
                    capacity: capacity.max(1),
                    rates,
                    seconds: seconds.max(1),
                    settle: settle.max(1),
                    drain,
                    executor,
                    clients: clients.max(1),
                    webhook,
                },
            ),
            Scenario::BurstDispatch {
                jobs,
                daemons,
                capacity,
                executor,
                clients,
                lead,
                drain,
            } => burst_dispatch::run(
                data,
                &burst_dispatch::Args {
                    jobs: jobs.max(1),
                    daemons: daemons.max(1),
                    capacity: capacity.max(1),
                    executor,
                    clients: clients.max(1),
                    lead: lead.max(2),
                    drain: drain.max(1),
                },
            ),
            Scenario::Console {
                jobs,
                runs,
                requests,
            } => console::run(
                data,
                &console::Args {
                    jobs: jobs.max(100),
                    runs: runs.max(1000),
                    requests: requests.max(1),
                },
            ),
            Scenario::IdleDaemons {
                daemons,
                wait_ms,
                hold,
                parallel,
                client_threads,
                connect_timeout,
            } => idle::run(
                data,
                opts,
                &idle::Args {
                    daemons: daemons.max(1),
                    wait_ms,
                    hold: hold.max(1),
                    parallel: parallel.max(1),
                    threads: client_threads.max(1),
                    connect_timeout: connect_timeout.max(1),
                },
            ),
            Scenario::RunPath {
                jobs,
                seconds,
                batch,
            } => run_path::run(
                data,
                opts,
                &run_path::Args {
                    jobs: jobs.max(1),
                    seconds: seconds.max(1),
                    batch: batch.max(1),
                },
            ),
            Scenario::Slowloris {
                jobs,
                seconds,
                connections,
            } => slowloris::run(
                data,
                &slowloris::Args {
                    jobs: jobs.max(1),
                    seconds: seconds.max(1),
                    connections: connections.max(1),
                },
            ),
        }
    }
}

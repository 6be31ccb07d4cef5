//! What every scenario shares around the server it measures: the shared
//! options, an HTTP client, the server's PID, stopping it, and sleeping
//! until a wall-clock instant.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;
use sundial_bench::wall_ms;
use sundial_e2e::ServerProc;

/// Options shared by every scenario (the global flags).
pub(crate) struct Opts {
    pub(crate) perf: Option<PathBuf>,
    pub(crate) perf_dwarf: bool,
    pub(crate) poll: Duration,
}

/// A blocking client with a 30 s timeout.
pub(crate) fn http_client() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

/// The PID of a running server.
pub(crate) fn server_pid(server: &ServerProc) -> Result<u32> {
    server.pid().context("server process is not running")
}

/// Stops the server (SIGTERM, bounded wait); notes a non-zero exit.
pub(crate) fn stop_server(mut server: ServerProc) -> Result<()> {
    let code = server
        .terminate(Duration::from_secs(30))
        .context("stopping the server")?;
    if code != Some(0) {
        println!("note: server exited with {code:?}");
    }
    Ok(())
}

/// Sleeps until wall-clock `at_ms`.
pub(crate) fn sleep_until_wall(at_ms: i64) {
    let wait = at_ms - wall_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
}

//! `--perf`: a `perf record` attached to a process for a scenario's
//! measured phase, stopped with SIGINT (bounded) or killed on drop.

use crate::harness::Opts;
use anyhow::{Context, Result};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use sundial_e2e::stop_child;

/// A `perf record` attached to the server for the measured phase.
pub(crate) struct Perf {
    child: Option<Child>,
}

impl Perf {
    pub(crate) fn start(opts: &Opts, pid: u32) -> Result<Perf> {
        let Some(out) = &opts.perf else {
            return Ok(Perf { child: None });
        };
        let unwind = if opts.perf_dwarf {
            ["--call-graph", "dwarf,16384"]
        } else {
            ["--call-graph", "fp"]
        };
        let child = Command::new("perf")
            .args(["record", "-F", "2999"])
            .args(unwind)
            .args(["-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning perf (is it installed?)")?;
        // perf needs a moment to attach.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Perf { child: Some(child) })
    }

    pub(crate) fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, "INT", Duration::from_secs(60), "perf")?;
            println!("perf profile written (perf report -i <file> --no-children)");
        }
        Ok(())
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

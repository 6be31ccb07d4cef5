//! `runs ls|get|logs [--follow]|cancel`.
//!
//! `logs --follow` polls `GET /v1/runs/{id}` until the run ends and prints
//! output as it appears (daemons send live output about every half second);
//! a retry starts the output over, under a `--- attempt N ---` line.

use super::{emit, jobs::follow_run, Ctx};
use crate::args::RunsCmd;
use crate::client::enc;
use crate::error::CliResult;
use crate::render;
use reqwest::Method;
use std::time::Duration;
use sundial_proto::run::output_attempt;
use sundial_proto::{List, Run, RunState};

pub fn run(ctx: &Ctx, cmd: RunsCmd) -> CliResult<()> {
    let client = ctx.client()?;
    match cmd {
        RunsCmd::Ls {
            job,
            state,
            node,
            since,
            limit,
        } => {
            let cutoff = since.map(|d| ctx.view.now - d.as_millis_i64());
            let mut runs: Vec<Run> = Vec::new();
            let mut cursor: Option<String> = None;
            'pages: loop {
                let mut q: Vec<(&str, String)> = vec![("limit", limit.clamp(1, 1000).to_string())];
                if ctx.format().is_human() {
                    // A table shows no output: up to 1 MiB a run left out.
                    q.push(("output", "false".into()));
                }
                if let Some(j) = &job {
                    q.push(("job", j.clone()));
                }
                if let Some(s) = state {
                    q.push(("state", s.to_string()));
                }
                if let Some(n) = &node {
                    q.push(("node", n.clone()));
                }
                if let Some(c) = &cursor {
                    q.push(("cursor", c.clone()));
                }
                let query = serde_urlencoded::to_string(&q).map_err(|e| anyhow::anyhow!("{e}"))?;
                let page: List<Run> = client.get(&format!("/v1/runs?{query}"))?;
                for r in page.items {
                    // Newest first: the first run older than the cutoff ends the listing.
                    if cutoff.is_some_and(|c| r.created_at < c) || runs.len() >= limit {
                        break 'pages;
                    }
                    runs.push(r);
                }
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            ctx.print(&runs, || render::runs_table(&ctx.view, &runs))
        }
        RunsCmd::Get { id } => {
            let run: Run = client.get(&format!("/v1/runs/{id}"))?;
            ctx.print(&run, || render::run_detail(&ctx.view, &run))
        }
        RunsCmd::Logs { id, follow } => {
            if !follow {
                let run: Run = client.get(&format!("/v1/runs/{id}"))?;
                return ctx.print(&run.output, || run.output.clone().unwrap_or_default());
            }
            let mut tail = Tail::default();
            let done = follow_run(&client, id, Duration::from_secs(24 * 3600), |r| {
                let (marker, new) = tail.update(r);
                if let Some(m) = marker {
                    eprintln!("{m}");
                }
                emit(new);
            })?;
            if done.truncated {
                eprintln!("[output truncated by the daemon]");
            }
            Ok(())
        }
        RunsCmd::Cancel { id } => {
            let run: Run = client.call(
                Method::POST,
                &format!("/v1/runs/{}/cancel", enc(&id.to_string())),
                None::<&()>,
            )?;
            ctx.print(&run, || cancelled(&run))
        }
    }
}

/// What `runs cancel` says: a running run stops at its next heartbeat,
/// so its cancel is requested, not done.
fn cancelled(run: &Run) -> String {
    match run.state {
        RunState::Running => format!(
            "Cancel of run {} requested: its daemon stops it at its next heartbeat (a third of the lease); \
             a run that ends before then keeps its own result.\n",
            run.id
        ),
        state => format!("Run {} is {state}.\n", run.id),
    }
}

/// What `logs --follow` has printed of a run: its attempt, and how far.
#[derive(Default)]
struct Tail {
    attempt: Option<u32>,
    printed: usize,
}

impl Tail {
    /// The next part of `run`'s output to print, after a marker line when a
    /// retry started the output over. While a retry waits, the output is
    /// still the ended attempt's ([`output_attempt`]): its end comes first.
    fn update<'r>(&mut self, run: &'r Run) -> (Option<String>, &'r str) {
        let owner = output_attempt(run.state, run.attempt);
        let mut marker = None;
        if self.attempt.is_some_and(|a| a != owner) {
            marker = Some(format!("--- attempt {owner} ---"));
            self.printed = 0;
        }
        self.attempt = Some(owner);
        let out = run.output.as_deref().unwrap_or("");
        if out.len() <= self.printed {
            return (marker, "");
        }
        // Never slice inside a character (the daemon sends whole ones, so
        // this only guards against output replaced under us).
        let start = (self.printed..=out.len())
            .find(|&i| out.is_char_boundary(i))
            .unwrap_or(out.len());
        self.printed = out.len();
        (marker, &out[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(attempt: u32, state: RunState, output: &str) -> Run {
        serde_json::from_value(serde_json::json!({
            "id": 7, "job_id": "j", "scheduled_for": "2026-01-01T00:00:00Z",
            "node": "", "trigger": "manual", "attempt": attempt, "state": state,
            "created_at": "2026-01-01T00:00:00Z", "started_at": null,
            "finished_at": null, "exit_code": null, "output": output,
            "truncated": false, "error": null
        }))
        .unwrap()
    }

    #[test]
    fn a_cancel_of_a_running_run_says_it_is_requested() {
        assert!(cancelled(&run(1, RunState::Running, "")).starts_with("Cancel of run 7 requested"));
        assert_eq!(
            cancelled(&run(1, RunState::Cancelled, "")),
            "Run 7 is cancelled.\n"
        );
    }

    #[test]
    fn a_retry_starts_the_output_over() {
        let mut t = Tail::default();
        let steps = [
            (run(1, RunState::Running, "one\n"), None, "one\n"),
            // The backoff: attempt 2 is pending with attempt 1's whole output.
            (run(2, RunState::Pending, "one\ntwo\n"), None, "two\n"),
            (run(2, RunState::Running, ""), Some("--- attempt 2 ---"), ""),
            (run(2, RunState::Running, "x"), None, "x"),
            (run(2, RunState::Succeeded, "xy\n"), None, "y\n"),
        ];
        for (r, marker, text) in steps {
            let (m, new) = t.update(&r);
            assert_eq!((m.as_deref(), new), (marker, text));
        }
        // A position inside a character goes on at the next one.
        let mut t = Tail {
            attempt: Some(1),
            printed: 4,
        };
        assert_eq!(t.update(&run(1, RunState::Running, "caf\u{e9}!")).1, "!");
    }
}

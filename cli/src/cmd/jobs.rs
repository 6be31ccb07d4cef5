//! `jobs ls|get|describe|trigger [--wait]|pause|resume|rm`.

use super::{emit, preview, Ctx};
use crate::args::JobsCmd;
use crate::client::{enc, Client};
use crate::error::{CliError, CliResult};
use crate::output::OutputFormat;
use crate::progress::Progress;
use crate::render;
use reqwest::Method;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use sundial_proto::{Job, List, Run, RunState};

/// Every job (all pages), optionally only those carrying `selector`'s labels.
pub fn list_all(client: &Client, selector: &BTreeMap<String, String>) -> CliResult<Vec<Job>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q: Vec<(&str, String)> = vec![("limit", "1000".into())];
        for (k, v) in selector {
            q.push(("label", format!("{k}={v}")));
        }
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let query = serde_urlencoded::to_string(&q).map_err(|e| anyhow::anyhow!("{e}"))?;
        let page: List<Job> = client.get(&format!("/v1/jobs?{query}"))?;
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// Exit code of a finished run for `trigger --wait`: its process exit code
/// when it has one (1-255), else 0 for success and 1 for anything else (a
/// run that did not succeed never exits 0, even if its process did, e.g.
/// one cancelled as it finished).
pub fn run_exit_code(run: &Run) -> i32 {
    let succeeded = run.state == RunState::Succeeded;
    match run.exit_code {
        Some(0) if !succeeded => 1,
        Some(c) if (0..=255).contains(&c) => c,
        Some(_) => 1,
        None if succeeded => 0,
        None => 1,
    }
}

/// How long a wait for a run rides out a server it cannot reach.
const OUT_OF_REACH_GRACE: Duration = Duration::from_secs(60);

/// Polls a run until it reaches a terminal state (or `timeout`), calling
/// `on_update` with each new version.
/// An error that a restart or failover of the server explains: refused or
/// timed-out connections, and no primary behind the proxy (502-504).
fn is_transient(e: &CliError) -> bool {
    match e {
        CliError::Unreachable { .. } => true,
        CliError::Api { status, .. } => (502..=504).contains(status),
        _ => false,
    }
}

pub fn follow_run(
    client: &Client,
    id: i64,
    timeout: Duration,
    mut on_update: impl FnMut(&Run),
) -> CliResult<Run> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    // Since when the server has been out of reach (a restart, a failover):
    // the run goes on meanwhile, so the wait does too, for a while.
    let mut lost: Option<Instant> = None;
    loop {
        let run: Run = match client.get(&format!("/v1/runs/{id}")) {
            Ok(run) => {
                lost = None;
                run
            }
            Err(e) if is_transient(&e) && Instant::now() < deadline => {
                let since = *lost.get_or_insert_with(|| {
                    eprintln!("Lost the server ({e}); still waiting for run {id}…");
                    Instant::now()
                });
                if since.elapsed() >= OUT_OF_REACH_GRACE {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(e),
        };
        on_update(&run);
        if run.state.is_terminal() {
            return Ok(run);
        }
        if Instant::now() >= deadline {
            return Err(CliError::Other(anyhow::anyhow!(
                "run {id} still {} after {}s",
                run.state,
                timeout.as_secs()
            )));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

pub fn run(ctx: &Ctx, cmd: JobsCmd) -> CliResult<()> {
    let client = ctx.client()?;
    match cmd {
        JobsCmd::Ls { selector } => {
            let selector = crate::args::selector(&selector)?;
            let mut jobs = list_all(&client, &selector)?;
            jobs.sort_by(|a, b| a.id.cmp(&b.id));
            let wide = ctx.format() == OutputFormat::Wide;
            ctx.print(&jobs, || render::jobs_table(&ctx.view, &jobs, wide))
        }
        JobsCmd::Get { id } => {
            let job: Job = client.get(&format!("/v1/jobs/{}", enc(&id)))?;
            let wide = ctx.format() == OutputFormat::Wide;
            ctx.print(&job, || {
                render::jobs_table(&ctx.view, std::slice::from_ref(&job), wide)
            })
        }
        JobsCmd::Describe { id } => {
            let job: Job = client.get(&format!("/v1/jobs/{}", enc(&id)))?;
            let fires = preview::fetch(&client, &job.spec.schedule, &job.spec.timezone, 5, None)?;
            // A table shows no output: the runs come without it.
            let output = !ctx.format().is_human();
            let runs: List<Run> = client.get(&format!(
                "/v1/runs?job={}&limit=5&output={output}",
                enc(&id)
            ))?;
            // The server knows the zone; a CLI with an older zone database
            // may not, and says so rather than label UTC times as local.
            let tz: chrono_tz::Tz = job.spec.timezone.parse().unwrap_or_else(|_| {
                eprintln!(
                    "warning: this sundial does not know time zone {:?} (an older zone \
                     database?); the next fires are shown in UTC",
                    job.spec.timezone
                );
                chrono_tz::UTC
            });
            let next = render::fires(tz, &fires);
            #[derive(serde::Serialize)]
            struct Described<'a> {
                job: &'a Job,
                next_fires: Vec<String>,
                last_runs: &'a [Run],
            }
            let value = Described {
                job: &job,
                next_fires: fires
                    .iter()
                    .map(|t| sundial_proto::time::format_ms(*t))
                    .collect(),
                last_runs: &runs.items,
            };
            ctx.print(&value, || {
                render::describe(&ctx.view, &job, &next, &runs.items)
            })
        }
        JobsCmd::Trigger { id, wait, timeout } => {
            let run: Run = client.call(
                Method::POST,
                &format!("/v1/jobs/{}/trigger", enc(&id)),
                None::<&()>,
            )?;
            if !wait {
                return ctx.print(&run, || {
                    format!("Triggered run {} of job {}.\n", run.id, run.job_id)
                });
            }
            let human = ctx.format().is_human();
            if human {
                eprintln!("Triggered run {} of job {}; waiting…", run.id, run.job_id);
            }
            // A broadcast slot is one run per node: the wait covers them all.
            let job: Job = client.get(&format!("/v1/jobs/{}", enc(&id)))?;
            let broadcast = job.spec.target.all;
            let mut progress = Progress::new();
            let started = Instant::now();
            let timeout = Duration::from_secs(timeout);
            let done = follow_run(&client, run.id, timeout, |r| {
                if human {
                    for line in progress.update(r, started.elapsed()) {
                        eprintln!("{line}");
                    }
                }
            })?;
            let mut slot = vec![done];
            if broadcast {
                for sibling in slot_siblings(&client, &run)? {
                    let left = timeout.saturating_sub(started.elapsed());
                    slot.push(follow_run(&client, sibling, left, |_| {})?);
                }
            }
            match ctx.format() {
                OutputFormat::Table | OutputFormat::Wide => {
                    for done in &slot {
                        if let Some(out) = &done.output {
                            emit(out);
                        }
                        if done.truncated {
                            eprintln!("[output truncated by the daemon]");
                        }
                        let why = done
                            .error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default();
                        let on = match (&done.node, broadcast) {
                            (Some(node), true) => format!(" on {node}"),
                            _ => String::new(),
                        };
                        eprintln!(
                            "Run {}{on} {} (exit code {}){why}.",
                            done.id,
                            done.state,
                            done.exit_code
                                .map(|c| c.to_string())
                                .unwrap_or_else(|| "none".into())
                        );
                    }
                }
                _ if broadcast => ctx.print(&slot, String::new)?,
                _ => ctx.print(&slot[0], String::new)?,
            }
            // The slot's outcome: the first run (in id order) that did not succeed.
            match slot.iter().map(run_exit_code).find(|c| *c != 0) {
                None => Ok(()),
                Some(code) => Err(CliError::Exit(code)),
            }
        }
        JobsCmd::Pause { id } => {
            let job: Job = client.call(
                Method::POST,
                &format!("/v1/jobs/{}/pause", enc(&id)),
                None::<&()>,
            )?;
            ctx.print(&job, || format!("Paused job {}.\n", job.id))
        }
        JobsCmd::Resume { id } => {
            let job: Job = client.call(
                Method::POST,
                &format!("/v1/jobs/{}/resume", enc(&id)),
                None::<&()>,
            )?;
            ctx.print(&job, || {
                // A disabled job stays without a fire: say so, not a time.
                format!(
                    "Resumed job {}; next fire {}.\n",
                    job.id,
                    render::next_fire(&ctx.view, &job, true)
                )
            })
        }
        JobsCmd::Rm { id } => {
            client.send_empty(Method::DELETE, &format!("/v1/jobs/{}", enc(&id)))?;
            ctx.print(&serde_json::json!({"deleted": id}), || {
                format!("Deleted job {id}.\n")
            })
        }
    }
}

/// The other runs of `run`'s broadcast slot (same job, manual trigger and
/// time), oldest first.
fn slot_siblings(client: &Client, run: &Run) -> CliResult<Vec<i64>> {
    let page: List<Run> = client.get(&format!(
        "/v1/runs?job={}&limit=1000&output=false",
        enc(&run.job_id)
    ))?;
    let mut ids: Vec<i64> = page
        .items
        .iter()
        .filter(|r| {
            r.id != run.id && r.trigger == run.trigger && r.scheduled_for == run.scheduled_for
        })
        .map(|r| r.id)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(state: &str, exit_code: Option<i32>) -> Run {
        serde_json::from_value(serde_json::json!({
            "id": 1, "job_id": "j", "scheduled_for": "2026-11-25T01:30:00Z",
            "node": "n1", "trigger": "manual", "attempt": 1, "state": state,
            "created_at": "2026-11-25T01:30:00Z", "started_at": null,
            "finished_at": null, "exit_code": exit_code, "output": "",
            "truncated": false, "error": null
        }))
        .expect("a valid run")
    }

    #[test]
    fn the_exit_code_is_the_process_s_and_never_0_for_a_run_that_did_not_succeed() {
        assert_eq!(run_exit_code(&ended("succeeded", Some(0))), 0);
        assert_eq!(run_exit_code(&ended("succeeded", None)), 0);
        assert_eq!(run_exit_code(&ended("failed", Some(7))), 7);
        assert_eq!(run_exit_code(&ended("failed", Some(-9))), 1);
        assert_eq!(run_exit_code(&ended("failed", Some(300))), 1);
        assert_eq!(run_exit_code(&ended("timed_out", None)), 1);
        assert_eq!(run_exit_code(&ended("cancelled", Some(0))), 1);
        assert_eq!(run_exit_code(&ended("lost", None)), 1);
    }
}

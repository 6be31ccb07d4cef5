//! `runs ls|get|logs [--follow]|cancel`.
//!
//! `logs --follow` polls `GET /v1/runs/{id}` until the run ends and prints
//! output as it appears (the server has no live-output stream yet; daemons
//! report output when the run completes).

use super::{emit, jobs::follow_run, Ctx};
use crate::args::RunsCmd;
use crate::client::enc;
use crate::error::CliResult;
use crate::render;
use reqwest::Method;
use std::time::Duration;
use sundial_proto::{List, Run};

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
            let mut printed = 0usize;
            let done = follow_run(&client, id, Duration::from_secs(24 * 3600), |r| {
                let out = r.output.as_deref().unwrap_or("");
                if out.len() > printed && out.is_char_boundary(printed) {
                    emit(&out[printed..]);
                    printed = out.len();
                }
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
            ctx.print(&run, || format!("Run {} is {}.\n", run.id, run.state))
        }
    }
}

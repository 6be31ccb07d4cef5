//! `apply`, `diff` and `export`: manifests to a plan through
//! `POST /v1/jobs:apply` (dry run first, then the real, atomic apply), and
//! stored jobs back to manifests.

use super::{emit, jobs::list_all, Ctx};
use crate::args::{ApplyArgs, ExportArgs};
use crate::client::{enc, Client};
use crate::error::{CliError, CliResult};
use crate::manifest::{self, Format, Loaded, Source};
use crate::output::OutputFormat;
use crate::plan::{self, Counts};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;
use sundial_proto::{ApplyRequest, ApplyResponse, Job, JobManifest, JobSpec, Prune};

/// Above this many documents `apply` skips the separate planning request and
/// prints the plan the (atomic) apply returns, naming changed fields of
/// updates; `diff` and `apply --dry-run` always show values.
const PLAN_FIRST_LIMIT: usize = 5_000;

/// Updates whose stored spec is fetched to show a field-level diff; beyond
/// this the plan names the changed fields only.
const DIFF_DETAIL_LIMIT: usize = 200;

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {pos} documents [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The request as sent: the documents as written (the server fills in defaults).
#[derive(serde::Serialize)]
struct RawRequest<'a> {
    jobs: &'a [serde_json::Value],
    prune: &'a Option<Prune>,
    dry_run: bool,
}

/// Sends the request; a refused document is named by file and document.
fn send(
    client: &Client,
    sources: &[Source],
    req: &ApplyRequest,
    raw: &[serde_json::Value],
) -> CliResult<ApplyResponse> {
    let body = serde_json::to_vec(&RawRequest {
        jobs: raw,
        prune: &req.prune,
        dry_run: req.dry_run,
    })
    .map_err(|e| anyhow::anyhow!("encoding: {e}"))?;
    client
        .post_raw("/v1/jobs:apply", body)
        .map_err(|e| match e {
            CliError::Api { status, mut detail } => {
                if let Some((src, job)) = detail
                    .index
                    .and_then(|i| Some((sources.get(i)?, req.jobs.get(i)?)))
                {
                    let msg = detail
                        .message
                        .split_once("]: ")
                        .map(|(_, m)| m.to_string())
                        .unwrap_or(detail.message.clone());
                    let field = detail
                        .field
                        .as_deref()
                        .map(|f| format!("field {f}: "))
                        .unwrap_or_default();
                    detail.message = format!("{src}: job {:?}: {field}{msg}", job.id);
                }
                CliError::Api { status, detail }
            }
            other => other,
        })
}

/// Stored specs of (up to [`DIFF_DETAIL_LIMIT`]) updated jobs.
fn stored_specs(client: &Client, plan: &ApplyResponse) -> CliResult<HashMap<String, JobSpec>> {
    let mut out = HashMap::new();
    let updates = plan
        .plan
        .iter()
        .filter(|e| e.action == sundial_proto::Action::Update);
    for e in updates.take(DIFF_DETAIL_LIMIT) {
        match client.get::<Job>(&format!("/v1/jobs/{}", enc(&e.id))) {
            Ok(job) => {
                out.insert(e.id.clone(), job.spec);
            }
            // Deleted since the plan: the plan shows field names.
            Err(CliError::Api { status: 404, .. }) => {}
            Err(other) => return Err(other),
        }
    }
    Ok(out)
}

/// With `SUNDIAL_TIMING` set, phase durations go to stderr (for benchmarks).
struct Phases {
    on: bool,
    last: std::time::Instant,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            on: std::env::var_os("SUNDIAL_TIMING").is_some_and(|v| !v.is_empty()),
            last: std::time::Instant::now(),
        }
    }

    fn done(&mut self, phase: &str) {
        if self.on {
            eprintln!("timing: {phase} {:.3} s", self.last.elapsed().as_secs_f64());
        }
        self.last = std::time::Instant::now();
    }
}

/// `apply` (and `diff` when `diff_only`).
pub fn apply(ctx: &Ctx, args: &ApplyArgs, diff_only: bool) -> CliResult<()> {
    ctx.only(&[OutputFormat::Table, OutputFormat::Json, OutputFormat::Yaml])?;
    let mut phases = Phases::new();
    let bar = progress();
    bar.set_message("reading manifests");
    let loaded = manifest::load(&args.files, |n| bar.inc(n as u64))?;
    phases.done("read");
    let selector = crate::args::selector(&args.selector)?;
    let prune = args.prune.then_some(Prune { labels: selector });
    for file in &loaded.empty {
        eprintln!("warning: {file} holds no jobs");
    }
    if prune.is_some() && loaded.jobs.is_empty() {
        return Err(CliError::usage(
            "the files hold no jobs: --prune would delete every job the selector matches; \
             refusing (a truncated file?). Delete them with `sundial jobs rm` instead",
        ));
    }
    let client = ctx.client_with(Duration::from_secs(600))?;
    let Loaded {
        jobs, sources, raw, ..
    } = loaded;
    let plan_only = diff_only || args.dry_run;
    // Large applies go straight to the one atomic request (see PLAN_FIRST_LIMIT).
    let plan_first = plan_only || jobs.len() <= PLAN_FIRST_LIMIT;
    let mut req = ApplyRequest {
        jobs,
        prune,
        dry_run: plan_first,
    };
    let structured = !matches!(ctx.format(), OutputFormat::Table);
    let new: HashMap<&str, &JobSpec> = req.jobs.iter().map(|j| (j.id.as_str(), &j.spec)).collect();
    bar.set_message(if plan_first { "planning" } else { "applying" });
    let first = send(&client, &sources, &req, &raw).inspect_err(|_| bar.finish_and_clear())?;
    phases.done(if plan_first { "plan" } else { "apply" });
    if !structured {
        let old = if plan_first {
            stored_specs(&client, &first)?
        } else {
            HashMap::new()
        };
        bar.suspend(|| emit(&plan::render(&ctx.view, &first, &new, &old)));
        phases.done("print");
    }
    let done = if !plan_first || plan_only || Counts::of(&first).changes() == 0 {
        first
    } else {
        bar.set_message("applying");
        req.dry_run = false;
        let done = send(&client, &sources, &req, &raw).inspect_err(|_| bar.finish_and_clear())?;
        phases.done("apply");
        done
    };
    bar.finish_and_clear();
    for warning in plan::passed_at(&done, &new, sundial_proto::time::now_ms()) {
        eprintln!("{warning}");
    }
    let counts = Counts::of(&done);
    if structured {
        ctx.print(&done, String::new)?;
    } else if counts.changes() == 0 {
        let jobs = if counts.unchanged == 1 { "job" } else { "jobs" };
        emit(&format!(
            "No changes: {} {jobs} unchanged.\n",
            counts.unchanged
        ));
    } else {
        emit(&format!("{}\n", plan::summary(counts, done.applied)));
    }
    if diff_only && counts.changes() > 0 {
        return Err(CliError::Exit(1));
    }
    Ok(())
}

/// `export`: stored jobs as manifests, sorted by id (YAML by default).
pub fn export(ctx: &Ctx, args: &ExportArgs) -> CliResult<()> {
    let format = match ctx.format() {
        OutputFormat::Table | OutputFormat::Yaml => Format::Yaml,
        OutputFormat::Json => Format::Json,
        OutputFormat::Toml => Format::Toml,
        OutputFormat::Wide => return Err(CliError::usage("export writes -o yaml, toml or json")),
    };
    let client = ctx.client_with(Duration::from_secs(120))?;
    let selector = crate::args::selector(&args.selector)?;
    let mut jobs: Vec<JobManifest> = list_all(&client, &selector)?
        .into_iter()
        .map(|j| JobManifest {
            id: j.id,
            spec: j.spec,
        })
        .collect();
    jobs.sort_by(|a, b| a.id.cmp(&b.id));
    emit(&manifest::render(&jobs, format)?);
    Ok(())
}

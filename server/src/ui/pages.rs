//! The console's read pages: overview, jobs (search/filter/sort/paging), job
//! (spec, next fires, history), run (with a live fragment polled by htmx
//! while the run is not finished) and nodes. Reads use the store's queries
//! and [`super::queries`]; nothing here writes.

use super::fires::{self, Bar, Fire};
use super::input::UiQuery;
use super::queries::{self, JobSearch, LastState, Sort};
use super::view::{human_ms, render, Layout, Ts, UiError, UiResult, Viewer};
use crate::api::nodes::{live_view, status_of};
use crate::api::state::Console;
use crate::registry::Registry;
use crate::store::Store;
use crate::store::{jobs, nodes, runs};
use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use sundial_proto::time::now_ms;
use sundial_proto::{Job, Run, RunState};

/// Jobs per page on the jobs page.
pub const PAGE_SIZE: usize = 50;
/// Runs shown on the job page.
pub const HISTORY: usize = 50;

/// A job as a table row.
pub struct JobRow {
    pub id: String,
    pub description: String,
    pub schedule: String,
    pub timezone: String,
    pub paused: bool,
    pub enabled: bool,
    pub last_state: String,
    pub last_run: Option<Ts>,
    pub next_fire: Option<Ts>,
    /// Job labels as `k=v` texts.
    pub labels: Vec<String>,
    /// Overdue since (no success within the job's `overdue_after`).
    pub overdue_since: Option<Ts>,
    pub last_success: Option<Ts>,
}

impl From<&Job> for JobRow {
    fn from(j: &Job) -> JobRow {
        JobRow {
            id: j.id.clone(),
            description: j.spec.description.clone(),
            schedule: j.spec.schedule.clone(),
            timezone: j.spec.timezone.clone(),
            paused: j.paused,
            enabled: j.spec.enabled,
            last_state: j.counters.last_state.clone().unwrap_or_default(),
            last_run: Ts::opt(j.counters.last_run_at),
            next_fire: Ts::opt(j.next_fire_at),
            labels: j
                .spec
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            overdue_since: Ts::opt(j.counters.overdue_since),
            last_success: Ts::opt(j.counters.last_success_at),
        }
    }
}

/// A run as shown on the run page and in history tables.
pub struct RunView {
    pub id: i64,
    pub job_id: String,
    pub state: &'static str,
    pub live: bool,
    pub attempt: u32,
    pub trigger: String,
    pub node: String,
    pub scheduled: Ts,
    pub created: Ts,
    pub started: Option<Ts>,
    pub finished: Option<Ts>,
    pub duration: String,
    pub exit_code: String,
    pub output: String,
    pub truncated: bool,
    pub error: String,
}

impl From<&Run> for RunView {
    fn from(r: &Run) -> RunView {
        let duration = match (r.state, r.started_at, r.finished_at) {
            (_, Some(s), Some(f)) => human_ms(f - s),
            (RunState::Running, Some(s), None) => format!("{} so far", human_ms(now_ms() - s)),
            // Waiting for a retry: the start shown is the ended attempt's,
            // and nothing runs now.
            (RunState::Pending, Some(_), None) => {
                format!("— (attempt {} waits for its retry)", r.attempt)
            }
            _ => String::new(),
        };
        RunView {
            id: r.id,
            job_id: r.job_id.clone(),
            state: r.state.as_str(),
            live: !r.state.is_terminal(),
            attempt: r.attempt,
            trigger: r.trigger.to_string(),
            node: r.node.clone().unwrap_or_default(),
            scheduled: Ts::new(r.scheduled_for),
            created: Ts::new(r.created_at),
            started: Ts::opt(r.started_at),
            finished: Ts::opt(r.finished_at),
            duration,
            exit_code: r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            output: r.output.clone().unwrap_or_default(),
            truncated: r.truncated,
            error: r.error.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/overview.html")]
pub struct Overview {
    pub layout: Layout,
    pub role: &'static str,
    pub epoch: i64,
    pub primary: String,
    pub jobs_total: i64,
    pub nodes_ready: usize,
    pub nodes_down: usize,
    pub nodes_revoked: usize,
    pub runs_hour: Vec<(&'static str, u64)>,
    /// The last hour held more runs than the overview counts.
    pub runs_capped: bool,
    pub failing: Vec<JobRow>,
    pub overdue: Vec<JobRow>,
    /// Jobs with no success within their `overdue_after`, and their count.
    pub unmet: Vec<JobRow>,
    pub unmet_total: u64,
    pub next: Vec<(String, Ts)>,
    pub next_total: u64,
}

/// Most runs of the last hour the overview reads (beyond: "at least").
const RUNS_COUNTED: usize = 200_000;

/// A job is overdue when its fire is this late (the scheduler fires on time).
const OVERDUE_MS: i64 = 60_000;

pub async fn overview(
    State(console): State<Console>,
    State(registry): State<Arc<Registry>>,
    Viewer(s): Viewer,
) -> UiResult {
    let ha = console.ha.snapshot();
    let now = now_ms();
    let (
        jobs_total,
        (runs_hour, runs_capped),
        failing,
        overdue,
        (unmet, unmet_total),
        (next, next_total),
        all_nodes,
    ) = console
        .store
        .read(move |c| {
            Ok((
                jobs::count(c)?,
                queries::runs_by_state_since(c, now - 3_600_000, RUNS_COUNTED)?,
                queries::failing_jobs(c, 20)?,
                queries::overdue_jobs(c, now, OVERDUE_MS, 20)?,
                queries::overdue_since(c, 20)?,
                queries::next_fires(c, now, now + 3_600_000, 20)?,
                nodes::list(c)?,
            ))
        })
        .await?;
    let mut counts = (0, 0, 0);
    for n in all_nodes {
        match status_of(&live_view(&registry, n), now) {
            "ready" => counts.0 += 1,
            "revoked" => counts.2 += 1,
            _ => counts.1 += 1,
        }
    }
    let primary = match ha.role {
        crate::ha::Role::Primary => "this server".to_string(),
        _ => ha
            .primary_host
            .or(ha.primary_url)
            .unwrap_or_else(|| "unknown".to_string()),
    };
    render(&Overview {
        layout: Layout::new(&console.ha, &s, "overview"),
        role: ha.role.as_str(),
        epoch: ha.epoch,
        primary,
        jobs_total,
        nodes_ready: counts.0,
        nodes_down: counts.1,
        nodes_revoked: counts.2,
        runs_capped,
        runs_hour: runs_hour
            .into_iter()
            .map(|(s, n)| (s.as_str(), n))
            .collect(),
        failing: failing.iter().map(JobRow::from).collect(),
        overdue: overdue.iter().map(JobRow::from).collect(),
        unmet: unmet.iter().map(JobRow::from).collect(),
        unmet_total,
        next: next.into_iter().map(|(id, t)| (id, Ts::new(t))).collect(),
        next_total,
    })
}

/// Query string of the jobs page. Empty values mean "any".
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct JobsQuery {
    pub q: String,
    pub state: String,
    pub paused: String,
    pub sort: String,
    pub page: Option<usize>,
    /// The repeatable `label=k=v` parameters (read from the raw query by
    /// [`JobsQuery::with_labels`]; a plain `Query` cannot repeat a key).
    #[serde(skip)]
    pub label: Vec<String>,
}

impl JobsQuery {
    /// Adds the repeatable `label` parameters of the raw query string.
    pub fn with_labels(mut self, raw: Option<&str>) -> Result<JobsQuery, UiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| UiError::new(StatusCode::BAD_REQUEST, format!("query string: {e}")))?;
        self.label = pairs
            .into_iter()
            .filter(|(k, v)| k == "label" && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
            .collect();
        Ok(self)
    }

    /// The label filter as one text field's value (`k=v k2=v2`).
    pub fn labels_text(&self) -> String {
        self.label.join(" ")
    }

    /// Parses the filters; a value that does not parse is an error.
    pub fn search(&self) -> Result<JobSearch, UiError> {
        let bad = |m: String| UiError::new(StatusCode::BAD_REQUEST, m);
        let state = match self.state.as_str() {
            "" => LastState::Any,
            "never" => LastState::Never,
            s => LastState::Is(s.parse::<RunState>().map_err(bad)?),
        };
        let paused = match self.paused.as_str() {
            "" => None,
            "yes" => Some(true),
            "no" => Some(false),
            p => return Err(bad(format!("paused must be \"yes\" or \"no\", not {p:?}"))),
        };
        let sort = Sort::parse(&self.sort).ok_or_else(|| {
            bad(format!(
                "sort must be \"id\", \"next\" or \"last\", not {:?}",
                self.sort
            ))
        })?;
        let page = self.page.unwrap_or(1);
        if page == 0 || page > 1_000_000 {
            return Err(bad("page must be between 1 and 1000000".into()));
        }
        if self.q.len() > 256 {
            return Err(bad("the search text is longer than 256 bytes".into()));
        }
        let mut labels = std::collections::BTreeMap::new();
        for l in self.label.iter().flat_map(|l| l.split_whitespace()) {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| bad(format!("label {l:?} must be key=value")))?;
            crate::validate::selector_label(&mut labels, k, v).map_err(bad)?;
        }
        Ok(JobSearch {
            text: self.q.trim().to_string(),
            labels,
            state,
            paused,
            sort,
            offset: (page - 1) * PAGE_SIZE,
            limit: PAGE_SIZE,
        })
    }

    fn link(&self, page: usize) -> String {
        let mut q = self.clone();
        q.page = Some(page);
        let labels: Vec<(&str, &str)> = self.label.iter().map(|l| ("label", l.as_str())).collect();
        let mut link = format!(
            "/ui/jobs?{}",
            serde_urlencoded::to_string(&q).unwrap_or_default()
        );
        if !labels.is_empty() {
            link.push('&');
            link.push_str(&serde_urlencoded::to_string(&labels).unwrap_or_default());
        }
        link
    }
}

#[derive(Template)]
#[template(path = "ui/jobs.html")]
pub struct JobsPage {
    pub layout: Layout,
    pub rows: Vec<JobRow>,
    pub total: u64,
    pub query: JobsQuery,
    pub states: Vec<&'static str>,
    pub page: usize,
    pub pages: usize,
    pub prev: Option<String>,
    pub next: Option<String>,
}

pub async fn jobs(
    State(console): State<Console>,
    Viewer(s): Viewer,
    UiQuery(query): UiQuery<JobsQuery>,
    RawQuery(raw): RawQuery,
) -> UiResult {
    let query = query.with_labels(raw.as_deref())?;
    let search = query.search()?;
    let (found, total) = {
        let search = search.clone();
        console
            .store
            .read(move |c| queries::search_jobs(c, &search))
            .await?
    };
    let page = search.offset / PAGE_SIZE + 1;
    let pages = (total as usize).div_ceil(PAGE_SIZE).max(1);
    render(&JobsPage {
        layout: Layout::new(&console.ha, &s, "jobs"),
        rows: found.iter().map(JobRow::from).collect(),
        total,
        prev: (page > 1).then(|| query.link(page - 1)),
        next: (page < pages).then(|| query.link(page + 1)),
        query,
        states: RunState::ALL.iter().map(|s| s.as_str()).collect(),
        page,
        pages,
    })
}

#[derive(Template)]
#[template(path = "ui/job.html")]
pub struct JobPage {
    pub layout: Layout,
    pub job: JobRow,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub spec_json: String,
    pub fires: Vec<Fire>,
    pub fires_error: String,
    pub runs: Vec<RunView>,
    pub bars: Vec<Bar>,
    pub scale: String,
    pub chart_w: u32,
    pub chart_h: u32,
}

pub async fn job(
    State(console): State<Console>,
    Viewer(s): Viewer,
    Path(id): Path<String>,
) -> UiResult {
    let shown = id.clone();
    let found = console
        .store
        .read(move |c| {
            let Some(job) = jobs::get(c, &id)? else {
                return Ok(None);
            };
            let pk = jobs::pk_of(c, &id)?;
            let filter = runs::Filter {
                job_pk: pk,
                ..Default::default()
            };
            let (history, _) = runs::list(c, &filter, None, HISTORY)?;
            Ok(Some((job, history)))
        })
        .await?;
    let Some((job, history)) = found else {
        return Err(UiError::not_found(format!("Job {shown:?} not found.")));
    };
    let (fires, fires_error) =
        match fires::next_fires(&job.spec.schedule, &job.spec.timezone, now_ms(), 10) {
            Ok(f) => (f, String::new()),
            Err(e) => (Vec::new(), e),
        };
    let (bars, scale) = fires::duration_bars(&history);
    render(&JobPage {
        layout: Layout::new(&console.ha, &s, "jobs"),
        job: JobRow::from(&job),
        total: job.counters.total,
        succeeded: job.counters.succeeded,
        failed: job.counters.failed,
        spec_json: serde_json::to_string_pretty(&job.spec).unwrap_or_default(),
        fires,
        fires_error,
        runs: history.iter().map(RunView::from).collect(),
        bars,
        scale,
        chart_w: fires::CHART_W,
        chart_h: fires::CHART_H,
    })
}

#[derive(Template)]
#[template(path = "ui/run.html")]
pub struct RunPage {
    pub layout: Layout,
    pub run: RunView,
}

/// The live part of the run page; while the run is not finished it asks
/// htmx to fetch itself again every second (and stops once it is).
#[derive(Template)]
#[template(path = "ui/run_live.html")]
pub struct RunLive {
    pub run: RunView,
}

async fn load_run(store: &Store, raw: &str) -> Result<Run, UiError> {
    let id: i64 = raw
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| UiError::not_found(format!("Run {raw:?} not found.")))?;
    store
        .read(move |c| runs::get(c, id))
        .await?
        .ok_or_else(|| UiError::not_found(format!("Run {id} not found.")))
}

pub async fn run(
    State(console): State<Console>,
    Viewer(s): Viewer,
    Path(raw): Path<String>,
) -> UiResult {
    let run = load_run(&console.store, &raw).await?;
    render(&RunPage {
        layout: Layout::new(&console.ha, &s, "jobs"),
        run: RunView::from(&run),
    })
}

pub async fn run_live(
    State(store): State<Arc<Store>>,
    Viewer(_): Viewer,
    Path(raw): Path<String>,
) -> UiResult {
    let run = load_run(&store, &raw).await?;
    render(&RunLive {
        run: RunView::from(&run),
    })
}

pub struct NodeRow {
    pub id: String,
    pub status: &'static str,
    pub labels: String,
    pub capacity: u32,
    pub executors: String,
    pub version: String,
    pub last_seen: Option<Ts>,
    pub joined: Ts,
}

#[derive(Template)]
#[template(path = "ui/nodes.html")]
pub struct NodesPage {
    pub layout: Layout,
    pub rows: Vec<NodeRow>,
}

pub async fn nodes(
    State(console): State<Console>,
    State(registry): State<Arc<Registry>>,
    Viewer(s): Viewer,
) -> UiResult {
    let all = console.store.read(nodes::list).await?;
    let now = now_ms();
    let rows = all
        .into_iter()
        .map(|n| {
            let n = live_view(&registry, n);
            NodeRow {
                status: status_of(&n, now),
                labels: n
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                capacity: n.capacity,
                executors: n
                    .executors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                version: n.version.clone(),
                last_seen: Ts::opt(n.last_seen),
                joined: Ts::new(n.joined_at),
                id: n.id,
            }
        })
        .collect();
    render(&NodesPage {
        layout: Layout::new(&console.ha, &s, "nodes"),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            nav: "jobs",
            signed_in: true,
            key_id: "key_<b>".into(),
            admin: false,
            csrf: "t\"ok".into(),
            role: "primary",
            v: "0",
        }
    }

    #[test]
    fn job_text_is_escaped() {
        let xss = "<script>alert(1)</script>";
        let page = JobsPage {
            layout: layout(),
            rows: vec![JobRow {
                id: "j1".into(),
                description: xss.into(),
                schedule: "@every 1h\"><img src=x onerror=alert(1)>".into(),
                timezone: "UTC".into(),
                paused: false,
                enabled: true,
                last_state: String::new(),
                last_run: None,
                next_fire: Some(Ts::new(0)),
                labels: vec!["team=<b>x".into()],
                overdue_since: None,
                last_success: None,
            }],
            total: 1,
            query: JobsQuery {
                q: "\"><script>x</script>".into(),
                ..Default::default()
            },
            states: vec!["failed"],
            page: 1,
            pages: 1,
            prev: None,
            next: None,
        };
        let html = page.render().unwrap();
        assert!(!html.contains(xss));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<script>x"));
        assert!(!html.contains("key_<b>"));
        assert!(!html.contains("team=<b>") && html.contains("label=team%3D%3Cb%3Ex"));
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{html}"
        );
        // A read-scope layout renders no admin navigation.
        assert!(!html.contains("/ui/keys"));
    }

    #[test]
    fn jobs_query_refuses_bad_values() {
        let q = JobsQuery {
            state: "exploded".into(),
            ..Default::default()
        };
        assert!(q.search().is_err());
        let q = JobsQuery {
            paused: "maybe".into(),
            ..Default::default()
        };
        assert!(q.search().is_err());
        let q = JobsQuery {
            sort: "random".into(),
            ..Default::default()
        };
        assert!(q.search().is_err());
        let q = JobsQuery {
            page: Some(0),
            ..Default::default()
        };
        assert!(q.search().is_err());
        let q = JobsQuery {
            state: "failed".into(),
            paused: "no".into(),
            sort: "next".into(),
            page: Some(3),
            q: " nightly ".into(),
            label: Vec::new(),
        };
        let s = q.search().unwrap();
        assert_eq!(s.offset, 2 * PAGE_SIZE);
        assert_eq!(s.text, "nightly");
        assert_eq!(
            q.link(4),
            "/ui/jobs?q=+nightly+&state=failed&paused=no&sort=next&page=4"
        );
        // Job labels: repeated parameters and `k=v k2=v2` in one field, AND.
        let q = q
            .with_labels(Some(
                "q=x&label=team%3Dpay+tier%3D1&label=env%3Dprod&label=",
            ))
            .unwrap();
        assert_eq!(q.label, vec!["team=pay tier=1", "env=prod"]);
        let s = q.search().unwrap();
        assert_eq!(s.labels.len(), 3);
        assert_eq!(s.labels["tier"], "1");
        assert!(q
            .link(2)
            .ends_with("&page=2&label=team%3Dpay+tier%3D1&label=env%3Dprod"));
        for bad in ["label=team", "label=%3Dpay", "label=a%22b%3Dc"] {
            let q = JobsQuery::default().with_labels(Some(bad)).unwrap();
            assert!(q.search().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_run_waiting_for_its_retry_has_no_running_duration() {
        let run = |state: &str, finished: serde_json::Value| -> Run {
            serde_json::from_value(serde_json::json!({
                "id": 1, "job_id": "j", "scheduled_for": "2026-11-25T01:30:00Z",
                "node": null, "trigger": "manual", "attempt": 2, "state": state,
                "created_at": "2026-11-25T01:30:00Z", "started_at": "2026-11-25T01:30:00Z",
                "finished_at": finished, "exit_code": 4, "output": "",
                "truncated": false, "error": null
            }))
            .unwrap()
        };
        let waiting = RunView::from(&run("pending", serde_json::Value::Null));
        assert_eq!(waiting.duration, "— (attempt 2 waits for its retry)");
        let running = RunView::from(&run("running", serde_json::Value::Null));
        assert!(
            running.duration.ends_with(" so far"),
            "{}",
            running.duration
        );
        let ended = RunView::from(&run(
            "failed",
            serde_json::json!("2026-11-25T01:30:59.964Z"),
        ));
        assert_eq!(ended.duration, "59.9 s");
    }
}

//! Job endpoints: `PUT|GET|DELETE /v1/jobs/{id}`, `GET /v1/jobs`, and
//! `POST /v1/jobs/{id}/{pause|resume|trigger}`.

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, JsonBody, Reader};
use super::state::Queue;
use super::{parse_cursor, parse_query};
use crate::dispatch::Dispatcher;
use crate::schedule::Schedule;
use crate::scheduler::Scheduler;
use crate::store::audit::{self, Action};
use crate::store::Store;
use crate::store::{jobs, lifecycle, runs, StoreError};
use crate::validate;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use sundial_proto::time::now_ms;
use sundial_proto::{Job, JobSpec, List, Run, Trigger};

/// Default and largest page sizes for list endpoints.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[utoipa::path(
    put, path = "/v1/jobs/{id}", tag = "jobs",
    description = "Creates or updates a job (idempotent).",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The job's id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")),
    request_body = sundial_proto::JobSpec,
    responses(
        (status = 200, description = "Updated (or unchanged)", body = sundial_proto::Job),
        (status = 201, description = "Created", body = sundial_proto::Job),
    )
)]
pub async fn put(
    State(store): State<Arc<Store>>,
    State(scheduler): State<Arc<Scheduler>>,
    State(dispatcher): State<Arc<Dispatcher>>,
    Admin(actor): Admin,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<JobSpec>,
) -> ApiResult<impl IntoResponse> {
    validate::job_id(&id)?;
    let schedule = validate::spec(&spec)?;
    let (job, outcome, _) = store
        .write_then(
            move |c| {
                let now = now_ms();
                let before = lifecycle::placement(c, &id)?;
                let (job, outcome) = audit::around(
                    c,
                    now,
                    &actor,
                    Action::JobPut,
                    &id,
                    audit::job_state,
                    || jobs::upsert(c, &id, &spec, now, |t| schedule.next_after(t)),
                )?;
                // Runs already queued follow a changed target or executor
                // (as bulk apply moves them: only when one of them changed,
                // not on every update, since it walks the whole queue).
                let placement = match (outcome, before) {
                    (jobs::Upserted::Updated, Some(before)) => {
                        lifecycle::placement(c, &id)?.filter(|after| *after != before)
                    }
                    _ => None,
                };
                Ok((job, outcome, placement))
            },
            move |done| {
                if let Ok((job, _, placement)) = &done {
                    scheduler.hint(job.next_fire_at);
                    dispatcher.retarget(placement.iter().cloned().collect());
                }
                done
            },
        )
        .await?;
    let status = match outcome {
        jobs::Upserted::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(job)))
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    security(("admin_key" = ["read"])),
    params(("id" = String, Path, description = "The job's id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")),
    responses(
        (status = 200, description = "The job", body = sundial_proto::Job),
        (status = 404, description = "No such job", body = sundial_proto::ErrorBody),
    )
)]
pub async fn get(
    State(store): State<Arc<Store>>,
    _: Reader,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    Ok(Json(store.read(move |c| jobs::require(c, &id)).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

pub fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid_value",
            "limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs",
    description = "Jobs, newest first.",
    security(("admin_key" = ["read"])),
    params(
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size [default: 100]"),
        ("label" = Option<Vec<String>>, Query, explode = true, description = "`key=value` job label; repeatable, all must match"),
    ),
    responses((status = 200, description = "A page of jobs", body = sundial_proto::List<sundial_proto::Job>))
)]
pub async fn list(
    State(store): State<Arc<Store>>,
    _: Reader,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<List<Job>>> {
    let (selector, rest) = label_selector(query.as_deref())?;
    let q: ListQuery = parse_query(rest.as_deref())?;
    let limit = page_limit(q.limit)?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    let (items, next) = store
        .read(move |c| jobs::list_matching(c, &selector, cursor, limit))
        .await?;
    Ok(Json(List {
        items,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// Splits the repeatable `label=k=v` parameters (all must match) off a query
/// string; returns them and the rest of the query.
fn label_selector(
    raw: Option<&str>,
) -> ApiResult<(std::collections::BTreeMap<String, String>, Option<String>)> {
    let Some(raw) = raw.filter(|q| !q.is_empty()) else {
        return Ok(Default::default());
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("query string: {e}"),
        )
    })?;
    let mut selector = std::collections::BTreeMap::new();
    let mut rest = Vec::new();
    for (k, v) in pairs {
        if k != "label" {
            rest.push((k, v));
            continue;
        }
        let (key, value) = v.split_once('=').ok_or_else(|| {
            ApiError::bad_request(
                "invalid_value",
                "label",
                format!("label {v:?} must be key=value"),
            )
        })?;
        validate::selector_label(&mut selector, key, value)
            .map_err(|m| ApiError::bad_request("invalid_value", "label", m))?;
    }
    let rest = serde_urlencoded::to_string(&rest)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.to_string()))?;
    Ok((selector, Some(rest)))
}

#[utoipa::path(
    delete, path = "/v1/jobs/{id}", tag = "jobs",
    description = "Deletes the job and its runs.",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The job's id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such job", body = sundial_proto::ErrorBody))
)]
pub async fn delete(
    State(store): State<Arc<Store>>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let deleted = audit::delete(
        &store,
        actor,
        Action::JobDelete,
        id.clone(),
        audit::job_state,
        jobs::delete,
    )
    .await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("job {id:?} not found")))
    }
}

async fn set_paused(
    store: Arc<Store>,
    scheduler: Arc<Scheduler>,
    actor: audit::Actor,
    id: String,
    paused: bool,
) -> ApiResult<Json<Job>> {
    let job = store
        .write_then(
            move |c| {
                let now = now_ms();
                let action = if paused {
                    Action::JobPause
                } else {
                    Action::JobResume
                };
                audit::around(c, now, &actor, action, &id, audit::job_state, || {
                    jobs::set_paused(c, &id, paused, now, |spec, now| {
                        Schedule::parse(&spec.schedule, &spec.timezone)
                            .ok()
                            .and_then(|s| s.next_after(now))
                    })
                })
            },
            move |done| {
                if let Ok(job) = &done {
                    scheduler.hint(job.next_fire_at);
                }
                done
            },
        )
        .await?;
    Ok(Json(job))
}

#[utoipa::path(
    post, path = "/v1/jobs/{id}/pause", tag = "jobs",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The job's id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")),
    responses((status = 200, description = "The paused job", body = sundial_proto::Job), (status = 404, description = "No such job", body = sundial_proto::ErrorBody))
)]
pub async fn pause(
    State(store): State<Arc<Store>>,
    State(scheduler): State<Arc<Scheduler>>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    set_paused(store, scheduler, actor, id, true).await
}

#[utoipa::path(
    post, path = "/v1/jobs/{id}/resume", tag = "jobs",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The job's id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")),
    responses((status = 200, description = "The resumed job", body = sundial_proto::Job), (status = 404, description = "No such job", body = sundial_proto::ErrorBody))
)]
pub async fn resume(
    State(store): State<Arc<Store>>,
    State(scheduler): State<Arc<Scheduler>>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    set_paused(store, scheduler, actor, id, false).await
}

/// Creates a manual slot now (one per live matching node for a broadcast
/// job). A manual trigger is its own slot: it never collides with a scheduled
/// one, and two triggers in one millisecond get consecutive instants.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/trigger", tag = "jobs",
    description = "Creates a manual slot now.",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The job's id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")),
    responses(
        (status = 201, description = "The new run", body = sundial_proto::Run),
        (status = 404, description = "No such job", body = sundial_proto::ErrorBody),
        (status = 409, description = "A broadcast job with no live matching node (`no_eligible_nodes`)", body = sundial_proto::ErrorBody),
    )
)]
pub async fn trigger(
    State(queue): State<Queue>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let current = {
        let id = id.clone();
        queue.store.read(move |c| jobs::require(c, &id)).await?
    };
    let now = now_ms();
    let target = &current.spec.target;
    let kind = current.spec.executor.kind();
    let nodes = lifecycle::slot_nodes(target, || {
        queue.registry.broadcast_targets(target, kind, now)
    });
    if nodes.is_empty() {
        let why = match queue.registry.live_matching(target, now) {
            0 => "none is live".to_string(),
            n => format!(
                "{n} live node(s) match its target but none allows the {kind} executor (their --allow-executors)"
            ),
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_eligible_nodes",
            format!("the job broadcasts to all matching nodes and {why}"),
        ));
    }
    let metrics = queue.metrics.clone();
    let target = Arc::new(current.spec.target.clone());
    let created = move |(_, n): &(Run, u64)| {
        metrics
            .slots_created
            .with_label_values(&[Trigger::Manual.as_str()])
            .inc_by(*n);
    };
    let (run, _) = queue
        .dispatcher
        .write_then_queue_counted(
            move |c| {
                let pk = jobs::pk_of(c, &id)?.ok_or_else(|| StoreError::NotFound {
                    kind: "job",
                    id: id.clone(),
                })?;
                let job = lifecycle::SlotJob {
                    pk,
                    target,
                    executor_kind: kind,
                };
                let (first, queued) = lifecycle::trigger_manual(c, &job, &nodes, now)?;
                // Before: no such runs; after: the runs this trigger created.
                let created: Vec<i64> = queued.iter().map(|q| q.run_id).collect();
                let runs_after = created
                    .iter()
                    .map(|r| audit::run_state(c, *r))
                    .collect::<Result<Vec<_>, _>>()?;
                let change = audit::Change {
                    action: Action::JobTrigger,
                    target: Some(&id),
                    before: None,
                    after: Some(serde_json::json!({"job": id, "runs": runs_after})),
                    detail: serde_json::json!({"runs": created}),
                };
                audit::record(c, now, &actor, &change)?;
                let run = runs::get(c, first)?.ok_or(StoreError::NotFound {
                    kind: "run",
                    id: first.to_string(),
                })?;
                let n = queued.len() as u64;
                Ok(((run, n), queued))
            },
            created,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(run)))
}

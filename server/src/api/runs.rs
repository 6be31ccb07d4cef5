//! Run endpoints: `GET /v1/runs`, `GET /v1/runs/{id}`, `POST /v1/runs/{id}/cancel`.

use super::error::{ApiError, ApiResult};
use super::extract::{run_id, Admin, Reader};
use super::jobs::page_limit;
use super::{parse_cursor, parse_query};
use crate::dispatch::Dispatcher;
use crate::store::audit::{self, Action};
use crate::store::Store;
use crate::store::{jobs, lifecycle, runs, StoreError};
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use sundial_proto::time::now_ms;
use sundial_proto::{List, Run, RunState};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    job: Option<String>,
    state: Option<String>,
    node: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    output: Option<bool>,
}

#[utoipa::path(
    get, path = "/v1/runs", tag = "runs",
    description = "Runs, newest first.",
    security(("admin_key" = ["read"])),
    params(
        ("job" = Option<String>, Query, description = "Only this job's runs"),
        ("state" = Option<sundial_proto::RunState>, Query, description = "Only runs in this state"),
        ("node" = Option<String>, Query, description = "Only runs of this node"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size [default: 100]"),
        ("output" = Option<bool>, Query, description = "`false`: each run's `output` is `null` (a list for a table; `GET /v1/runs/{id}` has it) [default: true]"),
    ),
    responses(
        (status = 200, description = "A page of runs", body = sundial_proto::List<sundial_proto::Run>),
        (status = 404, description = "Unknown job", body = sundial_proto::ErrorBody),
    )
)]
pub async fn list(
    State(store): State<Arc<Store>>,
    _: Reader,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<List<Run>>> {
    let q: RunQuery = parse_query(query.as_deref())?;
    let limit = page_limit(q.limit)?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    let state = q
        .state
        .as_deref()
        .map(str::parse::<RunState>)
        .transpose()
        .map_err(|m| ApiError::bad_request("invalid_value", "state", m))?;
    if q.node.as_deref() == Some("") {
        // Not "any node": an empty filter would match runs without one.
        return Err(ApiError::bad_request(
            "invalid_value",
            "node",
            "node must name a node",
        ));
    }
    let node = q.node;
    let job = q.job;
    let output = q.output.unwrap_or(true);
    let (items, next) = store
        .read(move |c| {
            let job_pk = match &job {
                Some(id) => Some(jobs::pk_of(c, id)?.ok_or_else(|| StoreError::NotFound {
                    kind: "job",
                    id: id.clone(),
                })?),
                None => None,
            };
            let filter = runs::Filter {
                job_pk,
                state,
                node,
                output,
            };
            runs::list(c, &filter, cursor, limit)
        })
        .await?;
    Ok(Json(List {
        items,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs",
    security(("admin_key" = ["read"])),
    params(("id" = String, Path, description = "The run's id (a positive integer)")),
    responses((status = 200, description = "The run", body = sundial_proto::Run), (status = 404, description = "No such run", body = sundial_proto::ErrorBody))
)]
pub async fn get(
    State(store): State<Arc<Store>>,
    _: Reader,
    Path(raw): Path<String>,
) -> ApiResult<Json<Run>> {
    let id = run_id(&raw)?;
    store
        .read(move |c| runs::get(c, id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("run {id} not found")))
}

/// Cancels a pending run at once; a running one is told to stop at its next
/// heartbeat. Cancelling a finished run is a conflict.
#[utoipa::path(
    post, path = "/v1/runs/{id}/cancel", tag = "runs",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The run's id (a positive integer)")),
    responses(
        (status = 200, description = "The run, cancelled (or told to stop)", body = sundial_proto::Run),
        (status = 404, description = "No such run", body = sundial_proto::ErrorBody),
        (status = 409, description = "The run already finished", body = sundial_proto::ErrorBody),
    )
)]
pub async fn cancel(
    State(dispatcher): State<Arc<Dispatcher>>,
    Admin(actor): Admin,
    Path(raw): Path<String>,
) -> ApiResult<Json<Run>> {
    let id = run_id(&raw)?;
    let run = dispatcher
        .write_then_queue(move |c| {
            let now = now_ms();
            let target = id.to_string();
            let state = |c: &rusqlite::Connection, _: &str| audit::run_state(c, id);
            audit::around(c, now, &actor, Action::RunCancel, &target, state, || {
                lifecycle::cancel(c, id, now)
            })
        })
        .await?;
    // A pending run ended: out of the queue (a broadcast run waits there
    // for its own node only).
    dispatcher.forget(&[id]);
    Ok(Json(run))
}

//! Run endpoints: `GET /v1/runs`, `GET /v1/runs/{id}`, `POST /v1/runs/{id}/cancel`.

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, Reader};
use super::jobs::page_limit;
use super::{parse_cursor, parse_query, AppState};
use crate::store::audit::{self, Action};
use crate::store::{jobs, lifecycle, runs, StoreError};
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde::Deserialize;
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
}

fn run_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::not_found(format!("run {raw:?} not found")))
}

pub async fn list(
    State(app): State<AppState>,
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
    let node = q.node;
    let job = q.job;
    let (items, next) = app
        .store
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
            };
            runs::list(c, &filter, cursor, limit)
        })
        .await?;
    Ok(Json(List {
        items,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

pub async fn get(
    State(app): State<AppState>,
    _: Reader,
    Path(raw): Path<String>,
) -> ApiResult<Json<Run>> {
    let id = run_id(&raw)?;
    app.store
        .read(move |c| runs::get(c, id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("run {id} not found")))
}

/// Cancels a pending run at once; a running one is told to stop at its next
/// heartbeat. Cancelling a finished run is a conflict.
pub async fn cancel(
    State(app): State<AppState>,
    Admin(actor): Admin,
    Path(raw): Path<String>,
) -> ApiResult<Json<Run>> {
    let id = run_id(&raw)?;
    let (run, chained) = app
        .store
        .write(move |c| {
            let now = now_ms();
            let target = id.to_string();
            let state = |c: &rusqlite::Connection, _: &str| audit::run_state(c, id);
            audit::around(c, now, &actor, Action::RunCancel, &target, state, || {
                lifecycle::cancel(c, id, now)
            })
        })
        .await?;
    app.dispatcher.enqueue(chained);
    Ok(Json(run))
}

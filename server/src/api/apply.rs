//! `POST /v1/jobs:apply`: bulk apply of job manifests with an optional prune
//! selector and a dry run, in one transaction (all or nothing). Every refused
//! document is reported with its `index` in `jobs` and the offending `field`.

use super::error::ApiError;
use super::extract::{Admin, JsonBody};
use crate::dispatch::Dispatcher;
use crate::scheduler::Scheduler;
use crate::store::apply::{self, Input};
use crate::store::audit;
use crate::store::{Store, StoreError};
use crate::validate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use sundial_proto::time::now_ms;
use sundial_proto::{Action, ApplyResponse, ErrorBody, ErrorDetail, JobManifest, Prune};

/// Largest body this route accepts: at least 128 MiB (100,000 jobs are about
/// 25 MiB of JSON), or the server's general limit when that is larger.
pub fn body_limit(max_body_bytes: usize) -> usize {
    max_body_bytes.max(128 << 20)
}

/// Most jobs one request may carry.
pub const MAX_JOBS: usize = 200_000;

/// The request as it arrives; each job is decoded on its own so its errors
/// carry its index.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApply {
    jobs: Vec<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    prune: Option<Prune>,
    #[serde(default)]
    dry_run: bool,
}

/// An API error about one document of the request.
pub struct DocError {
    index: usize,
    error: ApiError,
}

impl IntoResponse for DocError {
    fn into_response(self) -> Response {
        let e = self.error;
        let body = ErrorBody {
            error: ErrorDetail {
                code: e.code.to_string(),
                message: format!("jobs[{}]: {}", self.index, e.message),
                field: e.field,
                index: Some(self.index),
            },
        };
        (e.status, Json(body)).into_response()
    }
}

fn at(index: usize, error: ApiError) -> DocError {
    DocError { index, error }
}

fn invalid(index: usize, code: &'static str, field: Option<String>, message: String) -> DocError {
    let mut error = ApiError::new(StatusCode::BAD_REQUEST, code, message);
    error.field = field;
    at(index, error)
}

/// Decodes and validates documents `first..` of the request. Each distinct
/// (schedule, timezone) is parsed once.
fn decode_chunk(
    first: usize,
    raw: Vec<serde_json::Map<String, serde_json::Value>>,
) -> Result<Vec<Input>, DocError> {
    let mut schedules: HashMap<(String, String), crate::schedule::Schedule> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (offset, mut map) in raw.into_iter().enumerate() {
        let index = first + offset;
        let id = match map.remove("id") {
            Some(serde_json::Value::String(id)) => id,
            Some(_) => {
                return Err(invalid(
                    index,
                    "invalid_value",
                    Some("id".into()),
                    "id must be a string".into(),
                ))
            }
            None => {
                return Err(invalid(
                    index,
                    "missing_field",
                    Some("id".into()),
                    "missing field `id`".into(),
                ))
            }
        };
        validate::job_id(&id).map_err(|e| at(index, e.into()))?;
        let spec = JobManifest::spec_from_map(map).map_err(|e| {
            let code = if e.message.starts_with("unknown field") {
                "unknown_field"
            } else if e.message.starts_with("missing field") {
                "missing_field"
            } else {
                "invalid_value"
            };
            invalid(index, code, e.field.clone(), e.to_string())
        })?;
        let key = (spec.schedule.clone(), spec.timezone.clone());
        let schedule = match schedules.get(&key) {
            Some(s) => s.clone(),
            None => {
                let parsed = validate::schedule(&spec.schedule, &spec.timezone)
                    .map_err(|e| at(index, e.into()))?;
                schedules.insert(key, parsed.clone());
                parsed
            }
        };
        validate::spec_fields(&spec).map_err(|e| at(index, e.into()))?;
        out.push(Input { id, spec, schedule });
    }
    Ok(out)
}

/// Decodes and validates every document, on all cores for large requests;
/// the refused document with the lowest index is the answer.
fn decode(raw: Vec<serde_json::Map<String, serde_json::Value>>) -> Result<Vec<Input>, DocError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    let chunk = raw.len().div_ceil(threads).max(4096);
    let mut chunks = Vec::new();
    let mut rest = raw;
    let mut first = 0;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        chunks.push((first, rest));
        first += chunk;
        rest = tail;
    }
    chunks.push((first, rest));
    let results: Vec<Result<Vec<Input>, DocError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|(first, part)| scope.spawn(move || decode_chunk(first, part)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(at(
                        0,
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal",
                            "decoding failed; see the server log",
                        ),
                    ))
                })
            })
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        // Chunks are in request order, so the first error is the lowest index.
        out.extend(r?);
    }
    let mut seen = HashSet::with_capacity(out.len());
    for (index, input) in out.iter().enumerate() {
        if !seen.insert(input.id.as_str()) {
            return Err(invalid(
                index,
                "duplicate_id",
                Some("id".into()),
                format!("job {:?} appears more than once", input.id),
            ));
        }
    }
    Ok(out)
}

fn prune_selector(prune: Option<Prune>) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    let Some(prune) = prune else { return Ok(None) };
    if prune.labels.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_value",
            "prune.labels",
            "prune needs at least one label: an empty selector would delete every job",
        ));
    }
    for (k, v) in &prune.labels {
        validate::label_pair(k, v)
            .map_err(|m| ApiError::bad_request("invalid_value", "prune.labels", m))?;
    }
    Ok(Some(prune.labels))
}

#[utoipa::path(
    post, path = "/v1/jobs:apply", tag = "jobs",
    description = "Bulk apply in one transaction (all or nothing); errors carry `index` and `field`.",
    security(("admin_key" = ["admin"])),
    request_body = sundial_proto::ApplyRequest,
    responses(
        (status = 200, description = "The plan, and whether it was written", body = sundial_proto::ApplyResponse),
        (status = 404, description = "A chain names an unknown upstream job", body = sundial_proto::ErrorBody),
        (status = 409, description = "The apply conflicts with the stored jobs", body = sundial_proto::ErrorBody),
    )
)]
pub async fn apply(
    State(store): State<Arc<Store>>,
    State(scheduler): State<Arc<Scheduler>>,
    State(dispatcher): State<Arc<Dispatcher>>,
    Admin(actor): Admin,
    JsonBody(req): JsonBody<RawApply>,
) -> Result<Json<ApplyResponse>, Response> {
    if req.jobs.len() > MAX_JOBS {
        return Err(ApiError::bad_request(
            "invalid_value",
            "jobs",
            format!("at most {MAX_JOBS} jobs per request"),
        )
        .into_response());
    }
    let selector = prune_selector(req.prune).map_err(IntoResponse::into_response)?;
    let raw = req.jobs;
    // Decoding and parsing 10^5 schedules is CPU work: keep it off the runtime.
    let inputs = tokio::task::spawn_blocking(move || decode(raw))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("decoding task failed: {e}"),
            )
            .into_response()
        })?
        .map_err(IntoResponse::into_response)?;
    let dry_run = req.dry_run;
    let now = now_ms();
    let outcome = if dry_run {
        store
            .read(move |c| apply::plan_and_apply(c, &inputs, selector.as_ref(), true, now))
            .await
    } else {
        let scheduler = scheduler.clone();
        store
            .write_then(
                move |c| {
                    let outcome = apply::plan_and_apply(c, &inputs, selector.as_ref(), false, now)?;
                    record_apply(c, now, &actor, &outcome)?;
                    Ok(outcome)
                },
                move |done| {
                    if let Ok(outcome) = &done {
                        scheduler.hint(outcome.earliest_fire);
                        dispatcher.retarget(outcome.placements.clone());
                    }
                    done
                },
            )
            .await
    }
    .map_err(|e| match e {
        StoreError::InvalidDoc {
            index,
            field,
            message,
        } => invalid(index, "invalid_value", Some(field), message).into_response(),
        other => ApiError::from(other).into_response(),
    })?;
    Ok(Json(ApplyResponse {
        plan: outcome.plan,
        applied: !dry_run,
    }))
}

/// The audit row of a bulk apply: one for the whole request, with the count
/// of each action and digests of the changed jobs' specs before and after.
fn record_apply(
    c: &rusqlite::Connection,
    now: i64,
    actor: &audit::Actor,
    outcome: &apply::Outcome,
) -> Result<(), crate::store::StoreError> {
    let mut counts = [0usize; 4];
    for entry in &outcome.plan {
        counts[match entry.action {
            Action::Create => 0,
            Action::Update => 1,
            Action::Delete => 2,
            Action::Unchanged => 3,
        }] += 1;
    }
    let detail = serde_json::json!({
        "created": counts[0], "updated": counts[1],
        "deleted": counts[2], "unchanged": counts[3],
    });
    audit::record_set(c, now, actor, &outcome.before, &outcome.after, &detail)
}

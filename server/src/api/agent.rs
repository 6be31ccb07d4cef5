//! Agent endpoints (`/v1/agent/*`): join with a token, then signed
//! register, long-poll, heartbeat and (idempotent) completion.

use super::agent_auth::{refuse, Signed};
use super::error::{ApiError, ApiResult};
use super::extract::{run_id, JsonBody};
use super::limit;
use super::state::{Gate, Queue};
use crate::auth::hash_key;
use crate::metrics::Metrics;
use crate::registry::NodeInfo;
use crate::secrets::ClusterSecrets;
use crate::store::lifecycle::{self, Completion, Queued, RunCall};
use crate::store::prepared::Prepared;
use crate::store::{nodes, tokens, StoreError};
use crate::validate;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use std::sync::Arc;
use std::time::Duration;
use sundial_proto::agent::{
    CompleteBatch, CompleteBatchResponse, CompleteItemStatus, CompleteRequest, CompleteResponse,
    Credential, HeartbeatRequest, HeartbeatResponse, JoinRequest, OutputRequest, OutputResponse,
    PollRequest, PollResponse, RegisterRequest,
};
use sundial_proto::agent::{Outcome, MAX_COMPLETE_BATCH};
use sundial_proto::sign::derive_node_key;
use sundial_proto::time::now_ms;
use sundial_proto::ExecutorKind;

/// The join token scheme: `Authorization: Sundial-Join <token>`.
pub const JOIN_SCHEME: &str = "Sundial-Join ";
/// Longest long-poll the server holds.
pub const MAX_WAIT_MS: u64 = 60_000;

#[utoipa::path(
    post, path = "/v1/agent/join", tag = "agent",
    description = "Trades a join token (`Authorization: Sundial-Join <token>`) for a node credential.",
    security(("join_token" = [])),
    request_body = sundial_proto::agent::JoinRequest,
    responses((status = 201, description = "The node credential", body = sundial_proto::agent::Credential))
)]
pub async fn join(
    State(queue): State<Queue>,
    State(gate): State<Gate>,
    State(secrets): State<Arc<ClusterSecrets>>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Credential>)> {
    let source = limit::source(&extensions);
    limit::guard(&gate, limit::Kind::JoinToken, source)?;
    // The token before the body, like every other endpoint's credential.
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(JOIN_SCHEME))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            let e = refuse(&queue.metrics, "missing_join_token", None);
            limit::failed(&gate, limit::Kind::JoinToken, source, None, e)
        })?
        .to_string();
    let JsonBody(req) = JsonBody::<JoinRequest>::from_bytes(&headers, &body)?;
    validate::node_id(&req.node_id)?;
    let hash = hash_key(&token);
    let node_id = req.node_id.clone();
    let joined = req.node_id.clone();
    let registry = queue.registry.clone();
    let outcome = queue
        .store
        .write_then(
            move |c| {
                let now = now_ms();
                match tokens::consume(c, &hash, now)? {
                    Ok(()) => Ok(Some(nodes::join(c, &node_id, now)?)),
                    Err(_) => Ok(None),
                }
            },
            // The registry follows the commit even if the caller is gone.
            move |r| {
                if let Ok(Some(generation)) = &r {
                    registry.put(NodeInfo {
                        id: joined,
                        generation: *generation,
                        revoked: false,
                        labels: Default::default(),
                        executors: Vec::new(),
                        capacity: 0,
                        last_seen: now_ms(),
                    });
                }
                r
            },
        )
        .await?;
    let Some(generation) = outcome else {
        let e = refuse(&queue.metrics, "bad_join_token", Some(&req.node_id));
        let subject = format!("join:{}", limit::fingerprint(&token));
        return Err(limit::failed(
            &gate,
            limit::Kind::JoinToken,
            source,
            Some(&subject),
            e,
        ));
    };
    let key = derive_node_key(secrets.current(), &req.node_id, generation);
    tracing::info!(node = %req.node_id, generation, "node joined");
    Ok((
        StatusCode::CREATED,
        Json(Credential {
            node_id: req.node_id,
            generation,
            key: key.to_hex(),
        }),
    ))
}

#[utoipa::path(
    post, path = "/v1/agent/register", tag = "agent",
    security(("agent_hmac" = [])),
    request_body = sundial_proto::agent::RegisterRequest,
    responses((status = 200, description = "Registered", body = super::openapi::Registered))
)]
pub async fn register(
    State(queue): State<Queue>,
    signed: Signed<RegisterRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let req = signed.body;
    sundial_proto::label::check_all(&req.labels).map_err(|(k, m)| {
        let field = if k.is_empty() {
            "labels".to_string()
        } else {
            format!("labels.{k}")
        };
        ApiError::bad_request("invalid_value", &field, m)
    })?;
    if req.version.len() > 128 || req.version.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_value",
            "version",
            "version must be at most 128 bytes without control characters",
        ));
    }
    let executors: Vec<ExecutorKind> = req
        .executors
        .iter()
        .map(|e| e.parse::<ExecutorKind>())
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::bad_request("invalid_value", "executors", e))?;
    let id = signed.node.id.clone();
    let r = req.clone();
    let executors_db = executors.clone();
    let (registry, node) = (queue.registry.clone(), signed.node.id.clone());
    queue
        .store
        .write_then(
            move |c| {
                nodes::register(
                    c,
                    &id,
                    &r.labels,
                    r.capacity,
                    &executors_db,
                    &r.version,
                    now_ms(),
                )
            },
            move |done| {
                if done.is_ok() {
                    registry.update(&node, |n| {
                        n.labels = req.labels;
                        n.executors = executors;
                        n.capacity = req.capacity;
                    });
                }
                done
            },
        )
        .await?;
    tracing::info!(node = %signed.node.id, "node registered");
    // A receipt for the process's first poll to acknowledge: a lost answer
    // to that poll is then handed back like any other (crate::receipts).
    Ok(Json(serde_json::json!({
        "node_id": signed.node.id,
        "lease_ms": queue.dispatcher.lease_ms(),
        "receipt": queue.dispatcher.issue_receipt(),
    })))
}

#[utoipa::path(
    post, path = "/v1/agent/poll", tag = "agent",
    description = "Long-poll for assigned runs (at most `wait_ms`, capped at 60 s).",
    security(("agent_hmac" = [])),
    request_body = sundial_proto::agent::PollRequest,
    responses((status = 200, description = "Assigned runs (possibly none)", body = sundial_proto::agent::PollResponse))
)]
pub async fn poll(
    State(queue): State<Queue>,
    signed: Signed<PollRequest>,
) -> ApiResult<Json<PollResponse>> {
    let wait = Duration::from_millis(signed.body.wait_ms.min(MAX_WAIT_MS));
    let max = signed.body.max.clamp(1, 1000) as usize;
    // The registry holds the labels/executors the node registered; the
    // credential the request was signed with stays the poll's (a revocation
    // or a re-join since ends the poll empty, see `Dispatcher::poll`).
    let node = match queue.registry.get(&signed.node.id) {
        Some(n) if n.generation == signed.node.generation => n,
        _ => signed.node,
    };
    let ack = signed.body.ack;
    let (runs, receipt) = queue.dispatcher.poll(node, max, wait, ack).await?;
    Ok(Json(PollResponse {
        runs,
        receipt: Some(receipt),
    }))
}

/// Largest body a result or a live-output call may have: room for a run's
/// whole output ([`sundial_proto::agent::MAX_OUTPUT_BYTES`]) even when JSON
/// escapes every byte of it, or the server's general limit when larger. A
/// result refused for its size would be lost: the daemon does not send it
/// again.
pub fn body_limit(max_body_bytes: usize) -> usize {
    max_body_bytes.max(8 * sundial_proto::agent::MAX_OUTPUT_BYTES)
}

fn run_call_error(e: RunCall, id: i64) -> ApiError {
    match e {
        RunCall::Unknown => ApiError::not_found(format!("run {id} not found")),
        RunCall::NotCurrent => ApiError::new(
            StatusCode::CONFLICT,
            "stale",
            format!("run {id}: this attempt is not running on this node"),
        ),
    }
}

#[utoipa::path(
    post, path = "/v1/agent/runs/{id}/heartbeat", tag = "agent",
    security(("agent_hmac" = [])),
    params(("id" = String, Path, description = "The run's id")),
    request_body = sundial_proto::agent::HeartbeatRequest,
    responses(
        (status = 200, description = "Lease extended", body = sundial_proto::agent::HeartbeatResponse),
        (status = 404, description = "No such run", body = sundial_proto::ErrorBody),
        (status = 409, description = "The attempt is no longer this node's (`stale`)", body = sundial_proto::ErrorBody),
    )
)]
pub async fn heartbeat(
    State(queue): State<Queue>,
    Path(raw): Path<String>,
    signed: Signed<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let id = run_id(&raw)?;
    let node = signed.node.id.clone();
    let attempt = signed.body.attempt;
    let lease = queue.dispatcher.lease_ms();
    let result = queue
        .store
        .write(move |c| lifecycle::heartbeat(c, &node, id, attempt, now_ms(), lease))
        .await?;
    let (cancel, expires) = result.map_err(|e| run_call_error(e, id))?;
    Ok(Json(HeartbeatResponse {
        cancel,
        lease_expires_at: Some(expires),
    }))
}

/// Live output of a running attempt (`OutputRequest`).
#[utoipa::path(
    post, path = "/v1/agent/runs/{id}/output", tag = "agent",
    security(("agent_hmac" = [])),
    params(("id" = String, Path, description = "The run's id")),
    request_body = sundial_proto::agent::OutputRequest,
    responses(
        (status = 200, description = "Stored", body = sundial_proto::agent::OutputResponse),
        (status = 404, description = "No such run", body = sundial_proto::ErrorBody),
        (status = 409, description = "The attempt is no longer this node's (`stale`)", body = sundial_proto::ErrorBody),
    )
)]
pub async fn output(
    State(queue): State<Queue>,
    Path(raw): Path<String>,
    signed: Signed<OutputRequest>,
) -> ApiResult<Json<OutputResponse>> {
    let id = run_id(&raw)?;
    let node = signed.node.id.clone();
    let req = signed.body;
    let stored = queue
        .store
        .write(move |c| lifecycle::append_output(c, &node, id, req.attempt, req.offset, &req.chunk))
        .await?
        .map_err(|e| run_call_error(e, id))?;
    Ok(Json(OutputResponse { stored }))
}

#[utoipa::path(
    post, path = "/v1/agent/runs/{id}/complete", tag = "agent",
    description = "Records an attempt's result (idempotent).",
    security(("agent_hmac" = [])),
    params(("id" = String, Path, description = "The run's id")),
    request_body = sundial_proto::agent::CompleteRequest,
    responses(
        (status = 200, description = "`recorded`, `duplicate` or `stale`", body = sundial_proto::agent::CompleteResponse),
        (status = 404, description = "No such run", body = sundial_proto::ErrorBody),
        (status = 409, description = "The attempt is not running on this node", body = sundial_proto::ErrorBody),
    )
)]
pub async fn complete(
    State(queue): State<Queue>,
    Path(raw): Path<String>,
    signed: Signed<CompleteRequest>,
) -> ApiResult<Json<CompleteResponse>> {
    let id = run_id(&raw)?;
    let node = signed.node.id.clone();
    let mut req = signed.body;
    req.bound();
    let outcome = req.outcome;
    let metrics = queue.metrics.clone();
    let result = queue
        .dispatcher
        .write_then_queue_counted(
            move |c| {
                let mut r = lifecycle::complete(&mut Prepared::new(c), &node, id, &req, now_ms())?;
                let requeue = take_requeue(&mut r);
                Ok((r, requeue))
            },
            move |r| {
                if let Ok(c) = r {
                    count(&metrics, outcome, c);
                }
            },
        )
        .await?
        .map_err(|e| run_call_error(e, id))?;
    if let Completion::Recorded { state, .. } = &result {
        tracing::debug!(run = id, %state, "result recorded");
    }
    Ok(Json(CompleteResponse {
        status: status(&result).to_string(),
    }))
}

/// The runs a recorded completion leaves to queue (a retry, runs chained
/// to the slot that ended), taken out for the dispatcher.
fn take_requeue(r: &mut Result<Completion, RunCall>) -> Vec<Queued> {
    match r {
        Ok(Completion::Recorded { requeue, .. }) => std::mem::take(requeue),
        _ => Vec::new(),
    }
}

/// A completion's wire status.
fn status(c: &Completion) -> &'static str {
    match c {
        Completion::Recorded { .. } => "recorded",
        Completion::Duplicate => "duplicate",
        Completion::Stale => "stale",
    }
}

/// Counts a recorded completion in `runs_completed_total` (called once its
/// write has committed, whether or not the daemon still waits).
fn count(metrics: &Metrics, outcome: Outcome, c: &Completion) {
    if let Completion::Recorded { .. } = c {
        metrics
            .runs_completed
            .with_label_values(&[outcome_label(outcome)])
            .inc();
    }
}

/// `POST /v1/agent/complete`: several results in one signed request and one
/// transaction; each is handled as `/runs/{id}/complete` would handle it,
/// and answered with its own status.
#[utoipa::path(
    post, path = "/v1/agent/complete", tag = "agent",
    description = "Records several attempts' results in one transaction (each idempotent); one status per result, in order.",
    security(("agent_hmac" = [])),
    request_body = sundial_proto::agent::CompleteBatch,
    responses(
        (status = 200, description = "One status per result: `recorded`, `duplicate`, `stale` or `not_found`", body = sundial_proto::agent::CompleteBatchResponse),
    )
)]
pub async fn complete_many(
    State(queue): State<Queue>,
    signed: Signed<CompleteBatch>,
) -> ApiResult<Json<CompleteBatchResponse>> {
    let mut results = signed.body.results;
    for item in &mut results {
        item.result.bound();
    }
    if results.len() > MAX_COMPLETE_BATCH {
        return Err(ApiError::bad_request(
            "too_many_results",
            "results",
            format!(
                "{} results in one request; at most {MAX_COMPLETE_BATCH}",
                results.len()
            ),
        ));
    }
    let node = signed.node.id.clone();
    let metrics = queue.metrics.clone();
    let answers = queue
        .dispatcher
        .write_then_queue_counted(
            move |c| {
                let now = now_ms();
                let mut requeue = Vec::new();
                // The batch's statements are prepared once for all its results.
                let mut p = Prepared::new(c);
                let answers = results
                    .iter()
                    .map(|item| {
                        let mut r =
                            lifecycle::complete(&mut p, &node, item.run_id, &item.result, now)?;
                        requeue.append(&mut take_requeue(&mut r));
                        Ok((item.run_id, item.result.outcome, r))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok((answers, requeue))
            },
            move |answers: &Vec<(i64, Outcome, Result<Completion, RunCall>)>| {
                for (_, outcome, r) in answers {
                    if let Ok(c) = r {
                        count(&metrics, *outcome, c);
                    }
                }
            },
        )
        .await?;
    let results = answers
        .into_iter()
        .map(|(run_id, _, r)| {
            let (status, message) = match r {
                Ok(c) => (status(&c), None),
                Err(RunCall::Unknown) => ("not_found", None),
                Err(RunCall::NotCurrent) => (
                    "stale",
                    Some("this attempt is not running on this node".to_string()),
                ),
            };
            CompleteItemStatus {
                run_id,
                status: status.to_string(),
                message,
            }
        })
        .collect();
    Ok(Json(CompleteBatchResponse { results }))
}

/// The `outcome` label of `runs_completed_total`.
fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::TimedOut => "timedout",
        Outcome::Cancelled => "cancelled",
        Outcome::HandedBack => "handedback",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::Dispatcher;
    use crate::loops::Loops;
    use crate::registry::Registry;
    use crate::store::test_support::{hold_writer, one_slot, result_of, slot_job, temp_store};
    use futures_util::FutureExt;
    use sundial_proto::agent::CompleteItem;
    use sundial_proto::{ExecutorKind, JobSpec};
    use tokio_util::sync::CancellationToken;

    fn queue() -> (tempfile::TempDir, Queue) {
        let (dir, store) = temp_store();
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::default());
        let dispatcher = Arc::new(Dispatcher::new(
            store.clone(),
            metrics.clone(),
            registry.clone(),
            Arc::new(Loops::new(metrics.clone())),
            30_000,
            CancellationToken::new(),
        ));
        let queue = Queue {
            store,
            dispatcher,
            registry,
            metrics,
        };
        (dir, queue)
    }

    fn signed<T>(body: T) -> Signed<T> {
        let node = Arc::new(NodeInfo {
            id: "n1".into(),
            generation: 1,
            revoked: false,
            labels: Default::default(),
            executors: vec![ExecutorKind::Exec],
            capacity: 10,
            last_seen: 0,
        });
        Signed { node, body }
    }

    #[tokio::test]
    async fn a_result_whose_daemon_hung_up_is_recorded_and_counted() {
        let (_dir, q) = queue();
        let spec: JobSpec = serde_json::from_str(
            r#"{"schedule":"@hourly","concurrency":"allow","executor":{"type":"exec","argv":["true"]}}"#,
        )
        .unwrap();
        let ids: Vec<i64> = q
            .store
            .write(move |c| {
                let job = slot_job(c, "j", &spec);
                let slots: Vec<Queued> = (1..=3).map(|i| one_slot(c, &job, i * 1_000)).collect();
                let a = lifecycle::assign(c, "n1", &slots, 3_000, 30_000, 0)?;
                Ok(a.runs.iter().map(|r| r.run_id).collect())
            })
            .await
            .unwrap();
        assert_eq!(ids.len(), 3);
        // Both routes wait for the database, and both daemons hang up
        // before the answer: the handlers' futures are dropped.
        let release = hold_writer(&q.store);
        let one = complete(
            State(q.clone()),
            Path(ids[0].to_string()),
            signed(result_of(Outcome::Succeeded, 1)),
        );
        assert!(one.now_or_never().is_none());
        let items = vec![
            CompleteItem {
                run_id: ids[1],
                result: result_of(Outcome::Succeeded, 1),
            },
            CompleteItem {
                run_id: ids[2],
                result: result_of(Outcome::Failed, 1),
            },
        ];
        let many = complete_many(State(q.clone()), signed(CompleteBatch { results: items }));
        assert!(many.now_or_never().is_none());
        drop(release);
        // The writer answers in order: once this write is back, theirs
        // have committed and their follow-ups have run.
        q.store.write(|_| Ok(())).await.unwrap();
        let counted = |o: &str| q.metrics.runs_completed.with_label_values(&[o]).get();
        assert_eq!((counted("succeeded"), counted("failed")), (2, 1));
        let states: Vec<String> = q
            .store
            .read(move |c| {
                let mut st = c.prepare("SELECT state FROM runs ORDER BY id")?;
                let rows = st.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(states, ["succeeded", "succeeded", "failed"]);
    }
}

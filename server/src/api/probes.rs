//! Probes and status: `GET /healthz`, `GET /readyz`, `GET /metrics`,
//! `GET /v1/ha/primary` (the HAProxy check) and `GET /v1/ha/status`.

use super::error::ApiResult;
use super::extract::Reader;
use super::state::Health;
use crate::dispatch::Dispatcher;
use crate::ha::{Role, RoleCell};
use crate::metrics::Metrics;
use crate::store::{self, events, jobs, litestream, runs, webhooks, Store};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use std::sync::Arc;
use sundial_proto::time::{format_ms, now_ms};
use sundial_proto::RunState;

/// Liveness: the process answers.
#[utoipa::path(
    get, path = "/healthz", tag = "probes",
    description = "Liveness: the process answers. No key needed.",
    responses((status = 200, description = "The process runs", body = super::openapi::Health))
)]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Readiness: the database answers a query, the role is known, and on the
/// primary neither the scheduler nor the lease reaper has been failing for
/// longer than `--stall-after`.
#[utoipa::path(
    get, path = "/readyz", tag = "probes",
    description = "Readiness: the database answers and the role is known (and on the primary no background loop has stalled). No key needed.",
    responses(
        (status = 200, description = "Ready", body = super::openapi::Ready),
        (status = 503, description = "Not ready", body = super::openapi::Unready),
    )
)]
pub async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let role = health.ha.role();
    let unavailable = |error: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "role": role.as_str(),
                "error": error,
                "loops": health.loops.statuses(),
            })),
        )
    };
    match health.store.read(store::epoch).await {
        Ok(_) if role == Role::Unknown => unavailable("role not known yet".into()),
        Ok(epoch) => {
            let stalled = if role == Role::Primary {
                health.loops.stalled(std::time::Duration::from_millis(
                    health.settings.stall_after.as_millis(),
                ))
            } else {
                None
            };
            match stalled {
                Some(why) => unavailable(why),
                None => (
                    StatusCode::OK,
                    Json(json!({"status": "ready", "role": role.as_str(), "epoch": epoch})),
                ),
            }
        }
        Err(e) => unavailable(e.to_string()),
    }
}

/// Prometheus text exposition; stored-data gauges are refreshed first.
#[utoipa::path(
    get, path = "/metrics", tag = "probes",
    description = "Prometheus text exposition (see docs/operations.md). No key needed.",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain"))
)]
pub async fn metrics(
    State(store): State<Arc<Store>>,
    State(metrics): State<Arc<Metrics>>,
    State(dispatcher): State<Arc<Dispatcher>>,
) -> impl IntoResponse {
    metrics
        .dispatch_oldest_wait
        .set(dispatcher.oldest_wait_ms(now_ms()) as f64 / 1000.0);
    let checkpoints = store.wal_autocheckpoint();
    let snapshot = store
        .read(move |c| {
            Ok((
                jobs::count(c)?,
                runs::count_by_state(c)?,
                store::epoch(c)?,
                events::stats(c)?,
                webhooks::min_cursor(c)?,
                litestream::checkpoint_conflict(c, checkpoints)?,
            ))
        })
        .await;
    match snapshot {
        Ok((jobs, by_state, epoch, (last_event, events), min_cursor, conflict)) => {
            metrics
                .db_litestream_checkpoint_conflict
                .set(i64::from(conflict));
            metrics.events_stored.set(events);
            metrics.events_last_id.set(last_event);
            metrics
                .webhook_backlog
                .set(min_cursor.map_or(0, |c| (last_event - c).max(0)));
            metrics.jobs.set(jobs);
            for st in RunState::ALL {
                let n = by_state
                    .iter()
                    .find(|(s, _)| *s == st)
                    .map_or(0, |(_, n)| *n);
                metrics.runs.with_label_values(&[st.as_str()]).set(n);
            }
            metrics.epoch.set(epoch);
        }
        Err(e) => tracing::warn!(error = %e, "refreshing metrics gauges"),
    }
    metrics
        .db_wal_bytes
        .set(i64::try_from(store.wal_bytes()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// 200 only on the primary (the load balancer's health check); 503 elsewhere.
#[utoipa::path(
    get, path = "/v1/ha/primary", tag = "probes",
    description = "200 only on the primary (the load balancer's health check). No key needed.",
    responses(
        (status = 200, description = "This server is the primary", body = super::openapi::HaPrimary),
        (status = 503, description = "This server is not the primary", body = super::openapi::HaPrimary),
    )
)]
pub async fn ha_primary(
    State(store): State<Arc<Store>>,
    State(ha): State<Arc<RoleCell>>,
) -> impl IntoResponse {
    let st = ha.snapshot();
    let primary = st.role == Role::Primary && store.is_writer();
    let status = if primary {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // The cluster's epoch, as `/readyz` and `/v1/ha/status` show it (a
    // replica's own last term may be long past, or none).
    let epoch = store.read(store::epoch).await.unwrap_or(st.epoch);
    (
        status,
        Json(json!({"primary": primary, "role": st.role.as_str(), "epoch": epoch})),
    )
}

/// Role, epoch, primary and since when.
#[utoipa::path(
    get, path = "/v1/ha/status", tag = "probes",
    security(("admin_key" = ["read"])),
    responses((status = 200, description = "Mode, role, epoch and primary", body = super::openapi::HaStatus))
)]
pub async fn ha_status(State(health): State<Health>, _: Reader) -> ApiResult<impl IntoResponse> {
    let st = health.ha.snapshot();
    let stored_epoch = health.store.read(store::epoch).await.ok();
    Ok(Json(json!({
        "mode": health.settings.ha.mode(),
        "role": st.role.as_str(),
        "epoch": stored_epoch.unwrap_or(st.epoch),
        "term_epoch": st.epoch,
        "primary": st.primary_host,
        "primary_url": st.primary_url,
        "since": format_ms(st.since),
    })))
}

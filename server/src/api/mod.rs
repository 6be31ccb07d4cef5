//! The HTTP API: routing, request metrics and the helpers the endpoint
//! modules share; [`state`] holds the server state ([`App`]) and the pieces
//! and bundles handlers extract from it. One module per resource: [`jobs`], [`runs`],
//! [`keys`], [`nodes`] (and join tokens), [`events`], [`webhooks`], [`preview`], [`probes`]; the agent
//! protocol in [`agent`] with its request signing check in [`agent_auth`];
//! [`extract`] (admin/read key, JSON bodies), [`error`] (the JSON error
//! shape), [`forward`] (a replica's forwarding to the primary) and
//! [`overload`] (concurrency budgets, body and handler timeouts).
//! [`openapi`] is the OpenAPI document of the whole JSON API; [`reject`]
//! gives axum's own plain-text refusals the JSON error shape.

pub mod agent;
pub mod agent_auth;
pub mod apply;
pub mod audit;
pub mod error;
pub mod events;
pub mod extract;
pub mod forward;
pub mod jobs;
pub mod keys;
pub mod limit;
pub mod nodes;
pub mod openapi;
pub mod origin;
pub mod output;
pub mod overload;
pub mod preview;
pub mod probes;
pub mod reject;
pub mod runs;
pub mod state;
pub mod webhooks;

use crate::metrics::Metrics;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::{ApiError, ApiResult};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Instant;

pub use state::{App, AppState};

/// Parses a query string into `T`, naming the bad parameter on error.
pub fn parse_query<T: DeserializeOwned + Default>(raw: Option<&str>) -> ApiResult<T> {
    match raw {
        None | Some("") => Ok(T::default()),
        Some(q) => serde_urlencoded::from_str(q).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("query string: {e}"),
            )
        }),
    }
}

/// Cursors are opaque to clients; today they are the last row's key.
pub fn parse_cursor(raw: Option<&str>) -> ApiResult<Option<i64>> {
    match raw {
        None | Some("") => Ok(None),
        Some(c) => c.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor",
                format!("cursor {c:?} is not valid"),
            )
        }),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    if uri.path() == "/ui" || uri.path().starts_with("/ui/") {
        return crate::ui::method_not_allowed();
    }
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
    .into_response()
}

/// Counts and times every request by route template and status.
async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    metrics
        .http_requests
        .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
        .inc();
    metrics
        .http_seconds
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the server log",
    )
    .into_response()
}

/// Builds the router with every endpoint.
pub fn router(app: AppState) -> Router {
    let limit = app.settings.max_body_bytes;
    // Endpoints that take no query parameters refuse one (`invalid_query`),
    // as those that take some refuse an unknown one.
    let without_query = Router::new()
        .route("/v1/ha/primary", get(probes::ha_primary))
        .route("/v1/ha/status", get(probes::ha_status))
        .route(
            "/v1/jobs:apply",
            post(apply::apply).layer(DefaultBodyLimit::max(apply::body_limit(limit))),
        )
        .route(
            "/v1/jobs/{id}",
            get(jobs::get).put(jobs::put).delete(jobs::delete),
        )
        .route("/v1/jobs/{id}/pause", post(jobs::pause))
        .route("/v1/jobs/{id}/resume", post(jobs::resume))
        .route("/v1/jobs/{id}/trigger", post(jobs::trigger))
        .route("/v1/runs/{id}", get(runs::get))
        .route("/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route("/v1/webhooks/{id}/test", post(webhooks::test))
        .route("/v1/api-keys", get(keys::list).post(keys::create))
        .route("/v1/api-keys/{id}", axum::routing::delete(keys::delete))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/nodes/{id}", get(nodes::get).delete(nodes::revoke))
        .route(
            "/v1/join-tokens",
            get(nodes::list_tokens).post(nodes::create_token),
        )
        .route(
            "/v1/join-tokens/{id}",
            axum::routing::delete(nodes::delete_token),
        )
        .route("/v1/agent/join", post(agent::join))
        .route("/v1/agent/register", post(agent::register))
        .route("/v1/agent/poll", post(agent::poll))
        .route("/v1/agent/runs/{id}/heartbeat", post(agent::heartbeat))
        .route(
            "/v1/agent/runs/{id}/complete",
            post(agent::complete).layer(DefaultBodyLimit::max(agent::body_limit(limit))),
        )
        .route(
            "/v1/agent/runs/{id}/output",
            post(agent::output).layer(DefaultBodyLimit::max(agent::body_limit(limit))),
        )
        .route(
            "/v1/agent/complete",
            post(agent::complete_many).layer(DefaultBodyLimit::max(agent::body_limit(limit))),
        )
        .route_layer(middleware::from_fn(reject::no_query));
    Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/runs", get(runs::list))
        .route("/v1/runs/{id}/output", get(output::output))
        .route("/v1/schedule/preview", get(preview::preview))
        .route("/v1/events", get(events::list))
        .route("/v1/events/stream", get(events::stream))
        .route("/v1/audit", get(audit::list))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/openapi.json", get(openapi::serve))
        .merge(without_query)
        .merge(crate::ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(reject::json_errors))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(app.clone(), forward::layer))
        .layer(middleware::from_fn_with_state(
            overload::Guard::new(app.settings.limits, app.metrics.clone()),
            overload::layer,
        ))
        .layer(middleware::from_fn_with_state(app.metrics.clone(), track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(app)
}

//! Replica request forwarding. A replica serves reads itself; admin writes
//! and every agent call (long-polls included) go to the primary, unchanged —
//! the agent's signature covers method, path and body, so it verifies there.
//! With no known primary the answer is `503` with `Retry-After`. The
//! client's address goes along, signed with the cluster secret
//! ([`super::origin`]), so the primary's audit log records it.

use super::error::ApiError;
use super::AppState;
use crate::ha::Role;
use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Marks a forwarded request so it is never forwarded twice.
pub const FORWARDED: &str = "x-sundial-forwarded";

pub struct Forwarder {
    http: reqwest::Client,
}

impl Forwarder {
    pub fn new() -> anyhow::Result<Forwarder> {
        Ok(Forwarder {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                // A proxy passes redirects back (the console answers POSTs with 303).
                .redirect(reqwest::redirect::Policy::none())
                // Long-polls wait up to 60 s on the primary.
                .timeout(Duration::from_secs(90))
                .build()?,
        })
    }
}

/// Requests a replica must not answer itself.
fn must_forward(method: &Method, path: &str) -> bool {
    if path.starts_with("/v1/agent/") {
        return true;
    }
    // Console actions (sign-in, sign-out, job/node/key actions) write too.
    if path.starts_with("/ui/") && *method == Method::POST {
        return true;
    }
    path.starts_with("/v1/")
        && !path.starts_with("/v1/ha/")
        && !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn unavailable(message: &str) -> Response {
    let mut resp =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_primary", message).into_response();
    resp.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    resp
}

/// Middleware: on a replica, sends writes to the primary. Takes the whole
/// state: it reads the role, the metrics, the secrets (to vouch for the
/// client), the forwarder and the body-size settings.
pub async fn layer(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if !must_forward(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let state = app.ha_state();
    if state.role == Role::Primary {
        return next.run(req).await;
    }
    if req.headers().contains_key(FORWARDED) {
        app.metrics.forwarded.with_label_values(&["loop"]).inc();
        return unavailable("this server is not the primary (request was already forwarded)");
    }
    let Some(primary) = state.primary_url else {
        app.metrics
            .forwarded
            .with_label_values(&["no_primary"])
            .inc();
        return unavailable("no primary is known right now; retry shortly");
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let client = super::limit::source(req.extensions());
    let (parts, body) = req.into_parts();
    let limit = if parts.uri.path() == "/v1/jobs:apply" {
        super::apply::body_limit(app.settings.max_body_bytes)
    } else if parts.uri.path().starts_with("/v1/agent/") {
        super::agent::body_limit(app.settings.max_body_bytes)
    } else {
        app.settings.max_body_bytes
    };
    let body = match to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is larger than the server accepts",
            )
            .into_response();
        }
    };
    let mut out = app
        .forwarder
        .http
        .request(parts.method.clone(), format!("{primary}{path}"))
        .header(FORWARDED, "1")
        .body(body);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding"
        ) && name.as_str() != super::origin::FORWARDED_FOR
        {
            out = out.header(name, value);
        }
    }
    if let Some(client) = client {
        let now_s = sundial_proto::time::now_ms() / 1000;
        let vouched =
            super::origin::vouch(&app.secrets, client, &parts.method, &parts.headers, now_s);
        out = out.header(super::origin::FORWARDED_FOR, vouched);
    }
    match out.send().await {
        Ok(resp) => {
            app.metrics.forwarded.with_label_values(&["ok"]).inc();
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = status;
            for (name, value) in &headers {
                if !matches!(
                    name.as_str(),
                    "connection" | "content-length" | "transfer-encoding"
                ) {
                    // append: a response may carry several Set-Cookie headers.
                    r.headers_mut().append(name, value.clone());
                }
            }
            r
        }
        Err(e) => {
            app.metrics.forwarded.with_label_values(&["error"]).inc();
            tracing::warn!(error = %e, %primary, "forwarding to the primary failed");
            unavailable("the primary could not be reached; retry shortly")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_forwarded() {
        assert!(must_forward(&Method::POST, "/v1/agent/poll"));
        assert!(must_forward(&Method::PUT, "/v1/jobs/x"));
        assert!(must_forward(&Method::DELETE, "/v1/nodes/n"));
        assert!(!must_forward(&Method::GET, "/v1/jobs"));
        assert!(!must_forward(&Method::GET, "/v1/ha/primary"));
        assert!(!must_forward(&Method::GET, "/metrics"));
        assert!(!must_forward(&Method::POST, "/healthz"));
        assert!(must_forward(&Method::POST, "/ui/login"));
        assert!(!must_forward(&Method::GET, "/ui/jobs"));
    }
}

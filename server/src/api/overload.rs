//! Request-level overload protection (see [`crate::overload`]): two
//! concurrency budgets — the agent API (`/v1/agent/*`) and everything else —
//! so a flood on the admin/read API cannot starve the daemons; a request
//! whose budget is full is answered `503 overloaded` with `Retry-After: 1`
//! at once, never queued. Probes (`/healthz`, `/readyz`, `/metrics`,
//! `/v1/ha/*`) take no budget.
//!
//! Also the request timeouts: the body must arrive within
//! `body_read_timeout` (else `408 request_timeout`), and the handler must
//! produce its response within `request_timeout` (else `503 timeout`). The
//! agent long-poll gets its longest wait on top and takes no budget (the
//! connection cap bounds it: one idle poll per connected daemon); streaming responses (event
//! stream, followed output) are bounded only until their head is produced.

use super::error::ApiError;
use crate::metrics::Metrics;
use crate::overload::Limits;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Which budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// `/v1/agent/*`.
    Agent,
    /// The admin/read API and the console.
    Api,
}

impl Budget {
    fn as_str(self) -> &'static str {
        match self {
            Budget::Agent => "agent",
            Budget::Api => "api",
        }
    }
}

/// What a path is, for the budgets and the handler timeout.
fn classify(path: &str) -> Option<Budget> {
    if matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/v1/ha/") {
        return None;
    }
    if path.starts_with("/v1/agent/") {
        return Some(Budget::Agent);
    }
    Some(Budget::Api)
}

/// The budgets and limits, shared by every request.
pub struct Guard {
    agent: Arc<Semaphore>,
    api: Arc<Semaphore>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Guard {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Guard> {
        Arc::new(Guard {
            agent: Arc::new(Semaphore::new(limits.max_concurrent_agent_requests)),
            api: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            limits,
            metrics,
        })
    }

    fn budget(&self, b: Budget) -> &Arc<Semaphore> {
        match b {
            Budget::Agent => &self.agent,
            Budget::Api => &self.api,
        }
    }
}

/// A request's hold on its budget; counted in the in-flight gauge.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The body read deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body read timeout")]
struct BodyTimedOut;

/// Replaces the body with one that fails once `within` has passed, and
/// reports whether it did.
fn deadline_body(req: Request, within: Duration) -> (Request, Arc<AtomicBool>) {
    let expired = Arc::new(AtomicBool::new(false));
    let flag = expired.clone();
    let deadline = tokio::time::Instant::now() + within;
    let (parts, body) = req.into_parts();
    let stream = futures_util::stream::unfold(Some(body.into_data_stream()), move |state| {
        let flag = flag.clone();
        async move {
            let mut s = state?;
            match tokio::time::timeout_at(deadline, s.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok::<Bytes, axum::BoxError>(chunk), Some(s))),
                Ok(Some(Err(e))) => Some((Err(e.into()), None)),
                Ok(None) => None,
                Err(_) => {
                    flag.store(true, Ordering::Relaxed);
                    Some((Err(BodyTimedOut.into()), None))
                }
            }
        }
    });
    (
        Request::from_parts(parts, Body::from_stream(stream)),
        expired,
    )
}

/// True unless the request is known to carry no body (HTTP/1 without a
/// length or chunking, HTTP/2 with the stream ended).
fn has_body(req: &Request) -> bool {
    !req.body().is_end_stream()
}

fn overloaded(guard: &Guard, budget: Budget) -> Response {
    guard
        .metrics
        .overload
        .shed
        .with_label_values(&[budget.as_str()])
        .inc();
    tracing::debug!(
        budget = budget.as_str(),
        "request shed: concurrency budget full"
    );
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!(
            "the server is handling as many {} requests as it allows; retry shortly",
            budget.as_str()
        ),
    )
    .retry_after(1)
    .into_response()
}

fn timed_out(guard: &Guard, kind: &'static str) -> Response {
    guard
        .metrics
        .overload
        .timeouts
        .with_label_values(&[kind])
        .inc();
    let mut resp = if kind == "body" {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms",
                guard.limits.body_read_timeout.as_millis()
            ),
        )
        .into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {} ms; it may or may not have taken effect",
                guard.limits.request_timeout.as_millis()
            ),
        )
        .retry_after(1)
        .into_response()
    };
    // A body left half read cannot be resynchronised: end the connection.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The middleware: budget, body deadline, handler deadline.
pub async fn layer(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let Some(budget) = classify(req.uri().path()) else {
        return next.run(req).await;
    };
    // A long-poll mostly waits, idle: one per connected daemon (10,000
    // daemons hold 10,000). It is bounded by the connection cap, not by the
    // agent budget, which is for the calls that work (register, heartbeat,
    // complete, output).
    let long_poll = req.uri().path() == "/v1/agent/poll";
    let _in_flight = if long_poll {
        None
    } else {
        let Ok(permit) = guard.budget(budget).clone().try_acquire_owned() else {
            return overloaded(&guard, budget);
        };
        let gauge = guard
            .metrics
            .overload
            .in_flight
            .with_label_values(&[budget.as_str()]);
        gauge.inc();
        Some(InFlight {
            _permit: permit,
            gauge,
        })
    };
    let mut within = guard.limits.request_timeout;
    if long_poll {
        within += Duration::from_millis(super::agent::MAX_WAIT_MS);
    }
    let (req, expired) = if has_body(&req) {
        let (r, e) = deadline_body(req, guard.limits.body_read_timeout);
        (r, Some(e))
    } else {
        (req, None)
    };
    let response = tokio::time::timeout(within, next.run(req)).await;
    if expired.is_some_and(|e| e.load(Ordering::Relaxed)) {
        return timed_out(&guard, "body");
    }
    match response {
        Ok(r) => r,
        Err(_) => timed_out(&guard, "handler"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::middleware;
    use axum::routing::{get, post};
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn limits(request_ms: u64, budget: usize) -> Limits {
        Limits {
            request_timeout: Duration::from_millis(request_ms),
            body_read_timeout: Duration::from_millis(request_ms),
            max_concurrent_requests: budget,
            ..Limits::default()
        }
    }

    /// A router with a handler taking 300 ms on an admin path and on the
    /// long-poll path, and a response streaming for 300 ms.
    fn app(l: Limits) -> Router {
        async fn slow() -> &'static str {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "done"
        }
        async fn streaming() -> Body {
            let chunks = futures_util::stream::iter(0..3).then(|i| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, std::convert::Infallible>(Bytes::from(format!("{i}")))
            });
            Body::from_stream(chunks)
        }
        Router::new()
            .route("/v1/jobs", get(slow))
            .route("/v1/agent/poll", post(slow))
            .route("/v1/events/stream", get(streaming))
            .layer(middleware::from_fn_with_state(
                Guard::new(l, Arc::new(Metrics::new())),
                layer,
            ))
    }

    async fn call(app: Router, method: &str, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn slow_handler_gets_503_timeout_but_long_poll_and_streams_do_not() {
        let (status, body) = call(app(limits(100, 8)), "GET", "/v1/jobs").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"timeout\""), "{body}");
        let (status, body) = call(app(limits(100, 8)), "POST", "/v1/agent/poll").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "done"));
        let (status, body) = call(app(limits(100, 8)), "GET", "/v1/events/stream").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "012"));
    }

    #[tokio::test]
    async fn a_full_budget_sheds_at_once() {
        let app = app(limits(5_000, 1));
        let first = tokio::spawn(call(app.clone(), "GET", "/v1/jobs"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let req = Request::builder()
            .uri("/v1/jobs")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert!(started.elapsed() < Duration::from_millis(200));
        // The agent budget is separate.
        let (status, _) = call(app.clone(), "POST", "/v1/agent/poll").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first.await.unwrap().0, StatusCode::OK);
    }

    #[tokio::test]
    async fn long_polls_take_no_agent_budget() {
        let app = app(Limits {
            max_concurrent_agent_requests: 1,
            ..limits(5_000, 1)
        });
        // Many idle long-polls at once (one per daemon) all proceed with an
        // agent budget of 1.
        let polls: Vec<_> = (0..5)
            .map(|_| tokio::spawn(call(app.clone(), "POST", "/v1/agent/poll")))
            .collect();
        for p in polls {
            assert_eq!(p.await.unwrap().0, StatusCode::OK);
        }
    }

    #[test]
    fn budgets_by_path() {
        assert_eq!(classify("/healthz"), None);
        assert_eq!(classify("/v1/ha/status"), None);
        assert_eq!(classify("/metrics"), None);
        assert_eq!(classify("/v1/agent/poll"), Some(Budget::Agent));
        assert_eq!(classify("/v1/jobs"), Some(Budget::Api));
        assert_eq!(classify("/ui/"), Some(Budget::Api));
    }
}

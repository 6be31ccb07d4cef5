//! The JSON error shape for refusals axum makes itself. A few of axum's
//! extractors refuse a request before a handler runs, with a `text/plain`
//! body: `Path` does when a percent-encoded path segment is not UTF-8
//! (`GET /v1/jobs/%FF` → `400 Invalid URL: Invalid UTF-8 in `id``). This
//! layer turns any such plain-text refusal of the JSON API into
//! `{"error": {"code", "message"}}` with the same status, so every refusal
//! has the documented shape. The console (`/ui/`) answers HTML and is left
//! alone, as are successful answers (`/metrics` and run output are text).

use super::error::ApiError;
use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Longest plain-text refusal body carried over into the message.
const MAX_MESSAGE: usize = 1024;

/// The code of a refusal axum made, by status.
fn code_for(status: StatusCode, message: &str) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST if message.starts_with("Invalid URL") => "invalid_id",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "invalid_value",
    }
}

fn is_plain_text(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"))
}

/// Middleware: rewrites plain-text 4xx/5xx answers outside `/ui` into the
/// JSON error shape.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let console = req.uri().path().starts_with("/ui");
    let response = next.run(req).await;
    let status = response.status();
    if console || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if !is_plain_text(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match to_bytes(body, MAX_MESSAGE * 4).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let mut message: String = text.trim().chars().take(MAX_MESSAGE).collect();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string();
    }
    let code = code_for(status, &message);
    let mut error = ApiError::new(status, code, message);
    if code == "invalid_id" {
        error.field = Some("id".to_string());
    }
    let mut rewritten = error.into_response();
    if let Some(retry) = parts.headers.get(header::RETRY_AFTER) {
        rewritten
            .headers_mut()
            .insert(header::RETRY_AFTER, retry.clone());
    }
    rewritten
}

/// Refuses a query string on an endpoint that takes no parameters: an
/// unknown parameter is an error everywhere, not only where some are known.
pub async fn no_query(req: Request, next: Next) -> Response {
    match req.uri().query() {
        Some(q) if !q.is_empty() => {
            let name = q.split('&').next().unwrap_or(q);
            let name = name.split('=').next().unwrap_or(name);
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("unknown query parameter {name:?}: this endpoint takes none"),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Path;
    use axum::routing::get;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route(
                "/v1/jobs/{id}",
                get(|Path(id): Path<String>| async move { id }),
            )
            .route(
                "/metrics",
                get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "ok") }),
            )
            .route(
                "/ui/x",
                get(|| async { (StatusCode::BAD_REQUEST, "console page") }),
            )
            .layer(axum::middleware::from_fn(json_errors))
    }

    async fn call(uri: &str) -> (StatusCode, String, String) {
        let resp = app()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    }

    /// Regression: `GET /v1/jobs/%FF` was a `text/plain` 400 from axum's
    /// `Path` extractor instead of the JSON error shape.
    #[tokio::test]
    async fn invalid_utf8_in_a_path_is_a_json_error() {
        let (status, ct, body) = call("/v1/jobs/%FF").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_id", "{v}");
        assert_eq!(v["error"]["field"], "id", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("UTF-8"),
            "{v}"
        );
    }

    #[tokio::test]
    async fn successes_and_the_console_are_left_alone() {
        assert_eq!(
            call("/v1/jobs/n1").await,
            (
                StatusCode::OK,
                "text/plain; charset=utf-8".into(),
                "n1".into()
            )
        );
        assert_eq!(call("/metrics").await.2, "ok");
        let (status, _, body) = call("/ui/x").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_REQUEST, "console page")
        );
    }
}

//! The API's error type: every failure becomes a status code plus the JSON
//! body `{"error": {"code", "message", "field"?}}`.

use crate::store::{StoreError, Transient};
use crate::validate::Invalid;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sundial_proto::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (on 503 and 507).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// Adds a `Retry-After` header.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            field: Some(field.to_string()),
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: e.code,
            message: e.message,
            field: Some(e.field),
            retry_after: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Invalid { field, message } => {
                ApiError::bad_request("invalid_value", &field, message)
            }
            StoreError::InvalidDoc {
                index,
                field,
                message,
            } => ApiError::bad_request(
                "invalid_value",
                &format!("jobs[{index}].{field}"),
                format!("jobs[{index}]: {message}"),
            ),
            StoreError::NotPrimary | StoreError::Fenced => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_primary",
                "this server is not the primary; retry (the load balancer routes to the primary)",
            )
            .retry_after(1),
            StoreError::Unavailable { cause, detail } => {
                tracing::warn!(%cause, %detail, "write refused: database unavailable");
                let (status, code, message) = match cause {
                    Transient::Busy => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "database_busy",
                        "the database is busy (another process holds its write lock); nothing was written, retry",
                    ),
                    Transient::DiskFull => (
                        StatusCode::INSUFFICIENT_STORAGE,
                        "disk_full",
                        "the database's disk is full; nothing was written, retry once space is freed",
                    ),
                    Transient::Io => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "database_io_error",
                        "the database hit an I/O error; nothing was written, retry",
                    ),
                };
                ApiError::new(status, code, message).retry_after(1)
            }
            StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is shutting down",
            ),
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
                index: None,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

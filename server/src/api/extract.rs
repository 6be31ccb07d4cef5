//! Request extractors with Sundial's error shapes: a JSON body that reports
//! the failing field (and refuses unknown ones), and the bearer-key checks
//! `Admin` (which also names the acting key and the request's origin, for the
//! audit log) and `Reader`; and the run id of a request path.

use super::error::ApiError;
use super::limit::{self, Kind};
use super::state::Gate;
use super::AppState;
use crate::auth::KeyCheck;
use crate::store::audit::Actor;
use crate::store::keys::{KeyRow, Scope};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

/// A JSON request body. Errors name the JSON path of the bad field.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        json_content_type(req.headers())?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "request body is larger than the server accepts",
                    )
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// A body already read (for a handler that checks a credential first).
    pub fn from_bytes(headers: &HeaderMap, bytes: &[u8]) -> Result<Self, ApiError> {
        json_content_type(headers)?;
        parse_json(bytes).map(JsonBody)
    }
}

/// A body, when its type is given, must be JSON.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let ok = ct
        .to_str()
        .map(|v| {
            let v = v.trim().to_ascii_lowercase();
            v.starts_with("application/json") || v.ends_with("+json")
        })
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request body must be JSON (Content-Type: application/json)",
        ))
    }
}

/// Decodes JSON, turning serde's error into a field-naming API error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("malformed JSON: {message}"),
            ),
            Category::Data => {
                let code = if message.starts_with("unknown field") {
                    "unknown_field"
                } else if message.starts_with("missing field") {
                    "missing_field"
                } else {
                    "invalid_value"
                };
                let field = if path == "." { String::new() } else { path };
                let shown = if field.is_empty() {
                    message
                } else {
                    format!("{field}: {message}")
                };
                ApiError {
                    status: StatusCode::BAD_REQUEST,
                    code,
                    message: shown,
                    field: (!field.is_empty()).then_some(field),
                    retry_after: None,
                }
            }
        }
    })
}

async fn scope_of(parts: &Parts, state: &AppState) -> Result<KeyRow, ApiError> {
    let source = limit::source(&parts.extensions);
    let gate = Gate::from_ref(state);
    limit::guard(&gate, Kind::ApiKey, source)?;
    let presented = presented_key(parts);
    let subject = presented
        .as_ref()
        .ok()
        .map(|k| format!("key:{}", limit::fingerprint(k)));
    let result = match presented {
        Ok(key) => match state.keys.lookup(&state.store, key).await? {
            KeyCheck::Valid(row) => Ok(row),
            KeyCheck::Expired(at) => Err(ApiError::unauthorized(format!(
                "API key expired at {}; create a new key",
                sundial_proto::time::format_ms(at)
            ))),
            KeyCheck::Unknown => Err(ApiError::unauthorized("unknown API key")),
        },
        Err(e) => Err(e),
    };
    result.map_err(|e| {
        tracing::warn!(
            source = %source.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            subject = subject.as_deref().unwrap_or("-"),
            reason = %e.message,
            "API key refused"
        );
        limit::failed(&gate, Kind::ApiKey, source, subject.as_deref(), e)
    })
}

/// The bearer key of the request, or why there is none.
fn presented_key(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <key> header"))?;
    let key = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization header must be \"Bearer <key>\""))?;
    Ok(key)
}

/// Any valid key (`admin` or `read`).
pub struct Reader;

/// A key with the `admin` scope, and who is acting (for the audit log).
pub struct Admin(pub Actor);

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        scope_of(parts, state).await.map(|_| Reader)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let row = scope_of(parts, state).await?;
        match row.scope {
            Scope::Admin => {
                let origin = super::origin::of(parts, &state.secrets);
                Ok(Admin(origin.actor(row.id, Some(row.name))))
            }
            Scope::Read => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this API key has the read scope; the request needs admin",
            )),
        }
    }
}

/// A run id from a request path: a positive integer, else `404` (no run
/// has such an id) naming what was given.
pub(crate) fn run_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::not_found(format!("run {raw:?} not found")))
}

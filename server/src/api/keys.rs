//! API key endpoints: `POST|GET /v1/api-keys`, `DELETE /v1/api-keys/{id}`.
//! The secret of a new key is in the creation response only.

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, JsonBody};
use super::AppState;
use crate::auth;
use crate::store::keys::{self, KeyInfo, Scope};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sundial_proto::time::now_ms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    scope: String,
    #[serde(default)]
    name: String,
}

pub async fn create(
    State(app): State<AppState>,
    _: Admin,
    JsonBody(req): JsonBody<NewKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let scope = Scope::parse(&req.scope).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_value",
            "scope",
            "scope must be \"admin\" or \"read\"",
        )
    })?;
    if req.name.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_value",
            "name",
            "name is longer than 256 bytes",
        ));
    }
    let key = auth::generate_key();
    let id = auth::create_key(&app.store, key.clone(), scope, req.name.clone()).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "scope": scope, "name": req.name, "key": key})),
    ))
}

pub async fn list(State(app): State<AppState>, _: Admin) -> ApiResult<Json<Value>> {
    let items: Vec<KeyInfo> = app.store.read(keys::list).await?;
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

pub async fn delete(
    State(app): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let shown = id.clone();
    let deleted = app
        .store
        .write(move |c| keys::delete(c, &id, now_ms()))
        .await?;
    app.keys.invalidate();
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("api key {shown:?} not found")))
    }
}

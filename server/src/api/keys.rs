//! API key endpoints: `POST|GET /v1/api-keys`, `DELETE /v1/api-keys/{id}`.
//! The secret of a new key is in the creation response only.

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, JsonBody};
use crate::auth;
use crate::auth::KeyCache;
use crate::store::audit::{self, Action};
use crate::store::keys::{self, KeyInfo, Scope};
use crate::store::Store;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use sundial_proto::time::now_ms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    scope: String,
    #[serde(default)]
    name: String,
    /// Lifetime from now (`"90d"`); exclusive with `expires_at`.
    #[serde(default)]
    expires_in: Option<sundial_proto::duration::Duration>,
    /// Instant the key stops working (RFC 3339); exclusive with `expires_in`.
    #[serde(default, with = "sundial_proto::time::rfc3339_opt")]
    expires_at: Option<i64>,
}

/// The key's expiry (unix ms) from `expires_in` or `expires_at`.
fn expiry(req: &NewKey, now: i64) -> ApiResult<Option<i64>> {
    match (req.expires_in, req.expires_at) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_value",
            "expires_in",
            "give expires_in or expires_at, not both",
        )),
        (Some(d), None) if d.as_millis() == 0 => Err(ApiError::bad_request(
            "invalid_value",
            "expires_in",
            "expires_in must be longer than zero",
        )),
        (Some(d), None) => Ok(Some(now.saturating_add(d.as_millis_i64()))),
        (None, Some(at)) if at <= now => Err(ApiError::bad_request(
            "invalid_value",
            "expires_at",
            "expires_at is in the past",
        )),
        (None, at) => Ok(at),
    }
}

#[utoipa::path(
    post, path = "/v1/api-keys", tag = "keys",
    security(("admin_key" = ["admin"])),
    request_body = super::openapi::NewKey,
    responses((status = 201, description = "The key, with its secret (shown this once)", body = super::openapi::CreatedKey))
)]
pub async fn create(
    State(store): State<Arc<Store>>,
    Admin(actor): Admin,
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
    let expires_at = expiry(&req, now_ms())?;
    let key = auth::generate_key();
    let hash = auth::hash_key(&key);
    let id = auth::key_id(&hash);
    let (id2, name) = (id.clone(), req.name.clone());
    store
        .write(move |c| {
            let now = now_ms();
            keys::insert(c, &id2, &hash, scope, &name, now)?;
            keys::set_expiry(c, &id2, expires_at)?;
            // The new key's id, name, scope and expiry: never its secret or hash.
            let after = audit::key_state(c, &id2)?;
            let change = audit::Change {
                action: Action::KeyCreate,
                target: Some(&id2),
                before: None,
                after,
                detail: json!({"name": name, "scope": scope.as_str(), "prefix": auth::KEY_PREFIX}),
            };
            audit::record(c, now, &actor, &change)
        })
        .await?;
    let expires = expires_at.map(sundial_proto::time::format_ms);
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": id, "scope": scope, "name": req.name, "key": key, "expires_at": expires}),
        ),
    ))
}

#[utoipa::path(
    get, path = "/v1/api-keys", tag = "keys",
    security(("admin_key" = ["admin"])),
    responses((status = 200, description = "Every key, without secrets", body = super::openapi::KeyList))
)]
pub async fn list(State(store): State<Arc<Store>>, _: Admin) -> ApiResult<Json<Value>> {
    let items: Vec<KeyInfo> = store.read(keys::list).await?;
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", tag = "keys",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such key", body = sundial_proto::ErrorBody),
        (status = 409, description = "The last admin key cannot be deleted", body = sundial_proto::ErrorBody),
    )
)]
pub async fn delete(
    State(store): State<Arc<Store>>,
    State(keys): State<Arc<KeyCache>>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    // Even if the caller is gone: a deleted key must stop working as soon
    // as the delete commits, not at the next restart.
    let deleted = audit::change_then(
        &store,
        actor,
        Action::KeyDelete,
        id.clone(),
        audit::key_state,
        keys::delete,
        move |_| keys.invalidate(),
    )
    .await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("api key {id:?} not found")))
    }
}

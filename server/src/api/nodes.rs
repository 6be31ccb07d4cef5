//! Node administration: `GET /v1/nodes`, `GET|DELETE /v1/nodes/{id}` (delete
//! revokes), and join tokens `POST|GET /v1/join-tokens`, `DELETE /v1/join-tokens/{id}`.

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, JsonBody, Reader};
use crate::auth::hash_key;
use crate::registry::Registry;
use crate::registry::LIVE_WINDOW_MS;
use crate::store::audit::{self, Action};
use crate::store::nodes::{self, Node};
use crate::store::tokens;
use crate::store::Store;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use sundial_proto::time::{format_ms, now_ms};
use sundial_proto::Duration;

/// `revoked`, `ready` (seen within the live window) or `down`.
pub(crate) fn status_of(n: &Node, now: i64) -> &'static str {
    if n.revoked {
        "revoked"
    } else if n.last_seen.is_some_and(|t| now - t <= LIVE_WINDOW_MS) {
        "ready"
    } else {
        "down"
    }
}

fn with_status(n: Node, now: i64) -> Value {
    let status = status_of(&n, now);
    let mut v = serde_json::to_value(&n).unwrap_or(Value::Null);
    v["status"] = json!(status);
    v
}

/// The node with its last contact as the in-memory registry knows it.
pub(crate) fn live_view(registry: &Registry, mut n: Node) -> Node {
    if let Some(info) = registry.get(&n.id) {
        n.last_seen = Some(n.last_seen.unwrap_or(0).max(info.last_seen)).filter(|t| *t > 0);
    }
    n
}

#[utoipa::path(
    get, path = "/v1/nodes", tag = "nodes",
    security(("admin_key" = ["read"])),
    responses((status = 200, description = "Every node", body = super::openapi::NodeList))
)]
pub async fn list(
    State(store): State<Arc<Store>>,
    State(registry): State<Arc<Registry>>,
    _: Reader,
) -> ApiResult<Json<Value>> {
    let all = store.read(nodes::list).await?;
    let now = now_ms();
    let items: Vec<Value> = all
        .into_iter()
        .map(|n| with_status(live_view(&registry, n), now))
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[utoipa::path(
    get, path = "/v1/nodes/{id}", tag = "nodes",
    security(("admin_key" = ["read"])),
    params(("id" = String, Path, description = "The node's id")),
    responses((status = 200, description = "The node", body = super::openapi::NodeView), (status = 404, description = "No such node", body = sundial_proto::ErrorBody))
)]
pub async fn get(
    State(store): State<Arc<Store>>,
    State(registry): State<Arc<Registry>>,
    _: Reader,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let shown = id.clone();
    let node = store
        .read(move |c| nodes::get(c, &id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("node {shown:?} not found")))?;
    Ok(Json(with_status(live_view(&registry, node), now_ms())))
}

/// Revokes a node: its generation is bumped, so its key stops verifying at
/// once. The node can join again with a join token (new credential).
#[utoipa::path(
    delete, path = "/v1/nodes/{id}", tag = "nodes",
    description = "Revokes the node: its credential stops working at once.",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The node's id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No such node", body = sundial_proto::ErrorBody))
)]
pub async fn revoke(
    State(store): State<Arc<Store>>,
    State(registry): State<Arc<Registry>>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let revoked = id.clone();
    // Even if the caller is gone: a revoked node must stop being let in as
    // soon as the revocation commits.
    let found = audit::change_then(
        &store,
        actor,
        Action::NodeRevoke,
        id.clone(),
        audit::node_state,
        nodes::revoke,
        move |found| {
            if found {
                // As the database: a node already revoked is left as it is.
                registry.update(&revoked, |n| {
                    if !n.revoked {
                        n.revoked = true;
                        n.generation += 1;
                    }
                });
                tracing::info!(node = %revoked, "node revoked");
            }
        },
    )
    .await?;
    if !found {
        return Err(ApiError::not_found(format!("node {id:?} not found")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default)]
    name: String,
    /// How long the token may be used to join [default: 24h].
    #[serde(default)]
    ttl: Option<Duration>,
    /// Joins allowed with it (unlimited when absent: a DaemonSet shares one token).
    #[serde(default)]
    max_uses: Option<u32>,
}

#[utoipa::path(
    post, path = "/v1/join-tokens", tag = "nodes",
    security(("admin_key" = ["admin"])),
    request_body = super::openapi::NewToken,
    responses((status = 201, description = "The token, with its secret (shown this once)", body = super::openapi::CreatedToken))
)]
pub async fn create_token(
    State(store): State<Arc<Store>>,
    Admin(actor): Admin,
    JsonBody(req): JsonBody<NewToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if req.max_uses == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_value",
            "max_uses",
            "max_uses must be at least 1",
        ));
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "sjt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_key(&token);
    let id = format!("jt_{}", hex::encode(&hash[..6]));
    let now = now_ms();
    let expires = now + req.ttl.map_or(86_400_000, |d| d.as_millis_i64());
    let (id2, name, max_uses) = (id.clone(), req.name.clone(), req.max_uses);
    store
        .write(move |c| {
            tokens::insert(c, &id2, &hash, &name, expires, max_uses, now)?;
            // The token's id, name, expiry and limit: never the token or its hash.
            let after = audit::token_state(c, &id2)?;
            let change = audit::Change {
                action: Action::TokenCreate,
                target: Some(&id2),
                before: None,
                after,
                detail: json!({"name": name, "prefix": "sjt_"}),
            };
            audit::record(c, now, &actor, &change)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "token": token, "name": req.name,
                    "expires_at": format_ms(expires), "max_uses": req.max_uses})),
    ))
}

#[utoipa::path(
    get, path = "/v1/join-tokens", tag = "nodes",
    security(("admin_key" = ["admin"])),
    responses((status = 200, description = "Every join token, without secrets", body = super::openapi::TokenList))
)]
pub async fn list_tokens(State(store): State<Arc<Store>>, _: Admin) -> ApiResult<Json<Value>> {
    let items = store.read(tokens::list).await?;
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[utoipa::path(
    delete, path = "/v1/join-tokens/{id}", tag = "nodes",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The join token's id")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such join token", body = sundial_proto::ErrorBody))
)]
pub async fn delete_token(
    State(store): State<Arc<Store>>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let deleted = audit::delete(
        &store,
        actor,
        Action::TokenDelete,
        id.clone(),
        audit::token_state,
        tokens::delete,
    )
    .await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("join token {id:?} not found")))
    }
}

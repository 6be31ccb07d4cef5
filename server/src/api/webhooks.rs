//! Webhook endpoints (admin scope): `POST /v1/webhooks` (the secret is in
//! this answer only), `GET /v1/webhooks`, `GET|DELETE /v1/webhooks/{id}`,
//! `GET /v1/webhooks/{id}/deliveries` and `POST /v1/webhooks/{id}/test`.
//! Delivery itself is [`crate::webhooks`].

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, JsonBody};
use super::jobs::page_limit;
use super::{parse_cursor, parse_query};
use crate::store::audit::{self, Action};
use crate::store::webhooks;
use crate::store::Store;
use crate::store::StoreError;
use crate::validate;
use crate::webhooks::check_url;
use crate::webhooks::Deliverer;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use rand::RngCore;
use serde::Deserialize;
use std::sync::Arc;
use sundial_proto::event::TypePattern;
use sundial_proto::time::now_ms;
use sundial_proto::webhook::{Delivery, Webhook, WebhookSpec};
use sundial_proto::List;

/// Longest receiver URL accepted.
const MAX_URL: usize = 2048;

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("webhook {id:?} not found"))
}

async fn validate_spec(deliverer: &Deliverer, spec: &WebhookSpec) -> ApiResult<()> {
    if spec.url.len() > MAX_URL {
        return Err(ApiError::bad_request(
            "invalid_value",
            "url",
            format!("url is longer than {MAX_URL} bytes"),
        ));
    }
    check_url(&spec.url, deliverer.settings().deny_private)
        .await
        .map_err(|e| ApiError::bad_request("invalid_value", "url", e.to_string()))?;
    if spec.events.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_value",
            "events",
            "name at least one event type (\"run.failed\", \"job.*\", \"*\")",
        ));
    }
    for t in &spec.events {
        t.parse::<TypePattern>()
            .map_err(|m| ApiError::bad_request("invalid_value", "events", m))?;
    }
    for id in &spec.jobs.ids {
        validate::job_id(id).map_err(|mut e| {
            e.field = "jobs.ids".into();
            e
        })?;
    }
    validate::labels(&spec.jobs.labels).map_err(|mut e| {
        e.field = format!("jobs.{}", e.field);
        e
    })?;
    if spec.description.len() > 4096 {
        return Err(ApiError::bad_request(
            "invalid_value",
            "description",
            "description is longer than 4096 bytes",
        ));
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    security(("admin_key" = ["admin"])),
    request_body = sundial_proto::webhook::WebhookSpec,
    responses((status = 201, description = "The webhook with its secret (shown this once)", body = sundial_proto::webhook::Webhook))
)]
pub async fn create(
    State(store): State<Arc<Store>>,
    State(deliverer): State<Arc<Deliverer>>,
    Admin(actor): Admin,
    JsonBody(spec): JsonBody<WebhookSpec>,
) -> ApiResult<(StatusCode, Json<Webhook>)> {
    validate_spec(&deliverer, &spec).await?;
    let mut raw = [0u8; 8];
    rand::rng().fill_bytes(&mut raw);
    let id = format!("wh_{}", hex::encode(raw));
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let key = id.clone();
    let stored = store
        .write(move |c| {
            let now = now_ms();
            let stored = webhooks::insert(c, &key, &spec, &salt, now)?;
            // The spec only: the secret is derived from the salt, neither is recorded.
            let after = audit::webhook_state(c, &key)?;
            let change = audit::Change {
                action: Action::WebhookCreate,
                target: Some(&key),
                before: None,
                after,
                detail: serde_json::json!({"url": spec.url}),
            };
            audit::record(c, now, &actor, &change)?;
            Ok(stored)
        })
        .await?;
    let mut webhook = stored.webhook;
    // Shown once: only the salt is stored, the secret is derived.
    webhook.secret = Some(deliverer.secret_of(&id, &stored.salt));
    tracing::info!(webhook = %id, url = %webhook.spec.url, "webhook created");
    Ok((StatusCode::CREATED, Json(webhook)))
}

#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    security(("admin_key" = ["admin"])),
    responses((status = 200, description = "Every webhook", body = sundial_proto::List<sundial_proto::webhook::Webhook>))
)]
pub async fn list(State(store): State<Arc<Store>>, _: Admin) -> ApiResult<Json<List<Webhook>>> {
    let items = store
        .read(webhooks::list)
        .await?
        .into_iter()
        .map(|s| s.webhook)
        .collect();
    Ok(Json(List {
        items,
        next_cursor: None,
    }))
}

#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 200, description = "The webhook", body = sundial_proto::webhook::Webhook), (status = 404, description = "No such webhook", body = sundial_proto::ErrorBody))
)]
pub async fn get(
    State(store): State<Arc<Store>>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Webhook>> {
    let key = id.clone();
    match store.read(move |c| webhooks::get(c, &key)).await? {
        Some(s) => Ok(Json(s.webhook)),
        None => Err(not_found(&id)),
    }
}

#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such webhook", body = sundial_proto::ErrorBody))
)]
pub async fn delete(
    State(store): State<Arc<Store>>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let deleted = audit::delete(
        &store,
        actor,
        Action::WebhookDelete,
        id.clone(),
        audit::webhook_state,
        |c, id, _now| webhooks::delete(c, id),
    )
    .await?;
    if deleted {
        tracing::info!(webhook = %id, "webhook deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    security(("admin_key" = ["admin"])),
    params(
        ("id" = String, Path, description = "The webhook's id"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size [default: 100]"),
    ),
    responses((status = 200, description = "Delivery attempts, newest first", body = sundial_proto::List<sundial_proto::webhook::Delivery>), (status = 404, description = "No such webhook", body = sundial_proto::ErrorBody))
)]
pub async fn deliveries(
    State(store): State<Arc<Store>>,
    _: Admin,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<List<Delivery>>> {
    let q: DeliveryQuery = parse_query(query.as_deref())?;
    let limit = page_limit(q.limit)?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    let key = id.clone();
    let (items, next) = store
        .read(move |c| {
            if webhooks::get(c, &key)?.is_none() {
                return Err(StoreError::NotFound {
                    kind: "webhook",
                    id: key,
                });
            }
            webhooks::deliveries(c, &key, cursor, limit)
        })
        .await?;
    Ok(Json(List {
        items,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// Sends a `webhook.test` message now; answers with the attempt.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/test", tag = "webhooks",
    description = "Sends a `webhook.test` message now.",
    security(("admin_key" = ["admin"])),
    params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 200, description = "The attempt", body = sundial_proto::webhook::Delivery), (status = 404, description = "No such webhook", body = sundial_proto::ErrorBody))
)]
pub async fn test(
    State(store): State<Arc<Store>>,
    State(deliverer): State<Arc<Deliverer>>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Delivery>> {
    let key = id.clone();
    let Some(hook) = store.read(move |c| webhooks::get(c, &key)).await? else {
        return Err(not_found(&id));
    };
    Ok(Json(deliverer.send_test(&hook, actor).await?))
}

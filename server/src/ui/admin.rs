//! The keys page (admin scope only): API keys and join tokens, creation and
//! deletion through the same handlers as `POST /v1/api-keys` and
//! `POST /v1/join-tokens`. A new secret is rendered once, in the response to
//! the creating POST, and never again.

use super::actions::{check_post, CsrfForm};
use super::input::UiForm;
use super::view::{render, Layout, Ts, UiError, UiResult, Viewer};
use crate::api;
use crate::api::extract::{parse_json, Admin, JsonBody};
use crate::api::origin::Origin;
use crate::api::state::Console;
use crate::auth::KeyCache;
use crate::store::Store;
use crate::store::{keys, tokens};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub struct KeyRow {
    pub id: String,
    pub scope: &'static str,
    pub name: String,
    pub created: Ts,
    pub current: bool,
}

pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub expires: Ts,
    pub uses: String,
    pub created: Ts,
}

/// A secret just created, shown once.
pub struct NewSecret {
    pub kind: &'static str,
    pub id: String,
    pub secret: String,
}

#[derive(Template)]
#[template(path = "ui/keys.html")]
pub struct KeysPage {
    pub layout: Layout,
    pub keys: Vec<KeyRow>,
    pub tokens: Vec<TokenRow>,
    pub created: Option<NewSecret>,
}

async fn page_with(
    console: &Console,
    s: &super::session::Session,
    created: Option<NewSecret>,
) -> UiResult {
    if !s.is_admin() {
        return Err(UiError::forbidden());
    }
    let (all_keys, all_tokens) = console
        .store
        .read(|c| Ok((keys::list(c)?, tokens::list(c)?)))
        .await?;
    let keys = all_keys
        .into_iter()
        .map(|k| KeyRow {
            current: k.id == s.key_id,
            id: k.id,
            scope: k.scope.as_str(),
            name: k.name,
            created: Ts::new(k.created_at),
        })
        .collect();
    let tokens = all_tokens
        .into_iter()
        .map(|t| TokenRow {
            id: t.id,
            name: t.name,
            expires: Ts::new(t.expires_at),
            uses: match t.max_uses {
                Some(m) => format!("{} of {m}", t.uses),
                None => format!("{} (no limit)", t.uses),
            },
            created: Ts::new(t.created_at),
        })
        .collect();
    render(&KeysPage {
        layout: Layout::new(&console.ha, s, "keys"),
        keys,
        tokens,
        created,
    })
}

pub async fn page(State(console): State<Console>, Viewer(s): Viewer) -> UiResult {
    page_with(&console, &s, None).await
}

#[derive(Deserialize)]
pub struct NewKeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    name: String,
}

pub async fn create_key(
    State(console): State<Console>,
    Viewer(s): Viewer,
    origin: Origin,
    headers: HeaderMap,
    UiForm(form): UiForm<NewKeyForm>,
) -> UiResult {
    check_post(&s, &headers, &form.csrf, true)?;
    let body = json!({"scope": form.scope, "name": form.name}).to_string();
    let (_, created) = api::keys::create(
        State(console.store.clone()),
        Admin(origin.actor(s.key_id.clone(), None)),
        JsonBody(parse_json(body.as_bytes())?),
    )
    .await?;
    tracing::info!(key = %s.key_id, "console created an API key");
    shown_once(&console, &s, "API key", &created.0, "key").await
}

/// The keys page with a just-created secret shown this once (`201`).
async fn shown_once(
    console: &Console,
    s: &super::session::Session,
    kind: &'static str,
    created: &Value,
    secret_field: &str,
) -> UiResult {
    let secret = NewSecret {
        kind,
        id: created["id"].as_str().unwrap_or_default().to_string(),
        secret: created[secret_field]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    let mut resp = page_with(console, s, Some(secret)).await?;
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

#[derive(Deserialize)]
pub struct NewTokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    /// A duration such as `24h`; empty: the API's default.
    #[serde(default)]
    ttl: String,
    /// Empty: no limit.
    #[serde(default)]
    max_uses: String,
}

pub async fn create_token(
    State(console): State<Console>,
    Viewer(s): Viewer,
    origin: Origin,
    headers: HeaderMap,
    UiForm(form): UiForm<NewTokenForm>,
) -> UiResult {
    check_post(&s, &headers, &form.csrf, true)?;
    let mut body = Map::new();
    body.insert("name".into(), Value::String(form.name.clone()));
    if !form.ttl.trim().is_empty() {
        body.insert("ttl".into(), Value::String(form.ttl.trim().to_string()));
    }
    if !form.max_uses.trim().is_empty() {
        let n: u64 = form.max_uses.trim().parse().map_err(|_| {
            UiError::new(
                StatusCode::BAD_REQUEST,
                format!("max uses must be a whole number, not {:?}", form.max_uses),
            )
        })?;
        body.insert("max_uses".into(), Value::from(n));
    }
    let bytes = Value::Object(body).to_string();
    let (_, created) = api::nodes::create_token(
        State(console.store.clone()),
        Admin(origin.actor(s.key_id.clone(), None)),
        JsonBody(parse_json(bytes.as_bytes())?),
    )
    .await?;
    tracing::info!(key = %s.key_id, "console created a join token");
    shown_once(&console, &s, "join token", &created.0, "token").await
}

pub async fn delete_key(
    State(store): State<Arc<Store>>,
    State(keys): State<Arc<KeyCache>>,
    Viewer(s): Viewer,
    origin: Origin,
    Path(id): Path<String>,
    headers: HeaderMap,
    UiForm(form): UiForm<CsrfForm>,
) -> UiResult {
    check_post(&s, &headers, &form.csrf, true)?;
    api::keys::delete(
        State(store),
        State(keys),
        Admin(origin.actor(s.key_id.clone(), None)),
        Path(id),
    )
    .await?;
    Ok(Redirect::to("/ui/keys").into_response())
}

pub async fn delete_token(
    State(store): State<Arc<Store>>,
    Viewer(s): Viewer,
    origin: Origin,
    Path(id): Path<String>,
    headers: HeaderMap,
    UiForm(form): UiForm<CsrfForm>,
) -> UiResult {
    check_post(&s, &headers, &form.csrf, true)?;
    api::nodes::delete_token(
        State(store),
        Admin(origin.actor(s.key_id.clone(), None)),
        Path(id),
    )
    .await?;
    Ok(Redirect::to("/ui/keys").into_response())
}

//! Agent request authentication: the `Signed<T>` extractor verifies the
//! `Sundial-HMAC` header (timestamp skew, node generation, signature over the
//! body, nonce replay) before the JSON body is decoded. Every refusal is a
//! 401, a log line and a `sundial_agent_auth_failures_total{reason}` count.
//!
//! Replay across restarts and failovers: the in-memory [`NonceCache`] is only
//! a fast first filter. An accepted nonce is also recorded in the database
//! (`agent_nonces`, through the single writer, group-committed) before the
//! handler runs, so the next process or the new primary refuses a request
//! captured earlier for as long as its timestamp is inside the window.

use super::error::ApiError;
use super::extract::parse_json;
use super::limit::{self, Kind};
use super::state::Gate;
use super::AppState;
use crate::metrics::Metrics;
use crate::registry::NodeInfo;
use crate::store::nonces;
use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use sundial_proto::sign::{self, AuthHeader, MAX_SKEW_SECS};
use sundial_proto::time::now_ms;

/// Nonces seen within the skew window, by node.
#[derive(Default)]
pub struct NonceCache {
    seen: Mutex<HashMap<String, i64>>,
    /// When (unix seconds) the persisted nonces were last pruned.
    pruned_at: AtomicI64,
}

/// How often the persisted nonces are pruned (seconds).
const PRUNE_EVERY_SECS: i64 = 60;

/// Records an accepted nonce in the database (pruning expired ones about
/// once a minute in the same batch); false when another process already
/// accepted it.
async fn persist_nonce(
    app: &AppState,
    node: &str,
    nonce: &str,
    ts: i64,
    now_secs: i64,
) -> Result<bool, ApiError> {
    let last = app.nonces.pruned_at.load(Ordering::Relaxed);
    let prune = now_secs - last >= PRUNE_EVERY_SECS
        && app
            .nonces
            .pruned_at
            .compare_exchange(last, now_secs, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    let (node, nonce) = (node.to_owned(), nonce.to_owned());
    let fresh = app
        .store
        .write(move |c| {
            if prune {
                // A timestamp older than this can never pass the skew check again.
                nonces::prune(c, now_secs - MAX_SKEW_SECS - 1)?;
            }
            nonces::record(c, &node, &nonce, ts)
        })
        .await?;
    Ok(fresh)
}

impl NonceCache {
    /// Records a nonce; false when it was already used.
    pub fn check_and_insert(&self, node: &str, nonce: &str, now_secs: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 200_000 {
            seen.retain(|_, ts| now_secs - *ts <= 2 * MAX_SKEW_SECS);
        }
        seen.insert(format!("{node}/{nonce}"), now_secs).is_none()
    }
}

/// A verified agent request: the calling node and its decoded body.
pub struct Signed<T> {
    pub node: Arc<NodeInfo>,
    pub body: T,
}

pub fn refuse(metrics: &Metrics, reason: &'static str, node: Option<&str>) -> ApiError {
    metrics
        .agent_auth_failures
        .with_label_values(&[reason])
        .inc();
    tracing::warn!(node = node.unwrap_or("-"), reason, "agent request refused");
    ApiError::unauthorized(format!("agent authentication failed: {reason}"))
}

impl<T: DeserializeOwned> FromRequest<AppState> for Signed<T> {
    type Rejection = ApiError;

    /// Verifies the request; repeated failures from one source address or
    /// for one node are rate limited (see [`crate::auth_limit`]).
    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        let source = limit::source(req.extensions());
        let gate = Gate::from_ref(app);
        limit::guard(&gate, Kind::Agent, source)?;
        let subject = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(AuthHeader::parse)
            .map(|h| format!("node:{}", h.node));
        match verify(req, app).await {
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(limit::failed(
                &gate,
                Kind::Agent,
                source,
                subject.as_deref(),
                e,
            )),
            other => other,
        }
    }
}

async fn verify<T: DeserializeOwned>(req: Request, app: &AppState) -> Result<Signed<T>, ApiError> {
    {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(AuthHeader::parse)
            .ok_or_else(|| refuse(&app.metrics, "malformed_header", None))?;
        let now_secs = now_ms() / 1000;
        if (now_secs - header.ts).abs() > MAX_SKEW_SECS {
            return Err(refuse(&app.metrics, "stale_timestamp", Some(&header.node)));
        }
        let node = app
            .registry
            .get(&header.node)
            .ok_or_else(|| refuse(&app.metrics, "unknown_node", Some(&header.node)))?;
        if node.revoked {
            return Err(refuse(&app.metrics, "revoked_node", Some(&header.node)));
        }
        let method = req.method().as_str().to_owned();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| req.uri().path().to_owned());
        let body = Bytes::from_request(req, app).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body too large",
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
            }
        })?;
        let valid = app.secrets.all().iter().any(|secret| {
            let key = sign::derive_node_key(secret, &node.id, node.generation);
            sign::verify(
                &key,
                &method,
                &path,
                header.ts,
                &header.nonce,
                &body,
                &header.sig,
            )
        });
        if !valid {
            return Err(refuse(&app.metrics, "bad_signature", Some(&header.node)));
        }
        if !app
            .nonces
            .check_and_insert(&node.id, &header.nonce, now_secs)
        {
            return Err(refuse(&app.metrics, "replayed_nonce", Some(&header.node)));
        }
        if !persist_nonce(app, &node.id, &header.nonce, header.ts, now_secs).await? {
            return Err(refuse(&app.metrics, "replayed_nonce", Some(&header.node)));
        }
        app.registry.seen(&node.id, now_ms());
        let body = parse_json(&body)?;
        Ok(Signed { node, body })
    }
}

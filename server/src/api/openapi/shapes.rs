//! Schemas of the answers (and two request bodies) that handlers build as
//! JSON values rather than wire types: probes, HA status, preview, event
//! pages, keys, join tokens, nodes and the two Server-Sent Event streams.
//! Only the OpenAPI document uses them; Schemathesis checks the live answers
//! against them (`e2e/tests/api_contract.rs`).

use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz` when ready.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ready`.
    pub status: String,
    /// `primary`, `replica` or `standalone`-as-primary.
    pub role: String,
    pub epoch: i64,
}

/// One background loop's health (`/readyz` when not ready).
#[derive(Serialize, ToSchema)]
pub struct LoopHealth {
    #[serde(rename = "loop")]
    pub name: String,
    pub healthy: bool,
    pub failing_for_ms: Option<i64>,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
}

/// `GET /readyz` when not ready.
#[derive(Serialize, ToSchema)]
pub struct Unready {
    /// `unavailable`.
    pub status: String,
    pub role: String,
    pub error: String,
    pub loops: Vec<LoopHealth>,
}

/// `GET /v1/ha/primary`.
#[derive(Serialize, ToSchema)]
pub struct HaPrimary {
    pub primary: bool,
    pub role: String,
    pub epoch: i64,
}

/// `GET /v1/ha/status`.
#[derive(Serialize, ToSchema)]
pub struct HaStatus {
    /// `standalone`, `litefs` or `static`.
    pub mode: String,
    pub role: String,
    /// The cluster epoch stored in the database.
    pub epoch: i64,
    /// The epoch of this server's current term.
    pub term_epoch: i64,
    /// The primary's host name, when known.
    pub primary: Option<String>,
    /// The primary's URL, when known.
    pub primary_url: Option<String>,
    /// Since when this server has its role.
    #[schema(format = DateTime)]
    pub since: String,
}

/// `GET /v1/schedule/preview`.
#[derive(Serialize, ToSchema)]
pub struct Preview {
    pub schedule: String,
    pub timezone: String,
    #[schema(format = DateTime)]
    pub after: String,
    #[schema(value_type = Vec<String>)]
    pub fires: Vec<String>,
}

/// `GET /v1/events`: a page, oldest first.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<sundial_proto::event::Event>,
    /// Where to continue (the same value when nothing new happened).
    pub next_cursor: String,
    /// More events are ready after this page.
    pub more: bool,
}

/// `POST /v1/api-keys`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// `admin` or `read`.
    #[schema(pattern = "^(admin|read)$")]
    pub scope: String,
    #[serde(default)]
    pub name: String,
    /// Lifetime from now; exclusive with `expires_at`.
    #[serde(default)]
    pub expires_in: Option<sundial_proto::Duration>,
    /// When the key stops working; exclusive with `expires_in`.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<String>,
}

/// A key's scope.
#[allow(dead_code)] // a schema only: the handler answers with a JSON value
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    Admin,
    Read,
}

/// The answer to `POST /v1/api-keys`: the only time `key` is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    pub id: String,
    pub scope: KeyScope,
    pub name: String,
    pub key: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<String>,
}

/// A stored key, without its secret.
#[derive(Serialize, ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub scope: KeyScope,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<String>,
}

/// `GET /v1/api-keys`.
#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyInfo>,
    /// Always null: one page.
    pub next_cursor: Option<String>,
}

/// `POST /v1/join-tokens`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default)]
    pub name: String,
    /// How long the token may be used to join [default: 24h].
    #[serde(default)]
    pub ttl: Option<sundial_proto::Duration>,
    /// Joins allowed (unlimited when absent).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_uses: Option<u32>,
}

/// The answer to `POST /v1/join-tokens`: the only time `token` is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    pub id: String,
    pub token: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub max_uses: Option<u32>,
}

/// A join token without its secret.
#[derive(Serialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub max_uses: Option<u32>,
    pub uses: u32,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `GET /v1/join-tokens`.
#[derive(Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenInfo>,
    /// Always null: one page.
    pub next_cursor: Option<String>,
}

/// A node's status.
#[allow(dead_code)] // a schema only: the handler answers with a JSON value
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heard from in the last 2 minutes.
    Ready,
    Down,
    Revoked,
}

/// A node as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    pub generation: u64,
    pub revoked: bool,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    pub executors: Vec<sundial_proto::ExecutorKind>,
    pub version: String,
    #[schema(format = DateTime)]
    pub joined_at: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<String>,
    pub status: NodeStatus,
}

/// `GET /v1/nodes`.
#[derive(Serialize, ToSchema)]
pub struct NodeList {
    pub items: Vec<NodeView>,
    /// Always null: one page.
    pub next_cursor: Option<String>,
}

/// One Server-Sent Event of `GET /v1/runs/{id}/output?follow=true`.
#[derive(Serialize, ToSchema)]
pub struct OutputStreamEvent {
    /// `output` (new text; `id` is the byte offset after it), `attempt`
    /// (`{"attempt"}`: a retry began, output starts over), `end`
    /// (`{"state", "attempt", "exit_code"}`, then the stream closes) or
    /// `error` (the run could not be read).
    #[schema(pattern = "^(output|attempt|end|error)$")]
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// One Server-Sent Event of `GET /v1/events/stream`.
#[derive(Serialize, ToSchema)]
pub struct EventStreamEvent {
    /// The event's type (`run.failed`, ...).
    pub event: sundial_proto::event::EventType,
    /// The event as JSON (the shape of `Event`).
    pub data: String,
    /// The event id: resume with `Last-Event-ID`.
    pub id: String,
}

/// The answer to `POST /v1/agent/register`.
#[derive(Serialize, ToSchema)]
pub struct Registered {
    pub node_id: String,
    /// Heartbeat at least this often (ms) or a lease expires.
    pub lease_ms: u64,
    /// A poll receipt for this process's first poll to acknowledge (see
    /// `PollRequest.ack`).
    pub receipt: u64,
}

/// `GET /v1/audit`: a page of audit rows, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditRow>,
    /// Where the next (older) page starts; null on the last page.
    pub next_cursor: Option<String>,
}

/// One audit row (`store::audit::Entry` on the wire).
#[derive(Serialize, ToSchema)]
pub struct AuditRow {
    pub id: i64,
    /// When the change committed (RFC 3339).
    #[schema(format = DateTime)]
    pub at: String,
    /// The acting key's id (`session` keys of the console included).
    pub key_id: String,
    pub key_name: Option<String>,
    /// The client's address (the peer, or what a replica vouched for).
    pub source: Option<String>,
    /// The replica that forwarded the request, if any.
    pub via: Option<String>,
    /// `job.put`, `job.delete`, `jobs.apply`, `job.pause`, `job.resume`,
    /// `job.trigger`, `run.cancel`, `key.create`, `key.delete`,
    /// `token.create`, `token.delete`, `node.revoke`, `webhook.create`,
    /// `webhook.delete` or `webhook.test`.
    pub action: String,
    pub target: Option<String>,
    pub digest: AuditDigests,
    /// A few non-secret facts about the change.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// SHA-256 (hex) of the resource's canonical JSON before and after the
/// change; null where it did not exist.
#[derive(Serialize, ToSchema)]
pub struct AuditDigests {
    pub before: Option<String>,
    pub after: Option<String>,
}

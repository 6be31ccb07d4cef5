//! The OpenAPI 3.1 document of the JSON API, served without a key at
//! `GET /v1/openapi.json`. It is generated from the code: the handlers'
//! `#[utoipa::path]` attributes and the wire types' `ToSchema` derives
//! (`sundial-proto`). This module owns what those cannot say by themselves:
//! the security schemes (bearer API key, the agent's `Sundial-HMAC` signature,
//! the join token), the error responses every operation shares (the JSON
//! error shape), the shapes of answers the handlers build as JSON values
//! (nodes, keys, tokens, probes, preview, event pages), and the merge of
//! `#[serde(flatten)]`ed specs into `Job` and `Webhook`.
//!
//! The console under `/ui/` is HTML and not part of this document. A test
//! (`tests` below) fails when a route of the router or a route named in
//! `docs/api.md` has no operation here.

use axum::http::header;
use axum::response::IntoResponse;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use sundial_proto::ErrorBody;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi};

mod shapes;
pub use shapes::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sundial",
        description = "Sundial's JSON API: jobs, runs, events, webhooks, keys, nodes, the agent protocol and the probes. Errors are `{\"error\": {\"code\", \"message\", \"field\"?, \"index\"?}}` (see docs/api.md).",
        license(name = "Apache-2.0")
    ),
    paths(
        serve,
        super::probes::healthz,
        super::probes::readyz,
        super::probes::metrics,
        super::probes::ha_primary,
        super::probes::ha_status,
        super::jobs::list,
        super::jobs::get,
        super::jobs::put,
        super::jobs::delete,
        super::jobs::pause,
        super::jobs::resume,
        super::jobs::trigger,
        super::apply::apply,
        super::runs::list,
        super::runs::get,
        super::runs::cancel,
        super::output::output,
        super::preview::preview,
        super::events::list,
        super::events::stream,
        super::webhooks::list,
        super::webhooks::create,
        super::webhooks::get,
        super::webhooks::delete,
        super::webhooks::deliveries,
        super::webhooks::test,
        super::keys::list,
        super::keys::create,
        super::keys::delete,
        super::nodes::list,
        super::nodes::get,
        super::nodes::revoke,
        super::nodes::list_tokens,
        super::nodes::create_token,
        super::nodes::delete_token,
        super::agent::join,
        super::agent::register,
        super::agent::poll,
        super::agent::heartbeat,
        super::agent::output,
        super::agent::complete,
        super::agent::complete_many,
        super::audit::list,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes, &FlattenedSpecs, &SharedErrors),
    tags(
        (name = "jobs", description = "Job definitions, bulk apply and schedule preview"),
        (name = "runs", description = "Runs and their output"),
        (name = "events", description = "The event feed"),
        (name = "webhooks", description = "Webhooks (admin scope)"),
        (name = "keys", description = "API keys (admin scope)"),
        (name = "nodes", description = "Nodes and join tokens"),
        (name = "agent", description = "The daemons' protocol (signed, see docs/signing.md)"),
        (name = "probes", description = "Health, readiness, HA role and metrics"),
        (name = "audit", description = "The audit log of admin mutations (admin scope)"),
    )
)]
pub struct ApiDoc;

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::to_value(ApiDoc::openapi())
            .and_then(|mut doc| {
                unsigned_bounds(&mut doc);
                serde_json::to_string(&doc)
            })
            .unwrap_or_else(|e| {
                format!("{{\"error\":{{\"code\":\"internal\",\"message\":\"{e}\"}}}}")
            })
    })
}

/// Unsigned integers: utoipa names their formats `u-int32` and the like,
/// which no validator knows (and its default, `int32` for a `u32`, would
/// refuse values the server takes). Each becomes its real range instead.
fn unsigned_bounds(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let max = match map.get("format").and_then(|f| f.as_str()) {
                Some("u-int8") => Some(Some(u64::from(u8::MAX))),
                Some("u-int16") => Some(Some(u64::from(u16::MAX))),
                Some("u-int32") => Some(Some(u64::from(u32::MAX))),
                Some("u-int64") => Some(None),
                _ => None,
            };
            if let Some(max) = max {
                map.remove("format");
                map.entry("minimum").or_insert(0.into());
                if let Some(max) = max {
                    map.entry("maximum").or_insert(max.into());
                }
            }
            map.values_mut().for_each(unsigned_bounds);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unsigned_bounds),
        _ => {}
    }
}

/// `GET /v1/openapi.json`: this document. No key needed.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "probes",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub async fn serve() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}

/// The security schemes: `admin_key` (scopes `admin`/`read` name the key
/// scope an operation needs), `agent_hmac` and `join_token`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key: `Authorization: Bearer <key>`. The operation's scope (`admin` or `read`) is the key scope it needs; an `admin` key may do everything.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "agent_hmac",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Sundial-HMAC node=<id>,ts=<unix seconds>,nonce=<hex>,sig=<hex>`: HMAC-SHA256 with the node key over method, path and query, ts, nonce and SHA-256 of the body; ±5 min skew, nonces are single use (docs/signing.md).",
            ))),
        );
        components.add_security_scheme(
            "join_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Sundial-Join <token>`: a join token from `POST /v1/join-tokens`.",
            ))),
        );
    }
}

/// `Job` and `Webhook` flatten their specs (`#[serde(flatten)]`): their
/// schemas get the spec's properties, without the spec's refusal of unknown
/// fields (that holds for requests, and a stored job has more fields).
struct FlattenedSpecs;

impl FlattenedSpecs {
    fn merge(doc: &mut utoipa::openapi::OpenApi, into: &str, spec: RefOr<Schema>) {
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        let (Some(RefOr::T(Schema::Object(target))), RefOr::T(Schema::Object(spec))) =
            (components.schemas.get_mut(into), spec)
        else {
            return;
        };
        for (name, schema) in spec.properties {
            target.properties.entry(name).or_insert(schema);
        }
        for name in spec.required {
            if !target.required.contains(&name) {
                target.required.push(name);
            }
        }
    }
}

impl Modify for FlattenedSpecs {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        Self::merge(
            doc,
            "Job",
            <sundial_proto::JobSpec as utoipa::PartialSchema>::schema(),
        );
        Self::merge(
            doc,
            "Webhook",
            <sundial_proto::webhook::WebhookSpec as utoipa::PartialSchema>::schema(),
        );
    }
}

/// The refusals every operation of a kind can give, all with the JSON error
/// shape: added to each operation unless it lists the status itself.
struct SharedErrors;

impl SharedErrors {
    fn add(op: &mut Operation, status: &str, description: &str) {
        if op.responses.responses.contains_key(status) {
            return;
        }
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "ErrorBody",
                    ))))
                    .build(),
            )
            .build();
        op.responses
            .responses
            .insert(status.to_string(), RefOr::T(response));
    }

    fn operation(op: &mut Operation, read_only: bool) {
        let schemes: Vec<(String, Vec<String>)> = op
            .security
            .iter()
            .flatten()
            .filter_map(|req| serde_json::to_value(req).ok())
            .filter_map(|v| serde_json::from_value::<BTreeMap<String, Vec<String>>>(v).ok())
            .flat_map(|m| m.into_iter())
            .collect();
        let has_input =
            op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
        if has_input {
            Self::add(op, "400", "Bad input: the code names what (`invalid_value`, `invalid_query`, `invalid_id`, `missing_field`, `unknown_field`, ...) and `field` where")
        }
        if op.request_body.is_some() {
            Self::add(
                op,
                "413",
                "The body is larger than the server accepts (`payload_too_large`)",
            );
            Self::add(op, "415", "The body is not JSON (`unsupported_media_type`)");
        }
        if !schemes.is_empty() {
            Self::add(
                op,
                "401",
                "Missing, unknown or expired credentials (`unauthorized`)",
            );
            Self::add(
                op,
                "429",
                "Too many failed authentications from this source (`rate_limited`); `Retry-After`",
            );
        }
        if schemes
            .iter()
            .any(|(name, scopes)| name == "admin_key" && scopes.iter().any(|s| s == "admin"))
        {
            Self::add(
                op,
                "403",
                "The key has the read scope; this needs admin (`forbidden`)",
            );
        }
        Self::add(
            op,
            "500",
            "A bug (`internal`); details are in the server log",
        );
        Self::add(op, "503", "The database is busy or failing, or no primary can take a write (`database_busy`, `database_io_error`, `not_primary`, `no_primary`, `unavailable`); `Retry-After`");
        if !read_only {
            Self::add(
                op,
                "507",
                "The database's disk is full (`disk_full`); nothing was written",
            );
        }
    }
}

impl Modify for SharedErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            let PathItem {
                get,
                put,
                post,
                delete,
                ..
            } = item;
            for (op, read_only) in [(get, true), (put, false), (post, false), (delete, false)] {
                if let Some(op) = op.as_mut() {
                    Self::operation(op, read_only);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

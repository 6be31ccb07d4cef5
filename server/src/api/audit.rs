//! The audit log: `GET /v1/audit?action=&target=&key=&since=&until=&cursor=&limit=`
//! (admin scope) → `{"items": [row…], "next_cursor"}`, newest first. Rows are
//! written by the admin endpoints with the change they record
//! ([`crate::store::audit`]); this module only reads them, so a replica
//! serves it too.

use super::error::{ApiError, ApiResult};
use super::extract::Admin;
use super::jobs::page_limit;
use super::{parse_cursor, parse_query};
use crate::store::audit::{self, Action, Entry, Filter};
use crate::store::Store;
use axum::extract::{RawQuery, State};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use sundial_proto::List;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Comma-separated action names (`job.put,job.delete`).
    action: Option<String>,
    /// The job, run, key, token, node or webhook id a row is about.
    target: Option<String>,
    /// The acting key's id.
    key: Option<String>,
    /// RFC 3339: rows at or after this instant.
    since: Option<String>,
    /// RFC 3339: rows before this instant.
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn instant(raw: Option<&str>, field: &str) -> ApiResult<Option<i64>> {
    raw.map(|s| {
        sundial_proto::time::parse_rfc3339_ms(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_value",
                field,
                format!("{field} {s:?} is not an RFC 3339 instant"),
            )
        })
    })
    .transpose()
}

fn filter(q: &AuditQuery) -> ApiResult<Filter> {
    let actions = match q.action.as_deref() {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|a| a.trim().parse::<Action>())
            .collect::<Result<_, _>>()
            .map_err(|m| ApiError::bad_request("invalid_value", "action", m))?,
    };
    Ok(Filter {
        actions,
        target: q.target.clone().filter(|t| !t.is_empty()),
        key_id: q.key.clone().filter(|k| !k.is_empty()),
        since: instant(q.since.as_deref(), "since")?,
        until: instant(q.until.as_deref(), "until")?,
    })
}

/// `GET /v1/audit`: a page of audit rows, newest first; `next_cursor` is
/// null on the last page.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    description = "A page of audit rows (one per admin mutation), newest first.",
    security(("admin_key" = ["admin"])),
    params(
        ("action" = Option<String>, Query, description = "Comma-separated action names (`job.put,job.delete`)"),
        ("target" = Option<String>, Query, description = "The job, run, key, token, node or webhook id a row is about"),
        ("key" = Option<String>, Query, description = "The acting key's id"),
        ("since" = Option<String>, Query, description = "RFC 3339: rows at or after this instant"),
        ("until" = Option<String>, Query, description = "RFC 3339: rows before this instant"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size [default: 100]"),
    ),
    responses((status = 200, description = "A page of audit rows", body = super::openapi::AuditPage))
)]
pub async fn list(
    State(store): State<Arc<Store>>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<List<Entry>>> {
    let q: AuditQuery = parse_query(query.as_deref())?;
    let limit = page_limit(q.limit)?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    let filter = filter(&q)?;
    let (items, next) = store
        .read(move |c| audit::list(c, &filter, cursor, limit))
        .await?;
    Ok(Json(List {
        items,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

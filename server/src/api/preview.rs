//! `GET /v1/schedule/preview`: the next fires of a schedule, computed without
//! storing anything, so users can check an expression before applying it.

use super::error::{ApiError, ApiResult};
use super::extract::Reader;
use super::parse_query;
use crate::validate;
use axum::extract::RawQuery;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sundial_proto::time::{format_ms, now_ms, parse_rfc3339_ms};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PreviewQuery {
    schedule: Option<String>,
    timezone: Option<String>,
    after: Option<String>,
    count: Option<usize>,
}

#[utoipa::path(
    get, path = "/v1/schedule/preview", tag = "jobs",
    description = "The next fires of a schedule, computed without storing anything.",
    security(("admin_key" = ["read"])),
    params(
        ("schedule" = String, Query, example = "0 30 2 * * *", description = "Cron, macro, `@every <duration>` or `@at <RFC3339>`"),
        ("timezone" = Option<String>, Query, example = "Europe/Berlin", description = "IANA time zone [default: UTC]"),
        ("after" = Option<String>, Query, format = DateTime, description = "Start after this instant [default: now]"),
        ("count" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Fires to return [default: 10]"),
    ),
    responses((status = 200, description = "The fires", body = super::openapi::Preview))
)]
pub async fn preview(_: Reader, RawQuery(query): RawQuery) -> ApiResult<Json<Value>> {
    let q: PreviewQuery = parse_query(query.as_deref())?;
    let expr = q.schedule.ok_or_else(|| {
        ApiError::bad_request("missing_field", "schedule", "schedule is required")
    })?;
    let tz = q.timezone.unwrap_or_else(|| "UTC".to_string());
    let after = match q.after.as_deref() {
        None => now_ms(),
        Some(s) => parse_rfc3339_ms(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_value",
                "after",
                format!("{s:?} is not an RFC 3339 instant"),
            )
        })?,
    };
    let count = q.count.unwrap_or(10);
    if !(1..=1000).contains(&count) {
        return Err(ApiError::bad_request(
            "invalid_value",
            "count",
            "count must be between 1 and 1000",
        ));
    }
    let schedule = validate::schedule(&expr, &tz)?;
    let mut fires = Vec::with_capacity(count);
    let mut t = after;
    while fires.len() < count {
        match schedule.next_after(t) {
            Some(next) => {
                fires.push(format_ms(next));
                t = next;
            }
            None => break,
        }
    }
    Ok(Json(json!({
        "schedule": expr,
        "timezone": tz,
        "after": format_ms(after),
        "fires": fires,
    })))
}

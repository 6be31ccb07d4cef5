//! The event feed: `GET /v1/events?after=&type=&job=&limit=` (a page,
//! oldest first) and `GET /v1/events/stream` (Server-Sent Events, resumable
//! with `Last-Event-ID`). Read scope. Both read the database, so a replica
//! serves them too, and a client that follows the stream across a failover
//! resumes from its last id: ids are durable, nothing is missed or repeated.

use super::error::{ApiError, ApiResult};
use super::extract::Reader;
use super::jobs::page_limit;
use super::parse_query;
use super::state::Streaming;
use crate::store::events::{self, Filter};
use crate::store::Store;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use sundial_proto::event::{Event, TypePattern};

/// How often a stream looks at the database when no local commit woke it
/// (a replica's file changes under it).
const POLL: Duration = Duration::from_millis(250);
/// Events read per database round trip of a stream.
const STREAM_BATCH: usize = 500;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    after: Option<String>,
    /// Comma-separated types or families: `run.failed,job.*`.
    #[serde(rename = "type")]
    kind: Option<String>,
    job: Option<String>,
    limit: Option<usize>,
}

fn parse_after(raw: Option<&str>, field: &str) -> ApiResult<Option<i64>> {
    raw.map(|a| {
        a.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                field,
                format!("{field} {a:?} is not an event id"),
            )
        })
    })
    .transpose()
}

fn filter(q: &EventQuery) -> ApiResult<Filter> {
    let types = match q.kind.as_deref() {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|t| t.trim().parse::<TypePattern>())
            .collect::<Result<_, _>>()
            .map_err(|m| ApiError::bad_request("invalid_value", "type", m))?,
    };
    Ok(Filter {
        types,
        job: q.job.clone(),
        job_ids: Vec::new(),
    })
}

/// `GET /v1/events`: `{"items": [...], "next_cursor": "<id>"}`, oldest first.
/// A feed never ends: `next_cursor` is where to continue (the same value
/// when nothing new has happened yet).
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    description = "A page of events, oldest first.",
    security(("admin_key" = ["read"])),
    params(
        ("after" = Option<String>, Query, description = "Event id to continue after (a non-negative integer)"),
        ("type" = Option<String>, Query, description = "Comma-separated types or families (`run.failed,job.*`)"),
        ("job" = Option<String>, Query, description = "Only this job's events"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size [default: 100]"),
    ),
    responses((status = 200, description = "A page of events", body = super::openapi::EventPage))
)]
pub async fn list(
    State(store): State<Arc<Store>>,
    _: Reader,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<serde_json::Value>> {
    let q: EventQuery = parse_query(query.as_deref())?;
    let limit = page_limit(q.limit)?;
    let after = parse_after(q.after.as_deref(), "after")?.unwrap_or(0);
    let filter = filter(&q)?;
    let page = store
        .read(move |c| events::list(c, after, &filter, limit))
        .await?;
    Ok(Json(json!({
        "items": page.items,
        "next_cursor": page.cursor.to_string(),
        "more": page.more,
    })))
}

/// What one stream remembers between reads.
struct Follow {
    streaming: Streaming,
    filter: Filter,
    cursor: i64,
    ready: VecDeque<Event>,
    commits: tokio::sync::watch::Receiver<u64>,
}

impl Follow {
    /// The next event, waiting for one; None when the server shuts down.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let (after, filter) = (self.cursor, self.filter.clone());
            match self
                .streaming
                .store
                .read(move |c| events::list(c, after, &filter, STREAM_BATCH))
                .await
            {
                Ok(page) => {
                    self.cursor = page.cursor;
                    self.ready.extend(page.items);
                    if !self.ready.is_empty() || page.more {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "event stream read failed; retrying"),
            }
            tokio::select! {
                _ = self.commits.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = self.streaming.shutdown.cancelled() => return None,
            }
        }
    }
}

/// `GET /v1/events/stream`: SSE with `id:` = event id, `event:` = type,
/// `data:` = the event JSON. Starts after `Last-Event-ID` (or `?after=`);
/// without either, at the newest event (only what happens from now on).
#[utoipa::path(
    get, path = "/v1/events/stream", tag = "events",
    description = "Server-Sent Events: `id:` = event id, `event:` = type, `data:` = the event JSON.",
    security(("admin_key" = ["read"])),
    params(
        ("after" = Option<String>, Query, description = "Event id to start after [default: the newest]"),
        ("type" = Option<String>, Query, description = "Comma-separated types or families"),
        ("job" = Option<String>, Query, description = "Only this job's events"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
    ),
    responses((status = 200, description = "The event stream", body = super::openapi::EventStreamEvent, content_type = "text/event-stream"))
)]
pub async fn stream(
    State(streaming): State<Streaming>,
    _: Reader,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let q: EventQuery = parse_query(query.as_deref())?;
    if q.limit.is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit",
            "a stream has no limit",
        ));
    }
    let last_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("invalid"));
    let start = match parse_after(last_id, "Last-Event-ID")? {
        Some(id) => id,
        None => match parse_after(q.after.as_deref(), "after")? {
            Some(id) => id,
            None => streaming.store.read(events::stats).await?.0,
        },
    };
    let follow = Follow {
        commits: streaming.store.commits(),
        filter: filter(&q)?,
        streaming,
        cursor: start,
        ready: VecDeque::new(),
    };
    let events = stream::unfold(follow, |mut f| async move {
        let e = f.next().await?;
        let data = serde_json::to_string(&e).unwrap_or_else(|_| "{}".into());
        let sse = SseEvent::default()
            .id(e.id.to_string())
            .event(e.kind.as_str())
            .data(data);
        Some((Ok(sse), f))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

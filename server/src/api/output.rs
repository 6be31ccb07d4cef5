//! A run's output: `GET /v1/runs/{id}/output` returns what is there as
//! text; with `?follow=true` it is a Server-Sent Events stream of new output
//! (live output, sent by the daemon about every half second) until the run
//! ends. Event ids are byte offsets, so a client that reconnects — to a
//! replica, or to the new primary after a failover — with `Last-Event-ID`
//! (or `?offset=`) continues where it was. Read scope.

use super::error::{ApiError, ApiResult};
use super::extract::{run_id, Reader};
use super::parse_query;
use super::state::Streaming;
use crate::store::runs::{self, OutputTail};
use crate::store::Store;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;
use sundial_proto::run::output_attempt;

/// How often a follower looks again when no local commit woke it.
const POLL: Duration = Duration::from_millis(250);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    follow: Option<bool>,
    offset: Option<u64>,
}

async fn tail(store: &Store, id: i64, offset: u64) -> ApiResult<OutputTail> {
    store
        .read(move |c| runs::output_tail(c, id, offset))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id} not found")))
}

/// What a follower remembers between reads.
struct Follow {
    streaming: Streaming,
    id: i64,
    offset: u64,
    attempt: Option<u32>,
    done: bool,
    commits: tokio::sync::watch::Receiver<u64>,
}

impl Follow {
    /// The next SSE event; None once the run ended (after `end`) or the
    /// server shuts down.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if self.done {
                return None;
            }
            let t = match tail(&self.streaming.store, self.id, self.offset).await {
                Ok(t) => t,
                Err(e) => {
                    self.done = true;
                    return Some(SseEvent::default().event("error").data(e.message));
                }
            };
            // A new attempt starts with fresh output; so does output shorter
            // than where the client is (a reconnect carrying an offset of an
            // earlier attempt). While a retry waits, the row still holds the
            // ended attempt's output: its end is sent first.
            let owner = output_attempt(t.state, t.attempt);
            let new_attempt = self.attempt.is_some_and(|a| a != owner);
            let restarted = t.len < self.offset;
            self.attempt = Some(owner);
            if new_attempt || restarted {
                self.offset = 0;
                return Some(
                    SseEvent::default()
                        .event("attempt")
                        .id("0")
                        .data(json!({"attempt": owner}).to_string()),
                );
            }
            if !t.tail.is_empty() {
                self.offset = t.len;
                return Some(
                    SseEvent::default()
                        .event("output")
                        .id(t.len.to_string())
                        // SSE ends a line at CR, LF or CRLF alike: a CRLF
                        // sent as is would arrive as two line breaks.
                        .data(String::from_utf8_lossy(&t.tail).replace("\r\n", "\n")),
                );
            }
            if t.state.is_terminal() {
                self.done = true;
                return Some(
                    SseEvent::default().event("end").data(
                        json!({"state": t.state, "attempt": t.attempt, "exit_code": t.exit_code})
                            .to_string(),
                    ),
                );
            }
            tokio::select! {
                _ = self.commits.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = self.streaming.shutdown.cancelled() => return None,
            }
        }
    }
}

#[utoipa::path(
    get, path = "/v1/runs/{id}/output", tag = "runs",
    description = "The run's output so far; with `follow=true` a Server-Sent Events stream until the run ends.",
    security(("admin_key" = ["read"])),
    params(
        ("id" = String, Path, description = "The run's id (a positive integer)"),
        ("follow" = Option<bool>, Query, description = "Stream new output as Server-Sent Events"),
        ("offset" = Option<u64>, Query, description = "Byte offset to start at"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume a stream after this byte offset"),
    ),
    responses(
        (status = 200, description = "The output (text), or its stream with `follow=true`",
         content((String = "text/plain"), (super::openapi::OutputStreamEvent = "text/event-stream"))),
        (status = 404, description = "No such run", body = sundial_proto::ErrorBody),
    )
)]
pub async fn output(
    State(streaming): State<Streaming>,
    _: Reader,
    Path(raw): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let id = run_id(&raw)?;
    let q: OutputQuery = parse_query(query.as_deref())?;
    if !q.follow.unwrap_or(false) {
        let t = tail(&streaming.store, id, q.offset.unwrap_or(0)).await?;
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            String::from_utf8_lossy(&t.tail).into_owned(),
        )
            .into_response());
    }
    let last = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_cursor",
                        "Last-Event-ID",
                        "Last-Event-ID is not a byte offset",
                    )
                })?,
        ),
        None => None,
    };
    // Exists? (404 now rather than an error event later.)
    tail(&streaming.store, id, 1 << 62).await?;
    let follow = Follow {
        commits: streaming.store.commits(),
        streaming,
        id,
        offset: last.or(q.offset).unwrap_or(0),
        attempt: None,
        done: false,
    };
    let events = stream::unfold(follow, |mut f| async move {
        let e = f.next().await?;
        Some((Ok::<_, Infallible>(e), f))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

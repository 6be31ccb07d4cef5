//! The console's events page (`/ui/events`): the event feed newest first,
//! filtered by type family and job, and a fragment (`/ui/events/live`) that
//! htmx polls every second with `after=<cursor>` so new events appear at the
//! top without a reload. Reads only, through [`crate::store::events::list`];
//! any session (read scope too) may see it.

use super::input::UiQuery;
use super::view::{render, Layout, Ts, UiError, UiResult, Viewer};
use crate::api::state::Console;
use crate::store::events::{self, Filter};
use crate::store::Store;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use sundial_proto::event::{Event, EventType, TypePattern};

/// Events shown when the page opens.
pub const SHOWN: usize = 100;
/// How far back (in event ids) the page looks for its first [`SHOWN`].
const WINDOW: i64 = 5_000;
/// Most events one poll of the fragment adds.
const POLL_LIMIT: usize = 200;

/// Query string of the page and its fragment. Empty values mean "any".
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct EventsQuery {
    /// A type family (`run.*`) or one type (`run.failed`).
    #[serde(rename = "type")]
    pub kind: String,
    pub job: String,
    /// The fragment's cursor: the last event id already examined.
    #[serde(skip_serializing)]
    pub after: Option<i64>,
}

impl EventsQuery {
    fn filter(&self) -> Result<Filter, UiError> {
        let bad = |m: String| UiError::new(StatusCode::BAD_REQUEST, m);
        let mut filter = Filter::default();
        let kind = self.kind.trim();
        if !kind.is_empty() {
            filter.types.push(kind.parse::<TypePattern>().map_err(bad)?);
        }
        let job = self.job.trim();
        if !job.is_empty() {
            if job.len() > 256 {
                return Err(bad("the job id is longer than 256 bytes".into()));
            }
            filter.job = Some(job.to_string());
        }
        Ok(filter)
    }

    /// The fragment's URL continuing after `cursor`.
    fn poll_url(&self, cursor: i64) -> String {
        let q = serde_urlencoded::to_string(self).unwrap_or_default();
        format!("/ui/events/live?{q}&after={cursor}")
    }
}

/// The type families (`run.*`, `job.*`, ...), in the order of [`EventType::ALL`].
pub fn families() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in EventType::ALL {
        let family = format!("{}.*", t.as_str().split('.').next().unwrap_or_default());
        if !out.contains(&family) {
            out.push(family);
        }
    }
    out
}

/// An event as a table row.
pub struct EventRow {
    pub id: i64,
    pub at: Ts,
    pub kind: &'static str,
    /// The family, for the row's colour (`run`, `job`, ...).
    pub family: &'static str,
    pub job_id: Option<String>,
    pub run_id: Option<i64>,
    pub node: Option<String>,
    pub data: String,
}

impl From<&Event> for EventRow {
    fn from(e: &Event) -> EventRow {
        let kind = e.kind.as_str();
        EventRow {
            id: e.id,
            at: Ts::new(e.at),
            kind,
            family: kind.split('.').next().unwrap_or_default(),
            job_id: e.job_id.clone(),
            run_id: e.run_id,
            node: e.node.clone(),
            data: match &e.data {
                serde_json::Value::Object(m) if m.is_empty() => String::new(),
                d => d.to_string(),
            },
        }
    }
}

#[derive(Template)]
#[template(path = "ui/events.html")]
pub struct EventsPage {
    pub layout: Layout,
    pub query: EventsQuery,
    pub families: Vec<String>,
    pub rows: Vec<EventRow>,
    pub poll: String,
    pub window: i64,
}

#[derive(Template)]
#[template(path = "ui/events_live.html")]
pub struct EventsLive {
    pub rows: Vec<EventRow>,
    pub poll: String,
}

/// The newest [`SHOWN`] events matching `filter` among the last [`WINDOW`]
/// ids, newest first, and the cursor to poll after.
fn newest(
    conn: &rusqlite::Connection,
    filter: &Filter,
) -> Result<(Vec<Event>, i64), crate::store::StoreError> {
    let last: i64 = conn
        .prepare_cached("SELECT max(id) FROM events")?
        .query_row([], |r| r.get::<_, Option<i64>>(0))
        .optional()?
        .flatten()
        .unwrap_or(0);
    let page = events::list(conn, (last - WINDOW).max(0), filter, WINDOW as usize)?;
    let cursor = page.cursor.max(last);
    let mut items = page.items;
    let skip = items.len().saturating_sub(SHOWN);
    items.drain(..skip);
    items.reverse();
    Ok((items, cursor))
}

pub async fn page(
    State(console): State<Console>,
    Viewer(s): Viewer,
    UiQuery(query): UiQuery<EventsQuery>,
) -> UiResult {
    let filter = query.filter()?;
    let (found, cursor) = console.store.read(move |c| newest(c, &filter)).await?;
    render(&EventsPage {
        layout: Layout::new(&console.ha, &s, "events"),
        poll: query.poll_url(cursor),
        query,
        families: families(),
        rows: found.iter().map(EventRow::from).collect(),
        window: WINDOW,
    })
}

/// The polled fragment: a new poller (with the advanced cursor) followed by
/// the events after `after`, newest first, replacing the old poller.
pub async fn live(
    State(store): State<Arc<Store>>,
    Viewer(_): Viewer,
    UiQuery(query): UiQuery<EventsQuery>,
) -> UiResult {
    let filter = query.filter()?;
    let after = query
        .after
        .filter(|a| *a >= 0)
        .ok_or_else(|| UiError::new(StatusCode::BAD_REQUEST, "after must be an event id"))?;
    let page = store
        .read(move |c| events::list(c, after, &filter, POLL_LIMIT))
        .await?;
    render(&EventsLive {
        poll: query.poll_url(page.cursor),
        rows: page.items.iter().rev().map(EventRow::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_filters() {
        let f = families();
        assert!(f.contains(&"run.*".to_string()) && f.contains(&"job.*".to_string()));
        assert_eq!(f.iter().filter(|x| *x == "run.*").count(), 1);
        for fam in &f {
            let q = EventsQuery {
                kind: fam.clone(),
                ..Default::default()
            };
            assert_eq!(q.filter().unwrap().types.len(), 1, "{fam}");
        }
        let bad = EventsQuery {
            kind: "runs.*".into(),
            ..Default::default()
        };
        assert_eq!(bad.filter().unwrap_err().status, StatusCode::BAD_REQUEST);
        let q = EventsQuery {
            kind: "run.*".into(),
            job: "a b&c".into(),
            after: Some(7),
        };
        assert_eq!(
            q.poll_url(9),
            "/ui/events/live?type=run.*&job=a+b%26c&after=9"
        );
    }
}

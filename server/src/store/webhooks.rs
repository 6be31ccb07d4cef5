//! The `webhooks` and `webhook_deliveries` tables. A webhook row holds its
//! spec, a random salt (its secret is derived from the cluster secret and
//! the salt, so no secret is stored), and its delivery state: the cursor
//! (newest event handled) and the attempts at the event after it. Every
//! attempt is a `webhook_deliveries` row, written with the state change.

use super::events::{self, EventType};
use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use sundial_proto::webhook::{Delivery, DeliveryOutcome, Webhook, WebhookSpec};

/// A webhook with what delivery needs beyond the API view. (The table's
/// `first_attempt_at` column is no longer read or written: the retry window
/// counts from the event's time.)
#[derive(Debug, Clone)]
pub struct Stored {
    pub webhook: Webhook,
    pub salt: Vec<u8>,
}

const COLUMNS: &str = "id, spec, salt, cursor, attempts, next_attempt_at, last_error, created_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Stored> {
    let id: String = row.get(0)?;
    let spec: String = row.get(1)?;
    let spec: WebhookSpec = serde_json::from_str(&spec).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            format!("webhook {id}: stored spec: {e}").into(),
        )
    })?;
    Ok(Stored {
        salt: row.get(2)?,
        webhook: Webhook {
            spec,
            cursor: row.get(3)?,
            attempts: row.get(4)?,
            next_attempt_at: row.get(5)?,
            last_error: row.get(6)?,
            created_at: row.get(7)?,
            secret: None,
            id,
        },
    })
}

/// Creates a webhook that starts after the newest event stored now.
pub fn insert(
    conn: &Connection,
    id: &str,
    spec: &WebhookSpec,
    salt: &[u8],
    now: i64,
) -> Result<Stored, StoreError> {
    let text = serde_json::to_string(spec)
        .map_err(|e| StoreError::Corrupt(format!("encoding webhook: {e}")))?;
    let (head, _) = events::stats(conn)?;
    conn.prepare_cached(
        "INSERT INTO webhooks (id, spec, salt, cursor, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, text, salt, head, now])?;
    get(conn, id)?.ok_or_else(|| StoreError::NotFound {
        kind: "webhook",
        id: id.to_string(),
    })
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<Stored>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM webhooks WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()?)
}

/// Number of webhooks.
pub fn count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT count(*) FROM webhooks", [], |r| r.get(0))?)
}

pub fn list(conn: &Connection) -> Result<Vec<Stored>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM webhooks ORDER BY id"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The smallest cursor among webhooks (None without webhooks): how far
/// behind the slowest one is.
pub fn min_cursor(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn.query_row("SELECT min(cursor) FROM webhooks", [], |r| r.get(0))?)
}

/// Deletes a webhook and its delivery log; false when it did not exist.
pub fn delete(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM webhooks WHERE id = ?1", [id])? > 0)
}

/// Moves the cursor past events the webhook does not take (any more: an
/// event being retried whose job lost the selected labels or was deleted).
/// Moving on drops the retry state, which belonged to the event at the head.
pub fn skip_to(conn: &Connection, id: &str, cursor: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE webhooks SET cursor = ?2, attempts = 0, next_attempt_at = NULL
         WHERE id = ?1 AND cursor < ?2",
    )?
    .execute(params![id, cursor])?;
    Ok(())
}

/// One attempt and what it does to the webhook's state.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub webhook_id: String,
    pub message_id: String,
    /// The event delivered; None for a test message (no state change).
    pub event_id: Option<i64>,
    pub attempt: u32,
    pub at: i64,
    pub status: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub outcome: DeliveryOutcome,
    /// When to try again (outcome `retrying`).
    pub next_attempt_at: Option<i64>,
}

/// Records an attempt and moves the webhook on: past the event when it was
/// delivered or given up (then a `webhook.failed` event is written too), or
/// to its next attempt.
pub fn record(conn: &Connection, a: &Attempt) -> Result<Delivery, StoreError> {
    conn.prepare_cached(
        "INSERT INTO webhook_deliveries
             (webhook_id, message_id, event_id, attempt, at, status, latency_ms, error, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        a.webhook_id,
        a.message_id,
        a.event_id,
        a.attempt,
        a.at,
        a.status,
        a.latency_ms,
        a.error,
        a.outcome.as_str()
    ])?;
    let delivery_id = conn.last_insert_rowid();
    if let Some(event_id) = a.event_id {
        match a.outcome {
            DeliveryOutcome::Delivered | DeliveryOutcome::Failed => {
                conn.prepare_cached(
                    "UPDATE webhooks SET cursor = max(cursor, ?2), attempts = 0,
                         next_attempt_at = NULL,
                         last_error = CASE WHEN ?3 THEN NULL ELSE ?4 END
                     WHERE id = ?1",
                )?
                .execute(params![
                    a.webhook_id,
                    event_id,
                    a.outcome == DeliveryOutcome::Delivered,
                    a.error
                ])?;
            }
            DeliveryOutcome::Retrying => {
                conn.prepare_cached(
                    "UPDATE webhooks SET attempts = ?2, next_attempt_at = ?3, last_error = ?4
                     WHERE id = ?1",
                )?
                .execute(params![
                    a.webhook_id,
                    a.attempt,
                    a.next_attempt_at,
                    a.error
                ])?;
            }
        }
        if a.outcome == DeliveryOutcome::Failed {
            events::append(
                conn,
                a.at,
                EventType::WebhookFailed,
                None,
                None,
                None,
                &serde_json::json!({
                    "webhook": a.webhook_id,
                    "event_id": event_id,
                    "attempts": a.attempt,
                    "error": a.error,
                }),
            )?;
        }
    }
    Ok(Delivery {
        id: delivery_id,
        message_id: a.message_id.clone(),
        event_id: a.event_id,
        attempt: a.attempt,
        at: a.at,
        status: a.status,
        latency_ms: a.latency_ms,
        error: a.error.clone(),
        outcome: a.outcome,
    })
}

/// A webhook's delivery attempts, newest first, with a cursor (the last id).
pub fn deliveries(
    conn: &Connection,
    webhook_id: &str,
    cursor: Option<i64>,
    limit: usize,
) -> Result<(Vec<Delivery>, Option<i64>), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, message_id, event_id, attempt, at, status, latency_ms, error, outcome
         FROM webhook_deliveries WHERE webhook_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![
        webhook_id,
        cursor.unwrap_or(i64::MAX),
        limit as i64 + 1
    ])?;
    let mut items = Vec::with_capacity(limit.min(1024));
    while let Some(r) = rows.next()? {
        if items.len() == limit {
            let last = items.last().map(|d: &Delivery| d.id);
            return Ok((items, last));
        }
        let outcome: String = r.get(8)?;
        items.push(Delivery {
            id: r.get(0)?,
            message_id: r.get(1)?,
            event_id: r.get(2)?,
            attempt: r.get(3)?,
            at: r.get(4)?,
            status: r.get(5)?,
            latency_ms: r.get(6)?,
            error: r.get(7)?,
            outcome: outcome
                .parse()
                .map_err(|e: String| StoreError::Corrupt(format!("webhook delivery: {e}")))?,
        });
    }
    Ok((items, None))
}

/// Deletes delivery records older than `min_at`, at most `batch`.
pub fn prune_deliveries(conn: &Connection, min_at: i64, batch: usize) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM webhook_deliveries WHERE id IN (
                 SELECT id FROM webhook_deliveries WHERE at < ?1 ORDER BY id LIMIT ?2)",
        )?
        .execute(params![min_at, batch as i64])?)
}

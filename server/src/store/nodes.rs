//! The `nodes` table: worker nodes that joined, their generation (bumped on
//! revoke or re-join, which invalidates the derived key), labels, capacity
//! and last contact. No key material is stored here.

use super::events::{self, EventType};
use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use std::collections::BTreeMap;
use sundial_proto::ExecutorKind;

/// A node as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: String,
    pub generation: u64,
    pub revoked: bool,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    pub executors: Vec<ExecutorKind>,
    pub version: String,
    #[serde(with = "sundial_proto::time::rfc3339")]
    pub joined_at: i64,
    #[serde(with = "sundial_proto::time::rfc3339_opt")]
    pub last_seen: Option<i64>,
}

const COLUMNS: &str =
    "id, generation, revoked, labels, capacity, executors, version, joined_at, last_seen";

fn json_col<T: serde::de::DeserializeOwned>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Node> {
    Ok(Node {
        id: row.get(0)?,
        generation: row.get::<_, i64>(1)? as u64,
        revoked: row.get(2)?,
        labels: json_col(row, 3)?,
        capacity: row.get(4)?,
        executors: json_col(row, 5)?,
        version: row.get(6)?,
        joined_at: row.get(7)?,
        last_seen: row.get(8)?,
    })
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<Node>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM nodes WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()?)
}

pub fn list(conn: &Connection) -> Result<Vec<Node>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM nodes ORDER BY id"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Number of nodes not revoked.
pub fn count_unrevoked(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT count(*) FROM nodes WHERE revoked = 0", [], |r| {
            r.get(0)
        })?,
    )
}

/// Joins a node: creates it at generation 1, or re-joins it at the next
/// generation (invalidating any earlier credential). Returns the generation.
pub fn join(conn: &Connection, id: &str, now: i64) -> Result<u64, StoreError> {
    let gen: i64 = conn
        .prepare_cached(
            "INSERT INTO nodes (id, generation, joined_at) VALUES (?1, 1, ?2)
             ON CONFLICT (id) DO UPDATE SET generation = generation + 1, revoked = 0, joined_at = ?2
             RETURNING generation",
        )?
        .query_row(params![id, now], |r| r.get(0))?;
    events::append(
        conn,
        now,
        EventType::NodeJoined,
        None,
        None,
        Some(id),
        &serde_json::json!({ "generation": gen }),
    )?;
    Ok(gen as u64)
}

/// Records what a node offers.
pub fn register(
    conn: &Connection,
    id: &str,
    labels: &BTreeMap<String, String>,
    capacity: u32,
    executors: &[ExecutorKind],
    version: &str,
    now: i64,
) -> Result<(), StoreError> {
    let labels = serde_json::to_string(labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let executors =
        serde_json::to_string(executors).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let n = conn
        .prepare_cached(
            "UPDATE nodes SET labels = ?2, capacity = ?3, executors = ?4, version = ?5, last_seen = ?6
             WHERE id = ?1 AND revoked = 0",
        )?
        .execute(params![id, labels, capacity, executors, version, now])?;
    if n == 0 {
        return Err(StoreError::NotFound {
            kind: "node",
            id: id.to_string(),
        });
    }
    Ok(())
}

/// Whether node `id`'s credential of `generation` still holds: the node
/// exists, is not revoked, and has not joined again since.
pub fn holds_credential(conn: &Connection, id: &str, generation: u64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM nodes WHERE id = ?1 AND generation = ?2 AND revoked = 0")?
        .exists(params![id, generation as i64])?)
}

/// Revokes a node: bumps its generation so its key stops verifying.
/// Returns whether the node exists.
pub fn revoke(conn: &Connection, id: &str, now: i64) -> Result<bool, StoreError> {
    // Once: a node already revoked keeps its generation, and no second
    // `node.revoked` event (or webhook) goes out.
    let revoked = conn
        .prepare_cached(
            "UPDATE nodes SET revoked = 1, generation = generation + 1 WHERE id = ?1 AND revoked = 0",
        )?
        .execute([id])?
        > 0;
    if !revoked {
        return Ok(conn
            .prepare_cached("SELECT 1 FROM nodes WHERE id = ?1")?
            .exists([id])?);
    }
    events::append(
        conn,
        now,
        EventType::NodeRevoked,
        None,
        None,
        Some(id),
        &serde_json::json!({}),
    )?;
    Ok(true)
}

/// Nodes not heard from for `window_ms` (and not revoked) are marked down,
/// each with one `node.down` event; contact clears the mark. The mark lives
/// in the database, so a failover does not repeat the event.
pub fn mark_down(conn: &Connection, now: i64, window_ms: i64) -> Result<usize, StoreError> {
    let down: Vec<(String, Option<i64>)> = conn
        .prepare_cached(
            "UPDATE nodes SET down_since = ?1
             WHERE revoked = 0 AND down_since IS NULL AND coalesce(last_seen, joined_at) < ?1 - ?2
             RETURNING id, last_seen",
        )?
        .query_map(params![now, window_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, last_seen) in &down {
        events::append(
            conn,
            now,
            EventType::NodeDown,
            None,
            None,
            Some(id),
            &serde_json::json!({ "last_seen": last_seen.map(sundial_proto::time::format_ms) }),
        )?;
    }
    Ok(down.len())
}

/// Writes last-contact times collected in memory.
pub fn touch_many(conn: &Connection, seen: &[(String, i64)]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE nodes SET last_seen = max(coalesce(last_seen, 0), ?2), down_since = NULL WHERE id = ?1",
    )?;
    for (id, at) in seen {
        stmt.execute(params![id, at])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;

    #[tokio::test]
    async fn a_node_is_revoked_once() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                join(c, "n1", 0)?;
                let before = get(c, "n1")?.unwrap().generation;
                assert!(revoke(c, "n1", 1)?);
                assert!(revoke(c, "n1", 2)?, "still found");
                assert!(!revoke(c, "nope", 3)?);
                let after = get(c, "n1")?.unwrap();
                assert!(after.revoked);
                assert_eq!(after.generation, before + 1);
                let events: i64 = c.query_row(
                    "SELECT count(*) FROM events WHERE type = 'node.revoked'",
                    [],
                    |r| r.get(0),
                )?;
                assert_eq!(events, 1);
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn a_silent_node_is_down_once_until_it_is_heard_from() {
        let (_dir, store) = temp_store();
        let counts = store
            .write(|c| {
                join(c, "n1", 0)?;
                join(c, "n2", 0)?;
                touch_many(c, &[("n2".to_string(), 100_000)])?;
                let first = mark_down(c, 130_000, 120_000)?; // n1 silent since 0
                let again = mark_down(c, 140_000, 120_000)?; // no repeat
                touch_many(c, &[("n1".to_string(), 150_000)])?; // back
                let back = mark_down(c, 160_000, 120_000)?;
                let later = mark_down(c, 300_000, 120_000)?; // both silent now
                let downs: i64 = c.query_row(
                    "SELECT count(*) FROM events WHERE type = 'node.down'",
                    [],
                    |r| r.get(0),
                )?;
                Ok((first, again, back, later, downs))
            })
            .await
            .unwrap();
        assert_eq!(counts, (1, 0, 0, 2, 3));
        store.close().await;
    }
}

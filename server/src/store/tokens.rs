//! The `join_tokens` table: shared secrets a DaemonSet uses to join nodes.
//! Stored as SHA-256 hashes, with an expiry and an optional use limit.

use super::events::{self, EventType};
use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    #[serde(with = "sundial_proto::time::rfc3339")]
    pub expires_at: i64,
    pub max_uses: Option<u32>,
    pub uses: u32,
    #[serde(with = "sundial_proto::time::rfc3339")]
    pub created_at: i64,
}

pub fn insert(
    conn: &Connection,
    id: &str,
    hash: &[u8],
    name: &str,
    expires_at: i64,
    max_uses: Option<u32>,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO join_tokens (id, hash, name, expires_at, max_uses, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![id, hash, name, expires_at, max_uses, now])?;
    events::append(
        conn,
        now,
        EventType::TokenCreated,
        None,
        None,
        None,
        &serde_json::json!({ "id": id, "name": name }),
    )
}

/// Why a join token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Expired,
    UsedUp,
}

/// Consumes one use of the token with this hash.
pub fn consume(
    conn: &Connection,
    hash: &[u8],
    now: i64,
) -> Result<Result<(), Refusal>, StoreError> {
    let row: Option<(String, i64, Option<i64>, i64)> = conn
        .prepare_cached("SELECT id, expires_at, max_uses, uses FROM join_tokens WHERE hash = ?1")?
        .query_row([hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((id, expires_at, max_uses, uses)) = row else {
        return Ok(Err(Refusal::Unknown));
    };
    if expires_at <= now {
        return Ok(Err(Refusal::Expired));
    }
    if max_uses.is_some_and(|m| uses >= m) {
        return Ok(Err(Refusal::UsedUp));
    }
    conn.prepare_cached("UPDATE join_tokens SET uses = uses + 1 WHERE id = ?1")?
        .execute([id])?;
    Ok(Ok(()))
}

pub fn list(conn: &Connection) -> Result<Vec<TokenInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, expires_at, max_uses, uses, created_at FROM join_tokens ORDER BY created_at DESC",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(TokenInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            expires_at: r.get(2)?,
            max_uses: r.get(3)?,
            uses: r.get(4)?,
            created_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn delete(conn: &Connection, id: &str, now: i64) -> Result<bool, StoreError> {
    let deleted = conn.execute("DELETE FROM join_tokens WHERE id = ?1", [id])? > 0;
    if deleted {
        events::append(
            conn,
            now,
            EventType::TokenDeleted,
            None,
            None,
            None,
            &serde_json::json!({ "id": id }),
        )?;
    }
    Ok(deleted)
}

//! The `api_keys` table: admin and read keys, stored only as SHA-256 hashes.
//! A key's secret is shown once, when it is created, and never stored.

use super::events::{self, EventType};
use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything.
    Admin,
    /// GET endpoints only.
    Read,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "admin" => Some(Scope::Admin),
            "read" => Some(Scope::Read),
            _ => None,
        }
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub scope: Scope,
    pub name: String,
    #[serde(with = "sundial_proto::time::rfc3339")]
    pub created_at: i64,
    /// When the key stops working (None: never).
    #[serde(with = "sundial_proto::time::rfc3339_opt")]
    pub expires_at: Option<i64>,
    /// Last successful use, to within about a minute (None: never used).
    #[serde(with = "sundial_proto::time::rfc3339_opt")]
    pub last_used_at: Option<i64>,
}

/// A key found by the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub expires_at: Option<i64>,
}

impl KeyRow {
    /// Whether the key has expired at `now` (unix ms).
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Sets when a key expires (called in the transaction that inserts it).
pub fn set_expiry(conn: &Connection, id: &str, expires_at: Option<i64>) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE api_keys SET expires_at = ?2 WHERE id = ?1")?
        .execute(params![id, expires_at])?;
    Ok(())
}

/// Records when keys were last used (one batched write for many uses);
/// never moves `last_used_at` backwards.
pub fn touch(conn: &Connection, uses: &[(String, i64)]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?1",
    )?;
    for (id, at) in uses {
        stmt.execute(params![id, at])?;
    }
    Ok(())
}

pub fn count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT count(*) FROM api_keys", [], |r| r.get(0))?)
}

/// Admin keys that have not expired at `now`.
pub fn working_admins(conn: &Connection, now: i64) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM api_keys WHERE scope = 'admin'
         AND (expires_at IS NULL OR expires_at > ?1)",
        [now],
        |r| r.get(0),
    )?)
}

/// Makes the key with this hash a working admin key: inserted, or (when it
/// is already stored, e.g. expired) given admin scope and no expiry.
pub fn restore_admin(
    conn: &Connection,
    id: &str,
    hash: &[u8],
    name: &str,
    now: i64,
) -> Result<(), StoreError> {
    let updated = conn
        .prepare_cached("UPDATE api_keys SET scope = 'admin', expires_at = NULL WHERE hash = ?1")?
        .execute(params![hash])?;
    if updated == 0 {
        insert(conn, id, hash, Scope::Admin, name, now)?;
    }
    Ok(())
}

pub fn insert(
    conn: &Connection,
    id: &str,
    hash: &[u8],
    scope: Scope,
    name: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO api_keys (id, hash, scope, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, hash, scope.as_str(), name, now])?;
    events::append(
        conn,
        now,
        EventType::KeyCreated,
        None,
        None,
        None,
        &serde_json::json!({ "id": id, "scope": scope.as_str(), "name": name }),
    )
}

/// Looks a key up by the hash of its secret (expired keys too: callers
/// check [`KeyRow::expired`] so they can say why a key is refused).
pub fn find_by_hash(conn: &Connection, hash: &[u8]) -> Result<Option<KeyRow>, StoreError> {
    let row: Option<(String, String, Option<i64>, Option<String>)> = conn
        .prepare_cached("SELECT id, scope, expires_at, name FROM api_keys WHERE hash = ?1")?
        .query_row([hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    row.map(|(id, scope, expires_at, name)| {
        Scope::parse(&scope)
            .map(|scope| KeyRow {
                id,
                name: name.unwrap_or_default(),
                scope,
                expires_at,
            })
            .ok_or_else(|| StoreError::Corrupt(format!("api key scope {scope:?}")))
    })
    .transpose()
}

pub fn list(conn: &Connection) -> Result<Vec<KeyInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, scope, name, created_at, expires_at, last_used_at FROM api_keys
         ORDER BY created_at DESC, id",
    )?;
    let rows = stmt.query_map([], |r| {
        let scope: String = r.get(1)?;
        Ok(KeyInfo {
            id: r.get(0)?,
            scope: Scope::parse(&scope).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Text,
                    format!("api key scope {scope:?}").into(),
                )
            })?,
            name: r.get(2)?,
            created_at: r.get(3)?,
            expires_at: r.get(4)?,
            last_used_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes a key; refuses to delete the last admin key (that would lock everyone out).
pub fn delete(conn: &Connection, id: &str, now: i64) -> Result<bool, StoreError> {
    let scope: Option<String> = conn
        .query_row("SELECT scope FROM api_keys WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    match scope.as_deref() {
        None => return Ok(false),
        Some("admin") => {
            // Expired admin keys do not count: deleting the last one that
            // still works would lock everyone out.
            let others: i64 = conn.query_row(
                "SELECT count(*) FROM api_keys WHERE scope = 'admin' AND id <> ?1
                 AND (expires_at IS NULL OR expires_at > ?2)",
                params![id, now],
                |r| r.get(0),
            )?;
            let this_works: bool = conn.query_row(
                "SELECT expires_at IS NULL OR expires_at > ?2 FROM api_keys WHERE id = ?1",
                params![id, now],
                |r| r.get(0),
            )?;
            if this_works && others == 0 {
                return Err(StoreError::Conflict(
                    "refusing to delete the last admin key that has not expired".into(),
                ));
            }
        }
        Some(_) => {}
    }
    conn.execute("DELETE FROM api_keys WHERE id = ?1", [id])?;
    events::append(
        conn,
        now,
        EventType::KeyDeleted,
        None,
        None,
        None,
        &serde_json::json!({ "id": id }),
    )?;
    Ok(true)
}

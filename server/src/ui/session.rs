//! Console sessions: sign-in with an API key creates a server-side session
//! row (`ui_sessions`) holding only the SHA-256 of a random token, the key's
//! id and scope, a CSRF token and an expiry. The browser keeps the token in
//! an `HttpOnly; SameSite=Strict; Path=/ui` cookie (`Secure` under TLS).
//!
//! Sessions live in the database, so a replica reads the same sessions as
//! the primary and a session survives a failover. A session ends at sign-out,
//! at expiry, or when its API key is deleted (the lookup joins `api_keys`).

use crate::auth::hash_key;
use crate::store::keys::{self, Scope};
use crate::store::{Store, StoreError};
use axum::http::header::COOKIE;
use axum::http::HeaderMap;
use base64::Engine;
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use sundial_proto::time::now_ms;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "sundial_session";
/// How long a session lasts after sign-in.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

/// A signed-in viewer.
#[derive(Debug, Clone)]
pub struct Session {
    pub key_id: String,
    pub scope: Scope,
    /// The per-session CSRF token every form carries.
    pub csrf: String,
    pub expires_at: i64,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.scope == Scope::Admin
    }
}

/// 32 random bytes, URL-safe base64 (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value scoped to the console.
pub fn set_cookie(name: &str, value: &str, max_age_s: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Creates a session for a valid key. Returns the cookie token (never
/// stored) and the session, or `None` when the key is unknown or expired.
/// A session never outlives its key's expiry.
pub async fn sign_in(store: &Store, key: &str) -> Result<Option<(String, Session)>, StoreError> {
    let key_hash = hash_key(key);
    let now = now_ms();
    let Some(found) = store
        .read(move |c| keys::find_by_hash(c, &key_hash))
        .await?
        .filter(|k| !k.expired(now))
    else {
        return Ok(None);
    };
    let token = random_token();
    let expires_at = (now + SESSION_TTL_MS).min(found.expires_at.unwrap_or(i64::MAX));
    let session = Session {
        key_id: found.id,
        scope: found.scope,
        csrf: random_token(),
        expires_at,
    };
    let token_hash = hash_key(&token);
    let row = session.clone();
    store
        .write(move |c| insert(c, &token_hash, &row, now))
        .await?;
    Ok(Some((token, session)))
}

/// Stores a session and drops expired ones.
pub fn insert(
    conn: &Connection,
    token_hash: &[u8],
    s: &Session,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM ui_sessions WHERE expires_at <= ?1")?
        .execute([now])?;
    conn.prepare_cached(
        "INSERT INTO ui_sessions (token_hash, key_id, scope, csrf, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        token_hash,
        s.key_id,
        s.scope.as_str(),
        s.csrf,
        now,
        s.expires_at
    ])?;
    Ok(())
}

/// The live session with this token hash, if any (unexpired, key still present).
pub fn find(conn: &Connection, token_hash: &[u8], now: i64) -> Result<Option<Session>, StoreError> {
    let row: Option<(String, String, String, i64)> = conn
        .prepare_cached(
            "SELECT s.key_id, s.scope, s.csrf, s.expires_at FROM ui_sessions s
             JOIN api_keys k ON k.id = s.key_id
             WHERE s.token_hash = ?1 AND s.expires_at > ?2",
        )?
        .query_row(params![token_hash, now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    row.map(|(key_id, scope, csrf, expires_at)| {
        let scope = Scope::parse(&scope)
            .ok_or_else(|| StoreError::Corrupt(format!("session scope {scope:?}")))?;
        Ok(Session {
            key_id,
            scope,
            csrf,
            expires_at,
        })
    })
    .transpose()
}

/// Deletes a session. Returns false when it did not exist.
pub fn delete(conn: &Connection, token_hash: &[u8]) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM ui_sessions WHERE token_hash = ?1")?
        .execute([token_hash])?
        > 0)
}

/// The request's session, if its cookie names a live one.
pub async fn current(store: &Store, headers: &HeaderMap) -> Result<Option<Session>, StoreError> {
    let Some(token) = cookie_value(headers, COOKIE_NAME) else {
        return Ok(None);
    };
    let token_hash = hash_key(&token);
    store.read(move |c| find(c, &token_hash, now_ms())).await
}

/// Ends the request's session (sign-out).
pub async fn sign_out(store: &Store, headers: &HeaderMap) -> Result<(), StoreError> {
    if let Some(token) = cookie_value(headers, COOKIE_NAME) {
        let token_hash = hash_key(&token);
        store.write(move |c| delete(c, &token_hash)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use axum::http::HeaderValue;

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; sundial_session=tok ; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE_NAME).as_deref(), Some("tok"));
        assert_eq!(cookie_value(&h, "missing"), None);
        h.insert(COOKIE, HeaderValue::from_static("sundial_session="));
        assert_eq!(cookie_value(&h, COOKIE_NAME), None);
    }

    #[test]
    fn cookie_attributes() {
        let c = set_cookie(COOKIE_NAME, "v", 60, false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/ui"));
        assert!(!c.contains("Secure"));
        assert!(set_cookie(COOKIE_NAME, "v", 60, true).ends_with("; Secure"));
    }

    #[test]
    fn tokens_are_random() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
    }

    #[tokio::test]
    async fn session_lifecycle_expiry_and_key_deletion() {
        let (_dir, store) = temp_store();
        store
            .write(|c| keys::insert(c, "key_a", &[1], Scope::Read, "", 0))
            .await
            .unwrap();
        let s = Session {
            key_id: "key_a".into(),
            scope: Scope::Read,
            csrf: "c".into(),
            expires_at: 1_000,
        };
        let row = s.clone();
        store
            .write(move |c| insert(c, &[9, 9], &row, 0))
            .await
            .unwrap();
        let found = store.read(|c| find(c, &[9, 9], 999)).await.unwrap();
        assert_eq!(found.map(|s| s.scope), Some(Scope::Read));
        // Expired: gone.
        assert!(store
            .read(|c| find(c, &[9, 9], 1_000))
            .await
            .unwrap()
            .is_none());
        // Unknown token: gone.
        assert!(store.read(|c| find(c, &[9, 8], 0)).await.unwrap().is_none());
        // Deleting the key ends the session.
        store
            .write(|c| Ok(c.execute("DELETE FROM api_keys WHERE id = 'key_a'", [])?))
            .await
            .unwrap();
        assert!(store.read(|c| find(c, &[9, 9], 0)).await.unwrap().is_none());
        // Sign-out deletes the row.
        assert!(store.write(|c| delete(c, &[9, 9])).await.unwrap());
        assert!(!store.write(|c| delete(c, &[9, 9])).await.unwrap());
        store.close().await;
    }
}

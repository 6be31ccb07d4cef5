//! Admin API keys: generation, hashing, first-start bootstrap and the
//! in-memory cache that spares each request a database lookup.
//!
//! A key looks like `sdk_<43 url-safe base64 chars>` (32 random bytes). Only
//! its SHA-256 reaches the database, so neither the database nor its backups
//! hold a usable secret.

use crate::store::keys::{self, Scope};
use crate::store::{Store, StoreError};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use sundial_proto::time::now_ms;

/// Prefix of every generated key (helps secret scanners and humans).
pub const KEY_PREFIX: &str = "sdk_";

/// SHA-256 of a presented key.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A fresh random key.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A short public id for a key (shown in listings, used to delete it).
pub fn key_id(hash: &[u8; 32]) -> String {
    format!("key_{}", hex::encode(&hash[..6]))
}

/// Stores a key (hash only) and returns its id.
pub async fn create_key(
    store: &Store,
    key: String,
    scope: Scope,
    name: String,
) -> Result<String, StoreError> {
    create_expiring_key(store, key, scope, name, None).await
}

/// Stores a key (hash only) that stops working at `expires_at` (unix ms).
pub async fn create_expiring_key(
    store: &Store,
    key: String,
    scope: Scope,
    name: String,
    expires_at: Option<i64>,
) -> Result<String, StoreError> {
    let hash = hash_key(&key);
    let id = key_id(&hash);
    let id2 = id.clone();
    store
        .write(move |c| {
            keys::insert(c, &id2, &hash, scope, &name, now_ms())?;
            keys::set_expiry(c, &id2, expires_at)
        })
        .await?;
    Ok(id)
}

/// On an empty key table, seeds the admin key from `SUNDIAL_ADMIN_KEY`, the key
/// file, or a generated key that is printed once. Returns the generated key, if any.
///
/// When keys exist but no admin key works any more (all expired), a
/// configured key (environment or file) is made a working admin key again:
/// restarting with `--admin-key-file` is the way back in. Without one the
/// server warns and starts as it is.
pub async fn bootstrap(
    store: &Store,
    env_key: Option<String>,
    key_file: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    let existing = store.read(keys::count).await?;
    if existing > 0 {
        let working = store.read(|c| keys::working_admins(c, now_ms())).await?;
        if working > 0 {
            return Ok(None);
        }
        let Some(key) = configured_admin_key(env_key, key_file)? else {
            tracing::warn!(
                "no admin API key works (all expired or none left): restart with \
                 SUNDIAL_ADMIN_KEY or --admin-key-file to restore one"
            );
            return Ok(None);
        };
        let hash = hash_key(&key);
        let id = key_id(&hash);
        let id2 = id.clone();
        store
            .write(move |c| keys::restore_admin(c, &id2, &hash, "bootstrap", now_ms()))
            .await?;
        tracing::warn!(key = %id, "no admin API key worked: restored the configured admin key");
        return Ok(None);
    }
    let (key, generated) = match configured_admin_key(env_key, key_file)? {
        Some(k) => (k, false),
        None => (generate_key(), true),
    };
    create_key(store, key.clone(), Scope::Admin, "bootstrap".into()).await?;
    Ok(generated.then_some(key))
}

/// The admin key from `SUNDIAL_ADMIN_KEY` (wins) or the key file, if either
/// is given; shorter than 16 characters is an error.
fn configured_admin_key(
    env_key: Option<String>,
    key_file: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    let key = match (env_key, key_file) {
        (Some(k), _) if !k.trim().is_empty() => {
            let k = k.trim().to_string();
            if k.len() < 16 {
                anyhow::bail!("SUNDIAL_ADMIN_KEY is shorter than 16 characters");
            }
            k
        }
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading admin key file {}: {e}", path.display()))?;
            let k = text.trim().to_string();
            if k.len() < 16 {
                anyhow::bail!(
                    "admin key in {} is shorter than 16 characters",
                    path.display()
                );
            }
            k
        }
        _ => return Ok(None),
    };
    Ok(Some(key))
}

/// What a presented key is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key's row (id, name, scope): who is acting, for the audit log.
    Valid(keys::KeyRow),
    /// Known, but expired at this instant (unix ms).
    Expired(i64),
    Unknown,
}

/// How often the recorded key uses are written to `api_keys.last_used_at`.
const FLUSH_USES_EVERY_MS: i64 = 60_000;

/// How long a cached key row is trusted before it is read again. A key
/// deleted through this server is dropped at once ([`KeyCache::invalidate`]);
/// one deleted through another (the primary, seen by a replica through
/// replication, or before a failover) stops working within this.
const KEY_CACHE_TTL_MS: i64 = 1_000;

/// Keys by hash (expired ones too, so the refusal can say so) with the
/// instant each was read, and the uses not yet written: `last_used_at` is
/// updated in one batched write about once a minute, never a write per
/// request. Invalidated whole whenever a key is deleted here; an entry is
/// read again once it is [`KEY_CACHE_TTL_MS`] old.
pub struct KeyCache {
    map: RwLock<HashMap<[u8; 32], (keys::KeyRow, i64)>>,
    uses: Mutex<HashMap<String, i64>>,
    flushed_at: AtomicI64,
    flush_every_ms: i64,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache::with_flush_every(FLUSH_USES_EVERY_MS)
    }
}

impl KeyCache {
    pub fn with_flush_every(flush_every_ms: i64) -> Self {
        KeyCache {
            map: RwLock::default(),
            uses: Mutex::default(),
            flushed_at: AtomicI64::new(now_ms()),
            flush_every_ms,
        }
    }

    /// Checks a presented key at this instant; a valid use is recorded.
    pub async fn lookup(&self, store: &Arc<Store>, key: &str) -> Result<KeyCheck, StoreError> {
        let hash = hash_key(key);
        let now = now_ms();
        let cached = self.map.read().ok().and_then(|m| {
            m.get(&hash)
                .filter(|(_, at)| now - at < KEY_CACHE_TTL_MS)
                .map(|(row, _)| row.clone())
        });
        let row = match cached {
            Some(row) => Some(row),
            None => {
                let found = store.read(move |c| keys::find_by_hash(c, &hash)).await?;
                if let Ok(mut map) = self.map.write() {
                    match &found {
                        Some(row) => {
                            if map.len() > 10_000 {
                                map.clear();
                            }
                            map.insert(hash, (row.clone(), now));
                        }
                        None => {
                            map.remove(&hash);
                        }
                    }
                }
                found
            }
        };
        Ok(match row {
            None => KeyCheck::Unknown,
            Some(row) if row.expired(now) => KeyCheck::Expired(row.expires_at.unwrap_or(now)),
            Some(row) => {
                self.used(store, row.id.clone(), now);
                KeyCheck::Valid(row)
            }
        })
    }

    /// Records a use; once a flush interval has passed, writes the
    /// collected uses in one write (in the background). Uses seen by a
    /// replica, which cannot write, are dropped.
    fn used(&self, store: &Arc<Store>, id: String, now: i64) {
        let batch = {
            let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
            uses.insert(id, now);
            let last = self.flushed_at.load(Ordering::Relaxed);
            if now - last < self.flush_every_ms
                || self
                    .flushed_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                return;
            }
            std::mem::take(&mut *uses)
        };
        let batch: Vec<(String, i64)> = batch.into_iter().collect();
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.write(move |c| keys::touch(c, &batch)).await {
                tracing::debug!(error = %e, "api key last use not recorded");
            }
        });
    }

    pub fn invalidate(&self) {
        if let Ok(mut m) = self.map.write() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_prefixed() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 43);
        assert_ne!(key_id(&hash_key(&a)), key_id(&hash_key(&b)));
    }

    /// Deleting the last admin key that works is refused (expired ones do
    /// not count), and when time alone leaves no working admin key, a
    /// restart with the configured key restores it.
    #[tokio::test]
    async fn the_last_working_admin_key_stays_or_comes_back() {
        let (_dir, store) = crate::store::test_support::temp_store();
        let key = "configured-admin-key-0123";
        assert_eq!(
            bootstrap(&store, Some(key.into()), None).await.unwrap(),
            None
        );
        let id = key_id(&hash_key(key));
        let now = now_ms();
        create_expiring_key(
            &store,
            "sdk_gone".into(),
            Scope::Admin,
            "b".into(),
            Some(now - 1),
        )
        .await
        .unwrap();
        let old = key_id(&hash_key("sdk_gone"));
        let delete = |id: String| store.write(move |c| keys::delete(c, &id, now_ms()));
        let refused = delete(id.clone()).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("last admin key that has not expired"),
            "{refused}"
        );
        // The expired one may go; the working one still may not.
        assert!(delete(old).await.unwrap());
        assert!(delete(id.clone()).await.is_err());
        // Time runs the working key out: no configured key, nothing changes.
        let id2 = id.clone();
        store
            .write(move |c| keys::set_expiry(c, &id2, Some(now - 1)))
            .await
            .unwrap();
        let working = || store.read(|c| keys::working_admins(c, now_ms()));
        assert_eq!(bootstrap(&store, None, None).await.unwrap(), None);
        assert_eq!(working().await.unwrap(), 0);
        // A restart with the configured key makes it work again.
        assert_eq!(
            bootstrap(&store, Some(key.into()), None).await.unwrap(),
            None
        );
        assert_eq!(working().await.unwrap(), 1);
        assert_eq!(store.read(keys::count).await.unwrap(), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn expired_keys_are_refused_and_uses_are_written_in_batches() {
        let (_dir, store) = crate::store::test_support::temp_store();
        let store = Arc::new(store);
        let now = now_ms();
        create_expiring_key(&store, "sdk_live".into(), Scope::Read, "a".into(), None)
            .await
            .unwrap();
        create_expiring_key(
            &store,
            "sdk_old".into(),
            Scope::Admin,
            "b".into(),
            Some(now - 1),
        )
        .await
        .unwrap();
        let cache = KeyCache::with_flush_every(0);
        assert!(matches!(
            cache.lookup(&store, "sdk_live").await.unwrap(),
            KeyCheck::Valid(row) if row.scope == Scope::Read && row.name == "a"
        ));
        assert_eq!(
            cache.lookup(&store, "sdk_old").await.unwrap(),
            KeyCheck::Expired(now - 1)
        );
        assert_eq!(
            cache.lookup(&store, "sdk_nope").await.unwrap(),
            KeyCheck::Unknown
        );
        // The use is written in the background: wait for it (bounded).
        let mut used = None;
        for _ in 0..100 {
            let items = store.read(keys::list).await.unwrap();
            used = items
                .iter()
                .find(|k| k.name == "a")
                .and_then(|k| k.last_used_at);
            if used.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(used.is_some_and(|at| at >= now));
        let items = store.read(keys::list).await.unwrap();
        let old = items.iter().find(|k| k.name == "b").unwrap();
        assert_eq!(old.expires_at, Some(now - 1));
        assert_eq!(
            old.last_used_at, None,
            "an expired key is not counted as used"
        );
    }

    /// A key deleted through another server (a replica learns of it by
    /// replication, a promoted server may have cached it before) stops
    /// working here within the cache's time to live.
    #[tokio::test]
    async fn a_key_deleted_elsewhere_stops_working_within_a_second() {
        let (_dir, store) = crate::store::test_support::temp_store();
        let store = Arc::new(store);
        create_key(&store, "sdk_leaked".into(), Scope::Read, "l".into())
            .await
            .unwrap();
        let cache = KeyCache::default();
        let valid = |c: KeyCheck| matches!(c, KeyCheck::Valid(_));
        assert!(valid(cache.lookup(&store, "sdk_leaked").await.unwrap()));
        let id = key_id(&hash_key("sdk_leaked"));
        let deleted = store
            .write(move |c| keys::delete(c, &id, now_ms()))
            .await
            .unwrap();
        assert!(deleted, "deleted without telling this cache");
        let started = std::time::Instant::now();
        loop {
            match cache.lookup(&store, "sdk_leaked").await.unwrap() {
                KeyCheck::Unknown => break,
                other => assert!(valid(other)),
            }
            assert!(
                started.elapsed() < std::time::Duration::from_millis(1_500),
                "still valid after the cache's time to live"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

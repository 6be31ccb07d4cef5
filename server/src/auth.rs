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
use std::sync::RwLock;
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
    let hash = hash_key(&key);
    let id = key_id(&hash);
    let id2 = id.clone();
    store
        .write(move |c| keys::insert(c, &id2, &hash, scope, &name, now_ms()))
        .await?;
    Ok(id)
}

/// On an empty key table, seeds the admin key from `SUNDIAL_ADMIN_KEY`, the key
/// file, or a generated key that is printed once. Returns the generated key, if any.
pub async fn bootstrap(
    store: &Store,
    env_key: Option<String>,
    key_file: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    let existing = store.read(keys::count).await?;
    if existing > 0 {
        return Ok(None);
    }
    let (key, generated) = match (env_key, key_file) {
        (Some(k), _) if !k.trim().is_empty() => (k.trim().to_string(), false),
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
            (k, false)
        }
        _ => (generate_key(), true),
    };
    if key.len() < 16 {
        anyhow::bail!("SUNDIAL_ADMIN_KEY is shorter than 16 characters");
    }
    create_key(store, key.clone(), Scope::Admin, "bootstrap".into()).await?;
    Ok(generated.then_some(key))
}

/// Verified keys by hash. Invalidated whole whenever a key is deleted.
#[derive(Default)]
pub struct KeyCache {
    map: RwLock<HashMap<[u8; 32], Scope>>,
}

impl KeyCache {
    /// The scope of a presented key, or None when unknown.
    pub async fn lookup(&self, store: &Store, key: &str) -> Result<Option<Scope>, StoreError> {
        let hash = hash_key(key);
        if let Some(scope) = self.map.read().ok().and_then(|m| m.get(&hash).copied()) {
            return Ok(Some(scope));
        }
        let found = store
            .read(move |c| keys::find_by_hash(c, &hash))
            .await?
            .map(|(_, scope)| scope);
        if let (Some(scope), Ok(mut map)) = (found, self.map.write()) {
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(hash, scope);
        }
        Ok(found)
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
}

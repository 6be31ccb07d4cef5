//! The `agent_nonces` table: every accepted agent request's `(node, nonce)`,
//! kept for the signed-timestamp window so a request captured before a
//! restart (kill -9) or a failover is refused when replayed to the next
//! process or the new primary. Rows whose signed timestamp has left the
//! window can never be accepted again and are pruned.

use super::StoreError;
use rusqlite::{params, Connection};

/// Records a nonce; `Ok(false)` when the node already used it.
pub fn record(conn: &Connection, node: &str, nonce: &str, ts: i64) -> Result<bool, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO agent_nonces (node, nonce, ts) VALUES (?1, ?2, ?3)
             ON CONFLICT (node, nonce) DO NOTHING",
        )?
        .execute(params![node, nonce, ts])?;
    Ok(inserted == 1)
}

/// Deletes nonces whose signed timestamp is older than `before` (unix
/// seconds); returns how many went.
pub fn prune(conn: &Connection, before: i64) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM agent_nonces WHERE ts < ?1")?
        .execute(params![before])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migrations::migrate;

    #[test]
    fn a_nonce_is_accepted_once_per_node_and_pruned_by_age() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert!(record(&conn, "n1", "abc", 100).unwrap());
        assert!(!record(&conn, "n1", "abc", 100).unwrap());
        assert!(record(&conn, "n2", "abc", 100).unwrap());
        assert!(record(&conn, "n1", "def", 500).unwrap());
        assert_eq!(prune(&conn, 200).unwrap(), 2);
        assert!(!record(&conn, "n1", "def", 500).unwrap());
    }
}

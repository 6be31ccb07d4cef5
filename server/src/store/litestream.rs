//! What the database itself tells of Litestream. Litestream (0.3 to 0.5)
//! creates its `_litestream_seq` and `_litestream_lock` tables in every
//! database it replicates, and they stay there. A server that checkpoints
//! its WAL beside Litestream (`--wal-autocheckpoint` above 0) risks a
//! replica that restores corrupt after a Litestream crash (docs/dr.md,
//! "Litestream owns the checkpoints"); this module finds that setup so the
//! server can warn about it. It never changes the setting itself: the
//! tables also survive in a copy restored from a replica and then run
//! without Litestream, where the server must keep checkpointing.

use super::StoreError;
use rusqlite::Connection;

/// Said when the server checkpoints a database Litestream replicates.
pub(crate) const CONFLICT: &str =
    "Litestream replicates this database (its _litestream_seq table is in it) \
     while this server checkpoints the WAL itself: a Litestream crash can then leave a replica \
     that restores corrupt; run the server with --wal-autocheckpoint 0 (docs/dr.md, \
     \"Litestream owns the checkpoints\")";

/// True when Litestream has replicated this database (its tables are in it).
pub(crate) fn replicated(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_litestream_seq')",
        [],
        |r| r.get(0),
    )?)
}

/// True when the server's checkpoints (`wal_autocheckpoint` pages; 0:
/// none) would run beside Litestream's on this database.
pub(crate) fn checkpoint_conflict(
    conn: &Connection,
    wal_autocheckpoint: u32,
) -> Result<bool, StoreError> {
    Ok(wal_autocheckpoint > 0 && replicated(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litestream_tables_make_checkpoints_a_conflict_unless_they_are_off() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE jobs (pk INTEGER PRIMARY KEY)")
            .unwrap();
        assert!(!replicated(&conn).unwrap());
        assert!(!checkpoint_conflict(&conn, 1000).unwrap());

        // What Litestream 0.5 creates on its first sync.
        conn.execute_batch(
            "CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER);
             CREATE TABLE _litestream_lock (id INTEGER);",
        )
        .unwrap();
        assert!(replicated(&conn).unwrap());
        assert!(checkpoint_conflict(&conn, 1000).unwrap());
        assert!(checkpoint_conflict(&conn, 1).unwrap());
        assert!(!checkpoint_conflict(&conn, 0).unwrap());
    }
}

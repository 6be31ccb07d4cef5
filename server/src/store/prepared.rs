//! Statements a writer batch prepares once and reuses for each run in it.
//!
//! rusqlite's `prepare_cached` trims and hashes the SQL, moves the entry
//! out of and back into its LRU (a second hash) and allocates an
//! `Arc<str>` key on every use: ~6.5 % of the writer's time on the run
//! path, where a batch runs the same few statements for each of hundreds of
//! runs (docs/benchmarks.md §23). A [`Prepared`] takes each statement from
//! that cache on its first use in the batch, keeps it, and finds it again by
//! the address of its `&'static str`; dropped, it hands them back.
//!
//! Every use of a held statement goes through the one [`Prepared`]: a
//! nested `prepare_cached` of the same text while it is held would prepare
//! it afresh (correct, but slow), so the run path's functions take the
//! batch's [`Prepared`] rather than a `&Connection`.

use super::StoreError;
use rusqlite::{CachedStatement, Connection};

/// The statements held for one batch (or one call off the hot path).
pub(crate) struct Prepared<'c> {
    conn: &'c Connection,
    held: Vec<(&'static str, CachedStatement<'c>)>,
}

impl<'c> Prepared<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Self {
        Prepared {
            conn,
            held: Vec::new(),
        }
    }

    /// The connection, for statements off the hot path.
    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    /// The statement for `sql`, prepared (or taken from the connection's
    /// cache) on its first use. Found by the literal's address: a batch
    /// holds a handful, so a scan beats hashing the text.
    pub(crate) fn stmt(
        &mut self,
        sql: &'static str,
    ) -> Result<&mut CachedStatement<'c>, StoreError> {
        let at = match self.held.iter().position(|(s, _)| std::ptr::eq(*s, sql)) {
            Some(at) => at,
            None => {
                let stmt = self.conn.prepare_cached(sql)?;
                self.held.push((sql, stmt));
                self.held.len() - 1
            }
        };
        Ok(&mut self.held[at].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSERT: &str = "INSERT INTO t (v) VALUES (?1)";

    #[test]
    fn a_statement_is_prepared_once_per_batch_however_often_used() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        let mut p = Prepared::new(&c);
        for v in 0..3 {
            p.stmt(INSERT).unwrap().execute([v]).unwrap();
        }
        let count = "SELECT count(*) FROM t";
        let n: i64 = p.stmt(count).unwrap().query_row([], |r| r.get(0)).unwrap();
        assert_eq!(n, 3);
        assert_eq!(p.held.len(), 2, "one entry per statement");
        // The same text at another address is another entry, and still right.
        let copy: &'static str = Box::leak(INSERT.to_owned().into_boxed_str());
        p.stmt(copy).unwrap().execute([3]).unwrap();
        assert_eq!(p.held.len(), 3);
        let n: i64 = p.stmt(count).unwrap().query_row([], |r| r.get(0)).unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn a_bad_statement_is_an_error_and_holds_nothing() {
        let c = Connection::open_in_memory().unwrap();
        let mut p = Prepared::new(&c);
        assert!(p.stmt("SELECT FROM nowhere").is_err());
        assert!(p.held.is_empty());
    }
}

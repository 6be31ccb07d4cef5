//! Parsed job specs for the run path. Assigning and completing a run need
//! its job's spec, and parsing the stored JSON once per run was 6–7 % of
//! the writer's time at 10,000 runs/s (docs/benchmarks.md §14–15). Each
//! thread keeps the specs it parsed, keyed by job and checked against the
//! stored text on every lookup: an edited job is parsed again, a deleted
//! one is never found, and nothing needs invalidating.

use super::StoreError;
use rusqlite::Connection;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use sundial_proto::JobSpec;

/// Spec text kept per thread before the cache starts over.
const MAX_BYTES: usize = 32 << 20;

#[derive(Default)]
struct Cache {
    specs: HashMap<i64, (Box<str>, Arc<JobSpec>)>,
    bytes: usize,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The job's current spec, parsed at most once per stored text.
pub(crate) fn get(conn: &Connection, job_pk: i64) -> Result<Arc<JobSpec>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT spec FROM jobs WHERE pk = ?1")?;
    let mut rows = stmt.query([job_pk])?;
    let row = rows
        .next()?
        .ok_or_else(|| StoreError::Corrupt(format!("job {job_pk}: no such job for its run")))?;
    of_text(job_pk, row.get_ref(0)?)
}

/// The spec of a job whose stored `spec` column a caller has just read
/// (with the run it needs it for, in one statement).
pub(crate) fn of_text(
    job_pk: i64,
    text: rusqlite::types::ValueRef<'_>,
) -> Result<Arc<JobSpec>, StoreError> {
    let text = text
        .as_str()
        .map_err(|e| StoreError::Corrupt(format!("job {job_pk}: stored spec: {e}")))?;
    CACHE.with(|cell| {
        let mut cache = cell.borrow_mut();
        if let Some((seen, spec)) = cache.specs.get(&job_pk) {
            if **seen == *text {
                return Ok(spec.clone());
            }
        }
        let spec: Arc<JobSpec> = Arc::new(
            serde_json::from_str(text)
                .map_err(|e| StoreError::Corrupt(format!("job {job_pk}: stored spec: {e}")))?,
        );
        if cache.bytes + text.len() > MAX_BYTES {
            *cache = Cache::default();
        }
        cache.bytes += text.len();
        if let Some((old, _)) = cache.specs.insert(job_pk, (text.into(), spec.clone())) {
            cache.bytes -= old.len();
        }
        Ok(spec)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE jobs (pk INTEGER PRIMARY KEY, spec TEXT NOT NULL)")
            .unwrap();
        c
    }

    fn spec(schedule: &str) -> String {
        format!(r#"{{"schedule":"{schedule}","executor":{{"type":"shell","script":"true"}}}}"#)
    }

    #[test]
    fn an_edited_spec_is_parsed_again_and_a_corrupt_one_is_an_error() {
        let c = db();
        c.execute("INSERT INTO jobs VALUES (1, ?1)", params![spec("@hourly")])
            .unwrap();
        let a = get(&c, 1).unwrap();
        assert_eq!(a.schedule, "@hourly");
        // The same text: the same parsed spec, not a second parse.
        assert!(Arc::ptr_eq(&a, &get(&c, 1).unwrap()));
        c.execute(
            "UPDATE jobs SET spec = ?1 WHERE pk = 1",
            params![spec("@daily")],
        )
        .unwrap();
        assert_eq!(get(&c, 1).unwrap().schedule, "@daily");
        c.execute("UPDATE jobs SET spec = '{not json' WHERE pk = 1", [])
            .unwrap();
        let err = get(&c, 1).unwrap_err().to_string();
        assert!(err.contains("job 1: stored spec"), "{err}");
        c.execute("DELETE FROM jobs WHERE pk = 1", []).unwrap();
        assert!(get(&c, 1).is_err());
    }
}

//! The result spool: completions that could not be delivered are written to
//! `<state-dir>/spool/<run>-<attempt>.json` (fsynced, atomically renamed) and
//! delivered when the server is reachable again. Delivery is idempotent on
//! the server, so a result sent twice is recorded once.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use sundial_proto::agent::CompleteRequest;

/// A spooled completion.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Entry {
    pub run_id: i64,
    pub request: CompleteRequest,
}

pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn open(state_dir: &Path) -> Result<Spool> {
        let dir = state_dir.join("spool");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Spool { dir })
    }

    fn file(&self, run_id: i64, attempt: u32) -> PathBuf {
        self.dir.join(format!("{run_id}-{attempt}.json"))
    }

    /// Durably stores an entry.
    pub fn put(&self, entry: &Entry) -> Result<()> {
        let path = self.file(entry.run_id, entry.request.attempt);
        let tmp = path.with_extension("tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(entry)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Every stored entry (unreadable files are reported and skipped).
    pub fn list(&self) -> Vec<(PathBuf, Entry)> {
        let Ok(read) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in read.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(Into::into))
            {
                Ok(entry) => out.push((path, entry)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable spool entry")
                }
            }
        }
        out.sort_by_key(|(_, e)| (e.run_id, e.request.attempt));
        out
    }

    pub fn remove(&self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(file = %path.display(), error = %e, "removing delivered spool entry");
        }
    }

    pub fn len(&self) -> usize {
        self.list().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sundial_proto::agent::Outcome;

    #[test]
    fn put_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.len(), 0);
        let entry = Entry {
            run_id: 5,
            request: CompleteRequest {
                attempt: 1,
                outcome: Outcome::Succeeded,
                exit_code: Some(0),
                output: "ok".into(),
                truncated: false,
                error: None,
                started_at: 1,
                finished_at: 2,
            },
        };
        spool.put(&entry).unwrap();
        spool.put(&entry).unwrap(); // same key: replaced, not duplicated
        let all = spool.list();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1, entry);
        spool.remove(&all[0].0);
        assert_eq!(spool.len(), 0);
    }
}

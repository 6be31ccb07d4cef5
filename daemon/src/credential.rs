//! The node credential: obtained once by joining with a join token, then kept
//! in `<state-dir>/credential.json` (mode 0600) and reused across restarts.

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use sundial_proto::agent::Credential;

pub const FILE: &str = "credential.json";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Loads the stored credential, if any.
pub fn load(state_dir: &Path) -> Result<Option<Credential>> {
    let p = path(state_dir);
    match std::fs::read_to_string(&p) {
        Ok(text) => {
            let cred: Credential = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid credential", p.display()))?;
            Ok(Some(cred))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Stores a credential atomically with mode 0600.
pub fn store(state_dir: &Path, cred: &Credential) -> Result<()> {
    let p = path(state_dir);
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(cred)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// Reads the join token from the flag or the file.
pub fn join_token(token: Option<&str>, file: Option<&Path>) -> Result<Option<String>> {
    if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Some(t.to_string()));
    }
    match file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading join token file {}", f.display()))?;
            Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let cred = Credential {
            node_id: "n1".into(),
            generation: 2,
            key: "ab".repeat(32),
        };
        store(dir.path(), &cred).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(cred));
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

//! The cluster secret: the root from which every node key is derived. It
//! lives in a file (a Kubernetes Secret, or `<data-dir>/cluster.secret`
//! generated on first start), never in the database. The file may hold two
//! secrets, one per line, during rotation: the first signs new credentials,
//! both verify.

use anyhow::{bail, Context};
use rand::RngCore;
use std::io::Write;
use std::path::Path;

/// File name of the generated secret inside the data directory.
pub const GENERATED_FILE: &str = "cluster.secret";

#[derive(Clone)]
pub struct ClusterSecrets {
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecrets({} active)", self.secrets.len())
    }
}

impl ClusterSecrets {
    /// Parses the file contents: one or two non-empty lines of ≥ 16 bytes.
    pub fn parse(text: &str) -> anyhow::Result<ClusterSecrets> {
        let secrets: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if secrets.is_empty() {
            bail!("no secret found (expected one secret per line)");
        }
        if secrets.len() > 2 {
            bail!("at most two secrets may be active (the new one first, during rotation)");
        }
        if secrets.iter().any(|s| s.len() < 16) {
            bail!("each cluster secret must be at least 16 characters");
        }
        Ok(ClusterSecrets { secrets })
    }

    /// Reads the configured file, or the generated one in `data_dir` (creating it, mode 0600).
    pub fn load(file: Option<&Path>, data_dir: &Path) -> anyhow::Result<ClusterSecrets> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading cluster secret file {}", path.display()))?;
            return Self::parse(&text)
                .with_context(|| format!("cluster secret file {}", path.display()));
        }
        let path = data_dir.join(GENERATED_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Self::parse(&text).with_context(|| format!("{}", path.display()));
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = hex::encode(bytes);
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?
        };
        writeln!(f, "{secret}")?;
        f.sync_all()?;
        tracing::info!(path = %path.display(), "generated a cluster secret");
        Self::parse(&secret)
    }

    /// The secret new credentials are derived from.
    pub fn current(&self) -> &[u8] {
        &self.secrets[0]
    }

    /// Every secret that verifies signatures.
    pub fn all(&self) -> &[Vec<u8>] {
        &self.secrets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rules() {
        assert_eq!(
            ClusterSecrets::parse("0123456789abcdef\n")
                .unwrap()
                .all()
                .len(),
            1
        );
        let two = ClusterSecrets::parse("new-secret-0123456789\nold-secret-0123456789\n").unwrap();
        assert_eq!(two.current(), b"new-secret-0123456789");
        assert!(ClusterSecrets::parse("").is_err());
        assert!(ClusterSecrets::parse("short").is_err());
        assert!(
            ClusterSecrets::parse("aaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbb\ncccccccccccccccc").is_err()
        );
    }

    #[test]
    fn generates_once_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = ClusterSecrets::load(None, dir.path()).unwrap();
        let b = ClusterSecrets::load(None, dir.path()).unwrap();
        assert_eq!(a.current(), b.current());
        let mode = std::fs::metadata(dir.path().join(GENERATED_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

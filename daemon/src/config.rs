//! Daemon configuration: flags with `SUNDIAL_*` environment fallbacks.

use anyhow::{bail, Context};
use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;
use sundial_proto::Duration;

#[derive(Debug, Parser, Clone)]
#[command(name = "sundial-daemon", version, about = "Sundial worker daemon")]
pub struct Args {
    /// Server URL (through HAProxy or a Kubernetes Service in HA setups).
    #[arg(long, env = "SUNDIAL_SERVER", value_parser = parse_server)]
    pub server: String,
    /// File holding the join token (a Kubernetes Secret).
    #[arg(long, env = "SUNDIAL_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// The join token itself (prefer the file: flags show in `ps`).
    #[arg(long, env = "SUNDIAL_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Directory for the node credential and the result spool.
    #[arg(long, env = "SUNDIAL_STATE_DIR")]
    pub state_dir: PathBuf,
    /// This node's id [default: the host name].
    #[arg(long, env = "SUNDIAL_NODE_ID")]
    pub node_id: Option<String>,
    /// Labels offered to label selectors, `k=v,k=v`.
    #[arg(long, env = "SUNDIAL_LABELS", default_value = "")]
    pub labels: String,
    /// Runs executed at once.
    #[arg(long, env = "SUNDIAL_CAPACITY", default_value_t = 4)]
    pub capacity: u32,
    /// CA certificate (PEM) to verify an HTTPS server against.
    #[arg(long, env = "SUNDIAL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Executors this node accepts.
    #[arg(
        long,
        env = "SUNDIAL_ALLOW_EXECUTORS",
        default_value = "exec,shell,http"
    )]
    pub allow_executors: String,
    /// Largest output kept per run; the rest is dropped and the run flagged `truncated`.
    #[arg(long, env = "SUNDIAL_OUTPUT_CAP_BYTES", default_value_t = 65_536)]
    pub output_cap_bytes: usize,
    /// On SIGTERM, how long running jobs may finish before they are handed back.
    #[arg(long, env = "SUNDIAL_DRAIN_GRACE", default_value = "30s")]
    pub drain_grace: Duration,
    /// After SIGTERM to a timed-out or cancelled job, how long before SIGKILL.
    #[arg(long, env = "SUNDIAL_KILL_GRACE", default_value = "5s")]
    pub kill_grace: Duration,
    /// Log format: text or json.
    #[arg(long, env = "SUNDIAL_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    pub log_format: String,
}

/// `--server` ([`sundial_proto::server_url::check`]): a typo would
/// otherwise look like an unreachable server, retried for ever.
fn parse_server(s: &str) -> Result<String, String> {
    sundial_proto::server_url::check(s).map(|()| s.to_string())
}

/// Parses `k=v,k=v` (empty string: no labels).
pub fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("label {part:?} is not k=v"))?;
        let (k, v) = (k.trim(), v.trim());
        if let Err(m) = sundial_proto::label::check(k, v) {
            bail!("--labels {part:?}: {m}");
        }
        out.insert(k.to_string(), v.to_string());
    }
    if out.len() > sundial_proto::label::MAX_LABELS {
        bail!(
            "--labels: at most {} labels",
            sundial_proto::label::MAX_LABELS
        );
    }
    Ok(out)
}

/// Parses the executor allowlist.
pub fn parse_executors(s: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !matches!(e, "exec" | "shell" | "http") {
            bail!("unknown executor {e:?} in --allow-executors (expected exec, shell, http)");
        }
        out.push(e.to_string());
    }
    if out.is_empty() {
        bail!("--allow-executors must name at least one executor");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_executors() {
        let l = parse_labels("role=worker, zone = a").unwrap();
        assert_eq!(l["role"], "worker");
        assert_eq!(l["zone"], "a");
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("=x").is_err());
        // The server's label rule, checked before registering.
        let e = parse_labels("my key=x").unwrap_err().to_string();
        assert!(e.contains("label key \"my key\" must be"), "{e}");
        assert_eq!(parse_executors("exec,http").unwrap(), ["exec", "http"]);
        assert!(parse_executors("exec,ssh").is_err());
        assert!(parse_executors("").is_err());
    }

    #[test]
    fn the_server_is_an_http_url() {
        assert!(parse_server("http://127.0.0.1:8080").is_ok());
        assert!(parse_server("https://sundial.example/").is_ok());
        for bad in [
            "not a url",
            "127.0.0.1:8080",
            "ftp://127.0.0.1:8080",
            "http://",
        ] {
            let e = parse_server(bad).unwrap_err();
            assert!(e.contains("http"), "{bad}: {e}");
        }
    }
}

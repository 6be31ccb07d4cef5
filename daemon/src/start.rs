//! Start-up: lock the state directory (one daemon per directory), load or
//! obtain the node credential, register with the server
//! (re-joining if the credential was revoked and a join token is at hand),
//! then hand over to the [`Runner`](crate::runner::Runner).

use crate::client::{self, CallError, Client};
use crate::config::{parse_executors, parse_labels, Args};
use crate::credential;
use crate::executor::Limits;
use crate::runner::Runner;
use crate::spool::Spool;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use sundial_proto::agent::{Credential, RegisterRequest};
use sundial_proto::backoff::Backoff;
use sundial_proto::dir_lock::{DirLock, DirLockError};
use tokio_util::sync::CancellationToken;

fn default_node_id() -> Result<String> {
    let name = nix::unistd::gethostname().context("reading the host name")?;
    name.into_string()
        .map_err(|_| anyhow::anyhow!("the host name is not UTF-8; set --node-id"))
}

/// Joins (retrying while the server is unreachable) and stores the
/// credential; `None` when stopped (SIGTERM) before it could.
async fn join(
    args: &Args,
    http: &reqwest::Client,
    node_id: &str,
    stop: &CancellationToken,
) -> Result<Option<Credential>> {
    let token = credential::join_token(args.join_token.as_deref(), args.join_token_file.as_deref())?
        .context("no credential in the state directory and no join token (--join-token-file or --join-token)")?;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
    loop {
        match client::join(http, &args.server, &token, node_id).await {
            Ok(cred) => {
                credential::store(&args.state_dir, &cred)?;
                tracing::info!(node = %cred.node_id, generation = cred.generation, "joined the cluster");
                return Ok(Some(cred));
            }
            Err(CallError::Unavailable(e)) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "server unreachable; retrying join");
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = stop.cancelled() => return Ok(None),
                }
            }
            Err(e) => bail!("join refused: {e}"),
        }
    }
}

/// The lock file a daemon holds in its state directory.
pub const LOCK_FILE: &str = "sundial-daemon.lock";

/// A daemon owns its state directory: a second one started on it is
/// refused before it reads the credential. Two processes with one
/// credential are one node id the server cannot tell apart, and they would
/// share one result spool.
fn lock_state_dir(dir: &Path) -> Result<DirLock> {
    match DirLock::try_acquire(dir, LOCK_FILE) {
        Ok(lock) => Ok(lock),
        Err(DirLockError::Held { holder, .. }) => bail!(
            "another sundial-daemon{} is using the state directory {}: run one daemon per state directory (stop the other, or give this one its own --state-dir and --node-id)",
            holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            dir.display()
        ),
        Err(e) => Err(e).context("locking the state directory"),
    }
}

/// Runs the daemon until `stop` is cancelled (SIGTERM), then drains.
pub async fn run(args: Args, stop: CancellationToken) -> Result<()> {
    let labels = parse_labels(&args.labels)?;
    let executors = parse_executors(&args.allow_executors)?;
    if args.capacity == 0 {
        bail!("--capacity must be at least 1");
    }
    if args.output_cap_bytes > sundial_proto::agent::MAX_OUTPUT_BYTES {
        bail!(
            "--output-cap-bytes {} is more than the server keeps per run ({} bytes)",
            args.output_cap_bytes,
            sundial_proto::agent::MAX_OUTPUT_BYTES
        );
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating state dir {}", args.state_dir.display()))?;
    std::fs::set_permissions(&args.state_dir, std::fs::Permissions::from_mode(0o700))?;
    // Held until this function returns (or the process ends).
    let _lock = lock_state_dir(&args.state_dir)?;
    let node_id = match &args.node_id {
        Some(id) => id.clone(),
        None => default_node_id()?,
    };
    let http = client::http_client(args.ca_file.as_deref())?;
    let mut cred = match credential::load(&args.state_dir)? {
        Some(c) if c.node_id == node_id => c,
        Some(c) => bail!(
            "the state directory holds the credential of node {:?}, not {node_id:?}; use another --state-dir",
            c.node_id
        ),
        None => match join(&args, &http, &node_id, &stop).await? {
            Some(c) => c,
            None => return Ok(()),
        },
    };
    let register = RegisterRequest {
        labels,
        capacity: args.capacity,
        version: env!("CARGO_PKG_VERSION").to_string(),
        executors,
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
    let (client, receipt) = loop {
        let c = Client::new(http.clone(), &args.server, &cred)?;
        match c.register(&register).await {
            // A server with poll receipts gives one to acknowledge first.
            Ok(reply) => break (c, reply.get("receipt").and_then(serde_json::Value::as_u64)),
            Err(CallError::Unauthorized(e)) => {
                tracing::warn!(error = %e, "credential refused; joining again");
                let _ = std::fs::remove_file(credential::path(&args.state_dir));
                cred = match join(&args, &http, &node_id, &stop).await? {
                    Some(c) => c,
                    None => return Ok(()),
                };
            }
            Err(CallError::Unavailable(e)) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "server unreachable; retrying registration");
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = stop.cancelled() => return Ok(()),
                }
            }
            Err(e) => bail!("registration refused: {e}"),
        }
    };
    tracing::info!(node = %node_id, server = %args.server, capacity = args.capacity, "registered; waiting for runs");
    let limits = Limits {
        output_cap: args.output_cap_bytes,
        kill_grace: args.kill_grace.as_std(),
        node_id: node_id.clone(),
        allowed: register.executors.clone(),
    };
    let spool = Spool::open(&args.state_dir)?;
    let jobs_http = client::job_http_client(args.ca_file.as_deref())?;
    let runner = Arc::new(Runner::new(client, jobs_http, limits, args.capacity, spool));
    runner.run(stop, args.drain_grace.as_std(), receipt).await;
    Ok(())
}

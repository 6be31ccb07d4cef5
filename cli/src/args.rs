//! The command line, as clap derive types. Completions and man pages are
//! generated from these definitions.

use crate::error::CliError;
use crate::output::OutputFormat;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// sundial: operate a Sundial cluster — jobs as files (apply, diff, export),
/// jobs, runs, nodes, keys and status.
///
/// Exit codes: 0 ok, 1 failure, 2 usage, 3 not found, 4 conflict,
/// 5 server unreachable; `jobs trigger --wait` exits with the run's code.
#[derive(Debug, Parser)]
#[command(name = "sundial", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Connection and output flags, accepted before or after the subcommand.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Server URL [default: the context's, else http://127.0.0.1:8080].
    #[arg(long, env = "SUNDIAL_URL", global = true, value_parser = parse_server_url)]
    pub server: Option<String>,
    /// File holding the API key (SUNDIAL_KEY holds the key itself).
    #[arg(long, env = "SUNDIAL_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// PEM file of the CA that signed the server's certificate.
    #[arg(long, env = "SUNDIAL_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Named context from the config file instead of the current one.
    #[arg(long, env = "SUNDIAL_CONTEXT", global = true)]
    pub context: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, global = true)]
    pub output: Option<OutputFormat>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, update and (with --prune) delete jobs from manifest files, atomically.
    Apply(ApplyArgs),
    /// Show what `apply` would do; exits 1 when there are changes (for CI).
    Diff(ApplyArgs),
    /// Write stored jobs as manifests (-o yaml|toml|json) that re-apply as a no-op.
    Export(ExportArgs),
    /// List, inspect, trigger, pause, resume and delete jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// List and inspect runs, read their output, cancel them.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// The next fires of a schedule, in local time and UTC, DST marked.
    Preview(PreviewArgs),
    /// Worker nodes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Join tokens for daemons.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Admin API keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Cluster status: role, epoch, primary, nodes, queue, failing jobs.
    Status,
    /// Contexts in ~/.config/sundial/config.toml.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Shell completion script.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Man pages (roff): sundial.1 on stdout, or one per command into --out-dir.
    Man {
        /// Write one page per command into this directory.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file or directory (.yaml/.yml multi-document, .toml, .json); `-` is stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Delete stored jobs matching the selector (-l) that the files do not name.
    #[arg(long, requires = "selector")]
    pub prune: bool,
    /// Job label selector k=v (repeatable; all must match), for --prune.
    #[arg(short = 'l', long = "selector", value_parser = parse_label, requires = "prune")]
    pub selector: Vec<(String, String)>,
    /// Show the plan only.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only jobs with these job labels (k=v, repeatable).
    #[arg(short = 'l', long = "selector", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// List jobs: id, schedule, zone, next fire, last state, paused.
    #[command(alias = "list")]
    Ls {
        /// Only jobs with these job labels (k=v, repeatable).
        #[arg(short = 'l', long = "selector", value_parser = parse_label)]
        selector: Vec<(String, String)>,
    },
    /// One job as stored.
    Get {
        /// The job's id.
        id: String,
    },
    /// A job's spec, next 5 fires (DST marked) and last runs.
    Describe {
        /// The job's id.
        id: String,
    },
    /// Start a run now; with --wait, follow it and exit with its exit code.
    Trigger {
        /// The job's id.
        id: String,
        /// Follow the run, reporting its attempts, print its output and exit
        /// with its exit code.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 1).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Stop firing (an apply does not unpause).
    Pause {
        /// The job's id.
        id: String,
    },
    /// Fire again from now on.
    Resume {
        /// The job's id.
        id: String,
    },
    /// Delete a job and its runs.
    #[command(alias = "delete")]
    Rm {
        /// The job's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCmd {
    /// List runs, newest first.
    #[command(alias = "list")]
    Ls {
        /// Only this job's runs.
        #[arg(long)]
        job: Option<String>,
        /// Only runs in this state.
        #[arg(long)]
        state: Option<sundial_proto::RunState>,
        /// Only runs on this node.
        #[arg(long)]
        node: Option<String>,
        /// Only runs created within this long ago (e.g. 1h, 30m, 2d).
        #[arg(long)]
        since: Option<sundial_proto::Duration>,
        /// Most runs shown (at least 1).
        #[arg(long, default_value_t = 50, value_parser = parse_limit)]
        limit: usize,
    },
    /// One run.
    Get {
        /// The run's id.
        id: i64,
    },
    /// A run's output; --follow waits (polling) until the run ends.
    Logs {
        /// The run's id.
        id: i64,
        /// Keep printing output as it appears until the run ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Cancel a pending or running run.
    Cancel {
        /// The run's id.
        id: i64,
    },
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Cron (5 or 6 fields), @hourly…, "@every 30s" or "@at <RFC3339>".
    pub schedule: String,
    /// IANA time zone.
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// How many fires.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub count: usize,
    /// Start after this instant (RFC 3339) instead of now.
    #[arg(long)]
    pub after: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// List nodes with status (ready, down, revoked).
    #[command(alias = "list")]
    Ls,
    /// Revoke a node's credential (it must join again).
    Revoke {
        /// The node's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create a join token (shown once).
    Create {
        /// A name to tell the token by.
        #[arg(long, default_value = "")]
        name: String,
        /// Validity, e.g. 24h.
        #[arg(long)]
        ttl: Option<sundial_proto::Duration>,
        /// How many daemons may join with it (default: no limit).
        #[arg(long)]
        max_uses: Option<u32>,
    },
    /// List join tokens (never their secret).
    #[command(alias = "list")]
    Ls,
    /// Delete a join token; daemons that joined with it stay.
    #[command(alias = "delete")]
    Rm {
        /// The token's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create an API key (shown once).
    Create {
        /// What the key may do: `read`, or `admin` for every change.
        #[arg(long, value_parser = ["admin", "read"], default_value = "read")]
        scope: String,
        /// A name to tell the key by.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime, e.g. 90d (default: never expires).
        #[arg(long)]
        expires_in: Option<sundial_proto::Duration>,
    },
    /// List API keys (never the key).
    #[command(alias = "list")]
    Ls,
    /// Revoke an API key.
    #[command(alias = "delete")]
    Rm {
        /// The key's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Create or update a context.
    SetContext {
        /// The context's name.
        name: String,
        /// The server's URL.
        #[arg(long = "url", visible_alias = "server-url", value_parser = parse_server_url)]
        url: Option<String>,
        /// Key file the context uses (the key itself is never stored).
        #[arg(long = "key")]
        key: Option<PathBuf>,
        /// PEM file of the CA that signed the server's certificate.
        #[arg(long = "ca")]
        ca: Option<PathBuf>,
        /// Also make it the current context.
        #[arg(long = "use")]
        use_it: bool,
    },
    /// Make a context the current one.
    UseContext {
        /// The context's name.
        name: String,
    },
    /// List contexts (the current one marked).
    GetContexts,
    /// Print the current context's name.
    CurrentContext,
    /// Delete a context.
    DeleteContext {
        /// The context's name.
        name: String,
    },
}

/// A server URL ([`sundial_proto::server_url::check`]).
pub fn parse_server_url(s: &str) -> Result<String, String> {
    sundial_proto::server_url::check(s).map(|()| s.to_string())
}

/// Unsets the CLI's own environment settings that are set but empty, so
/// `SUNDIAL_CA_FILE=` means "not set" (as it does for `SUNDIAL_KEY` and
/// `SUNDIAL_CLI_CONFIG`) rather than a flag given without a value. Call it
/// before parsing, while the process has one thread.
pub fn ignore_empty_settings() {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let names: Vec<std::ffi::OsString> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_os_string()))
        .collect();
    for name in names {
        if std::env::var_os(&name).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(&name);
        }
    }
}

/// A count of at least 1.
fn parse_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a count of at least 1")),
    }
}

/// `k=v` → (k, v).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// The `-l` labels as one selector. A key given twice with two values is
/// a usage error: all labels must match and a job has one value per key,
/// so such a selector would match nothing (a prune with it used to take
/// the last value and delete what the first excluded).
pub fn selector(labels: &[(String, String)]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for (k, v) in labels {
        if let Some(old) = out.insert(k.clone(), v.clone()) {
            if old != *v {
                return Err(CliError::usage(format!(
                    "-l {k}={old} and -l {k}={v}: a job has one value per label key, \
                     so no job matches both"
                )));
            }
        }
    }
    Ok(out)
}

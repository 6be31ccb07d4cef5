//! Server configuration: command-line flags, `SUNDIAL_*` environment variables
//! and an optional TOML file, resolved in that order of precedence into
//! [`Settings`].

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use sundial_proto::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "sundial-server",
    version,
    about = "Sundial job scheduler server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Check a database file without writing it: integrity, schema version,
    /// and counts of jobs, runs and nodes (used after a restore).
    Check(CheckArgs),
}

/// Flags of `sundial-server check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The database file (e.g. ./sundial-data/sundial.db or a restored copy).
    #[arg(long, value_name = "FILE", env = "SUNDIAL_DB")]
    pub db: PathBuf,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `sundial-server serve`; each also reads `SUNDIAL_<NAME>`.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SUNDIAL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory holding the database [default: ./sundial-data].
    #[arg(long, env = "SUNDIAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "SUNDIAL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// File holding the admin key to seed into an empty database
    /// (or set SUNDIAL_ADMIN_KEY).
    #[arg(long, env = "SUNDIAL_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Finished runs kept per job unless the job sets `history.keep` [default: 100].
    #[arg(long, env = "SUNDIAL_HISTORY_KEEP")]
    pub history_keep: Option<u32>,
    /// Age after which finished runs are pruned unless the job sets `history.max_age` [default: 30d].
    #[arg(long, env = "SUNDIAL_HISTORY_MAX_AGE")]
    pub history_max_age: Option<Duration>,
    /// Newest events kept [default: 100000].
    #[arg(long, env = "SUNDIAL_EVENTS_KEEP")]
    pub events_keep: Option<u64>,
    /// Age after which events are pruned [default: 7d].
    #[arg(long, env = "SUNDIAL_EVENTS_MAX_AGE")]
    pub events_max_age: Option<Duration>,
    /// Newest audit rows kept [default: 1000000].
    #[arg(long, env = "SUNDIAL_AUDIT_KEEP")]
    pub audit_keep: Option<u64>,
    /// Age after which audit rows are pruned [default: 90d].
    #[arg(long, env = "SUNDIAL_AUDIT_MAX_AGE")]
    pub audit_max_age: Option<Duration>,
    /// Longest wait for a webhook receiver's answer [default: 10s].
    #[arg(long, env = "SUNDIAL_WEBHOOK_TIMEOUT")]
    pub webhook_timeout: Option<Duration>,
    /// How long an event is retried before a webhook gives it up [default: 24h].
    #[arg(long, env = "SUNDIAL_WEBHOOK_RETRY_FOR")]
    pub webhook_retry_for: Option<Duration>,
    /// Refuse webhook receivers on loopback, private or link-local addresses (SSRF guard).
    #[arg(long, env = "SUNDIAL_WEBHOOK_DENY_PRIVATE")]
    pub webhook_deny_private: bool,
    /// Largest accepted request body in bytes [default: 1048576].
    #[arg(long, env = "SUNDIAL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// File with the cluster secret (one per line; two during rotation)
    /// [default: <data-dir>/cluster.secret, generated on first start].
    #[arg(long, env = "SUNDIAL_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Lease granted to a node per attempt; heartbeats renew it [default: 30s].
    #[arg(long, env = "SUNDIAL_LEASE")]
    pub lease: Option<Duration>,
    /// How long a write waits for another connection's lock before it fails
    /// with "database busy" and is retried [default: 5s].
    #[arg(long, env = "SUNDIAL_BUSY_TIMEOUT")]
    pub busy_timeout: Option<Duration>,
    /// WAL pages after which the server checkpoints the database itself;
    /// 0 leaves checkpoints to Litestream (set 0 wherever Litestream
    /// replicates the database) [default: 1000].
    #[arg(long, env = "SUNDIAL_WAL_AUTOCHECKPOINT", value_name = "PAGES")]
    pub wal_autocheckpoint: Option<u32>,
    /// `/readyz` answers 503 once the scheduler or the lease reaper has been
    /// failing for this long [default: 10s].
    #[arg(long, env = "SUNDIAL_STALL_AFTER")]
    pub stall_after: Option<Duration>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "SUNDIAL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SUNDIAL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// High-availability mode [default: standalone].
    #[arg(long, env = "SUNDIAL_HA_MODE", value_enum)]
    pub ha_mode: Option<HaMode>,
    /// In static mode: this server's role.
    #[arg(long, env = "SUNDIAL_ROLE", value_enum)]
    pub role: Option<StaticRole>,
    /// In static mode: the primary's URL (replicas forward writes there).
    #[arg(long, env = "SUNDIAL_PRIMARY_URL")]
    pub primary_url: Option<String>,
    /// In litefs mode: the LiteFS mount directory [default: /litefs].
    #[arg(long, env = "SUNDIAL_LITEFS_DIR")]
    pub litefs_dir: Option<PathBuf>,
    /// In litefs mode: the LiteFS API, preferred over polling `.primary` [default: none].
    #[arg(long, env = "SUNDIAL_LITEFS_API")]
    pub litefs_api: Option<String>,
    /// In litefs mode: the primary's URL from its host name [default: http://{hostname}:8080].
    #[arg(long, env = "SUNDIAL_PEER_URL_TEMPLATE")]
    pub peer_url_template: Option<String>,
    /// TOML file with any of the settings above (flags and env take precedence).
    #[arg(long, env = "SUNDIAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overload limits (connections, timeouts, concurrency budgets).
    #[command(flatten)]
    pub limits: crate::overload::LimitArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaMode {
    /// One server, always primary.
    Standalone,
    /// Role fixed by --role; replicas forward to --primary-url.
    Static,
    /// Follow LiteFS: `<litefs-dir>/.primary` and the LiteFS API.
    Litefs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaticRole {
    Primary,
    Replica,
}

/// The optional config file: the same settings, snake_case keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    admin_key_file: Option<PathBuf>,
    history_keep: Option<u32>,
    history_max_age: Option<Duration>,
    events_keep: Option<u64>,
    events_max_age: Option<Duration>,
    audit_keep: Option<u64>,
    audit_max_age: Option<Duration>,
    webhook_timeout: Option<Duration>,
    webhook_retry_for: Option<Duration>,
    webhook_deny_private: Option<bool>,
    max_body_bytes: Option<usize>,
    ha_mode: Option<HaMode>,
    cluster_secret_file: Option<PathBuf>,
    lease: Option<Duration>,
    busy_timeout: Option<Duration>,
    wal_autocheckpoint: Option<u32>,
    stall_after: Option<Duration>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    role: Option<StaticRole>,
    primary_url: Option<String>,
    litefs_dir: Option<PathBuf>,
    litefs_api: Option<String>,
    peer_url_template: Option<String>,
    max_connections: Option<usize>,
    header_read_timeout: Option<Duration>,
    body_read_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    max_concurrent_requests: Option<usize>,
    max_concurrent_agent_requests: Option<usize>,
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub admin_key_file: Option<PathBuf>,
    pub history_keep: u32,
    pub history_max_age: Duration,
    pub events_keep: u64,
    pub events_max_age: Duration,
    pub audit_keep: u64,
    pub audit_max_age: Duration,
    pub webhook_timeout: Duration,
    pub webhook_retry_for: Duration,
    pub webhook_deny_private: bool,
    pub max_body_bytes: usize,
    /// Where the role comes from.
    pub ha: crate::ha::Source,
    pub cluster_secret_file: Option<PathBuf>,
    pub lease: Duration,
    /// SQLite busy timeout of every connection.
    pub busy_timeout: Duration,
    /// WAL pages after which the writer checkpoints; 0: never (Litestream
    /// owns checkpoints, see docs/dr.md).
    pub wal_autocheckpoint: u32,
    /// How long a critical loop may fail before `/readyz` answers 503.
    pub stall_after: Duration,
    /// (certificate chain, private key) when serving HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connection, timeout and concurrency limits (see [`crate::overload`]).
    pub limits: crate::overload::Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./sundial-data"),
            log_format: LogFormat::Text,
            admin_key_file: None,
            history_keep: 100,
            history_max_age: Duration::from_secs_const(30 * 86_400),
            events_keep: 100_000,
            events_max_age: Duration::from_secs_const(7 * 86_400),
            audit_keep: 1_000_000,
            audit_max_age: Duration::from_secs_const(90 * 86_400),
            webhook_timeout: Duration::from_secs_const(10),
            webhook_retry_for: Duration::from_secs_const(86_400),
            webhook_deny_private: false,
            max_body_bytes: 1 << 20,
            ha: crate::ha::Source::Standalone,
            cluster_secret_file: None,
            lease: Duration::from_secs_const(30),
            busy_timeout: Duration::from_secs_const(5),
            wal_autocheckpoint: crate::store::DEFAULT_WAL_AUTOCHECKPOINT,
            stall_after: Duration::from_secs_const(10),
            tls: None,
            limits: crate::overload::Limits::default(),
        }
    }
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

impl ServeArgs {
    /// Merges flags/env over the config file over the defaults.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let d = Settings::default();
        let settings = Settings {
            listen: self.listen.or(file.listen).unwrap_or(d.listen),
            data_dir: self.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            log_format: self.log_format.or(file.log_format).unwrap_or(d.log_format),
            admin_key_file: self.admin_key_file.or(file.admin_key_file),
            history_keep: self
                .history_keep
                .or(file.history_keep)
                .unwrap_or(d.history_keep),
            history_max_age: self
                .history_max_age
                .or(file.history_max_age)
                .unwrap_or(d.history_max_age),
            events_keep: self
                .events_keep
                .or(file.events_keep)
                .unwrap_or(d.events_keep),
            events_max_age: self
                .events_max_age
                .or(file.events_max_age)
                .unwrap_or(d.events_max_age),
            audit_keep: self.audit_keep.or(file.audit_keep).unwrap_or(d.audit_keep),
            audit_max_age: self
                .audit_max_age
                .or(file.audit_max_age)
                .unwrap_or(d.audit_max_age),
            webhook_timeout: self
                .webhook_timeout
                .or(file.webhook_timeout)
                .unwrap_or(d.webhook_timeout),
            webhook_retry_for: self
                .webhook_retry_for
                .or(file.webhook_retry_for)
                .unwrap_or(d.webhook_retry_for),
            webhook_deny_private: self.webhook_deny_private
                || file.webhook_deny_private.unwrap_or(d.webhook_deny_private),
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(d.max_body_bytes),
            ha: {
                let mode = self.ha_mode.or(file.ha_mode).unwrap_or(HaMode::Standalone);
                let role = self.role.or(file.role);
                let primary_url = self.primary_url.or(file.primary_url);
                if mode != HaMode::Static && (role.is_some() || primary_url.is_some()) {
                    // Ignored, a replica would have started as a primary
                    // (and fenced the real one on a shared database).
                    bail!(
                        "{} and {} only apply with --ha-mode static (the mode is {})",
                        setting("role"),
                        setting("primary_url"),
                        match mode {
                            HaMode::Standalone => "standalone",
                            HaMode::Static => "static",
                            HaMode::Litefs => "litefs",
                        }
                    );
                }
                match mode {
                    HaMode::Standalone => crate::ha::Source::Standalone,
                    HaMode::Static => {
                        let Some(role) = role else {
                            bail!("--ha-mode static needs --role primary|replica");
                        };
                        if role == StaticRole::Replica && primary_url.is_none() {
                            bail!("a static replica needs --primary-url");
                        }
                        crate::ha::Source::Static {
                            primary: role == StaticRole::Primary,
                            primary_url,
                        }
                    }
                    HaMode::Litefs => crate::ha::Source::Litefs {
                        dir: self
                            .litefs_dir
                            .or(file.litefs_dir)
                            .unwrap_or_else(|| PathBuf::from("/litefs")),
                        api: self.litefs_api.or(file.litefs_api),
                        template: self
                            .peer_url_template
                            .or(file.peer_url_template)
                            .unwrap_or_else(|| "http://{hostname}:8080".to_string()),
                    },
                }
            },
            cluster_secret_file: self.cluster_secret_file.or(file.cluster_secret_file),
            lease: self.lease.or(file.lease).unwrap_or(d.lease),
            busy_timeout: self
                .busy_timeout
                .or(file.busy_timeout)
                .unwrap_or(d.busy_timeout),
            wal_autocheckpoint: self
                .wal_autocheckpoint
                .or(file.wal_autocheckpoint)
                .unwrap_or(d.wal_autocheckpoint),
            stall_after: self
                .stall_after
                .or(file.stall_after)
                .unwrap_or(d.stall_after),
            tls: match (
                self.tls_cert.or(file.tls_cert),
                self.tls_key.or(file.tls_key),
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => bail!(
                    "{} and {} must be given together",
                    setting("tls_cert"),
                    setting("tls_key")
                ),
            },
            limits: self
                .limits
                .or(crate::overload::LimitArgs {
                    max_connections: file.max_connections,
                    header_read_timeout: file.header_read_timeout,
                    body_read_timeout: file.body_read_timeout,
                    request_timeout: file.request_timeout,
                    max_concurrent_requests: file.max_concurrent_requests,
                    max_concurrent_agent_requests: file.max_concurrent_agent_requests,
                })
                .resolve()?,
        };
        if matches!(settings.ha, crate::ha::Source::Litefs { .. })
            && settings.cluster_secret_file.is_none()
        {
            bail!("--ha-mode litefs needs --cluster-secret-file: every server must derive the same node keys");
        }
        if settings.lease.as_millis() < 1_000 {
            bail!("{} must be at least 1s", setting("lease"));
        }
        if settings.busy_timeout.as_millis() < 100 {
            bail!("{} must be at least 100ms", setting("busy_timeout"));
        }
        if settings.stall_after.as_millis() < 100 {
            bail!("{} must be at least 100ms", setting("stall_after"));
        }
        if settings.webhook_timeout.as_millis() < 100 {
            bail!("{} must be at least 100ms", setting("webhook_timeout"));
        }
        if settings.events_keep == 0 {
            bail!("{} must be at least 1", setting("events_keep"));
        }
        if settings.events_max_age.as_millis() < settings.webhook_retry_for.as_millis() {
            bail!(
                "{} is {}, shorter than {} at {}: events a webhook still retries would be \
                 pruned under it; raise the first or lower the second",
                setting("events_max_age"),
                settings.events_max_age,
                setting("webhook_retry_for"),
                settings.webhook_retry_for
            );
        }
        if settings.audit_keep == 0 {
            bail!("{} must be at least 1", setting("audit_keep"));
        }
        if settings.history_keep == 0 {
            bail!("{} must be at least 1", setting("history_keep"));
        }
        if settings.max_body_bytes < 1024 {
            bail!("{} must be at least 1024", setting("max_body_bytes"));
        }
        Ok(settings)
    }
}

/// A setting as an error names it: its flag, its environment variable and
/// its config-file key (`lease` → `--lease (SUNDIAL_LEASE, config key
/// lease)`), since any of the three may have set it.
fn setting(key: &str) -> String {
    format!(
        "--{} ({}, config key {key})",
        key.replace('_', "-"),
        format_args!("SUNDIAL_{}", key.to_uppercase())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn flags_beat_file_beat_defaults() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "listen = \"127.0.0.1:9999\"\nhistory_keep = 7\nlog_format = \"json\""
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(f.path().to_path_buf()),
            history_keep: Some(3),
            ..ServeArgs::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.listen.port(), 9999);
        assert_eq!(s.history_keep, 3);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.data_dir, PathBuf::from("./sundial-data"));
    }

    #[test]
    fn audit_retention_defaults_and_bounds() {
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.audit_keep, 1_000_000);
        assert_eq!(s.audit_max_age.as_millis(), 90 * 86_400_000);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "audit_keep = 10\naudit_max_age = \"30d\"").unwrap();
        let s = ServeArgs {
            config: Some(f.path().to_path_buf()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.audit_keep, 10);
        assert_eq!(s.audit_max_age.as_millis(), 30 * 86_400_000);
        let err = ServeArgs {
            audit_keep: Some(0),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("audit_keep"), "{err:#}");
    }

    #[test]
    fn wal_autocheckpoint_defaults_to_sqlites_and_reads_0_and_refuses_negatives() {
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.wal_autocheckpoint, 1000);
        let file = |text: &str| {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            writeln!(f, "{text}").unwrap();
            f
        };
        let f = file("wal_autocheckpoint = 0");
        let from_file = |f: &tempfile::NamedTempFile, flag: Option<u32>| {
            ServeArgs {
                config: Some(f.path().to_path_buf()),
                wal_autocheckpoint: flag,
                ..ServeArgs::default()
            }
            .resolve()
        };
        assert_eq!(from_file(&f, None).unwrap().wal_autocheckpoint, 0);
        assert_eq!(from_file(&f, Some(500)).unwrap().wal_autocheckpoint, 500);
        let err = from_file(&file("wal_autocheckpoint = -1"), None).unwrap_err();
        assert!(format!("{err:#}").contains("wal_autocheckpoint"), "{err:#}");
    }

    #[test]
    fn a_role_outside_static_mode_is_an_error_not_ignored() {
        let err = ServeArgs {
            role: Some(StaticRole::Replica),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("--role (SUNDIAL_ROLE, config key role) and --primary-url")
                && text.contains("only apply with --ha-mode static (the mode is standalone)"),
            "{text}"
        );
        let static_replica = ServeArgs {
            ha_mode: Some(HaMode::Static),
            role: Some(StaticRole::Replica),
            primary_url: Some("http://127.0.0.1:1".parse().unwrap()),
            ..ServeArgs::default()
        };
        assert!(static_replica.resolve().is_ok());
    }

    #[test]
    fn events_outlive_the_webhook_retry_window() {
        let err = ServeArgs {
            events_max_age: Some("1h".parse().unwrap()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(
                "--events-max-age (SUNDIAL_EVENTS_MAX_AGE, config key events_max_age) is 1h, \
                 shorter than --webhook-retry-for (SUNDIAL_WEBHOOK_RETRY_FOR, config key \
                 webhook_retry_for) at 1d"
            ),
            "{text}"
        );
        let s = ServeArgs {
            events_max_age: Some("1h".parse().unwrap()),
            webhook_retry_for: Some("30m".parse().unwrap()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.events_max_age.as_millis(), 3_600_000);
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "listn = \"127.0.0.1:9999\"").unwrap();
        let err = ServeArgs {
            config: Some(f.path().to_path_buf()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("listn"), "{err:#}");
    }
}

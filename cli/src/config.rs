//! Connection settings: named contexts in `~/.config/sundial/config.toml`
//! (or `$SUNDIAL_CLI_CONFIG`), and how flags, environment and the current context
//! combine into one [`Connection`].
//!
//! Precedence, highest first: `--server`/`SUNDIAL_URL`; `--key-file`/`SUNDIAL_KEY_FILE`,
//! then `SUNDIAL_KEY`; `--ca-file`/`SUNDIAL_CA_FILE`; then the context named by `--context`/
//! `SUNDIAL_CONTEXT`, else the file's `current_context`; then
//! `http://127.0.0.1:8080` with no key. Contexts store a key *file*, never a key.

use crate::error::{CliError, CliResult};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The server a command talks to when nothing else says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// One named connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The config file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the config file lives: `$SUNDIAL_CLI_CONFIG`, else
/// `$XDG_CONFIG_HOME/sundial/config.toml`, else `~/.config/sundial/config.toml`.
pub fn config_path() -> CliResult<PathBuf> {
    if let Some(p) = std::env::var_os("SUNDIAL_CLI_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|p| !p.is_empty())
                .ok_or_else(|| CliError::usage("neither SUNDIAL_CLI_CONFIG nor HOME is set"))?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(base.join("sundial").join("config.toml"))
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> CliResult<ConfigFile> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| CliError::usage(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("reading {}", path.display()))
                .into()),
        }
    }

    /// Writes the file (creating its directory), readable by the owner only.
    pub fn save(&self, path: &Path) -> CliResult<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = toml::to_string_pretty(self).context("encoding the config")?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// What the flags and environment said (each may be absent).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub server: Option<String>,
    pub key: Option<String>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub context: Option<String>,
}

/// The resolved connection for one command.
#[derive(Clone, Debug)]
pub struct Connection {
    pub server: String,
    pub key: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Which context supplied defaults, if any.
    pub context: Option<String>,
}

fn read_key(path: &Path) -> CliResult<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("reading key file {}: {e}", path.display())))?;
    let key = text.trim().to_string();
    if key.is_empty() {
        return Err(CliError::usage(format!(
            "key file {} is empty",
            path.display()
        )));
    }
    Ok(key)
}

/// Combines overrides with the config file.
pub fn resolve(o: &Overrides, file: &ConfigFile) -> CliResult<Connection> {
    let name = o.context.clone().or_else(|| file.current_context.clone());
    let ctx = match &name {
        Some(n) => Some(file.contexts.get(n).ok_or_else(|| {
            CliError::usage(format!(
                "no context named {n:?} (sundial config get-contexts lists them)"
            ))
        })?),
        None => None,
    };
    let server = o
        .server
        .clone()
        .or_else(|| ctx.map(|c| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    // A context's URL was checked when it was set, unless the file was edited.
    crate::args::parse_server_url(&server).map_err(CliError::usage)?;
    let key = match (&o.key_file, &o.key, ctx.and_then(|c| c.key_file.as_ref())) {
        (Some(f), _, _) => Some(read_key(f)?),
        (None, Some(k), _) if !k.trim().is_empty() => Some(k.trim().to_string()),
        (None, _, Some(f)) => Some(read_key(f)?),
        _ => None,
    };
    let ca_file = o
        .ca_file
        .clone()
        .or_else(|| ctx.and_then(|c| c.ca_file.clone()));
    Ok(Connection {
        server: server.trim_end_matches('/').to_string(),
        key,
        ca_file,
        context: name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_context_and_context_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, "ctx-key\n").unwrap();
        let mut file = ConfigFile::default();
        file.contexts.insert(
            "prod".into(),
            Context {
                server: "https://prod:8443/".into(),
                key_file: Some(key.clone()),
                ca_file: Some("/ca.pem".into()),
            },
        );
        let none = resolve(&Overrides::default(), &file).unwrap();
        assert_eq!(none.server, DEFAULT_SERVER);
        assert!(none.key.is_none());
        file.current_context = Some("prod".into());
        let c = resolve(&Overrides::default(), &file).unwrap();
        assert_eq!(c.server, "https://prod:8443");
        assert_eq!(c.key.as_deref(), Some("ctx-key"));
        assert_eq!(c.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        let o = Overrides {
            server: Some("http://other".into()),
            key: Some("flag-key".into()),
            ..Default::default()
        };
        let c = resolve(&o, &file).unwrap();
        assert_eq!(
            (c.server.as_str(), c.key.as_deref()),
            ("http://other", Some("flag-key"))
        );
        let bad = Overrides {
            context: Some("nope".into()),
            ..Default::default()
        };
        assert_eq!(resolve(&bad, &file).unwrap_err().exit_code(), 2);
        // Save and load round trip.
        let path = dir.path().join("sub/config.toml");
        file.save(&path).unwrap();
        assert_eq!(ConfigFile::load(&path).unwrap(), file);
    }
}

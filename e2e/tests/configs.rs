//! Deployment configs stay valid: `haproxy -c` on haproxy/haproxy.cfg, and
//! litefs.yml uses only keys LiteFS documents, with an `exec` command line the
//! server accepts.

use clap::Parser;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use sundial_e2e::skip_without;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Key paths of LiteFS's configuration file (its `cmd/litefs/config.go` and
/// the reference `litefs.yml` in its repository).
const LITEFS_KEYS: &[&str] = &[
    "exit-on-error",
    "skip-sync",
    "strict-verify",
    "exec",
    "exec[].cmd",
    "exec[].if-candidate",
    "data",
    "data.dir",
    "data.compress",
    "data.retention",
    "data.retention-monitor-interval",
    "fuse",
    "fuse.dir",
    "fuse.allow-other",
    "fuse.debug",
    "http",
    "http.addr",
    "http.snapshot-timeout",
    "proxy",
    "proxy.addr",
    "proxy.target",
    "proxy.db",
    "proxy.max-lag",
    "proxy.debug",
    "proxy.passthrough",
    "proxy.always-forward",
    "proxy.primary-redirect-timeout",
    "proxy.read-timeout",
    "proxy.read-header-timeout",
    "proxy.write-timeout",
    "proxy.idle-timeout",
    "lease",
    "lease.type",
    "lease.hostname",
    "lease.advertise-url",
    "lease.candidate",
    "lease.promote",
    "lease.reconnect-delay",
    "lease.demote-delay",
    "lease.databases",
    "lease.consul",
    "lease.consul.url",
    "lease.consul.key",
    "lease.consul.ttl",
    "lease.consul.lock-delay",
    "backup",
    "backup.type",
    "backup.path",
    "backup.url",
    "backup.cluster",
    "backup.auth-token",
    "log",
    "log.format",
    "log.timestamp",
    "log.debug",
    "tracing",
    "tracing.enabled",
    "tracing.path",
    "tracing.max-size",
    "tracing.max-count",
    "tracing.compress",
];

fn key_paths(v: &serde_yaml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, child) in m {
                let k = k.as_str().expect("string keys");
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                key_paths(child, &path, out);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn litefs_yml_uses_documented_keys_and_a_valid_server_command() {
    let text = std::fs::read_to_string(repo().join("litefs.yml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut keys = BTreeSet::new();
    key_paths(&doc, "", &mut keys);
    let known: BTreeSet<&str> = LITEFS_KEYS.iter().copied().collect();
    let unknown: Vec<&String> = keys
        .iter()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "litefs.yml keys LiteFS does not document: {unknown:?}"
    );
    for needed in [
        "fuse.dir",
        "data.dir",
        "lease.type",
        "lease.candidate",
        "lease.consul.url",
        "exec[].cmd",
    ] {
        assert!(keys.contains(needed), "litefs.yml lacks {needed}");
    }
    assert_eq!(doc["lease"]["type"].as_str(), Some("consul"));
    let cmd = doc["exec"][0]["cmd"]
        .as_str()
        .unwrap()
        .replace("${SUNDIAL_PEER_DOMAIN}", "peers.example");
    let argv = shell_words::split(&cmd).unwrap();
    let cli = sundial_server::config::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("exec command rejected: {e}"));
    let sundial_server::config::Command::Serve(args) = cli.command else {
        panic!("litefs.yml's exec does not run `sundial-server serve`: {cmd}");
    };
    let settings = args.resolve().unwrap();
    assert!(matches!(
        settings.ha,
        sundial_server::ha::Source::Litefs { .. }
    ));
    assert_eq!(settings.data_dir, PathBuf::from("/litefs"));
}

#[test]
fn haproxy_config_is_valid() {
    if skip_without("haproxy") {
        return;
    }
    let out = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(repo().join("haproxy/haproxy.cfg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

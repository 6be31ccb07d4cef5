//! The deployment kit stays valid: systemd units pass `systemd-analyze
//! verify`, Kubernetes manifests pass `kubernetes-validate --strict` (and
//! `kustomize build` when a kustomize is installed), Dockerfiles pass
//! `hadolint`, shell scripts pass `shellcheck`, and every setting the kit
//! names (`--flag` or `SUNDIAL_*`) exists in the binaries' `--help`.
//!
//! Each check fails on any finding, warnings included. A missing tool skips
//! its check with a printed reason, or fails under `CI=true`
//! (`sundial_e2e::skip_without`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use sundial_e2e::{binary, skip_without, which};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// Runs a command; returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Files directly in `dir` whose names end with one of `suffixes`, sorted.
fn files(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            suffixes.iter().any(|s| name.ends_with(s))
        })
        .collect();
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------
// systemd

/// `systemd-analyze verify` needs every `ExecStart=` binary to exist, so the
/// units are copied into a temporary directory with their binaries replaced by
/// ones present here. The LiteFS drop-in is verified as a drop-in of the
/// server unit (systemd-analyze loads `<unit>.d/` next to the unit file).
#[test]
fn systemd_units_verify() {
    if skip_without("systemd-analyze") {
        return;
    }
    let server = binary("sundial-server").expect("cargo build --bins first");
    let daemon = binary("sundial-daemon").expect("cargo build --bins first");
    // Installed by scripts/install-test-tools.sh; without it (outside CI)
    // only litestream.service is skipped.
    let litestream = if skip_without("litestream") {
        None
    } else {
        which("litestream")
    };
    let mut exec_paths: Vec<(&str, PathBuf)> = vec![
        ("/usr/local/bin/sundial-server", server.clone()),
        ("/usr/local/bin/sundial-daemon", daemon),
        // LiteFS cannot be installed on these machines (no package carries
        // it); any existing executable lets verify check the rest.
        ("/usr/local/bin/litefs", server),
    ];
    if let Some(l) = &litestream {
        exec_paths.push(("/usr/bin/litestream", l.clone()));
    }
    let rewrite = |text: &str| {
        let mut text = text.to_string();
        for (from, to) in &exec_paths {
            text = text.replace(&format!("={from} "), &format!("={} ", to.display()));
            text = text.replace(&format!("={from}\n"), &format!("={}\n", to.display()));
        }
        text
    };

    let src = repo().join("systemd");
    let tmp = tempfile::tempdir().unwrap();
    let units = files(&src, &[".service"]);
    assert!(units.len() >= 3, "expected 3 units, found {units:?}");
    let mut verify_args = Vec::new();
    for unit in &units {
        if litestream.is_none() && unit.ends_with("litestream.service") {
            eprintln!("SKIPPED: systemd-analyze verify litestream.service (no litestream binary)");
            continue;
        }
        let text = read(unit);
        let copied = rewrite(&text);
        for line in copied.lines().filter(|l| l.starts_with("ExecStart=/")) {
            let bin = line["ExecStart=".len()..]
                .split_whitespace()
                .next()
                .unwrap();
            assert!(
                Path::new(bin).exists(),
                "{}: no stand-in for {bin}",
                rel(unit)
            );
        }
        let dest = tmp.path().join(unit.file_name().unwrap());
        std::fs::write(&dest, copied).unwrap();
        verify_args.push(dest);
    }
    let dropin_dir = tmp.path().join("sundial-server.service.d");
    std::fs::create_dir_all(&dropin_dir).unwrap();
    let dropin = src.join("sundial-server-litefs.conf");
    std::fs::write(dropin_dir.join("litefs.conf"), rewrite(&read(&dropin))).unwrap();
    eprintln!(
        "NOTE: the LiteFS drop-in's ExecStart= points at sundial-server for verification \
         (LiteFS is not installable here)"
    );

    let (ok, out) = run(Command::new("systemd-analyze")
        .arg("verify")
        .args(&verify_args)
        .current_dir(tmp.path()));
    eprintln!("systemd-analyze verify {} units: {}", verify_args.len(), {
        if out.trim().is_empty() {
            "clean".to_string()
        } else {
            out.clone()
        }
    });
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify found problems:\n{out}"
    );
}

/// The hardening the units promise is actually there.
#[test]
fn systemd_units_are_hardened() {
    let src = repo().join("systemd");
    for name in [
        "sundial-server.service",
        "sundial-daemon.service",
        "litestream.service",
    ] {
        let text = read(&src.join(name));
        for needed in [
            "User=sundial",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=\n",
            "RestrictAddressFamilies=",
            "SystemCallFilter=@system-service",
            "Restart=on-failure",
            "RestartSec=",
            "LimitNOFILE=",
            "KillMode=mixed",
        ] {
            assert!(text.contains(needed), "{name} lacks {needed:?}");
        }
    }
    // The daemon's stop timeout must outlast its drain: drain-grace (30s) +
    // kill-grace (5s) + time to deliver results.
    let daemon = read(&src.join("sundial-daemon.service"));
    let timeout = daemon
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec= in sundial-daemon.service");
    let secs: u64 = timeout.trim_end_matches('s').parse().expect("seconds");
    assert!(
        secs > 35,
        "TimeoutStopSec={timeout} does not outlast drain + kill grace"
    );
}

// ---------------------------------------------------------------------------
// Kubernetes

/// Kinds `kubernetes-validate` has no schema for (CRDs); they are reported as
/// skipped, never silently passed.
const NO_SCHEMA_KINDS: &[&str] = &["ServiceMonitor"];

fn check_kubernetes_validate(path: &Path, label: &str) {
    let (ok, out) = run(Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(path));
    let mut problems = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            continue;
        }
        if let Some(kind) = NO_SCHEMA_KINDS
            .iter()
            .find(|k| line.contains(&format!("Couldn't find schema for kind {k} ")))
        {
            eprintln!(
                "SKIPPED schema check: {label}: {kind} (kubernetes-validate has no schema \
                 for this CRD; its references are checked by k8s_references_resolve)"
            );
            continue;
        }
        problems.push(line.to_string());
    }
    eprintln!(
        "kubernetes-validate --strict {label}: {}",
        if problems.is_empty() && ok {
            "ok"
        } else {
            "FAILED"
        }
    );
    assert!(
        ok && problems.is_empty(),
        "kubernetes-validate findings in {label}:\n{}\n(full output)\n{out}",
        problems.join("\n")
    );
}

fn manifests() -> Vec<PathBuf> {
    files(&repo().join("k8s"), &[".yaml", ".yml"])
        .into_iter()
        // Not a cluster resource: exercised by kustomize_build below.
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .collect()
}

#[test]
fn k8s_manifests_validate() {
    if skip_without("kubernetes-validate") {
        return;
    }
    let all = manifests();
    assert!(all.len() >= 10, "expected the full kit, found {all:?}");
    for path in &all {
        check_kubernetes_validate(path, &rel(path));
    }
}

#[test]
fn kustomize_build() {
    let mut cmd = if which("kustomize").is_some() {
        let mut c = Command::new("kustomize");
        c.arg("build");
        c
    } else if which("kubectl").is_some() {
        let mut c = Command::new("kubectl");
        c.arg("kustomize");
        c
    } else {
        eprintln!("SKIPPED: kustomize build k8s/ (neither kustomize nor kubectl is installed)");
        return;
    };
    let (ok, out) = run(cmd.arg(repo().join("k8s")));
    assert!(ok, "kustomize build k8s/ failed:\n{out}");
    let docs = yaml_docs(&out);
    let kinds: BTreeSet<String> = docs
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_string))
        .collect();
    for kind in [
        "Namespace",
        "StatefulSet",
        "DaemonSet",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(kind), "kustomize output lacks a {kind}");
    }
    assert!(
        !kinds.contains("Secret"),
        "kustomization.yaml must not deploy the example Secrets"
    );
    for d in &docs {
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], "sundial", "{:?}", d["metadata"]);
        }
    }
    eprintln!("kustomize build k8s/: {} resources", docs.len());
    if which("kubernetes-validate").is_some() {
        let tmp = tempfile::tempdir().unwrap();
        let built = tmp.path().join("kustomize-build.yaml");
        std::fs::write(&built, &out).unwrap();
        check_kubernetes_validate(&built, "kustomize build k8s/");
    }
}

/// The documents of a multi-document YAML stream (split on `---` lines).
fn yaml_docs(text: &str) -> Vec<serde_yaml::Value> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.iter()
        .map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn k8s_objects() -> Vec<(String, serde_yaml::Value)> {
    let mut out = Vec::new();
    for path in manifests() {
        for doc in yaml_docs(&read(&path)) {
            out.push((rel(&path), doc));
        }
    }
    out
}

fn labels_match(selector: &serde_yaml::Value, labels: &serde_yaml::Value) -> bool {
    selector
        .as_mapping()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Names the manifests refer to exist: Services select pods, the StatefulSet's
/// serviceName is headless, the ServiceMonitor (which has no schema here)
/// selects a Service and names one of its ports, every referenced ConfigMap,
/// Secret and ServiceAccount is defined, and probes use declared ports.
#[test]
fn k8s_references_resolve() {
    let objs = k8s_objects();
    let of_kind = |kind: &str| -> Vec<&serde_yaml::Value> {
        objs.iter()
            .filter(|(_, o)| o["kind"] == kind)
            .map(|(_, o)| o)
            .collect()
    };
    let names = |kind: &str| -> BTreeSet<String> {
        of_kind(kind)
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let workloads: Vec<&serde_yaml::Value> = of_kind("StatefulSet")
        .into_iter()
        .chain(of_kind("DaemonSet"))
        .collect();
    let services = of_kind("Service");

    for svc in &services {
        let sel = &svc["spec"]["selector"];
        assert!(
            workloads
                .iter()
                .any(|w| labels_match(sel, &w["spec"]["template"]["metadata"]["labels"])),
            "Service {:?} selects no pods",
            svc["metadata"]["name"]
        );
    }
    for sts in of_kind("StatefulSet") {
        let name = &sts["spec"]["serviceName"];
        let headless = services
            .iter()
            .find(|s| &s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("StatefulSet serviceName {name:?} is not defined"));
        assert_eq!(
            headless["spec"]["clusterIP"], "None",
            "{name:?} not headless"
        );
    }
    for sm in of_kind("ServiceMonitor") {
        let sel = &sm["spec"]["selector"]["matchLabels"];
        let matched: Vec<_> = services
            .iter()
            .filter(|s| labels_match(sel, &s["metadata"]["labels"]))
            .collect();
        assert!(!matched.is_empty(), "ServiceMonitor selects no Service");
        for ep in sm["spec"]["endpoints"].as_sequence().unwrap() {
            for s in &matched {
                let ports = s["spec"]["ports"].as_sequence().unwrap();
                assert!(
                    ports.iter().any(|p| p["name"] == ep["port"]),
                    "ServiceMonitor port {:?} not on Service {:?}",
                    ep["port"],
                    s["metadata"]["name"]
                );
            }
        }
    }
    for pdb in of_kind("PodDisruptionBudget") {
        let sel = &pdb["spec"]["selector"]["matchLabels"];
        assert!(
            workloads
                .iter()
                .any(|w| labels_match(sel, &w["spec"]["template"]["metadata"]["labels"])),
            "PodDisruptionBudget selects no pods"
        );
    }

    let configmaps = names("ConfigMap");
    let secrets = names("Secret");
    let accounts = names("ServiceAccount");
    for w in &workloads {
        let spec = &w["spec"]["template"]["spec"];
        let wname = w["metadata"]["name"].as_str().unwrap();
        let sa = spec["serviceAccountName"].as_str().unwrap();
        assert!(
            accounts.contains(sa),
            "{wname}: ServiceAccount {sa} missing"
        );
        assert_eq!(
            spec["automountServiceAccountToken"], false,
            "{wname} mounts an API token it does not need"
        );
        for v in spec["volumes"].as_sequence().into_iter().flatten() {
            if let Some(cm) = v["configMap"]["name"].as_str() {
                assert!(configmaps.contains(cm), "{wname}: ConfigMap {cm} missing");
            }
            if let Some(s) = v["secret"]["secretName"].as_str() {
                assert!(
                    secrets.contains(s),
                    "{wname}: Secret {s} not in the example"
                );
            }
        }
        let containers = spec["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .chain(spec["initContainers"].as_sequence().into_iter().flatten());
        for c in containers {
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                if let Some(cm) = from["configMapRef"]["name"].as_str() {
                    assert!(configmaps.contains(cm), "{wname}: ConfigMap {cm} missing");
                }
            }
            let ports: BTreeSet<&str> = c["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str())
                .collect();
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                if let Some(port) = c[probe]["httpGet"]["port"].as_str() {
                    assert!(ports.contains(port), "{wname}: {probe} port {port}");
                }
            }
        }
    }
    // The server probes are the documented ones.
    let sts = &of_kind("StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(sts["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(sts["readinessProbe"]["httpGet"]["path"], "/readyz");
    // Every Secret value in the example is an obvious placeholder.
    for (file, o) in &objs {
        if o["kind"] == "Secret" {
            for (k, v) in o["stringData"].as_mapping().unwrap() {
                assert!(
                    v.as_str().unwrap().starts_with("CHANGE-ME"),
                    "{file}: {k:?} is not a CHANGE-ME placeholder"
                );
            }
        }
    }
}

/// k8s/litefs-configmap.yaml embeds the repository's litefs.yml verbatim.
#[test]
fn litefs_configmap_matches_repo_litefs_yml() {
    let objs = k8s_objects();
    let cm = objs
        .iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "sundial-litefs")
        .expect("ConfigMap sundial-litefs");
    let embedded = cm["data"]["litefs.yml"].as_str().unwrap();
    let repo_file = read(&repo().join("litefs.yml"));
    assert!(
        embedded.trim_end() == repo_file.trim_end(),
        "k8s/litefs-configmap.yaml drifted from litefs.yml; re-embed it"
    );
}

// ---------------------------------------------------------------------------
// Docker

#[test]
fn dockerfiles_lint() {
    if skip_without("hadolint") {
        return;
    }
    let docker = repo().join("docker");
    for name in ["Dockerfile.server", "Dockerfile.daemon"] {
        let path = docker.join(name);
        let (ok, out) = run(Command::new("hadolint").arg(&path));
        eprintln!(
            "hadolint docker/{name}: {}",
            if out.trim().is_empty() { "clean" } else { &out }
        );
        assert!(
            ok && out.trim().is_empty(),
            "hadolint findings in docker/{name}:\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------
// Shell scripts

fn is_shell_script(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    if name.ends_with(".sh") {
        return true;
    }
    let head = std::fs::read(path).unwrap_or_default();
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    first.starts_with("#!") && (first.contains("sh") && !first.contains("python"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn shell_scripts_pass_shellcheck() {
    if skip_without("shellcheck") {
        return;
    }
    let mut scripts = Vec::new();
    for dir in ["scripts", "bench", "docker", "systemd"] {
        let mut all = Vec::new();
        walk(&repo().join(dir), &mut all);
        scripts.extend(all.into_iter().filter(|p| {
            if dir == "scripts" || dir == "bench" {
                p.extension().is_some_and(|e| e == "sh")
            } else {
                is_shell_script(p)
            }
        }));
    }
    scripts.sort();
    assert!(!scripts.is_empty(), "no scripts found under scripts/");
    let mut findings = Vec::new();
    for script in &scripts {
        let (ok, out) = run(Command::new("shellcheck")
            .arg("--external-sources")
            .arg(script)
            .current_dir(repo()));
        eprintln!(
            "shellcheck {}: {}",
            rel(script),
            if ok && out.trim().is_empty() {
                "clean"
            } else {
                "FINDINGS"
            }
        );
        if !ok || !out.trim().is_empty() {
            findings.push(format!("--- {}\n{out}", rel(script)));
        }
    }
    assert!(
        findings.is_empty(),
        "shellcheck findings:\n{}",
        findings.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Settings named by the kit exist in the binaries

struct Help {
    flags: BTreeSet<String>,
    envs: BTreeSet<String>,
}

fn help(bin: &str, args: &[&str]) -> Help {
    let path = binary(bin).expect("cargo build --bins first");
    let (ok, out) = run(Command::new(path).args(args));
    assert!(ok, "{bin} {args:?} failed:\n{out}");
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for word in out.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        if let Some(f) = word.strip_prefix("--") {
            let f: String = f
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !f.is_empty() {
                flags.insert(f);
            }
        }
    }
    for part in out.split("[env: ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        envs.insert(name);
    }
    assert!(
        !flags.is_empty() && !envs.is_empty(),
        "{bin}: nothing parsed from --help:\n{out}"
    );
    Help { flags, envs }
}

/// `SUNDIAL_*` names in `text` (comments included: they document options).
fn sundial_vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("SUNDIAL_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let name = name.trim_end_matches('_');
        // `SUNDIAL_*` (the family) is not a name.
        if name != "SUNDIAL" {
            out.insert(name.to_string());
        }
    }
    out
}

/// The `--flag` names in `text` that are arguments of one of `binaries`:
/// the flags after the last word naming the binary on a logical line (a
/// trailing `\\` continues it), e.g. `sundial-daemon --server URL`. With
/// `yaml_args`, a line that starts with a flag (a container `args:` item or a
/// folded command line) counts as well.
fn flags_near(text: &str, binaries: &[&str], yaml_args: bool) -> BTreeSet<String> {
    let flag_of = |word: &str| -> Option<String> {
        let f: String = word
            .strip_prefix("--")?
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        (!f.is_empty()).then_some(f)
    };
    let mut out = BTreeSet::new();
    let mut joined = String::new();
    for line in text.lines() {
        let l = line.trim_end();
        if let Some(cont) = l.strip_suffix('\\') {
            joined.push_str(cont);
            joined.push(' ');
            continue;
        }
        joined.push_str(l);
        let logical = std::mem::take(&mut joined);
        let words: Vec<&str> = logical
            .split(|c: char| c.is_whitespace() || matches!(c, '"' | '`' | '[' | ']' | ','))
            .filter(|w| !w.is_empty())
            .collect();
        let names_binary = |w: &str| {
            binaries
                .iter()
                .any(|b| w == *b || w.ends_with(&format!("/{b}")))
        };
        if let Some(pos) = words.iter().rposition(|w| names_binary(w)) {
            out.extend(words[pos + 1..].iter().filter_map(|w| flag_of(w)));
        }
        if yaml_args {
            let trimmed = logical.trim_start().trim_start_matches("- ").trim_start();
            if trimmed.starts_with("--") {
                out.extend(trimmed.split_whitespace().next().and_then(flag_of));
            }
        }
    }
    out
}

/// Environment variables that are not flags but are read or expanded.
const ENV_ONLY: &[&str] = &[
    // Read by the server directly (docs/configuration.md).
    "SUNDIAL_ADMIN_KEY",
    // Expanded by LiteFS in litefs.yml, not read by Sundial.
    "SUNDIAL_PEER_DOMAIN",
    // Set by the daemon for jobs (docs/daemon.md).
    "SUNDIAL_RUN_ID",
    "SUNDIAL_JOB_ID",
    "SUNDIAL_SCHEDULED_FOR",
    "SUNDIAL_ATTEMPT",
    // Operators' shell variable for the admin key (README, docs).
    "SUNDIAL_KEY",
    // What Kubernetes service links would inject for a Service named
    // `sundial`; named only to explain `enableServiceLinks: false`.
    "SUNDIAL_PORT",
    "SUNDIAL_SERVICE_HOST",
    // The database path: `sundial-server check --db` (not `serve`), expanded
    // by Litestream in litestream.yml, read by scripts/restore.sh.
    "SUNDIAL_DB",
    // scripts/restore.sh: which sundial-server runs the check.
    "SUNDIAL_SERVER_BIN",
    // Read by haproxy/haproxy.cfg.
    "SUNDIAL_HAPROXY_BIND",
    "SUNDIAL_SERVER_1",
    "SUNDIAL_SERVER_2",
    "SUNDIAL_HAPROXY_STATS",
];

#[test]
fn settings_named_in_the_kit_exist() {
    let server = help("sundial-server", &["serve", "--help"]);
    let daemon = help("sundial-daemon", &["--help"]);
    let both: BTreeSet<String> = server.envs.union(&daemon.envs).cloned().collect();
    let root = repo();
    let mut errors = Vec::new();

    // Which binary each file configures.
    let server_files = [
        "systemd/sundial-server.service",
        "systemd/sundial-server.env",
        "systemd/sundial-server-litefs.conf",
        "docker/Dockerfile.server",
        "k8s/server-statefulset.yaml",
        "k8s/litefs-configmap.yaml",
    ];
    let daemon_files = [
        "systemd/sundial-daemon.service",
        "systemd/sundial-daemon.env",
        "docker/Dockerfile.daemon",
        "k8s/daemon-daemonset.yaml",
    ];
    let mixed_files = [
        "k8s/configmap.yaml",
        "docs/deployment/systemd.md",
        "docs/deployment/kubernetes.md",
        "docs/deployment/docker.md",
        "docs/deployment/litefs.md",
        "docs/deployment/ha-setup.md",
        "docs/deployment/litestream.md",
        "docs/dr.md",
    ];
    let check = |file: &str, envs: &BTreeSet<String>, errors: &mut Vec<String>| {
        let path = root.join(file);
        if !path.exists() {
            errors.push(format!("{file}: missing"));
            return;
        }
        for v in sundial_vars(&read(&path)) {
            if !envs.contains(&v) && !ENV_ONLY.contains(&v.as_str()) {
                errors.push(format!("{file}: {v} is not a setting of the binary"));
            }
        }
    };
    for f in server_files {
        check(f, &server.envs, &mut errors);
    }
    for f in daemon_files {
        check(f, &daemon.envs, &mut errors);
    }
    for f in mixed_files {
        check(f, &both, &mut errors);
    }

    // --flags given to a sundial binary, or as its container args.
    let flag_sources: [(&str, &Help, &str, bool); 7] = [
        ("k8s/daemon-daemonset.yaml", &daemon, "sundial-daemon", true),
        ("k8s/litefs-configmap.yaml", &server, "serve", true),
        (
            "docs/deployment/systemd.md",
            &daemon,
            "sundial-daemon",
            false,
        ),
        (
            "docs/deployment/kubernetes.md",
            &daemon,
            "sundial-daemon",
            false,
        ),
        (
            "docs/deployment/docker.md",
            &daemon,
            "sundial-daemon",
            false,
        ),
        ("docs/deployment/litefs.md", &server, "serve", false),
        ("docs/deployment/ha-setup.md", &server, "serve", false),
    ];
    for (file, h, bin, yaml_args) in flag_sources {
        let path = root.join(file);
        if !path.exists() {
            errors.push(format!("{file}: missing"));
            continue;
        }
        for f in flags_near(&read(&path), &[bin], yaml_args) {
            if !h.flags.contains(&f) {
                errors.push(format!("{file}: --{f} is not a flag of `{bin}`"));
            }
        }
    }
    for file in [
        "docs/deployment/systemd.md",
        "docs/deployment/kubernetes.md",
        "docs/deployment/docker.md",
    ] {
        for f in flags_near(&read(&root.join(file)), &["serve"], false) {
            if !server.flags.contains(&f) {
                errors.push(format!(
                    "{file}: --{f} is not a flag of `sundial-server serve`"
                ));
            }
        }
    }

    // The env files document EVERY option of their binary.
    for (file, h) in [
        ("systemd/sundial-server.env", &server),
        ("systemd/sundial-daemon.env", &daemon),
    ] {
        let documented = sundial_vars(&read(&root.join(file)));
        for v in &h.envs {
            if !documented.contains(v) {
                errors.push(format!("{file}: does not document {v}"));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Flags a command's `--help` text lists (for the scripts, which are not clap).
fn script_flags(script: &str) -> BTreeSet<String> {
    let (ok, out) = run(Command::new("bash").arg(repo().join(script)).arg("--help"));
    assert!(ok, "{script} --help failed:\n{out}");
    flags_near(
        &format!("{script} {}", out.replace('\n', " ")),
        &[script],
        false,
    )
}

/// The DR commands in the docs (restore.sh, litestream-primary.sh,
/// `sundial-server check`) use flags those commands have.
#[test]
fn dr_doc_commands_use_real_flags() {
    let root = repo();
    let restore = script_flags("scripts/restore.sh");
    let primary = script_flags("scripts/litestream-primary.sh");
    let check = help("sundial-server", &["check", "--help"]).flags;
    for needed in [
        "output",
        "timestamp",
        "force",
        "config",
        "db",
        "replica-url",
    ] {
        assert!(
            restore.contains(needed),
            "restore.sh --help lacks --{needed}"
        );
    }
    let mut errors = Vec::new();
    let mut seen = 0;
    for file in [
        "README.md",
        "docs/dr.md",
        "docs/deployment/litestream.md",
        "docs/operations.md",
    ] {
        let text = read(&root.join(file));
        for (bin, flags) in [
            ("restore.sh", &restore),
            ("litestream-primary.sh", &primary),
            ("check", &check),
        ] {
            for f in flags_near(&text, &[bin], false) {
                seen += 1;
                if !flags.contains(&f) {
                    errors.push(format!("{file}: --{f} is not a flag of {bin}"));
                }
            }
        }
    }
    assert!(
        seen >= 10,
        "the DR docs name only {seen} flags: did the check lose them?"
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// k8s/litestream-configmap.yaml embeds the repository's litestream.yml
/// verbatim, and the server StatefulSet's `litestream` sidecar runs
/// scripts/litestream-primary.sh (only the primary uploads) with flags the
/// script has, over the shared LiteFS mount and that config.
#[test]
fn litestream_sidecar_runs_only_on_the_primary_with_the_repo_config() {
    let objs = k8s_objects();
    let find = |kind: &str, name: &str| {
        objs.iter()
            .map(|(_, o)| o)
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name}"))
            .clone()
    };
    let cm = find("ConfigMap", "sundial-litestream-config");
    let embedded = cm["data"]["litestream.yml"].as_str().unwrap();
    let repo_file = read(&repo().join("litestream.yml"));
    assert!(
        embedded.trim_end() == repo_file.trim_end(),
        "k8s/litestream-configmap.yaml drifted from litestream.yml; re-embed it"
    );
    let sts = find("StatefulSet", "sundial");
    let spec = &sts["spec"]["template"]["spec"];
    let containers = spec["containers"].as_sequence().unwrap();
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == "litestream")
        .expect("litestream sidecar");
    assert_eq!(
        sidecar["command"][0], "/usr/local/bin/litestream-primary.sh",
        "the sidecar must run Litestream through litestream-primary.sh"
    );
    let args: Vec<&str> = sidecar["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flags = script_flags("scripts/litestream-primary.sh");
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            flags.contains(a.trim_start_matches("--")),
            "{a} is not a flag of litestream-primary.sh"
        );
    }
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .copied()
    };
    assert_eq!(value_of("--litefs-dir"), Some("/litefs"));
    assert_eq!(value_of("--db"), Some("/litefs/sundial.db"));
    // The config file the sidecar reads is the embedded one.
    let config = value_of("--config").expect("--config");
    let mounts = sidecar["volumeMounts"].as_sequence().unwrap();
    let config_mount = mounts
        .iter()
        .find(|m| config.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the --config file is mounted");
    let volumes = spec["volumes"].as_sequence().unwrap();
    let volume = volumes
        .iter()
        .find(|v| v["name"] == config_mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], "sundial-litestream-config");
    assert!(config.ends_with("/litestream.yml"));
    // Both containers share the LiteFS mount: Bidirectional from the
    // (privileged) LiteFS container, HostToContainer into the sidecar.
    let server = containers.iter().find(|c| c["name"] == "sundial").unwrap();
    let litefs_mount = |c: &serde_yaml::Value| {
        c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/litefs")
            .cloned()
            .expect("/litefs mounted")
    };
    let (a, b) = (litefs_mount(server), litefs_mount(sidecar));
    assert_eq!(a["name"], b["name"]);
    assert_eq!(a["mountPropagation"], "Bidirectional");
    assert_eq!(b["mountPropagation"], "HostToContainer");
    assert_eq!(server["securityContext"]["privileged"], true);
    // Its environment resolves: the bucket ConfigMap and the credentials
    // Secret exist (the Secret in the example).
    for from in sidecar["envFrom"].as_sequence().unwrap() {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            find("ConfigMap", name);
        }
        if let Some(name) = from["secretRef"]["name"].as_str() {
            find("Secret", name);
        }
    }
    let env = sidecar["env"].as_sequence().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "SUNDIAL_DB" && e["value"] == "/litefs/sundial.db"));
    // The image carries the script and Litestream.
    let dockerfile = read(&repo().join("docker/Dockerfile.server"));
    assert!(dockerfile.contains("scripts/litestream-primary.sh"));
    assert!(dockerfile.contains("/usr/local/bin/litestream"));
}

//! Job manifests on disk: reading YAML (multi-document), TOML and JSON files
//! or directories of them into [`JobManifest`]s that remember where each came
//! from, and writing them back out (`export`) so that a re-apply is a no-op.
//!
//! One job per document: YAML documents separated by `---`; a JSON file holds
//! one job object, an array of them or `{"jobs": [...]}`; a TOML file holds one
//! job as its top-level table or several as `[[jobs]]`.

use crate::error::{CliError, CliResult};
use anyhow::anyhow;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use sundial_proto::JobManifest;

/// A manifest file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
    Json,
}

impl Format {
    /// The format a file name implies, if any.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Where a job came from: file and 1-based document number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    pub doc: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.doc)
    }
}

/// Jobs read from files, with `sources[i]` the origin of `jobs[i]`.
#[derive(Debug, Default)]
pub struct Loaded {
    pub jobs: Vec<JobManifest>,
    pub sources: Vec<Source>,
}

fn bad(source: &Source, message: impl fmt::Display) -> CliError {
    CliError::Other(anyhow!("{source}: {message}"))
}

/// Expands files and directories (their manifest files, sorted, recursively).
/// `-` is standard input (YAML).
pub fn expand(paths: &[PathBuf]) -> CliResult<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(p.clone());
        } else if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            if found.is_empty() {
                return Err(CliError::usage(format!(
                    "{}: no .yaml, .yml, .toml or .json files in this directory",
                    p.display()
                )));
            }
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(CliError::usage(format!("{}: no such file", p.display())));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> CliResult<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::usage(format!("reading {}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(|e| CliError::usage(format!("reading {}: {e}", dir.display())))?
            .path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if Format::of(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits one file's text into documents (JSON values), in order.
pub fn documents(name: &str, format: Format, text: &str) -> CliResult<Vec<serde_json::Value>> {
    let whole = |m: String| CliError::Other(anyhow!("{name}: {m}"));
    match format {
        Format::Yaml => {
            let mut docs = Vec::new();
            for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
                let v = serde_json::Value::deserialize(doc).map_err(|e| {
                    bad(
                        &Source {
                            file: name.to_string(),
                            doc: i + 1,
                        },
                        e,
                    )
                })?;
                docs.push(v);
            }
            // Empty documents (a leading or trailing `---`) hold no job.
            Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
        }
        Format::Json => {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| whole(e.to_string()))?;
            Ok(match v {
                serde_json::Value::Array(items) => items,
                serde_json::Value::Object(mut m) if m.len() == 1 && m.contains_key("jobs") => {
                    match m.remove("jobs") {
                        Some(serde_json::Value::Array(items)) => items,
                        _ => return Err(whole("\"jobs\" must be an array".into())),
                    }
                }
                other => vec![other],
            })
        }
        Format::Toml => {
            let table: toml::Table = toml::from_str(text).map_err(|e| whole(e.to_string()))?;
            let v = serde_json::to_value(&table).map_err(|e| whole(e.to_string()))?;
            Ok(match v {
                serde_json::Value::Object(mut m) if m.len() == 1 && m.contains_key("jobs") => {
                    match m.remove("jobs") {
                        Some(serde_json::Value::Array(items)) => items,
                        _ => {
                            return Err(whole("jobs must be an array of tables ([[jobs]])".into()))
                        }
                    }
                }
                other => vec![other],
            })
        }
    }
}

/// Turns one document into a manifest, naming the field at fault.
pub fn manifest(source: &Source, doc: serde_json::Value) -> CliResult<JobManifest> {
    let serde_json::Value::Object(mut map) = doc else {
        return Err(bad(
            source,
            "a job document must be a mapping with an \"id\"",
        ));
    };
    let id = match map.remove("id") {
        Some(serde_json::Value::String(id)) => id,
        Some(other) => {
            return Err(bad(
                source,
                format!("field id: must be a string, not {other}"),
            ))
        }
        None => {
            return Err(bad(
                source,
                "field id: missing (every job document needs an id)",
            ))
        }
    };
    let spec = JobManifest::spec_from_map(map).map_err(|e| match &e.field {
        Some(f) => bad(source, format!("job {id:?}: field {f}: {}", e.message)),
        None => bad(source, format!("job {id:?}: {}", e.message)),
    })?;
    Ok(JobManifest { id, spec })
}

/// Reads every file (see [`expand`]); `tick` is called once per document read.
pub fn load(paths: &[PathBuf], mut tick: impl FnMut(usize)) -> CliResult<Loaded> {
    let mut loaded = Loaded::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for path in expand(paths)? {
        let (name, format, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| CliError::usage(format!("reading standard input: {e}")))?;
            ("<stdin>".to_string(), Format::Yaml, text)
        } else {
            let format = Format::of(&path).ok_or_else(|| {
                CliError::usage(format!(
                    "{}: unknown manifest type (use .yaml, .yml, .toml or .json)",
                    path.display()
                ))
            })?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| CliError::usage(format!("reading {}: {e}", path.display())))?;
            (path.display().to_string(), format, text)
        };
        let docs = documents(&name, format, &text)?;
        for (i, doc) in docs.into_iter().enumerate() {
            let source = Source {
                file: name.clone(),
                doc: i + 1,
            };
            let m = manifest(&source, doc)?;
            if let Some(first) = seen.insert(m.id.clone(), loaded.jobs.len()) {
                return Err(bad(
                    &source,
                    format!(
                        "job {:?} is also defined at {}",
                        m.id, loaded.sources[first]
                    ),
                ));
            }
            loaded.jobs.push(m);
            loaded.sources.push(source);
            tick(1);
        }
    }
    Ok(loaded)
}

#[derive(serde::Serialize)]
struct Jobs<'a> {
    jobs: &'a [JobManifest],
}

/// Writes manifests in a format that [`load`] reads back to the same jobs.
pub fn render(jobs: &[JobManifest], format: Format) -> CliResult<String> {
    let out = match format {
        Format::Yaml => {
            let mut out = String::new();
            for j in jobs {
                out.push_str("---\n");
                out.push_str(
                    &serde_yaml_ng::to_string(j).map_err(|e| anyhow!("encoding YAML: {e}"))?,
                );
            }
            out
        }
        Format::Json => {
            let mut s =
                serde_json::to_string_pretty(jobs).map_err(|e| anyhow!("encoding JSON: {e}"))?;
            s.push('\n');
            s
        }
        Format::Toml => {
            toml::to_string_pretty(&Jobs { jobs }).map_err(|e| anyhow!("encoding TOML: {e}"))?
        }
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
---
id: nightly
schedule: "0 30 2 * * *"
timezone: Europe/Berlin
executor: {type: exec, argv: [/bin/echo, hi], env: {MODE: full}}
labels: {team: billing}
timeout: 10m
---
id: ping
schedule: "@every 30s"
executor:
  type: http
  url: http://127.0.0.1:9/x
---
"#;

    fn load_text(name: &str, format: Format, text: &str) -> CliResult<Vec<JobManifest>> {
        documents(name, format, text)?
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                manifest(
                    &Source {
                        file: name.into(),
                        doc: i + 1,
                    },
                    d,
                )
            })
            .collect()
    }

    #[test]
    fn every_format_round_trips() {
        let jobs = load_text("a.yaml", Format::Yaml, YAML).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].spec.labels["team"], "billing");
        assert_eq!(jobs[0].spec.timeout.unwrap().as_millis(), 600_000);
        for format in [Format::Yaml, Format::Json, Format::Toml] {
            let text = render(&jobs, format).unwrap();
            let back = load_text("x", format, &text).unwrap();
            assert_eq!(back, jobs, "{format:?}:\n{text}");
        }
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let text = "id: a\nschedule: '@hourly'\nexecutor: {type: exec, argv: [x]}\n---\nid: b\nschedule: '@hourly'\nexecutor: {type: exec, argv: [x]}\nretries: {max: lots}\n";
        let err = load_text("jobs.yaml", Format::Yaml, text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("jobs.yaml: document 2: job \"b\": field retries.max:"),
            "{err}"
        );
        let err = load_text("j.json", Format::Json, r#"[{"schedule": "@hourly"}]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("j.json: document 1: field id"), "{err}");
        let err = load_text("j.toml", Format::Toml, "id = 'a'\nschedul = 'x'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("schedul"), "{err}");
    }

    #[test]
    fn duplicate_ids_across_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = "id: a\nschedule: '@hourly'\nexecutor: {type: exec, argv: [x]}\n";
        std::fs::write(dir.path().join("1.yaml"), one).unwrap();
        std::fs::write(dir.path().join("2.yml"), one).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let err = load(&[dir.path().to_path_buf()], |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("2.yml: document 1"), "{err}");
        assert!(err.contains("also defined at"), "{err}");
    }
}

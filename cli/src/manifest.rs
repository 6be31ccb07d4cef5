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

/// Jobs read from files, with `sources[i]` the origin of `jobs[i]` and
/// `raw[i]` its document as written (what is sent to the server).
#[derive(Debug, Default)]
pub struct Loaded {
    pub jobs: Vec<JobManifest>,
    pub sources: Vec<Source>,
    pub raw: Vec<serde_json::Value>,
    /// Files that hold no job (empty, or only empty documents).
    pub empty: Vec<String>,
}

fn bad(source: &Source, message: impl fmt::Display) -> CliError {
    CliError::Other(anyhow!("{source}: {message}"))
}

/// Expands files and directories (their manifest files, sorted, recursively).
/// `-` is standard input (YAML).
pub fn expand(paths: &[PathBuf]) -> CliResult<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
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
    // A file named twice (or a directory and a file in it) is read once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| p.as_os_str() == "-" || seen.insert(p.canonicalize().unwrap_or(p.clone())));
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

/// Files at least this large are parsed on several threads.
const PARALLEL_BYTES: usize = 1 << 20;

/// Start of the first line at or after `from` that is a YAML document marker
/// (`---` at column 0 followed by a blank or the end of the line). Such a line
/// can never be content (YAML forbids it inside scalars), so cutting there is exact.
fn next_marker(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut at = from;
    while let Some(found) = text.get(at..)?.find("\n---") {
        let line = at + found + 1;
        match bytes.get(line + 3) {
            None | Some(b' ' | b'\t' | b'\r' | b'\n') => return Some(line),
            _ => at = line,
        }
    }
    None
}

/// Cuts a YAML stream into about `parts` pieces at document markers.
fn yaml_pieces(text: &str, parts: usize) -> Vec<&str> {
    if parts <= 1 || text.len() < PARALLEL_BYTES {
        return vec![text];
    }
    let step = text.len() / parts;
    let mut cuts = vec![0];
    while cuts.len() < parts {
        let from = cuts[cuts.len() - 1] + step;
        match next_marker(text, from) {
            Some(cut) => cuts.push(cut),
            None => break,
        }
    }
    cuts.push(text.len());
    cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

/// Parses a YAML piece: (raw document count, non-empty documents with their
/// 0-based position) or the position and error of the first bad document.
#[allow(clippy::type_complexity)]
fn yaml_piece(text: &str) -> Result<(usize, Vec<(usize, serde_json::Value)>), (usize, String)> {
    let mut docs = Vec::new();
    let mut count = 0;
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = crate::strict_value::StrictValue::deserialize(doc)
            .map_err(|e| (i, e.to_string()))?
            .0;
        count = i + 1;
        // Empty documents (a trailing `---`, `--- ` twice) hold no job.
        if !v.is_null() {
            docs.push((i, v));
        }
    }
    Ok((count, docs))
}

/// Splits one file's text into documents (JSON values) with their 1-based
/// document numbers, in order. Empty YAML documents are skipped but counted.
pub fn documents(
    name: &str,
    format: Format,
    text: &str,
) -> CliResult<Vec<(usize, serde_json::Value)>> {
    let whole = |m: String| CliError::Other(anyhow!("{name}: {m}"));
    let numbered = |items: Vec<serde_json::Value>| {
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, v))
            .collect()
    };
    match format {
        Format::Yaml => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let pieces = yaml_pieces(text, threads.min(8));
            let results: Vec<_> = if pieces.len() == 1 {
                vec![yaml_piece(text)]
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = pieces
                        .iter()
                        .map(|p| scope.spawn(move || yaml_piece(p)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or_else(|_| Err((0, "the YAML parser panicked".into())))
                        })
                        .collect()
                })
            };
            let mut out = Vec::new();
            let mut before = 0;
            for r in results {
                match r {
                    Ok((count, docs)) => {
                        out.extend(docs.into_iter().map(|(i, v)| (before + i + 1, v)));
                        before += count;
                    }
                    Err((i, message)) => {
                        let source = Source {
                            file: name.to_string(),
                            doc: before + i + 1,
                        };
                        return Err(bad(&source, message));
                    }
                }
            }
            // One sequence of jobs (a JSON array piped to `-f -` is YAML
            // too): its items are the documents, as in a .json file.
            if let [(1, serde_json::Value::Array(_))] = out.as_slice() {
                if let Some((_, serde_json::Value::Array(items))) = out.pop() {
                    return Ok(numbered(items));
                }
            }
            Ok(out)
        }
        // An empty file holds no job, in every format (as in YAML).
        Format::Json | Format::Toml if text.trim().is_empty() => Ok(Vec::new()),
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let v = crate::strict_value::StrictValue::deserialize(&mut de)
                .and_then(|v| de.end().map(|()| v.0))
                .map_err(|e| whole(e.to_string()))?;
            Ok(numbered(match v {
                serde_json::Value::Array(items) => items,
                serde_json::Value::Object(mut m) if m.len() == 1 && m.contains_key("jobs") => {
                    match m.remove("jobs") {
                        Some(serde_json::Value::Array(items)) => items,
                        _ => return Err(whole("\"jobs\" must be an array".into())),
                    }
                }
                other => vec![other],
            }))
        }
        Format::Toml => {
            let table: toml::Table = toml::from_str(text).map_err(|e| whole(e.to_string()))?;
            let v = serde_json::to_value(&table).map_err(|e| whole(e.to_string()))?;
            Ok(numbered(match v {
                serde_json::Value::Object(mut m) if m.len() == 1 && m.contains_key("jobs") => {
                    match m.remove("jobs") {
                        Some(serde_json::Value::Array(items)) => items,
                        _ => {
                            return Err(whole("jobs must be an array of tables ([[jobs]])".into()))
                        }
                    }
                }
                other => vec![other],
            }))
        }
    }
}

/// Turns one document into a manifest, naming the field at fault. Returns the
/// document too (as written, `id` included): that is what is sent, so the
/// server fills in defaults and the request stays small.
pub fn manifest(
    source: &Source,
    doc: serde_json::Value,
) -> CliResult<(JobManifest, serde_json::Value)> {
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
    let mut doc = serde_json::Value::Object(map);
    let spec = sundial_proto::spec_from_value(&doc).map_err(|e| match &e.field {
        Some(f) => bad(source, format!("job {id:?}: field {f}: {}", e.message)),
        None => bad(source, format!("job {id:?}: {}", e.message)),
    })?;
    if let serde_json::Value::Object(m) = &mut doc {
        m.insert("id".into(), serde_json::Value::String(id.clone()));
    }
    Ok((JobManifest { id, spec }, doc))
}

/// Documents of one file into manifests, on several threads for large files;
/// the first bad document (in file order) is the error.
fn decode_all(
    name: &str,
    docs: Vec<(usize, serde_json::Value)>,
) -> CliResult<Vec<(Source, JobManifest, serde_json::Value)>> {
    let one = |(n, doc): (usize, serde_json::Value)| {
        let source = Source {
            file: name.to_string(),
            doc: n,
        };
        manifest(&source, doc).map(|(m, raw)| (source, m, raw))
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads == 1 || docs.len() < 4096 {
        return docs.into_iter().map(one).collect();
    }
    let size = docs.len().div_ceil(threads);
    let mut chunks: Vec<Vec<(usize, serde_json::Value)>> = Vec::new();
    let mut rest = docs;
    while rest.len() > size {
        let tail = rest.split_off(size);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    let results: Vec<CliResult<Vec<_>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| scope.spawn(move || c.into_iter().map(one).collect::<CliResult<Vec<_>>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CliError::Other(anyhow!("{name}: decoding panicked"))))
            })
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
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
        drop(text);
        if docs.is_empty() {
            loaded.empty.push(name.clone());
        }
        for (source, m, raw) in decode_all(&name, docs)? {
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
            loaded.raw.push(raw);
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
            .map(|(n, d)| {
                manifest(
                    &Source {
                        file: name.into(),
                        doc: n,
                    },
                    d,
                )
                .map(|(m, _)| m)
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
    fn large_yaml_is_cut_at_document_markers_and_numbered_in_order() {
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!(
                "---\nid: j{i}\nschedule: '@hourly'\nexecutor: {{type: shell, script: \"echo ---x\\n--- y\"}}\n"
            ));
            if i == 5 {
                text.push_str("---\n");
            }
        }
        assert!(text.len() > PARALLEL_BYTES);
        let pieces = yaml_pieces(&text, 4);
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| p.starts_with("---\n")));
        let docs = documents("big.yaml", Format::Yaml, &text).unwrap();
        assert_eq!(docs.len(), 20_000);
        assert_eq!(docs[5].0, 6);
        assert_eq!(docs[6].0, 8, "the empty document counts");
        assert_eq!(docs[19_999].0, 20_001);
        assert_eq!(docs[19_999].1["id"], "j19999");
        let bad_text = text.replace("id: j15000\n", "id: j15000\n  bad: [\n");
        let err = documents("big.yaml", Format::Yaml, &bad_text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("big.yaml: document 15002:"), "{err}");
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

    #[test]
    fn a_file_named_twice_is_read_once_and_empty_files_hold_no_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let one = "id: a\nschedule: '@hourly'\nexecutor: {type: exec, argv: [x]}\n";
        let file = dir.path().join("1.yaml");
        std::fs::write(&file, one).unwrap();
        for name in ["e.yaml", "e.json", "e.toml"] {
            std::fs::write(dir.path().join(name), " \n").unwrap();
        }
        let loaded = load(&[file.clone(), dir.path().to_path_buf(), file], |_| {}).unwrap();
        assert_eq!(loaded.jobs.len(), 1);
        assert_eq!(loaded.empty.len(), 3, "{:?}", loaded.empty);
    }

    #[test]
    fn a_yaml_stream_of_one_sequence_is_its_items() {
        let text = r#"[{"id": "a", "schedule": "@hourly", "executor": {"type": "exec", "argv": ["x"]}},
                       {"id": "b", "schedule": "@daily", "executor": {"type": "exec", "argv": ["x"]}}]"#;
        let jobs = load_text("<stdin>", Format::Yaml, text).unwrap();
        assert_eq!(
            jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn a_key_given_twice_is_an_error_in_yaml_and_json() {
        let yaml =
            "id: a\nschedule: '@hourly'\nschedule: '@daily'\nexecutor: {type: exec, argv: [x]}\n";
        let err = load_text("d.yaml", Format::Yaml, yaml)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d.yaml: document 1") && err.contains("appears twice"),
            "{err}"
        );
        let json = r#"{"id": "a", "id": "b", "schedule": "@hourly", "executor": {"type": "exec", "argv": ["x"]}}"#;
        let err = load_text("d.json", Format::Json, json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("appears twice"), "{err}");
    }
}

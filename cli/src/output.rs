//! Human and machine output: the `-o` formats, aligned tables, relative and
//! local times, and colour (only on a terminal, never with `NO_COLOR`).
//! Everything that renders takes a [`View`] — the clock, zone and colour —
//! so tests can pin them.

use crate::error::{CliError, CliResult};
use anyhow::anyhow;
use chrono::{DateTime, Local, TimeZone, Utc};
use serde::Serialize;
use std::io::IsTerminal;

/// `-o`: how results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people (the default).
    Table,
    /// Like table, with more columns.
    Wide,
    Json,
    Yaml,
    Toml,
}

impl OutputFormat {
    /// A table for people (`table` or `wide`), not a document for machines.
    pub fn is_human(self) -> bool {
        matches!(self, OutputFormat::Table | OutputFormat::Wide)
    }
}

/// Clock, display zone and colour for human output.
#[derive(Clone, Debug)]
pub struct View {
    /// "Now", unix ms.
    pub now: i64,
    /// The zone local times are shown in; `None` is the system's.
    pub tz: Option<chrono_tz::Tz>,
    pub color: bool,
}

/// Colour on when stdout is a terminal, `NO_COLOR` is unset or empty, and
/// `TERM` is not `dumb`.
pub fn color_enabled() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    !no_color && !dumb && std::io::stdout().is_terminal()
}

/// ANSI styles used in human output.
#[derive(Clone, Copy, Debug)]
pub enum Paint {
    Green,
    Yellow,
    Red,
    Bold,
    Dim,
}

impl View {
    /// The real clock, the system zone, colour per [`color_enabled`].
    pub fn system() -> View {
        View {
            now: sundial_proto::time::now_ms(),
            tz: None,
            color: color_enabled(),
        }
    }

    pub fn paint(&self, p: Paint, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match p {
            Paint::Green => "32",
            Paint::Yellow => "33",
            Paint::Red => "31",
            Paint::Bold => "1",
            Paint::Dim => "2",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// A run or job state, coloured by outcome.
    pub fn state(&self, state: &str) -> String {
        let p = match state {
            "succeeded" => Paint::Green,
            "failed" | "timed_out" | "lost" => Paint::Red,
            "running" | "pending" => Paint::Yellow,
            _ => return state.to_string(),
        };
        self.paint(p, state)
    }

    /// `2026-11-25 14:30:00 CET` in the display zone.
    pub fn local(&self, ms: i64) -> String {
        let Some(utc) = Utc.timestamp_millis_opt(ms).single() else {
            return ms.to_string();
        };
        match self.tz {
            Some(tz) => utc
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string(),
            None => utc
                .with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S %:z")
                .to_string(),
        }
    }

    /// `in 3h12m`, `5m ago`, `now`.
    pub fn relative(&self, ms: i64) -> String {
        let delta = ms - self.now;
        if delta.abs() < 1000 {
            return "now".into();
        }
        let d = short_duration(delta.unsigned_abs() / 1000);
        if delta > 0 {
            format!("in {d}")
        } else {
            format!("{d} ago")
        }
    }

    /// Relative form of an optional RFC 3339 instant, or `-`.
    pub fn relative_opt(&self, s: Option<&str>) -> String {
        s.and_then(instant)
            .map(|t| self.relative(t))
            .unwrap_or_else(|| "-".into())
    }

    /// `2026-11-25 14:30:00 CET (in 3h12m)`, or `-`.
    pub fn when(&self, ms: Option<i64>) -> String {
        match ms {
            Some(t) => format!("{} ({})", self.local(t), self.relative(t)),
            None => "-".into(),
        }
    }
}

/// Two most significant units: `3h12m`, `2d4h`, `45s`.
pub fn short_duration(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, name) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        } else if !parts.is_empty() {
            // Keep adjacency: "1d0h" reads oddly, stop at the first zero after a unit.
            break;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.concat()
}

/// Visible width of a cell (ANSI escapes take no room).
fn width(s: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// Left-aligned columns separated by two spaces; no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(width(cell));
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - width(cell) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Renders a value as JSON, YAML or TOML (`-o json|yaml|toml`).
pub fn structured<T: Serialize>(format: OutputFormat, value: &T) -> CliResult<String> {
    match format {
        OutputFormat::Json => {
            let mut s =
                serde_json::to_string_pretty(value).map_err(|e| anyhow!("encoding JSON: {e}"))?;
            s.push('\n');
            Ok(s)
        }
        OutputFormat::Yaml => {
            serde_yaml_ng::to_string(value).map_err(|e| anyhow!("encoding YAML: {e}").into())
        }
        OutputFormat::Toml => {
            // A TOML document is a table and has no null: a list goes under
            // `items` (`[[items]]`), a bare value under `value`, and keys
            // whose value is null are left out.
            let v = serde_json::to_value(value).map_err(|e| anyhow!("encoding TOML: {e}"))?;
            let table = match without_nulls(v) {
                v @ serde_json::Value::Object(_) => v,
                v @ serde_json::Value::Array(_) => serde_json::json!({ "items": v }),
                v => serde_json::json!({ "value": v }),
            };
            toml::to_string_pretty(&table).map_err(|e| anyhow!("encoding TOML: {e}").into())
        }
        OutputFormat::Table | OutputFormat::Wide => Err(CliError::usage(
            "internal: table output is rendered by the command",
        )),
    }
}

/// `v` with every object key whose value is null removed (TOML has no null).
fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// `k=v,k2=v2` (sorted), or `-` when empty.
pub fn labels(map: &std::collections::BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses an RFC 3339 instant from the API.
pub fn instant(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists, bare strings and nulls all come out as TOML that reads back.
    #[test]
    fn toml_takes_lists_strings_and_nulls() {
        let list = serde_json::json!([
            {"id": "a", "error": null, "labels": {"team": "x"}, "n": 1},
            {"id": "b", "error": "boom", "labels": {}, "n": 2}
        ]);
        let text = structured(OutputFormat::Toml, &list).unwrap();
        let back: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(back["items"][0]["id"].as_str(), Some("a"));
        assert!(back["items"][0].get("error").is_none(), "{text}");
        assert_eq!(back["items"][1]["error"].as_str(), Some("boom"));
        let text = structured(OutputFormat::Toml, &"line 1\nline 2\n").unwrap();
        let back: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(back["value"].as_str(), Some("line 1\nline 2\n"));
    }

    #[test]
    fn durations_and_relative_times() {
        assert_eq!(short_duration(0), "0s");
        assert_eq!(short_duration(45), "45s");
        assert_eq!(short_duration(3 * 3600 + 12 * 60 + 5), "3h12m");
        assert_eq!(short_duration(2 * 86_400 + 4 * 3600), "2d4h");
        assert_eq!(short_duration(86_400 + 30), "1d");
        let v = View {
            now: 1_000_000_000_000,
            tz: Some(chrono_tz::Europe::Berlin),
            color: false,
        };
        assert_eq!(v.relative(v.now + 11_520_000), "in 3h12m");
        assert_eq!(v.relative(v.now - 300_000), "5m ago");
        assert_eq!(v.local(0), "1970-01-01 01:00:00 CET");
    }

    #[test]
    fn tables_align_and_ignore_colour_codes() {
        let v = View {
            now: 0,
            tz: None,
            color: true,
        };
        let rows = vec![
            vec!["a".to_string(), v.state("failed"), "x".into()],
            vec!["long-id".to_string(), "ok".into(), "".into()],
        ];
        let t = table(&["ID", "STATE", "N"], &rows);
        let plain: String = t.replace("\x1b[31m", "").replace("\x1b[0m", "");
        assert_eq!(
            plain,
            "ID       STATE   N\na        failed  x\nlong-id  ok\n"
        );
    }
}

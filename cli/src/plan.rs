//! Printing an apply plan: `+ create`, `~ update` with a field-level diff,
//! `- delete`, and the `= N unchanged` count, plus the one-line summary.

use crate::output::{Paint, View};
use serde_json::Value;
use std::collections::HashMap;
use sundial_proto::{Action, ApplyResponse, JobSpec};

/// One leaf that differs: dotted path, old and new value (`None` = absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// Leaf-level differences between two specs (objects recurse, arrays compare whole).
pub fn diff_specs(old: &JobSpec, new: &JobSpec) -> Vec<FieldChange> {
    let old = serde_json::to_value(old).unwrap_or(Value::Null);
    let new = serde_json::to_value(new).unwrap_or(Value::Null);
    let mut out = Vec::new();
    diff_values("", Some(&old), Some(&new), &mut out);
    out
}

fn diff_values(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_values(&p, a.get(k), b.get(k), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldChange {
            path: path.to_string(),
            old: a.cloned().filter(|v| !v.is_null()),
            new: b.cloned().filter(|v| !v.is_null()),
        }),
    }
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(none)".into(),
        Some(v) => v.to_string(),
    }
}

/// Counts per action.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub unchanged: usize,
}

impl Counts {
    pub fn of(plan: &ApplyResponse) -> Counts {
        let mut c = Counts::default();
        for e in &plan.plan {
            match e.action {
                Action::Create => c.create += 1,
                Action::Update => c.update += 1,
                Action::Delete => c.delete += 1,
                Action::Unchanged => c.unchanged += 1,
            }
        }
        c
    }

    pub fn changes(&self) -> usize {
        self.create + self.update + self.delete
    }
}

/// The plan as text. `new` holds the manifests' specs, `old` the stored specs
/// of updated jobs that could be fetched (others show changed field names only).
pub fn render(
    view: &View,
    plan: &ApplyResponse,
    new: &HashMap<&str, &JobSpec>,
    old: &HashMap<String, JobSpec>,
) -> String {
    let mut out = String::new();
    for e in &plan.plan {
        match e.action {
            Action::Create => {
                out.push_str(&view.paint(Paint::Green, &format!("+ create  {}", e.id)));
                out.push('\n');
            }
            Action::Delete => {
                out.push_str(&view.paint(Paint::Red, &format!("- delete  {}", e.id)));
                out.push('\n');
            }
            Action::Update => {
                out.push_str(&view.paint(Paint::Yellow, &format!("~ update  {}", e.id)));
                out.push('\n');
                match (old.get(&e.id), new.get(e.id.as_str())) {
                    (Some(o), Some(n)) => {
                        for c in diff_specs(o, n) {
                            out.push_str(&format!(
                                "      {}: {} → {}\n",
                                c.path,
                                view.paint(Paint::Red, &show(&c.old)),
                                view.paint(Paint::Green, &show(&c.new))
                            ));
                        }
                    }
                    _ => {
                        out.push_str(&format!("      changed: {}\n", e.changes.join(", ")));
                    }
                }
            }
            Action::Unchanged => {}
        }
    }
    let c = Counts::of(plan);
    if c.unchanged > 0 {
        out.push_str(&view.paint(Paint::Dim, &format!("= {} unchanged", c.unchanged)));
        out.push('\n');
    }
    out
}

/// Warnings for one-shot jobs this plan creates, or whose schedule it
/// changes, at an `@at` instant already past (`now`): the server keeps them,
/// as a manifest kept in git must apply again after its job has run, but
/// they will never fire.
pub fn passed_at(plan: &ApplyResponse, new: &HashMap<&str, &JobSpec>, now: i64) -> Vec<String> {
    plan.plan
        .iter()
        .filter(|e| {
            e.action == Action::Create
                || (e.action == Action::Update && e.changes.iter().any(|c| c == "schedule"))
        })
        .filter_map(|e| {
            let schedule = new.get(e.id.as_str())?.schedule.trim();
            let at = schedule.get(..3).filter(|p| p.eq_ignore_ascii_case("@at"))?;
            let when = sundial_proto::time::parse_rfc3339_ms(schedule[at.len()..].trim())?;
            (when <= now).then(|| {
                format!(
                    "warning: job {:?}: {schedule} has passed; it will never fire (run it now with `sundial jobs trigger {}`)",
                    e.id, e.id
                )
            })
        })
        .collect()
}

/// `Plan: 1 to create, 2 to update, 0 to delete, 5 unchanged.`
pub fn summary(c: Counts, applied: bool) -> String {
    let verb = if applied { "Applied" } else { "Plan" };
    if applied {
        format!(
            "{verb}: {} created, {} updated, {} deleted, {} unchanged.",
            c.create, c.update, c.delete, c.unchanged
        )
    } else {
        format!(
            "{verb}: {} to create, {} to update, {} to delete, {} unchanged.",
            c.create, c.update, c.delete, c.unchanged
        )
    }
}

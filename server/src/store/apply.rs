//! Bulk apply in the store: decides per job whether it is created, updated,
//! unchanged or (when pruning) deleted, by comparing the canonical spec JSON
//! with the stored one, and — unless it is a dry run — writes the plan. The
//! caller runs [`plan_and_apply`] inside one writer operation, so a bulk apply
//! is one transaction: all or nothing.

use super::{chains, jobs, StoreError};
use rusqlite::Connection;
use std::collections::{BTreeMap, HashSet};
use sundial_proto::{Action, JobSpec, PlanEntry};

/// One validated job of the request, with its schedule already parsed.
pub struct Input {
    pub id: String,
    pub spec: JobSpec,
    pub schedule: crate::schedule::Schedule,
}

/// The plan and, after a real apply, the earliest next fire to wake the scheduler for.
pub struct Outcome {
    pub plan: Vec<PlanEntry>,
    pub earliest_fire: Option<i64>,
    /// Digests of the changed jobs' stored specs before and after, in plan
    /// order (see [`super::audit::SetDigest`]): the audit row of the apply.
    pub before: super::audit::SetDigest,
    pub after: super::audit::SetDigest,
    /// Updated jobs whose target or executor changed, as they are now: runs
    /// already queued for them follow (after a real apply).
    pub placements: Vec<super::lifecycle::Placement>,
}

/// Top-level spec fields whose values differ between two canonical specs.
fn changed_fields(old_text: &str, new: &JobSpec) -> Result<Vec<String>, StoreError> {
    let old: serde_json::Value = serde_json::from_str(old_text)
        .map_err(|e| StoreError::Corrupt(format!("stored spec: {e}")))?;
    let new = serde_json::to_value(new)
        .map_err(|e| StoreError::Corrupt(format!("encoding spec: {e}")))?;
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return Err(StoreError::Corrupt("spec is not a JSON object".into()));
    };
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    Ok(keys
        .into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect())
}

/// Plans the request against the stored jobs and, unless `dry_run`, applies it.
/// `prune` (non-empty) deletes stored jobs carrying all its labels that the
/// request does not name. Entries come in request order, deletions last.
pub fn plan_and_apply(
    conn: &Connection,
    inputs: &[Input],
    prune: Option<&BTreeMap<String, String>>,
    dry_run: bool,
    now: i64,
) -> Result<Outcome, StoreError> {
    let mut plan = Vec::with_capacity(inputs.len());
    let mut before = super::audit::SetDigest::default();
    let mut after = super::audit::SetDigest::default();
    for input in inputs {
        let new_text = serde_json::to_string(&input.spec)
            .map_err(|e| StoreError::Corrupt(format!("encoding spec: {e}")))?;
        let old_text = jobs::spec_text(conn, &input.id)?;
        let (action, changes) = match &old_text {
            None => (Action::Create, Vec::new()),
            Some(old) if *old == new_text => (Action::Unchanged, Vec::new()),
            Some(old) => (Action::Update, changed_fields(old, &input.spec)?),
        };
        if action != Action::Unchanged {
            before.add(&input.id, old_text.as_deref());
            after.add(&input.id, Some(&new_text));
        }
        if !dry_run && action != Action::Unchanged {
            jobs::write_spec(conn, &input.id, &input.spec, now, |t| {
                input.schedule.next_after(t)
            })?;
        }
        plan.push(PlanEntry {
            id: input.id.clone(),
            action,
            changes,
        });
    }
    // Chains are checked against the graph as the request leaves it (a
    // manifest may list a job before its upstream), in a dry run too, and
    // a refusal names the document.
    let graph = chains::Graph::with_pending(
        conn,
        inputs
            .iter()
            .map(|i| (i.id.as_str(), i.spec.after.as_slice())),
    );
    let changed = || {
        inputs
            .iter()
            .zip(&plan)
            .enumerate()
            .filter(|(_, (_, entry))| entry.action != Action::Unchanged)
            .map(|(i, (input, _))| (i, input))
    };
    for (index, input) in changed() {
        graph
            .check(&input.id, &input.spec.after)
            .map_err(|e| match e {
                StoreError::Invalid { field, message } => StoreError::InvalidDoc {
                    index,
                    field,
                    message,
                },
                other => other,
            })?;
    }
    let mut placements = Vec::new();
    if !dry_run {
        for (_, input) in changed() {
            jobs::write_after(conn, &input.id, &input.spec)?;
        }
        let moved = inputs.iter().zip(&plan).filter(|(_, entry)| {
            entry.action == Action::Update
                && entry
                    .changes
                    .iter()
                    .any(|f| f == "target" || f == "executor")
        });
        for (input, _) in moved {
            placements.extend(super::lifecycle::placement(conn, &input.id)?);
        }
    }
    if let Some(selector) = prune.filter(|s| !s.is_empty()) {
        let named: HashSet<&str> = inputs.iter().map(|i| i.id.as_str()).collect();
        let mut doomed: Vec<String> = jobs::ids_matching(conn, selector)?
            .into_iter()
            .filter(|id| !named.contains(id.as_str()))
            .collect();
        doomed.sort();
        for id in doomed {
            before.add(&id, jobs::spec_text(conn, &id)?.as_deref());
            after.add(&id, None);
            if !dry_run {
                jobs::delete(conn, &id, now)?;
            }
            plan.push(PlanEntry {
                id,
                action: Action::Delete,
                changes: Vec::new(),
            });
        }
    }
    let earliest_fire = if dry_run {
        None
    } else {
        jobs::earliest_fire(conn)?
    };
    Ok(Outcome {
        plan,
        earliest_fire,
        before,
        after,
        placements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;
    use crate::store::test_support::temp_store;

    fn input(id: &str, schedule: &str, team: &str) -> Input {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "schedule": schedule, "executor": {"type": "exec", "argv": ["true"]},
            "labels": {"team": team}
        }))
        .unwrap();
        Input {
            id: id.into(),
            schedule: Schedule::parse(&spec.schedule, &spec.timezone).unwrap(),
            spec,
        }
    }

    fn actions(o: &Outcome) -> Vec<(String, Action, Vec<String>)> {
        o.plan
            .iter()
            .map(|e| (e.id.clone(), e.action, e.changes.clone()))
            .collect()
    }

    #[tokio::test]
    async fn create_update_unchanged_prune_and_dry_run() {
        let (_dir, store) = temp_store();
        let first = vec![input("a", "@hourly", "x"), input("b", "@daily", "x")];
        let o = store
            .write(move |c| plan_and_apply(c, &first, None, false, 1_000))
            .await
            .unwrap();
        assert!(o.earliest_fire.is_some());
        assert_eq!(
            actions(&o),
            vec![
                ("a".into(), Action::Create, vec![]),
                ("b".into(), Action::Create, vec![])
            ]
        );
        // Dry run: a changes schedule, b is dropped and pruned; nothing written.
        let sel: BTreeMap<String, String> = [("team".to_string(), "x".to_string())].into();
        let (second, sel2) = (vec![input("a", "@daily", "x")], sel.clone());
        let o = store
            .read(move |c| plan_and_apply(c, &second, Some(&sel2), true, 2_000))
            .await
            .unwrap();
        assert_eq!(
            actions(&o),
            vec![
                ("a".into(), Action::Update, vec!["schedule".to_string()]),
                ("b".into(), Action::Delete, vec![])
            ]
        );
        let still: Vec<String> = store
            .read(|c| jobs::ids_matching(c, &[("team".into(), "x".into())].into()))
            .await
            .unwrap();
        assert_eq!(still.len(), 2);
        // Real apply of the same, then again: all unchanged.
        let second = vec![input("a", "@daily", "x")];
        store
            .write(move |c| plan_and_apply(c, &second, Some(&sel), false, 2_000))
            .await
            .unwrap();
        let again = vec![input("a", "@daily", "x")];
        let o = store
            .write(move |c| plan_and_apply(c, &again, None, false, 3_000))
            .await
            .unwrap();
        assert_eq!(actions(&o), vec![("a".into(), Action::Unchanged, vec![])]);
        assert!(store.read(|c| jobs::get(c, "b")).await.unwrap().is_none());
        store.close().await;
    }

    /// `id` running after `upstreams` (on success).
    fn after(id: &str, upstreams: &[&str]) -> Input {
        let mut i = input(id, "@yearly", "c");
        i.spec.after = upstreams
            .iter()
            .map(|u| sundial_proto::After {
                job: u.to_string(),
                on: vec![sundial_proto::RunState::Succeeded],
            })
            .collect();
        i
    }

    /// Applies `inputs`, as a dry run on a reader and for real on the writer,
    /// and returns both outcomes' errors as (index, field, message).
    async fn refusals(
        store: &crate::store::Store,
        inputs: Vec<Input>,
    ) -> [Option<(usize, String, String)>; 2] {
        let doc = |r: Result<Outcome, StoreError>| match r {
            Ok(_) => None,
            Err(StoreError::InvalidDoc {
                index,
                field,
                message,
            }) => Some((index, field, message)),
            Err(other) => panic!("not a document error: {other}"),
        };
        let inputs = std::sync::Arc::new(inputs);
        let dry = inputs.clone();
        let dry = doc(store
            .read(move |c| plan_and_apply(c, &dry, None, true, 1_000))
            .await);
        let real = doc(store
            .write(move |c| plan_and_apply(c, &inputs, None, false, 1_000))
            .await);
        [dry, real]
    }

    /// A dry run refuses the chains a real apply refuses, naming the
    /// document; a manifest may list a job before its upstream.
    #[tokio::test]
    async fn chains_are_checked_in_a_dry_run_too() {
        let (_dir, store) = temp_store();
        let cases: [(Vec<Input>, usize, &str); 3] = [
            (
                vec![input("a", "@hourly", "c"), after("b", &["zzz"])],
                1,
                "does not exist",
            ),
            (vec![after("a", &["a"])], 0, "cannot run after itself"),
            (
                vec![after("a", &["b"]), after("b", &["a"])],
                0,
                "a cycle: a after b (which runs after a)",
            ),
        ];
        for (inputs, index, message) in cases {
            for refusal in refusals(&store, inputs).await {
                let (i, field, m) = refusal.expect("refused");
                assert_eq!((i, field.as_str()), (index, "after[0].job"), "{m}");
                assert!(m.contains(message), "{m}");
            }
        }
        // Nothing of the refused applies was written.
        let ids = store
            .read(|c| jobs::ids_matching(c, &BTreeMap::new()))
            .await
            .unwrap();
        assert!(ids.is_empty(), "{ids:?}");
        // Follower first, upstream later in the same request.
        let ok = refusals(
            &store,
            vec![after("down", &["up"]), input("up", "@hourly", "c")],
        );
        assert_eq!(ok.await, [None, None]);
        store.close().await;
    }

    /// An upstream deleted since is kept in its followers' `after`: they
    /// can still be updated, while a new follower of it is refused.
    #[tokio::test]
    async fn a_deleted_upstream_is_kept_by_its_followers() {
        let (_dir, store) = temp_store();
        let first = vec![input("up", "@hourly", "c"), after("down", &["up"])];
        assert_eq!(refusals(&store, first).await, [None, None]);
        assert!(store.write(|c| jobs::delete(c, "up", 2_000)).await.unwrap());
        let mut changed = after("down", &["up"]);
        changed.spec.description = "still after up".into();
        assert_eq!(refusals(&store, vec![changed]).await, [None, None]);
        for refusal in refusals(&store, vec![after("other", &["up"])]).await {
            let (_, _, m) = refusal.expect("refused");
            assert!(m.contains("upstream job \"up\" does not exist"), "{m}");
        }
        store.close().await;
    }
}

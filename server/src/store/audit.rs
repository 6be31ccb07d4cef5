//! The `audit` table: one row per admin mutation (jobs, bulk apply, pause,
//! resume, trigger, cancel, API keys, join tokens, node revocation,
//! webhooks), written by the same writer operation as the change it
//! records, so a rolled-back change leaves no row and a committed one always
//! has one. A row holds who ([`Actor`]: key id and name, source address and
//! the replica that forwarded the request), what ([`Action`], target) and a
//! SHA-256 digest of the resource's canonical JSON before and after — never
//! a secret: the states digested here ([`job_state`], [`key_state`], …)
//! read only non-secret columns (no key or token hashes, no webhook salts).
//! Pruned by count and age like events ([`prune`]).

use super::{Store, StoreError};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// What an admin did. The wire names are stable (filters use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    JobPut,
    JobDelete,
    JobsApply,
    JobPause,
    JobResume,
    JobTrigger,
    RunCancel,
    KeyCreate,
    KeyDelete,
    TokenCreate,
    TokenDelete,
    NodeRevoke,
    WebhookCreate,
    WebhookDelete,
    WebhookTest,
}

impl Action {
    pub const ALL: [Action; 15] = [
        Action::JobPut,
        Action::JobDelete,
        Action::JobsApply,
        Action::JobPause,
        Action::JobResume,
        Action::JobTrigger,
        Action::RunCancel,
        Action::KeyCreate,
        Action::KeyDelete,
        Action::TokenCreate,
        Action::TokenDelete,
        Action::NodeRevoke,
        Action::WebhookCreate,
        Action::WebhookDelete,
        Action::WebhookTest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::JobPut => "job.put",
            Action::JobDelete => "job.delete",
            Action::JobsApply => "jobs.apply",
            Action::JobPause => "job.pause",
            Action::JobResume => "job.resume",
            Action::JobTrigger => "job.trigger",
            Action::RunCancel => "run.cancel",
            Action::KeyCreate => "key.create",
            Action::KeyDelete => "key.delete",
            Action::TokenCreate => "token.create",
            Action::TokenDelete => "token.delete",
            Action::NodeRevoke => "node.revoke",
            Action::WebhookCreate => "webhook.create",
            Action::WebhookDelete => "webhook.delete",
            Action::WebhookTest => "webhook.test",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Action, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                format!("unknown audit action {s:?} (one of {})", known.join(", "))
            })
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Who made a change: the admin key (id, and name when known) and where the
/// request came from. `source` is the client's address; when a replica
/// forwarded the request, `via` is the replica's address (and `source` the
/// client's, as the replica vouched for it; see `api::origin`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub key_id: String,
    /// None: looked up from `api_keys` when the row is written.
    pub key_name: Option<String>,
    pub source: Option<String>,
    pub via: Option<String>,
}

/// One audit row as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub id: i64,
    #[serde(with = "sundial_proto::time::rfc3339")]
    pub at: i64,
    pub key_id: String,
    pub key_name: Option<String>,
    pub source: Option<String>,
    pub via: Option<String>,
    pub action: Action,
    pub target: Option<String>,
    pub digest: Digests,
    /// A few non-secret facts about the change (counts of a bulk apply,
    /// the runs a trigger created, a new key's scope).
    pub detail: Value,
}

/// SHA-256 (hex) of the resource's canonical JSON before and after the
/// change; None where it did not exist.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Digests {
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Writes `v` as JSON with object keys sorted at every level (RFC 8785-like
/// for what Sundial stores), so equal states digest equally whatever
/// order their maps were built in.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// SHA-256 hex of the canonical JSON of `v`.
pub fn digest(v: &Value) -> String {
    let mut text = String::new();
    canonical(v, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// One change to record: the resource's state before and after (None:
/// absent) and a few non-secret facts.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub action: Action,
    pub target: Option<&'a str>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub detail: Value,
}

/// Writes one audit row (inside the writer operation of the change).
pub fn record(
    conn: &Connection,
    now: i64,
    actor: &Actor,
    change: &Change<'_>,
) -> Result<(), StoreError> {
    insert(
        conn,
        now,
        actor,
        change.action,
        change.target,
        [
            change.before.as_ref().map(digest),
            change.after.as_ref().map(digest),
        ],
        &change.detail,
    )
}

/// Runs `change` on `target` and records it, digesting `state` of the
/// target before and after. Nothing is recorded when the target existed
/// neither before nor after (deleting what is not there changes nothing).
pub fn around<T>(
    conn: &Connection,
    now: i64,
    actor: &Actor,
    action: Action,
    target: &str,
    state: impl Fn(&Connection, &str) -> Result<Option<Value>, StoreError>,
    change: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let before = state(conn, target)?;
    // Named now: the change may delete the acting key itself.
    let actor = named(conn, actor)?;
    let out = change()?;
    let after = state(conn, target)?;
    if before.is_some() || after.is_some() {
        let change = Change {
            action,
            target: Some(target),
            before,
            after,
            detail: json!({}),
        };
        record(conn, now, &actor, &change)?;
    }
    Ok(out)
}

/// How an audited resource's state is read (see [`around`]).
pub type StateFn = fn(&Connection, &str) -> Result<Option<Value>, StoreError>;

/// Deletes `id` and records it in one writer operation: `state` digests the
/// target before and after, `delete` removes it and says whether it was
/// there. The one path of every audited delete endpoint (jobs, keys, join
/// tokens, webhooks).
pub async fn delete(
    store: &Store,
    actor: Actor,
    action: Action,
    id: String,
    state: StateFn,
    delete: OneRow,
) -> Result<bool, StoreError> {
    change_then(store, actor, action, id, state, delete, |_| {}).await
}

/// A change to one row by id that says whether the row was there.
pub type OneRow = fn(&Connection, &str, i64) -> Result<bool, StoreError>;

/// [`delete`] for any [`OneRow`] change (a delete, a node's revocation),
/// then `then(found)` once it has committed — even if the caller is gone by
/// then (see [`Store::write_then`]).
pub async fn change_then(
    store: &Store,
    actor: Actor,
    action: Action,
    id: String,
    state: StateFn,
    change: OneRow,
    then: impl FnOnce(bool) + Send + 'static,
) -> Result<bool, StoreError> {
    store
        .write_then(
            move |c| {
                let now = sundial_proto::time::now_ms();
                around(c, now, &actor, action, &id, state, || change(c, &id, now))
            },
            move |done| {
                if let Ok(found) = done {
                    then(found);
                }
                done
            },
        )
        .await
}

/// The actor with its key's name filled in from `api_keys` when unknown.
fn named(conn: &Connection, actor: &Actor) -> Result<Actor, StoreError> {
    let mut actor = actor.clone();
    if actor.key_name.is_none() {
        actor.key_name = conn
            .prepare_cached("SELECT name FROM api_keys WHERE id = ?1")?
            .query_row([&actor.key_id], |r| r.get(0))
            .optional()?;
    }
    Ok(actor)
}

/// The row of a bulk apply: digests of the set it changed.
pub fn record_set(
    conn: &Connection,
    now: i64,
    actor: &Actor,
    before: &SetDigest,
    after: &SetDigest,
    detail: &Value,
) -> Result<(), StoreError> {
    let digests = [Some(before.finish()), Some(after.finish())];
    insert(conn, now, actor, Action::JobsApply, None, digests, detail)
}

fn insert(
    conn: &Connection,
    now: i64,
    actor: &Actor,
    action: Action,
    target: Option<&str>,
    [before, after]: [Option<String>; 2],
    detail: &Value,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit (at, key_id, key_name, source, via, action, target,
                            before_digest, after_digest, detail)
         VALUES (?1, ?2, coalesce(?3, (SELECT name FROM api_keys WHERE id = ?2)),
                 ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        now,
        actor.key_id,
        actor.key_name,
        actor.source,
        actor.via,
        action.as_str(),
        target,
        before,
        after,
        detail.to_string(),
    ])?;
    Ok(())
}

fn corrupt(what: &str, e: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// What an audit row digests of a job: its stored spec and paused flag.
pub fn job_state(conn: &Connection, id: &str) -> Result<Option<Value>, StoreError> {
    let row: Option<(String, bool)> = conn
        .prepare_cached(&format!(
            "SELECT spec, paused FROM {} WHERE id = ?1",
            super::jobs::WITH_STATS
        ))?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(spec, paused)| {
        let spec: Value = serde_json::from_str(&spec).map_err(|e| corrupt("job spec", e))?;
        Ok(json!({"id": id, "spec": spec, "paused": paused}))
    })
    .transpose()
}

/// A run's state, attempt and cancel request.
pub fn run_state(conn: &Connection, id: i64) -> Result<Option<Value>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT state, attempt, cancel_requested FROM runs WHERE id = ?1")?
        .query_row([id], |r| {
            Ok(json!({
                "id": id,
                "state": r.get::<_, String>(0)?,
                "attempt": r.get::<_, i64>(1)?,
                "cancel_requested": r.get::<_, bool>(2)?,
            }))
        })
        .optional()?)
}

/// An API key's id, name, scope and expiry — never its hash.
pub fn key_state(conn: &Connection, id: &str) -> Result<Option<Value>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT name, scope, expires_at FROM api_keys WHERE id = ?1")?
        .query_row([id], |r| {
            Ok(json!({
                "id": id,
                "name": r.get::<_, Option<String>>(0)?,
                "scope": r.get::<_, String>(1)?,
                "expires_at": r.get::<_, Option<i64>>(2)?,
            }))
        })
        .optional()?)
}

/// A join token's id, name, expiry and use limit — never its hash.
pub fn token_state(conn: &Connection, id: &str) -> Result<Option<Value>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT name, expires_at, max_uses FROM join_tokens WHERE id = ?1")?
        .query_row([id], |r| {
            Ok(json!({
                "id": id,
                "name": r.get::<_, Option<String>>(0)?,
                "expires_at": r.get::<_, i64>(1)?,
                "max_uses": r.get::<_, Option<i64>>(2)?,
            }))
        })
        .optional()?)
}

/// A node's generation and revocation (its key derives from them).
pub fn node_state(conn: &Connection, id: &str) -> Result<Option<Value>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT generation, revoked FROM nodes WHERE id = ?1")?
        .query_row([id], |r| {
            Ok(json!({
                "id": id,
                "generation": r.get::<_, i64>(0)?,
                "revoked": r.get::<_, bool>(1)?,
            }))
        })
        .optional()?)
}

/// A webhook's spec — never its salt (its secret derives from it).
pub fn webhook_state(conn: &Connection, id: &str) -> Result<Option<Value>, StoreError> {
    let spec: Option<String> = conn
        .prepare_cached("SELECT spec FROM webhooks WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    spec.map(|s| {
        let spec: Value = serde_json::from_str(&s).map_err(|e| corrupt("webhook spec", e))?;
        Ok(json!({"id": id, "spec": spec}))
    })
    .transpose()
}

/// A running SHA-256 over a set of `(id, state)` pairs: bulk apply digests
/// the jobs it changes as it writes them (one row for the whole apply).
#[derive(Clone, Default)]
pub struct SetDigest {
    hasher: Sha256,
    entries: usize,
}

impl SetDigest {
    /// Adds one member; `state` None (absent) and `Some` never collide.
    pub fn add(&mut self, id: &str, state: Option<&str>) {
        self.entries += 1;
        self.hasher.update((id.len() as u64).to_be_bytes());
        self.hasher.update(id.as_bytes());
        match state {
            None => self.hasher.update([0u8]),
            Some(s) => {
                self.hasher.update([1u8]);
                self.hasher.update((s.len() as u64).to_be_bytes());
                self.hasher.update(s.as_bytes());
            }
        }
    }

    /// The hex digest (of the empty set too).
    pub fn finish(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl fmt::Debug for SetDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SetDigest({} entries)", self.entries)
    }
}

/// Filters for [`list`]; None means "any".
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Any of these actions (empty: all).
    pub actions: Vec<Action>,
    pub target: Option<String>,
    pub key_id: Option<String>,
    /// `at >= since` (unix ms).
    pub since: Option<i64>,
    /// `at < until` (unix ms).
    pub until: Option<i64>,
}

const COLUMNS: &str = "id, at, key_id, key_name, source, via, action, target,
                       before_digest, after_digest, detail";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Entry> {
    let id: i64 = row.get(0)?;
    let bad = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("audit row {id}: {e}").into(),
        )
    };
    let action: String = row.get(6)?;
    let detail: String = row.get(10)?;
    Ok(Entry {
        id,
        at: row.get(1)?,
        key_id: row.get(2)?,
        key_name: row.get(3)?,
        source: row.get(4)?,
        via: row.get(5)?,
        action: action.parse().map_err(|e| bad(6, e))?,
        target: row.get(7)?,
        digest: Digests {
            before: row.get(8)?,
            after: row.get(9)?,
        },
        detail: serde_json::from_str(&detail).map_err(|e| bad(10, e.to_string()))?,
    })
}

/// Rows matching `filter`, newest first, with ids below `cursor` (the last
/// id of the previous page); at most `limit`. Returns the page and the
/// cursor of the next one (None when this page is the last).
pub fn list(
    conn: &Connection,
    filter: &Filter,
    cursor: Option<i64>,
    limit: usize,
) -> Result<(Vec<Entry>, Option<i64>), StoreError> {
    let actions = (!filter.actions.is_empty()).then(|| {
        filter
            .actions
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(",")
    });
    // `?2` is a comma-joined list of action names (which contain no comma).
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit
         WHERE id < ?1
           AND (?2 IS NULL OR instr(',' || ?2 || ',', ',' || action || ',') > 0)
           AND (?3 IS NULL OR target = ?3)
           AND (?4 IS NULL OR key_id = ?4)
           AND (?5 IS NULL OR at >= ?5)
           AND (?6 IS NULL OR at < ?6)
         ORDER BY id DESC LIMIT ?7"
    ))?;
    let rows = stmt.query_map(
        params![
            cursor.unwrap_or(i64::MAX),
            actions,
            filter.target,
            filter.key_id,
            filter.since,
            filter.until,
            limit as i64 + 1,
        ],
        from_row,
    )?;
    let mut items: Vec<Entry> = rows.collect::<Result<_, _>>()?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|e| e.id)
    } else {
        None
    };
    Ok((items, next))
}

/// Deletes rows older than `min_at` and beyond the newest `keep`, at most
/// `batch` per call. Ids never repeat (AUTOINCREMENT), so cursors stay valid.
pub fn prune(conn: &Connection, keep: u64, min_at: i64, batch: usize) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM audit WHERE id IN (
                 SELECT id FROM audit
                 WHERE at < ?1
                    OR id <= coalesce((SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?2), -1)
                 ORDER BY id LIMIT ?3)",
        )?
        .execute(params![min_at, keep as i64, batch as i64])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use crate::store::{keys, keys::Scope};

    fn actor() -> Actor {
        Actor {
            key_id: "key_admin".into(),
            key_name: None,
            source: Some("192.0.2.1".into()),
            via: None,
        }
    }

    #[test]
    fn actions_round_trip_and_unknown_ones_are_errors() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
        }
        let err = "job.frobnicate".parse::<Action>().unwrap_err();
        assert!(err.contains("job.put"), "{err}");
    }

    #[test]
    fn digests_do_not_depend_on_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"q":2,"p":3}],"x":"s"}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"p":3,"q":2}]},"b":1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"b": 2})));
        let mut text = String::new();
        canonical(&a, &mut text);
        assert_eq!(text, r#"{"a":{"x":"s","y":[1,{"p":3,"q":2}]},"b":1}"#);
        // A set digest tells "absent" from "empty" and depends on order.
        let (mut s1, mut s2, mut s3) = (
            SetDigest::default(),
            SetDigest::default(),
            SetDigest::default(),
        );
        s1.add("a", None);
        s2.add("a", Some(""));
        s3.add("a", None);
        assert_ne!(s1.finish(), s2.finish());
        assert_eq!(s1.finish(), s3.finish());
    }

    #[tokio::test]
    async fn a_row_commits_with_its_change_and_rolls_back_with_it() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                keys::insert(c, "key_admin", b"h1", Scope::Admin, "ops", 1)?;
                Ok(())
            })
            .await
            .unwrap();
        // The change and its row in one operation: both commit.
        store
            .write(|c| {
                keys::insert(c, "key_new", b"h2", Scope::Read, "grafana", 10)?;
                let after = key_state(c, "key_new")?;
                record(
                    c,
                    10,
                    &actor(),
                    &Change {
                        action: Action::KeyCreate,
                        target: Some("key_new"),
                        before: None,
                        after,
                        detail: json!({}),
                    },
                )
            })
            .await
            .unwrap();
        // A change that fails after writing its row: neither is kept.
        let failed = store
            .write(|c| {
                let before = key_state(c, "key_new")?;
                record(
                    c,
                    11,
                    &actor(),
                    &Change {
                        action: Action::KeyDelete,
                        target: Some("key_new"),
                        before,
                        after: None,
                        detail: json!({}),
                    },
                )?;
                c.execute("DELETE FROM api_keys WHERE id = 'key_new'", [])?;
                Err::<(), _>(StoreError::Conflict("refused".into()))
            })
            .await;
        assert!(failed.is_err());
        let (rows, next) = store
            .read(|c| list(c, &Filter::default(), None, 10))
            .await
            .unwrap();
        assert_eq!(next, None);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let row = &rows[0];
        assert_eq!(row.action, Action::KeyCreate);
        assert_eq!(row.target.as_deref(), Some("key_new"));
        assert_eq!(row.key_id, "key_admin");
        assert_eq!(row.key_name.as_deref(), Some("ops"), "name looked up by id");
        assert_eq!(row.source.as_deref(), Some("192.0.2.1"));
        assert_eq!(row.digest.before, None);
        assert_eq!(
            row.digest.after.as_deref(),
            Some(digest(&json!({"id": "key_new", "name": "grafana", "scope": "read", "expires_at": null})).as_str())
        );
        let exists: i64 = store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM api_keys WHERE id = 'key_new'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(exists, 1, "the failed delete rolled back");
        store.close().await;
    }

    #[tokio::test]
    async fn around_records_real_changes_and_names_a_key_deleting_itself() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                keys::insert(c, "key_admin", b"h1", Scope::Admin, "ops", 1)?;
                keys::insert(c, "key_other", b"h2", Scope::Admin, "other", 1)?;
                // Deleting what is not there records nothing.
                let gone = around(
                    c,
                    5,
                    &actor(),
                    Action::KeyDelete,
                    "key_nope",
                    key_state,
                    || keys::delete(c, "key_nope", 5),
                )?;
                assert!(!gone);
                // The acting key deletes itself: the row still names it.
                around(
                    c,
                    6,
                    &actor(),
                    Action::KeyDelete,
                    "key_admin",
                    key_state,
                    || keys::delete(c, "key_admin", 6),
                )
            })
            .await
            .unwrap();
        let (rows, _) = store
            .read(|c| list(c, &Filter::default(), None, 10))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].key_name.as_deref(), Some("ops"));
        assert_eq!(rows[0].target.as_deref(), Some("key_admin"));
        assert!(rows[0].digest.before.is_some() && rows[0].digest.after.is_none());
        store.close().await;
    }

    #[tokio::test]
    async fn states_hold_no_secret_material() {
        let (_dir, store) = temp_store();
        let hash = [0xabu8; 32];
        let state = store
            .write(move |c| {
                keys::insert(c, "key_s", &hash, Scope::Admin, "k", 1)?;
                c.execute(
                    "INSERT INTO join_tokens (id, hash, name, expires_at, created_at)
                     VALUES ('jt_1', ?1, 't', 5, 1)",
                    [&hash[..]],
                )?;
                Ok((key_state(c, "key_s")?, token_state(c, "jt_1")?))
            })
            .await
            .unwrap();
        let text = format!("{state:?}").to_lowercase();
        assert!(!text.contains(&hex::encode(hash)), "{text}");
        assert!(!text.contains("hash"), "{text}");
        assert!(state.0.is_some() && state.1.is_some());
        store.close().await;
    }

    #[tokio::test]
    async fn filters_pages_and_pruning() {
        let (_dir, store) = temp_store();
        store
            .write(|c| {
                for i in 0..10i64 {
                    let a = Actor {
                        key_id: if i < 5 { "key_a" } else { "key_b" }.into(),
                        key_name: Some("n".into()),
                        ..Actor::default()
                    };
                    let action = if i % 2 == 0 {
                        Action::JobPut
                    } else {
                        Action::JobDelete
                    };
                    let target = format!("job{}", i % 3);
                    record(
                        c,
                        1000 + i,
                        &a,
                        &Change {
                            action,
                            target: Some(&target),
                            before: None,
                            after: None,
                            detail: json!({"i": i}),
                        },
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let ids = |rows: &[Entry]| {
            rows.iter()
                .map(|e| e.detail["i"].as_i64().unwrap())
                .collect::<Vec<_>>()
        };
        // Newest first, paged by cursor.
        let (p1, next) = store
            .read(|c| list(c, &Filter::default(), None, 4))
            .await
            .unwrap();
        assert_eq!(ids(&p1), vec![9, 8, 7, 6]);
        let (p2, next) = store
            .read(move |c| list(c, &Filter::default(), next, 4))
            .await
            .unwrap();
        assert_eq!(ids(&p2), vec![5, 4, 3, 2]);
        let (p3, next) = store
            .read(move |c| list(c, &Filter::default(), next, 4))
            .await
            .unwrap();
        assert_eq!(ids(&p3), vec![1, 0]);
        assert_eq!(next, None);
        // Filters combine.
        let f = Filter {
            actions: vec![Action::JobPut],
            key_id: Some("key_a".into()),
            ..Filter::default()
        };
        let (rows, _) = store.read(move |c| list(c, &f, None, 100)).await.unwrap();
        assert_eq!(ids(&rows), vec![4, 2, 0]);
        let f = Filter {
            actions: vec![Action::JobPut, Action::JobDelete],
            target: Some("job1".into()),
            since: Some(1002),
            until: Some(1008),
            ..Filter::default()
        };
        let (rows, _) = store.read(move |c| list(c, &f, None, 100)).await.unwrap();
        assert_eq!(ids(&rows), vec![7, 4]);
        // Prune by age, then by count; ids keep growing.
        let n = store.write(|c| prune(c, 100, 1003, 100)).await.unwrap();
        assert_eq!(n, 3);
        let n = store.write(|c| prune(c, 2, 0, 100)).await.unwrap();
        assert_eq!(n, 5);
        let (rows, _) = store
            .read(|c| list(c, &Filter::default(), None, 100))
            .await
            .unwrap();
        assert_eq!(ids(&rows), vec![9, 8]);
        let max = rows[0].id;
        store.write(|c| prune(c, 1, i64::MAX, 100)).await.unwrap();
        store
            .write(|c| {
                record(
                    c,
                    2000,
                    &actor(),
                    &Change {
                        action: Action::JobPut,
                        target: Some("x"),
                        before: None,
                        after: None,
                        detail: json!({"i": 99}),
                    },
                )
            })
            .await
            .unwrap();
        let (rows, _) = store
            .read(|c| list(c, &Filter::default(), None, 100))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "everything older was pruned");
        assert!(rows[0].id > max);
        store.close().await;
    }
}

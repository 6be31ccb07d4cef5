//! The in-memory view of worker nodes: generation (for key derivation),
//! labels, executors, capacity and last contact. Loaded from the `nodes`
//! table at start, updated on join/register/revoke, and flushed back
//! (last-seen only) in batches so polls never write.

use crate::store::{nodes, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use sundial_proto::{ExecutorKind, Target};

/// A node is live when it was heard from within this window.
pub const LIVE_WINDOW_MS: i64 = 120_000;

/// What dispatch and auth need to know about a node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub generation: u64,
    pub revoked: bool,
    pub labels: BTreeMap<String, String>,
    pub executors: Vec<ExecutorKind>,
    pub capacity: u32,
    pub last_seen: i64,
}

impl NodeInfo {
    /// Whether this node may run a job with `target` and executor `kind`.
    /// `slot_node` is the node a broadcast slot belongs to ('' for any).
    pub fn eligible(&self, target: &Target, kind: ExecutorKind, slot_node: &str) -> bool {
        if self.revoked || !self.executors.contains(&kind) {
            return false;
        }
        if !slot_node.is_empty() {
            return slot_node == self.id;
        }
        self.matches(target)
    }

    /// Not revoked and heard from within [`LIVE_WINDOW_MS`] of `now`.
    pub fn live(&self, now: i64) -> bool {
        !self.revoked && now - self.last_seen <= LIVE_WINDOW_MS
    }

    /// Target match ignoring executors: node list and label selector.
    pub fn matches(&self, target: &Target) -> bool {
        (target.nodes.is_empty() || target.nodes.contains(&self.id))
            && target
                .labels
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

impl From<nodes::Node> for NodeInfo {
    fn from(n: nodes::Node) -> NodeInfo {
        NodeInfo {
            id: n.id,
            generation: n.generation,
            revoked: n.revoked,
            labels: n.labels,
            executors: n.executors,
            capacity: n.capacity,
            last_seen: n.last_seen.unwrap_or(0),
        }
    }
}

/// The nodes a broadcast slot is created for: live, not revoked, offering
/// the executor and matching the target; sorted by id.
pub fn broadcast_targets<'a>(
    nodes: impl Iterator<Item = &'a NodeInfo>,
    target: &Target,
    kind: ExecutorKind,
    now: i64,
) -> Vec<String> {
    let mut ids: Vec<String> = nodes
        .filter(|n| n.live(now) && n.executors.contains(&kind) && n.matches(target))
        .map(|n| n.id.clone())
        .collect();
    ids.sort();
    ids
}

#[derive(Default)]
pub struct Registry {
    nodes: RwLock<HashMap<String, Arc<NodeInfo>>>,
    /// Last contact not yet written to the database.
    dirty: RwLock<HashMap<String, i64>>,
}

impl Registry {
    /// Replaces the in-memory view with the database's (at promotion).
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let all = store.read(nodes::list).await?;
        let map: HashMap<String, Arc<NodeInfo>> = all
            .into_iter()
            .map(|n| (n.id.clone(), Arc::new(NodeInfo::from(n))))
            .collect();
        if let Ok(mut m) = self.nodes.write() {
            *m = map;
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<Arc<NodeInfo>> {
        self.nodes.read().ok()?.get(id).cloned()
    }

    /// Inserts or replaces a node's info.
    pub fn put(&self, info: NodeInfo) {
        if let Ok(mut m) = self.nodes.write() {
            m.insert(info.id.clone(), Arc::new(info));
        }
    }

    /// Applies `f` to a copy of the node's info and stores it.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut NodeInfo)) {
        if let Ok(mut m) = self.nodes.write() {
            if let Some(cur) = m.get(id) {
                let mut next = (**cur).clone();
                f(&mut next);
                m.insert(id.to_string(), Arc::new(next));
            }
        }
    }

    /// Notes contact from a node (cheap; flushed later).
    pub fn seen(&self, id: &str, now: i64) {
        let stale = self.get(id).is_some_and(|n| now - n.last_seen > 1_000);
        if stale {
            self.update(id, |n| n.last_seen = now);
            if let Ok(mut d) = self.dirty.write() {
                d.insert(id.to_string(), now);
            }
        }
    }

    /// Takes the last-seen times to flush.
    pub fn take_dirty(&self) -> Vec<(String, i64)> {
        self.dirty
            .write()
            .map(|mut d| d.drain().collect())
            .unwrap_or_default()
    }

    /// Puts back last-seen times whose flush failed (newer ones win).
    pub fn restore_dirty(&self, seen: Vec<(String, i64)>) {
        if let Ok(mut d) = self.dirty.write() {
            for (id, at) in seen {
                let e = d.entry(id).or_insert(at);
                *e = (*e).max(at);
            }
        }
    }

    /// Whether node `id` is known here and [`NodeInfo::live`].
    pub fn is_live(&self, id: &str, now: i64) -> bool {
        self.get(id).is_some_and(|n| n.live(now))
    }

    /// Live, non-revoked nodes matching a broadcast target.
    pub fn broadcast_targets(&self, target: &Target, kind: ExecutorKind, now: i64) -> Vec<String> {
        match self.nodes.read() {
            Ok(m) => broadcast_targets(m.values().map(|n| &**n), target, kind, now),
            Err(_) => Vec::new(),
        }
    }

    /// How many live nodes match `target`, whatever their executors: why
    /// a broadcast found no node (none live, or none allowing its executor).
    pub fn live_matching(&self, target: &Target, now: i64) -> usize {
        match self.nodes.read() {
            Ok(m) => m
                .values()
                .filter(|n| n.live(now) && n.matches(target))
                .count(),
            Err(_) => 0,
        }
    }
}

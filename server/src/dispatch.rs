//! Dispatch (primary only): pending runs wait in memory, ordered by the time
//! they may start; daemons long-poll and receive batches of runs they are
//! eligible for (target, labels, executors). Assignment is a database write
//! that applies the concurrency policy and grants a lease; heartbeats extend
//! it, and an expired lease turns the attempt `lost` and schedules a retry.
//!
//! The queue is rebuilt from the database (`state = 'pending'`) whenever a
//! server becomes primary, so nothing lives only in memory. A run that ends
//! or is deleted while queued leaves it: at once when cancelled or when its
//! broadcast node is gone ([`Dispatcher::forget`]), otherwise by a check of
//! the queue's head ([`Dispatcher::drop_ended_at_head`]).

use crate::loops::{self, Loop, Loops};
use crate::metrics::Metrics;
use crate::receipts::{Batch, Receipts};
use crate::registry::{NodeInfo, Registry};
use crate::store::lifecycle::{self, Queued};
use crate::store::{nodes, runs, Store, StoreError};
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sundial_proto::agent::Assignment;
use sundial_proto::time::now_ms;
use sundial_proto::Trigger;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn cancelled_token() -> CancellationToken {
    let t = CancellationToken::new();
    t.cancel();
    t
}

/// Runs due within this long are handed out ahead of their time, with a
/// delay the daemon waits before starting them: the assignment write and the
/// round trip happen before the run is due, so it starts on the dot. A run
/// whose job has another active run (forbid/replace) is held until its time.
pub const DISPATCH_AHEAD_MS: i64 = 100;

/// Queued runs ready for longer than this are checked against the
/// database ([`Dispatcher::drop_ended_at_head`]).
const HEAD_CHECK_AFTER_MS: i64 = 10_000;
/// At most this many per check.
const HEAD_CHECK_MAX: usize = 100;

/// How often leases are checked.
const REAP_EVERY: Duration = Duration::from_millis(500);
/// How often in-memory last-seen times are written.
const FLUSH_SEEN_EVERY: Duration = Duration::from_secs(5);

struct Waiter {
    node: Arc<NodeInfo>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    /// Pending runs by (ready_at, run id).
    queue: BTreeMap<(i64, i64), Queued>,
    /// Long-polls waiting for work, by node id.
    waiters: HashMap<String, Waiter>,
    /// Runs claimed by long-polls that have not returned yet (their
    /// assignment is being written): still part of the share being split.
    in_flight: usize,
    /// Nodes that let a lease expire, and when: not handed runs by a
    /// long-poll opened before (a frozen daemon's poll stays parked, and
    /// would take the retry of the attempt it just lost) until a poll
    /// opened since proves the node is back.
    suspect: HashMap<String, i64>,
}

/// What one poll claimed: the runs, the instant more becomes claimable, and
/// (when it claimed any) the guard that counts them as in flight.
struct Claim<'a> {
    runs: Vec<Queued>,
    next: Option<i64>,
    serving: Option<Serving<'a>>,
}

/// Counts a poll's claimed runs as in flight until its claim is written and
/// the poll returns (or fails, or is dropped).
struct Serving<'a>(&'a Dispatcher, usize);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.in_flight = inner.in_flight.saturating_sub(self.1);
    }
}

pub struct Dispatcher {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    loops: Arc<Loops>,
    lease_ms: i64,
    inner: Mutex<Inner>,
    /// Cancelled at shutdown: long-polls return at once so HTTP can drain.
    stopping: CancellationToken,
    /// The current term as primary; cancelled at demotion.
    term: Mutex<CancellationToken>,
    /// Long-polls in progress: the nodes asking for work right now, among
    /// which a busy second is shared.
    polling: std::sync::atomic::AtomicUsize,
    /// Assignments not yet confirmed read, to hand back if their response
    /// was lost.
    receipts: Arc<Receipts>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        loops: Arc<Loops>,
        lease_ms: i64,
        stopping: CancellationToken,
    ) -> Dispatcher {
        Dispatcher {
            store,
            metrics,
            registry,
            loops,
            lease_ms,
            inner: Mutex::new(Inner::default()),
            stopping,
            term: Mutex::new(cancelled_token()),
            polling: Default::default(),
            // A batch is of no use once its lease has run out.
            receipts: Arc::new(Receipts::new(2 * lease_ms)),
        }
    }

    /// Starts serving a term as primary at `epoch`.
    pub fn start_term(&self, token: CancellationToken, epoch: i64) {
        self.receipts.new_term(epoch);
        *self.term.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// Ends the term: the queue is dropped (the next primary rebuilds it from
    /// the database) and waiting long-polls return.
    pub fn end_term(&self) {
        self.term.lock().unwrap_or_else(|p| p.into_inner()).cancel();
        let mut inner = self.lock();
        inner.queue.clear();
        for (_, w) in inner.waiters.drain() {
            w.notify.notify_one();
        }
        self.metrics.dispatch_queue.set(0);
    }

    /// How long the pending run that has been ready the longest has waited
    /// at `now` for a node to take it, in milliseconds; 0 when none is
    /// ready (or this server is not the primary, whose queue is empty).
    pub fn oldest_wait_ms(&self, now: i64) -> i64 {
        self.lock()
            .queue
            .keys()
            .next()
            .map_or(0, |(ready_at, _)| (now - ready_at).max(0))
    }

    fn current_term(&self) -> CancellationToken {
        self.term.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every mutation is a single insert/remove), so recover from poison.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the queue from the database, renews leases and carries the
    /// running attempts of earlier terms into the receipts (at promotion).
    pub async fn load(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let lease = self.lease_ms;
        self.store
            .write(move |c| lifecycle::renew_all_leases(c, now, lease))
            .await?;
        // Cleared before the read, not after: a run queued in between (a
        // retry a result just caused) is either in the read or queued after
        // the clear. A run queued twice is harmless — its second claim finds
        // it no longer pending.
        self.lock().queue.clear();
        // One read, one snapshot: the pending runs and the running ones.
        let (pending, handed_out) = self
            .store
            .read(|c| Ok((lifecycle::load_pending(c)?, lifecycle::load_handed_out(c)?)))
            .await?;
        let n = pending.len();
        self.enqueue(pending);
        self.receipts.carry(handed_out);
        Ok(n)
    }

    /// Commits a write that leaves runs to queue (a retry, a run held to its
    /// time, a chained or triggered run) and queues them once it has
    /// committed — even if the caller is gone by then. An HTTP handler's
    /// future is dropped when its client disconnects; had it queued the runs
    /// itself, a committed `pending` run would wait, invisible to dispatch,
    /// until the next server became primary.
    pub async fn write_then_queue<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<(T, Vec<Queued>), StoreError> + Send + 'static,
    {
        self.commit_then_queue(f, |_: &T| {}, Vec::new).await
    }

    /// [`Self::write_then_queue`] that also calls `counted(&out)` once the
    /// write has committed: a metric of committed changes (results
    /// recorded, slots created) counts each one, even when the caller is
    /// gone, and none from a batch that failed.
    pub async fn write_then_queue_counted<T, F, C>(
        self: &Arc<Self>,
        f: F,
        counted: C,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<(T, Vec<Queued>), StoreError> + Send + 'static,
        C: FnOnce(&T) + Send + 'static,
    {
        self.commit_then_queue(f, counted, Vec::new).await
    }

    /// [`Self::write_then_queue_counted`], queueing `if_refused()` when the
    /// write does not commit (a claim put back).
    async fn commit_then_queue<T, F, C, R>(
        self: &Arc<Self>,
        f: F,
        counted: C,
        if_refused: R,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<(T, Vec<Queued>), StoreError> + Send + 'static,
        C: FnOnce(&T) + Send + 'static,
        R: FnOnce() -> Vec<Queued> + Send + 'static,
    {
        let d = self.clone();
        self.store
            .write_then(f, move |r| match r {
                Ok((out, runs)) => {
                    counted(&out);
                    d.enqueue(runs);
                    Ok(out)
                }
                Err(e) => {
                    d.enqueue(if_refused());
                    Err(e)
                }
            })
            .await
    }

    /// Adds runs to the queue and wakes eligible waiting nodes. Every write
    /// that makes runs pending queues them here once it commits, so this is
    /// where a chained slot is counted as created (the scheduler and manual
    /// triggers count their own).
    pub fn enqueue(&self, runs: Vec<Queued>) {
        if runs.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let mut wake: Vec<Arc<Notify>> = Vec::new();
        let mut woken: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut chained = 0;
        for mut q in runs {
            if q.new_chain_slot {
                chained += 1;
                q.new_chain_slot = false;
            }
            // Wake an eligible waiter even for a run that is not ready yet
            // (retry backoff): it re-arms its sleep to the run's ready time.
            // Each run wakes a different node where it can, to spread work.
            let target = if !q.slot_node.is_empty() {
                inner
                    .waiters
                    .get(&q.slot_node)
                    .map(|w| (q.slot_node.clone(), w))
            } else {
                inner
                    .waiters
                    .iter()
                    .filter(|(id, w)| {
                        !woken.contains(*id)
                            && !inner.suspect.contains_key(*id)
                            && w.node.eligible(&q.target, q.executor_kind, &q.slot_node)
                    })
                    .map(|(id, w)| (id.clone(), w))
                    .next()
            };
            if let Some((id, w)) = target {
                if woken.insert(id) {
                    wake.push(w.notify.clone());
                }
            }
            inner.queue.insert((q.ready_at, q.run_id), q);
        }
        self.metrics.dispatch_queue.set(inner.queue.len() as i64);
        drop(inner);
        if chained > 0 {
            self.metrics
                .slots_created
                .with_label_values(&[Trigger::Chain.as_str()])
                .inc_by(chained);
        }
        for n in wake {
            n.notify_one();
        }
    }

    /// Gives the queued runs of each job in `placements` its target and
    /// executor kind as they are now, and wakes waiting nodes that may take
    /// them: a run queued under a job's old target would otherwise wait
    /// for a node that target named. A broadcast run keeps its node (its
    /// slot was fanned out when it fired) but takes the new executor kind.
    pub fn retarget(&self, placements: Vec<lifecycle::Placement>) {
        if placements.is_empty() {
            return;
        }
        let by_job: HashMap<i64, lifecycle::Placement> =
            placements.into_iter().map(|p| (p.job_pk, p)).collect();
        let mut inner = self.lock();
        // What moved: the jobs with runs for any node, and the broadcast
        // runs' nodes, so each waiter is judged once per job, not per run.
        let mut any_node: std::collections::HashSet<i64> = Default::default();
        let mut bound: HashMap<String, Vec<i64>> = HashMap::new();
        for q in inner.queue.values_mut() {
            if let Some(p) = by_job.get(&q.job_pk) {
                q.target = p.target.clone();
                q.executor_kind = p.executor_kind;
                if q.slot_node.is_empty() {
                    any_node.insert(q.job_pk);
                } else {
                    let pks = bound.entry(q.slot_node.clone()).or_default();
                    if !pks.contains(&q.job_pk) {
                        pks.push(q.job_pk);
                    }
                }
            }
        }
        let wake: Vec<Arc<Notify>> = inner
            .waiters
            .values()
            .filter(|w| {
                let may = |pk: &i64, slot_node: &str| {
                    let p = &by_job[pk];
                    w.node.eligible(&p.target, p.executor_kind, slot_node)
                };
                any_node.iter().any(|pk| may(pk, ""))
                    || bound
                        .get(&w.node.id)
                        .is_some_and(|pks| pks.iter().any(|pk| may(pk, &w.node.id)))
            })
            .map(|w| w.notify.clone())
            .collect();
        drop(inner);
        for n in wake {
            n.notify_one();
        }
    }

    /// Marks `nodes` (that let a lease expire at `at`) suspect: their
    /// long-polls opened before get no run and return at once, and none is
    /// woken for a run meanwhile. A poll opened later clears the mark.
    fn mark_suspect(&self, nodes: Vec<String>, at: i64) {
        if nodes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let mut wake = Vec::new();
        for node in nodes {
            if let Some(w) = inner.waiters.remove(&node) {
                wake.push(w.notify);
            }
            tracing::warn!(node = %node, "node let a lease expire: no runs for its open polls until it polls again");
            inner.suspect.insert(node, at);
        }
        drop(inner);
        for n in wake {
            n.notify_one();
        }
    }

    /// Whether `node` let a lease expire since `since` (a poll's start).
    fn suspect_since(&self, node: &str, since: i64) -> bool {
        self.lock().suspect.get(node).is_some_and(|&at| at >= since)
    }

    /// A poll opened at `at` proves `node` is there: a mark from before it
    /// is cleared.
    fn heard_from(&self, node: &str, at: i64) {
        let mut inner = self.lock();
        if inner.suspect.get(node).is_some_and(|&mark| mark < at) {
            inner.suspect.remove(node);
        }
    }

    /// Drops runs that ended while queued (cancelled, or their broadcast
    /// node is gone): a run only `node` may take would otherwise stay in
    /// the queue, and in the oldest wait, until that node polled again.
    pub fn forget(&self, run_ids: &[i64]) {
        if run_ids.is_empty() {
            return;
        }
        let ids: std::collections::HashSet<i64> = run_ids.iter().copied().collect();
        let mut inner = self.lock();
        inner.queue.retain(|(_, id), _| !ids.contains(id));
        self.metrics.dispatch_queue.set(inner.queue.len() as i64);
    }

    /// Checks the queue's head against the database: of the runs ready
    /// for longer than [`HEAD_CHECK_AFTER_MS`] (at most
    /// [`HEAD_CHECK_MAX`], longest-waiting first), those no longer pending
    /// — their job was deleted, or they ended meanwhile — are dropped. Such
    /// an entry waits for a node that may never poll (a broadcast run's, or
    /// one whose target no live node matches) and would hold the oldest
    /// wait up for good. Returns how many were dropped.
    pub async fn drop_ended_at_head(&self, now: i64) -> Result<usize, StoreError> {
        let keys: Vec<(i64, i64)> = self
            .lock()
            .queue
            .keys()
            .take_while(|(ready_at, _)| now - ready_at > HEAD_CHECK_AFTER_MS)
            .take(HEAD_CHECK_MAX)
            .copied()
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = keys.iter().map(|k| k.1).collect();
        let pending = self
            .store
            .read(move |c| runs::pending_among(c, &ids))
            .await?;
        let mut inner = self.lock();
        let mut dropped = 0;
        // By exact key: a run queued again meanwhile (a retry, a put-back
        // claim) has a new ready time and stays.
        for key in keys.iter().filter(|k| !pending.contains(&k.1)) {
            dropped += usize::from(inner.queue.remove(key).is_some());
        }
        self.metrics.dispatch_queue.set(inner.queue.len() as i64);
        Ok(dropped)
    }

    /// Removes runs that `node` may take now — at most `max`, and at most
    /// its fair share of what is claimable when other nodes are waiting too
    /// (the rest wakes them) — and returns them with the instant something
    /// more becomes claimable (to bound the wait). `me` is the calling poll's
    /// waiter registration, if it has one.
    ///
    /// The share is what is claimable plus what the polls still in progress
    /// claimed before, divided by those polls: every poll of a round gets
    /// the same. (Dividing only what was left gave the first of ten 100 of
    /// 1,000, the next 90 of 900, …, and a third of the second to whoever
    /// polled again first.)
    fn claim(
        &self,
        node: &NodeInfo,
        max: usize,
        now: i64,
        me: Option<&Arc<Notify>>,
        opened: i64,
    ) -> Claim<'_> {
        let mut inner = self.lock();
        if inner.suspect.get(&node.id).is_some_and(|&at| at >= opened) {
            // Its lease expired after this poll opened: nothing for it.
            return Claim {
                runs: Vec::new(),
                next: None,
                serving: None,
            };
        }
        let waiting = self
            .polling
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(inner.waiters.len())
            .max(1);
        let (mut keys, next) = claimable(&inner, node, now, max.saturating_mul(waiting));
        let share = (keys.len() + inner.in_flight)
            .div_ceil(waiting)
            .clamp(1, max.max(1));
        let left = keys.len().saturating_sub(share);
        keys.truncate(share);
        let claimed: Vec<Queued> = keys.iter().filter_map(|k| inner.queue.remove(k)).collect();
        self.metrics.dispatch_queue.set(inner.queue.len() as i64);
        let serving = if claimed.is_empty() {
            None
        } else {
            // Served: no longer among the waiters the rest is shared by.
            if let Some(me) = me {
                if inner
                    .waiters
                    .get(&node.id)
                    .is_some_and(|w| Arc::ptr_eq(&w.notify, me))
                {
                    inner.waiters.remove(&node.id);
                }
            }
            inner.in_flight += claimed.len();
            Some(Serving(self, claimed.len()))
        };
        // Wake as many other waiters as the rest needs (each takes a share).
        let wake: Vec<Arc<Notify>> = if left > 0 {
            inner
                .waiters
                .iter()
                .filter(|(id, _)| **id != node.id && !inner.suspect.contains_key(*id))
                .take(left.div_ceil(share))
                .map(|(_, w)| w.notify.clone())
                .collect()
        } else {
            Vec::new()
        };
        drop(inner);
        for n in wake {
            n.notify_one();
        }
        Claim {
            runs: claimed,
            next,
            serving,
        }
    }
}

/// Up to `limit` queue keys `node` may take at `now` (due within
/// [`DISPATCH_AHEAD_MS`], or due already for a run held to its time), and
/// the instant the next run not claimable now becomes claimable.
fn claimable(
    inner: &Inner,
    node: &NodeInfo,
    now: i64,
    limit: usize,
) -> (Vec<(i64, i64)>, Option<i64>) {
    let horizon = now + DISPATCH_AHEAD_MS;
    let mut keys = Vec::new();
    let mut next: Option<i64> = None;
    let sooner = |next: &mut Option<i64>, t: i64| *next = Some(next.map_or(t, |n| n.min(t)));
    for (key, q) in inner.queue.iter() {
        if key.0 > horizon {
            // Beyond the lookahead: claimable when it enters it, or at its
            // own time if held. Nothing later can be sooner than that.
            if next.is_some_and(|n| n <= key.0 - DISPATCH_AHEAD_MS) {
                break;
            }
            let at = if q.on_time_only {
                key.0
            } else {
                key.0 - DISPATCH_AHEAD_MS
            };
            sooner(&mut next, at);
            continue;
        }
        if !node.eligible(&q.target, q.executor_kind, &q.slot_node) {
            continue;
        }
        if q.on_time_only && key.0 > now {
            sooner(&mut next, key.0);
            continue;
        }
        keys.push(*key);
        if keys.len() >= limit {
            // Enough; `next` only matters to a caller that got nothing.
            break;
        }
    }
    (keys, next)
}

/// Removes a long-poll's waiter when the poll ends for any reason — including
/// the client going away mid-poll, which drops the handler's future.
struct WaiterGuard<'a> {
    dispatcher: &'a Dispatcher,
    node: String,
    notify: Arc<Notify>,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.dispatcher
            .polling
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut inner = self.dispatcher.lock();
        if inner
            .waiters
            .get(&self.node)
            .is_some_and(|w| Arc::ptr_eq(&w.notify, &self.notify))
        {
            inner.waiters.remove(&self.node);
        }
    }
}

impl Dispatcher {
    /// Whether `node`'s credential (its generation) is still the one the
    /// registry holds, unrevoked.
    fn credential_holds(&self, node: &NodeInfo) -> bool {
        self.registry
            .get(&node.id)
            .is_some_and(|n| !n.revoked && n.generation == node.generation)
    }

    /// Long-poll: returns as soon as runs are assigned to `node`, or empty
    /// after `wait` — or at once once `node`'s credential no longer holds
    /// (revoked, or the node joined again): a poll opened before gets no
    /// run, and so no job's secrets. The assignment checks the credential
    /// in its own transaction too, so a revocation that commits after the
    /// check still wins.
    pub async fn poll(
        self: &Arc<Self>,
        node: Arc<NodeInfo>,
        max: usize,
        wait: Duration,
        ack: Option<u64>,
    ) -> Result<(Vec<Assignment>, u64), StoreError> {
        let opened = now_ms();
        self.heard_from(&node.id, opened);
        let receipt = self.receipts.issue();
        let unread = self.receipts.settle(&node.id, ack, receipt);
        if !unread.is_empty() {
            self.hand_back_unread(&node.id, unread).await?;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let notify = Arc::new(Notify::new());
        self.polling
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _guard = WaiterGuard {
            dispatcher: self,
            node: node.id.clone(),
            notify: notify.clone(),
        };
        let term = self.current_term();
        loop {
            if term.is_cancelled() {
                return Err(StoreError::NotPrimary);
            }
            if !self.credential_holds(&node) || self.suspect_since(&node.id, opened) {
                return Ok((Vec::new(), receipt));
            }
            let now = now_ms();
            // `_serving` lives until this iteration ends: the poll returns
            // what it claimed, or goes back to waiting.
            let Claim {
                runs: claimed,
                next: next_ready,
                serving: _serving,
            } = self.claim(&node, max.max(1), now, Some(&notify), opened);
            if !claimed.is_empty() {
                let lease = self.lease_ms;
                let node_id = node.id.clone();
                let generation = node.generation;
                // Shared with the write, and put back if it fails: a claimed
                // run is either assigned in the database or queued again,
                // whether or not this poll is still there to see it.
                let claimed = Arc::new(claimed);
                let for_write = claimed.clone();
                let put_back = move || {
                    // The write is over (refused): this is the last owner.
                    Arc::try_unwrap(claimed).unwrap_or_else(|a| (*a).clone())
                };
                let metrics = self.metrics.clone();
                let receipts = self.receipts.clone();
                let reader = node.id.clone();
                // Measured once the assignment is committed (what the node
                // is about to receive), not when the claim began, and
                // counted even if this poll is gone by then; so is the
                // batch, until the node confirms reading it.
                let counted = move |r: &Option<lifecycle::Assigned>| {
                    let Some(r) = r else { return };
                    let assigned = now_ms();
                    let handed = r.runs.iter().map(|a| (a.run_id, a.attempt)).collect();
                    receipts.record(&reader, receipt, ack, handed, assigned);
                    for a in &r.runs {
                        let late = (assigned - a.scheduled_for).max(0) as f64 / 1000.0;
                        metrics.start_lateness_seconds.observe(late);
                    }
                    metrics.runs_dispatched.inc_by(r.runs.len() as u64);
                };
                let result = self
                    .commit_then_queue(
                        move |c| {
                            if !nodes::holds_credential(c, &node_id, generation)? {
                                // Revoked or joined again: the claim goes back.
                                return Ok((None, for_write.to_vec()));
                            }
                            let mut r =
                                lifecycle::assign(c, &node_id, &for_write, now, lease, receipt)?;
                            let later = std::mem::take(&mut r.later);
                            Ok((Some(r), later))
                        },
                        counted,
                        put_back,
                    )
                    .await?;
                let Some(mut result) = result else {
                    return Ok((Vec::new(), receipt));
                };
                if !result.runs.is_empty() {
                    // The delay counts from the claim; the write took some of it.
                    let spent = (now_ms() - now).max(0) as u64;
                    for a in &mut result.runs {
                        a.start_in_ms = a.start_in_ms.saturating_sub(spent);
                    }
                    return Ok((result.runs, receipt));
                }
                continue;
            }
            // Register, then look once more so a run queued in between is not missed.
            {
                let mut inner = self.lock();
                inner.waiters.insert(
                    node.id.clone(),
                    Waiter {
                        node: node.clone(),
                        notify: notify.clone(),
                    },
                );
            }
            let has_work = {
                let inner = self.lock();
                !claimable(&inner, &node, now_ms(), 1).0.is_empty()
            };
            if !has_work {
                let until = match next_ready {
                    Some(t) => {
                        let in_ms = (t - now_ms()).max(0) as u64;
                        deadline.min(tokio::time::Instant::now() + Duration::from_millis(in_ms))
                    }
                    None => deadline,
                };
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep_until(until) => {}
                    _ = self.stopping.cancelled() => {}
                    _ = term.cancelled() => {}
                }
            }
            if tokio::time::Instant::now() >= deadline || self.stopping.is_cancelled() {
                return Ok((Vec::new(), receipt));
            }
        }
    }

    /// A receipt that names no batch: what a registering daemon acknowledges
    /// in its first poll.
    pub fn issue_receipt(&self) -> u64 {
        self.receipts.issue()
    }

    /// Hands back the batches `node` never read (see [`crate::receipts`]);
    /// if that does not commit they are kept for its next poll.
    async fn hand_back_unread(
        self: &Arc<Self>,
        node: &str,
        unread: Vec<Batch>,
    ) -> Result<(), StoreError> {
        let attempts: Vec<(i64, u32)> =
            unread.iter().flat_map(|b| b.runs.iter().copied()).collect();
        let now = now_ms();
        let reader = node.to_owned();
        let metrics = self.metrics.clone();
        let written = self
            .write_then_queue_counted(
                move |c| {
                    let (requeue, handed) =
                        lifecycle::hand_back_unread(c, &reader, &attempts, now)?;
                    Ok((handed, requeue))
                },
                move |handed: &usize| metrics.runs_unread_handed_back.inc_by(*handed as u64),
            )
            .await;
        match written {
            Ok(handed) => {
                if handed > 0 {
                    tracing::warn!(
                        node,
                        handed_back = handed,
                        "a poll response never reached its node; its runs are handed back"
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.receipts.restore(node, unread);
                Err(e)
            }
        }
    }

    /// Expires overdue leases once and queues the retries; then drops
    /// ended runs from the queue's head.
    pub async fn reap_once(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let (requeue, nodes) = self
            .store
            .write(move |c| lifecycle::expire_leases(c, now))
            .await?;
        let expired = nodes.len();
        if expired > 0 {
            self.metrics.lease_expiries.inc_by(expired as u64);
            tracing::warn!(expired, retried = requeue.len(), "leases expired");
        }
        // Before the retries are queued: none may go to a poll the silent
        // node left parked.
        self.mark_suspect(nodes, now);
        self.enqueue(requeue);
        let dropped = self.drop_ended_at_head(now).await?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                "queued runs that had ended or were deleted dropped"
            );
        }
        Ok(expired)
    }

    /// Background duties, until the term ends: lease expiry (every
    /// [`REAP_EVERY`]; sooner after a failure) and last-seen
    /// flushes. A failed pass is reported to [`Loops`] and retried after a
    /// backoff; neither duty ever stops while the term lasts.
    pub async fn run_background(self: Arc<Self>, shutdown: CancellationToken) {
        let mut reap_backoff = loops::retry_backoff();
        let mut flush_backoff = loops::retry_backoff();
        let mut next_reap = tokio::time::Instant::now() + REAP_EVERY;
        let mut next_flush = tokio::time::Instant::now() + FLUSH_SEEN_EVERY;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next_reap) => {
                    self.loops.begin(Loop::LeaseReaper);
                    let wait = match self.reap_once().await {
                        Ok(_) => {
                            reap_backoff.reset();
                            self.loops.ok(Loop::LeaseReaper);
                            REAP_EVERY
                        }
                        Err(e) => {
                            let d = reap_backoff.next_delay().min(REAP_EVERY);
                            self.loops.failed(Loop::LeaseReaper, &e, d);
                            d
                        }
                    };
                    next_reap = tokio::time::Instant::now() + wait;
                }
                _ = tokio::time::sleep_until(next_flush) => {
                    self.loops.begin(Loop::SeenFlush);
                    let wait = match self.flush_seen().await {
                        Ok(()) => {
                            flush_backoff.reset();
                            self.loops.ok(Loop::SeenFlush);
                            FLUSH_SEEN_EVERY
                        }
                        Err(e) => {
                            let d = flush_backoff.next_delay();
                            self.loops.failed(Loop::SeenFlush, &e, d);
                            d
                        }
                    };
                    next_flush = tokio::time::Instant::now() + wait;
                }
            }
        }
        if let Err(e) = self.flush_seen().await {
            tracing::warn!(error = %e, "writing node last-seen times at the end of the term");
        }
    }

    /// Writes the in-memory last-seen times; on failure they are kept for
    /// the next try.
    async fn flush_seen(&self) -> Result<(), StoreError> {
        let seen = self.registry.take_dirty();
        if seen.is_empty() {
            return Ok(());
        }
        let copy = seen.clone();
        let result = self.store.write(move |c| nodes::touch_many(c, &seen)).await;
        if result.is_err() {
            self.registry.restore_dirty(copy);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::prepared::Prepared;
    use crate::store::test_support::{hold_writer, one_slot, slot_job, temp_store};
    use futures_util::FutureExt;
    use sundial_proto::{ExecutorKind, JobSpec, Target};

    /// A dispatcher whose nodes `n1` and `n2` have joined (generation 1).
    fn dispatcher() -> (tempfile::TempDir, Dispatcher) {
        let (dir, store) = temp_store();
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::default();
        let conn = Connection::open(dir.path().join(crate::store::DB_FILE)).unwrap();
        for id in ["n1", "n2"] {
            assert_eq!(nodes::join(&conn, id, 0).unwrap(), 1);
            registry.put((*node(id)).clone());
        }
        let d = Dispatcher::new(
            Arc::new(store),
            metrics.clone(),
            Arc::new(registry),
            Arc::new(Loops::new(metrics)),
            30_000,
            CancellationToken::new(),
        );
        (dir, d)
    }

    /// [`dispatcher`], shared, in a term as primary.
    fn in_term() -> (tempfile::TempDir, Arc<Dispatcher>) {
        let (dir, d) = dispatcher();
        let d = Arc::new(d);
        d.start_term(CancellationToken::new(), 1);
        (dir, d)
    }

    fn node(id: &str) -> Arc<NodeInfo> {
        Arc::new(NodeInfo {
            id: id.into(),
            generation: 1,
            revoked: false,
            labels: Default::default(),
            executors: vec![ExecutorKind::Exec],
            capacity: 1_000,
            last_seen: 0,
        })
    }

    fn queued(run_id: i64, ready_at: i64, on_time_only: bool) -> Queued {
        Queued {
            run_id,
            job_pk: 1,
            slot_node: String::new(),
            ready_at,
            target: Arc::new(Target::default()),
            executor_kind: ExecutorKind::Exec,
            on_time_only,
            new_chain_slot: false,
        }
    }

    /// A long-poll of `n` in progress and registered as waiting, as
    /// `poll` leaves it; returns its registration.
    fn wait(d: &Dispatcher, n: &Arc<NodeInfo>) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        d.polling.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        d.lock().waiters.insert(
            n.id.clone(),
            Waiter {
                node: n.clone(),
                notify: notify.clone(),
            },
        );
        notify
    }

    /// `nodes` long-polls registered as waiting, then `runs` runs due at 1,000.
    fn waiting_round(
        d: &Dispatcher,
        nodes: usize,
        runs: i64,
    ) -> (Vec<Arc<NodeInfo>>, Vec<Arc<Notify>>) {
        let nodes: Vec<_> = (0..nodes).map(|i| node(&format!("n{i}"))).collect();
        let me: Vec<_> = nodes.iter().map(|n| wait(d, n)).collect();
        d.enqueue((1..=runs).map(|i| queued(i, 1_000, false)).collect());
        (nodes, me)
    }

    /// Every poll claims before any has written its claim and returned, as
    /// when a due second wakes them all at once.
    fn claim_each<'a>(
        d: &'a Dispatcher,
        nodes: &[Arc<NodeInfo>],
        me: &[Arc<Notify>],
    ) -> Vec<Claim<'a>> {
        nodes
            .iter()
            .zip(me)
            .map(|(n, me)| d.claim(n, 1_000, 1_000, Some(me), 0))
            .collect()
    }

    /// Claims as a poll does, without a waiter registration.
    fn take(d: &Dispatcher, n: &NodeInfo, max: usize, now: i64) -> (Vec<Queued>, Option<i64>) {
        let c = d.claim(n, max, now, None, 0);
        (c.runs, c.next)
    }

    #[test]
    fn queued_runs_follow_their_jobs_new_target_and_wake_who_may_take_them() {
        use futures_util::FutureExt;
        let (_dir, d) = dispatcher();
        let elsewhere = Arc::new(Target {
            nodes: vec!["gone".into()],
            ..Target::default()
        });
        let of_job = |run_id, job_pk| Queued {
            job_pk,
            target: elsewhere.clone(),
            ..queued(run_id, 1_000, false)
        };
        d.enqueue(vec![of_job(1, 1), of_job(2, 2), of_job(3, 1)]);
        let n1 = node("n1");
        let notify = wait(&d, &n1);
        assert!(
            take(&d, &n1, 10, 1_000).0.is_empty(),
            "the old target names another node"
        );
        // Job 1 now runs anywhere (and job 3, with nothing queued, too).
        let anywhere = |job_pk| lifecycle::Placement {
            job_pk,
            target: Arc::new(Target::default()),
            executor_kind: ExecutorKind::Exec,
        };
        d.retarget(vec![anywhere(1), anywhere(3)]);
        assert!(notify.notified().now_or_never().is_some(), "n1 is woken");
        let ids: Vec<i64> = take(&d, &n1, 10, 1_000)
            .0
            .iter()
            .map(|q| q.run_id)
            .collect();
        assert_eq!(ids, [1, 3], "job 2's run keeps its target");
        // An executor kind the node lacks keeps the run from it.
        d.retarget(vec![lifecycle::Placement {
            executor_kind: ExecutorKind::Http,
            ..anywhere(2)
        }]);
        assert!(
            notify.notified().now_or_never().is_none(),
            "n1 runs no http job"
        );
        assert!(take(&d, &n1, 10, 1_000).0.is_empty());
    }

    #[test]
    fn a_node_that_let_a_lease_expire_gets_nothing_until_it_polls_again() {
        use futures_util::FutureExt;
        let (_dir, d) = dispatcher();
        let (frozen, idle) = (node("frozen"), node("idle"));
        // Both polls opened at 100; "frozen" stops answering, its lease
        // expires at 200.
        let parked = wait(&d, &frozen);
        let other = wait(&d, &idle);
        d.mark_suspect(vec!["frozen".into()], 200);
        assert!(
            parked.notified().now_or_never().is_some(),
            "its parked poll returns"
        );
        assert!(d.suspect_since("frozen", 100));
        // The retry wakes the idle node, and the parked poll cannot take it.
        d.enqueue(vec![queued(1, 1_000, false)]);
        assert!(
            other.notified().now_or_never().is_some(),
            "the idle node is woken"
        );
        let parked_claim = d.claim(&frozen, 10, 1_000, None, 100);
        assert!(parked_claim.runs.is_empty());
        drop(parked_claim);
        // A poll it opens after the expiry proves it is back.
        d.heard_from("frozen", 300);
        assert!(!d.suspect_since("frozen", 300));
        let ids: Vec<i64> = d
            .claim(&frozen, 10, 1_000, None, 300)
            .runs
            .iter()
            .map(|q| q.run_id)
            .collect();
        assert_eq!(ids, [1]);
    }

    #[test]
    fn the_oldest_wait_counts_from_the_longest_ready_run_only() {
        let (_dir, d) = dispatcher();
        assert_eq!(
            d.oldest_wait_ms(5_000),
            0,
            "an empty queue waits for nothing"
        );
        // One run due in the future (a later slot, a retry's backoff), one
        // ready since 1,000 and one since 3,000.
        d.enqueue(vec![
            queued(1, 9_000, false),
            queued(2, 3_000, false),
            queued(3, 1_000, false),
        ]);
        assert_eq!(d.oldest_wait_ms(5_000), 4_000);
        assert_eq!(d.oldest_wait_ms(500), 0, "nothing is ready yet");
        // Once the oldest is taken, the next one's wait counts.
        let (runs, _) = take(&d, &node("n1"), 1, 5_000);
        assert_eq!(runs.iter().map(|q| q.run_id).collect::<Vec<_>>(), [3]);
        assert_eq!(d.oldest_wait_ms(5_000), 2_000);
        d.end_term();
        assert_eq!(
            d.oldest_wait_ms(5_000),
            0,
            "a server out of its term holds no queue"
        );
    }

    /// Waits (bounded) until a queued run passes `is`.
    async fn queued_where(d: &Dispatcher, is: impl Fn(&Queued) -> bool) -> Option<i64> {
        for _ in 0..200 {
            if let Some(q) = d.lock().queue.values().find(|q| is(q)) {
                return Some(q.run_id);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Waits (bounded) until run `id` is in the queue.
    async fn queued_again(d: &Dispatcher, id: i64) -> bool {
        queued_where(d, |q| q.run_id == id).await.is_some()
    }

    async fn run_state(d: &Dispatcher, id: i64) -> String {
        d.store
            .read(move |c| {
                Ok(c.query_row("SELECT state FROM runs WHERE id = ?1", [id], |r| r.get(0))?)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_poll_dropped_while_its_claim_is_written_still_queues_what_the_write_left() {
        let (_dir, d) = dispatcher();
        let d = Arc::new(d);
        let spec: JobSpec = serde_json::from_str(
            r#"{"schedule":"@hourly","concurrency":"forbid","retries":{"max":3},
                "executor":{"type":"exec","argv":["true"]}}"#,
        )
        .unwrap();
        // Under forbid, a retry (run 1's attempt 2) waits while run 2 is
        // active: claiming it writes nothing to the run and leaves it to
        // be queued again, a second later.
        let retry = d
            .store
            .write(move |c| {
                let job = slot_job(c, "f", &spec);
                let first = one_slot(c, &job, 1_000);
                lifecycle::assign(c, "n1", std::slice::from_ref(&first), 1_000, 30_000, 0)?;
                let (mut retries, _) = lifecycle::expire_leases(c, 40_000)?;
                let second = one_slot(c, &job, 41_000);
                lifecycle::assign(c, "n1", std::slice::from_ref(&second), 41_000, 30_000, 0)?;
                Ok(retries.pop().expect("a retry"))
            })
            .await
            .unwrap();
        let id = retry.run_id;
        d.start_term(CancellationToken::new(), 1);
        d.enqueue(vec![Queued {
            ready_at: 0,
            ..retry
        }]);
        // The node's poll claims it, starts the write, and its client goes
        // away before the answer: the handler's future is dropped.
        let release = hold_writer(&d.store);
        let poll = d.poll(node("n2"), 10, Duration::from_secs(5), None);
        assert!(poll.now_or_never().is_none());
        assert!(d.lock().queue.is_empty(), "claimed");
        drop(release);
        assert!(queued_again(&d, id).await, "the held retry is queued again");
        assert_eq!(run_state(&d, id).await, "pending");
    }

    /// One slot of a job with no retries, queued and due now.
    async fn queue_one_slot(d: &Arc<Dispatcher>, job: &'static str) -> i64 {
        let spec: JobSpec = serde_json::from_str(
            r#"{"schedule":"@hourly","executor":{"type":"exec","argv":["true"]}}"#,
        )
        .unwrap();
        let q = d
            .store
            .write(move |c| {
                let job = slot_job(c, job, &spec);
                Ok(one_slot(c, &job, 1_000))
            })
            .await
            .unwrap();
        let id = q.run_id;
        d.enqueue(vec![q]);
        id
    }

    #[tokio::test]
    async fn runs_that_ended_or_were_deleted_while_queued_leave_the_queue() {
        let (_dir, d) = in_term();
        // Queued at 1 s: a run of a job since deleted, one cancelled, one
        // still pending, and the same cancelled run queued again later.
        let deleted = queue_one_slot(&d, "deleted").await;
        let cancelled = queue_one_slot(&d, "cancelled").await;
        let pending = queue_one_slot(&d, "pending").await;
        d.enqueue(vec![Queued {
            ready_at: 50_000,
            ..queued(cancelled, 0, false)
        }]);
        d.store
            .write(move |c| {
                crate::store::jobs::delete(c, "deleted", 2_000)?;
                lifecycle::cancel(c, cancelled, 2_000)?;
                Ok(())
            })
            .await
            .unwrap();
        let queued_ids =
            |d: &Dispatcher| -> Vec<(i64, i64)> { d.lock().queue.keys().copied().collect() };
        // Not yet ready for long enough: nothing is checked.
        assert_eq!(d.drop_ended_at_head(11_000).await.unwrap(), 0);
        assert_eq!(d.oldest_wait_ms(11_000), 10_000);
        // Past it, the ended ones go from the head; the later copy is past
        // the head (not ready for 10 s) and stays.
        assert_eq!(d.drop_ended_at_head(11_001).await.unwrap(), 2);
        assert_eq!(queued_ids(&d), [(1_000, pending), (50_000, cancelled)]);
        assert!(!queued_ids(&d).iter().any(|k| k.1 == deleted));
        assert_eq!(d.oldest_wait_ms(11_001), 10_001, "the pending run's wait");
        // `forget` drops a run by id, wherever it waits.
        d.forget(&[cancelled]);
        assert_eq!(queued_ids(&d), [(1_000, pending)]);
    }

    /// A poll opened before its node was revoked, or joined again, gets no
    /// run (nor its job's secrets); the run waits for a node that may.
    #[tokio::test]
    async fn a_poll_of_a_credential_that_no_longer_holds_gets_no_run() {
        let (_dir, d) = in_term();
        let long = Duration::from_secs(5);
        for (id, gone) in [("n1", "revoked"), ("n2", "joined again")] {
            let open = tokio::spawn({
                let d = d.clone();
                async move { d.poll(node(id), 10, long, None).await }
            });
            // The poll waits; then its credential stops holding.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let who = id.to_string();
            d.store
                .write(move |c| {
                    if gone == "revoked" {
                        nodes::revoke(c, &who, 1)?;
                    } else {
                        nodes::join(c, &who, 1)?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
            d.registry.update(id, |n| {
                n.revoked = gone == "revoked";
                n.generation += 1;
            });
            let run = queue_one_slot(&d, if id == "n1" { "a" } else { "b" }).await;
            let (runs, _) = tokio::time::timeout(Duration::from_secs(2), open)
                .await
                .expect("the poll ended at once")
                .unwrap()
                .unwrap();
            assert!(runs.is_empty(), "{gone}: {runs:?}");
            assert_eq!(run_state(&d, run).await, "pending", "{gone}");
            assert!(queued_again(&d, run).await, "{gone}: still queued");
            d.forget(&[run]); // not for the next poll
        }
        // Joined again in the database, not yet in the registry (between the
        // check and the write): the write refuses the claim.
        let run = queue_one_slot(&d, "c").await;
        d.store
            .write(|c| nodes::join(c, "n2", 2).map(|_| ()))
            .await
            .unwrap();
        let n2 = d.registry.get("n2").unwrap();
        assert_eq!(n2.generation, 2, "the registry's, the poll's");
        let (runs, _) = d
            .poll(n2, 10, Duration::from_millis(50), None)
            .await
            .unwrap();
        assert!(runs.is_empty(), "{runs:?}");
        assert_eq!(run_state(&d, run).await, "pending");
    }

    async fn attempt_and_error(d: &Dispatcher, id: i64) -> (String, u32, Option<String>) {
        d.store
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT state, attempt, error FROM runs WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn runs_whose_poll_response_never_arrived_are_handed_back_at_the_next_poll() {
        let (_dir, d) = in_term();
        let n1 = node("n1");
        let short = Duration::from_millis(10);
        // The daemon's first poll: nothing to do; it reads the receipt.
        let (none, read) = d.poll(n1.clone(), 10, short, None).await.unwrap();
        assert!(none.is_empty());
        // Its next poll is given a run, and the response is lost.
        let id = queue_one_slot(&d, "lost").await;
        let (runs, _lost) = d.poll(n1.clone(), 10, short, Some(read)).await.unwrap();
        assert_eq!((runs[0].run_id, runs[0].attempt), (id, 1));
        // It polls again having read nothing since: the run comes back at
        // once as attempt 2, retry budget or not (the job has none), and
        // this poll takes it.
        let (runs, again) = d.poll(n1.clone(), 10, short, Some(read)).await.unwrap();
        assert_eq!((runs[0].run_id, runs[0].attempt), (id, 2));
        assert_eq!(d.metrics.runs_unread_handed_back.get(), 1);
        let (state, attempt, error) = attempt_and_error(&d, id).await;
        assert_eq!((state.as_str(), attempt), ("running", 2));
        assert!(error.unwrap_or_default().contains("never received"));
        // This time it read the response: nothing is handed back.
        let (runs, _) = d.poll(n1.clone(), 10, short, Some(again)).await.unwrap();
        assert!(runs.is_empty());
        assert_eq!(d.metrics.runs_unread_handed_back.get(), 1);
        assert_eq!(attempt_and_error(&d, id).await.1, 2);
    }

    #[tokio::test]
    async fn a_run_whose_assignment_committed_after_its_poll_was_given_up_is_handed_back() {
        let (_dir, d) = in_term();
        let short = Duration::from_millis(10);
        let (_, read) = d.poll(node("n1"), 10, short, None).await.unwrap();
        let id = queue_one_slot(&d, "late").await;
        // The poll claims the run, its write waits for a busy writer, and
        // the daemon gives up on it (the handler's future is dropped).
        let release = hold_writer(&d.store);
        let given_up = d.poll(node("n1"), 10, Duration::from_secs(5), Some(read));
        assert!(given_up.now_or_never().is_none());
        // It polls again with the same ack; the write commits meanwhile.
        let again = d.poll(node("n1"), 10, Duration::from_millis(300), Some(read));
        tokio::pin!(again);
        assert!((&mut again).now_or_never().is_none(), "registered, waiting");
        drop(release);
        let (runs, next) = again.await.unwrap();
        assert!(runs.is_empty(), "the run was claimed by the poll given up");
        assert_eq!(attempt_and_error(&d, id).await.1, 1);
        // The answer of the second poll was read: the first one's was not.
        let (runs, _) = d.poll(node("n1"), 10, short, Some(next)).await.unwrap();
        assert_eq!((runs[0].run_id, runs[0].attempt), (id, 2));
        assert_eq!(d.metrics.runs_unread_handed_back.get(), 1);
    }

    #[tokio::test]
    async fn a_run_the_node_read_or_one_given_to_a_poll_without_ack_is_left_to_its_lease() {
        let (_dir, d) = in_term();
        let short = Duration::from_millis(10);
        // A poll without ack (a daemon without receipts) whose response is
        // lost: a new process cannot be told apart, so only the lease
        // brings it back.
        let first = queue_one_slot(&d, "first").await;
        let (runs, _) = d.poll(node("n1"), 10, short, None).await.unwrap();
        assert_eq!(runs.len(), 1);
        let (_, read_next) = d.poll(node("n1"), 10, short, None).await.unwrap();
        // A run the node read (its receipt comes back as the ack).
        let kept = queue_one_slot(&d, "kept").await;
        let (runs, got) = d
            .poll(node("n1"), 10, short, Some(read_next))
            .await
            .unwrap();
        assert_eq!(runs[0].run_id, kept);
        let (runs, _) = d.poll(node("n1"), 10, short, Some(got)).await.unwrap();
        assert!(runs.is_empty());
        assert_eq!(d.metrics.runs_unread_handed_back.get(), 0);
        assert_eq!(attempt_and_error(&d, first).await.1, 1);
        assert_eq!(attempt_and_error(&d, kept).await.1, 1);
    }

    #[tokio::test]
    async fn a_chained_slot_is_counted_once_when_the_write_creating_it_commits() {
        let (_dir, d) = dispatcher();
        let d = Arc::new(d);
        let spec = |after: &str| -> JobSpec {
            serde_json::from_str(&format!(
                r#"{{"schedule":"@yearly","executor":{{"type":"exec","argv":["true"]}},"after":{after}}}"#
            ))
            .unwrap()
        };
        let (a, b) = (spec("[]"), spec(r#"[{"job": "a"}]"#));
        let run = d
            .store
            .write(move |c| {
                let job = slot_job(c, "a", &a);
                slot_job(c, "b", &b);
                let q = one_slot(c, &job, 1_000);
                lifecycle::assign(c, "n1", std::slice::from_ref(&q), 1_000, 30_000, 0)?;
                Ok(q.run_id)
            })
            .await
            .unwrap();
        let chain = || d.metrics.slots_created.with_label_values(&["chain"]).get();
        // a's result, recorded as the agent handlers record it: b's slot is
        // created in the same write and queued once it commits.
        let release = hold_writer(&d.store);
        let write = d.write_then_queue_counted(
            move |c| {
                let done = crate::store::test_support::result_of(
                    sundial_proto::agent::Outcome::Succeeded,
                    1,
                );
                match lifecycle::complete(&mut Prepared::new(c), "n1", run, &done, 2_000)? {
                    Ok(lifecycle::Completion::Recorded { requeue, .. }) => Ok(((), requeue)),
                    other => panic!("{other:?}"),
                }
            },
            |_| {},
        );
        // The caller is gone before the commit; the count is not lost.
        assert!(write.now_or_never().is_none());
        assert_eq!(chain(), 0, "nothing counted before the commit");
        drop(release);
        let id = queued_where(&d, |_| true)
            .await
            .expect("b's slot is queued");
        assert_eq!(chain(), 1);
        // Claimed and put back (as a refused assignment does): not counted again.
        let (claimed, _) = take(&d, &node("n1"), 10, 3_000);
        assert_eq!(
            claimed.iter().map(|q| q.run_id).collect::<Vec<_>>(),
            vec![id]
        );
        d.enqueue(claimed);
        assert_eq!(chain(), 1);
    }

    #[tokio::test]
    async fn a_write_whose_caller_is_gone_still_queues_its_runs() {
        let (_dir, d) = dispatcher();
        let d = Arc::new(d);
        let spec: JobSpec = serde_json::from_str(
            r#"{"schedule":"@hourly","executor":{"type":"exec","argv":["true"]}}"#,
        )
        .unwrap();
        // As `POST /v1/jobs/{id}/trigger` does, from a client that hangs up.
        let release = hold_writer(&d.store);
        let write = d.write_then_queue(move |c| {
            let job = slot_job(c, "t", &spec);
            let q = one_slot(c, &job, 1_000);
            Ok((q.run_id, vec![q]))
        });
        assert!(write.now_or_never().is_none());
        drop(release);
        let id = queued_where(&d, |_| true)
            .await
            .expect("the created run is queued");
        assert_eq!(run_state(&d, id).await, "pending");
    }

    #[test]
    fn runs_due_within_the_lookahead_are_claimable_early_unless_held() {
        let (_dir, d) = dispatcher();
        let n = node("n1");
        d.enqueue(vec![
            queued(1, 1_000, false),
            queued(2, 1_050, true),
            queued(3, 1_000 + DISPATCH_AHEAD_MS + 1, false),
        ]);
        let (got, next) = take(&d, &n, 10, 1_000 - DISPATCH_AHEAD_MS + 10);
        assert_eq!(got.iter().map(|q| q.run_id).collect::<Vec<_>>(), vec![1]);
        // The held run becomes claimable at its own time (1,050), before
        // run 3 enters the lookahead (1,001).
        assert_eq!(next, Some(1_001));
        let (got, _) = take(&d, &n, 10, 1_050);
        assert_eq!(got.iter().map(|q| q.run_id).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn a_node_takes_its_fair_share_when_others_wait() {
        let (_dir, d) = dispatcher();
        let (nodes, me) = waiting_round(&d, 4, 10);
        let claims = claim_each(&d, &nodes, &me);
        let got: Vec<usize> = claims.iter().map(|c| c.runs.len()).collect();
        // 10 runs, 4 waiting nodes: a share of 3 each, the last gets what
        // is left — nobody takes all.
        assert_eq!(got, vec![3, 3, 3, 1]);
        // A served poll is no longer a waiter, and stops counting as served
        // when it returns.
        assert!(d.lock().waiters.is_empty());
        assert_eq!(d.lock().in_flight, 10);
        drop(claims);
        assert_eq!(d.lock().in_flight, 0);
        // Alone, a node takes everything it has room for.
        let (_dir2, solo) = dispatcher();
        solo.enqueue((1..=10).map(|i| queued(i, 1_000, false)).collect());
        assert_eq!(take(&solo, &nodes[0], 1_000, 1_000).0.len(), 10);
        assert_eq!(take(&solo, &nodes[0], 1_000, 1_000).0.len(), 0);
    }

    #[test]
    fn a_due_second_is_split_evenly_among_ten_waiting_nodes() {
        let (_dir, d) = dispatcher();
        let (nodes, me) = waiting_round(&d, 10, 1_000);
        let claims = claim_each(&d, &nodes, &me);
        let got: Vec<usize> = claims.iter().map(|c| c.runs.len()).collect();
        // Was 100, 90, 81, 73, …, 39: each took a tenth of what was left,
        // and whoever polled again first took the remaining 349.
        assert_eq!(got, vec![100; 10]);
        assert!(d.lock().queue.is_empty());
    }

    #[test]
    fn a_node_that_polls_again_first_takes_a_share_not_the_rest() {
        let (_dir, d) = dispatcher();
        let (nodes, me) = waiting_round(&d, 10, 1_000);
        let mut held = claim_each(&d, &nodes[..5], &me[..5]);
        let mut got: Vec<usize> = held.iter().map(|c| c.runs.len()).collect();
        got.resize(10, 0);
        // n0's poll returns and it polls again before n5..n9 have claimed.
        drop(held.remove(0));
        d.polling.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let again = wait(&d, &nodes[0]);
        let c = d.claim(&nodes[0], 1_000, 1_000, Some(&again), 0);
        got[0] += c.runs.len();
        held.push(c);
        for (i, c) in (5..).zip(claim_each(&d, &nodes[5..], &me[5..])) {
            got[i] += c.runs.len();
            held.push(c);
        }
        assert_eq!(got.iter().sum::<usize>(), 1_000, "{got:?}");
        // Mean 100: the early one gets one more share, nobody reaches 2×.
        assert!(got.iter().all(|&g| g <= 190), "{got:?}");
        assert!(got[5..].iter().all(|&g| g >= 50), "{got:?}");
    }
}

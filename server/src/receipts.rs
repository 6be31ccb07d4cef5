//! Poll receipts: which assignments a node has not yet confirmed reading.
//!
//! A poll's assignment is committed before its response is sent. If the
//! response is lost on the way (the connection drops, a proxy times out, the
//! handler is gone by the time the writer commits), the node never starts
//! those runs and, without this, they wait for their lease to expire, then
//! retry or end `lost` by the job's retry budget, though nothing ran.
//!
//! Every poll response carries a `receipt`; the daemon sends the receipt of
//! the last response it read as `ack` in its next poll. Registration
//! answers with a receipt too, which a daemon's first poll acknowledges. A
//! process has one poll in flight at a time and reads at most one response
//! per ack, so its acks form a chain (each poll's ack names the response
//! read before it). A batch given to a poll sent with ack `a` is unread
//! once a poll arrives that was sent with that same `a` (the process read
//! nothing since), or once the process is seen to have read another
//! response to a poll sent with `a` (a later poll's chain passes through
//! it): it moved on without this one. That second case catches a batch
//! whose write committed only after the daemon had given up on its poll
//! and polled again. Such a batch is handed back at once.
//!
//! A batch given to a poll with no ack (a daemon without receipts) is never
//! handed back: its reader cannot be told apart from a new process, so it
//! keeps the lease as its only way back. So do batches of other processes
//! that use the same node id (their acks are on other chains). Batches are
//! kept in memory only; after a restart or failover the lease covers what
//! was in flight.
//!
//! Receipts count up from a random start drawn at each term (below 2^52,
//! so they stay exact as JSON numbers anywhere): an ack a daemon read from
//! another server or an earlier term matches nothing here, short of a
//! chance of about one in 2^52 / (polls per term).

use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// One attempt handed to a node: `(run_id, attempt)`.
pub(crate) type Handed = (i64, u32);

/// A committed batch the node has not confirmed reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    receipt: u64,
    /// The `ack` its poll was sent with.
    parent: Option<u64>,
    issued_at: i64,
    pub(crate) runs: Vec<Handed>,
}

/// Polls of one node remembered to follow its chain of acks.
const POLLS_KEPT: usize = 8;

/// What is known of one node's recent polls and unread batches.
#[derive(Default)]
struct NodeState {
    batches: Vec<Batch>,
    /// `(receipt, ack it was sent with)` of its latest polls, oldest first.
    polls: VecDeque<(u64, Option<u64>)>,
}

impl NodeState {
    /// The ack the poll given `receipt` was sent with, if remembered.
    fn parent_of(&self, receipt: u64) -> Option<u64> {
        self.polls
            .iter()
            .find(|(r, _)| *r == receipt)
            .and_then(|(_, parent)| *parent)
    }
}

/// Receipts issued by this server process and the batches not yet read.
pub(crate) struct Receipts {
    next: AtomicU64,
    /// Per node id (an entry per node that ever polled this term).
    nodes: Mutex<HashMap<String, NodeState>>,
    /// A batch older than this is dropped: its lease has ended by then.
    keep_ms: i64,
}

/// A random start for a term's receipts, leaving 2^40 of room below 2^52.
fn random_start() -> u64 {
    rand::rng().random_range(0..(1u64 << 52) - (1u64 << 40))
}

impl Receipts {
    pub(crate) fn new(keep_ms: i64) -> Receipts {
        Receipts {
            next: AtomicU64::new(random_start()),
            nodes: Mutex::new(HashMap::new()),
            keep_ms,
        }
    }

    /// A new term as primary: receipts from a new random start, and no
    /// batch of an earlier term (the lease covers those).
    pub(crate) fn new_term(&self) {
        self.next.store(random_start(), Ordering::Relaxed);
        self.lock().clear();
    }

    /// A fresh receipt for a poll starting now.
    pub(crate) fn issue(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeState>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's entry; its key is allocated once per node.
    fn node<'a>(nodes: &'a mut HashMap<String, NodeState>, node: &str) -> &'a mut NodeState {
        if !nodes.contains_key(node) {
            nodes.insert(node.to_owned(), NodeState::default());
        }
        nodes.get_mut(node).expect("inserted above")
    }

    /// Notes a committed batch for `node` under `receipt`, given to a poll
    /// that was sent with `parent` as its ack.
    pub(crate) fn record(
        &self,
        node: &str,
        receipt: u64,
        parent: Option<u64>,
        runs: Vec<Handed>,
        now: i64,
    ) {
        if runs.is_empty() {
            return;
        }
        let mut nodes = self.lock();
        let state = Self::node(&mut nodes, node);
        state.batches.retain(|b| now - b.issued_at <= self.keep_ms);
        state.batches.push(Batch {
            receipt,
            parent,
            issued_at: now,
            runs,
        });
    }

    /// A poll given `receipt` arrived from `node` with `ack`. The node has
    /// read `ack`, and through it the chain of responses before it (each
    /// poll's ack names the response read before). A batch on that chain is
    /// confirmed and forgotten. A batch given to a poll sent with the same
    /// ack as a poll on the chain, but not on it, was never read: that
    /// process moved on without it. It is taken out to be handed back;
    /// this also catches a batch whose write committed only after the node
    /// had given up on its poll and polled again.
    pub(crate) fn settle(&self, node: &str, ack: Option<u64>, receipt: u64) -> Vec<Batch> {
        let mut nodes = self.lock();
        let state = Self::node(&mut nodes, node);
        if state.polls.len() == POLLS_KEPT {
            state.polls.pop_front();
        }
        state.polls.push_back((receipt, ack));
        let Some(ack) = ack else {
            return Vec::new();
        };
        if state.batches.is_empty() {
            return Vec::new();
        }
        // The chain read, newest first, and the acks its polls were sent
        // with; this poll itself heads it (its siblings sent earlier with
        // the same ack were not read).
        let mut chain = vec![receipt];
        let mut sent_with = vec![ack];
        let mut at = ack;
        while chain.len() <= POLLS_KEPT {
            chain.push(at);
            match state.parent_of(at) {
                Some(parent) => {
                    sent_with.push(parent);
                    at = parent;
                }
                None => break,
            }
        }
        let mut lost = Vec::new();
        let mut i = 0;
        while i < state.batches.len() {
            let b = &state.batches[i];
            if chain.contains(&b.receipt) {
                state.batches.swap_remove(i);
            } else if b.receipt < receipt && b.parent.is_some_and(|p| sent_with.contains(&p)) {
                lost.push(state.batches.swap_remove(i));
            } else {
                i += 1;
            }
        }
        lost
    }

    /// Puts back batches whose hand-back did not commit (the next poll
    /// with the same ack tries again).
    pub(crate) fn restore(&self, node: &str, batches: Vec<Batch>) {
        if batches.is_empty() {
            return;
        }
        let mut nodes = self.lock();
        Self::node(&mut nodes, node).batches.extend(batches);
    }

    #[cfg(test)]
    fn unread_len(&self, node: &str) -> usize {
        self.lock().get(node).map(|s| s.batches.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipts() -> Receipts {
        Receipts::new(60_000)
    }

    #[test]
    fn a_read_batch_is_confirmed_by_the_next_poll() {
        let r = receipts();
        let first = r.issue();
        let second = r.issue();
        r.record("n1", second, Some(first), vec![(7, 1)], 1_000);
        let third = r.issue();
        assert!(r.settle("n1", Some(second), third).is_empty());
        assert_eq!(r.unread_len("n1"), 0, "confirmed and forgotten");
    }

    #[test]
    fn a_batch_whose_response_was_lost_is_taken_out_by_the_same_ack() {
        let r = receipts();
        let first = r.issue();
        let lost_poll = r.issue();
        r.record("n1", lost_poll, Some(first), vec![(7, 1), (8, 2)], 1_000);
        // The node read nothing since `first`: it polls again with it.
        let again = r.issue();
        let lost = r.settle("n1", Some(first), again);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].runs, vec![(7, 1), (8, 2)]);
        assert_eq!(r.unread_len("n1"), 0);
        // Once taken out, it is not handed back twice.
        assert!(r.settle("n1", Some(first), r.issue()).is_empty());
    }

    #[test]
    fn a_batch_committed_after_its_node_gave_up_on_the_poll_is_taken_later() {
        let r = receipts();
        let ack = r.issue();
        // Poll 1 waits on a slow writer; the daemon times out and polls
        // again (poll 2) with the same ack before poll 1's batch commits.
        let p1 = r.issue();
        assert!(r.settle("n1", Some(ack), p1).is_empty());
        let p2 = r.issue();
        assert!(r.settle("n1", Some(ack), p2).is_empty());
        r.record("n1", p1, Some(ack), vec![(5, 1)], 1_000);
        // Poll 2's answer is read: poll 1's batch, sent with the same ack
        // as poll 2, was not.
        let p3 = r.issue();
        let lost = r.settle("n1", Some(p2), p3);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].runs, vec![(5, 1)]);
        assert_eq!(r.unread_len("n1"), 0);
    }

    #[test]
    fn a_late_batch_is_found_further_down_the_chain() {
        let r = receipts();
        let ack = r.issue();
        let lost_poll = r.issue();
        assert!(r.settle("n1", Some(ack), lost_poll).is_empty());
        let p2 = r.issue();
        assert!(r.settle("n1", Some(ack), p2).is_empty());
        let p3 = r.issue();
        assert!(r.settle("n1", Some(p2), p3).is_empty());
        // The lost poll's batch commits only now, two reads later.
        r.record("n1", lost_poll, Some(ack), vec![(6, 1)], 1_000);
        let p4 = r.issue();
        assert_eq!(r.settle("n1", Some(p3), p4).len(), 1);
    }

    #[test]
    fn a_batch_given_without_ack_or_to_another_process_is_left_to_the_lease() {
        let r = receipts();
        // A poll without ack (a daemon without receipts) whose response
        // was lost.
        let p1 = r.issue();
        r.record("n1", p1, None, vec![(1, 1)], 1_000);
        assert!(r.settle("n1", None, r.issue()).is_empty());
        // Another process using the same node id, on its own chain.
        let other_ack = r.issue();
        let p2 = r.issue();
        r.record("n1", p2, Some(other_ack), vec![(2, 1)], 1_000);
        let mine = r.issue();
        assert!(r.settle("n1", Some(mine), r.issue()).is_empty());
        assert_eq!(r.unread_len("n1"), 2, "both wait for their lease");
    }

    #[test]
    fn a_batch_committed_after_the_poll_that_settles_is_not_taken() {
        let r = receipts();
        let ack = r.issue();
        let now = r.issue();
        let later = r.issue();
        // A batch with a receipt above the settling poll's: not before it.
        r.record("n1", later, Some(ack), vec![(3, 1)], 1_000);
        assert!(r.settle("n1", Some(ack), now).is_empty());
        assert_eq!(r.unread_len("n1"), 1);
    }

    #[test]
    fn old_batches_are_dropped_and_nodes_do_not_mix() {
        let r = receipts();
        let ack = r.issue();
        let old = r.issue();
        r.record("n1", old, Some(ack), vec![(1, 1)], 1_000);
        r.record("n2", r.issue(), Some(ack), vec![(2, 1)], 1_000);
        // A batch recorded past the keep time drops the old one.
        r.record("n1", r.issue(), None, vec![(3, 1)], 1_000 + 60_001);
        assert!(r.settle("n1", Some(ack), r.issue()).is_empty());
        assert_eq!(r.settle("n2", Some(ack), r.issue()).len(), 1);
    }

    #[test]
    fn a_new_term_forgets_every_batch_and_draws_new_receipts() {
        let r = receipts();
        let ack = r.issue();
        r.record("n1", r.issue(), Some(ack), vec![(1, 1)], 1_000);
        r.new_term();
        assert!(r.settle("n1", Some(ack), r.issue()).is_empty());
        let next = r.issue();
        assert!(next < 1 << 52, "exact as a JSON number: {next}");
    }

    #[test]
    fn a_batch_whose_hand_back_failed_is_found_again() {
        let r = receipts();
        let ack = r.issue();
        r.record("n1", r.issue(), Some(ack), vec![(1, 1)], 1_000);
        let lost = r.settle("n1", Some(ack), r.issue());
        r.restore("n1", lost);
        assert_eq!(r.settle("n1", Some(ack), r.issue()).len(), 1);
    }
}

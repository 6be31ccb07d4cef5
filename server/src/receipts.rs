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
//! that use the same node id (their acks are on other chains).
//!
//! **Across terms.** The chains are kept in memory, but each running
//! attempt keeps the receipt it was handed out with (`runs.receipt`). A
//! receipt holds its term's epoch in its top bits (below 2^52, so receipts
//! stay exact as JSON numbers anywhere), and within a term they count up
//! from a random start, so one process's polls carry rising receipts.
//! When a server becomes primary it loads the running attempts of earlier
//! terms (`carry`). A node's first poll of the term still acknowledges the
//! last answer it read from an earlier term, `a`; an attempt handed out
//! after that (a higher receipt of `a`'s term, or any receipt of a later
//! term) was never read, as the process polls one at a time and would
//! have acknowledged it: it is handed back at once rather than waiting
//! for its lease. An attempt handed out before `a` was read, or belongs
//! to a process that is gone (a restarted daemon registers, and its first
//! poll acknowledges this term's registration receipt): it keeps its
//! lease. Either way a node's carried attempts are looked at once, at its
//! first poll of the term.

use crate::store::lifecycle::HandedOut;
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

/// A receipt's low bits count polls; the bits above hold the term.
const COUNTER_BITS: u32 = 41;
/// Terms are told apart modulo this (the epoch's low 11 bits).
const TERMS: u64 = 1 << (52 - COUNTER_BITS);

/// The term (epoch modulo [`TERMS`]) a receipt was issued in.
fn term_of(receipt: u64) -> u64 {
    (receipt >> COUNTER_BITS) % TERMS
}

/// Whether term `b` came after term `a` (modulo [`TERMS`], within half of
/// it: terms whose attempts are still running are a few apart at most).
fn later_term(a: u64, b: u64) -> bool {
    let d = b.wrapping_sub(a) % TERMS;
    d != 0 && d < TERMS / 2
}

/// What is known of one node's recent polls and unread batches.
#[derive(Default)]
struct NodeState {
    batches: Vec<Batch>,
    /// `(receipt, ack it was sent with)` of its latest polls, oldest first.
    polls: VecDeque<(u64, Option<u64>)>,
    /// Running attempts an earlier term handed out, with their receipts,
    /// until the node's first poll of this term looks at them.
    carried: Vec<(u64, Handed)>,
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
    /// The current term, as its receipts carry it.
    term: AtomicU64,
    /// Per node id (an entry per node that ever polled this term).
    nodes: Mutex<HashMap<String, NodeState>>,
    /// A batch older than this is dropped: its lease has ended by then.
    keep_ms: i64,
}

/// The first receipt of term `term`: the term in the top bits, a random
/// count below 2^40 (leaving 2^40 polls of room before the next term's).
fn term_start(term: u64) -> u64 {
    (term % TERMS) << COUNTER_BITS | rand::rng().random_range(0..1u64 << 40)
}

impl Receipts {
    pub(crate) fn new(keep_ms: i64) -> Receipts {
        Receipts {
            next: AtomicU64::new(term_start(0)),
            term: AtomicU64::new(0),
            nodes: Mutex::new(HashMap::new()),
            keep_ms,
        }
    }

    /// A new term as primary at `epoch`: receipts that carry it, and no
    /// batch of an earlier term (see [`Self::carry`] for those).
    pub(crate) fn new_term(&self, epoch: i64) {
        let term = epoch.unsigned_abs() % TERMS;
        self.term.store(term, Ordering::Relaxed);
        self.next.store(term_start(term), Ordering::Relaxed);
        self.lock().clear();
    }

    fn current_term(&self) -> u64 {
        self.term.load(Ordering::Relaxed)
    }

    /// Running attempts earlier terms handed out (loaded at promotion),
    /// each looked at when its node first polls this term. Attempts
    /// handed out in this term are left out: their chains are in memory.
    pub(crate) fn carry(&self, handed: Vec<HandedOut>) {
        let term = self.current_term();
        let mut nodes = self.lock();
        for h in handed {
            if term_of(h.receipt) != term {
                Self::node(&mut nodes, &h.node)
                    .carried
                    .push((h.receipt, (h.run_id, h.attempt)));
            }
        }
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
    /// had given up on its poll and polled again. The node's attempts
    /// carried from an earlier term are looked at here, once, and those it
    /// never read are taken out too ([`unread_carried`]).
    pub(crate) fn settle(&self, node: &str, ack: Option<u64>, receipt: u64) -> Vec<Batch> {
        let mut nodes = self.lock();
        let state = Self::node(&mut nodes, node);
        if state.polls.len() == POLLS_KEPT {
            state.polls.pop_front();
        }
        state.polls.push_back((receipt, ack));
        let carried = std::mem::take(&mut state.carried);
        let Some(ack) = ack else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        if !carried.is_empty() && term_of(ack) != self.current_term() {
            lost = unread_carried(ack, carried);
        }
        if state.batches.is_empty() {
            return lost;
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
    /// with the same ack tries again); those of an earlier term go back
    /// among the node's carried attempts.
    pub(crate) fn restore(&self, node: &str, batches: Vec<Batch>) {
        if batches.is_empty() {
            return;
        }
        let term = self.current_term();
        let mut nodes = self.lock();
        let state = Self::node(&mut nodes, node);
        for b in batches {
            if term_of(b.receipt) == term {
                state.batches.push(b);
            } else {
                state
                    .carried
                    .extend(b.runs.iter().map(|&handed| (b.receipt, handed)));
            }
        }
    }

    #[cfg(test)]
    fn unread_len(&self, node: &str) -> usize {
        self.lock().get(node).map(|s| s.batches.len()).unwrap_or(0)
    }
}

/// Of the attempts earlier terms handed out, those handed out after `ack`
/// (the last answer the node read, from an earlier term) were never read;
/// one batch per receipt. The rest are left to their lease.
fn unread_carried(ack: u64, carried: Vec<(u64, Handed)>) -> Vec<Batch> {
    let read_term = term_of(ack);
    let mut by_receipt: Vec<Batch> = Vec::new();
    for (receipt, handed) in carried {
        let term = term_of(receipt);
        let unread = later_term(read_term, term) || (term == read_term && receipt > ack);
        if !unread {
            continue;
        }
        match by_receipt.iter_mut().find(|b| b.receipt == receipt) {
            Some(b) => b.runs.push(handed),
            None => by_receipt.push(Batch {
                receipt,
                parent: None,
                issued_at: 0,
                runs: vec![handed],
            }),
        }
    }
    by_receipt
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
        r.new_term(2);
        assert!(r.settle("n1", Some(ack), r.issue()).is_empty());
        let next = r.issue();
        assert!(next < 1 << 52, "exact as a JSON number: {next}");
    }

    fn handed(node: &str, receipt: u64, run_id: i64) -> HandedOut {
        HandedOut {
            node: node.into(),
            run_id,
            attempt: 1,
            receipt,
        }
    }

    /// Term 5 gave a node an answer it read, then one it never read; term
    /// 6 has begun.
    fn after_a_failover() -> (Receipts, u64, u64) {
        let r = receipts();
        r.new_term(5);
        let read = r.issue();
        let lost = r.issue();
        r.new_term(6);
        (r, read, lost)
    }

    #[test]
    fn attempts_handed_out_after_the_last_read_of_an_earlier_term_are_handed_back() {
        let r = receipts();
        r.new_term(5);
        let before = r.issue();
        let read = r.issue();
        let lost = r.issue();
        // The old primary dies with `lost`'s answer on its way; the node
        // read `read` last, and had read `before` too.
        r.new_term(6);
        r.carry(vec![
            handed("n1", before, 1),
            handed("n1", lost, 2),
            handed("n1", lost, 3),
            handed("n2", lost, 4),
        ]);
        let out = r.settle("n1", Some(read), r.issue());
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].runs, vec![(2, 1), (3, 1)]);
        // Looked at once: the same ack again hands back nothing more.
        assert!(r.settle("n1", Some(read), r.issue()).is_empty());
        // Nodes do not mix: n2 read nothing after `before`.
        let out = r.settle("n2", Some(before), r.issue());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].runs, vec![(4, 1)]);
    }

    #[test]
    fn attempts_of_a_later_term_than_the_last_read_are_handed_back() {
        let r = receipts();
        r.new_term(5);
        let read = r.issue();
        // Term 6 gave the node a batch it never read, then died too.
        r.new_term(6);
        let lost = r.issue();
        r.new_term(7);
        r.carry(vec![handed("n1", lost, 9)]);
        let out = r.settle("n1", Some(read), r.issue());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].runs, vec![(9, 1)]);
        // An attempt of an earlier term than the last read: read, or of a
        // process gone; its lease decides.
        r.new_term(8);
        r.carry(vec![handed("n1", read, 10)]);
        assert!(r.settle("n1", Some(lost), r.issue()).is_empty());
    }

    #[test]
    fn a_node_that_registered_this_term_or_has_no_receipts_keeps_the_lease() {
        let (r, read, lost) = after_a_failover();
        r.carry(vec![handed("n1", lost, 1), handed("n2", lost, 2)]);
        // n1 restarted: its first poll acknowledges this term's registration.
        let registered = r.issue();
        assert!(r.settle("n1", Some(registered), r.issue()).is_empty());
        // ... and its carried attempts are gone, not kept for later.
        assert!(r.settle("n1", Some(read), r.issue()).is_empty());
        // n2 polls without receipts.
        assert!(r.settle("n2", None, r.issue()).is_empty());
        assert!(r.settle("n2", Some(read), r.issue()).is_empty());
    }

    #[test]
    fn attempts_of_this_term_are_not_carried() {
        let r = receipts();
        r.new_term(5);
        let read = r.issue();
        r.new_term(6);
        let mine = r.issue();
        r.carry(vec![handed("n1", mine, 1)]);
        assert!(r.settle("n1", Some(read), r.issue()).is_empty());
    }

    #[test]
    fn a_carried_attempt_whose_hand_back_failed_is_found_again() {
        let (r, read, lost) = after_a_failover();
        r.carry(vec![handed("n1", lost, 1)]);
        let out = r.settle("n1", Some(read), r.issue());
        assert_eq!(out.len(), 1);
        r.restore("n1", out);
        let again = r.settle("n1", Some(read), r.issue());
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].runs, vec![(1, 1)]);
    }

    #[test]
    fn terms_wrap_and_receipts_stay_below_2_pow_52() {
        assert!(later_term(5, 6));
        assert!(!later_term(6, 5));
        assert!(!later_term(6, 6));
        assert!(later_term(TERMS - 1, 0), "the epoch's low bits wrap");
        assert!(!later_term(0, TERMS - 1));
        let r = receipts();
        for epoch in [1, 2047, 2048, 2049, i64::MAX] {
            r.new_term(epoch);
            let receipt = r.issue();
            assert!(receipt < 1 << 52, "{epoch}: {receipt}");
            assert_eq!(term_of(receipt), epoch as u64 % TERMS);
        }
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

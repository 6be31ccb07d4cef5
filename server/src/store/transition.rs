//! The run state machine as a pure function: given a run's state and an
//! event, what happens next. [`super::lifecycle`] applies the answer to the
//! database (and the job's counters); nothing else decides a transition.
//!
//! ```text
//!   (slot created) ──► pending ──assign──► running ──complete(ok)──► succeeded
//!                        │  ▲                │ │ ──complete(fail/timeout, no retries left)──► failed / timed_out
//!                        │  └──retry/hand back──┘ │ ──lease expired, no retries left──► lost
//!                        │                        └──complete(cancelled) / cancel+end──► cancelled
//!                        ├──assign, forbid, another attempt running, 1st attempt──► skipped
//!                        ├──assign, replace, a newer run handed out with it──► cancelled
//!                        ├──its broadcast node down or revoked──► lost
//!                        └──cancel──► cancelled
//! ```

use sundial_proto::agent::Outcome;
use sundial_proto::{Concurrency, RunState};

/// What happened to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The dispatcher offers the run to a node.
    Assign {
        concurrency: Concurrency,
        /// Another attempt of the same job is running.
        other_running: bool,
        /// This is the slot's first attempt (not a retry).
        first_attempt: bool,
        /// A newer run of the same job, due now, is handed out with it
        /// (a backlog after an outage).
        superseded: bool,
    },
    /// The node running the attempt reports it is alive.
    Heartbeat,
    /// The node reports the attempt's outcome.
    Complete {
        outcome: Outcome,
        /// Retries remain under the job's policy.
        retries_left: bool,
        /// An operator (or `concurrency: replace`) asked the run to stop.
        cancel_requested: bool,
    },
    /// The attempt's lease ran out (the node went silent).
    LeaseExpired {
        retries_left: bool,
        cancel_requested: bool,
    },
    /// An operator cancels the run.
    Cancel,
    /// The node a broadcast slot's run belongs to is down or revoked.
    NodeGone,
}

/// When a retried attempt may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAt {
    /// After the job's retry backoff.
    Backoff,
    /// At once (a drained node handed it back; nothing failed).
    Now,
}

/// What the lifecycle does for an (state, event) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// pending → running on the offered node.
    Start,
    /// pending → running, and every running attempt of the job is asked to stop.
    StartReplacing,
    /// pending → skipped (`forbid` while another attempt runs).
    Skip,
    /// Stays pending; offered again a little later (a retry under `forbid`).
    Defer,
    /// Running: the lease is extended.
    Extend,
    /// running → pending as the next attempt.
    Retry(RetryAt),
    /// → a terminal state.
    Finish(RunState),
    /// Running: flag the run; the node hears it in its next heartbeat reply.
    RequestCancel,
    /// The run already ended in this state: a repeat, or too late.
    AlreadyFinished(RunState),
    /// The event does not apply to a run in this state (a stale call).
    Ignore,
}

/// The transition table.
pub fn next(state: RunState, event: Event) -> Step {
    use RunState as S;
    if state.is_terminal() {
        return Step::AlreadyFinished(state);
    }
    match (state, event) {
        (
            S::Pending,
            Event::Assign {
                concurrency,
                other_running,
                first_attempt,
                superseded,
            },
        ) => match concurrency {
            Concurrency::Allow => Step::Start,
            Concurrency::Forbid if !other_running => Step::Start,
            Concurrency::Forbid if first_attempt => Step::Skip,
            Concurrency::Forbid => Step::Defer,
            // The newer run would replace it at once: it never starts.
            Concurrency::Replace if superseded => Step::Finish(S::Cancelled),
            Concurrency::Replace if other_running => Step::StartReplacing,
            Concurrency::Replace => Step::Start,
        },
        (S::Pending, Event::Cancel) => Step::Finish(S::Cancelled),
        // No other node may take it: it will never start.
        (S::Pending, Event::NodeGone) => Step::Finish(S::Lost),
        (S::Pending, _) => Step::Ignore,
        (S::Running, Event::Heartbeat) => Step::Extend,
        (S::Running, Event::Cancel) => Step::RequestCancel,
        (
            S::Running,
            Event::Complete {
                outcome,
                retries_left,
                cancel_requested,
            },
        ) => {
            let may_retry = retries_left && !cancel_requested;
            match outcome {
                Outcome::Succeeded => Step::Finish(S::Succeeded),
                Outcome::Cancelled => Step::Finish(S::Cancelled),
                Outcome::Failed if may_retry => Step::Retry(RetryAt::Backoff),
                Outcome::Failed => Step::Finish(S::Failed),
                Outcome::TimedOut if may_retry => Step::Retry(RetryAt::Backoff),
                Outcome::TimedOut => Step::Finish(S::TimedOut),
                Outcome::HandedBack if cancel_requested => Step::Finish(S::Cancelled),
                Outcome::HandedBack => Step::Retry(RetryAt::Now),
            }
        }
        (
            S::Running,
            Event::LeaseExpired {
                retries_left,
                cancel_requested,
            },
        ) => {
            if cancel_requested {
                Step::Finish(S::Cancelled)
            } else if retries_left {
                Step::Retry(RetryAt::Backoff)
            } else {
                Step::Finish(S::Lost)
            }
        }
        (S::Running, Event::Assign { .. }) => Step::Ignore,
        // A started attempt is its lease's to end.
        (S::Running, Event::NodeGone) => Step::Ignore,
        // Terminal states returned above.
        (_, _) => Step::AlreadyFinished(state),
    }
}

/// How a finished run moves its job's counters: (succeeded, failed).
pub fn counts(state: RunState) -> (i64, i64) {
    match state {
        RunState::Succeeded => (1, 0),
        RunState::Failed | RunState::TimedOut | RunState::Lost => (0, 1),
        RunState::Cancelled | RunState::Skipped | RunState::Pending | RunState::Running => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Concurrency as C;
    use RunState as S;

    fn assign(concurrency: Concurrency, other_running: bool, first_attempt: bool) -> Event {
        Event::Assign {
            concurrency,
            other_running,
            first_attempt,
            superseded: false,
        }
    }

    /// [`assign`] with a newer run of the job handed out in the same batch.
    fn superseded(event: Event) -> Event {
        match event {
            Event::Assign {
                concurrency,
                other_running,
                first_attempt,
                ..
            } => Event::Assign {
                concurrency,
                other_running,
                first_attempt,
                superseded: true,
            },
            other => other,
        }
    }

    fn complete(outcome: Outcome, retries_left: bool, cancel_requested: bool) -> Event {
        Event::Complete {
            outcome,
            retries_left,
            cancel_requested,
        }
    }

    /// Every event variant with every flag combination.
    fn all_events() -> Vec<Event> {
        let mut v = vec![Event::Heartbeat, Event::Cancel, Event::NodeGone];
        for c in [C::Allow, C::Forbid, C::Replace] {
            for other in [false, true] {
                for first in [false, true] {
                    v.push(assign(c, other, first));
                    v.push(superseded(assign(c, other, first)));
                }
            }
        }
        for o in [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::Cancelled,
            Outcome::HandedBack,
        ] {
            for r in [false, true] {
                for x in [false, true] {
                    v.push(complete(o, r, x));
                }
            }
        }
        for r in [false, true] {
            for x in [false, true] {
                v.push(Event::LeaseExpired {
                    retries_left: r,
                    cancel_requested: x,
                });
            }
        }
        v
    }

    #[test]
    fn terminal_states_never_move() {
        for s in S::ALL.into_iter().filter(|s| s.is_terminal()) {
            for e in all_events() {
                assert_eq!(next(s, e), Step::AlreadyFinished(s), "{s:?} {e:?}");
            }
        }
    }

    #[test]
    fn pending_runs() {
        // Assignment under each concurrency policy.
        for other in [false, true] {
            for first in [false, true] {
                assert_eq!(
                    next(S::Pending, assign(C::Allow, other, first)),
                    Step::Start
                );
            }
        }
        assert_eq!(
            next(S::Pending, assign(C::Forbid, false, true)),
            Step::Start
        );
        assert_eq!(
            next(S::Pending, assign(C::Forbid, false, false)),
            Step::Start
        );
        assert_eq!(next(S::Pending, assign(C::Forbid, true, true)), Step::Skip);
        // A retry waits for the active attempt rather than being dropped.
        assert_eq!(
            next(S::Pending, assign(C::Forbid, true, false)),
            Step::Defer
        );
        assert_eq!(
            next(S::Pending, assign(C::Replace, true, true)),
            Step::StartReplacing
        );
        assert_eq!(
            next(S::Pending, assign(C::Replace, true, false)),
            Step::StartReplacing
        );
        assert_eq!(
            next(S::Pending, assign(C::Replace, false, true)),
            Step::Start
        );
        // A backlog handed out together: under `replace` only the newest
        // starts; the other policies judge each run as without it.
        for other in [false, true] {
            for first in [false, true] {
                assert_eq!(
                    next(S::Pending, superseded(assign(C::Replace, other, first))),
                    Step::Finish(S::Cancelled)
                );
                for c in [C::Allow, C::Forbid] {
                    assert_eq!(
                        next(S::Pending, superseded(assign(c, other, first))),
                        next(S::Pending, assign(c, other, first))
                    );
                }
            }
        }
        assert_eq!(next(S::Pending, Event::Cancel), Step::Finish(S::Cancelled));
        assert_eq!(next(S::Pending, Event::NodeGone), Step::Finish(S::Lost));
        // Calls about an attempt that is not running are stale.
        assert_eq!(next(S::Pending, Event::Heartbeat), Step::Ignore);
        for e in all_events() {
            if matches!(e, Event::Complete { .. } | Event::LeaseExpired { .. }) {
                assert_eq!(next(S::Pending, e), Step::Ignore, "{e:?}");
            }
        }
    }

    #[test]
    fn running_runs() {
        assert_eq!(next(S::Running, Event::Heartbeat), Step::Extend);
        assert_eq!(next(S::Running, Event::Cancel), Step::RequestCancel);
        assert_eq!(next(S::Running, Event::NodeGone), Step::Ignore);
        for e in all_events() {
            if matches!(e, Event::Assign { .. }) {
                assert_eq!(next(S::Running, e), Step::Ignore, "{e:?}");
            }
        }
        use Outcome as O;
        let table = [
            // (outcome, retries_left, cancel_requested) → step
            (O::Succeeded, false, false, Step::Finish(S::Succeeded)),
            (O::Succeeded, true, true, Step::Finish(S::Succeeded)),
            (O::Cancelled, true, false, Step::Finish(S::Cancelled)),
            (O::Cancelled, false, true, Step::Finish(S::Cancelled)),
            (O::Failed, true, false, Step::Retry(RetryAt::Backoff)),
            (O::Failed, false, false, Step::Finish(S::Failed)),
            (O::Failed, true, true, Step::Finish(S::Failed)),
            (O::TimedOut, true, false, Step::Retry(RetryAt::Backoff)),
            (O::TimedOut, false, false, Step::Finish(S::TimedOut)),
            (O::TimedOut, true, true, Step::Finish(S::TimedOut)),
            // Handed back by a draining daemon: requeued at once, whatever the budget…
            (O::HandedBack, false, false, Step::Retry(RetryAt::Now)),
            (O::HandedBack, true, false, Step::Retry(RetryAt::Now)),
            // …unless someone asked it to stop (an operator or `replace`).
            (O::HandedBack, true, true, Step::Finish(S::Cancelled)),
            (O::HandedBack, false, true, Step::Finish(S::Cancelled)),
        ];
        for (o, r, x, want) in table {
            assert_eq!(next(S::Running, complete(o, r, x)), want, "{o:?} {r} {x}");
        }
        let expire = |r, x| Event::LeaseExpired {
            retries_left: r,
            cancel_requested: x,
        };
        assert_eq!(
            next(S::Running, expire(true, false)),
            Step::Retry(RetryAt::Backoff)
        );
        assert_eq!(
            next(S::Running, expire(false, false)),
            Step::Finish(S::Lost)
        );
        assert_eq!(
            next(S::Running, expire(true, true)),
            Step::Finish(S::Cancelled)
        );
        assert_eq!(
            next(S::Running, expire(false, true)),
            Step::Finish(S::Cancelled)
        );
    }

    #[test]
    fn every_pair_has_an_answer_and_only_pending_or_running_move() {
        for s in S::ALL {
            for e in all_events() {
                let step = next(s, e);
                if let Step::Finish(t) = step {
                    assert!(t.is_terminal(), "{s:?} {e:?} → {t:?}");
                }
                if s.is_terminal() {
                    assert!(matches!(step, Step::AlreadyFinished(_)));
                }
            }
        }
    }

    #[test]
    fn counters_follow_the_outcome() {
        assert_eq!(counts(S::Succeeded), (1, 0));
        for s in [S::Failed, S::TimedOut, S::Lost] {
            assert_eq!(counts(s), (0, 1));
        }
        for s in [S::Cancelled, S::Skipped] {
            assert_eq!(counts(s), (0, 0));
        }
    }
}

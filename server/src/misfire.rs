//! Misfire planning: given a job's persisted `next_fire_at` and the current
//! time, decide which slots to create and where the job's next fire moves.
//!
//! A fire later than `grace` is a *misfire*. Fires within grace are on time and
//! always created. Misfires follow the job's policy: `skip` drops them,
//! `run_once` creates one slot (the most recent missed fire), `run_all` creates
//! each of them, the most recent `max_catch_up`. Pure code, no I/O.

use crate::schedule::Schedule;
use std::collections::VecDeque;
use sundial_proto::MisfirePolicy;
use sundial_proto::Trigger;

/// Longest walk over missed fires before jumping ahead (bounds work after a
/// long outage of a very frequent schedule).
const MAX_SCAN: usize = 100_000;

/// The outcome of planning one due job.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Slots to create, oldest first.
    pub slots: Vec<(i64, Trigger)>,
    /// Missed fires deliberately not created (policy or cap). Estimated
    /// when the walk jumped ahead (see [`MAX_SCAN`]).
    pub skipped: u64,
    /// The job's next fire after `now`, if any.
    pub next: Option<i64>,
}

/// Plans the slots of a job whose first unprocessed fire is `first` (≤ `now`).
pub fn plan(
    schedule: &Schedule,
    first: i64,
    now: i64,
    policy: MisfirePolicy,
    grace_ms: i64,
    max_catch_up: usize,
) -> Plan {
    let cutoff = now.saturating_sub(grace_ms);
    let mut plan = Plan::default();
    let mut missed: VecDeque<i64> = VecDeque::new();
    let mut fire = Some(first);
    let mut scanned = 0usize;
    let mut jumped = false;
    // Where the current stretch of the walk began (for its density).
    let mut from = first;
    while let Some(t) = fire {
        if t > now {
            break;
        }
        if t >= cutoff {
            plan.slots.push((t, Trigger::Schedule));
        } else {
            match policy {
                MisfirePolicy::Skip => plan.skipped += 1,
                MisfirePolicy::RunOnce => {
                    plan.skipped += missed.len() as u64;
                    missed.clear();
                    missed.push_back(t);
                }
                MisfirePolicy::RunAll => {
                    if missed.len() == max_catch_up.max(1) {
                        missed.pop_front();
                        plan.skipped += 1;
                    }
                    missed.push_back(t);
                }
            }
            scanned += 1;
            if scanned >= MAX_SCAN {
                // Jump ahead. The fires kept (the most recent missed ones)
                // lie just before the grace window: the walk goes on from
                // where, at the density seen so far, twice as many fires as
                // the policy keeps remain before it. Once more at the limit
                // (a very uneven schedule), straight into the window.
                let keep = match policy {
                    MisfirePolicy::Skip => 0,
                    MisfirePolicy::RunOnce => 1,
                    MisfirePolicy::RunAll => max_catch_up.max(1),
                } as i64;
                let every = ((t - from) / scanned as i64).max(1);
                let resume = cutoff.saturating_sub(every.saturating_mul(2 * keep));
                let resume = if jumped || resume <= t {
                    cutoff
                } else {
                    resume
                };
                jumped = true;
                scanned = 0;
                from = resume;
                // The fires jumped over, estimated at that density.
                plan.skipped += ((resume - t) / every).max(1) as u64;
                if resume > t && keep > 0 && resume < cutoff {
                    // What was kept so far is older than what comes next.
                    plan.skipped += missed.len() as u64;
                    missed.clear();
                }
                fire = schedule.next_after(resume.saturating_sub(1).max(t));
                continue;
            }
        }
        fire = schedule.next_after(t);
    }
    plan.next = fire;
    if !missed.is_empty() {
        let catch_up: Vec<(i64, Trigger)> =
            missed.into_iter().map(|t| (t, Trigger::CatchUp)).collect();
        plan.slots.splice(0..0, catch_up);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn every_second() -> Schedule {
        Schedule::parse("*/1 * * * * *", "UTC").unwrap()
    }

    #[test]
    fn on_time_fire_creates_one_slot() {
        let p = plan(
            &every_second(),
            100 * S,
            100 * S + 3,
            MisfirePolicy::Skip,
            30 * S,
            10,
        );
        assert_eq!(p.slots, vec![(100 * S, Trigger::Schedule)]);
        assert_eq!(p.next, Some(101 * S));
        assert_eq!(p.skipped, 0);
    }

    #[test]
    fn skip_drops_misfires_but_keeps_fires_within_grace() {
        // Down from 100s to 110.5s, grace 2s: fires 100..=108 are missed, 109 and 110 on time.
        let p = plan(
            &every_second(),
            100 * S,
            110 * S + 500,
            MisfirePolicy::Skip,
            2 * S,
            10,
        );
        assert_eq!(
            p.slots,
            vec![(109 * S, Trigger::Schedule), (110 * S, Trigger::Schedule)]
        );
        assert_eq!(p.skipped, 9);
        assert_eq!(p.next, Some(111 * S));
    }

    #[test]
    fn run_once_creates_the_latest_missed_fire() {
        let p = plan(
            &every_second(),
            100 * S,
            110 * S + 500,
            MisfirePolicy::RunOnce,
            2 * S,
            10,
        );
        assert_eq!(
            p.slots,
            vec![
                (108 * S, Trigger::CatchUp),
                (109 * S, Trigger::Schedule),
                (110 * S, Trigger::Schedule)
            ]
        );
        assert_eq!(p.skipped, 8);
    }

    #[test]
    fn run_all_keeps_the_most_recent_up_to_the_cap() {
        let p = plan(
            &every_second(),
            100 * S,
            110 * S + 500,
            MisfirePolicy::RunAll,
            2 * S,
            4,
        );
        let catch_up: Vec<i64> = p
            .slots
            .iter()
            .filter(|s| s.1 == Trigger::CatchUp)
            .map(|s| s.0 / S)
            .collect();
        assert_eq!(catch_up, vec![105, 106, 107, 108]);
        assert_eq!(p.skipped, 5);
        let uncapped = plan(
            &every_second(),
            100 * S,
            110 * S + 500,
            MisfirePolicy::RunAll,
            2 * S,
            100,
        );
        assert_eq!(uncapped.slots.len(), 11);
        assert_eq!(uncapped.skipped, 0);
    }

    #[test]
    fn long_outage_is_bounded() {
        // Ten days of a per-second schedule: the walk stops at MAX_SCAN and jumps.
        let first = 1_000 * S;
        let now = first + 10 * 86_400 * S;
        let p = plan(
            &every_second(),
            first,
            now,
            MisfirePolicy::RunOnce,
            1_500,
            10,
        );
        assert_eq!(p.next, Some(now + S));
        assert_eq!(p.slots.last(), Some(&(now, Trigger::Schedule)));
        assert!(p.slots.len() <= 3);
        // The catch-up slot is the most recent missed fire, not one from
        // where the walk stopped; the count of skipped fires is close.
        let cutoff = now - 1_500;
        let missed = (cutoff - first) / S; // fires first..cutoff
        assert_eq!(
            p.slots[0],
            (cutoff - 500, Trigger::CatchUp),
            "{:?}",
            p.slots
        );
        let off = (p.skipped as i64 - (missed - 1)).abs();
        assert!(off <= missed / 100, "skipped {} of {missed}", p.skipped);
        // run_all keeps the last `max_catch_up` missed fires, in order.
        let all = plan(
            &every_second(),
            first,
            now,
            MisfirePolicy::RunAll,
            1_500,
            10,
        );
        let catch_up: Vec<i64> = all
            .slots
            .iter()
            .filter(|s| s.1 == Trigger::CatchUp)
            .map(|s| s.0)
            .collect();
        let want: Vec<i64> = (0..10).rev().map(|i| cutoff - 500 - i * S).collect();
        assert_eq!(catch_up, want);
        // skip: straight to the window.
        let skip = plan(&every_second(), first, now, MisfirePolicy::Skip, 1_500, 10);
        assert!(skip.slots.iter().all(|s| s.1 == Trigger::Schedule));
        assert_eq!(skip.next, Some(now + S));
    }

    #[test]
    fn one_shot_schedule_ends() {
        let at = Schedule::parse("@at 2027-01-01T00:00:00Z", "UTC").unwrap();
        let t = 1_798_761_600_000;
        let p = plan(&at, t, t + 5, MisfirePolicy::RunOnce, 30 * S, 10);
        assert_eq!(p.slots, vec![(t, Trigger::Schedule)]);
        assert_eq!(p.next, None);
    }
}

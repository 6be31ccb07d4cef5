//! What a restart (or a restore) did to one job's slots, read from its runs:
//! the fires missed while the server was down, the catch-up slots it created
//! for them and the on-time slots after. Shared by the restart and the
//! disaster-recovery tests, which both check the misfire policies.

use crate::ms;
use serde_json::Value;
use std::collections::HashSet;

/// One job's slots around a restart at `restarted_at` (unix ms).
#[derive(Debug)]
pub struct Gap {
    /// Newest slot created before the restart.
    pub last_pre: i64,
    /// Oldest on-time slot created after it.
    pub first_on: i64,
    /// Every second strictly between them: the fires missed.
    pub missed: Vec<i64>,
    /// Catch-up slots created after the restart, oldest first.
    pub catch_up: Vec<i64>,
    /// On-time slots created after the restart, oldest first.
    pub on_time: Vec<i64>,
}

impl Gap {
    /// Reads the gap from the runs of an every-second job. Panics (a test
    /// failure) when a slot exists twice, is off the second, or a side of the
    /// restart has no slot.
    pub fn of(job: &str, runs: &[Value], restarted_at: i64) -> Gap {
        let scheduled: Vec<&Value> = runs.iter().filter(|r| r["trigger"] != "manual").collect();
        let times: Vec<i64> = scheduled.iter().map(|r| ms(r, "scheduled_for")).collect();
        let unique: HashSet<i64> = times.iter().copied().collect();
        assert_eq!(unique.len(), times.len(), "{job}: a slot exists twice");
        assert!(
            times.iter().all(|t| t % 1000 == 0),
            "{job}: slot off the second"
        );
        let last_pre = scheduled
            .iter()
            .filter(|r| ms(r, "created_at") < restarted_at)
            .map(|r| ms(r, "scheduled_for"))
            .max()
            .unwrap_or_else(|| panic!("{job}: no slot before the restart"));
        let post: Vec<&&Value> = scheduled
            .iter()
            .filter(|r| ms(r, "created_at") >= restarted_at)
            .collect();
        let sorted = |trigger: &str| {
            let mut v: Vec<i64> = post
                .iter()
                .filter(|r| r["trigger"] == trigger)
                .map(|r| ms(r, "scheduled_for"))
                .collect();
            v.sort();
            v
        };
        let on_time = sorted("schedule");
        let catch_up = sorted("catch_up");
        let first_on = *on_time
            .first()
            .unwrap_or_else(|| panic!("{job}: no on-time slot after the restart"));
        Gap {
            last_pre,
            first_on,
            missed: ((last_pre + 1000)..first_on).step_by(1000).collect(),
            catch_up,
            on_time,
        }
    }

    /// The catch-up slots `policy` (with `cap`) must have created.
    pub fn expected(&self, policy: &str, cap: usize) -> Vec<i64> {
        match policy {
            "skip" => vec![],
            "run_once" => vec![self.first_on - 1000],
            _ => self.missed[self.missed.len().saturating_sub(cap)..].to_vec(),
        }
    }

    /// Panics unless on-time slots continue second by second after the gap.
    pub fn assert_contiguous(&self, job: &str) {
        for pair in self.on_time.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                1000,
                "{job}: hole after restart {:?}",
                self.on_time
            );
        }
    }
}

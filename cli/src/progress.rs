//! What `jobs trigger --wait` tells a person while it waits: one line per
//! change worth knowing (an attempt starts on a node, an attempt ends and a
//! retry is pending) and, once, a hint when the first attempt has waited
//! for a node for a while. Pure: it is fed each version of the run that the
//! CLI fetches and the time waited so far, so tests need no server.

use std::time::Duration;
use sundial_proto::{Run, RunState};

/// How long a first attempt may stay pending before the hint is shown.
pub const PENDING_HINT_AFTER: Duration = Duration::from_secs(5);

/// The changes seen so far of one run being waited on.
#[derive(Debug, Default)]
pub struct Progress {
    /// `(attempt, state)` of the last version seen.
    last: Option<(u32, RunState)>,
    hinted: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress::default()
    }

    /// The lines (if any) that `run`, fetched after `waited`, adds to what
    /// was shown before. Terminal states print nothing here: the caller
    /// reports the ending with the output.
    pub fn update(&mut self, run: &Run, waited: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        let now = (run.attempt, run.state);
        let before = self.last.replace(now);
        if before != Some(now) {
            match run.state {
                RunState::Running => lines.push(format!(
                    "Attempt {} running on {}.",
                    run.attempt,
                    run.node.as_deref().unwrap_or("a node")
                )),
                RunState::Pending if run.attempt > 1 => {
                    let why = match (&run.error, run.exit_code) {
                        (Some(e), _) => e.clone(),
                        (None, Some(code)) => format!("exit code {code}"),
                        (None, None) => "it did not succeed".to_owned(),
                    };
                    lines.push(format!(
                        "Attempt {} ended: {why}; attempt {} waits for its retry.",
                        run.attempt - 1,
                        run.attempt
                    ));
                }
                _ => {}
            }
        }
        let never_started = run.state == RunState::Pending && run.attempt <= 1;
        if never_started && !self.hinted && waited >= PENDING_HINT_AFTER {
            self.hinted = true;
            lines.push(format!(
                "Still pending after {}s: no node has taken it yet. A run waits for a ready \
                 node that matches the job's target, allows its executor and has a free slot; \
                 see `sundial nodes ls` and `sundial jobs describe {}`.",
                waited.as_secs(),
                run.job_id
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(attempt: u32, state: &str, node: Option<&str>, error: Option<&str>) -> Run {
        serde_json::from_value(serde_json::json!({
            "id": 4, "job_id": "report", "scheduled_for": "2026-11-25T01:30:00Z",
            "node": node, "trigger": "manual", "attempt": attempt, "state": state,
            "created_at": "2026-11-25T01:30:00Z", "started_at": null,
            "finished_at": null, "exit_code": null, "output": "", "truncated": false,
            "error": error
        }))
        .expect("a valid run")
    }

    const SOON: Duration = Duration::from_millis(300);

    #[test]
    fn each_attempt_start_and_retry_is_told_once() {
        let mut p = Progress::new();
        assert!(p.update(&run(1, "pending", None, None), SOON).is_empty());
        let running = run(1, "running", Some("n1"), None);
        assert_eq!(p.update(&running, SOON), ["Attempt 1 running on n1."]);
        assert!(p.update(&running, SOON).is_empty(), "no change, no line");
        assert_eq!(
            p.update(&run(2, "pending", None, Some("exit code 3")), SOON),
            ["Attempt 1 ended: exit code 3; attempt 2 waits for its retry."]
        );
        // A retry waiting for its backoff is not "no node has taken it".
        assert!(p
            .update(&run(2, "pending", None, None), Duration::from_secs(60))
            .is_empty());
        let mut exited = run(3, "pending", None, None);
        exited.exit_code = Some(7);
        assert_eq!(
            p.update(&exited, SOON),
            ["Attempt 2 ended: exit code 7; attempt 3 waits for its retry."]
        );
        assert_eq!(
            p.update(&run(3, "running", Some("n2"), None), SOON),
            ["Attempt 3 running on n2."]
        );
        assert!(p
            .update(&run(3, "succeeded", Some("n2"), None), SOON)
            .is_empty());
    }

    #[test]
    fn a_first_attempt_left_pending_gets_one_hint() {
        let mut p = Progress::new();
        let pending = run(1, "pending", None, None);
        assert!(p.update(&pending, PENDING_HINT_AFTER / 2).is_empty());
        let hint = p.update(&pending, Duration::from_secs(6));
        assert_eq!(hint.len(), 1);
        assert!(
            hint[0].starts_with("Still pending after 6s: no node has taken it yet.")
                && hint[0].contains("`sundial jobs describe report`"),
            "{hint:?}"
        );
        assert!(p.update(&pending, Duration::from_secs(30)).is_empty());
    }

    #[test]
    fn a_run_first_seen_running_or_ended_is_told_as_it_is() {
        let mut p = Progress::new();
        assert_eq!(
            p.update(&run(1, "running", None, None), SOON),
            ["Attempt 1 running on a node."]
        );
        let mut q = Progress::new();
        assert!(q
            .update(&run(1, "failed", Some("n1"), Some("boom")), SOON)
            .is_empty());
    }
}

//! Health of a term's background loops (scheduler, lease reaper, last-seen
//! flush, retention). Each loop reports every pass here; a loop never exits
//! on an error while its term lasts — it reports the failure, waits a
//! backoff and tries again. Failures are counted, the time of the last
//! successful pass is exported, and `/readyz` asks [`Loops::stalled`]
//! whether a critical loop has been failing for longer than the threshold.

use crate::metrics::Metrics;
use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sundial_proto::backoff::Backoff;
use sundial_proto::time::now_ms;

/// The background loops of a term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loop {
    Scheduler,
    LeaseReaper,
    SeenFlush,
    Retention,
    Webhooks,
    Alerts,
}

impl Loop {
    pub const ALL: [Loop; 6] = [
        Loop::Scheduler,
        Loop::LeaseReaper,
        Loop::SeenFlush,
        Loop::Retention,
        Loop::Webhooks,
        Loop::Alerts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Loop::Scheduler => "scheduler",
            Loop::LeaseReaper => "lease_reaper",
            Loop::SeenFlush => "seen_flush",
            Loop::Retention => "retention",
            Loop::Webhooks => "webhooks",
            Loop::Alerts => "alerts",
        }
    }

    /// Loops without which the primary is not doing its job: while one of
    /// them fails for longer than the threshold, `/readyz` answers 503.
    pub fn critical(self) -> bool {
        matches!(self, Loop::Scheduler | Loop::LeaseReaper)
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default, Clone)]
struct State {
    /// Last successful pass (unix ms), 0 = none yet this term.
    last_ok_ms: i64,
    /// Start of the current run of failures (unix ms).
    failing_since_ms: Option<i64>,
    /// Start of the pass in progress (unix ms): a pass that waits long on
    /// the database is a stall before it has failed.
    in_pass_since_ms: Option<i64>,
    failures: u64,
    last_error: String,
}

/// One loop's state as `/readyz` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoopStatus {
    #[serde(rename = "loop")]
    pub name: &'static str,
    pub healthy: bool,
    pub failing_for_ms: Option<i64>,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
}

/// Per-loop health, shared by the loops, `/readyz` and the metrics.
pub struct Loops {
    states: [Mutex<State>; 6],
    metrics: Arc<Metrics>,
}

impl Loops {
    pub fn new(metrics: Arc<Metrics>) -> Loops {
        Loops {
            states: Default::default(),
            metrics,
        }
    }

    fn state(&self, l: Loop) -> std::sync::MutexGuard<'_, State> {
        // Each update is a plain assignment: a poisoned lock holds valid data.
        self.states[l.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the last term's failures (at promotion).
    pub fn reset(&self) {
        for l in Loop::ALL {
            *self.state(l) = State::default();
            self.metrics
                .loop_failing
                .with_label_values(&[l.as_str()])
                .set(0);
        }
    }

    /// A pass of `l` begins (its outcome is reported with [`Loops::ok`] or
    /// [`Loops::failed`]).
    pub fn begin(&self, l: Loop) {
        self.state(l).in_pass_since_ms = Some(now_ms());
    }

    /// A pass of `l` succeeded.
    pub fn ok(&self, l: Loop) {
        let now = now_ms();
        let mut st = self.state(l);
        st.in_pass_since_ms = None;
        if let Some(since) = st.failing_since_ms.take() {
            tracing::info!(
                r#loop = l.as_str(),
                failures = st.failures,
                failed_for_ms = now - since,
                "background loop recovered"
            );
            st.failures = 0;
            self.metrics
                .loop_failing
                .with_label_values(&[l.as_str()])
                .set(0);
        }
        st.last_ok_ms = now;
        self.metrics
            .loop_last_success
            .with_label_values(&[l.as_str()])
            .set(now as f64 / 1000.0);
    }

    /// A pass of `l` failed with `error`; the loop retries after its backoff.
    pub fn failed(&self, l: Loop, error: &dyn Display, retry_in: Duration) {
        let now = now_ms();
        let mut st = self.state(l);
        // The stall began when the failing pass did: a pass that waited
        // out the busy timeout before failing was stalled all along.
        let began = st.in_pass_since_ms.take().unwrap_or(now);
        st.failures += 1;
        st.last_error = error.to_string();
        let since = *st.failing_since_ms.get_or_insert(began);
        self.metrics
            .loop_errors
            .with_label_values(&[l.as_str()])
            .inc();
        self.metrics
            .loop_failing
            .with_label_values(&[l.as_str()])
            .set(1);
        tracing::warn!(
            r#loop = l.as_str(),
            error = %st.last_error,
            failures = st.failures,
            failing_for_ms = now - since,
            retry_in_ms = retry_in.as_millis() as u64,
            "background loop pass failed; retrying"
        );
    }

    /// Why the server is not ready: the first critical loop that has been
    /// failing — or stuck in one pass — for at least `threshold`.
    pub fn stalled(&self, threshold: Duration) -> Option<String> {
        let now = now_ms();
        let limit = threshold.as_millis() as i64;
        Loop::ALL
            .into_iter()
            .filter(|l| l.critical())
            .find_map(|l| {
                let st = self.state(l);
                if let Some(since) = st.failing_since_ms.filter(|s| now - s >= limit) {
                    return Some(format!(
                        "{} has failed for {:.1} s ({} attempts): {}",
                        l.as_str(),
                        (now - since) as f64 / 1000.0,
                        st.failures,
                        st.last_error
                    ));
                }
                let since = st.in_pass_since_ms.filter(|s| now - s >= limit)?;
                Some(format!(
                    "{} has been stuck in one pass for {:.1} s (waiting for the database?){}",
                    l.as_str(),
                    (now - since) as f64 / 1000.0,
                    match &st.failing_since_ms {
                        Some(_) => format!("; last error: {}", st.last_error),
                        None => String::new(),
                    }
                ))
            })
    }

    /// Every loop's state, for `/readyz`.
    pub fn statuses(&self) -> Vec<LoopStatus> {
        let now = now_ms();
        Loop::ALL
            .into_iter()
            .map(|l| {
                let st = self.state(l);
                LoopStatus {
                    name: l.as_str(),
                    healthy: st.failing_since_ms.is_none(),
                    failing_for_ms: st.failing_since_ms.map(|s| now - s),
                    consecutive_failures: st.failures,
                    last_error: st.failing_since_ms.map(|_| st.last_error.clone()),
                }
            })
            .collect()
    }
}

/// The pause after a failed pass: 50 ms doubling to 1 s, with jitter, so a
/// loop resumes within about a second of the database coming back.
pub fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_then_recovering() {
        let loops = Loops::new(Arc::new(Metrics::new()));
        assert!(loops.stalled(Duration::ZERO).is_none());
        loops.failed(Loop::Retention, &"disk full", Duration::from_millis(1));
        // Retention is not critical.
        assert!(loops.stalled(Duration::ZERO).is_none());
        loops.failed(
            Loop::Scheduler,
            &"database is locked",
            Duration::from_millis(1),
        );
        loops.failed(
            Loop::Scheduler,
            &"database is locked",
            Duration::from_millis(1),
        );
        let why = loops.stalled(Duration::ZERO).expect("stalled");
        assert!(why.starts_with("scheduler has failed for"), "{why}");
        assert!(why.contains("(2 attempts): database is locked"), "{why}");
        assert!(loops.stalled(Duration::from_secs(60)).is_none());
        let st = loops.statuses();
        assert!(!st[0].healthy && st[0].consecutive_failures == 2);
        loops.ok(Loop::Scheduler);
        assert!(loops.stalled(Duration::ZERO).is_none());
        assert!(loops.statuses()[0].healthy);
        let text = loops.metrics.render();
        assert!(
            text.contains("sundial_loop_errors_total{loop=\"scheduler\"} 2"),
            "{text}"
        );
        assert!(text.contains("sundial_loop_failing{loop=\"retention\"} 1"));
        loops.begin(Loop::LeaseReaper);
        std::thread::sleep(Duration::from_millis(5));
        let why = loops.stalled(Duration::from_millis(1)).expect("stuck");
        assert!(
            why.starts_with("lease_reaper has been stuck in one pass"),
            "{why}"
        );
        loops.ok(Loop::LeaseReaper);
        assert!(loops.stalled(Duration::from_millis(1)).is_none());
        loops.reset();
        assert!(loops.statuses().iter().all(|s| s.healthy));
    }

    /// A pass that waits out the busy timeout and then fails counts as
    /// stalled from its start: three failing passes of 40 ms each are a
    /// stall of 120 ms (counted from the first failure, 80 ms).
    #[test]
    fn a_stall_counts_from_the_start_of_the_first_failing_pass() {
        let loops = Loops::new(Arc::new(Metrics::new()));
        let threshold = Duration::from_millis(100);
        for _ in 0..3 {
            loops.begin(Loop::Scheduler);
            std::thread::sleep(Duration::from_millis(40));
            loops.failed(Loop::Scheduler, &"database is locked", Duration::ZERO);
        }
        let why = loops.stalled(threshold).expect("stalled for 120 ms");
        assert!(why.starts_with("scheduler has failed for"), "{why}");
    }
}

//! Rate limiting of authentication failures (admin bearer keys, console
//! sign-in, agent HMAC requests, join tokens): a token bucket per source
//! address and one per subject (the node a signed request names, or the
//! fingerprint of a presented bearer key).
//!
//! Only failures take tokens. A source whose bucket is empty is refused with
//! `429` + `Retry-After` *before* its credential is evaluated, which is what
//! bounds a brute force. A subject whose bucket is empty turns further
//! failures for it into `429` as well, but never refuses a request that
//! authenticates: node ids are not secret, and a limit that let anyone lock
//! a daemon out would be a denial of service on the legitimate holder.
//!
//! A small bucket rather than `governor`: the check here must *peek* (is this
//! source blocked?) without spending a token, and only a failure spends one;
//! governor's keyed limiter only offers check-and-consume.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bucket shape: `burst` failures at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub burst: f64,
    pub per_sec: f64,
}

/// Failures allowed per source address: 20 at once, then one a second.
pub const PER_SOURCE: Rate = Rate {
    burst: 20.0,
    per_sec: 1.0,
};
/// Failures allowed per subject (node, key fingerprint): 60 at once, then two a second.
pub const PER_SUBJECT: Rate = Rate {
    burst: 60.0,
    per_sec: 2.0,
};
/// Buckets kept before full ones (idle long enough to have refilled) are dropped.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key.
struct Buckets<K> {
    rate: Rate,
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(rate: Rate) -> Self {
        Buckets {
            rate,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, b: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        Bucket {
            tokens: (b.tokens + elapsed * self.rate.per_sec).min(self.rate.burst),
            at: now,
        }
    }

    fn wait_for_token(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens) / self.rate.per_sec).max(0.0))
    }

    /// How long until `key` may fail again; None when it has a token.
    fn blocked(&self, key: &K, now: Instant) -> Option<Duration> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let b = self.refill(*map.get(key)?, now);
        (b.tokens < 1.0).then(|| self.wait_for_token(b.tokens))
    }

    /// Spends a token for a failure; returns the wait when none was left.
    fn fail(&self, key: &K, now: Instant) -> Option<Duration> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            let (burst, rate) = (self.rate.burst, self.rate.per_sec);
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let start = Bucket {
            tokens: self.rate.burst,
            at: now,
        };
        let b = self.refill(map.get(key).copied().unwrap_or(start), now);
        if b.tokens >= 1.0 {
            map.insert(
                key.clone(),
                Bucket {
                    tokens: b.tokens - 1.0,
                    at: now,
                },
            );
            None
        } else {
            map.insert(key.clone(), b);
            Some(self.wait_for_token(b.tokens))
        }
    }
}

/// What was limited, for the metric's `by` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedBy {
    Source,
    Subject,
}

impl LimitedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitedBy::Source => "source",
            LimitedBy::Subject => "subject",
        }
    }
}

/// A refusal: why, and when to come back (whole seconds, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub by: LimitedBy,
    pub retry_after_secs: u64,
}

impl Limited {
    fn new(by: LimitedBy, wait: Duration) -> Limited {
        Limited {
            by,
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

/// The failure buckets of one server.
pub struct AuthLimiter {
    sources: Buckets<IpAddr>,
    subjects: Buckets<String>,
}

impl Default for AuthLimiter {
    fn default() -> Self {
        AuthLimiter::new(PER_SOURCE, PER_SUBJECT)
    }
}

impl AuthLimiter {
    pub fn new(per_source: Rate, per_subject: Rate) -> Self {
        AuthLimiter {
            sources: Buckets::new(per_source),
            subjects: Buckets::new(per_subject),
        }
    }

    /// Before evaluating a credential: is this source out of failures?
    pub fn check_source(&self, source: Option<IpAddr>) -> Result<(), Limited> {
        self.check_source_at(source, Instant::now())
    }

    fn check_source_at(&self, source: Option<IpAddr>, now: Instant) -> Result<(), Limited> {
        match source.and_then(|s| self.sources.blocked(&s, now)) {
            Some(wait) => Err(Limited::new(LimitedBy::Source, wait)),
            None => Ok(()),
        }
    }

    /// After a credential failed: spends a token of the source and of the
    /// subject; Err when either had none left (answer 429, not 401).
    pub fn failed(&self, source: Option<IpAddr>, subject: Option<&str>) -> Result<(), Limited> {
        self.failed_at(source, subject, Instant::now())
    }

    fn failed_at(
        &self,
        source: Option<IpAddr>,
        subject: Option<&str>,
        now: Instant,
    ) -> Result<(), Limited> {
        let by_source = source.and_then(|s| self.sources.fail(&s, now));
        let by_subject = subject.and_then(|s| self.subjects.fail(&s.to_owned(), now));
        match (by_source, by_subject) {
            (Some(wait), _) => Err(Limited::new(LimitedBy::Source, wait)),
            (None, Some(wait)) => Err(Limited::new(LimitedBy::Subject, wait)),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: Rate = Rate {
        burst: 3.0,
        per_sec: 1.0,
    };

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn a_source_is_blocked_after_its_burst_and_refills() {
        let l = AuthLimiter::new(TINY, TINY);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_source_at(ip(1), t0).is_ok());
            assert!(l.failed_at(ip(1), None, t0).is_ok());
        }
        let err = l.check_source_at(ip(1), t0).unwrap_err();
        assert_eq!(err.by, LimitedBy::Source);
        assert_eq!(err.retry_after_secs, 1);
        // Another source is unaffected.
        assert!(l.check_source_at(ip(2), t0).is_ok());
        // One token back after a second.
        let t1 = t0 + Duration::from_millis(1_001);
        assert!(l.check_source_at(ip(1), t1).is_ok());
        assert!(l.failed_at(ip(1), None, t1).is_ok());
        assert!(l.check_source_at(ip(1), t1).is_err());
    }

    #[test]
    fn a_subject_turns_failures_into_429_from_any_source() {
        let l = AuthLimiter::new(
            Rate {
                burst: 100.0,
                per_sec: 1.0,
            },
            TINY,
        );
        let t0 = Instant::now();
        for n in 0..3 {
            assert!(l.failed_at(ip(n), Some("node-a"), t0).is_ok());
        }
        let err = l.failed_at(ip(9), Some("node-a"), t0).unwrap_err();
        assert_eq!(err.by, LimitedBy::Subject);
        assert!(l.failed_at(ip(9), Some("node-b"), t0).is_ok());
        // The subject never blocks a source before evaluation.
        assert!(l.check_source_at(ip(9), t0).is_ok());
    }

    #[test]
    fn unknown_sources_are_not_limited_by_source() {
        let l = AuthLimiter::new(TINY, TINY);
        let t0 = Instant::now();
        for _ in 0..10 {
            let _ = l.failed_at(None, None, t0);
        }
        assert!(l.check_source_at(None, t0).is_ok());
    }
}

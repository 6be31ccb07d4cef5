//! Retry backoff for reconnects and background loops: exponential with
//! "equal jitter" (half fixed, half random), so a fleet of daemons (or a
//! loop hitting a busy database) does not retry in lockstep.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            current: base,
        }
    }

    /// The next delay; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }

    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut last_ceiling = Duration::from_millis(100);
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(
                d >= last_ceiling / 2 && d <= last_ceiling + Duration::from_millis(1),
                "{d:?}"
            );
            last_ceiling = (last_ceiling * 2).min(Duration::from_secs(2));
        }
        assert!(b.next_delay() <= Duration::from_millis(2001));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(101));
    }
}

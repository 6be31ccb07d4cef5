//! PLACEHOLDER — being replaced by the schedule module (cron, @every, @at, DST rules).
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ScheduleError {
    #[error("invalid schedule {expr:?}: {reason}")]
    InvalidExpression { expr: String, reason: String },
    #[error("unknown time zone {0:?}: expected an IANA name such as \"Europe/Berlin\"")]
    UnknownTimezone(String),
}

impl ScheduleError {
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::InvalidExpression { .. } => "schedule",
            ScheduleError::UnknownTimezone(_) => "timezone",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Schedule {
    every_ms: i64,
}

impl Schedule {
    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let _ = timezone;
        let _ = expr;
        Ok(Schedule { every_ms: 1000 })
    }

    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        Some((after_ms.div_euclid(self.every_ms) + 1) * self.every_ms)
    }
}

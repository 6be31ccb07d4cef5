//! Schedules: cron (5 or 6 fields, seconds optional), macros (`@hourly`, …),
//! `@every <duration>` and one-shot `@at <RFC3339>`, read in an IANA time zone,
//! with Sundial's written-down DST rules:
//!
//! 1. A fixed local time that does not exist (spring forward) fires once, at
//!    the first instant after the gap.
//! 2. A fixed local time that occurs twice (fall back) fires once, at its
//!    first occurrence.
//! 3. Schedules whose hour field is `*` or `*/n` (and `@hourly`) follow elapsed
//!    time: minutes and seconds match the wall clock in the UTC offset in force,
//!    so an hourly job fires 23 times on a spring-forward day and 25 times on a
//!    fall-back day. Any other hour field is a fixed local time (rules 1, 2).
//! 4. Several nonexistent times collapse into one fire.
//!
//! Cron matching is croner's. The DST rules are applied here: fixed local
//! times are matched on the naive local timeline and then placed in the zone
//! (rules 1, 2, 4); elapsed-time schedules are matched in the fixed UTC offset
//! in force and restarted at each offset transition (rule 3). (croner's own
//! zoned search handles some gap cases but not others — `0,30 2 * * *` skips
//! the spring-forward day — so it is not relied on.) Tests in
//! `tests.rs` pin every rule for America/New_York, Europe/London and
//! Australia/Lord_Howe (a 30-minute shift).

use chrono::{DateTime, FixedOffset, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

mod fields;
#[cfg(test)]
mod tests;

/// Why a schedule or time zone was refused. Messages are shown to API users.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("invalid schedule {expr:?}: {reason}")]
    Invalid { expr: String, reason: String },
    #[error("unknown time zone {0:?}: expected an IANA name such as \"Europe/Berlin\" or \"UTC\"")]
    UnknownTimezone(String),
}

impl ScheduleError {
    /// The input field at fault: `schedule` or `timezone`.
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::Invalid { .. } => "schedule",
            ScheduleError::UnknownTimezone(_) => "timezone",
        }
    }

    fn invalid(expr: &str, reason: impl Into<String>) -> Self {
        ScheduleError::Invalid {
            expr: expr.to_string(),
            reason: reason.into(),
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    /// Cron read in a zone; `elapsed` when the hour field is `*` or `*/n`.
    Cron {
        cron: Box<Cron>,
        tz: Tz,
        elapsed: bool,
    },
    /// Every `period` ms, aligned to the unix epoch.
    Every { period: i64 },
    /// Once, at this instant (ms).
    At { at: i64 },
}

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: Kind,
}

/// Longest walk over offset transitions before giving up (never reached in practice).
const MAX_TRANSITIONS: usize = 16;

fn parse_tz(timezone: &str) -> Result<Tz, ScheduleError> {
    timezone
        .trim()
        .parse::<Tz>()
        .map_err(|_| ScheduleError::UnknownTimezone(timezone.to_string()))
}

/// The hour field of a cron expression (after macro expansion), if it can be found.
fn hour_field(expr: &str) -> Option<String> {
    let lower = expr.trim().to_ascii_lowercase();
    if let Some(name) = lower.strip_prefix('@') {
        return match name {
            "hourly" => Some("*".into()),
            "daily" | "midnight" | "weekly" | "monthly" | "yearly" | "annually" => Some("0".into()),
            _ => None,
        };
    }
    let fields: Vec<&str> = lower.split_whitespace().collect();
    match fields.len() {
        5 => Some(fields[1].to_string()),
        6 => Some(fields[2].to_string()),
        _ => None,
    }
}

fn is_elapsed_hour(field: &str) -> bool {
    field == "*"
        || field
            .strip_prefix("*/")
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// The longest `@every` period: 100 years. Longer ones would put fires past
/// the last instant RFC 3339 can write (year 9999).
const MAX_EVERY_MS: i64 = 36_500 * 86_400_000;

impl Schedule {
    /// [`Schedule::parse`] for input (the API and the preview), stricter
    /// than for a stored job: no spaces around either value (stored as
    /// typed, they would make an equal spec look changed), and each cron
    /// field is checked on its own, so an error names the field and what
    /// croner would read silently (`*/61`, `1,,3`) is refused.
    pub fn parse_input(expr: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        if timezone != timezone.trim() {
            return Err(ScheduleError::UnknownTimezone(timezone.to_string()));
        }
        if expr != expr.trim() {
            return Err(ScheduleError::invalid(
                expr,
                "remove the spaces before or after it",
            ));
        }
        fields::check(expr).map_err(|why| ScheduleError::invalid(expr, why))?;
        Schedule::parse(expr, timezone)
    }

    /// Parses `expr` read in IANA time zone `timezone`.
    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let tz = parse_tz(timezone)?;
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(ScheduleError::invalid(expr, "the schedule is empty"));
        }
        let lower = trimmed.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("@every") {
            let rest = rest.trim();
            if rest.starts_with('-') {
                return Err(ScheduleError::invalid(
                    expr,
                    "@every needs a positive duration",
                ));
            }
            let d = humantime::parse_duration(rest).map_err(|_| {
                ScheduleError::invalid(
                    expr,
                    "@every needs a duration such as \"30s\", \"10m\" or \"1h30m\"",
                )
            })?;
            let period = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            // Cron's granularity: a shorter period would be a slot per
            // millisecond (one job at 1ms made 2,400 runs in 2 s).
            if period < 1_000 {
                return Err(ScheduleError::invalid(
                    expr,
                    "@every needs a duration of at least 1s",
                ));
            }
            if period > MAX_EVERY_MS {
                return Err(ScheduleError::invalid(
                    expr,
                    "@every takes a duration of at most 36500d (100 years)",
                ));
            }
            return Ok(Schedule {
                kind: Kind::Every { period },
            });
        }
        if lower.starts_with("@at") {
            let rest = trimmed[3..].trim();
            let at = DateTime::parse_from_rfc3339(rest).map_err(|_| {
                ScheduleError::invalid(
                    expr,
                    "@at needs an RFC 3339 instant such as \"2027-01-01T00:00:00Z\"",
                )
            })?;
            return Ok(Schedule {
                kind: Kind::At {
                    at: at.timestamp_millis(),
                },
            });
        }
        // The cron parser knows `@daily`, not its other name.
        let trimmed = if trimmed.eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            trimmed
        };
        let Some(hour) = hour_field(trimmed) else {
            return Err(ScheduleError::invalid(
                expr,
                if trimmed.starts_with('@') {
                    "unknown macro; expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, @every <duration> or @at <RFC3339>".to_string()
                } else {
                    format!(
                        "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with seconds first), found {}",
                        trimmed.split_whitespace().count()
                    )
                },
            ));
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| ScheduleError::invalid(expr, e.to_string()))?;
        // A pattern that can never match (e.g. 30 February) is an error, not a silent no-op.
        let probe = Utc::now().with_timezone(&tz);
        if cron.find_next_occurrence(&probe, false).is_err() {
            return Err(ScheduleError::invalid(
                expr,
                "the pattern never matches a real date",
            ));
        }
        Ok(Schedule {
            kind: Kind::Cron {
                cron: Box::new(cron),
                tz,
                elapsed: is_elapsed_hour(&hour),
            },
        })
    }

    /// True for `@at` schedules (they fire once).
    pub fn is_one_shot(&self) -> bool {
        matches!(self.kind, Kind::At { .. })
    }

    /// The first fire strictly after `after_ms` (UTC unix ms), or None when
    /// the schedule never fires again (fires past the year 9999 included: the
    /// API could not write them).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let next = match &self.kind {
            Kind::Every { period } => after_ms
                .div_euclid(*period)
                .checked_add(1)?
                .checked_mul(*period),
            Kind::At { at } => (*at > after_ms).then_some(*at),
            Kind::Cron { cron, tz, elapsed } => {
                if *elapsed {
                    next_elapsed(cron, tz, after_ms)
                } else {
                    next_fixed(cron, tz, after_ms)
                }
            }
        }?;
        (next <= sundial_proto::time::LAST_INSTANT_MS).then_some(next)
    }

    /// Every fire after `after_ms`, in order.
    pub fn fires_after(&self, after_ms: i64) -> impl Iterator<Item = i64> + '_ {
        let mut t = after_ms;
        std::iter::from_fn(move || {
            let next = self.next_after(t)?;
            t = next;
            Some(next)
        })
    }
}

/// The canonical text of a schedule (without its time zone): a cron pattern
/// as written (trimmed; a macro such as `@hourly` as the pattern it stands for), `@every` with its period in the largest units first
/// (`@every 1h30m`, `@every 1500ms` prints `@every 1s500ms`), `@at` as an RFC 3339
/// UTC instant with milliseconds. Parsing the printed text in the same zone
/// gives the same schedule.
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Cron { cron, .. } => f.write_str(cron.as_str()),
            Kind::Every { period } => {
                f.write_str("@every ")?;
                write_period(f, *period)
            }
            Kind::At { at } => write!(f, "@at {}", sundial_proto::time::format_ms(*at)),
        }
    }
}

/// Writes milliseconds as `1d2h3m4s5ms` (largest units first, zero units left out).
fn write_period(f: &mut std::fmt::Formatter<'_>, ms: i64) -> std::fmt::Result {
    const UNITS: [(i64, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let mut rest = ms;
    for (size, unit) in UNITS {
        if rest >= size {
            write!(f, "{}{}", rest / size, unit)?;
            rest %= size;
        }
    }
    Ok(())
}

/// Whole seconds at or before `ms`, as a UTC instant.
fn floor_second(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(ms.div_euclid(1000), 0)
}

/// Fixed local time. The pattern is matched on the naive local timeline
/// (croner evaluated in UTC, which has no transitions); each match is then
/// placed in the zone: a time in a gap fires at the first instant after the
/// gap (rule 1), so later matches in the same gap fall behind it and collapse
/// (rule 4); a time that occurs twice fires at its first occurrence (rule 2).
fn next_fixed(cron: &Cron, tz: &Tz, after_ms: i64) -> Option<i64> {
    let after = DateTime::<Utc>::from_timestamp_millis(after_ms)?;
    let mut local = after.with_timezone(tz).naive_local();
    for _ in 0..MAX_TRANSITIONS {
        // Whole seconds: the next match is strictly after the current second.
        let start = DateTime::<Utc>::from_naive_utc_and_offset(local.with_nanosecond(0)?, Utc);
        let candidate = cron.find_next_occurrence(&start, false).ok()?.naive_utc();
        let instant = match tz.from_local_datetime(&candidate) {
            chrono::LocalResult::Single(t) => t.timestamp_millis(),
            chrono::LocalResult::Ambiguous(first, _) => first.timestamp_millis(),
            chrono::LocalResult::None => gap_end(tz, candidate)?,
        };
        if instant > after_ms {
            return Some(instant);
        }
        local = candidate;
    }
    None
}

/// The first instant whose local time is at or after `naive`, which lies in a gap.
/// The search spans 4 hours either side (any DST gap), or 26 when the gap
/// is a whole skipped day (Pacific/Apia on 2011-12-30): a job at a fixed
/// time fires after such a day rather than never again.
fn gap_end(tz: &Tz, naive: chrono::NaiveDateTime) -> Option<i64> {
    let bounds = |h: i64| {
        let hours = chrono::Duration::hours(h);
        let lo = tz.from_local_datetime(&(naive - hours)).earliest()?;
        let hi = tz.from_local_datetime(&(naive + hours)).latest()?;
        Some((lo.timestamp_millis(), hi.timestamp_millis()))
    };
    let (lo, hi) = bounds(4).or_else(|| bounds(26))?;
    let local_at = |ms: i64| {
        DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.with_timezone(tz).naive_local())
    };
    let (mut lo, mut hi) = (lo, hi);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_at(mid)? >= naive {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

fn offset_at(tz: &Tz, ms: i64) -> Option<FixedOffset> {
    let utc = DateTime::<Utc>::from_timestamp_millis(ms)?;
    Some(tz.offset_from_utc_datetime(&utc.naive_utc()).fix())
}

/// Elapsed time: match in the fixed offset in force; when the zone's offset
/// changes before the candidate, restart from the transition in the new offset.
fn next_elapsed(cron: &Cron, tz: &Tz, after_ms: i64) -> Option<i64> {
    let mut from = after_ms;
    let mut offset = offset_at(tz, from)?;
    for _ in 0..MAX_TRANSITIONS {
        let start = floor_second(from)?.with_timezone(&offset);
        let candidate = cron
            .find_next_occurrence(&start, false)
            .ok()?
            .timestamp_millis();
        if offset_at(tz, candidate)? == offset {
            return Some(candidate);
        }
        // Find the first instant after `from` with a different offset (ms precision).
        let (mut lo, mut hi) = (from, candidate);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if offset_at(tz, mid)? == offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        from = hi - 1;
        offset = offset_at(tz, hi)?;
    }
    None
}

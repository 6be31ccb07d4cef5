//! Durations as they appear on the wire: strings such as `"30s"`, `"10m"`,
//! `"1h30m"` or `"30d"`, stored internally as whole milliseconds.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A strictly positive span of time with millisecond resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    millis: u64,
}

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("invalid duration {0:?}: expected a number and a unit such as \"30s\", \"10m\", \"1h30m\" or \"30d\"")]
    Syntax(String),
    #[error("duration {0:?} must be greater than zero")]
    NotPositive(String),
    #[error("duration {0:?} is too long")]
    TooLong(String),
}

impl Duration {
    /// The longest duration accepted anywhere in the API (100 years).
    pub const MAX_MILLIS: u64 = 100 * 365 * 24 * 3600 * 1000;

    /// Builds a duration from milliseconds; `None` when zero or too long.
    pub fn from_millis(millis: u64) -> Option<Self> {
        (millis > 0 && millis <= Self::MAX_MILLIS).then_some(Duration { millis })
    }

    /// Builds a duration from whole seconds; panics on zero (for constants).
    pub const fn from_secs_const(secs: u64) -> Self {
        assert!(secs > 0);
        Duration {
            millis: secs * 1000,
        }
    }

    pub fn as_millis(self) -> u64 {
        self.millis
    }

    pub fn as_millis_i64(self) -> i64 {
        // MAX_MILLIS fits comfortably in i64.
        self.millis as i64
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if trimmed.starts_with('-') {
            return Err(DurationError::NotPositive(s.to_string()));
        }
        let parsed =
            humantime::parse_duration(trimmed).map_err(|_| DurationError::Syntax(s.to_string()))?;
        if parsed.is_zero() {
            return Err(DurationError::NotPositive(s.to_string()));
        }
        let millis =
            u64::try_from(parsed.as_millis()).map_err(|_| DurationError::TooLong(s.to_string()))?;
        if millis == 0 {
            // Sub-millisecond durations round to zero: refuse rather than surprise.
            return Err(DurationError::NotPositive(s.to_string()));
        }
        if millis > Self::MAX_MILLIS {
            return Err(DurationError::TooLong(s.to_string()));
        }
        Ok(Duration { millis })
    }
}

impl fmt::Display for Duration {
    /// Canonical form: largest units first, e.g. `1h30m`, `30d`, `1500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 5] = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
            (1, "ms"),
        ];
        let mut rest = self.millis;
        for (size, unit) in UNITS {
            if rest >= size {
                write!(f, "{}{}", rest / size, unit)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

/// On the wire a duration is a string of number-unit pairs, largest first.
impl utoipa::PartialSchema for Duration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^([1-9][0-9]{0,3}(d|h|m|s|ms))+$"))
            .description(Some(
                "A positive span such as \"30s\", \"10m\", \"1h30m\", \"30d\" or \"250ms\" (at most 100 years)",
            ))
            .examples(["30s", "1h30m"])
            .into()
    }
}

impl utoipa::ToSchema for Duration {}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("30s".parse::<Duration>().unwrap().as_millis(), 30_000);
        assert_eq!("10m".parse::<Duration>().unwrap().as_millis(), 600_000);
        assert_eq!("1h30m".parse::<Duration>().unwrap().as_millis(), 5_400_000);
        assert_eq!(
            "30d".parse::<Duration>().unwrap().as_millis(),
            2_592_000_000
        );
        assert_eq!("250ms".parse::<Duration>().unwrap().as_millis(), 250);
    }

    #[test]
    fn refuses_zero_negative_and_garbage() {
        assert!(matches!(
            "0s".parse::<Duration>(),
            Err(DurationError::NotPositive(_))
        ));
        assert!(matches!(
            "-5s".parse::<Duration>(),
            Err(DurationError::NotPositive(_))
        ));
        assert!(matches!(
            "soon".parse::<Duration>(),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(
            "".parse::<Duration>(),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(
            "10".parse::<Duration>(),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(
            "500y".parse::<Duration>(),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn displays_canonically() {
        assert_eq!("90m".parse::<Duration>().unwrap().to_string(), "1h30m");
        assert_eq!("1500ms".parse::<Duration>().unwrap().to_string(), "1s500ms");
    }

    proptest! {
        #[test]
        fn display_round_trips(ms in 1u64..Duration::MAX_MILLIS) {
            let d = Duration::from_millis(ms).unwrap();
            let back: Duration = d.to_string().parse().unwrap();
            prop_assert_eq!(d, back);
        }

        /// No string makes the parser panic; whatever parses is positive,
        /// within bounds, and prints to a form that parses to the same value.
        #[test]
        fn parse_never_panics_and_parse_print_round_trips(
            s in prop_oneof![
                ".{0,30}",
                " ?-?[0-9]{0,25}(ns|us|ms|s|m|h|d|w|M|y|sec|min|hours|days)?( ?[0-9]{1,6}[a-z]{1,3}){0,3} ?",
            ],
        ) {
            if let Ok(d) = s.parse::<Duration>() {
                prop_assert!(d.as_millis() > 0 && d.as_millis() <= Duration::MAX_MILLIS);
                let printed = d.to_string();
                let back: Duration = printed.parse().map_err(|e| TestCaseError::fail(format!("{printed:?}: {e}")))?;
                prop_assert_eq!(back, d);
                prop_assert_eq!(back.to_string(), printed);
            }
        }

        /// Generated `NdNhNmNsNms` strings parse to their sum and print canonically.
        #[test]
        fn generated_durations_parse_to_their_sum(
            d in 0u64..1000, h in 0u64..48, m in 0u64..120, sec in 0u64..120, ms in 0u64..2000,
        ) {
            prop_assume!(d + h + m + sec + ms > 0);
            let mut text = String::new();
            for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (sec, "s"), (ms, "ms")] {
                if n > 0 {
                    text.push_str(&format!("{n}{unit}"));
                }
            }
            let total = (((d * 24 + h) * 60 + m) * 60 + sec) * 1000 + ms;
            let parsed: Duration = text.parse().map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            prop_assert_eq!(parsed.as_millis(), total);
            let canonical = Duration::from_millis(total).unwrap().to_string();
            prop_assert_eq!(parsed.to_string(), canonical);
        }
    }
}

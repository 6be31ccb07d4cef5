//! Instants on the wire are RFC 3339 strings; inside Sundial they are UTC unix
//! milliseconds. These helpers convert between the two.

use chrono::{DateTime, SecondsFormat, Utc};

/// The last instant RFC 3339 can write: 9999-12-31T23:59:59.999Z.
pub const LAST_INSTANT_MS: i64 = 253_402_300_799_999;

/// Formats unix milliseconds as RFC 3339 UTC (`2026-01-01T00:00:00.000Z`).
pub fn format_ms(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// Parses an RFC 3339 instant into unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Current wall-clock time as unix milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Serde adapter for `i64` milliseconds ⇄ RFC 3339 strings.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_ms(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_rfc3339_ms(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 instant {s:?}")))
    }
}

/// Serde adapter for `Option<i64>` milliseconds ⇄ RFC 3339 strings or null.
pub mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&super::format_ms(*ms)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::parse_rfc3339_ms(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 instant {s:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let ms = 1_798_761_600_123;
        assert_eq!(parse_rfc3339_ms(&format_ms(ms)), Some(ms));
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_rfc3339_ms("2027-01-01T01:00:00+01:00"),
            Some(1_798_761_600_000)
        );
        assert_eq!(parse_rfc3339_ms("tomorrow"), None);
    }
}

//! Events: the durable stream of what happened (`GET /v1/events`,
//! `GET /v1/events/stream`). Each event is written in the same transaction
//! as the change it reports, and its `id` is the stream cursor.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    RunStarted,
    RunSucceeded,
    RunFailed,
    RunTimedOut,
    RunLost,
    RunCancelled,
    RunSkipped,
    RunRetrying,
    /// Fires dropped by a job's misfire policy.
    SlotMissed,
    JobCreated,
    JobUpdated,
    JobDeleted,
    JobPaused,
    JobResumed,
    /// No run succeeded within the job's `alert.overdue_after`.
    JobOverdue,
    /// A run of an overdue job succeeded.
    JobRecovered,
    NodeJoined,
    /// A node was not heard from for two minutes.
    NodeDown,
    NodeRevoked,
    KeyCreated,
    KeyDeleted,
    TokenCreated,
    TokenDeleted,
    /// A server became primary (a new epoch).
    HaPromoted,
    /// A webhook gave up on an event after its retry window.
    WebhookFailed,
}

impl EventType {
    pub const ALL: [EventType; 25] = [
        EventType::RunStarted,
        EventType::RunSucceeded,
        EventType::RunFailed,
        EventType::RunTimedOut,
        EventType::RunLost,
        EventType::RunCancelled,
        EventType::RunSkipped,
        EventType::RunRetrying,
        EventType::SlotMissed,
        EventType::JobCreated,
        EventType::JobUpdated,
        EventType::JobDeleted,
        EventType::JobPaused,
        EventType::JobResumed,
        EventType::JobOverdue,
        EventType::JobRecovered,
        EventType::NodeJoined,
        EventType::NodeDown,
        EventType::NodeRevoked,
        EventType::KeyCreated,
        EventType::KeyDeleted,
        EventType::TokenCreated,
        EventType::TokenDeleted,
        EventType::HaPromoted,
        EventType::WebhookFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RunStarted => "run.started",
            EventType::RunSucceeded => "run.succeeded",
            EventType::RunFailed => "run.failed",
            EventType::RunTimedOut => "run.timed_out",
            EventType::RunLost => "run.lost",
            EventType::RunCancelled => "run.cancelled",
            EventType::RunSkipped => "run.skipped",
            EventType::RunRetrying => "run.retrying",
            EventType::SlotMissed => "slot.missed",
            EventType::JobCreated => "job.created",
            EventType::JobUpdated => "job.updated",
            EventType::JobDeleted => "job.deleted",
            EventType::JobPaused => "job.paused",
            EventType::JobResumed => "job.resumed",
            EventType::JobOverdue => "job.overdue",
            EventType::JobRecovered => "job.recovered",
            EventType::NodeJoined => "node.joined",
            EventType::NodeDown => "node.down",
            EventType::NodeRevoked => "node.revoked",
            EventType::KeyCreated => "key.created",
            EventType::KeyDeleted => "key.deleted",
            EventType::TokenCreated => "token.created",
            EventType::TokenDeleted => "token.deleted",
            EventType::HaPromoted => "ha.promoted",
            EventType::WebhookFailed => "webhook.failed",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown event type {s:?}"))
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for EventType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(EventType::ALL.map(EventType::as_str)))
            .into()
    }
}

impl utoipa::ToSchema for EventType {}

/// A selector of event types: an exact type (`run.failed`), a family
/// (`run.*`) or everything (`*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypePattern(String);

impl TypePattern {
    pub fn matches(&self, t: EventType) -> bool {
        let p = self.0.as_str();
        match p.strip_suffix('*') {
            Some(prefix) => t.as_str().starts_with(prefix),
            None => t.as_str() == p,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TypePattern {
    type Err = String;

    /// Refuses a pattern that matches no type, so a typo is an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let p = TypePattern(s.to_string());
        let family_ok = s == "*" || s.strip_suffix(".*").is_some_and(|f| !f.contains('*'));
        if (s.contains('*') && !family_ok) || !EventType::ALL.into_iter().any(|t| p.matches(t)) {
            return Err(format!(
                "event type {s:?} matches no event type (e.g. \"run.failed\", \"run.*\", \"*\")"
            ));
        }
        Ok(p)
    }
}

/// One event as the API returns it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "crate::time::rfc3339")]
    pub at: i64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub job_id: Option<String>,
    pub run_id: Option<i64>,
    pub node: Option<String>,
    /// A small JSON object with the details of this type of event.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_and_patterns_match() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), t);
        }
        let runs: TypePattern = "run.*".parse().unwrap();
        assert!(runs.matches(EventType::RunFailed));
        assert!(!runs.matches(EventType::JobCreated));
        let all: TypePattern = "*".parse().unwrap();
        assert!(EventType::ALL.into_iter().all(|t| all.matches(t)));
        let one: TypePattern = "job.paused".parse().unwrap();
        assert!(one.matches(EventType::JobPaused) && !one.matches(EventType::JobResumed));
        for bad in ["runs.*", "run.fail", "r*n.failed", "", "run.**"] {
            assert!(bad.parse::<TypePattern>().is_err(), "{bad}");
        }
    }
}

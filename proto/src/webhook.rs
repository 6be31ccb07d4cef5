//! Webhooks: what `POST /v1/webhooks` takes and what the webhook endpoints
//! return, and the Standard Webhooks signature (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`) that
//! every delivery carries.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Body format of a delivery.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The event JSON as the event API returns it.
    #[default]
    Json,
    /// A Slack-compatible `{"text": "…"}` message.
    Slack,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Slack => "slack",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "slack" => Ok(Format::Slack),
            _ => Err(format!(
                "unknown webhook format {s:?}; expected json or slack"
            )),
        }
    }
}

/// Which jobs' events a webhook receives: those of the listed job ids
/// and/or of jobs carrying all the listed job labels (empty: every job, and
/// events that are about no job).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSelector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl JobSelector {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.labels.is_empty()
    }
}

/// `POST /v1/webhooks`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    /// Event types or families (`run.failed`, `job.*`, `*`).
    pub events: Vec<String>,
    #[serde(default)]
    pub jobs: JobSelector,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub description: String,
}

/// A webhook as the API shows it (the secret only once, at creation).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Webhook {
    pub id: String,
    /// Described by the spec's schema, merged in (see the server's OpenAPI document).
    #[schema(ignore)]
    #[serde(flatten)]
    pub spec: WebhookSpec,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: i64,
    /// Id of the newest event handled (delivered, or given up on).
    pub cursor: i64,
    /// Attempts made at the event now being delivered (0 when idle).
    pub attempts: u32,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "crate::time::rfc3339_opt")]
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    /// `whsec_…`, present only in the answer to the creating request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// How one delivery attempt went.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// It did not; the event will be sent again.
    Retrying,
    /// It did not, and the retry window is over: the event was given up.
    Failed,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retrying => "retrying",
            DeliveryOutcome::Failed => "failed",
        }
    }
}

impl std::str::FromStr for DeliveryOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "delivered" => Ok(DeliveryOutcome::Delivered),
            "retrying" => Ok(DeliveryOutcome::Retrying),
            "failed" => Ok(DeliveryOutcome::Failed),
            _ => Err(format!("unknown delivery outcome {s:?}")),
        }
    }
}

/// One delivery attempt (`GET /v1/webhooks/{id}/deliveries`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Delivery {
    pub id: i64,
    /// The `webhook-id` sent: the event id (or `test_…` for a test).
    pub message_id: String,
    pub event_id: Option<i64>,
    pub attempt: u32,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "crate::time::rfc3339")]
    pub at: i64,
    /// The receiver's HTTP status; null when no answer came.
    pub status: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub outcome: DeliveryOutcome,
}

/// The prefix of a webhook secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Formats raw secret bytes as `whsec_<base64>`.
pub fn format_secret(raw: &[u8]) -> String {
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The `webhook-signature` value for one message: `v1,<base64(HMAC-SHA256(
/// secret, "{id}.{timestamp}.{body}"))>`, per the Standard Webhooks spec.
pub fn signature(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification.
    #[test]
    fn signature_matches_the_spec_example() {
        let secret = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(
            format_secret(&secret),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        );
    }

    #[test]
    fn spec_defaults_and_refusals() {
        let s: WebhookSpec =
            serde_json::from_str(r#"{"url": "http://x", "events": ["run.failed"]}"#).unwrap();
        assert_eq!(s.format, Format::Json);
        assert!(s.jobs.is_empty());
        assert!(serde_json::from_str::<WebhookSpec>(
            r#"{"url": "http://x", "events": [], "fromat": "slack"}"#
        )
        .is_err());
        assert!("teams".parse::<Format>().is_err());
    }
}

//! The HTTP side of auth-failure rate limiting ([`crate::auth_limit`]): the
//! caller's source address, the `429` + `Retry-After` answer, its metric
//! (`sundial_auth_rate_limited_total{kind,by}`) and log line. Logs name the
//! source, the kind and the subject (a node id or a key *fingerprint*),
//! never a presented key, token or signature.

use super::error::ApiError;
use super::state::Gate;
use crate::auth_limit::Limited;
use axum::extract::ConnectInfo;
use axum::http::{Extensions, StatusCode};
use std::net::{IpAddr, SocketAddr};

/// Which credential failed, for the metric's `kind` label.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Admin/read bearer keys.
    ApiKey,
    /// Agent `Sundial-HMAC` requests.
    Agent,
    /// `Sundial-Join` tokens.
    JoinToken,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::ApiKey => "api_key",
            Kind::Agent => "agent",
            Kind::JoinToken => "join_token",
        }
    }
}

/// The peer address of the connection (None in router tests without one).
pub fn source(ext: &Extensions) -> Option<IpAddr> {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// A short, non-reversible fingerprint of a presented secret, for logs and
/// per-key buckets: the first 12 hex digits of its SHA-256.
pub fn fingerprint(secret: &str) -> String {
    let hash = crate::auth::hash_key(secret);
    hash.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn too_many(
    gate: &Gate,
    kind: Kind,
    limited: Limited,
    source: Option<IpAddr>,
    subject: Option<&str>,
) -> ApiError {
    gate.metrics
        .auth_rate_limited
        .with_label_values(&[kind.as_str(), limited.by.as_str()])
        .inc();
    tracing::warn!(
        kind = kind.as_str(),
        by = limited.by.as_str(),
        source = %source.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        subject = subject.unwrap_or("-"),
        retry_after_s = limited.retry_after_secs,
        "authentication failures rate limited"
    );
    let secs = u32::try_from(limited.retry_after_secs).unwrap_or(u32::MAX);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "too many failed authentication attempts from this {}; retry in {secs} s",
            limited.by.as_str()
        ),
    )
    .retry_after(secs)
}

/// Before evaluating a credential: refuses a source that is out of failures.
pub fn guard(gate: &Gate, kind: Kind, source: Option<IpAddr>) -> Result<(), ApiError> {
    gate.auth_limit
        .check_source(source)
        .map_err(|l| too_many(gate, kind, l, source, None))
}

/// After a credential failed with `err`: spends the failure; returns `err`
/// or, when the source or subject is out of failures, a 429.
pub fn failed(
    gate: &Gate,
    kind: Kind,
    source: Option<IpAddr>,
    subject: Option<&str>,
    err: ApiError,
) -> ApiError {
    match gate.auth_limit.failed(source, subject) {
        Ok(()) => err,
        Err(l) => too_many(gate, kind, l, source, subject),
    }
}

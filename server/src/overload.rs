//! Overload protection settings and metrics: how many connections the server
//! holds open, how long a client may take to send its request head and body,
//! how long a handler may run, and the two concurrency budgets (agent API and
//! everything else) beyond which requests are shed with `503 overloaded`.
//!
//! The connection side is enforced in [`crate::listen`], the request side in
//! [`crate::api::overload`].

use anyhow::bail;
use clap::Args;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::time::Duration as StdDuration;
use sundial_proto::Duration;

/// Flags (and `SUNDIAL_*` variables) of the overload limits; flattened into
/// `sundial-server serve`.
#[derive(Debug, Args, Default, Clone)]
pub struct LimitArgs {
    /// Most connections held open at once; beyond it a new connection is
    /// answered `503` and closed [default: 16384].
    #[arg(long, env = "SUNDIAL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Longest time a client may take to send a request's head (also how
    /// long an idle keep-alive connection stays open: hyper has one timer
    /// for both, so keep it above the pool idle time of clients that reuse
    /// connections, or they race the close) [default: 30s].
    #[arg(long, env = "SUNDIAL_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<Duration>,
    /// Longest time a client may take to send a request's body; then `408`
    /// [default: 30s].
    #[arg(long, env = "SUNDIAL_BODY_READ_TIMEOUT")]
    pub body_read_timeout: Option<Duration>,
    /// Longest time a request may take (body read included) before `503
    /// timeout`; the agent long-poll gets this on top of its wait, event and
    /// output streams are not bounded by it once they started; at least
    /// --body-read-timeout [default: 60s].
    #[arg(long, env = "SUNDIAL_REQUEST_TIMEOUT")]
    pub request_timeout: Option<Duration>,
    /// Admin/read API requests handled at once; more are shed with `503
    /// overloaded` [default: 256].
    #[arg(long, env = "SUNDIAL_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Agent API requests (`/v1/agent/*`, long-polls included) handled at
    /// once; more are shed with `503 overloaded` [default: 1024].
    #[arg(long, env = "SUNDIAL_MAX_CONCURRENT_AGENT_REQUESTS")]
    pub max_concurrent_agent_requests: Option<usize>,
}

impl LimitArgs {
    /// Fills each unset value from `other` (the config file).
    pub fn or(self, other: LimitArgs) -> LimitArgs {
        LimitArgs {
            max_connections: self.max_connections.or(other.max_connections),
            header_read_timeout: self.header_read_timeout.or(other.header_read_timeout),
            body_read_timeout: self.body_read_timeout.or(other.body_read_timeout),
            request_timeout: self.request_timeout.or(other.request_timeout),
            max_concurrent_requests: self
                .max_concurrent_requests
                .or(other.max_concurrent_requests),
            max_concurrent_agent_requests: self
                .max_concurrent_agent_requests
                .or(other.max_concurrent_agent_requests),
        }
    }

    /// Applies the defaults and checks the values.
    pub fn resolve(self) -> anyhow::Result<Limits> {
        let d = Limits::default();
        let limits = Limits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            header_read_timeout: self
                .header_read_timeout
                .map(Duration::as_std)
                .unwrap_or(d.header_read_timeout),
            body_read_timeout: self
                .body_read_timeout
                .map(Duration::as_std)
                .unwrap_or(d.body_read_timeout),
            request_timeout: self
                .request_timeout
                .map(Duration::as_std)
                .unwrap_or(d.request_timeout),
            max_concurrent_requests: self
                .max_concurrent_requests
                .unwrap_or(d.max_concurrent_requests),
            max_concurrent_agent_requests: self
                .max_concurrent_agent_requests
                .unwrap_or(d.max_concurrent_agent_requests),
        };
        if limits.max_connections < 16 {
            bail!("max_connections must be at least 16");
        }
        if limits.max_concurrent_requests == 0 || limits.max_concurrent_agent_requests == 0 {
            bail!("max_concurrent_requests and max_concurrent_agent_requests must be at least 1");
        }
        for (name, d) in [
            ("header_read_timeout", limits.header_read_timeout),
            ("body_read_timeout", limits.body_read_timeout),
            ("request_timeout", limits.request_timeout),
        ] {
            if d < StdDuration::from_millis(100) {
                bail!("{name} must be at least 100ms");
            }
        }
        if limits.request_timeout < limits.body_read_timeout {
            bail!(
                "request_timeout must be at least body_read_timeout (it includes reading the body)"
            );
        }
        Ok(limits)
    }
}

/// Resolved overload limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: StdDuration,
    pub body_read_timeout: StdDuration,
    pub request_timeout: StdDuration,
    pub max_concurrent_requests: usize,
    pub max_concurrent_agent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
            header_read_timeout: StdDuration::from_secs(30),
            body_read_timeout: StdDuration::from_secs(30),
            request_timeout: StdDuration::from_secs(60),
            max_concurrent_requests: 256,
            max_concurrent_agent_requests: 1024,
        }
    }
}

/// What overload protection counts.
pub struct OverloadMetrics {
    /// `sundial_http_connections_open`.
    pub connections_open: IntGauge,
    /// `sundial_http_connections_refused_total`: over `max_connections`.
    pub connections_refused: prometheus::IntCounter,
    /// `sundial_http_requests_shed_total{budget}`: answered `503 overloaded`.
    pub shed: IntCounterVec,
    /// `sundial_http_timeouts_total{kind}`: header, body, handler.
    pub timeouts: IntCounterVec,
    /// `sundial_http_requests_in_flight{budget}`.
    pub in_flight: IntGaugeVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl OverloadMetrics {
    /// Defines the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> OverloadMetrics {
        let m = OverloadMetrics {
            connections_open: must(IntGauge::new(
                "http_connections_open",
                "HTTP connections currently open",
            )),
            connections_refused: must(prometheus::IntCounter::new(
                "http_connections_refused_total",
                "Connections answered 503 and closed because max_connections were open",
            )),
            shed: must(IntCounterVec::new(
                Opts::new(
                    "http_requests_shed_total",
                    "Requests answered 503 overloaded because their concurrency budget was full",
                ),
                &["budget"],
            )),
            timeouts: must(IntCounterVec::new(
                Opts::new(
                    "http_timeouts_total",
                    "Connections or requests ended by a timeout, by kind (header, body, handler)",
                ),
                &["kind"],
            )),
            in_flight: must(IntGaugeVec::new(
                Opts::new(
                    "http_requests_in_flight",
                    "Requests being handled, by concurrency budget",
                ),
                &["budget"],
            )),
        };
        must(registry.register(Box::new(m.connections_open.clone())));
        must(registry.register(Box::new(m.connections_refused.clone())));
        must(registry.register(Box::new(m.shed.clone())));
        must(registry.register(Box::new(m.timeouts.clone())));
        must(registry.register(Box::new(m.in_flight.clone())));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let l = LimitArgs::default().resolve().unwrap();
        assert_eq!(l.max_connections, 16_384);
        assert_eq!(l.header_read_timeout, StdDuration::from_secs(30));
        let bad = LimitArgs {
            max_concurrent_requests: Some(0),
            ..LimitArgs::default()
        };
        assert!(format!("{:#}", bad.resolve().unwrap_err()).contains("max_concurrent"));
        let bad = LimitArgs {
            header_read_timeout: Some("50ms".parse().unwrap()),
            ..LimitArgs::default()
        };
        assert!(format!("{:#}", bad.resolve().unwrap_err()).contains("header_read_timeout"));
        let bad = LimitArgs {
            body_read_timeout: Some("20s".parse().unwrap()),
            request_timeout: Some("10s".parse().unwrap()),
            ..LimitArgs::default()
        };
        assert!(format!("{:#}", bad.resolve().unwrap_err()).contains("at least body_read_timeout"));
    }

    #[test]
    fn flags_beat_file() {
        let flags = LimitArgs {
            max_connections: Some(100),
            ..LimitArgs::default()
        };
        let file = LimitArgs {
            max_connections: Some(50),
            request_timeout: Some("5s".parse().unwrap()),
            body_read_timeout: Some("2s".parse().unwrap()),
            ..LimitArgs::default()
        };
        let l = flags.or(file).resolve().unwrap();
        assert_eq!(l.max_connections, 100);
        assert_eq!(l.request_timeout, StdDuration::from_secs(5));
    }
}

//! `sundial-server`: the Sundial control plane.
//!
//! - [`store`]: SQLite (WAL), migrations, the single writer, the read pool,
//!   one file per table, and the run lifecycle (the one owner of run
//!   transitions and job counters)
//! - [`schedule`]: cron / `@every` / `@at` with time zones and DST rules
//! - [`misfire`]: which slots to create after downtime
//! - [`scheduler`]: turns due fires into run slots (primary only)
//! - [`dispatch`]: the in-memory queue, long-polls, leases, lease expiry;
//!   [`receipts`]: assignments a node has not confirmed reading
//! - [`registry`]: the in-memory view of worker nodes
//! - [`api`]: the HTTP API (admin, agent, probes, replica forwarding); its
//!   handlers take only the parts of the server state they use (`api::state`)
//! - [`auth`]: admin API keys; [`secrets`]: the cluster secret; [`validate`]: input checks
//! - [`ha`]: where the role comes from (standalone, static, LiteFS) and the current role
//! - [`retention`]: history pruning; [`metrics`]: Prometheus
//! - [`loops`]: health and retry pacing of the background loops; [`alerts`]: overdue jobs
//! - [`webhooks`]: delivery of events to webhooks (signed, ordered, retried)
//! - [`ui`]: the web console under `/ui/`
//! - [`config`] and [`server`]: settings and wiring; [`dbcheck`]: offline file check
//! - [`overload`]: connection, timeout and concurrency limits; [`listen`]: the HTTP accept loop

pub(crate) mod alerts;
pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod auth_limit;
pub mod config;
pub mod dbcheck;
pub(crate) mod dispatch;
pub mod ha;
pub(crate) mod listen;
pub(crate) mod loops;
pub mod metrics;
pub(crate) mod misfire;
pub(crate) mod overload;
pub(crate) mod receipts;
pub(crate) mod registry;
pub(crate) mod retention;
pub mod schedule;
pub(crate) mod scheduler;
pub(crate) mod secrets;
pub mod server;
pub mod store;
pub(crate) mod ui;
pub(crate) mod validate;
pub(crate) mod webhooks;

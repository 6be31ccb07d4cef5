//! `sundial-server`: the Sundial control plane.
//!
//! - [`store`]: SQLite (WAL), migrations, the single writer, the read pool
//! - [`schedule`]: cron / `@every` / `@at` with time zones and DST rules
//! - [`misfire`]: which slots to create after downtime
//! - [`scheduler`]: turns due fires into run slots
//! - [`api`]: the HTTP API; [`auth`]: API keys; [`validate`]: input checks
//! - [`retention`]: history pruning; [`metrics`]: Prometheus
//! - [`ui`]: the web console under `/ui/`
//! - [`config`] and [`server`]: settings and wiring; [`dbcheck`]: offline file check

pub mod api;
pub mod auth;
pub mod config;
pub mod dbcheck;
pub mod dispatch;
pub mod ha;
pub mod metrics;
pub mod misfire;
pub mod registry;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod store;
pub(crate) mod ui;
pub mod validate;

//! Sundial's wire contract: the JSON shapes that cross process boundaries.
//!
//! Everything here is plain data with serde derives (plus the request signing,
//! the retry backoff and the lock on a process's own directory that both
//! sides share). The server, the daemon,
//! the CLI and the tests all speak these types, so a change here is a change
//! to the public API and must be reflected in `docs/api.md`.

pub mod agent;
pub mod apply;
pub mod backoff;
pub mod cause;
pub mod dir_lock;
pub mod duration;
pub mod error;
pub mod event;
pub mod job;
pub mod label;
pub mod run;
pub mod server_url;
pub mod sign;
pub mod time;
pub mod webhook;

pub use apply::{
    spec_from_value, Action, ApplyRequest, ApplyResponse, JobManifest, PlanEntry, Prune,
};
pub use duration::Duration;
pub use error::{ErrorBody, ErrorDetail};
pub use job::{
    After, Alert, Concurrency, Executor, ExecutorKind, History, Job, JobCounters, JobSpec, Misfire,
    MisfirePolicy, Retries, Target,
};
pub use run::{List, Run, RunState, Trigger};

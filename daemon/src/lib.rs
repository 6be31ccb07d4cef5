//! `sundial-daemon`: the worker that runs jobs.
//!
//! - [`config`]: flags and environment
//! - [`credential`]: join once, keep the node credential in the state dir
//! - [`client`]: signed requests to the server
//! - [`executor`]: exec, shell and http executors with timeouts and output caps
//! - [`runner`]: long-poll, heartbeats, completion, drain
//! - [`results`]: result delivery, batched when several finish together
//! - [`spool`]: results that wait on disk for the server

pub mod client;
pub mod config;
pub(crate) mod credential;
pub(crate) mod executor;
pub(crate) mod results;
pub(crate) mod runner;
pub(crate) mod spool;
pub mod start;

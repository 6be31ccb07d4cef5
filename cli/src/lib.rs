//! `sundial`, the operator CLI: jobs as files (`apply`, `diff`, `export`)
//! through `POST /v1/jobs:apply`, and everyday commands over the admin API.
//!
//! `main.rs` only parses and exits; [`run`] dispatches to the command modules.
//! Rendering is separate from fetching so tests can pin the clock and zone.
//!
//! - [`args`]: the command line (clap); completions and man pages come from it
//! - `config`: contexts and how a connection is resolved; `client`: the HTTP
//!   client and its errors
//! - `cmd`: one module per command group; `manifest`: job files on disk
//! - [`output`], [`render`], [`plan`] and `progress`: what people and
//!   scripts see
//! - [`error`]: the error type and its exit codes

pub mod args;
pub(crate) mod client;
pub(crate) mod cmd;
pub(crate) mod config;
pub mod error;
pub(crate) mod manifest;
pub mod output;
pub mod plan;
pub(crate) mod progress;
pub mod render;
pub(crate) mod strict_value;

pub use error::{CliError, CliResult};

/// Runs one parsed command line.
pub fn run(cli: args::Cli) -> CliResult<()> {
    let ctx = cmd::Ctx::new(cli.global);
    cmd::dispatch(&ctx, cli.command)
}

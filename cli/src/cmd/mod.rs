//! Command implementations: each fetches through [`Client`], renders with
//! [`crate::render`] or prints `-o json|yaml`, and returns a [`CliResult`].

pub mod admin;
pub mod apply;
pub mod config;
pub mod jobs;
pub mod preview;
pub mod runs;

use crate::args::{Command, Global};
use crate::client::Client;
use crate::config::{config_path, resolve, ConfigFile, Overrides};
use crate::error::{CliError, CliResult};
use crate::output::{structured, OutputFormat, View};
use clap::CommandFactory;
use serde::Serialize;
use std::io::Write;
use std::time::Duration;

/// What every command gets: the global flags and the view.
pub struct Ctx {
    pub global: Global,
    pub view: View,
}

impl Ctx {
    pub fn new(global: Global) -> Ctx {
        Ctx {
            global,
            view: View::system(),
        }
    }

    /// The `-o` format, `table` when not given.
    pub fn format(&self) -> OutputFormat {
        self.global.output.unwrap_or(OutputFormat::Table)
    }

    /// A client for the resolved connection, each request bounded by `timeout`.
    pub fn client_with(&self, timeout: Duration) -> CliResult<Client> {
        let file = ConfigFile::load(&config_path()?)?;
        let o = Overrides {
            server: self.global.server.clone(),
            key: std::env::var("SUNDIAL_KEY").ok(),
            key_file: self.global.key_file.clone(),
            ca_file: self.global.ca_file.clone(),
            context: self.global.context.clone(),
        };
        Client::new(&resolve(&o, &file)?, timeout)
    }

    pub fn client(&self) -> CliResult<Client> {
        self.client_with(Duration::from_secs(30))
    }

    /// Prints `value` in the structured format, or `human` for table/wide.
    pub fn print<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> CliResult<()> {
        match self.format() {
            OutputFormat::Table | OutputFormat::Wide => emit(&human()),
            f => emit(&structured(f, value)?),
        }
        Ok(())
    }

    /// Refuses `-o` formats a command does not offer.
    pub fn only(&self, allowed: &[OutputFormat]) -> CliResult<()> {
        let f = self.format();
        if allowed.contains(&f) {
            Ok(())
        } else {
            Err(CliError::usage(format!(
                "-o {} is not available for this command",
                format!("{f:?}").to_lowercase()
            )))
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends quietly.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        // The reader went away (`| head`): stop as a Unix tool killed by
        // SIGPIPE would, 128 + 13. Never 0: `diff | head` must not pass for
        // "no changes", nor `jobs trigger --wait | head` for a success.
        std::process::exit(CLOSED_STDOUT);
    }
}

/// The exit code when stdout closes early: what shells report for a
/// process killed by SIGPIPE.
pub const CLOSED_STDOUT: i32 = 141;

/// Runs one subcommand.
pub fn dispatch(ctx: &Ctx, command: Command) -> CliResult<()> {
    match command {
        Command::Apply(a) => apply::apply(ctx, &a, false),
        Command::Diff(a) => apply::apply(ctx, &a, true),
        Command::Export(a) => apply::export(ctx, &a),
        Command::Jobs(c) => jobs::run(ctx, c),
        Command::Runs(c) => runs::run(ctx, c),
        Command::Preview(a) => preview::run(ctx, &a),
        Command::Nodes(c) => admin::nodes(ctx, c),
        Command::Tokens(c) => admin::tokens(ctx, c),
        Command::Keys(c) => admin::keys(ctx, c),
        Command::Status => admin::status(ctx),
        Command::Config(c) => config::run(ctx, c),
        Command::Completions { shell } => {
            let mut cmd = crate::args::Cli::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "sundial", &mut buf);
            emit(&String::from_utf8_lossy(&buf));
            Ok(())
        }
        Command::Man { out_dir } => {
            let cmd = crate::args::Cli::command();
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| CliError::usage(format!("creating {}: {e}", dir.display())))?;
                    clap_mangen::generate_to(cmd, &dir)
                        .map_err(|e| CliError::Other(anyhow::anyhow!("writing man pages: {e}")))?;
                    Ok(())
                }
                None => {
                    let mut buf = Vec::new();
                    clap_mangen::Man::new(cmd)
                        .render(&mut buf)
                        .map_err(|e| CliError::Other(anyhow::anyhow!("man page: {e}")))?;
                    emit(&String::from_utf8_lossy(&buf));
                    Ok(())
                }
            }
        }
    }
}

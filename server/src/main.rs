//! `sundial-server` binary: parse configuration, set up logging, serve (or
//! check a database file).

use anyhow::Context;
use clap::Parser;
use sundial_server::config::{Cli, Command, LogFormat};

/// jemalloc rather than glibc's malloc: with 10,000 daemons long-polling,
/// each connection's buffers and futures cost about 21 KiB instead of 24
/// (`docs/benchmarks.md` §13); CPU per run is the same or lower.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal (not in a file or the journal), and not
    // when NO_COLOR asks for none.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = args.resolve().context("configuration")?;
            init_logging(settings.log_format);
            let env_key = std::env::var("SUNDIAL_ADMIN_KEY").ok();
            sundial_server::server::serve_until(settings, env_key, shutdown_signal()).await
        }
        Command::Check(args) => match sundial_server::dbcheck::check(&args.db) {
            Ok(report) if args.json => {
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(())
            }
            Ok(report) => {
                print!("{}", report.to_text());
                Ok(())
            }
            // A machine reading --json gets its failure as JSON too.
            Err(e) if args.json => {
                println!("{}", serde_json::to_string_pretty(&e.to_json(&args.db))?);
                std::process::exit(1);
            }
            Err(e) => Err(e.into()),
        },
    }
}

//! `sundial-daemon` binary: parse flags, set up logging, run until SIGTERM.

use clap::Parser;
use sundial_daemon::config::Args;
use tokio_util::sync::CancellationToken;

/// jemalloc rather than glibc's malloc: every run spawns cache-aligned tokio
/// tasks and HTTP buffers, and glibc's aligned and large-bin paths were a
/// fifth of the daemon's CPU at 10,000 runs/s (docs/benchmarks.md §15).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    // Registered before anything else runs: a SIGTERM from here on stops
    // the daemon cleanly, however early it comes.
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    tokio::spawn(async move {
        if let Ok(mut term) = term {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("signal received; draining");
        on_signal.cancel();
    });
    sundial_daemon::start::run(args, stop).await
}

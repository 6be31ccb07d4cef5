//! The `sundial` binary: parse the command line, run it, exit with its code.

use clap::Parser;

fn main() {
    sundial_cli::args::ignore_empty_settings();
    let cli = sundial_cli::args::Cli::parse();
    if let Err(e) = sundial_cli::run(cli) {
        if !matches!(e, sundial_cli::CliError::Exit(_)) {
            eprintln!("error: {e}");
        }
        std::process::exit(e.exit_code());
    }
}

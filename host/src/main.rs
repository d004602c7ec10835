//! `weir` — the command line. Thin: it parses the arguments, sets up logging and hands the
//! command to its module under `cli/`; the work is in the library.
//!
//! Commands print with `writeln!` to a locked stdout: a reader that goes away (`weir dead-letters |
//! head`) ends the command quietly with status 0 instead of a panic.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use weir_host::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "Edge stream processor: ingest MQTT and NATS, run WebAssembly functions, forward compact CBOR"
)]
struct Cli {
    /// How logs are written to stderr.
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: cli::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    match cli.command.execute() {
        Ok(code) => code,
        // The reader went away (`weir dead-letters | head`): it has what it wanted.
        Err(error) if cli::closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

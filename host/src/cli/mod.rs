//! The `weir` subcommands, one module each: a clap `Args` struct and its `execute`, which prints
//! with `writeln!` to a locked stdout and returns the exit status.
//!
//! Exit statuses: 0 done; 1 failed (the error is printed on stderr); [`CONFIG_REFUSED`] for a
//! configuration that was refused. [`Command::execute`] is the one place the async runtime is
//! built, for the commands that need it (`run`, `tap`); the others never start one.

mod check;
mod dead_letters;
mod fleet;
mod outbox;
mod run;
mod tap;

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use tokio::runtime::Runtime;

/// Exit status for a configuration that was refused.
const CONFIG_REFUSED: u8 = 2;

/// What `weir` is asked to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (with the built-in demo configuration when no --config is given).
    Run(run::Args),
    /// Check a configuration file without running anything: everything `run` would refuse
    /// before it contacts a broker (the file, the data directory, every function and its params).
    Check(check::Args),
    /// Show the dead letters kept in a data directory (the gateway must not be running).
    DeadLetters(dead_letters::Args),
    /// Inspect the outbox of a data directory.
    Outbox(outbox::Args),
    /// Fleet management: keys, signed roots, targets and desired documents.
    Fleet(Box<fleet::Args>),
    /// Watch a running gateway's pipeline live: messages, readings, windows, records, dead
    /// letters (from its `[http]` listener; the gateway's data is not touched).
    Tap(tap::Args),
}

impl Command {
    /// Runs the command; the error is one to print (or a closed stdout, see [`closed_pipe`]).
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Run(args) => args.execute(&runtime()?),
            Self::Check(args) => args.execute(),
            Self::DeadLetters(args) => args.execute(),
            Self::Outbox(args) => args.execute(),
            Self::Fleet(args) => args.execute(),
            Self::Tap(args) => args.execute(&runtime()?),
        }
    }
}

/// The process's async runtime (multi-threaded, I/O and timers enabled).
fn runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// Whether `error` is a write to a pipe whose reader has gone. Printing commands write with
/// `writeln!` (not `println!`, which panics then) and end quietly with status 0.
pub fn closed_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

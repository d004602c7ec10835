//! `weir-bench` — measures the machine it runs on: the state store's group commits, the window
//! stage, the sandbox, one pipeline's core, the outbox drain and the gateway's footprint. It
//! runs the host library's own code (and, for `footprint`, the `weir` binary), so it can be
//! copied to a gateway and run there. Figures belong in docs/BENCHMARKS.md; tests never time
//! anything.
//!
//! One module per benchmark, each a clap `Args` struct with an `execute` that measures and
//! prints markdown tables ([`report`] holds what every report shares). Adding a benchmark
//! is adding a module and one variant to [`Command`];
//! one that runs async code is handed the runtime the dispatch in `main` builds, as `commit` is.
//!
//! A reader that goes away (`weir-bench window | head`) ends the command quietly with status 0.

mod commit;
mod drain;
mod engine;
mod footprint;
mod mqtt_ingest;
mod report;
mod sandbox;
mod window;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::runtime::Runtime;
use weir_host::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "weir-bench",
    version,
    about = "Measure this machine running weir (results belong in docs/BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The benchmarks, in the order docs/BENCHMARKS.md reports them.
#[derive(Debug, Subcommand)]
enum Command {
    /// Group commits per second of the state store, and the readings they carry, in `sync`
    /// and `relaxed` durability, with 1 and 8 producers shaped like pipelines.
    Commit(commit::Args),
    /// The window stage alone (readings/s for each kind of window), and what windows and
    /// downsampling make of a day of a realistic signal (points in/out, bytes per reading).
    Window(window::Args),
    /// A WebAssembly operator against the same code native, per batch size; the cost of
    /// crossing the boundary; instantiation and hot-swap times.
    Sandbox(sandbox::Args),
    /// One pipeline's core from recorded SenML: decode → WebAssembly filter → 1 s windows →
    /// CBOR → outbox, one durable commit per batch.
    Engine(engine::Args),
    /// Outbox drain to JetStream with the real sink (needs a NATS server with JetStream; the
    /// stream WEIR_BENCH is created and deleted).
    Drain(drain::Args),
    /// Start-to-ready and idle memory of `weir run` with N and 2N precompiled functions; the
    /// binary's size.
    Footprint(footprint::Args),
    /// The `weir` binary ingesting JSON readings from a mosquitto of its own (started from
    /// PATH) into the outbox, QoS 0 and 1: readings/s and CPU time per reading.
    MqttIngest(mqtt_ingest::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(LogFormat::Text);
    let result = match cli.command {
        Command::Commit(args) => runtime().and_then(|runtime| args.execute(&runtime)),
        Command::Window(args) => args.execute(),
        Command::Sandbox(args) => args.execute(),
        Command::Engine(args) => runtime().and_then(|runtime| args.execute(&runtime)),
        Command::Drain(args) => runtime().and_then(|runtime| args.execute(&runtime)),
        Command::Footprint(args) => args.execute(),
        Command::MqttIngest(args) => args.execute(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The process's async runtime, built here only, for the benchmarks that run async code.
fn runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// The `weir` binary a benchmark runs: `explicit`, else the one beside this executable.
fn weir_binary(explicit: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    match explicit {
        Some(weir) => Ok(weir),
        None => Ok(std::env::current_exe()
            .context("cannot find this executable")?
            .with_file_name(format!("weir{}", std::env::consts::EXE_SUFFIX))),
    }
}

/// Whether `error` is a write to a pipe whose reader has gone.
fn closed_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

//! `weir` — the command line. Thin: parsing arguments and printing; the work is in the library.
//!
//! Commands print with `writeln!` to a locked stdout: a reader that goes away (`weir dead-letters |
//! head`) ends the command quietly with status 0 instead of a panic.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_host::config::{self, Config, ConfigError, Overrides};
use weir_host::preflight::{self, PreflightError, Prepared};
use weir_host::state::inspect::{self, DeadLetters, Inspected};
use weir_host::state::{self, Counter, DeadLetterContent, stats};
use weir_host::{bench, gateway, shutdown, telemetry};

/// Exit status for a configuration that was refused.
const CONFIG_REFUSED: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "Edge stream processor: ingest MQTT and NATS, run WebAssembly functions, forward compact CBOR"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (with the built-in demo configuration when no --config is given).
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `gateway.data_dir`.
        #[arg(long, env = "WEIR_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Overrides `gateway.functions_dir`.
        #[arg(long, env = "WEIR_FUNCTIONS_DIR")]
        functions_dir: Option<PathBuf>,
    },
    /// Check a configuration file without running anything: everything `run` would refuse
    /// before it contacts a broker (the file, the data directory, every function and its params).
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `gateway.data_dir`.
        #[arg(long, env = "WEIR_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Overrides `gateway.functions_dir`.
        #[arg(long, env = "WEIR_FUNCTIONS_DIR")]
        functions_dir: Option<PathBuf>,
    },
    /// Show the dead letters kept in a data directory (the gateway must not be running).
    DeadLetters {
        /// The gateway's data directory.
        #[arg(long, env = "WEIR_DATA_DIR")]
        data_dir: PathBuf,
        /// How many of the newest to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure this machine (results belong in docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Inspect the outbox of a data directory.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Group commits per second of the state store, and the readings they carry, in `sync`
    /// and `relaxed` durability, with 1 and 8 producers shaped like pipelines.
    Commit {
        /// Where the temporary database goes (the disk being measured).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Seconds per configuration.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Readings per record.
        #[arg(long, default_value_t = 100)]
        readings: usize,
    },
    /// The window stage alone (readings/s for each kind of window), and what windows and
    /// downsampling make of a day of a realistic signal (points in/out, bytes per reading).
    Window {
        /// Readings per window kind.
        #[arg(long, default_value_t = 2_000_000)]
        readings: usize,
        /// Series the readings are spread over.
        #[arg(long, default_value_t = 100)]
        series: usize,
        /// Readings per batch.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// A WebAssembly operator against the same code native, per batch size; the cost of
    /// crossing the boundary; instantiation and hot-swap times.
    Sandbox {
        /// Where the built components are.
        #[arg(long, default_value = "target/functions")]
        functions_dir: PathBuf,
        /// Readings per measurement round.
        #[arg(long, default_value_t = 2_000_000)]
        readings: usize,
    },
    /// One pipeline's core from recorded SenML: decode → WebAssembly filter → 1 s windows →
    /// CBOR → outbox, one durable commit per batch.
    Engine {
        /// Where the built components are.
        #[arg(long, default_value = "target/functions")]
        functions_dir: PathBuf,
        /// Readings in the recording.
        #[arg(long, default_value_t = 2_000_000)]
        readings: usize,
    },
    /// Outbox drain to JetStream with the real sink (needs a NATS server with JetStream; the
    /// stream WEIR_BENCH is created and deleted).
    Drain {
        /// The NATS server.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// Where the temporary database goes.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Records to drain.
        #[arg(long, default_value_t = 50_000)]
        records: usize,
        /// Readings per record.
        #[arg(long, default_value_t = 100)]
        readings: usize,
        /// Publishes awaiting their ack at once (the sink's `max_in_flight`).
        #[arg(long, default_value_t = 64)]
        max_in_flight: usize,
    },
    /// Start-to-ready and idle memory of `weir run` with N and 2N precompiled functions; the
    /// binary's size.
    Footprint {
        /// Where the built components are.
        #[arg(long, default_value = "target/functions")]
        functions_dir: PathBuf,
        /// N.
        #[arg(long, default_value_t = 10)]
        functions: usize,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Depth, bytes and oldest age of each stream's outbox, its counters, and recoveries from
    /// damaged files. Reads the database when no gateway runs, else the running gateway's
    /// snapshot (`stats.json`, rewritten every 5 s).
    Stats {
        /// The gateway's data directory.
        #[arg(long, env = "WEIR_DATA_DIR")]
        data_dir: PathBuf,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging();
    let result = match cli.command {
        Command::Run { config, data_dir, functions_dir } => {
            run(config.as_ref(), &Overrides { data_dir, functions_dir })
        }
        Command::Check { config, data_dir, functions_dir } => check(&config, &Overrides { data_dir, functions_dir }),
        Command::DeadLetters { data_dir, limit, json } => dead_letters(&data_dir, limit, json),
        Command::Outbox { command: OutboxCommand::Stats { data_dir, json } } => outbox_stats(&data_dir, json),
        Command::Bench { command: BenchCommand::Commit { dir, seconds, readings } } => {
            bench_commit(&dir, seconds, readings)
        }
        Command::Bench { command: BenchCommand::Window { readings, series, batch } } => {
            bench_window(readings, series, batch)
        }
        Command::Bench { command: BenchCommand::Sandbox { functions_dir, readings } } => {
            bench_sandbox(&functions_dir, readings)
        }
        Command::Bench { command: BenchCommand::Engine { functions_dir, readings } } => {
            bench_engine(&functions_dir, readings)
        }
        Command::Bench { command: BenchCommand::Drain { nats, dir, records, readings, max_in_flight } } => {
            bench_drain(&nats, &dir, records, readings, max_in_flight)
        }
        Command::Bench { command: BenchCommand::Footprint { functions_dir, functions } } => {
            bench_footprint(&functions_dir, functions)
        }
    };
    match result {
        Ok(code) => code,
        // The reader went away (`weir dead-letters | head`): it has what it wanted.
        Err(error) if closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `error` is a write to a pipe whose reader has gone. Printing commands write with
/// `writeln!` (not `println!`, which panics then) and end quietly with status 0.
fn closed_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Loads a configuration and checks everything that can be known without brokers (see
/// `preflight`), printing a refusal the way compilers print errors.
fn load_checked(
    path: Option<&PathBuf>,
    overrides: &Overrides,
    mode: preflight::Mode,
) -> anyhow::Result<Result<(Config, Prepared), ExitCode>> {
    let config = match load(path, overrides) {
        Ok(config) => config,
        Err(code) => return Ok(Err(code)),
    };
    match preflight::check(&config, mode) {
        Ok(prepared) => Ok(Ok((config, prepared))),
        Err(PreflightError::Refused(error)) => {
            eprint!("{error}");
            Ok(Err(ExitCode::from(CONFIG_REFUSED)))
        }
        Err(other) => Err(other.into()),
    }
}

/// Loads a configuration, printing a refusal the way compilers print errors.
fn load(path: Option<&PathBuf>, overrides: &Overrides) -> Result<Config, ExitCode> {
    let loaded = match path {
        Some(path) => config::load(path, overrides),
        None => config::parse(
            "<built-in default>",
            config::DEFAULT_CONFIG,
            &std::env::current_dir().unwrap_or_default(),
            overrides,
        ),
    };
    loaded.map_err(|error| {
        eprint!("{error}");
        if matches!(error, ConfigError::Read { .. }) {
            eprintln!();
        }
        if path.is_none() {
            eprintln!("hint: the built-in configuration runs the example functions; build them with `cargo xtask build-functions`");
        }
        ExitCode::from(CONFIG_REFUSED)
    })
}

fn run(path: Option<&PathBuf>, overrides: &Overrides) -> anyhow::Result<ExitCode> {
    // Signal handlers first: a SIGHUP (`systemctl reload`) or SIGTERM that arrives while the
    // configuration loads or the functions compile must not take the default action.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let signals = {
        let _inside = runtime.enter();
        shutdown::Signals::install().context("cannot listen for signals")?
    };
    // Nothing starts unless the whole check passes. It runs guest code (`init`): on the blocking
    // pool, like every WebAssembly call.
    let (path, overrides) = (path.cloned(), overrides.clone());
    let checked = runtime
        .block_on(runtime.spawn_blocking(move || load_checked(path.as_ref(), &overrides, preflight::Mode::Run)))
        .context("checking the configuration panicked")??;
    let (config, prepared) = match checked {
        Ok(checked) => checked,
        Err(code) => return Ok(code),
    };
    runtime.block_on(async {
        tracing::info!(stage = "gateway", gateway = %config.gateway.id, pipelines = config.pipelines.len(),
            data_dir = %config.gateway.data_dir.display(), version = env!("CARGO_PKG_VERSION"), "weir starting");
        let token = tokio_util::sync::CancellationToken::new();
        let gateway = gateway::run(config, prepared, token.clone(), signals.hangups);
        shutdown::run_until_signalled(gateway, token, signals.stop).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn check(path: &PathBuf, overrides: &Overrides) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let config = match load_checked(Some(path), overrides, preflight::Mode::Check)? {
        Ok((config, _)) => config,
        Err(code) => return Ok(code),
    };
    writeln!(
        out,
        "{}: ok — gateway {}, {} pipeline(s), {} function(s)",
        path.display(),
        config.gateway.id,
        config.pipelines.len(),
        config.functions.len()
    )?;
    for pipeline in &config.pipelines {
        let operators: Vec<&str> = pipeline.operators.iter().map(|o| o.name.as_str()).collect();
        writeln!(out, "  {}: [{}] → {}", pipeline.name, operators.join(", "), pipeline.sink.kind())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn dead_letters(data_dir: &std::path::Path, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if !data_dir.join(state::DATABASE_FILE).is_file() {
        anyhow::bail!("{} holds no weir state (no {})", data_dir.display(), state::DATABASE_FILE);
    }
    // A running gateway holds the database: refused (in use), as it keeps no copy elsewhere.
    let inspected = inspect::dead_letters(data_dir, limit)?;
    let DeadLetters { newest, kept, evicted } = inspected.value;
    if !json {
        let repaired =
            if inspected.repaired { " (left by an unclean stop; read through an in-memory repair)" } else { "" };
        writeln!(out, "{kept} dead letter(s) kept, {evicted} evicted; newest {}{repaired}:", newest.len())?;
    }
    for (id, letter) in newest {
        let mut entry = serde_json::json!({
            "id": id, "pipeline": letter.pipeline, "stage": letter.stage, "reason": letter.reason, "at": letter.at,
            "function": letter.function,
        });
        match &letter.content {
            DeadLetterContent::Message { topic, payload, received_at, size } => {
                entry["topic"] = topic.clone().into();
                entry["size"] = size.unwrap_or(payload.len() as u64).into();
                entry["truncated"] = size.is_some().into();
                entry["payload_hex"] = hex::encode(payload).into();
                entry["payload_text"] = String::from_utf8(payload.clone()).ok().into();
                entry["received_at"] = (*received_at).into();
            }
            DeadLetterContent::Batch { record, readings } => {
                entry["readings"] = (*readings).into();
                if let Ok(decoded) = weir_record::read(record) {
                    let samples: Vec<_> = decoded
                        .batch
                        .iter()
                        .map(|s| serde_json::json!({"series": s.series.name, "ts": s.ts, "value": s.value}))
                        .collect();
                    entry["samples"] = samples.into();
                }
            }
        }
        if json {
            writeln!(out, "{entry}")?;
        } else {
            let function = letter.function.as_deref().map(|f| format!(" ({f})")).unwrap_or_default();
            writeln!(out, "#{id} {} [{}{function}] {}", letter.pipeline, letter.stage, letter.reason)?;
            match &letter.content {
                DeadLetterContent::Message { topic, payload, size, .. } => {
                    let preview = String::from_utf8(payload.clone()).unwrap_or_else(|_| hex::encode(payload));
                    let kept =
                        size.map(|size| format!(" (first {} of {size} bytes)", payload.len())).unwrap_or_default();
                    writeln!(out, "    message on {topic}{kept}: {}", preview.chars().take(120).collect::<String>())?;
                }
                DeadLetterContent::Batch { readings, .. } => writeln!(out, "    batch of {readings} reading(s)")?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn outbox_stats(data_dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if !data_dir.join(state::DATABASE_FILE).is_file() {
        anyhow::bail!("{} holds no weir state (no {})", data_dir.display(), state::DATABASE_FILE);
    }
    let (stats, origin) = match inspect::stats(data_dir) {
        Ok(Inspected { value, repaired: false }) => (value, "from the database".to_owned()),
        Ok(Inspected { value, repaired: true }) => {
            (value, "from the database left by an unclean stop, read through an in-memory repair".to_owned())
        }
        Err(state::StoreError::InUse { .. }) => {
            let stats = stats::read_snapshot(data_dir).with_context(|| {
                format!("a gateway holds {} and its {} cannot be read", data_dir.display(), stats::SNAPSHOT_FILE)
            })?;
            let age = (telemetry::now_nanos() - stats.taken_at).max(0) as f64 / 1e9;
            (stats, format!("from the running gateway's snapshot, {age:.1} s old"))
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&stats)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{} ({origin})", data_dir.display())?;
    for stream in &stats.streams {
        let age = stream.oldest_age_seconds.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"));
        writeln!(
            out,
            "stream {}: {} record(s) waiting, {} bytes on disk; oldest seq {} ({age} old); last seq {}; sink position {}",
            stream.stream,
            stream.records,
            stream.bytes,
            stream.oldest_seq.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            stream.last_seq,
            stream.sink_position
        )?;
        for (name, value) in &stream.counters {
            writeln!(out, "    {name:<20} {value}")?;
        }
        let counter = |wanted: Counter| stream.counters.iter().find(|(name, _)| name == wanted.name()).map(|(_, v)| *v);
        if let (Some(bytes), Some(readings)) = (counter(Counter::BytesCommitted), counter(Counter::ReadingsIn))
            && readings > 0
        {
            writeln!(
                out,
                "    bytes per reading in: {:.3} (records as encoded, before the sink)",
                bytes as f64 / readings as f64
            )?;
        }
    }
    writeln!(out, "dead letters: {} kept, {} evicted", stats.dead_letters_kept, stats.dead_letters_evicted)?;
    for function in &stats.functions {
        let state = match function.quarantined_for_seconds {
            Some(left) => format!("QUARANTINED for another {left:.1} s"),
            None => "running".to_owned(),
        };
        writeln!(
            out,
            "function {} in {} as {}: {state}; {} fault(s), {} in a row, {} quarantine(s){}",
            function.function,
            function.pipeline,
            function.use_name,
            function.faults,
            function.consecutive_faults,
            function.quarantines,
            function.last_fault.as_deref().map(|f| format!("; last fault: {f}")).unwrap_or_default()
        )?;
    }
    for recovery in &stats.recoveries {
        let lost: Vec<String> = recovery.outbox_records_lost.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        writeln!(
            out,
            "recovered from a damaged file at {}: {}; moved to {}; outbox records lost: {}{}",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(recovery.at).unwrap_or(0))
            ),
            recovery.reason,
            recovery.damaged_file.display(),
            if recovery.outbox_loss_known {
                if lost.is_empty() { "none".to_owned() } else { lost.join(", ") }
            } else {
                "unknown".to_owned()
            },
            recovery.seq_floor.map_or_else(String::new, |f| format!("; seqs continue above {f}"))
        )?;
        for table in &recovery.tables {
            writeln!(
                out,
                "    {:<22} {} salvaged, {} rejected{}",
                table.table,
                table.salvaged,
                table.rejected,
                if table.complete { "" } else { " (read back only in part)" }
            )?;
        }
        let ranges = |ranges: &[(u64, u64)]| {
            if ranges.is_empty() {
                return "none".to_owned();
            }
            let text: Vec<String> =
                ranges.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
            text.join(",")
        };
        for stream in &recovery.outbox {
            let lost = stream.lost.as_deref().map_or_else(
                || "unknown".to_owned(),
                |lost| format!("{} ({} seqs)", ranges(lost), lost.iter().map(|(a, b)| b - a + 1).sum::<u64>()),
            );
            writeln!(
                out,
                "    outbox {}: {} records restored ({} from the raw bytes), seqs {}; lost: {}; {} stale copies \
                 dropped; {} restored from conflicting copies; loss basis: {}",
                stream.stream,
                stream.records,
                stream.from_raw_bytes,
                ranges(&stream.recovered),
                lost,
                stream.stale,
                stream.conflicting,
                stream.loss_basis
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_commit(dir: &std::path::Path, seconds: u64, readings: usize) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    writeln!(out, "| durability | producers | readings/record | change sets/s | groups/s | readings/s | MB/s |")?;
    writeln!(out, "|------------|-----------|-----------------|---------------|----------|------------|------|")?;
    for durability in [config::Durability::Sync, config::Durability::Relaxed] {
        for producers in [1, 8] {
            let bench = bench::CommitBench {
                durability,
                producers,
                readings_per_record: readings,
                duration: std::time::Duration::from_secs(seconds),
            };
            let result = runtime.block_on(bench::commit(dir, bench))?;
            let seconds = result.elapsed.as_secs_f64();
            writeln!(
                out,
                "| {durability:?} | {producers} | {readings} | {:.0} | {:.0} | {:.0} | {:.2} |",
                result.change_sets as f64 / seconds,
                result.groups_per_second(),
                result.readings_per_second(),
                result.bytes as f64 / seconds / 1e6
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_window(readings: usize, series: usize, batch: usize) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    use weir_host::window::event_time::WindowKind;
    let second = 1_000_000_000_u64;
    writeln!(
        out,
        "Window stage alone: {readings} readings of {series} series, 1 s apart, batches of {batch}, 1 in 10 late by 3 s"
    )?;
    writeln!(out)?;
    writeln!(out, "| window | readings/s | emissions | state checkpoint |")?;
    writeln!(out, "|--------|------------|-----------|------------------|")?;
    for (name, kind) in [
        ("tumbling 10 s", WindowKind::Tumbling { width: 10 * second }),
        ("sliding 60 s every 10 s", WindowKind::Sliding { width: 60 * second, slide: 10 * second }),
        // Readings 1 s apart: every reading is a session of its own, the most windows per reading.
        ("session, gap 0.9 s", WindowKind::Session { gap: 9 * second / 10 }),
    ] {
        let result = bench::window::throughput(kind, series, batch, readings);
        writeln!(
            out,
            "| {name} | {:.0} | {} | {} B |",
            result.readings_per_second(),
            result.emissions,
            result.checkpoint_bytes
        )?;
    }
    writeln!(out)?;
    writeln!(out, "One day at 1 Hz of a temperature-like signal, 10 series, in records of 10 minutes:")?;
    writeln!(out)?;
    writeln!(out, "| sent as | points in | points out | bytes/reading |")?;
    writeln!(out, "|---------|-----------|------------|---------------|")?;
    for c in bench::window::compression(10) {
        writeln!(out, "| {} | {} | {} | {:.3} |", c.method, c.points_in, c.points_out, c.bytes_per_reading)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Where and when a bench ran, for docs/BENCHMARKS.md.
fn print_machine(out: &mut impl Write) -> std::io::Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let build = if cfg!(debug_assertions) { "debug build: figures are not representative" } else { "release build" };
    writeln!(
        out,
        "{} — {cpu}, {cores} core(s), {} {}, weir {} ({build})",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        std::env::consts::OS,
        std::env::consts::ARCH,
        env!("CARGO_PKG_VERSION")
    )?;
    writeln!(out)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn bench_sandbox(functions_dir: &std::path::Path, readings: usize) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    print_machine(&mut out)?;
    let shapes = [(1, 1), (64, 16), (1024, 16), (16384, 16), (1024, 1), (1024, 100)];
    let result = bench::sandbox::run(functions_dir, &shapes, readings)?;
    writeln!(
        out,
        "| batch | series | native ns/reading | WASM ns/reading | native/WASM (target ≥ 0.5) | boundary ns/reading |"
    )?;
    writeln!(
        out,
        "|------:|-------:|------------------:|----------------:|---------------------------:|--------------------:|"
    )?;
    for row in &result.batches {
        writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} ({}) | {:.2}{} |",
            row.batch,
            row.series,
            row.native_ns,
            row.wasm_ns,
            row.speed_ratio(),
            verdict(row.speed_ratio() >= 0.5),
            row.identity_ns,
            if row.batch == 1024 && row.series == 16 {
                format!(" (target ≤ 15: {})", verdict(row.identity_ns <= 15.0))
            } else {
                String::new()
            }
        )?;
    }
    let (alone, beside) = result.neighbour;
    writeln!(out)?;
    writeln!(
        out,
        "unit-convert at 1024 readings per batch: {alone:.2} ns/reading alone, {beside:.2} ns/reading while a neighbour \
         faulted {} times at its 10 ms time limit ({:+.0} %)",
        result.neighbour_faults,
        (beside / alone - 1.0) * 100.0
    )?;
    let i = result.instances;
    writeln!(out)?;
    writeln!(out, "| instances | median | target |")?;
    writeln!(out, "|-----------|-------:|--------|")?;
    writeln!(
        out,
        "| store and instance of a loaded function | {:.1} µs | ≤ 10 µs ({}) |",
        i.instantiate_us,
        verdict(i.instantiate_us <= 10.0)
    )?;
    writeln!(out, "| the same, ready for calls (`init` parses the parameters) | {:.1} µs | — |", i.start_us)?;
    writeln!(
        out,
        "| hot swap (replace the running version) | {:.1} µs | ≤ 5 ms ({}) |",
        i.hot_swap_us,
        verdict(i.hot_swap_us <= 5000.0)
    )?;
    writeln!(out, "| load a function from the compiled cache | {:.1} µs | — |", i.load_cached_us)?;
    Ok(ExitCode::SUCCESS)
}

fn bench_engine(functions_dir: &std::path::Path, readings: usize) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    print_machine(&mut out)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let result = runtime.block_on(bench::engine::run(functions_dir, readings, 100, 100))?;
    let rate = result.readings_per_second();
    writeln!(out, "| readings | messages | records | windows | bytes | seconds | readings/s (target ≥ 1 000 000) |")?;
    writeln!(out, "|---------:|---------:|--------:|--------:|------:|--------:|--------------------------------:|")?;
    writeln!(
        out,
        "| {} | {} | {} | {} | {} | {:.3} | {rate:.0} ({}) |",
        result.readings,
        result.messages,
        result.records,
        result.windows,
        result.bytes,
        result.elapsed.as_secs_f64(),
        verdict(rate >= 1e6)
    )?;
    Ok(ExitCode::SUCCESS)
}

fn bench_drain(
    nats: &str,
    dir: &std::path::Path,
    records: usize,
    readings: usize,
    max_in_flight: usize,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    print_machine(&mut out)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let result = runtime.block_on(bench::drain(dir, nats, records, readings, max_in_flight))?;
    writeln!(out, "max_in_flight = {max_in_flight}")?;
    writeln!(out)?;
    let fill_rate = result.readings as f64 / result.fill.as_secs_f64();
    let drain_rate = result.records_per_second();
    writeln!(
        out,
        "| records | readings/record | fill: readings/s (bulk, target ≥ 500 000) | drain: records/s (target ≥ 150 000) | drain: readings/s |"
    )?;
    writeln!(
        out,
        "|--------:|----------------:|------------------------------------------:|------------------------------------:|------------------:|"
    )?;
    writeln!(
        out,
        "| {} | {readings} | {fill_rate:.0} ({}) | {drain_rate:.0} ({}) | {:.0} |",
        result.records,
        verdict(fill_rate >= 500_000.0),
        verdict(drain_rate >= 150_000.0),
        result.readings as f64 / result.drain.as_secs_f64()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn bench_footprint(functions_dir: &std::path::Path, functions: usize) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    print_machine(&mut out)?;
    let result = bench::footprint::run(functions_dir, functions)?;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    writeln!(
        out,
        "| functions | start to ready (target ≤ 200 ms) | idle RSS (target ≤ 15 MiB at 10) | of which anonymous | of which file-backed |"
    )?;
    writeln!(
        out,
        "|----------:|--------------------------------:|---------------------------------:|-------------------:|---------------------:|"
    )?;
    for run in result.runs {
        let ms = run.start_to_ready.as_secs_f64() * 1e3;
        writeln!(
            out,
            "| {} | {ms:.1} ms ({}) | {:.1} MiB{} | {:.1} MiB | {:.1} MiB |",
            run.functions,
            verdict(ms <= 200.0),
            mib(run.idle_rss),
            if run.functions == 10 { format!(" ({})", verdict(mib(run.idle_rss) <= 15.0)) } else { String::new() },
            mib(run.idle_rss_anon),
            mib(run.idle_rss_file)
        )?;
    }
    let [all, anon, file] = result.rss_per_function();
    writeln!(out)?;
    writeln!(
        out,
        "RSS per extra function: {:.0} KiB (target ≤ 200 KiB: {}); anonymous {:.0} KiB, file-backed {:.0} KiB",
        all / 1024.0,
        verdict(all <= 200.0 * 1024.0),
        anon / 1024.0,
        file / 1024.0
    )?;
    writeln!(
        out,
        "binary: {:.1} MiB; stripped: {} (target ≤ 12 MiB)",
        mib(result.binary),
        result.stripped.map_or_else(
            || "strip not installed".to_owned(),
            |s| format!("{:.1} MiB ({})", mib(s), verdict(mib(s) <= 12.0))
        )
    )?;
    Ok(ExitCode::SUCCESS)
}

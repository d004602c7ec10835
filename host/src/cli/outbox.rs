//! `weir outbox stats`: depth, bytes and oldest age of each stream's outbox, its counters, the
//! functions' fault records, the sensors' health and recoveries from damaged files. Reads the database when no
//! gateway runs (also after a crash, through an in-memory repair, without changing the file),
//! else the running gateway's snapshot (`stats.json`, rewritten every 5 s).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use weir_host::state::inspect::{self, Inspected};
use weir_host::state::stats::{self, StreamStats};
use weir_host::state::{self, Counter, Recovery};
use weir_host::telemetry;

/// `weir outbox` and its subcommand.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
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

impl Args {
    /// Runs the subcommand.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Stats { data_dir, json } => print_stats(&data_dir, json),
        }
    }
}

/// Prints the statistics of `data_dir`: a JSON document, or text.
fn print_stats(data_dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
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
        print_stream(&mut out, stream)?;
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
    for sensor in &stats.sensors {
        let faults: Vec<String> = sensor.faults.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        writeln!(
            out,
            "sensor {} in {} ({} on {}): {}; {} sample(s), {} failed, {} tick(s) skipped, {} reinit(s); faults: {}{}",
            sensor.device,
            sensor.pipeline,
            sensor.part,
            sensor.bus,
            sensor.state.to_uppercase(),
            sensor.samples,
            sensor.failed_samples,
            sensor.skipped_ticks,
            sensor.reinits,
            if faults.is_empty() { "none".to_owned() } else { faults.join(", ") },
            sensor.last_fault.as_deref().map(|f| format!("; last fault: {f}")).unwrap_or_default()
        )?;
    }
    for recovery in &stats.recoveries {
        print_recovery(&mut out, recovery)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One stream's outbox and counters.
fn print_stream(out: &mut impl Write, stream: &StreamStats) -> std::io::Result<()> {
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
    Ok(())
}

/// One recovery from a damaged file: what was salvaged, table by table, and what the outbox lost.
fn print_recovery(out: &mut impl Write, recovery: &Recovery) -> std::io::Result<()> {
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
    Ok(())
}

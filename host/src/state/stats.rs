//! Stats: what `weir outbox stats` shows — per stream the outbox's depth, disk bytes and oldest
//! record's age, its position and counters; the dead letters; the recoveries from damaged files;
//! and, from a running gateway, how its functions are doing (faults, quarantines).
//!
//! Two ways to get them, one shape ([`Stats`]):
//! - from the database ([`super::inspect::stats`]) — only when no gateway holds it; a file left
//!   by a crash is read through an in-memory repair;
//! - from `<data_dir>/stats.json`, which a running gateway rewrites every few seconds
//!   ([`write_snapshot`], atomically: a temporary file renamed over the old one).
//!
//! **Invariant:** reading stats never writes to the database and never repairs it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::outbox::{OUTBOX, OUTBOX_USAGE, STREAM_COUNTERS};
use super::salvage::{self, Recovery};
use super::{COUNTERS, Counter, DEAD_LETTERS, DEAD_LETTERS_EVICTED, OrStore, SINK_POSITIONS, STREAM_SEQ, StoreError};

/// File name of the snapshot a running gateway keeps in its data dir.
pub const SNAPSHOT_FILE: &str = "stats.json";

/// Everything `weir outbox stats` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// When they were taken (ns since the Unix epoch).
    pub taken_at: i64,
    /// Per stream, in name order.
    pub streams: Vec<StreamStats>,
    /// Dead letters kept.
    pub dead_letters_kept: u64,
    /// Dead letters evicted to respect the capacity.
    pub dead_letters_evicted: u64,
    /// Recoveries from damaged files, oldest first.
    pub recoveries: Vec<Recovery>,
    /// The running gateway's function uses (only in its snapshot: the database does not keep
    /// them).
    #[serde(default)]
    pub functions: Vec<FunctionStatus>,
    /// The running gateway's sensors (only in its snapshot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensors: Vec<SensorStatus>,
}

/// How one sensor on the gateway's own buses is doing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorStatus {
    /// The pipeline it feeds.
    pub pipeline: String,
    /// Its name there.
    pub device: String,
    /// The part (`bme280`, …).
    pub part: String,
    /// Its bus and address (`/dev/i2c-1 0x76`, `simulated i2c 0x48`).
    pub bus: String,
    /// `starting`, `ok`, `degraded` or `down` (see docs/sensors.md).
    pub state: String,
    /// Since when (ns since the Unix epoch).
    pub since: i64,
    /// Samples taken.
    pub samples: u64,
    /// Samples lost: every attempt at them failed.
    pub failed_samples: u64,
    /// Ticks skipped because the bus was busy or stalled.
    pub skipped_ticks: u64,
    /// Times it was initialised again after failing.
    pub reinits: u64,
    /// Faults by kind (`nack`, `bus`, `io`, `data`, `stuck`, `slow`), every failed attempt counted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub faults: BTreeMap<String, u64>,
    /// The last fault, `<kind>: <what>`.
    pub last_fault: Option<String>,
    /// When the last sample was taken (ns since the Unix epoch).
    pub last_sample_at: Option<i64>,
}

/// How one use of a function in a pipeline is doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionStatus {
    /// The pipeline.
    pub pipeline: String,
    /// The use's name in it.
    pub use_name: String,
    /// The version running, `<id>@<digest prefix>`.
    pub function: String,
    /// Faults in a row.
    pub consecutive_faults: u32,
    /// Faults since the gateway started.
    pub faults: u64,
    /// Those faults by kind (`timeout`, `memory`, `panic`, …); absent when there were none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Quarantines since the gateway started.
    pub quarantines: u64,
    /// Time left in the current quarantine, seconds.
    pub quarantined_for_seconds: Option<f64>,
    /// The last fault's reason.
    pub last_fault: Option<String>,
}

/// One stream's outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamStats {
    /// The stream (pipeline).
    pub stream: String,
    /// Records waiting in the outbox.
    pub records: u64,
    /// The disk bytes charged for them: what the outbox's `max_bytes` counts (their pages in
    /// the data file, at most; see `outbox::disk_bytes`).
    pub bytes: u64,
    /// Seq of the oldest waiting record.
    pub oldest_seq: Option<u64>,
    /// When the oldest reading-bearing record it stands for was encoded (ns since the epoch).
    pub oldest_encoded_at: Option<i64>,
    /// Age of that record when the stats were taken, seconds.
    pub oldest_age_seconds: Option<f64>,
    /// Highest seq assigned.
    pub last_seq: u64,
    /// The central broker's position of the last confirmed record.
    pub sink_position: u64,
    /// Every counter of [`Counter::ALL`], by name, in that order.
    pub counters: Vec<(String, u64)>,
}

/// Stats from a read transaction.
pub(super) fn collect(txn: &ReadTransaction) -> Result<Stats, StoreError> {
    let now = crate::telemetry::now_nanos();
    let usage = txn.open_table(OUTBOX_USAGE).or_store("read stats")?;
    let seqs = txn.open_table(STREAM_SEQ).or_store("read stats")?;
    let counters = txn.open_table(STREAM_COUNTERS).or_store("read stats")?;
    let positions = txn.open_table(SINK_POSITIONS).or_store("read stats")?;
    let outbox = txn.open_table(OUTBOX).or_store("read stats")?;

    let mut names = BTreeSet::new();
    for entry in usage.iter().or_store("read stats")? {
        names.insert(entry.or_store("read stats")?.0.value().to_owned());
    }
    for entry in seqs.iter().or_store("read stats")? {
        names.insert(entry.or_store("read stats")?.0.value().to_owned());
    }
    for entry in counters.iter().or_store("read stats")? {
        names.insert(entry.or_store("read stats")?.0.value().0.to_owned());
    }

    let mut streams = Vec::with_capacity(names.len());
    for stream in names {
        let (records, bytes) = usage.get(stream.as_str()).or_store("read stats")?.map_or((0, 0), |v| v.value());
        let oldest = outbox.range((stream.as_str(), 0)..=(stream.as_str(), u64::MAX)).or_store("read stats")?.next();
        let (oldest_seq, oldest_encoded_at) = match oldest {
            Some(entry) => {
                let (key, body) = entry.or_store("read stats")?;
                let encoded_at = weir_record::read(body.value()).ok().map(|record| record.span().first_encoded_at);
                (Some(key.value().1), encoded_at)
            }
            None => (None, None),
        };
        let mut values = Vec::with_capacity(Counter::ALL.len());
        for counter in Counter::ALL {
            let value =
                counters.get((stream.as_str(), counter.name())).or_store("read stats")?.map_or(0, |v| v.value());
            values.push((counter.name().to_owned(), value));
        }
        streams.push(StreamStats {
            records,
            bytes,
            oldest_seq,
            oldest_encoded_at,
            oldest_age_seconds: oldest_encoded_at.map(|at| (now - at).max(0) as f64 / 1e9),
            last_seq: seqs.get(stream.as_str()).or_store("read stats")?.map_or(0, |v| v.value()),
            sink_position: positions.get(stream.as_str()).or_store("read stats")?.map_or(0, |v| v.value()),
            counters: values,
            stream,
        });
    }

    let dead_letters_kept = txn.open_table(DEAD_LETTERS).or_store("read stats")?.len().or_store("read stats")?;
    let dead_letters_evicted = txn
        .open_table(COUNTERS)
        .or_store("read stats")?
        .get(DEAD_LETTERS_EVICTED)
        .or_store("read stats")?
        .map_or(0, |v| v.value());
    let recoveries = salvage::recoveries(txn)?;
    Ok(Stats {
        taken_at: now,
        streams,
        dead_letters_kept,
        dead_letters_evicted,
        recoveries,
        functions: Vec::new(),
        sensors: Vec::new(),
    })
}

/// Replaces `<data_dir>/stats.json` with `stats`, atomically.
pub fn write_snapshot(data_dir: &Path, stats: &Stats) -> std::io::Result<()> {
    let temporary = data_dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    std::fs::write(&temporary, serde_json::to_vec_pretty(stats).map_err(std::io::Error::other)?)?;
    std::fs::rename(&temporary, data_dir.join(SNAPSHOT_FILE))
}

/// The snapshot a running gateway last wrote to `data_dir`.
pub fn read_snapshot(data_dir: &Path) -> std::io::Result<Stats> {
    let bytes = std::fs::read(data_dir.join(SNAPSHOT_FILE))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

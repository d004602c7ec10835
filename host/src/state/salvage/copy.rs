//! Copying a damaged file table by table: [`Salvaged`] holds every entry redb still reads back
//! from it (through a read-only open, or else from a copy redb repaired), and how far each table
//! read — to its end, or up to the first error or panic. What it holds goes into the fresh file
//! (see `salvage`); the outbox's records are sorted out first (see `choose`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::{RECOVERIES, Recovery, TableSalvage, panic_message};
use crate::state::outbox::{OUTBOX, OUTBOX_USAGE, PUBLISH_RESERVATIONS, STREAM_COUNTERS};
use crate::state::{
    CACHE_BYTES, COUNTERS, DEAD_LETTERS, DeadLetter, FLEET, FUNCTION_STATE, RECENT_DELIVERIES, SINK_POSITIONS,
    STREAM_SEQ, outbox_floor_key,
};

/// (namespace, key) of a function state entry.
type StateKey = (String, Vec<u8>);

/// Entries read back from a damaged file.
#[derive(Default)]
pub(super) struct Salvaged {
    pub(super) tables: Vec<TableSalvage>,
    pub(super) function_state: Vec<(StateKey, Vec<u8>)>,
    pub(super) outbox: Vec<((String, u64), Vec<u8>, weir_record::Record)>,
    /// Every key redb read in the outbox table, its record kept or not.
    pub(super) outbox_keys: std::collections::BTreeSet<(String, u64)>,
    pub(super) usage: Option<Vec<(String, u64)>>,
    pub(super) reservations: Vec<((String, u64), u64)>,
    pub(super) stream_counters: Vec<((String, String), u64)>,
    pub(super) stream_seq: Vec<(String, u64)>,
    pub(super) counters: Vec<(String, u64)>,
    pub(super) sink_positions: Vec<(String, u64)>,
    pub(super) recent_deliveries: Vec<((String, u64), Vec<u8>)>,
    pub(super) dead_letters: Vec<(u64, Vec<u8>)>,
    pub(super) recoveries: Vec<(u64, Vec<u8>)>,
    pub(super) fleet: Vec<(String, Vec<u8>)>,
}

impl Salvaged {
    pub(super) fn complete(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t.table == table && t.complete)
    }

    /// The stream's outbox floor (see `outbox_floor_key`), when known.
    pub(super) fn outbox_floor(&self, stream: &str) -> Option<u64> {
        let key = outbox_floor_key(stream);
        self.counters.iter().find(|(name, _)| *name == key).map(|(_, v)| *v)
    }

    /// Copies of the stream's seqs below this are stale: its outbox floor, or else — when redb
    /// read the whole outbox table — the lowest seq redb read (nothing below it was held).
    pub(super) fn stale_below(&self, stream: &str) -> Option<u64> {
        self.outbox_floor(stream).or_else(|| {
            let lowest = self.outbox_keys.range((stream.to_owned(), 0)..).next().filter(|(s, _)| s == stream);
            self.complete(OUTBOX.name()).then(|| lowest.map(|(_, seq)| *seq)).flatten()
        })
    }

    /// Lets redb repair a copy of the damaged file (the original stays as it was) and reads that.
    pub(super) fn read_repaired_copy(&mut self, damaged: &Path) {
        let copy = damaged.with_extension("repairing");
        let repaired = std::fs::copy(damaged, &copy).map_err(|e| e.to_string()).and_then(|_| {
            catch_unwind(AssertUnwindSafe(|| Database::builder().set_cache_size(CACHE_BYTES).open(&copy)))
                .map_err(|panic| panic_message(&panic))?
                .map_err(|e| e.to_string())
        });
        match repaired {
            Ok(source) => {
                self.read(&source);
                drop(source);
            }
            Err(e) => {
                tracing::error!(stage = "state", error = %e, "the damaged file cannot be repaired either; nothing is recovered");
            }
        }
        let _ = std::fs::remove_file(&copy);
    }

    pub(super) fn read(&mut self, source: &impl ReadableDatabase) {
        self.function_state = self.table(source, FUNCTION_STATE, |(namespace, key), value| {
            Some(((namespace.to_owned(), key.to_vec()), value.to_vec()))
        });
        let keys = std::cell::RefCell::new(std::collections::BTreeSet::new());
        self.outbox = self.table(source, OUTBOX, |(stream, seq), body| {
            keys.borrow_mut().insert((stream.to_owned(), seq));
            let record = weir_record::read(body).ok()?;
            (record.header.stream == stream && record.header.seq == seq)
                .then(|| ((stream.to_owned(), seq), body.to_vec(), record))
        });
        self.outbox_keys = keys.into_inner();
        let usage = self.table(source, OUTBOX_USAGE, |stream, (records, _bytes)| Some((stream.to_owned(), records)));
        self.usage = self.complete(OUTBOX_USAGE.name()).then_some(usage);
        self.reservations = self
            .table(source, PUBLISH_RESERVATIONS, |(stream, from), through| Some(((stream.to_owned(), from), through)));
        self.stream_counters = self.table(source, STREAM_COUNTERS, |(stream, name), value| {
            Some(((stream.to_owned(), name.to_owned()), value))
        });
        self.stream_seq = self.table(source, STREAM_SEQ, |stream, seq| Some((stream.to_owned(), seq)));
        self.counters = self.table(source, COUNTERS, |name, value| Some((name.to_owned(), value)));
        self.sink_positions =
            self.table(source, SINK_POSITIONS, |stream, position| Some((stream.to_owned(), position)));
        self.recent_deliveries = self.table(source, RECENT_DELIVERIES, |(source, order), identity| {
            Some(((source.to_owned(), order), identity.to_vec()))
        });
        self.dead_letters = self.table(source, DEAD_LETTERS, |id, letter| {
            DeadLetter::from_bytes(letter).ok().map(|_| (id, letter.to_vec()))
        });
        self.fleet = self.table(source, FLEET, |key, value| Some((key.to_owned(), value.to_vec())));
        self.recoveries = self.table(source, RECOVERIES, |id, report| {
            serde_json::from_slice::<Recovery>(report).ok().map(|_| (id, report.to_vec()))
        });
    }

    /// Reads `table` entry by entry until its end or the first error (or panic), keeping what
    /// `keep` accepts, and notes how far it got.
    fn table<K, V, T>(
        &mut self,
        source: &impl ReadableDatabase,
        table: TableDefinition<'_, K, V>,
        keep: impl Fn(K::SelfType<'_>, V::SelfType<'_>) -> Option<T>,
    ) -> Vec<T>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
    {
        let mut kept = Vec::new();
        let mut rejected = 0;
        let complete = catch_unwind(AssertUnwindSafe(|| -> Result<(), redb::Error> {
            let txn = source.begin_read()?;
            let opened = match txn.open_table(table) {
                Ok(opened) => opened,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            for entry in opened.iter()? {
                let (key, value) = entry?;
                match keep(key.value(), value.value()) {
                    Some(item) => kept.push(item),
                    None => rejected += 1,
                }
            }
            Ok(())
        }));
        let complete = match complete {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(stage = "state", table = table.name(), salvaged = kept.len(), error = %e, "a damaged table reads back only in part");
                false
            }
            Err(panic) => {
                tracing::warn!(stage = "state", table = table.name(), salvaged = kept.len(), error = %panic_message(&panic),
                    "a damaged table reads back only in part");
                false
            }
        };
        self.tables.push(TableSalvage {
            table: table.name().to_owned(),
            salvaged: kept.len() as u64,
            rejected,
            complete,
        });
        kept
    }
}

//! The committer: the one thread that owns every write transaction, and [`Committer`], the
//! cloneable handle that hands it change sets.
//!
//! **Invariant (one writer, group commit):** the thread takes every [`ChangeSet`] waiting in its
//! queue (at most [`MAX_GROUP`]), applies them in arrival order in *one* write transaction and
//! commits once, then answers each sender with the group (transaction) that applied it. A change
//! set is all-or-nothing; one whose records do not fit in their outbox is left out of the group
//! whole and handed back refused.
//!
//! **Invariant (durability):** under `durability = "sync"` every group is durable when it is
//! answered; under `relaxed` a group committed while more work waits is left without an fsync and
//! made durable by a following group — at the latest [`RELAXED_SYNC_INTERVAL`] later, at once when
//! the queue is empty. Callers wait for [`Applied::is_durable`] before anything that depends on a
//! change set leaves the process.
//!
//! A failed commit applies nothing: its change sets go back to their senders, who retry with
//! backoff, and the database is reopened (see `database`). Under `relaxed`, a failure while
//! earlier groups are not durable yet ends the process with [`EXIT_DURABILITY_LOST`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Durability as RedbDurability, ReadableTable, ReadableTableMetadata};
use tokio::sync::{oneshot, watch};

use super::database::DatabaseSlot;
use super::outbox::{self, Outbox};
use super::{
    COUNTERS, ChangeSet, Counter, DEAD_LETTERS, DEAD_LETTERS_BYTES, DEAD_LETTERS_EVICTED, DEAD_LETTERS_NEXT_ID, FLEET,
    FUNCTION_STATE, FUNCTION_STATE_USAGE, OrStore, RECENT_DELIVERIES, SINK_POSITIONS, STREAM_SEQ, StoreError,
    StoreOptions, add_to_counter, outbox_floor_key, sink_record_limit_key, state_entry_bytes,
};
use crate::config::Durability;

/// Change sets taken into one transaction at most.
const MAX_GROUP: usize = 256;
/// In `relaxed` mode, the longest time a commit stays non-durable while the committer is busy
/// (when it is idle, it makes every commit durable at once).
const RELAXED_SYNC_INTERVAL: Duration = Duration::from_millis(200);
/// Exit status of a process whose `relaxed` store lost commits it had not made durable yet
/// (nothing acknowledged was lost: acknowledgements wait for durability).
pub const EXIT_DURABILITY_LOST: i32 = 75;
/// Change sets waiting for the committer at most.
const QUEUE: usize = 1024;

/// Starts the committer thread on `db`; it ends when every [`Committer`] clone is dropped.
pub(super) fn start(
    db: Arc<DatabaseSlot>,
    path: PathBuf,
    groups: Arc<AtomicU64>,
    options: StoreOptions,
) -> std::io::Result<(Committer, JoinHandle<()>)> {
    let (queue, requests) = flume::bounded(QUEUE);
    let (durable_tx, durable) = watch::channel(0);
    let writer = Writer {
        db,
        path,
        groups,
        options,
        last_durable: Instant::now(),
        pending_non_durable: false,
        durable: durable_tx,
    };
    let thread = std::thread::Builder::new().name("weir-committer".into()).spawn(move || writer.run(requests))?;
    Ok((Committer { queue, durable }, thread))
}

/// Hands change sets to the committer thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Committer {
    queue: flume::Sender<Request>,
    /// The newest group (write transaction) known to be durable.
    durable: watch::Receiver<u64>,
}

impl Committer {
    /// Commits `changes` (grouped with whatever else is waiting) and returns once they are
    /// durable: at once under `sync`, after the next durable flush under `relaxed`.
    ///
    /// On failure nothing of `changes` was applied, and they come back with the error so the
    /// caller can retry without having kept a copy.
    pub async fn commit(&self, changes: ChangeSet) -> Result<(), CommitError> {
        let applied = self.commit_applied(changes).await?;
        applied.durable().await.map_err(|error| CommitError { error, changes: ChangeSet::default() })
    }

    /// Commits `changes` and returns as soon as they are applied — visible to readers and to
    /// later change sets — with a handle that tells when they are durable. Under `sync` they
    /// already are; under `relaxed` a crash before the next durable flush undoes them, so
    /// nothing that depends on them may leave the process (an acknowledgement upstream, a
    /// publish) before [`Applied::is_durable`].
    pub async fn commit_applied(&self, changes: ChangeSet) -> Result<Applied, CommitError> {
        let (reply, answer) = oneshot::channel();
        if let Err(flume::SendError((changes, _))) = self.queue.send_async((changes, reply)).await {
            return Err(CommitError { error: StoreError::CommitterStopped, changes });
        }
        match answer.await {
            Ok(Ok(group)) => Ok(Applied { group, durable: self.durable.clone() }),
            Ok(Err((Refusal::Failed(reason), changes))) => {
                Err(CommitError { error: StoreError::CommitFailed { reason }, changes })
            }
            Ok(Err((Refusal::Full { stream, max_bytes }, changes))) => {
                Err(CommitError { error: StoreError::OutboxFull { stream, max_bytes }, changes })
            }
            Err(_) => Err(CommitError { error: StoreError::CommitterStopped, changes: ChangeSet::default() }),
        }
    }

    /// Whether the committer answers: an empty change set committed (and durable) within
    /// `within`; otherwise why not. What the service watchdog and `/healthz` ask.
    pub async fn answers_within(&self, within: Duration) -> Result<(), String> {
        match tokio::time::timeout(within, self.commit(ChangeSet::default())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the committer failed: {}", e.error)),
            Err(_) => Err(format!("the committer did not answer within {within:?}")),
        }
    }

    /// The newest group known to be durable; changes whenever a durable commit completes.
    pub fn durable_groups(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }
}

/// A change set applied by the committer, in write transaction (group) `group`.
#[derive(Clone, Debug)]
pub struct Applied {
    group: u64,
    durable: watch::Receiver<u64>,
}

impl Applied {
    /// The write transaction that applied it.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// True once a durable commit covers it.
    pub fn is_durable(&self) -> bool {
        *self.durable.borrow() >= self.group
    }

    /// Waits until a durable commit covers it.
    pub async fn durable(mut self) -> Result<(), StoreError> {
        let group = self.group;
        self.durable.wait_for(|durable| *durable >= group).await.map(|_| ()).map_err(|_| StoreError::CommitterStopped)
    }
}

/// A commit that did not happen, with the change set that was not applied.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CommitError {
    /// Why.
    pub error: StoreError,
    /// The changes, unapplied (empty when the committer vanished while holding them).
    pub changes: ChangeSet,
}

/// The committer thread's state.
struct Writer {
    db: Arc<DatabaseSlot>,
    /// The database file, to reopen after a failed commit.
    path: PathBuf,
    groups: Arc<AtomicU64>,
    options: StoreOptions,
    last_durable: Instant,
    /// A non-durable commit happened since the last durable one.
    pending_non_durable: bool,
    /// The newest group made durable, for those waiting on it.
    durable: watch::Sender<u64>,
}

/// Why the committer did not apply a change set.
#[derive(Clone, Debug)]
enum Refusal {
    /// The transaction failed.
    Failed(String),
    /// The change set's records did not fit in this stream's outbox.
    Full { stream: String, max_bytes: u64 },
}

/// A change set and where to answer: the group that applied it, or why it was not applied.
type Request = (ChangeSet, oneshot::Sender<Result<u64, (Refusal, ChangeSet)>>);

impl Writer {
    #[allow(clippy::needless_pass_by_value)] // the thread owns its end of the queue
    fn run(mut self, requests: flume::Receiver<Request>) {
        loop {
            // Under `relaxed`, a non-durable commit is made durable at the latest when the
            // interval has passed, even if nothing else arrives.
            let wait = if self.pending_non_durable {
                RELAXED_SYNC_INTERVAL.saturating_sub(self.last_durable.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            let first = match requests.recv_timeout(wait) {
                Ok(request) => request,
                Err(flume::RecvTimeoutError::Timeout) => {
                    self.flush_if_relaxed();
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            // Under `relaxed`, a group is left non-durable only while more work is already
            // waiting (the next group's durable commit will cover it) and the interval allows.
            let durable = match self.options.durability {
                Durability::Sync => true,
                Durability::Relaxed => requests.is_empty() || self.last_durable.elapsed() >= RELAXED_SYNC_INTERVAL,
            };
            let (changes, replies): (Vec<ChangeSet>, Vec<_>) = group.into_iter().unzip();
            let started = Instant::now();
            let applied = self.apply(&changes, durable);
            metrics::histogram!("weir_commit_seconds", "durable" => if durable { "yes" } else { "no" })
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("weir_commit_group_change_sets").record(changes.len() as f64);
            let outcomes: Vec<Result<u64, Refusal>> = match applied {
                Ok((group, refused)) => refused.into_iter().map(|r| r.map_or(Ok(group), Err)).collect(),
                Err(e) => {
                    tracing::error!(stage = "state", error = %e, change_sets = changes.len(), "commit failed");
                    self.abort_if_undone();
                    self.db.reopen(&self.path);
                    vec![Err(Refusal::Failed(e.to_string())); changes.len()]
                }
            };
            // A sender that stopped waiting (shutdown) does not need the answer.
            for ((mut changes, reply), outcome) in changes.into_iter().zip(replies).zip(outcomes) {
                if let Err(Refusal::Full { .. }) = outcome {
                    changes.refused_before = true;
                }
                let _ = reply.send(outcome.map_err(|refusal| (refusal, changes)));
            }
        }
        self.flush_if_relaxed();
    }

    /// In relaxed mode, makes earlier non-durable commits durable with an empty durable commit.
    fn flush_if_relaxed(&mut self) {
        if self.pending_non_durable
            && let Err(e) = self.apply(&[], true)
        {
            tracing::error!(stage = "state", error = %e, "durable flush failed");
            self.abort_if_undone();
        }
    }

    /// After a failed commit under `relaxed`: commits that were applied but not yet durable may
    /// be undone, while the pipelines that made them have moved on (their seqs, their state).
    /// Nothing that depends on them was acknowledged or published, so the safe way on is a
    /// restart from the last durable state: the brokers deliver that input again.
    fn abort_if_undone(&self) {
        if self.pending_non_durable {
            tracing::error!(
                stage = "state",
                "a commit failed while earlier commits were not durable yet (durability = \"relaxed\"); \
                 exiting so that a restart resumes from the last durable state (nothing acknowledged is lost)"
            );
            std::process::exit(EXIT_DURABILITY_LOST);
        }
    }

    /// Applies every change set in one transaction, except those whose records do not fit in
    /// their outbox: those are left out entirely, and their refusal is returned in their place.
    /// Returns the number of the group (write transaction) that applied them.
    fn apply(&mut self, changes: &[ChangeSet], durable: bool) -> Result<(u64, Vec<Option<Refusal>>), StoreError> {
        let db = self.db.current().ok_or(StoreError::Reopening)?;
        let mut txn = db.begin_write().or_store("begin commit")?;
        txn.set_durability(if durable { RedbDurability::Immediate } else { RedbDurability::None })
            .or_store("begin commit")?;
        let now = crate::telemetry::now_nanos();
        let mut refused = Vec::with_capacity(changes.len());
        {
            let mut state = txn.open_table(FUNCTION_STATE).or_store("write function state")?;
            let mut state_usage = txn.open_table(FUNCTION_STATE_USAGE).or_store("write function state")?;
            let mut outbox = Outbox::open(&txn)?;
            let mut stream_seq = txn.open_table(STREAM_SEQ).or_store("write stream position")?;
            let mut dead_letters = txn.open_table(DEAD_LETTERS).or_store("write dead letters")?;
            let mut counters = txn.open_table(COUNTERS).or_store("write counters")?;
            let mut recent = txn.open_table(RECENT_DELIVERIES).or_store("write recent deliveries")?;
            let mut positions = txn.open_table(SINK_POSITIONS).or_store("write sink position")?;
            let mut fleet = txn.open_table(FLEET).or_store("write fleet records")?;
            for change in changes {
                if let Some(refusal) = self.make_room(&mut outbox, change, now)? {
                    refused.push(Some(refusal));
                    continue;
                }
                refused.push(None);
                for write in &change.state_writes {
                    let key = (write.namespace.as_str(), write.key.as_slice());
                    let previous = match &write.value {
                        Some(value) => state.insert(key, value.as_slice()).or_store("write function state")?,
                        None => state.remove(key).or_store("write function state")?,
                    };
                    let removed = previous.map_or(0, |old| state_entry_bytes(&write.key, old.value()));
                    let added = write.value.as_deref().map_or(0, |value| state_entry_bytes(&write.key, value));
                    if added != removed {
                        let namespace = write.namespace.as_str();
                        let held =
                            state_usage.get(namespace).or_store("write function state")?.map_or(0, |v| v.value());
                        let held = (held + added).saturating_sub(removed);
                        if held == 0 {
                            state_usage.remove(namespace).or_store("write function state")?;
                        } else {
                            state_usage.insert(namespace, held).or_store("write function state")?;
                        }
                    }
                }
                for (stream, seqs) in &change.reservations {
                    outbox.reserve(stream, seqs.clone())?;
                }
                for record in &change.records {
                    outbox.append(&record.stream, record.seq, &record.body)?;
                    let previous = stream_seq
                        .get(record.stream.as_str())
                        .or_store("write stream position")?
                        .map_or(0, |v| v.value());
                    if record.seq > previous {
                        stream_seq.insert(record.stream.as_str(), record.seq).or_store("write stream position")?;
                    }
                    if previous == 0 {
                        let floor = outbox_floor_key(&record.stream);
                        if counters.get(floor.as_str()).or_store("read counters")?.is_none() {
                            counters.insert(floor.as_str(), record.seq).or_store("write counters")?;
                        }
                    }
                }
                let mut confirmed_streams: Vec<&str> = Vec::new();
                for (stream, seq) in &change.confirmed {
                    outbox.remove(stream, *seq)?;
                    if !confirmed_streams.contains(&stream.as_str()) {
                        confirmed_streams.push(stream);
                    }
                }
                for stream in confirmed_streams {
                    let last_seq = stream_seq.get(stream).or_store("read stream position")?.map_or(0, |v| v.value());
                    outbox.prune_reservations(stream, last_seq)?;
                    let floor = outbox_floor_key(stream);
                    let previous = counters.get(floor.as_str()).or_store("read counters")?.map_or(0, |v| v.value());
                    let held_from = outbox.first_seq(stream)?.unwrap_or(last_seq + 1);
                    if held_from > previous {
                        counters.insert(floor.as_str(), held_from).or_store("write counters")?;
                    }
                }
                for (stream, position) in &change.sink_positions {
                    let previous =
                        positions.get(stream.as_str()).or_store("write sink position")?.map_or(0, |v| v.value());
                    if *position > previous {
                        positions.insert(stream.as_str(), *position).or_store("write sink position")?;
                    }
                }
                for (stream, limit) in &change.sink_record_limits {
                    counters.insert(sink_record_limit_key(stream).as_str(), *limit).or_store("write counters")?;
                }
                for (stream, counter, by) in &change.counts {
                    outbox.count(stream, *counter, *by)?;
                }
                for (key, value) in &change.fleet {
                    match value {
                        Some(value) => fleet.insert(key.as_str(), value.as_slice()).or_store("write fleet records")?,
                        None => fleet.remove(key.as_str()).or_store("write fleet records")?,
                    };
                }
                remember_deliveries(&mut counters, &mut recent, &change.deliveries)?;
                for letter in &change.dead_letters {
                    let id = counters.get(DEAD_LETTERS_NEXT_ID).or_store("write counters")?.map_or(0, |v| v.value());
                    let bytes = letter.to_bytes();
                    dead_letters.insert(id, bytes.as_slice()).or_store("write dead letters")?;
                    counters.insert(DEAD_LETTERS_NEXT_ID, id + 1).or_store("write counters")?;
                    add_to_counter(&mut counters, DEAD_LETTERS_BYTES, bytes.len() as u64)?;
                }
            }
            self.evict_dead_letters(&mut dead_letters, &mut counters)?;
        }
        txn.commit().or_store("commit")?;
        let group = self.groups.fetch_add(1, Ordering::Relaxed) + 1;
        if durable {
            self.last_durable = Instant::now();
            self.pending_non_durable = false;
            self.durable.send_replace(group);
        } else {
            self.pending_non_durable = true;
        }
        Ok((group, refused))
    }

    /// Removes the oldest dead letters until both the count and the byte cap hold, counting
    /// them as evicted.
    fn evict_dead_letters(
        &self,
        dead_letters: &mut redb::Table<'_, u64, &[u8]>,
        counters: &mut redb::Table<'_, &str, u64>,
    ) -> Result<(), StoreError> {
        let mut held = dead_letters.len().or_store("write dead letters")?;
        let mut bytes = counters.get(DEAD_LETTERS_BYTES).or_store("write counters")?.map_or(0, |v| v.value());
        let mut evicted = 0;
        while held > self.options.dead_letter_capacity || (held > 0 && bytes > self.options.dead_letter_max_bytes) {
            let Some((_, letter)) = dead_letters.pop_first().or_store("evict dead letters")? else { break };
            bytes = bytes.saturating_sub(letter.value().len() as u64);
            held -= 1;
            evicted += 1;
        }
        if evicted > 0 {
            counters.insert(DEAD_LETTERS_BYTES, bytes).or_store("write counters")?;
            add_to_counter(counters, DEAD_LETTERS_EVICTED, evicted)?;
        }
        Ok(())
    }

    /// Makes room for a change set's records in their outboxes; the refusal if there is none.
    fn make_room(&self, outbox: &mut Outbox<'_>, change: &ChangeSet, now: i64) -> Result<Option<Refusal>, StoreError> {
        let mut incoming: Vec<(&str, u64)> = Vec::new();
        for record in &change.records {
            let bytes = outbox::disk_bytes(&record.stream, record.body.len());
            match incoming.iter_mut().find(|(stream, _)| *stream == record.stream) {
                Some((_, held)) => *held += bytes,
                None => incoming.push((&record.stream, bytes)),
            }
        }
        for (stream, bytes) in incoming {
            let Some(limits) = self.options.outboxes.get(stream) else { continue };
            if !outbox.make_room(stream, bytes, limits, now)? {
                if !change.refused_before {
                    outbox.count(stream, Counter::RefusedFull, 1)?;
                }
                return Ok(Some(Refusal::Full { stream: stream.to_owned(), max_bytes: limits.max_bytes }));
            }
        }
        Ok(None)
    }
}

/// Adds committed deliveries' identities to their sources' recent deliveries, in order, and drops
/// those beyond each source's horizon: one order counter update and one trim per source, however
/// many deliveries the change set holds.
fn remember_deliveries(
    counters: &mut redb::Table<'_, &str, u64>,
    recent: &mut redb::Table<'_, (&str, u64), &[u8]>,
    deliveries: &[super::DeliveryRecord],
) -> Result<(), StoreError> {
    let mut rest = deliveries;
    while let Some(first) = rest.first() {
        let source = first.source.as_str();
        let run = rest.iter().take_while(|d| d.source == source).count();
        let (same_source, after) = rest.split_at(run);
        rest = after;
        let counter = format!("delivery_order/{source}");
        let mut order = counters.get(counter.as_str()).or_store("write counters")?.map_or(0, |v| v.value());
        let mut oldest_dropped = None;
        for delivery in same_source {
            order += 1;
            recent.insert((source, order), delivery.identity.as_slice()).or_store("write recent deliveries")?;
            oldest_dropped = oldest_dropped.max(order.checked_sub(u64::from(delivery.dedup_horizon)));
        }
        counters.insert(counter.as_str(), order).or_store("write counters")?;
        if let Some(oldest_dropped) = oldest_dropped {
            recent
                .retain_in((source, 0)..=(source, oldest_dropped), |_, _| false)
                .or_store("write recent deliveries")?;
        }
    }
    Ok(())
}

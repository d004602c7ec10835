//! Sinks: the outbox's way out. A record leaves the outbox only after the central broker
//! confirmed it.
//!
//! **Boundary:** with `source`, the only module that imports broker clients.
//!
//! One task per pipeline reads its stream's records from the outbox in seq order, keeps up to
//! `max_in_flight` publishes awaiting confirmation, and handles confirmations in seq order. Each
//! confirmed record is deleted from the outbox (deletions are grouped into one commit, together
//! with the sink's *position*: where the central broker stored the last confirmed record).
//!
//! On any failure — refused publish, lost connection, missing ack — the sink waits a backoff,
//! then *reconciles* before sending anything again: it asks the broker which of its records
//! arrived after its position (JetStream: walking the subject forward and reading each message's
//! `Nats-Msg-Id`). Those are confirmed without being sent again; everything else still in the
//! outbox is sent again, with the same end-to-end id `<gateway>.<stream>.<seq>`. So a record is
//! not stored twice even when the outage outlasted JetStream's duplicate-detection period (`duplicate_window`), and a record
//! lost on a dying connection is sent again even if later ones made it (a reconnecting client
//! resends what it had buffered). The sink also reconciles when it starts: the previous run may
//! have died between a publish and its confirmation. MQTT brokers cannot be asked; MQTT
//! consumers drop duplicates by the id inside the payload.
//!
//! Order: `fifo` sends in seq order; `live_first` sends, after each (re)connection, the records
//! committed from then on first and the ones already waiting behind them, at most
//! `backlog_rate` bytes per second. Before reading records to publish, the sink commits a
//! *reservation* of their seqs, so a full outbox's policy never coarsens or drops a record that
//! may be on its way (`state::outbox`).
//!
//! The outbox, not the broker client, is the source of truth: nothing here keeps a record that is
//! not also in the outbox. A record the broker can never accept (too large for it) is moved to
//! the dead letters with the broker's reason, in the same commit that removes it from the outbox.
//!
//! Stopping: no new publishes; in-flight ones get a grace period ([`STOP_GRACE`]) to be
//! confirmed; unconfirmed records stay in the outbox for the next start.
//!
//! **Invariant (bounded stop):** a sink ends within [`STOP_GRACE`] (plus [`CLOSE_GRACE`] for an
//! MQTT connection to close) of being told to stop, whatever `ack_timeout` is and whether the
//! broker answers: every wait on the broker — connecting, reconciling, handing a record over,
//! awaiting a confirmation — is raced against the stop token or ends at the stop deadline.

mod console;
mod jetstream;
mod mqtt;

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Retry;
use rangemap::RangeInclusiveSet;

use crate::config::{Backoff, Drain as DrainPolicy, SinkConfig};
use crate::state::{ChangeSet, Committer, Counter, DeadLetter, DeadLetterContent, DeadLetterStage, StateStore};

/// Confirmed records deleted per commit at most.
const DELETE_GROUP: usize = 256;
/// Longest wait before confirmed records are deleted.
const DELETE_LINGER: Duration = Duration::from_millis(50);
/// How long a stopping sink waits for in-flight confirmations (in all).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the MQTT sink's connection gets to close once the drain loop has ended.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Longest wait for one confirmation; past it the record is sent again (a broker that lost a
/// PUBACK on a live connection would otherwise stall the stream).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Reservations reach this many in-flight sets (`max_in_flight`) past the last record read, so most
/// reads need no reservation commit.
const RESERVE_AHEAD: u64 = 4;
/// Retry policy of the console sink (which cannot fail) and of outbox read errors.
const LOCAL_RETRY: Backoff = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) };

/// Room left in a JetStream message for its headers (`Nats-Msg-Id`) besides the record: the
/// server's `max_payload` counts both.
const HEADER_ROOM: u64 = 1024;
/// The record limit of a JetStream sink before its server has announced one: NATS's default
/// `max_payload`, less [`HEADER_ROOM`].
const NATS_DEFAULT_RECORD_LIMIT: u64 = 1024 * 1024 - HEADER_ROOM;

/// The largest record body a pipeline's sink can publish, shared between the sink, which learns
/// it from the central broker, and the processor, which sizes records by it (see
/// `encode::fit`). Records already in the outbox when it shrinks are refused by the broker and
/// dead-lettered whole.
#[derive(Clone, Debug)]
pub struct RecordLimit(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl RecordLimit {
    /// A limit of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Self(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(bytes)))
    }

    /// The limit now.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, bytes: u64) {
        self.0.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The record limit of a sink until its broker says otherwise: NATS's default `max_payload`
/// for JetStream, the MQTT sink's packet limit, none for the console.
pub fn default_record_limit(config: &SinkConfig) -> u64 {
    match config {
        SinkConfig::JetStream { .. } => NATS_DEFAULT_RECORD_LIMIT,
        SinkConfig::Mqtt { .. } => crate::source::MAX_MESSAGE_BYTES as u64,
        SinkConfig::Console { .. } => u64::MAX,
    }
}

/// A record on its way out.
#[derive(Clone, Debug)]
pub struct OutgoingRecord {
    /// Its seq in the stream.
    pub seq: u64,
    /// The end-to-end id `<gateway>.<stream>.<seq>`.
    pub id: String,
    /// The record body.
    pub body: Bytes,
}

/// Why a publish failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct PublishError {
    /// What happened.
    pub reason: String,
    /// The broker will never accept this record (retrying cannot help).
    pub permanent: bool,
}

impl PublishError {
    fn transient(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), permanent: false }
    }
}

/// A confirmed publish: where the broker stored it, when it can say (JetStream stream sequence).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confirmed {
    /// The broker's position of the record.
    pub position: Option<u64>,
}

/// Resolves when the broker confirmed (or refused) one publish.
type Confirmation = Pin<Box<dyn Future<Output = Result<Confirmed, PublishError>> + Send>>;

/// Records of this stream the broker turned out to have, found by reconciling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Their seqs.
    pub records: Vec<u64>,
    /// The broker's position of the last of them (0 when none were found).
    pub position: u64,
}

/// The three kinds of publisher.
enum Publisher {
    JetStream(Box<jetstream::JetStreamPublisher>),
    Mqtt(mqtt::MqttPublisher),
    Console(console::ConsolePublisher),
}

impl Publisher {
    /// The records of `<gateway>.<stream>` the broker stored after `position`, if it can tell.
    async fn stored_since(&mut self, gateway: &str, stream: &str, position: u64) -> Result<Found, PublishError> {
        match self {
            Self::JetStream(p) => p.stored_since(gateway, stream, position).await,
            Self::Mqtt(_) | Self::Console(_) => Ok(Found::default()),
        }
    }

    /// The largest message the broker announced it accepts, if it announces one.
    fn max_payload(&self) -> Option<u64> {
        match self {
            Self::JetStream(p) => Some(p.max_payload()),
            Self::Mqtt(_) | Self::Console(_) => None,
        }
    }

    /// Hands `record` to the broker; the returned future resolves with its confirmation.
    async fn publish(&mut self, record: &OutgoingRecord) -> Result<Confirmation, PublishError> {
        match self {
            Self::JetStream(p) => p.publish(record).await,
            Self::Mqtt(p) => p.publish(record).await,
            Self::Console(p) => p.publish(record),
        }
    }
}

/// The sink task of one pipeline.
#[derive(Debug)]
pub struct Sink {
    /// This gateway's id (first part of record ids).
    pub gateway: String,
    /// The pipeline (stream) it drains.
    pub stream: String,
    /// Where records go.
    pub config: SinkConfig,
    /// In which order a backlog is sent.
    pub order: DrainPolicy,
    /// Outbox reads.
    pub store: StateStore,
    /// Outbox deletions.
    pub committer: Committer,
    /// The largest record the broker accepts, as far as it said.
    pub record_limit: RecordLimit,
}

impl Sink {
    /// Drains the outbox until `stop` is cancelled. `committed` changes whenever the pipeline
    /// committed new records.
    pub async fn run(self, committed: watch::Receiver<u64>, stop: CancellationToken) {
        match &self.config {
            SinkConfig::JetStream { broker, subject, max_in_flight, ack_timeout } => {
                let connecting = jetstream::JetStreamPublisher::connect(broker, subject, *ack_timeout, &self.stream);
                let connected = tokio::select! {
                    connected = connecting => connected,
                    () = stop.cancelled() => return,
                };
                match connected {
                    Ok(p) => {
                        let publisher = Publisher::JetStream(Box::new(p));
                        Drain::new(&self, publisher, *max_in_flight, broker.reconnect).run(committed, stop).await;
                    }
                    Err(e) => {
                        tracing::error!(stage = "sink", pipeline = %self.stream, error = %e, "cannot set up the JetStream sink");
                    }
                }
            }
            SinkConfig::Mqtt { broker, topic, client_id, max_in_flight } => {
                let (publisher, connection) =
                    mqtt::MqttPublisher::new(broker, topic, client_id.as_str(), *max_in_flight, &self.stream);
                let drain = Drain::new(&self, Publisher::Mqtt(publisher), *max_in_flight, broker.reconnect);
                let mut drain = std::pin::pin!(drain.run(committed, stop.clone()));
                let mut connection = std::pin::pin!(connection.run(stop));
                tokio::select! {
                    // The drain loop ended (told to stop): the connection ends too, once its
                    // requests are closed, or is cut off after a short grace (a broker that does
                    // not answer the DISCONNECT, a connection attempt that hangs).
                    () = &mut drain => {
                        if tokio::time::timeout(CLOSE_GRACE, connection).await.is_err() {
                            tracing::debug!(stage = "sink", pipeline = %self.stream, "MQTT sink connection cut off at shutdown");
                        }
                    }
                    () = &mut connection => drain.await,
                }
            }
            SinkConfig::Console { series_shown } => {
                let publisher = Publisher::Console(console::ConsolePublisher::new(&self.stream, *series_shown));
                Drain::new(&self, publisher, 64, LOCAL_RETRY).run(committed, stop).await;
            }
        }
    }
}

/// Confirmations and refusals not yet committed.
#[derive(Default)]
struct Unsaved {
    confirmed: Vec<u64>,
    dead: Vec<(u64, String)>,
    /// The position to save, if it moved.
    position: Option<u64>,
    /// Publishes handed to the broker (first sends and resends).
    published: u64,
    since: Option<Instant>,
}

impl Unsaved {
    fn is_empty(&self) -> bool {
        self.confirmed.is_empty() && self.dead.is_empty() && self.position.is_none() && self.published == 0
    }

    fn note(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    fn due(&self) -> bool {
        !self.dead.is_empty()
            || self.confirmed.len() >= DELETE_GROUP
            || self.since.is_some_and(|since| since.elapsed() >= DELETE_LINGER)
    }
}

/// Under `drain = "live_first"`: the records that were already in the outbox at the last
/// (re)connection, sent behind fresher ones at a capped byte rate.
#[derive(Debug)]
struct Backlog {
    /// Highest backlog seq handed to the broker in this connection.
    cursor: u64,
    /// The stream's last seq at the (re)connection: the backlog's end.
    end: u64,
    /// When the byte budget allows the next backlog record.
    next_send_at: Instant,
    bytes_per_second: u64,
}

impl Backlog {
    /// Spends the budget for `bytes` just sent.
    fn charge(&mut self, bytes: usize) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        self.next_send_at = self.next_send_at.max(Instant::now()) + cost;
    }
}

/// The drain loop of one sink: its cursors, what is in flight, what waits to be saved.
///
/// **Invariant (publish only what is reserved):** a record is read for publishing only after a
/// committed reservation covers its seq, so the full-outbox policy can never coarsen or drop
/// it while the broker may hold it (see `state::outbox`).
struct Drain<'a> {
    sink: &'a Sink,
    publisher: Publisher,
    max_in_flight: usize,
    retry: Retry,
    in_flight: VecDeque<(u64, Confirmation)>,
    /// Highest seq handed to the broker (or found stored) in this connection, live lane.
    cursor: u64,
    /// The rate-capped backlog, under `live_first` after a (re)connection found one.
    backlog: Option<Backlog>,
    /// The broker's position of the last confirmed record.
    position: u64,
    /// Seqs covered by committed reservations (a superset of the store's: the store forgets
    /// ranges whose records are all gone, and such seqs never hold a record again).
    reserved: RangeInclusiveSet<u64>,
    /// Records confirmed, found stored by reconciling, or refused for good, whose deletion is not
    /// committed yet: never sent again.
    settled: BTreeSet<u64>,
    unsaved: Unsaved,
    /// Ask the broker what it has before sending anything (again).
    must_reconcile: bool,
    /// The broker's record limit was read since the last (re)connection.
    knows_record_limit: bool,
    /// The highest seq the pipeline made durable: records above it may still be undone by a
    /// crash (`durability = "relaxed"`), so they are not read for publishing yet.
    publishable: u64,
}

impl<'a> Drain<'a> {
    fn new(sink: &'a Sink, publisher: Publisher, max_in_flight: usize, retry: Backoff) -> Self {
        let position = sink.store.sink_position(&sink.stream).unwrap_or_else(|e| {
            tracing::warn!(stage = "sink", pipeline = %sink.stream, error = %e, "cannot read the sink position; asking the broker from the start");
            0
        });
        // Unreadable reservations only mean reserving again before publishing.
        let reserved = sink.store.reservations(&sink.stream).unwrap_or_default().into_iter().collect();
        Self {
            sink,
            publisher,
            max_in_flight,
            retry: Retry::new(retry),
            in_flight: VecDeque::new(),
            cursor: 0,
            backlog: None,
            position,
            reserved,
            settled: BTreeSet::new(),
            unsaved: Unsaved::default(),
            must_reconcile: true,
            knows_record_limit: false,
            publishable: 0,
        }
    }

    async fn run(mut self, mut committed: watch::Receiver<u64>, stop: CancellationToken) {
        let stream = self.sink.stream.clone();
        let mut stop_deadline: Option<Instant> = None;
        loop {
            self.publishable = *committed.borrow_and_update();
            if !self.knows_record_limit {
                self.learn_record_limit().await;
            }
            let stopping = stop.is_cancelled();
            if stopping {
                stop_deadline.get_or_insert_with(|| Instant::now() + STOP_GRACE);
            }
            if self.must_reconcile && !stopping && self.in_flight.is_empty() && !self.reconcile(&stop).await {
                continue;
            }
            // Refill once half the in-flight set is confirmed, so the outbox is read (and reserved) in
            // runs of records rather than one read per confirmation.
            if !stopping && self.in_flight.len() <= self.max_in_flight / 2 {
                self.fill(&stop).await;
            }
            if self.unsaved.due() || (self.in_flight.is_empty() && !self.unsaved.is_empty()) {
                self.save().await;
            }

            let Some((seq, confirmation)) = self.in_flight.front_mut() else {
                if stopping {
                    break;
                }
                // Nothing in flight: wait for new records, for the backlog's budget, or look again
                // in a while (in case a notification was missed while records were re-sent).
                let backlog_due = self.backlog.as_ref().map(|b| b.next_send_at);
                tokio::select! {
                    () = stop.cancelled() => {}
                    changed = committed.changed() => if changed.is_err() {
                        // The pipeline is gone: nothing new will come; finish when told to stop.
                        stop.cancelled().await;
                    },
                    () = sleep_until_some(backlog_due) => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            let seq = *seq;
            let outcome = match stop_deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, confirmation)
                    .await
                    .unwrap_or_else(|_| Err(PublishError::transient("no confirmation before shutdown"))),
                None => tokio::select! {
                    outcome = tokio::time::timeout(CONFIRM_TIMEOUT, confirmation) => outcome.unwrap_or_else(|_| {
                        Err(PublishError::transient(format!("no confirmation within {}s", CONFIRM_TIMEOUT.as_secs())))
                    }),
                    // Told to stop while waiting: wait on, but only until the stop deadline.
                    () = stop.cancelled() => continue,
                },
            };
            self.in_flight.pop_front();
            match outcome {
                Ok(confirmed) => {
                    self.retry.reset();
                    self.unsaved.confirmed.push(seq);
                    self.settled.insert(seq);
                    if let Some(position) = confirmed.position.filter(|&p| p > self.position) {
                        self.position = position;
                        self.unsaved.position = Some(position);
                    }
                    self.unsaved.note();
                }
                Err(e) if e.permanent => {
                    self.unsaved.dead.push((seq, e.reason));
                    self.settled.insert(seq);
                }
                Err(e) if stopping => {
                    tracing::info!(stage = "sink", pipeline = %stream, seq, error = %e, "unconfirmed at shutdown; stays in the outbox");
                    self.in_flight.clear();
                }
                Err(e) => self.failed(seq, &e, &stop).await,
            }
        }
        self.save().await;
        tracing::debug!(stage = "sink", pipeline = %stream, "sink stopped");
    }

    /// Asks the broker which records it stored after the sink's position, then starts the
    /// cursors over: everything unsettled in the outbox is sent (again). Returns false (after a
    /// backoff) when the broker could not be asked.
    async fn reconcile(&mut self, stop: &CancellationToken) -> bool {
        let stream = &self.sink.stream;
        let asked = tokio::select! {
            asked = self.publisher.stored_since(&self.sink.gateway, stream, self.position) => asked,
            // Stopping: nothing will be sent, so nothing needs to be known.
            () = stop.cancelled() => return false,
        };
        match asked {
            Ok(found) => {
                self.must_reconcile = false;
                if !found.records.is_empty() {
                    tracing::info!(stage = "sink", pipeline = %stream, records = found.records.len(), first = found.records[0],
                        "records already stored centrally; not sending them again");
                    self.settled.extend(&found.records);
                    self.unsaved.confirmed.extend(found.records);
                    if found.position > self.position {
                        self.position = found.position;
                        self.unsaved.position = Some(found.position);
                    }
                    self.save().await;
                }
                self.start_cursors();
                true
            }
            Err(e) => {
                let delay = self.retry.next_delay(&mut rand::rng());
                tracing::warn!(stage = "sink", pipeline = %stream, error = %e, retry_in = ?delay, "cannot ask the broker what it stored");
                sleep_or_stop(delay, stop).await;
                false
            }
        }
    }

    /// Takes up the record limit the broker announced (after each connection), and keeps it in
    /// the store so that records made before the next connection are sized by it too.
    async fn learn_record_limit(&mut self) {
        let Some(max_payload) = self.publisher.max_payload() else {
            // A broker that announces nothing: this sink's own limit (a limit kept from an
            // earlier sink of this stream does not apply).
            self.sink.record_limit.set(default_record_limit(&self.sink.config));
            self.knows_record_limit = true;
            return;
        };
        // 0: the server has not said yet (its INFO is read after the connection is up).
        if max_payload == 0 {
            return;
        }
        self.knows_record_limit = true;
        let limit = max_payload.saturating_sub(HEADER_ROOM).max(1);
        if limit == self.sink.record_limit.get() {
            return;
        }
        tracing::info!(stage = "sink", pipeline = %self.sink.stream, max_payload, record_limit = limit,
            "the central broker's message limit; records are sized to it");
        self.sink.record_limit.set(limit);
        let changes = ChangeSet { sink_record_limits: vec![(self.sink.stream.clone(), limit)], ..ChangeSet::default() };
        if let Err(e) = self.sink.committer.commit(changes).await {
            tracing::warn!(stage = "sink", pipeline = %self.sink.stream, error = %e.error, "cannot keep the record limit");
        }
    }

    /// After a (re)connection: `fifo` starts from the oldest record; `live_first` sends records
    /// committed from now on first and the ones already waiting as a rate-capped backlog.
    fn start_cursors(&mut self) {
        self.cursor = 0;
        self.backlog = None;
        let DrainPolicy::LiveFirst { backlog_bytes_per_second } = self.sink.order else { return };
        let stream = &self.sink.stream;
        let waiting = self.sink.store.outbox_usage(stream).map(|usage| usage.records).unwrap_or(0);
        let end = match self.sink.store.last_seq(stream) {
            Ok(end) => end.min(self.publishable),
            Err(e) => {
                tracing::warn!(stage = "sink", pipeline = %stream, error = %e, "cannot read the stream position; draining in seq order");
                return;
            }
        };
        if waiting == 0 {
            return;
        }
        tracing::info!(stage = "sink", pipeline = %stream, records = waiting, through_seq = end, backlog_bytes_per_second,
            "backlog waiting; fresh records go first");
        self.cursor = end;
        self.backlog =
            Some(Backlog { cursor: 0, end, next_send_at: Instant::now(), bytes_per_second: backlog_bytes_per_second });
    }

    /// Sends outbox records until the in-flight set is full or the outbox is drained: the live lane
    /// first, then the backlog as far as its byte budget allows.
    async fn fill(&mut self, stop: &CancellationToken) {
        let want = self.max_in_flight - self.in_flight.len();
        let records = match self.reserved_records(self.cursor, self.publishable, want).await {
            Ok(records) => records,
            Err(e) => return self.read_failed(&e, stop).await,
        };
        for record in records {
            self.cursor = record.seq;
            if !self.send(&record, stop).await {
                return;
            }
        }
        while let Some(backlog) = &self.backlog
            && self.in_flight.len() < self.max_in_flight
            && backlog.next_send_at <= Instant::now()
        {
            let (after, end) = (backlog.cursor, backlog.end);
            let records = match self.reserved_records(after, end, 1).await {
                Ok(records) => records,
                Err(e) => return self.read_failed(&e, stop).await,
            };
            let Some(record) = records.into_iter().next() else {
                tracing::info!(stage = "sink", pipeline = %self.sink.stream, through_seq = end, "backlog sent");
                self.backlog = None;
                break;
            };
            if let Some(backlog) = &mut self.backlog {
                backlog.cursor = record.seq;
                if !self.settled.contains(&record.seq) {
                    backlog.charge(record.body.len());
                }
            }
            if !self.send(&record, stop).await {
                return;
            }
        }
    }

    /// Hands one record to the broker unless it is settled. Returns false after a failure.
    async fn send(&mut self, record: &OutgoingRecord, stop: &CancellationToken) -> bool {
        if self.settled.contains(&record.seq) {
            // Confirmed, found stored or refused; its deletion is waiting to be committed.
            return true;
        }
        let handed_over = tokio::select! {
            handed_over = self.publisher.publish(record) => handed_over,
            // A client that buffers while disconnected can make this wait; stopping wins. The
            // record stays in the outbox.
            () = stop.cancelled() => return false,
        };
        match handed_over {
            Ok(confirmation) => {
                self.unsaved.published += 1;
                self.in_flight.push_back((record.seq, confirmation));
            }
            Err(e) if e.permanent => {
                self.unsaved.dead.push((record.seq, e.reason));
                self.settled.insert(record.seq);
            }
            Err(e) => {
                self.failed(record.seq, &e, stop).await;
                return false;
            }
        }
        true
    }

    /// Up to `limit` records after seq `after` and at most `through`, each covered by a
    /// committed reservation: reads, and when what it read is not reserved yet, commits a
    /// reservation (with room for the next reads) and reads again.
    async fn reserved_records(
        &mut self,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<OutgoingRecord>, String> {
        loop {
            let mut records = read_outbox(self.sink, after, limit).await?;
            records.retain(|record| record.seq <= through);
            let Some(last) = records.last().map(|record| record.seq) else { return Ok(records) };
            let reserved = records.iter().take_while(|record| self.reserved.contains(&record.seq)).count();
            if reserved > 0 {
                records.truncate(reserved);
                return Ok(records);
            }
            let ahead = (self.max_in_flight as u64).saturating_mul(RESERVE_AHEAD);
            let seqs = after + 1..=last.saturating_add(ahead).min(through);
            let changes =
                ChangeSet { reservations: vec![(self.sink.stream.clone(), seqs.clone())], ..ChangeSet::default() };
            self.sink
                .committer
                .commit(changes)
                .await
                .map_err(|e| format!("cannot reserve records to publish: {}", e.error))?;
            self.reserved.insert(seqs);
        }
    }

    async fn read_failed(&mut self, error: &str, stop: &CancellationToken) {
        tracing::error!(stage = "sink", pipeline = %self.sink.stream, error, "cannot read the outbox");
        let delay = self.retry.next_delay(&mut rand::rng());
        sleep_or_stop(delay, stop).await;
    }

    /// After a failure: forgets what is in flight, waits a backoff, and reconciles (which starts
    /// the cursors over, so every unconfirmed record is sent again).
    async fn failed(&mut self, failed_seq: u64, error: &PublishError, stop: &CancellationToken) {
        let first_unconfirmed = self.in_flight.front().map_or(failed_seq, |(seq, _)| (*seq).min(failed_seq));
        self.in_flight.clear();
        let delay = self.retry.next_delay(&mut rand::rng());
        tracing::warn!(stage = "sink", pipeline = %self.sink.stream, kind = self.sink.config.kind(), error = %error,
            seq = first_unconfirmed, retry_in = ?delay, failures = self.retry.failures(),
            "publish failed; unconfirmed records will be sent again");
        sleep_or_stop(delay, stop).await;
        self.must_reconcile = true;
        self.knows_record_limit = false;
    }

    /// Commits the deletion of confirmed records (with the position and the counters) and moves
    /// refused ones to the dead letters. On failure everything stays to be saved next time.
    async fn save(&mut self) {
        if self.unsaved.is_empty() {
            return;
        }
        let stream = self.sink.stream.clone();
        let mut changes = ChangeSet::default();
        let now = crate::telemetry::now_nanos();
        for (seq, reason) in &self.unsaved.dead {
            let body = self
                .sink
                .store
                .outbox_after(&stream, seq - 1, 1)
                .ok()
                .and_then(|r| r.into_iter().next())
                .map(|(_, b)| b);
            let body = body.unwrap_or_default();
            let readings = weir_record::read(&body).map_or(0, |record| record.span().readings);
            changes.dead_letters.push(DeadLetter {
                pipeline: stream.clone(),
                stage: DeadLetterStage::Sink { kind: self.sink.config.kind().to_owned() },
                reason: format!("the broker refused record {seq}: {reason}"),
                at: now,
                content: DeadLetterContent::Batch { readings, record: body },
                function: None,
            });
            tracing::error!(stage = "sink", pipeline = %stream, seq, reason = %reason, "record refused for good; moved to the dead letters");
        }
        let settled: Vec<u64> =
            self.unsaved.confirmed.iter().chain(self.unsaved.dead.iter().map(|(seq, _)| seq)).copied().collect();
        changes.confirmed = settled.iter().map(|&seq| (stream.clone(), seq)).collect();
        changes.sink_positions.extend(self.unsaved.position.map(|p| (stream.clone(), p)));
        changes.counts = vec![
            (stream.clone(), Counter::Published, self.unsaved.published),
            (stream.clone(), Counter::Confirmed, self.unsaved.confirmed.len() as u64),
        ];
        match self.sink.committer.commit(changes).await {
            Ok(()) => {
                for seq in settled {
                    self.settled.remove(&seq);
                }
                self.unsaved = Unsaved::default();
            }
            // Everything stays in `unsaved` and is committed with the next save.
            Err(e) => {
                tracing::error!(stage = "sink", pipeline = %stream, error = %e, "cannot delete confirmed records yet");
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Up to `limit` records of the sink's stream after seq `after`, read off the async threads.
async fn read_outbox(sink: &Sink, after: u64, limit: usize) -> Result<Vec<OutgoingRecord>, String> {
    let store = sink.store.clone();
    let stream = sink.stream.clone();
    let records = tokio::task::spawn_blocking(move || store.outbox_after(&stream, after, limit))
        .await
        .map_err(|e| format!("outbox read task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    Ok(records
        .into_iter()
        .map(|(seq, body)| OutgoingRecord {
            seq,
            id: format!("{}.{}.{seq}", sink.gateway, sink.stream),
            body: Bytes::from(body),
        })
        .collect())
}

async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

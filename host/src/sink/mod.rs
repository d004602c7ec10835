//! Sinks: the outbox's way out. A record leaves the outbox only after the central broker
//! confirmed it.
//!
//! **Boundary:** with `source`, the only module that imports broker clients.
//!
//! One task per pipeline reads its stream's records from the outbox in seq order, keeps up to
//! `max_in_flight` publishes awaiting confirmation, and deletes each confirmed record from the
//! outbox (deletions are grouped into one commit, together with the sink's *position*: where
//! the central broker stored the last confirmed record).
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
//! may be on its way (`state::outbox`). Only records the pipeline made durable are published.
//!
//! The outbox, not the broker client, is the source of truth: nothing here keeps a record that is
//! not also in the outbox. A record the broker can never accept (too large for it) is moved to
//! the dead letters with the broker's reason, in the same commit that removes it from the outbox.
//!
//! Stopping: no new publishes; in-flight ones get a grace period ([`drain::STOP_GRACE`]) to be
//! confirmed; unconfirmed records stay in the outbox for the next start.
//!
//! **Invariant (bounded stop):** a sink ends within [`drain::STOP_GRACE`] (plus [`CLOSE_GRACE`]
//! for an MQTT connection to close) of being told to stop, whatever `ack_timeout` is and whether
//! the broker answers: every wait on the broker — connecting, reconciling, handing a record over,
//! awaiting a confirmation — is raced against the stop token or ends at the stop deadline.
//!
//! The parts: every decision of the drain — cursors, reservations, lanes and the backlog's
//! budget, the in-flight set, confirmations, reconciling, the stop — is made by the I/O-free state
//! machine in `drain.rs`, tested against a model outbox and a scripted broker. This file is its
//! shell ([`Shell`]): it carries out each action (outbox reads, commits, publishes, questions to
//! the broker, waits) and feeds the outcome back as an event. `jetstream.rs`, `mqtt.rs` and
//! `console.rs` are the broker clients.

mod console;
mod drain;
mod jetstream;
mod mqtt;

use std::future::Future;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Backoff, Drain as DrainPolicy, SinkConfig};
use crate::observe::PipelineLive;
use crate::state::{ChangeSet, Committer, Counter, DeadLetter, DeadLetterContent, DeadLetterStage, StateStore};
use drain::{Action, Drain, Event, Save, Settings, Start, Ticket};

/// How long the MQTT sink's connection gets to close once the drain loop has ended.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
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
    /// What the pipeline shows while it runs: the uplink's state, the last confirmation.
    pub live: PipelineLive,
}

impl Sink {
    /// Drains the outbox until `stop` is cancelled. `committed` changes whenever the pipeline
    /// made new records durable.
    pub async fn run(self, committed: watch::Receiver<u64>, stop: CancellationToken) {
        match &self.config {
            SinkConfig::JetStream { broker, subject, max_in_flight, ack_timeout } => {
                let connecting = jetstream::JetStreamPublisher::connect(
                    broker,
                    subject,
                    *ack_timeout,
                    &self.stream,
                    self.live.uplink().clone(),
                );
                let connected = tokio::select! {
                    connected = connecting => connected,
                    () = stop.cancelled() => return,
                };
                match connected {
                    Ok(p) => {
                        let publisher = Publisher::JetStream(Box::new(p));
                        let settings = self.settings(*max_in_flight, broker.reconnect);
                        Shell::new(&self, publisher).run(settings, committed, stop).await;
                    }
                    Err(e) => {
                        tracing::error!(stage = "sink", pipeline = %self.stream, error = %e, "cannot set up the JetStream sink");
                    }
                }
            }
            SinkConfig::Mqtt { broker, topic, client_id, max_in_flight } => {
                let (publisher, connection) = mqtt::MqttPublisher::new(
                    broker,
                    topic,
                    client_id.as_str(),
                    *max_in_flight,
                    &self.stream,
                    self.live.uplink().clone(),
                );
                let settings = self.settings(*max_in_flight, broker.reconnect);
                let drain = Shell::new(&self, Publisher::Mqtt(publisher)).run(settings, committed, stop.clone());
                let mut drain = std::pin::pin!(drain);
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
                // No connection to lose.
                self.live.uplink().up();
                let publisher = Publisher::Console(console::ConsolePublisher::new(&self.stream, *series_shown));
                Shell::new(&self, publisher).run(self.settings(64, LOCAL_RETRY), committed, stop).await;
            }
        }
    }

    fn settings(&self, max_in_flight: usize, retry: Backoff) -> Settings {
        Settings { stream: self.stream.clone(), kind: self.config.kind(), max_in_flight, order: self.order, retry }
    }
}

/// The sink's own store operations, for its shell.
impl Sink {
    /// What the store says when the sink starts.
    fn start(&self, publishable: u64) -> Start {
        let position = self.store.sink_position(&self.stream).unwrap_or_else(|e| {
            tracing::warn!(stage = "sink", pipeline = %self.stream, error = %e, "cannot read the sink position; asking the broker from the start");
            0
        });
        // Unreadable reservations only mean reserving again before publishing.
        let reserved = self.store.reservations(&self.stream).unwrap_or_default();
        Start { position, reserved, publishable, seed: rand::random() }
    }

    /// Counts the records waiting and reads the stream's last seq, for `live_first`.
    fn measure_backlog(&self) -> Event {
        let stream = &self.stream;
        let records = self.store.outbox_usage(stream).map(|usage| usage.records).unwrap_or(0);
        let last_seq = match self.store.last_seq(stream) {
            Ok(last_seq) => Some(last_seq),
            Err(e) => {
                tracing::warn!(stage = "sink", pipeline = %stream, error = %e, "cannot read the stream position; draining in seq order");
                None
            }
        };
        Event::Backlog { records, last_seq }
    }

    /// Commits a reservation of `seqs`.
    async fn reserve(&self, seqs: RangeInclusive<u64>) -> Result<(), String> {
        let changes = ChangeSet { reservations: vec![(self.stream.clone(), seqs)], ..ChangeSet::default() };
        self.committer.commit(changes).await.map_err(|e| e.error.to_string())
    }

    /// Commits the deletion of confirmed records (with the position and the counters) and moves
    /// refused ones to the dead letters.
    async fn save(&self, save: Save) -> Result<(), String> {
        let stream = &self.stream;
        let now = crate::telemetry::now_nanos();
        let mut changes = ChangeSet::default();
        for (seq, reason) in &save.dead {
            let body = self.store.outbox_after(stream, seq - 1, 1).ok().and_then(|r| r.into_iter().next());
            let body = body.map(|(_, body)| body).unwrap_or_default();
            let readings = weir_record::read(&body).map_or(0, |record| record.span().readings);
            changes.dead_letters.push(DeadLetter {
                pipeline: stream.clone(),
                stage: DeadLetterStage::Sink { kind: self.config.kind().to_owned() },
                reason: format!("the broker refused record {seq}: {reason}"),
                at: now,
                content: DeadLetterContent::Batch { readings, record: body },
                function: None,
            });
            tracing::error!(stage = "sink", pipeline = %stream, seq, reason = %reason, "record refused for good; moved to the dead letters");
            metrics::counter!("weir_dead_letters_by_stage_total", "pipeline" => stream.clone(),
                "stage" => format!("sink {}", self.config.kind()))
            .increment(1);
        }
        let settled = save.confirmed.iter().chain(save.dead.iter().map(|(seq, _)| seq));
        changes.confirmed = settled.map(|&seq| (stream.clone(), seq)).collect();
        changes.sink_positions.extend(save.position.map(|p| (stream.clone(), p)));
        changes.counts = vec![
            (stream.clone(), Counter::Published, save.published),
            (stream.clone(), Counter::Confirmed, save.confirmed.len() as u64),
        ];
        self.committer.commit(changes).await.map_err(|e| e.to_string())
    }
}

/// A publish's confirmation, with the ticket the drain gave it.
type TicketedConfirmation = Pin<Box<dyn Future<Output = (Ticket, Result<Confirmed, PublishError>)> + Send>>;

/// The I/O side of one sink's drain: carries out the [`Action`]s of its [`Drain`] one at a time
/// and feeds back what came of them, waiting in between for confirmations, new records and
/// the stop.
struct Shell<'a> {
    sink: &'a Sink,
    publisher: Publisher,
    /// The confirmations of the publishes in flight.
    confirmations: FuturesUnordered<TicketedConfirmation>,
    /// The broker's record limit was read since the last (re)connection.
    knows_record_limit: bool,
    /// The drain was told to stop (the stop token is not raced any more).
    stopping: bool,
    /// The pipeline still runs (it may make more records durable).
    pipeline_open: bool,
    /// Seconds from handing a record over to its confirmation.
    publish_seconds: metrics::Histogram,
}

impl<'a> Shell<'a> {
    fn new(sink: &'a Sink, publisher: Publisher) -> Self {
        Self {
            sink,
            publisher,
            confirmations: FuturesUnordered::new(),
            knows_record_limit: false,
            stopping: false,
            pipeline_open: true,
            publish_seconds: metrics::histogram!("weir_publish_seconds", "pipeline" => sink.stream.clone()),
        }
    }

    async fn run(mut self, settings: Settings, mut committed: watch::Receiver<u64>, stop: CancellationToken) {
        let start = self.sink.start(*committed.borrow_and_update());
        let mut drain = Drain::new(settings, start);
        let mut action = drain.step(now(), Event::Tick);
        loop {
            if !self.knows_record_limit {
                self.learn_record_limit().await;
            }
            if committed.has_changed().unwrap_or(false) {
                drain.durable(*committed.borrow_and_update());
            }
            let event = if stop.is_cancelled() && !self.stopping {
                // Told to stop before the action: it is not carried out.
                self.stopping = true;
                Event::StopRequested
            } else {
                match action {
                    Action::Finish => break,
                    Action::AskStored { position } => self.ask_stored(position, &stop).await,
                    Action::MeasureBacklog => self.sink.measure_backlog(),
                    Action::Read { after, limit } => Event::Read(read_outbox(self.sink, after, limit).await),
                    Action::Reserve(seqs) => Event::Reserved(self.sink.reserve(seqs).await),
                    Action::Publish(ticket, record) => self.publish(ticket, &record, &stop).await,
                    Action::Save(save) => Event::Saved(self.sink.save(save).await),
                    Action::Backoff { until } => {
                        // What is in flight is sent again after reconciling.
                        self.confirmations = FuturesUnordered::new();
                        self.knows_record_limit = false;
                        self.sleep_until(until, &stop).await
                    }
                    Action::Wait { until } => self.wait(until, &mut committed, &stop).await,
                }
            };
            self.show(&event);
            action = drain.step(now(), event);
        }
        tracing::debug!(stage = "sink", pipeline = %self.sink.stream, "sink stopped");
    }

    /// Shows what the broker confirmed in the pipeline's live view.
    fn show(&self, event: &Event) {
        let confirmed = match event {
            Event::Confirmed(..) => true,
            Event::Stored(Ok(found)) => !found.records.is_empty(),
            _ => false,
        };
        if confirmed {
            self.sink.live.confirmed();
        }
    }

    /// Waits for whatever comes first: a confirmation, new durable records, the stop, `until`.
    async fn wait(
        &mut self,
        until: std::time::Instant,
        committed: &mut watch::Receiver<u64>,
        stop: &CancellationToken,
    ) -> Event {
        tokio::select! {
            Some((ticket, outcome)) = self.confirmations.next() => match outcome {
                Ok(confirmed) => Event::Confirmed(ticket, confirmed),
                Err(error) => Event::Failed(ticket, error),
            },
            () = stop.cancelled(), if !self.stopping => {
                self.stopping = true;
                Event::StopRequested
            }
            changed = committed.changed(), if self.pipeline_open => match changed {
                Ok(()) => Event::Durable(*committed.borrow_and_update()),
                Err(_) => {
                    // The pipeline is gone: nothing new will come; finish when told to stop.
                    self.pipeline_open = false;
                    Event::Tick
                }
            },
            () = tokio::time::sleep_until(until.into()) => Event::Tick,
        }
    }

    async fn sleep_until(&mut self, until: std::time::Instant, stop: &CancellationToken) -> Event {
        tokio::select! {
            () = stop.cancelled(), if !self.stopping => {
                self.stopping = true;
                Event::StopRequested
            }
            () = tokio::time::sleep_until(until.into()) => Event::Tick,
        }
    }

    /// Asks the broker which records it stored after `position`.
    async fn ask_stored(&mut self, position: u64, stop: &CancellationToken) -> Event {
        tokio::select! {
            asked = self.publisher.stored_since(&self.sink.gateway, &self.sink.stream, position) => Event::Stored(asked),
            // Stopping: nothing will be sent, so nothing needs to be known.
            () = stop.cancelled() => {
                self.stopping = true;
                Event::StopRequested
            }
        }
    }

    /// Hands `record` to the broker; its confirmation joins those in flight.
    async fn publish(&mut self, ticket: Ticket, record: &OutgoingRecord, stop: &CancellationToken) -> Event {
        let handed_over = tokio::select! {
            handed_over = self.publisher.publish(record) => handed_over,
            // A client that buffers while disconnected can make this wait; stopping wins. The
            // record stays in the outbox.
            () = stop.cancelled() => {
                self.stopping = true;
                return Event::StopRequested;
            }
        };
        let (sent, publish_seconds) = (std::time::Instant::now(), self.publish_seconds.clone());
        Event::Sent(handed_over.map(|confirmation| {
            self.confirmations.push(Box::pin(confirmation.map(move |outcome| {
                if outcome.is_ok() {
                    publish_seconds.record(sent.elapsed().as_secs_f64());
                }
                (ticket, outcome)
            })));
        }))
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
}

/// The drain's clock: tokio's, so that tests with paused time see it too.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
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

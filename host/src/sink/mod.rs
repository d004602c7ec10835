//! Sinks: the outbox's way out. A record leaves the outbox only after the central broker
//! confirmed it.
//!
//! **Boundary:** with `source`, the only module that imports broker clients.
//!
//! One task per pipeline reads its stream's records from the outbox in seq order, keeps up to
//! `max_in_flight` publishes awaiting confirmation, and handles confirmations in seq order. Each
//! confirmed record is deleted from the outbox (deletions are grouped into one commit). On any
//! failure — refused publish, lost connection, missing ack — every unconfirmed record is sent
//! again after a backoff, with the same end-to-end id (`<gateway>.<stream>.<seq>`): JetStream
//! drops duplicates by `Nats-Msg-Id`, MQTT consumers by the id inside the payload. Before
//! sending again (and at start), the sink asks the broker what it already stored (JetStream: the
//! last message on the subject), so a record is not stored twice even after JetStream's
//! duplicate window has passed.
//!
//! The outbox, not the broker client, is the source of truth: nothing here keeps a record that is
//! not also in the outbox. A record the broker can never accept (too large for it) is moved to
//! the dead letters with the broker's reason, in the same commit that removes it from the outbox.
//!
//! Stopping: no new publishes; in-flight ones get a grace period to be confirmed; unconfirmed
//! records stay in the outbox for the next start.

mod console;
mod jetstream;
mod mqtt;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Retry;
use crate::config::{Backoff, SinkConfig};
use crate::state::{ChangeSet, Committer, DeadLetter, DeadLetterContent, StateStore};

/// Confirmed records deleted per commit at most.
const DELETE_GROUP: usize = 256;
/// Longest wait before confirmed records are deleted.
const DELETE_LINGER: Duration = Duration::from_millis(50);
/// How long a stopping sink waits for in-flight confirmations (in all).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for one confirmation; past it the record is sent again (a broker that lost a
/// PUBACK on a live connection would otherwise stall the stream).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Retry policy of the console sink (which cannot fail) and of outbox read errors.
const LOCAL_RETRY: Backoff = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) };

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

/// Resolves when the broker confirmed (or refused) one publish.
type Confirmation = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

/// The three kinds of publisher.
enum Publisher {
    JetStream(Box<jetstream::JetStreamPublisher>),
    Mqtt(mqtt::MqttPublisher),
    Console(console::ConsolePublisher),
}

impl Publisher {
    /// The highest seq of this stream the central broker is known to have stored, if it can tell.
    async fn stored_up_to(&mut self, gateway: &str, stream: &str) -> Result<Option<u64>, PublishError> {
        match self {
            Self::JetStream(p) => p.stored_up_to(gateway, stream).await,
            Self::Mqtt(_) | Self::Console(_) => Ok(None),
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
    /// Outbox reads.
    pub store: StateStore,
    /// Outbox deletions.
    pub committer: Committer,
}

impl Sink {
    /// Drains the outbox until `stop` is cancelled. `committed` changes whenever the pipeline
    /// committed new records.
    pub async fn run(self, committed: watch::Receiver<u64>, stop: CancellationToken) {
        match &self.config {
            SinkConfig::JetStream { broker, subject, max_in_flight } => {
                match jetstream::JetStreamPublisher::connect(broker, subject, &self.stream).await {
                    Ok(p) => {
                        self.drain(
                            Publisher::JetStream(Box::new(p)),
                            *max_in_flight,
                            broker.reconnect,
                            committed,
                            stop,
                        )
                        .await;
                    }
                    Err(e) => {
                        tracing::error!(stage = "sink", pipeline = %self.stream, error = %e, "cannot set up the JetStream sink");
                    }
                }
            }
            SinkConfig::Mqtt { broker, topic, client_id, max_in_flight } => {
                let (publisher, connection) =
                    mqtt::MqttPublisher::new(broker, topic, client_id, *max_in_flight, &self.stream);
                let drain =
                    self.drain(Publisher::Mqtt(publisher), *max_in_flight, broker.reconnect, committed, stop.clone());
                tokio::join!(drain, connection.run(stop));
            }
            SinkConfig::Console { series_shown } => {
                let publisher = Publisher::Console(console::ConsolePublisher::new(&self.stream, *series_shown));
                self.drain(publisher, 64, LOCAL_RETRY, committed, stop).await;
            }
        }
    }

    async fn drain(
        &self,
        mut publisher: Publisher,
        max_in_flight: usize,
        retry_policy: Backoff,
        mut committed: watch::Receiver<u64>,
        stop: CancellationToken,
    ) {
        let stream = self.stream.clone();
        let mut retry = Retry::new(retry_policy);
        let mut in_flight: VecDeque<(u64, Confirmation)> = VecDeque::new();
        let mut sent_up_to = 0;
        let mut confirmed: Vec<u64> = Vec::new();
        let mut oldest_unsaved: Option<tokio::time::Instant> = None;
        let mut dead: Vec<(u64, String)> = Vec::new();
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        // Records may have reached the broker without their confirmation reaching us (a crash,
        // a cut connection): ask before sending anything again.
        let mut must_reconcile = true;
        let mut stored_through: Option<u64> = None;

        loop {
            let stopping = stop.is_cancelled();
            if stopping {
                stop_deadline.get_or_insert_with(|| tokio::time::Instant::now() + STOP_GRACE);
            }
            if must_reconcile && !stopping && in_flight.is_empty() {
                match publisher.stored_up_to(&self.gateway, &stream).await {
                    Ok(stored) => {
                        must_reconcile = false;
                        if let Some(stored) = stored.filter(|&s| s > sent_up_to) {
                            tracing::info!(stage = "sink", pipeline = %stream, stored, resend_from = sent_up_to + 1,
                                "records up to {stored} are already stored centrally; not sending them again");
                            sent_up_to = stored;
                            stored_through = Some(stored);
                        }
                    }
                    Err(e) => {
                        let delay = retry.next_delay(&mut rand::rng());
                        tracing::warn!(stage = "sink", pipeline = %stream, error = %e, retry_in = ?delay, "cannot ask the broker what it stored");
                        sleep_or_stop(delay, &stop).await;
                        continue;
                    }
                }
            }
            // Fill the window.
            if !stopping && in_flight.len() < max_in_flight {
                match self.read_outbox(sent_up_to, max_in_flight - in_flight.len()).await {
                    Ok(records) => {
                        for record in records {
                            match publisher.publish(&record).await {
                                Ok(confirmation) => {
                                    sent_up_to = record.seq;
                                    in_flight.push_back((record.seq, confirmation));
                                }
                                Err(e) if e.permanent => {
                                    sent_up_to = record.seq;
                                    dead.push((record.seq, e.reason));
                                }
                                Err(e) => {
                                    sent_up_to = self.failed(&mut in_flight, record.seq, &e, &mut retry, &stop).await;
                                    must_reconcile = true;
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(stage = "sink", pipeline = %stream, error = %e, "cannot read the outbox");
                        let delay = retry.next_delay(&mut rand::rng());
                        sleep_or_stop(delay, &stop).await;
                        continue;
                    }
                }
            }

            let save_due =
                oldest_unsaved.is_some_and(|t| t.elapsed() >= DELETE_LINGER) || confirmed.len() >= DELETE_GROUP;
            if save_due
                || !dead.is_empty()
                || stored_through.is_some()
                || (in_flight.is_empty() && !confirmed.is_empty())
            {
                self.save(&mut confirmed, &mut dead, &mut stored_through).await;
                oldest_unsaved = None;
            }

            let Some((seq, confirmation)) = in_flight.front_mut() else {
                if stopping {
                    break;
                }
                // Nothing in flight: wait for new records (or a periodic look, in case a
                // notification was missed while records were being re-sent).
                tokio::select! {
                    () = stop.cancelled() => {}
                    changed = committed.changed() => if changed.is_err() {
                        // The pipeline is gone: nothing new will come; finish when told to stop.
                        stop.cancelled().await;
                    },
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            let seq = *seq;
            let outcome = match stop_deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, confirmation)
                    .await
                    .unwrap_or_else(|_| Err(PublishError::transient("no confirmation before shutdown"))),
                None => tokio::time::timeout(CONFIRM_TIMEOUT, confirmation).await.unwrap_or_else(|_| {
                    Err(PublishError::transient(format!("no confirmation within {}s", CONFIRM_TIMEOUT.as_secs())))
                }),
            };
            in_flight.pop_front();
            match outcome {
                Ok(()) => {
                    retry.reset();
                    confirmed.push(seq);
                    oldest_unsaved.get_or_insert_with(tokio::time::Instant::now);
                }
                Err(e) if e.permanent => dead.push((seq, e.reason)),
                Err(e) if stopping => {
                    tracing::info!(stage = "sink", pipeline = %stream, seq, error = %e, "unconfirmed at shutdown; stays in the outbox");
                    in_flight.clear();
                }
                Err(e) => {
                    sent_up_to = self.failed(&mut in_flight, seq, &e, &mut retry, &stop).await;
                    must_reconcile = true;
                }
            }
        }
        self.save(&mut confirmed, &mut dead, &mut stored_through).await;
        tracing::debug!(stage = "sink", pipeline = %stream, "sink stopped");
    }

    /// After a failure: forgets what is in flight and waits a backoff. Returns the seq to resume
    /// after (everything above it is sent again).
    async fn failed(
        &self,
        in_flight: &mut VecDeque<(u64, Confirmation)>,
        failed_seq: u64,
        error: &PublishError,
        retry: &mut Retry,
        stop: &CancellationToken,
    ) -> u64 {
        let first_unconfirmed = in_flight.front().map_or(failed_seq, |(seq, _)| (*seq).min(failed_seq));
        in_flight.clear();
        let delay = retry.next_delay(&mut rand::rng());
        tracing::warn!(stage = "sink", pipeline = %self.stream, kind = self.config.kind(), error = %error, seq = first_unconfirmed,
            retry_in = ?delay, failures = retry.failures(), "publish failed; unconfirmed records will be sent again");
        sleep_or_stop(delay, stop).await;
        // Resume right after the last record confirmed before the failure.
        first_unconfirmed.saturating_sub(1)
    }

    async fn read_outbox(&self, after: u64, limit: usize) -> Result<Vec<OutgoingRecord>, String> {
        let store = self.store.clone();
        let stream = self.stream.clone();
        let records = tokio::task::spawn_blocking(move || store.outbox_after(&stream, after, limit))
            .await
            .map_err(|e| format!("outbox read task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok(records
            .into_iter()
            .map(|(seq, body)| OutgoingRecord {
                seq,
                id: format!("{}.{}.{seq}", self.gateway, self.stream),
                body: Bytes::from(body),
            })
            .collect())
    }

    /// Commits the deletion of confirmed records and moves refused ones to the dead letters.
    async fn save(&self, confirmed: &mut Vec<u64>, dead: &mut Vec<(u64, String)>, stored_through: &mut Option<u64>) {
        if confirmed.is_empty() && dead.is_empty() && stored_through.is_none() {
            return;
        }
        let mut changes = ChangeSet::default();
        changes.confirmed_through.extend(stored_through.map(|seq| (self.stream.clone(), seq)));
        let now = crate::telemetry::now_nanos();
        for (seq, reason) in dead.iter() {
            let body = self
                .store
                .outbox_after(&self.stream, seq - 1, 1)
                .ok()
                .and_then(|r| r.into_iter().next())
                .map(|(_, b)| b);
            changes.dead_letters.push(DeadLetter {
                pipeline: self.stream.clone(),
                stage: format!("sink {}", self.config.kind()),
                reason: format!("the broker refused record {seq}: {reason}"),
                at: now,
                content: DeadLetterContent::Batch { readings: 0, record: body.unwrap_or_default() },
            });
            tracing::error!(stage = "sink", pipeline = %self.stream, seq, reason = %reason, "record refused for good; moved to the dead letters");
        }
        changes.confirmed =
            confirmed.iter().chain(dead.iter().map(|(seq, _)| seq)).map(|&seq| (self.stream.clone(), seq)).collect();
        match self.committer.commit(changes).await {
            Ok(()) => {
                confirmed.clear();
                dead.clear();
                *stored_through = None;
            }
            // The records stay in the outbox; the deletions are tried again with the next save.
            Err(e) => {
                tracing::error!(stage = "sink", pipeline = %self.stream, error = %e, "cannot delete confirmed records yet");
            }
        }
    }
}

async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

//! Sources: where a pipeline's messages come from.
//!
//! **Boundary:** with `sink`, the only module that imports broker clients.
//!
//! Each source is one task owning its broker connection. It sends [`Delivery`]s — a message and
//! an opaque [`Ack`] — into the pipeline's bounded channel; a full channel stops it from reading,
//! which reaches the broker as withheld acknowledgements (MQTT QoS 1, JetStream) or TCP
//! backpressure (QoS 0, core NATS).
//!
//! What "acknowledged upstream" means per protocol:
//! - MQTT QoS 1 (persistent session, manual acks): PUBACK, sent in arrival order after the
//!   pipeline committed everything derived from the message. Unacknowledged messages are
//!   redelivered by the broker on the next session.
//! - JetStream (durable pull consumer, explicit acks): each message acknowledged after its
//!   commit; unacknowledged messages are redelivered after `ack_wait`.
//! - MQTT QoS 0, core NATS, the simulator, local sensors (`sensors/`): nothing to acknowledge (at
//!   most once).
//!
//! **Invariant (no double processing):** a redelivered message — the broker's second attempt
//! after a lost connection, a crash between commit and acknowledgement, or an expired ack wait —
//! is processed at most once. Each at-least-once delivery carries a [`DeliveryRecord`] (MQTT:
//! packet id and a digest of topic and payload; JetStream: stream sequence) that commits with the
//! data derived from it. A redelivery whose identity was committed goes through the pipeline
//! without its message: its identity is committed again (so it stays among the recent ones while
//! the broker keeps sending it) and it is acknowledged after that commit. One whose identity is
//! still on its way (in the pipeline) is dropped by JetStream — the original will be
//! acknowledged — and goes through without its message, behind the original, for MQTT, whose
//! acknowledgements must follow each connection's order (see `mqtt::admission`).
//!
//! Lifecycle: the source reads until `intake` is cancelled, then drops its sender (the pipeline
//! drains the channel) but keeps its connection so the pipeline's last acknowledgements reach the
//! broker; it disconnects when `close` is cancelled.

mod mqtt;
mod nats;
pub mod sensors;
pub mod simulated;

pub(crate) use mqtt::{disconnect as mqtt_disconnect, events as mqtt_events, options as mqtt_options};
pub(crate) use nats::{NatsClient, check_nats_credentials, connect as nats_connect};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::Message;
use crate::config::{PipelineConfig, SourceConfig};
use crate::observe::Link;
use crate::shutdown::Tasks;
pub use crate::state::DeliveryRecord;
use crate::state::StateStore;

/// Largest record the MQTT sink publishes (bytes).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A message larger than its source's `max_message_size`: it is not decoded but dead-lettered
/// (with a prefix) and acknowledged like any other, so the pipeline goes on.
#[derive(Debug)]
pub struct Oversized {
    /// The message with at most [`crate::state::DEAD_LETTER_PAYLOAD_PREFIX`] bytes of its payload.
    pub prefix: Message,
    /// The payload's size.
    pub size: u64,
    /// The limit it exceeded.
    pub limit: u64,
}

impl Oversized {
    /// Keeps a copy of the start of `message`'s payload (so the rest can be freed).
    pub fn of(message: &Message, limit: u64) -> Self {
        let kept = message.payload.len().min(crate::state::DEAD_LETTER_PAYLOAD_PREFIX);
        Self {
            prefix: Message {
                topic: message.topic.clone(),
                payload: bytes::Bytes::copy_from_slice(&message.payload[..kept]),
                received_at: message.received_at,
            },
            size: message.payload.len() as u64,
            limit,
        }
    }
}

/// A message and the means to acknowledge it upstream.
#[derive(Debug)]
pub struct Delivery {
    /// The message; `None` for a redelivery of something already committed, which only needs
    /// its identity committed again and its acknowledgement sent after that commit.
    pub message: Option<Message>,
    /// Its acknowledgement, to use once everything derived from it is committed.
    pub ack: Ack,
    /// Its identity, to commit with the data derived from it (at-least-once sources only).
    pub record: Option<DeliveryRecord>,
    /// Set (instead of `message`) when the message was larger than the source allows.
    pub oversized: Option<Oversized>,
}

impl Delivery {
    /// A delivery nobody acknowledges (at most once).
    pub fn unacknowledged(message: Message) -> Self {
        Self { message: Some(message), ack: Ack::none(), record: None, oversized: None }
    }

    /// Payload bytes carried (0 for a redelivery of something committed).
    pub fn payload_len(&self) -> u64 {
        self.message.as_ref().map_or(0, |m| m.payload.len() as u64)
            + self.oversized.as_ref().map_or(0, |o| o.prefix.payload.len() as u64)
    }
}

/// An acknowledgement owed to the broker. Opaque outside this module.
#[derive(Debug)]
pub struct Ack(AckKind);

#[derive(Debug)]
enum AckKind {
    None,
    Mqtt(mqtt::MqttAck),
    JetStream(Box<nats::JetStreamAck>),
}

impl Ack {
    /// Nothing to acknowledge.
    pub fn none() -> Self {
        Self(AckKind::None)
    }

    /// True when acknowledging this delivery matters to the broker.
    pub fn is_owed(&self) -> bool {
        !matches!(self.0, AckKind::None)
    }
}

/// Why an acknowledgement could not be handed to the broker connection.
#[derive(Debug, thiserror::Error)]
#[error("acknowledgement not sent ({protocol}): {reason}; the broker will redeliver")]
pub struct AckError {
    /// `mqtt` or `jetstream`.
    pub protocol: &'static str,
    /// Why.
    pub reason: String,
}

/// Acknowledges handled deliveries, in order.
pub async fn acknowledge(acks: Vec<Ack>) -> Result<(), AckError> {
    let mut first_error = None;
    for ack in acks {
        let sent = match ack.0 {
            AckKind::None => Ok(()),
            AckKind::Mqtt(ack) => ack.send().await,
            AckKind::JetStream(ack) => ack.send().await,
        };
        if let Err(e) = sent {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Most deliveries with owed acknowledgements the broker lets out at once, if it limits them: a
/// batch must close when it holds that many, since no more will arrive before they are acked.
pub fn in_flight_limit(config: &SourceConfig) -> Option<usize> {
    match config {
        SourceConfig::Mqtt { qos: crate::config::Qos::AtLeastOnce, max_inflight, .. } => Some(*max_inflight),
        SourceConfig::JetStream { .. } => Some(nats::MAX_ACK_PENDING as usize),
        _ => None,
    }
}

/// Starts the source task of `pipeline` (a sensors source also its bus threads, with `sensors`).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    pipeline: &PipelineConfig,
    store: &StateStore,
    deliveries: mpsc::Sender<Delivery>,
    intake: CancellationToken,
    close: CancellationToken,
    connection: Link,
    sensors: &sensors::SensorContext,
    tasks: &Tasks,
) {
    let batch = &pipeline.batch;
    let name = pipeline.name.as_str();
    let task = format!("{name} source");
    match pipeline.source.clone() {
        SourceConfig::Mqtt { broker, topics, qos, client_id, max_inflight, max_message_size } => {
            let source = mqtt::MqttSource {
                broker,
                topics,
                qos,
                client_id,
                max_inflight,
                max_message_size,
                held_by_pipeline: batch.queue + 3 * batch.max_messages,
                pipeline: name.to_owned(),
                store: store.clone(),
                connection,
            };
            tasks.spawn(task, source.run(deliveries, intake, close));
        }
        SourceConfig::Nats { broker, subjects, queue_group } => {
            let source = nats::CoreSource { broker, subjects, queue_group, pipeline: name.to_owned(), connection };
            tasks.spawn(task, source.run(deliveries, intake));
        }
        SourceConfig::JetStream { broker, stream, consumer, subjects } => {
            let source = nats::JetStreamSource {
                broker,
                stream,
                consumer,
                subjects,
                pipeline: name.to_owned(),
                store: store.clone(),
                connection,
            };
            tasks.spawn(task, source.run(deliveries, intake, close));
        }
        SourceConfig::Sensors(config) => {
            sensors::spawn(name, config, sensors, deliveries, intake, connection, tasks);
        }
        SourceConfig::Simulated(simulated) => {
            // No connection to lose.
            connection.up();
            tasks.spawn(task, simulated::run(simulated, deliveries, intake));
        }
    }
}

/// Deliveries handed to the pipeline and not yet acknowledged, by identity: a redelivery of one of
/// them is a copy of something already on its way.
#[derive(Clone, Debug, Default)]
struct InPipeline(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Vec<u8>>>>);

impl InPipeline {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Vec<u8>>> {
        // The set stays consistent even if a holder panicked: inserts and removes are single calls.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, identity: Vec<u8>) {
        self.lock().insert(identity);
    }

    fn contains(&self, identity: &[u8]) -> bool {
        self.lock().contains(identity)
    }

    fn remove(&self, identity: &[u8]) {
        self.lock().remove(identity);
    }
}

/// Identities committed recently for one source, loaded from the store on the first redelivery
/// after a (re)connection.
#[derive(Debug)]
struct CommittedRecently {
    source: String,
    pipeline: String,
    loaded: Option<std::collections::HashSet<Vec<u8>>>,
}

impl CommittedRecently {
    fn new(source: String, pipeline: &str) -> Self {
        Self { source, pipeline: pipeline.to_owned(), loaded: None }
    }

    /// Forget the cache: a new connection may redeliver anything committed before it.
    fn reset(&mut self) {
        self.loaded = None;
    }

    fn contains(&mut self, store: &StateStore, identity: &[u8]) -> bool {
        if self.loaded.is_none() {
            match store.recent_deliveries(&self.source) {
                Ok(identities) => self.loaded = Some(identities),
                Err(e) => {
                    // Cannot tell: process it (a duplicate at worst, never a loss).
                    tracing::warn!(stage = "source", pipeline = %self.pipeline, source = %self.source, error = %e,
                        "cannot read recent deliveries");
                    return false;
                }
            }
        }
        self.loaded.as_ref().is_some_and(|set| set.contains(identity))
    }
}

//! MQTT source: a persistent session (`clean_session = false`) subscribed to the pipeline's
//! filters, QoS 1 messages acknowledged manually after commit.
//!
//! The task owns the rumqttc event loop and polls it all the time — also while the pipeline is
//! busy — because the same loop writes the acknowledgements: a source that stopped polling when
//! it had too much to hold would also stop acknowledging, and the pipeline, waiting for its acks
//! to go out, would never drain it. Messages wait in a local queue until the pipeline's channel
//! takes them.
//!
//! Flow control is the broker's in-flight window (mosquitto `max_inflight_messages`), but weir
//! does not rely on it: mosquitto 2.0 sends past its window once acknowledgements arrive while it
//! is sending. If the local queue grows past [`LOCAL_QUEUE_LIMIT`] messages or
//! [`LOCAL_QUEUE_BYTES`], the source drops the connection — after the acknowledgements already queued — and discards what it had not handed
//! to the pipeline; the broker keeps those messages (persistent session) and sends them again.
//!
//! Acknowledgements wait in rumqttc's request channel until the event loop writes them (one per
//! turn of the loop, which also reads up to ten incoming packets per turn); when twice the
//! in-flight window of them wait, the pipeline waits too. A compliant broker never lets that
//! many be owed; an over-sending one fills the local queue and gets disconnected. That bound
//! (plus what the pipeline holds) is also the window of recent committed deliveries kept to
//! recognise redeliveries after a crash.
//!
//! Reconnects use capped exponential backoff with jitter. Subscriptions are (re)made whenever the
//! broker reports no stored session.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Ack, AckError, AckKind, CommittedRecently, Delivery, DeliveryRecord, InPipeline, MAX_MESSAGE_BYTES};
use crate::backoff::Retry;
use crate::batch::Message;
use crate::config::{BrokerConfig, Qos, TopicFilter};
use crate::state::StateStore;

/// Messages, and payload bytes, held locally (not yet taken by the pipeline) before the source
/// sheds them by dropping the connection: only a broker that ignores its in-flight window gets
/// here (mosquitto 2.0 sends its whole queue to a client that acknowledges while it sends).
const LOCAL_QUEUE_LIMIT: usize = 100_000;
const LOCAL_QUEUE_BYTES: u64 = 64 * 1024 * 1024;
/// Fewest acknowledgements that may wait for the event loop before the pipeline waits; the
/// bound is twice the broker's in-flight window when that is larger.
const MIN_OWED_ACKS: usize = 256;
/// Requests besides acknowledgements (subscriptions, DISCONNECT).
const REQUEST_SLACK: usize = 64;
/// Largest window of recent committed deliveries: well below the 65 535 packet ids a broker
/// cycles through, so a recycled id is never mistaken for an old delivery.
const MAX_DEDUP_WINDOW: usize = 32_768;
/// How long a closing source waits for its DISCONNECT to go out.
const DISCONNECT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A PUBACK owed to the broker.
#[derive(Debug)]
pub(super) struct MqttAck {
    client: AsyncClient,
    /// The packet id and QoS to acknowledge (no payload).
    owed: Publish,
    identity: Vec<u8>,
    in_pipeline: InPipeline,
    /// The session the message arrived in, and the current one.
    session_at: u64,
    session: Arc<AtomicU64>,
}

impl MqttAck {
    pub(super) async fn send(self) -> Result<(), AckError> {
        self.in_pipeline.remove(&self.identity);
        if self.session.load(Ordering::SeqCst) != self.session_at {
            // The broker lost the session this message came from: its packet id may name another
            // message now, and nothing will be redelivered for it.
            return Ok(());
        }
        self.client.ack(&self.owed).await.map_err(|e| AckError { protocol: "mqtt", reason: e.to_string() })
    }
}

/// The identity of a QoS 1 delivery: its packet id and a digest of its topic and payload.
fn identity(publish: &Publish) -> Vec<u8> {
    let digest = Sha256::new()
        .chain_update(publish.topic.as_bytes())
        .chain_update([0])
        .chain_update(&publish.payload)
        .finalize();
    let mut identity = publish.pkid.to_be_bytes().to_vec();
    identity.extend_from_slice(&digest[..16]);
    identity
}

/// A message received and not yet handed to the pipeline.
struct Held {
    delivery: Delivery,
    /// Its identity (QoS 1 only).
    identity: Option<Vec<u8>>,
}

/// Messages received and not yet handed to the pipeline, in arrival order, with their identities
/// indexed (a broker resending thousands of messages asks about each).
#[derive(Default)]
struct HeldQueue {
    queue: VecDeque<Held>,
    identities: std::collections::HashSet<Vec<u8>>,
    bytes: u64,
}

impl HeldQueue {
    fn push(&mut self, held: Held) {
        if let Some(identity) = &held.identity {
            self.identities.insert(identity.clone());
        }
        self.bytes += held.delivery.payload_len();
        self.queue.push_back(held);
    }

    fn pop(&mut self) -> Option<Held> {
        let held = self.queue.pop_front()?;
        if let Some(identity) = &held.identity {
            self.identities.remove(identity);
        }
        self.bytes -= held.delivery.payload_len();
        Some(held)
    }

    fn contains(&self, identity: &[u8]) -> bool {
        self.identities.contains(identity)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Decides about redeliveries (see the module doc of `source`) and tracks what is in flight.
struct Admissions {
    client: AsyncClient,
    window: u32,
    in_pipeline: InPipeline,
    committed: CommittedRecently,
    session: Arc<AtomicU64>,
}

impl Admissions {
    /// The message to hold for the pipeline (a committed redelivery without its message), or
    /// `None` for a copy of one still held or in the pipeline.
    fn admit(&mut self, store: &StateStore, publish: &Publish, held: &HeldQueue) -> Option<Held> {
        let message = Message {
            topic: publish.topic.clone(),
            payload: publish.payload.clone(),
            received_at: crate::telemetry::now_nanos(),
        };
        if publish.qos == QoS::AtMostOnce {
            return Some(Held { delivery: Delivery::unacknowledged(message), identity: None });
        }
        // The ack needs only the packet id and QoS.
        let mut owed = Publish::new("", publish.qos, Vec::new());
        owed.pkid = publish.pkid;
        let identity = identity(publish);
        if publish.dup && (held.contains(&identity) || self.in_pipeline.contains(&identity)) {
            return None;
        }
        let message = if publish.dup && self.committed.contains(store, &identity) {
            // Committed before; its ack was lost. Commit the identity again, then ack.
            None
        } else {
            Some(message)
        };
        let ack = MqttAck {
            client: self.client.clone(),
            owed,
            identity: identity.clone(),
            in_pipeline: self.in_pipeline.clone(),
            session_at: self.session.load(Ordering::SeqCst),
            session: Arc::clone(&self.session),
        };
        let record =
            DeliveryRecord { source: self.committed.source.clone(), identity: identity.clone(), window: self.window };
        let delivery = Delivery { message, ack: Ack(AckKind::Mqtt(ack)), record: Some(record) };
        Some(Held { delivery, identity: Some(identity) })
    }

    /// The pipeline takes a held message.
    fn hand_over(&self, held: Held) -> Delivery {
        if let Some(identity) = held.identity {
            self.in_pipeline.insert(identity);
        }
        held.delivery
    }

    /// A (re)connection: `fresh` when the broker kept no session.
    fn connected(&mut self, fresh: bool) {
        if fresh {
            self.session.fetch_add(1, Ordering::SeqCst);
        }
        self.committed.reset();
    }
}

pub(super) struct MqttSource {
    pub(super) broker: BrokerConfig,
    pub(super) topics: Vec<TopicFilter>,
    pub(super) qos: Qos,
    pub(super) client_id: String,
    /// The broker's in-flight window for QoS 1 messages to this client.
    pub(super) max_inflight: usize,
    /// Deliveries the pipeline can hold (its queue and batches).
    pub(super) held_by_pipeline: usize,
    pub(super) pipeline: String,
    pub(super) store: StateStore,
}

/// rumqttc options for a broker and client id.
pub(crate) fn options(broker: &BrokerConfig, client_id: &str, clean_session: bool) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, broker.url.host.clone(), broker.url.port);
    options
        .set_clean_session(clean_session)
        .set_keep_alive(broker.keep_alive.max(std::time::Duration::from_secs(1)))
        .set_max_packet_size(MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES);
    if let Some(username) = &broker.username {
        options.set_credentials(username.clone(), broker.password.clone().unwrap_or_default());
    }
    options
}

impl MqttSource {
    pub(super) async fn run(
        self,
        deliveries: mpsc::Sender<Delivery>,
        intake: CancellationToken,
        close: CancellationToken,
    ) {
        let mut options = options(&self.broker, &self.client_id, false);
        options.set_manual_acks(true);
        let owed_acks = (2 * self.max_inflight).max(MIN_OWED_ACKS);
        let (client, eventloop) = AsyncClient::new(options, owed_acks + REQUEST_SLACK);
        let mut events = events(eventloop);
        let qos = match self.qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        let filters: Vec<SubscribeFilter> =
            self.topics.iter().map(|t| SubscribeFilter::new(t.as_str().to_owned(), qos)).collect();
        let mut retry = Retry::new(self.broker.reconnect);
        // Committed but not yet acknowledged: the acks in the channel plus the pipeline's batches.
        let window = (owed_acks + self.held_by_pipeline).min(MAX_DEDUP_WINDOW);
        let mut admissions = Admissions {
            client: client.clone(),
            window: u32::try_from(window).unwrap_or(u32::MAX),
            in_pipeline: InPipeline::default(),
            committed: CommittedRecently::new(format!("mqtt/{}", self.client_id)),
            session: Arc::default(),
        };
        let mut held = HeldQueue::default();
        let mut deliveries = Some(deliveries);
        let mut shedding = false;
        let broker = self.broker.url.to_string();
        let pipeline = self.pipeline.as_str();

        loop {
            // A handle for this round's `reserve`, so the branches below may replace `deliveries`.
            let sender = deliveries.clone();
            tokio::select! {
                biased;
                () = close.cancelled() => break,
                () = intake.cancelled(), if deliveries.is_some() => {
                    // Held messages were never acknowledged: the broker redelivers them next session.
                    deliveries = None;
                    held.clear();
                }
                permit = async { sender.as_ref().expect("guarded by the branch condition").reserve().await },
                    if sender.is_some() && !held.is_empty() =>
                {
                    match permit {
                        Ok(permit) => {
                            let next = held.pop().expect("guarded by the branch condition");
                            permit.send(admissions.hand_over(next));
                        }
                        Err(_) => deliveries = None,
                    }
                }
                Some(event) = events.next() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                        retry.reset();
                        shedding = false;
                        tracing::info!(stage = "source", pipeline, broker = %broker, session_present = connack.session_present, "MQTT connected");
                        admissions.connected(!connack.session_present);
                        if !connack.session_present
                            && let Err(e) = client.subscribe_many(filters.clone()).await
                        {
                            tracing::error!(stage = "source", pipeline, error = %e, "cannot subscribe");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(suback))) => {
                        for (filter, code) in self.topics.iter().zip(&suback.return_codes) {
                            match code {
                                SubscribeReasonCode::Failure => tracing::error!(stage = "source", pipeline, filter = filter.as_str(), "broker refused the subscription"),
                                SubscribeReasonCode::Success(granted) => tracing::info!(stage = "source", pipeline, filter = filter.as_str(), ?granted, "subscribed"),
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) if deliveries.is_some() && !shedding => {
                        match admissions.admit(&self.store, &publish, &held) {
                            Some(message) => held.push(message),
                            None => {
                                tracing::debug!(stage = "source", pipeline, pkid = publish.pkid, "redelivery of a message already on its way dropped");
                            }
                        }
                        if held.len() >= LOCAL_QUEUE_LIMIT || held.bytes >= LOCAL_QUEUE_BYTES {
                            tracing::warn!(stage = "source", pipeline, broker = %broker, held = held.len(),
                                "the broker sends faster than its in-flight window allows; reconnecting so it holds the backlog");
                            // Queued behind the acknowledgements already owed, so those go out first.
                            if let Err(e) = client.disconnect().await {
                                tracing::warn!(stage = "source", pipeline, error = %e, "cannot disconnect");
                            }
                            held.clear();
                            shedding = true;
                        }
                    }
                    Ok(_) => {}
                    Err(ConnectionError::RequestsDone) => break,
                    Err(e) => {
                        let delay = retry.next_delay(&mut rand::rng());
                        if shedding {
                            tracing::info!(stage = "source", pipeline, broker = %broker, retry_in = ?delay, "disconnected to shed load");
                        } else {
                            tracing::warn!(stage = "source", pipeline, broker = %broker, error = %e, retry_in = ?delay, failures = retry.failures(), "MQTT connection lost");
                        }
                        tokio::select! {
                            () = close.cancelled() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
        disconnect(&client, &mut events).await;
    }
}

/// The event loop as a stream of events.
///
/// `EventLoop::poll` is not cancel-safe: dropped half-way (because another `select!` branch won),
/// it can lose a request it had taken — an acknowledgement, a publish. The stream keeps its
/// in-progress poll across `select!` rounds, so nothing is ever dropped half-way.
pub(crate) type Events = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Event, ConnectionError>> + Send>>;

/// Wraps `eventloop` as [`Events`].
pub(crate) fn events(eventloop: rumqttc::EventLoop) -> Events {
    Box::pin(futures::stream::unfold(eventloop, |mut eventloop| async move {
        let event = eventloop.poll().await;
        if let Ok(Event::Incoming(Packet::ConnAck(_))) = &event {
            // rumqttc keeps a packet-id collision across reconnects; a new connection starts clean.
            eventloop.state.collision = None;
        }
        Some((event, eventloop))
    }))
}

/// Sends DISCONNECT after every queued request (acknowledgements included) and polls until the
/// broker closes the connection or the grace period ends. The broker keeps the session.
pub(crate) async fn disconnect(client: &AsyncClient, events: &mut Events) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async { while let Some(Ok(_)) = events.next().await {} }).await;
}

//! MQTT source: a persistent session (`clean_session = false`) subscribed to the pipeline's
//! filters, QoS 1 messages acknowledged manually after commit.
//!
//! The task owns the rumqttc event loop and polls it all the time — also while the pipeline is
//! busy — because the same loop writes the acknowledgements: a source that stopped polling when
//! it had too much to hold would also stop acknowledging, and the pipeline, waiting for its acks
//! to go out, would never drain it. Messages wait in a local queue until the pipeline's channel
//! takes them.
//!
//! **Invariant (acknowledgements):** each delivery is acknowledged at most once, on the
//! connection it arrived on, in that connection's arrival order. The pipeline hands its
//! acknowledgements to this task, which forwards one only while the connection it is owed on is
//! up; any other is dropped — the broker sends that message again on the next connection, and
//! the copy goes through the pipeline without its message, behind its original, and is
//! acknowledged in its own place (see `source`). This is
//! what keeps PUBACKs meaningful when a broker has more than 65 535 messages in flight and its
//! packet ids repeat (mosquitto before 2.0.13 moves up to its in-flight window from its queue
//! into flight on every acknowledgement, eclipse/mosquitto#2306): it applies a PUBACK to the
//! oldest message in flight with that id, which is the right one only if every acknowledgement
//! goes out once and in order. A second PUBACK for a message, or one skipping over another
//! message, would remove a different message from the session.
//!
//! Flow control is the broker's in-flight window (mosquitto `max_inflight_messages`), but weir
//! does not rely on it (see above). If the local queue grows past [`LOCAL_QUEUE_LIMIT`] messages
//! or [`LOCAL_QUEUE_BYTES`], the source drops the connection — after the acknowledgements
//! already queued — and discards what it had not handed to the pipeline; the broker keeps those
//! messages (persistent session) and sends them again. Held messages never outlive their
//! connection.
//!
//! Acknowledgements wait in two bounded queues (to this task, then rumqttc's request channel,
//! which the event loop writes one per turn); when both are full the pipeline waits too. The
//! window of recent committed deliveries kept to recognise redeliveries after a crash is at least
//! [`MIN_DEDUP_WINDOW`]: besides those queues and the pipeline's batches, a broker that loses the
//! connection discards the PUBACKs it had not read yet.
//!
//! Reconnects use capped exponential backoff with jitter. Subscriptions are (re)made whenever the
//! broker reports no stored session.

use std::collections::{HashMap, VecDeque};

use futures::StreamExt;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Ack, AckError, AckKind, CommittedRecently, Delivery, DeliveryRecord, MAX_MESSAGE_BYTES, Oversized};
use crate::backoff::Retry;
use crate::batch::Message;
use crate::config::{BrokerConfig, MqttClientId, Qos, TopicFilter};
use crate::state::StateStore;

/// Messages, and payload bytes, held locally (not yet taken by the pipeline) before the source
/// sheds them by dropping the connection: only a broker that ignores its in-flight window gets
/// here (see the module doc).
const LOCAL_QUEUE_LIMIT: usize = 100_000;
const LOCAL_QUEUE_BYTES: u64 = 64 * 1024 * 1024;
/// Fewest acknowledgements that may wait in each of the two queues before the pipeline waits;
/// the bound is twice the broker's in-flight window when that is larger.
const MIN_OWED_ACKS: usize = 256;
/// Requests besides acknowledgements (subscriptions, DISCONNECT).
const REQUEST_SLACK: usize = 64;
/// Fewest recent committed deliveries kept per source to recognise redeliveries.
const MIN_DEDUP_WINDOW: usize = 32_768;
/// The largest MQTT packet: a remaining length of at most 268 435 455 bytes, plus the fixed
/// header.
const MQTT_MAX_PACKET: usize = crate::config::MQTT_MAX_PAYLOAD as usize + 5;
/// How long a closing source waits for its DISCONNECT to go out.
const DISCONNECT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A PUBACK owed to the broker, on its way from the pipeline to the source task.
#[derive(Debug)]
struct OwedAck {
    pkid: u16,
    identity: Vec<u8>,
}

/// The pipeline's handle on a PUBACK it owes.
#[derive(Debug)]
pub(super) struct MqttAck {
    to_source: mpsc::Sender<OwedAck>,
    owed: OwedAck,
}

impl MqttAck {
    pub(super) async fn send(self) -> Result<(), AckError> {
        self.to_source
            .send(self.owed)
            .await
            .map_err(|_| AckError { protocol: "mqtt", reason: "the MQTT source has stopped".to_owned() })
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

/// Messages received on the current connection and not yet handed to the pipeline, in arrival
/// order.
#[derive(Default)]
struct HeldQueue {
    queue: VecDeque<Held>,
    bytes: u64,
}

impl HeldQueue {
    fn push(&mut self, held: Held) {
        self.bytes += held.delivery.payload_len();
        self.queue.push_back(held);
    }

    fn pop(&mut self) -> Option<Held> {
        let held = self.queue.pop_front()?;
        self.bytes -= held.delivery.payload_len();
        Some(held)
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

    fn is_over_limit(&self) -> bool {
        self.len() >= LOCAL_QUEUE_LIMIT || self.bytes >= LOCAL_QUEUE_BYTES
    }
}

/// The connection state acknowledgements depend on: which connection is up, which deliveries
/// the pipeline holds and on which connection each is owed, and which were committed recently.
struct Admissions {
    /// Numbers the connections; 0 before the first.
    connection: u64,
    connected: bool,
    /// Deliveries handed to the pipeline and not yet acknowledged, by identity: the connection
    /// each arrived on, in pipeline order (a copy sent again on a later connection follows its
    /// original).
    in_pipeline: HashMap<Vec<u8>, VecDeque<u64>>,
    committed: CommittedRecently,
    /// Committed deliveries a source keeps to recognise redeliveries.
    window: u32,
    to_source: mpsc::Sender<OwedAck>,
    /// Larger messages are dead-lettered instead of decoded.
    max_message_size: u64,
}

impl Admissions {
    /// The message to hold for the pipeline; without its message for a copy of one already
    /// committed or still in the pipeline.
    fn admit(&mut self, store: &StateStore, publish: &Publish) -> Held {
        let message = Message {
            topic: publish.topic.clone(),
            payload: publish.payload.clone(),
            received_at: crate::telemetry::now_nanos(),
        };
        // Only a prefix of a message over the limit is kept (the rest is freed at once).
        let oversized = (message.payload.len() as u64 > self.max_message_size)
            .then(|| Oversized::of(&message, self.max_message_size));
        let message = if oversized.is_some() { None } else { Some(message) };
        if publish.qos == QoS::AtMostOnce {
            let delivery = Delivery { message, ack: Ack::none(), record: None, oversized };
            return Held { delivery, identity: None };
        }
        let identity = identity(publish);
        let (message, oversized) =
            if publish.dup && (self.in_pipeline.contains_key(&identity) || self.committed.contains(store, &identity)) {
                // Sent again on this connection while its original is on its way (whose PUBACK,
                // owed on an earlier connection, is dropped) or after it was committed: commit the
                // identity again behind the original, then acknowledge — in this connection's order.
                (None, None)
            } else {
                (message, oversized)
            };
        let ack = MqttAck {
            to_source: self.to_source.clone(),
            owed: OwedAck { pkid: publish.pkid, identity: identity.clone() },
        };
        let record =
            DeliveryRecord { source: self.committed.source.clone(), identity: identity.clone(), window: self.window };
        let delivery = Delivery { message, ack: Ack(AckKind::Mqtt(ack)), record: Some(record), oversized };
        Held { delivery, identity: Some(identity) }
    }

    /// The pipeline takes a held message (which arrived on the current connection).
    fn hand_over(&mut self, held: Held) -> Delivery {
        if let Some(identity) = held.identity {
            self.in_pipeline.entry(identity).or_default().push_back(self.connection);
        }
        held.delivery
    }

    /// The PUBACK to send for an acknowledgement from the pipeline, if the connection it is owed
    /// on is still up. Otherwise the broker sends the message again; its identity is committed,
    /// and remembered here for when that copy arrives.
    fn settle(&mut self, owed: OwedAck) -> Option<Publish> {
        let owed_on = self.in_pipeline.get_mut(&owed.identity).and_then(VecDeque::pop_front);
        if self.in_pipeline.get(&owed.identity).is_some_and(VecDeque::is_empty) {
            self.in_pipeline.remove(&owed.identity);
        }
        match owed_on {
            Some(owed_on) if self.connected && owed_on == self.connection => {
                let mut puback = Publish::new("", QoS::AtLeastOnce, Vec::new());
                puback.pkid = owed.pkid;
                Some(puback)
            }
            _ => {
                self.committed.remember(owed.identity);
                None
            }
        }
    }

    /// A connection is up.
    fn connected(&mut self) {
        self.connection += 1;
        self.connected = true;
        self.committed.reset();
    }
}

pub(super) struct MqttSource {
    pub(super) broker: BrokerConfig,
    pub(super) topics: Vec<TopicFilter>,
    pub(super) qos: Qos,
    pub(super) client_id: MqttClientId,
    /// The broker's in-flight window for QoS 1 messages to this client.
    pub(super) max_inflight: usize,
    /// Larger messages are dead-lettered (a prefix) instead of decoded.
    pub(super) max_message_size: u64,
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
        // Incoming: anything MQTT can carry. A packet over rumqttc's limit fails the connection
        // before weir learns its topic or packet id, so it could be neither dead-lettered nor
        // acknowledged, and the broker would send it again on every reconnect; the source's
        // `max_message_size` applies instead, after the message was read. Outgoing: the
        // largest record the MQTT sink publishes.
        .set_max_packet_size(MQTT_MAX_PACKET, MAX_MESSAGE_BYTES);
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
        let mut options = options(&self.broker, self.client_id.as_str(), false);
        options.set_manual_acks(true);
        let owed_acks = (2 * self.max_inflight).max(MIN_OWED_ACKS);
        let (client, eventloop) = AsyncClient::new(options, owed_acks + REQUEST_SLACK);
        let (to_source, mut from_pipeline) = mpsc::channel(owed_acks);
        // PUBACKs handed to rumqttc and not yet written (never more than `owed_acks`, so
        // `try_ack` always finds room).
        let mut acks_in_client = 0usize;
        let mut events = events(eventloop);
        let qos = match self.qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        let filters: Vec<SubscribeFilter> =
            self.topics.iter().map(|t| SubscribeFilter::new(t.as_str().to_owned(), qos)).collect();
        let mut retry = Retry::new(self.broker.reconnect);
        // Committed but not known to be acknowledged: both acknowledgement queues, the
        // pipeline's batches, and PUBACKs written but never read by a broker that lost the
        // connection (the socket buffers can hold thousands) — so the largest window.
        let window = (2 * owed_acks + self.held_by_pipeline).max(MIN_DEDUP_WINDOW);
        let mut admissions = Admissions {
            connection: 0,
            connected: false,
            in_pipeline: HashMap::new(),
            committed: CommittedRecently::new(format!("mqtt/{}", self.client_id)),
            window: u32::try_from(window).unwrap_or(u32::MAX),
            to_source,
            max_message_size: self.max_message_size,
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
                Some(owed) = from_pipeline.recv(), if acks_in_client < owed_acks => {
                    if let Some(puback) = admissions.settle(owed) {
                        match client.try_ack(&puback) {
                            Ok(()) => acks_in_client += 1,
                            Err(e) => tracing::warn!(stage = "source", pipeline, error = %e, "cannot queue an acknowledgement; the broker will redeliver"),
                        }
                    }
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
                        admissions.connected();
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
                        held.push(admissions.admit(&self.store, &publish));
                        if held.is_over_limit() {
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
                    Ok(Event::Outgoing(Outgoing::PubAck(_))) => acks_in_client = acks_in_client.saturating_sub(1),
                    Ok(_) => {}
                    Err(ConnectionError::RequestsDone) => break,
                    Err(e) => {
                        // rumqttc dropped the PUBACKs it had not written; the broker resends
                        // those messages, and those held here.
                        acks_in_client = 0;
                        admissions.connected = false;
                        held.clear();
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
        // The pipeline's last acknowledgements, then DISCONNECT behind them.
        while acks_in_client < owed_acks
            && let Ok(owed) = from_pipeline.try_recv()
        {
            if let Some(puback) = admissions.settle(owed)
                && client.try_ack(&puback).is_ok()
            {
                acks_in_client += 1;
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
///
/// Every event after a `ConnAck` belongs to that connection. rumqttc (0.25) does not make it so
/// by itself: it reads a burst of packets into a queue and returns them one per poll, and when
/// the connection fails part-way through the burst, the rest stay queued and come out after the
/// next `ConnAck`. A PUBLISH from the old connection would then be acknowledged on the new one,
/// where its packet id can name a different message (ids repeat when a broker has more than
/// 65 535 messages in flight), and a stale PUBACK would confirm whatever the sink sent next
/// under that id. So a new connection drops what the old one left queued: the broker sends
/// those messages again, and a sink resends what it has not seen confirmed.
pub(crate) fn events(eventloop: rumqttc::EventLoop) -> Events {
    Box::pin(futures::stream::unfold(eventloop, |mut eventloop| async move {
        let event = eventloop.poll().await;
        if let Ok(Event::Incoming(Packet::ConnAck(_))) = &event {
            eventloop.state.events.clear();
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// CONNACK with the session present.
    const CONNACK_SESSION_PRESENT: [u8; 4] = [0x20, 0x02, 0x01, 0x00];

    /// A QoS 1 PUBLISH on topic `t` with a one-byte payload.
    fn publish_packet(pkid: u16, payload: u8) -> Vec<u8> {
        let [high, low] = pkid.to_be_bytes();
        vec![0x32, 0x06, 0x00, 0x01, b't', high, low, payload]
    }

    /// Accepts one connection and reads its CONNECT (a single small packet).
    async fn accept_connect(listener: &TcpListener) -> tokio::net::TcpStream {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut connect = [0u8; 256];
        let read = socket.read(&mut connect).await.expect("read CONNECT");
        assert_eq!(connect[0] >> 4, 1, "expected CONNECT, got {:?}", &connect[..read]);
        socket
    }

    /// A broker that fails one connection in the middle of a burst of messages, then sends one
    /// message on the next: the events after the second CONNACK must be that connection's only.
    /// (A fault no real broker can be made to inject: a burst read whole, then the connection
    /// lost before rumqttc has handed the burst out.)
    #[tokio::test]
    async fn publishes_read_before_a_lost_connection_are_not_reported_on_the_next() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (first_closed, first_closed_rx) = tokio::sync::oneshot::channel();
        let mut first_closed_rx = Some(first_closed_rx);
        let broker = tokio::spawn(async move {
            let mut first = accept_connect(&listener).await;
            let mut burst = CONNACK_SESSION_PRESENT.to_vec();
            for pkid in 1..=5 {
                burst.extend(publish_packet(pkid, b'a'));
            }
            first.write_all(&burst).await.expect("write burst");
            drop(first);
            first_closed.send(()).expect("test waits");
            let mut second = accept_connect(&listener).await;
            let mut fresh = CONNACK_SESSION_PRESENT.to_vec();
            fresh.extend(publish_packet(100, b'b'));
            second.write_all(&fresh).await.expect("write");
            // Held open until the test has read it.
            let _ = second.read(&mut [0u8; 1]).await;
        });

        let mut options = MqttOptions::new("stale-events", "127.0.0.1", port);
        options.set_clean_session(false).set_manual_acks(true);
        let (_client, eventloop) = AsyncClient::new(options, 10);
        let mut events = events(eventloop);
        let mut connacks = 0;
        let mut seen_on_second = Vec::new();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connacks += 1;
                    if let Some(first_closed) = first_closed_rx.take() {
                        // The whole burst and the end of the connection are there before the
                        // event loop reads on.
                        first_closed.await.expect("broker closed the first connection");
                        tokio::task::yield_now().await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) if connacks == 2 => {
                    seen_on_second.push(publish.pkid);
                    break;
                }
                Ok(_) | Err(_) => {}
            }
        }
        assert_eq!(seen_on_second, [100], "a message of the lost connection was reported on the next one");
        broker.abort();
    }
}

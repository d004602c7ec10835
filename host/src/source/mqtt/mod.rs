//! MQTT source: a persistent session (`clean_session = false`) subscribed to the pipeline's
//! filters, QoS 1 messages acknowledged manually after commit.
//!
//! The rules — which PUBLISHes become deliveries, which PUBACK goes out when, when to shed load
//! — are a state machine without I/O in `admission.rs`, with their invariants (acknowledge after
//! commit, once and in order, never across a connection; redeliveries of committed messages not
//! processed twice; the dedup horizon; shedding). This file is its shell: one task that owns the
//! rumqttc event loop, turns rumqttc events, room in the pipeline and the pipeline's
//! acknowledgements into the machine's events, and carries out its actions with rumqttc, the
//! store and the pipeline's channel.
//!
//! The task polls the event loop all the time — also while the pipeline is busy — because the
//! same loop writes the acknowledgements: a source that stopped polling when it had too much to
//! hold would also stop acknowledging, and the pipeline, waiting for its acks to go out, would
//! never drain it. Messages wait in the machine's held queue until the pipeline's channel takes
//! them.
//!
//! Acknowledgements wait in two bounded queues: from the pipeline to this task (taken only while
//! the machine `takes_acks`; when it is full the pipeline waits), then rumqttc's request channel,
//! which the event loop writes one per turn and which always has room for them. Two properties
//! of rumqttc 0.25 the machine's rules rely on: a connection that fails drops the PUBACKs not yet
//! written (`EventLoop::clean`), and [`events`] drops what a lost connection left queued, so
//! every PUBLISH and PUBACK belongs to the connection it is reported or queued on.
//!
//! Reconnects use capped exponential backoff with jitter. Subscriptions are (re)made whenever
//! the broker reports no stored session.

mod admission;

use std::time::Duration;

use futures::StreamExt;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::admission::{Action, Admission, Content, Handover, Limits, PublishQos, Ticket};
use super::{Ack, AckError, AckKind, Delivery, DeliveryRecord, MAX_MESSAGE_BYTES};
use crate::backoff::Retry;
use crate::config::{BrokerConfig, MqttClientId, Qos, TopicFilter};
use crate::observe::Link;
use crate::state::StateStore;

/// Requests besides acknowledgements (subscriptions, DISCONNECT).
const REQUEST_SLACK: usize = 64;
/// The largest MQTT packet: a remaining length of at most 268 435 455 bytes, plus the fixed
/// header.
const MQTT_MAX_PACKET: usize = crate::config::MQTT_MAX_PAYLOAD as usize + 5;
/// How long a closing source waits for its DISCONNECT to go out.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// The pipeline's handle on a PUBACK it owes: the delivery's ticket, given back to the source.
#[derive(Debug)]
pub(super) struct MqttAck {
    to_source: mpsc::Sender<Ticket>,
    ticket: Ticket,
}

impl MqttAck {
    pub(super) async fn send(self) -> Result<(), AckError> {
        self.to_source
            .send(self.ticket)
            .await
            .map_err(|_| AckError { protocol: "mqtt", reason: "the MQTT source has stopped".to_owned() })
    }
}

pub(super) struct MqttSource {
    pub(super) broker: BrokerConfig,
    pub(super) topics: Vec<TopicFilter>,
    pub(super) qos: Qos,
    pub(super) client_id: MqttClientId,
    /// The broker's in-flight limit for QoS 1 messages to this client.
    pub(super) max_inflight: usize,
    /// Larger messages are dead-lettered (a prefix) instead of decoded.
    pub(super) max_message_size: u64,
    /// Deliveries the pipeline can hold (its queue and batches).
    pub(super) held_by_pipeline: usize,
    pub(super) pipeline: String,
    pub(super) store: StateStore,
    pub(super) connection: Link,
}

/// rumqttc options for a broker and client id. With a `mqtts://` URL the transport is TLS,
/// verified by [`crate::tls::client_config`] (the only failure: that configuration cannot be
/// made, which `weir check` has already ruled out unless the system's roots changed since).
pub(crate) fn options(broker: &BrokerConfig, client_id: &str, clean_session: bool) -> Result<MqttOptions, String> {
    let mut options = MqttOptions::new(client_id, broker.url.host.clone(), broker.url.port);
    options
        .set_clean_session(clean_session)
        .set_keep_alive(broker.keep_alive.max(Duration::from_secs(1)))
        // Incoming: anything MQTT can carry. A packet over rumqttc's limit fails the connection
        // before weir learns its topic or packet id, so it could be neither dead-lettered nor
        // acknowledged, and the broker would send it again on every reconnect; the source's
        // `max_message_size` applies instead, after the message was read. Outgoing: the
        // largest record the MQTT sink publishes.
        .set_max_packet_size(MQTT_MAX_PACKET, MAX_MESSAGE_BYTES);
    if let Some(username) = &broker.username {
        let password = broker.password.as_ref().map(|p| p.expose().clone()).unwrap_or_default();
        options.set_credentials(username.clone(), password);
    }
    if let Some(tls) = &broker.tls {
        let config = crate::tls::client_config(tls, &broker.url.to_string()).map_err(|problem| problem.to_string())?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    Ok(options)
}

impl MqttSource {
    pub(super) async fn run(
        self,
        deliveries: mpsc::Sender<Delivery>,
        intake: CancellationToken,
        close: CancellationToken,
    ) {
        let Some((mut shell, mut acks)) = Shell::new(self) else { return };
        let mut deliveries = Some(deliveries);
        loop {
            // A handle for this round's `reserve`, so the branches below may replace `deliveries`.
            let sender = deliveries.clone();
            tokio::select! {
                biased;
                () = close.cancelled() => break,
                () = intake.cancelled(), if deliveries.is_some() => {
                    deliveries = None;
                    shell.step(admission::Event::PipelineClosed, None).await;
                }
                Some(ticket) = acks.recv(), if shell.core.takes_acks() => {
                    shell.step(admission::Event::Acknowledged(ticket), None).await;
                }
                permit = async { sender.as_ref().expect("guarded by the branch condition").reserve().await },
                    if sender.is_some() && shell.core.has_held() => match permit
                {
                    Ok(permit) => shell.step(admission::Event::PipelineReady, Some(permit)).await,
                    Err(_) => {
                        deliveries = None;
                        shell.step(admission::Event::PipelineClosed, None).await;
                    }
                },
                Some(event) = shell.events.next() => match shell.on_event(event).await {
                    Next::Continue => {}
                    Next::Done => break,
                    Next::RetryIn(delay) => tokio::select! {
                        () = close.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    },
                },
            }
        }
        shell.close(&mut acks).await;
    }
}

/// What the loop does after an event of the connection.
enum Next {
    Continue,
    /// The connection was lost: reconnect after this delay.
    RetryIn(Duration),
    /// The client is gone.
    Done,
}

/// The source's machine and what carries out its actions.
struct Shell {
    core: Admission,
    limits: Limits,
    client: AsyncClient,
    events: Events,
    /// Cloned into each delivery's acknowledgement.
    to_source: mpsc::Sender<Ticket>,
    filters: Vec<SubscribeFilter>,
    topics: Vec<TopicFilter>,
    /// The source's name in the store's recent deliveries, `mqtt/<client id>`.
    source: String,
    store: StateStore,
    retry: Retry,
    pipeline: String,
    broker: String,
    connection: Link,
}

impl Shell {
    /// The shell and the receiving end of the acknowledgements from the pipeline; `None`
    /// (logged) when the broker's options cannot be made.
    fn new(source: MqttSource) -> Option<(Self, mpsc::Receiver<Ticket>)> {
        let limits = Limits::new(source.max_inflight, source.held_by_pipeline, source.max_message_size);
        let mut options = match options(&source.broker, source.client_id.as_str(), false) {
            Ok(options) => options,
            Err(e) => {
                tracing::error!(stage = "source", pipeline = source.pipeline, broker = %source.broker.url, error = %e, "cannot connect to MQTT");
                return None;
            }
        };
        options.set_manual_acks(true);
        let (client, eventloop) = AsyncClient::new(options, limits.owed_acks + REQUEST_SLACK);
        let (to_source, acks) = mpsc::channel(limits.owed_acks);
        let qos = match source.qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        let filters = source.topics.iter().map(|t| SubscribeFilter::new(t.as_str().to_owned(), qos)).collect();
        let shell = Self {
            core: Admission::new(limits),
            limits,
            client,
            events: events(eventloop),
            to_source,
            filters,
            topics: source.topics,
            source: format!("mqtt/{}", source.client_id),
            store: source.store,
            retry: Retry::new(source.broker.reconnect),
            pipeline: source.pipeline,
            broker: source.broker.url.to_string(),
            connection: source.connection,
        };
        Some((shell, acks))
    }

    /// Hands `event` to the machine and carries out what it asks for; `permit` is the room in
    /// the pipeline that comes with [`admission::Event::PipelineReady`].
    async fn step(&mut self, event: admission::Event, mut permit: Option<mpsc::Permit<'_, Delivery>>) {
        let pipeline = self.pipeline.as_str();
        self.core.handle(event);
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Subscribe => {
                    if let Err(e) = self.client.subscribe_many(self.filters.clone()).await {
                        tracing::error!(stage = "source", pipeline, error = %e, "cannot subscribe");
                    }
                }
                Action::LoadRecent(publish) => {
                    let recent = self.store.recent_deliveries(&self.source).inspect_err(|e| {
                        // Cannot tell: the copy is processed (a duplicate at worst, never a loss).
                        tracing::warn!(stage = "source", pipeline = %self.pipeline, source = %self.source, error = %e,
                            "cannot read recent deliveries");
                    });
                    self.core.handle(admission::Event::RecentLoaded(recent.ok()));
                    self.core.handle(admission::Event::Publish(publish));
                }
                Action::Deliver(handover) => {
                    let permit = permit
                        .take()
                        .expect("a delivery is handed over once per `PipelineReady`, which brings a permit");
                    permit.send(self.delivery(handover));
                }
                Action::PubAck { pkid } => {
                    let mut puback = rumqttc::Publish::new("", QoS::AtLeastOnce, Vec::new());
                    puback.pkid = pkid;
                    if let Err(e) = self.client.try_ack(&puback) {
                        tracing::warn!(stage = "source", pipeline, error = %e, "cannot queue an acknowledgement; the broker will redeliver");
                        self.core.handle(admission::Event::PubAckWritten);
                    }
                }
                Action::Shed { ignored } => {
                    tracing::warn!(stage = "source", pipeline, broker = %self.broker, ignored,
                        "the broker sent past its in-flight limit; what it held is processed, reconnecting so it holds the backlog");
                    // Queued behind the acknowledgements already owed, so those go out first.
                    if let Err(e) = self.client.disconnect().await {
                        tracing::warn!(stage = "source", pipeline, error = %e, "cannot disconnect");
                    }
                }
                Action::Disconnect => disconnect(&self.client, &mut self.events).await,
            }
        }
    }

    /// Carries an event of the connection to the machine.
    async fn on_event(&mut self, event: Result<Event, ConnectionError>) -> Next {
        let pipeline = self.pipeline.as_str();
        let event = match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                self.retry.reset();
                self.connection.up();
                tracing::info!(stage = "source", pipeline, broker = %self.broker, session_present = connack.session_present, "MQTT connected");
                admission::Event::Connected { session_present: connack.session_present }
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                self.log_suback(&suback);
                return Next::Continue;
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => admission::Event::Publish(received(publish)),
            Ok(Event::Outgoing(Outgoing::PubAck(_))) => admission::Event::PubAckWritten,
            Ok(_) => return Next::Continue,
            Err(ConnectionError::RequestsDone) => return Next::Done,
            Err(e) => {
                self.connection.down();
                let shedding = self.core.is_shedding();
                self.step(admission::Event::ConnectionLost, None).await;
                let pipeline = self.pipeline.as_str();
                let delay = self.retry.next_delay(&mut rand::rng());
                if shedding {
                    tracing::info!(stage = "source", pipeline, broker = %self.broker, retry_in = ?delay, "disconnected to shed load");
                } else {
                    tracing::warn!(stage = "source", pipeline, broker = %self.broker, error = %e, retry_in = ?delay,
                        failures = self.retry.failures(), "MQTT connection lost");
                }
                return Next::RetryIn(delay);
            }
        };
        self.step(event, None).await;
        Next::Continue
    }

    fn log_suback(&self, suback: &rumqttc::SubAck) {
        let pipeline = self.pipeline.as_str();
        for (filter, code) in self.topics.iter().zip(&suback.return_codes) {
            let filter = filter.as_str();
            match code {
                SubscribeReasonCode::Failure => {
                    tracing::error!(stage = "source", pipeline, filter, "broker refused the subscription");
                }
                SubscribeReasonCode::Success(granted) => {
                    tracing::info!(stage = "source", pipeline, filter, ?granted, "subscribed");
                }
            }
        }
    }

    /// A delivery for the pipeline.
    fn delivery(&self, handover: Handover) -> Delivery {
        let (message, oversized) = match handover.content {
            Content::Message(message) => (Some(message), None),
            Content::Oversized(oversized) => (None, Some(oversized)),
            Content::Copy => (None, None),
        };
        let Some(owed) = handover.owed else {
            return Delivery { message, ack: Ack::none(), record: None, oversized };
        };
        let ack = MqttAck { to_source: self.to_source.clone(), ticket: owed.ticket };
        let record = DeliveryRecord {
            source: self.source.clone(),
            identity: owed.identity,
            dedup_horizon: self.limits.dedup_horizon,
        };
        Delivery { message, ack: Ack(AckKind::Mqtt(ack)), record: Some(record), oversized }
    }

    /// The pipeline's last acknowledgements, then DISCONNECT behind them.
    async fn close(mut self, acks: &mut mpsc::Receiver<Ticket>) {
        while self.core.takes_acks()
            && let Ok(ticket) = acks.try_recv()
        {
            self.step(admission::Event::Acknowledged(ticket), None).await;
        }
        self.step(admission::Event::Stop, None).await;
    }
}

/// A PUBLISH as the machine sees it, received now.
fn received(publish: rumqttc::Publish) -> admission::Publish {
    let qos = match publish.qos {
        QoS::AtMostOnce => PublishQos::AtMostOnce,
        // The subscriptions ask for at most QoS 1.
        QoS::AtLeastOnce | QoS::ExactlyOnce => PublishQos::AtLeastOnce { pkid: publish.pkid, dup: publish.dup },
    };
    admission::Publish {
        topic: publish.topic,
        payload: publish.payload,
        qos,
        received_at: crate::telemetry::now_nanos(),
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

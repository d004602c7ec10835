//! MQTT source: a persistent session (`clean_session = false`) subscribed to the pipeline's
//! filters, QoS 1 messages acknowledged manually after commit.
//!
//! The task owns the rumqttc event loop and polls it continuously — also while the pipeline is
//! busy — so keep-alives and acknowledgements keep flowing. Messages that arrive while the
//! pipeline's channel is full wait in a small local queue; when that fills, the loop stops
//! reading (TCP backpressure). For QoS 1 the broker's in-flight window bounds how many can
//! arrive unacknowledged (mosquitto: `max_inflight_messages`, default 20).
//!
//! Reconnects use capped exponential backoff with jitter. Subscriptions are (re)made whenever the
//! broker reports no stored session.

use std::collections::VecDeque;

use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::{Ack, AckError, AckKind, CommittedRecently, Delivery, DeliveryRecord, InPipeline, MAX_MESSAGE_BYTES};
use crate::backoff::Retry;
use crate::batch::Message;
use crate::config::{BrokerConfig, Qos, TopicFilter};
use crate::state::StateStore;

/// Messages held locally while the pipeline's channel is full.
const LOCAL_QUEUE: usize = 1024;
/// Requests (acks, subscriptions) queued towards the event loop.
const REQUEST_CAPACITY: usize = 1024;
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

/// What to do with an incoming publish.
enum Admission {
    /// Hand it to the pipeline.
    Deliver(Delivery),
    /// A copy of a delivery still in the pipeline: drop it.
    InPipeline,
    /// Already committed: acknowledge it now and drop it.
    Committed(Publish),
}

/// Decides about redeliveries (see the module doc of `source`).
struct Admissions {
    client: AsyncClient,
    window: u32,
    in_pipeline: InPipeline,
    committed: CommittedRecently,
    session: Arc<AtomicU64>,
}

impl Admissions {
    fn admit(&mut self, store: &StateStore, publish: &Publish) -> Admission {
        let message = Message {
            topic: publish.topic.clone(),
            payload: publish.payload.clone(),
            received_at: crate::telemetry::now_nanos(),
        };
        if publish.qos == QoS::AtMostOnce {
            return Admission::Deliver(Delivery::unacknowledged(message));
        }
        // The ack needs only the packet id and QoS.
        let mut owed = Publish::new("", publish.qos, Vec::new());
        owed.pkid = publish.pkid;
        let identity = identity(publish);
        if publish.dup {
            if self.in_pipeline.contains(&identity) {
                return Admission::InPipeline;
            }
            if self.committed.contains(store, &identity) {
                return Admission::Committed(owed);
            }
        }
        self.in_pipeline.insert(identity.clone());
        let ack = MqttAck {
            client: self.client.clone(),
            owed,
            identity: identity.clone(),
            in_pipeline: self.in_pipeline.clone(),
            session_at: self.session.load(Ordering::SeqCst),
            session: Arc::clone(&self.session),
        };
        let record = DeliveryRecord { source: self.committed.source.clone(), identity, window: self.window };
        Admission::Deliver(Delivery { message, ack: Ack(AckKind::Mqtt(ack)), record: Some(record) })
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
    pub(super) max_inflight: usize,
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
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let qos = match self.qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        let filters: Vec<SubscribeFilter> =
            self.topics.iter().map(|t| SubscribeFilter::new(t.as_str().to_owned(), qos)).collect();
        let mut retry = Retry::new(self.broker.reconnect);
        let mut admissions = Admissions {
            client: client.clone(),
            window: u32::try_from(self.max_inflight).unwrap_or(u32::MAX),
            in_pipeline: InPipeline::default(),
            committed: CommittedRecently::new(format!("mqtt/{}", self.client_id)),
            session: Arc::default(),
        };
        let mut waiting: VecDeque<Delivery> = VecDeque::new();
        let mut deliveries = Some(deliveries);
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
                    waiting.clear();
                }
                permit = async { sender.as_ref().expect("guarded by the branch condition").reserve().await },
                    if sender.is_some() && !waiting.is_empty() =>
                {
                    match permit {
                        Ok(permit) => permit.send(waiting.pop_front().expect("guarded by the branch condition")),
                        Err(_) => deliveries = None,
                    }
                }
                event = eventloop.poll(), if waiting.len() < LOCAL_QUEUE => match event {
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                        retry.reset();
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
                    Ok(Event::Incoming(Packet::Publish(publish))) if deliveries.is_some() => {
                        match admissions.admit(&self.store, &publish) {
                            Admission::Deliver(delivery) => waiting.push_back(delivery),
                            Admission::InPipeline => {
                                tracing::debug!(stage = "source", pipeline, pkid = publish.pkid, "redelivery of a message in the pipeline dropped");
                            }
                            Admission::Committed(owed) => {
                                tracing::info!(stage = "source", pipeline, pkid = publish.pkid, "redelivery of a committed message acknowledged and dropped");
                                if let Err(e) = client.ack(&owed).await {
                                    tracing::warn!(stage = "source", pipeline, error = %e, "cannot acknowledge a redelivery");
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(ConnectionError::RequestsDone) => break,
                    Err(e) => {
                        let delay = retry.next_delay(&mut rand::rng());
                        tracing::warn!(stage = "source", pipeline, broker = %broker, error = %e, retry_in = ?delay, failures = retry.failures(), "MQTT connection lost");
                        tokio::select! {
                            () = close.cancelled() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
        disconnect(&client, &mut eventloop).await;
    }
}

/// Sends DISCONNECT after every queued request (acknowledgements included) and polls until the
/// broker closes the connection or the grace period ends. The broker keeps the session.
pub(crate) async fn disconnect(client: &AsyncClient, eventloop: &mut rumqttc::EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async { while eventloop.poll().await.is_ok() {} }).await;
}

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

use super::{Ack, AckError, AckKind, Delivery, MAX_MESSAGE_BYTES};
use crate::backoff::Retry;
use crate::batch::Message;
use crate::config::{BrokerConfig, Qos, TopicFilter};

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
    publish: Publish,
}

impl MqttAck {
    pub(super) async fn send(self) -> Result<(), AckError> {
        self.client.ack(&self.publish).await.map_err(|e| AckError { protocol: "mqtt", reason: e.to_string() })
    }
}

pub(super) struct MqttSource {
    pub(super) broker: BrokerConfig,
    pub(super) topics: Vec<TopicFilter>,
    pub(super) qos: Qos,
    pub(super) client_id: String,
    pub(super) pipeline: String,
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
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if deliveries.is_some() {
                            waiting.push_back(delivery(&client, &publish));
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

fn delivery(client: &AsyncClient, publish: &Publish) -> Delivery {
    let message = Message {
        topic: publish.topic.clone(),
        payload: publish.payload.clone(),
        received_at: crate::telemetry::now_nanos(),
    };
    let ack = match publish.qos {
        QoS::AtMostOnce => Ack::none(),
        QoS::AtLeastOnce | QoS::ExactlyOnce => {
            // The ack needs only the packet id and QoS; drop the payload copy.
            let mut owed = Publish::new("", publish.qos, Vec::new());
            owed.pkid = publish.pkid;
            Ack(AckKind::Mqtt(MqttAck { client: client.clone(), publish: owed }))
        }
    };
    Delivery { message, ack }
}

/// Sends DISCONNECT after every queued request (acknowledgements included) and polls until the
/// broker closes the connection or the grace period ends. The broker keeps the session.
pub(crate) async fn disconnect(client: &AsyncClient, eventloop: &mut rumqttc::EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async { while eventloop.poll().await.is_ok() {} }).await;
}

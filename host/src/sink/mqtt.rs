//! MQTT sink: QoS 1 publishes, each confirmed by its PUBACK.
//!
//! A connection task owns the rumqttc event loop. rumqttc hands out no per-publish handle, so
//! publishes are matched to PUBACKs the way its event loop reports them: publish requests are
//! processed in order, `Outgoing::Publish(pkid)` names the packet id each one got, and
//! `Incoming::PubAck(pkid)` confirms it. The session is clean: after a lost connection rumqttc
//! forgets unacknowledged publishes, so every publish still waiting is failed here and the sink
//! sends it again from the outbox. The record body carries its end-to-end id for consumers to
//! drop duplicates.

use std::collections::{HashMap, VecDeque};

use futures::StreamExt;
use rumqttc::{AsyncClient, ConnectionError, Event, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Confirmation, Confirmed, OutgoingRecord, PublishError};
use crate::backoff::Retry;
use crate::config::{BrokerConfig, MqttTopic};
use crate::observe::Link;
use crate::source::{MAX_MESSAGE_BYTES, mqtt_disconnect, mqtt_events, mqtt_options};

type Done = oneshot::Sender<Result<Confirmed, PublishError>>;

struct Request {
    payload: bytes::Bytes,
    done: Done,
}

pub(super) struct MqttPublisher {
    requests: mpsc::Sender<Request>,
}

impl MqttPublisher {
    /// The publisher and its connection, which the caller runs (it ends once the publisher is
    /// dropped, or on `stop` while disconnected).
    pub(super) fn new(
        broker: &BrokerConfig,
        topic: &MqttTopic,
        client_id: &str,
        max_in_flight: usize,
        pipeline: &str,
        uplink: Link,
    ) -> (Self, Connection) {
        let (requests, incoming) = mpsc::channel(max_in_flight);
        let connection = Connection {
            broker: broker.clone(),
            topic: topic.as_str().to_owned(),
            client_id: client_id.to_owned(),
            max_in_flight,
            pipeline: pipeline.to_owned(),
            requests: incoming,
            uplink,
        };
        (Self { requests }, connection)
    }

    pub(super) async fn publish(&mut self, record: &OutgoingRecord) -> Result<Confirmation, PublishError> {
        if record.body.len() > MAX_MESSAGE_BYTES {
            return Err(PublishError {
                reason: format!(
                    "record of {} bytes exceeds the MQTT packet limit of {MAX_MESSAGE_BYTES}",
                    record.body.len()
                ),
                permanent: true,
            });
        }
        let (done, confirmed) = oneshot::channel();
        self.requests
            .send(Request { payload: record.body.clone(), done })
            .await
            .map_err(|_| PublishError::transient("the MQTT connection task has stopped"))?;
        Ok(Box::pin(async move {
            confirmed.await.unwrap_or_else(|_| Err(PublishError::transient("the MQTT connection task has stopped")))
        }))
    }
}

/// The sink's MQTT connection: owns the event loop.
pub(super) struct Connection {
    broker: BrokerConfig,
    topic: String,
    client_id: String,
    max_in_flight: usize,
    pipeline: String,
    requests: mpsc::Receiver<Request>,
    uplink: Link,
}

/// Publishes between request and PUBACK.
#[derive(Default)]
struct Pending {
    /// Handed to rumqttc, packet id not assigned yet (in request order).
    queued: VecDeque<Done>,
    /// Waiting for the PUBACK of their packet id.
    by_pkid: HashMap<u16, Done>,
}

impl Pending {
    fn len(&self) -> usize {
        self.queued.len() + self.by_pkid.len()
    }

    /// Forgets publishes the sink stopped waiting for (it timed out and will send them again),
    /// so they do not hold in-flight slots. Queued ones keep their place: their packet ids are
    /// still to come, in order.
    fn forget_abandoned(&mut self) {
        self.by_pkid.retain(|_, done| !done.is_closed());
    }

    fn fail_all(&mut self, reason: &str) {
        for done in self.queued.drain(..).chain(self.by_pkid.drain().map(|(_, d)| d)) {
            let _ = done.send(Err(PublishError::transient(reason)));
        }
    }
}

impl Connection {
    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut options = match mqtt_options(&self.broker, &self.client_id, true) {
            Ok(options) => options,
            Err(e) => {
                tracing::error!(stage = "sink", pipeline = self.pipeline, broker = %self.broker.url, error = %e, "cannot connect to MQTT");
                return;
            }
        };
        // One more than our in-flight set: with in-order PUBACKs a packet id is never still in use.
        options.set_inflight(u16::try_from(self.max_in_flight + 1).unwrap_or(u16::MAX));
        let (client, eventloop) = AsyncClient::new(options, self.max_in_flight.max(1));
        let mut events = mqtt_events(eventloop);
        let mut retry = Retry::new(self.broker.reconnect);
        let mut pending = Pending::default();
        let mut connected = false;
        let pipeline = self.pipeline.as_str();
        loop {
            pending.forget_abandoned();
            tokio::select! {
                biased;
                request = self.requests.recv(), if connected && pending.len() < self.max_in_flight => {
                    // Closed: the sink stopped draining.
                    let Some(request) = request else { break };
                    match client.publish_bytes(self.topic.clone(), QoS::AtLeastOnce, false, request.payload).await {
                        Ok(()) => pending.queued.push_back(request.done),
                        Err(e) => { let _ = request.done.send(Err(PublishError::transient(e.to_string()))); }
                    }
                }
                Some(event) = events.next() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        self.uplink.up();
                        retry.reset();
                        tracing::info!(stage = "sink", pipeline, broker = %self.broker.url, "MQTT sink connected");
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                        if let Some(done) = pending.queued.pop_front() {
                            pending.by_pkid.insert(pkid, done);
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                        tracing::warn!(stage = "sink", pipeline, pkid, "packet id still in use; the publish waits for its PUBACK");
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(done) = pending.by_pkid.remove(&ack.pkid) {
                            let _ = done.send(Ok(Confirmed::default()));
                        }
                    }
                    Ok(_) => {}
                    Err(ConnectionError::RequestsDone) => break,
                    Err(e) => {
                        connected = false;
                        self.uplink.down();
                        pending.fail_all(&format!("MQTT connection lost: {e}"));
                        let delay = retry.next_delay(&mut rand::rng());
                        tracing::warn!(stage = "sink", pipeline, broker = %self.broker.url, error = %e, retry_in = ?delay, "MQTT sink connection lost");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
        pending.fail_all("the sink is stopping");
        mqtt_disconnect(&client, &mut events).await;
    }
}

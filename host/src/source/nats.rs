//! NATS sources: core subscriptions (at most once) and a JetStream durable pull consumer
//! (at least once, acknowledged after commit).
//!
//! async-nats reconnects by itself (with its own backoff) and restores core subscriptions. The
//! JetStream source re-creates its consumer stream after errors with capped exponential backoff.

use crate::observe::Link;
use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use async_nats::rustls::ClientConfig;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Ack, AckError, AckKind, CommittedRecently, Delivery, DeliveryRecord, InPipeline};
use crate::backoff::Retry;
use crate::batch::Message;
use crate::config::{BrokerConfig, NatsCredentials, NatsSubjectFilter};
use crate::state::StateStore;

/// Unacknowledged JetStream messages the consumer may have out at once.
pub(super) const MAX_ACK_PENDING: i64 = 20_000;
/// How long JetStream waits for an ack before redelivering.
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Connects to a NATS server (in the background: the call returns at once and the client
/// connects and reconnects by itself). With a `tls://` URL every connection is TLS, verified
/// by [`crate::tls::client_config`], or is not made.
/// `client` names the connection on the server and in its log lines; `link`, if given, follows
/// the connection's state.
pub(crate) async fn connect(
    broker: &BrokerConfig,
    client: NatsClient,
    link: Option<Link>,
) -> Result<async_nats::Client, String> {
    let NatsClient { name, stage, pipeline } = client;
    let mut options = async_nats::ConnectOptions::new().name(&name).retry_on_initial_connect();
    if let Some(username) = &broker.username {
        let password = broker.password.as_ref().map(|p| p.expose().clone()).unwrap_or_default();
        options = options.user_and_password(username.clone(), password);
    }
    match &broker.nats_credentials {
        None => {}
        Some(NatsCredentials::File(creds)) => {
            options = options.credentials(creds.expose()).map_err(|e| format!("credentials_file: {e}"))?;
        }
        Some(NatsCredentials::Nkey(seed)) => options = options.nkey(seed.expose().clone()),
    }
    if let Some(tls) = &broker.tls {
        let config = crate::tls::client_config(tls, &broker.url.to_string()).map_err(|problem| problem.to_string())?;
        options = options.tls_client_config(ClientConfig::clone(&config)).require_tls(true);
    }
    let reconnect = broker.reconnect;
    options = options.reconnect_delay_callback(move |attempts| {
        let exponent = u32::try_from(attempts.min(20)).unwrap_or(20);
        reconnect.min.saturating_mul(1 << exponent).min(reconnect.max)
    });
    // The client connects in the background; what goes wrong there reaches the log this way
    // (a refused certificate is logged in more detail by `crate::tls`).
    let url = broker.url.to_string();
    options = options.event_callback(move |event| {
        match event {
            async_nats::Event::ClientError(e) => {
                tracing::warn!(stage, pipeline, broker = url, client = name, error = %e, "NATS connection failed, retrying");
            }
            async_nats::Event::ServerError(e) => {
                tracing::warn!(stage, pipeline, broker = url, client = name, error = %e, "NATS server error");
            }
            async_nats::Event::Connected => link.iter().for_each(Link::up),
            async_nats::Event::Disconnected => link.iter().for_each(Link::down),
            _ => {}
        }
        std::future::ready(())
    });
    options.connect(broker.url.authority()).await.map_err(|e| e.to_string())
}

/// Who a NATS connection is for: its name on the server, and the stage and pipeline its log
/// lines carry.
#[derive(Clone, Debug)]
pub(crate) struct NatsClient {
    /// The connection's name on the server.
    pub(crate) name: String,
    /// The stage of its log lines (`source`, `sink`, `fleet`).
    pub(crate) stage: &'static str,
    /// The pipeline it serves (empty for the fleet agent's).
    pub(crate) pipeline: String,
}

impl NatsClient {
    /// The connection of `pipeline`'s `stage`.
    pub(crate) fn of_pipeline(pipeline: &str, stage: &'static str) -> Self {
        Self { name: format!("weir {pipeline} {stage}"), stage, pipeline: pipeline.to_owned() }
    }
}

/// Whether the NATS client accepts `credentials` (a credentials file's user JWT and nkey seed,
/// or an nkey seed), without showing any of it in the reason.
pub(crate) fn check_nats_credentials(credentials: &NatsCredentials) -> Result<(), String> {
    match credentials {
        NatsCredentials::File(creds) => {
            async_nats::ConnectOptions::new().credentials(creds.expose()).map(drop).map_err(|e| e.to_string())
        }
        NatsCredentials::Nkey(seed) => nkeys::KeyPair::from_seed(seed.expose())
            .map(drop)
            .map_err(|_| "not an nkey seed (a line starting with `S`, as `nk -gen user` writes)".to_owned()),
    }
}

/// The source's client; `None` (logged) when the options cannot even be used.
async fn connect_source(broker: &BrokerConfig, pipeline: &str, link: &Link) -> Option<async_nats::Client> {
    match connect(broker, NatsClient::of_pipeline(pipeline, "source"), Some(link.clone())).await {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::error!(stage = "source", pipeline, error = %e, "cannot connect to NATS");
            None
        }
    }
}

/// A JetStream acknowledgement owed to the server.
pub(super) struct JetStreamAck {
    acker: jetstream::message::Acker,
    identity: Vec<u8>,
    in_pipeline: InPipeline,
}

impl std::fmt::Debug for JetStreamAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JetStreamAck")
    }
}

impl JetStreamAck {
    pub(super) async fn send(self) -> Result<(), AckError> {
        self.in_pipeline.remove(&self.identity);
        self.acker.ack().await.map_err(|e| AckError { protocol: "jetstream", reason: e.to_string() })
    }
}

fn message(subject: &str, payload: bytes::Bytes) -> Message {
    Message { topic: subject.to_owned(), payload, received_at: crate::telemetry::now_nanos() }
}

pub(super) struct CoreSource {
    pub(super) broker: BrokerConfig,
    pub(super) subjects: Vec<NatsSubjectFilter>,
    pub(super) queue_group: Option<String>,
    pub(super) pipeline: String,
    pub(super) connection: Link,
}

impl CoreSource {
    pub(super) async fn run(self, deliveries: mpsc::Sender<Delivery>, intake: CancellationToken) {
        let pipeline = self.pipeline.as_str();
        let Some(client) = connect_source(&self.broker, pipeline, &self.connection).await else { return };
        let mut subscriptions = Vec::new();
        for subject in &self.subjects {
            let subscribed = match &self.queue_group {
                Some(group) => client.queue_subscribe(subject.as_str().to_owned(), group.clone()).await,
                None => client.subscribe(subject.as_str().to_owned()).await,
            };
            match subscribed {
                Ok(subscription) => subscriptions.push(subscription),
                Err(e) => {
                    tracing::error!(stage = "source", pipeline, subject = subject.as_str(), error = %e, "cannot subscribe");
                }
            }
        }
        // The round trip makes sure the server has the subscriptions before we say so.
        if let Err(e) = client.flush().await {
            tracing::warn!(stage = "source", pipeline, error = %e, "NATS subscriptions not confirmed yet");
        }
        tracing::info!(stage = "source", pipeline, broker = %self.broker.url, subjects = subscriptions.len(), "NATS subscribed");
        let mut incoming = futures::stream::select_all(subscriptions);
        loop {
            let next = tokio::select! {
                () = intake.cancelled() => break,
                next = incoming.next() => next,
            };
            let Some(received) = next else { break };
            let delivery = Delivery::unacknowledged(message(received.subject.as_str(), received.payload));
            tokio::select! {
                () = intake.cancelled() => break,
                sent = deliveries.send(delivery) => if sent.is_err() { break },
            }
        }
    }
}

pub(super) struct JetStreamSource {
    pub(super) broker: BrokerConfig,
    pub(super) stream: String,
    pub(super) consumer: String,
    pub(super) subjects: Vec<NatsSubjectFilter>,
    pub(super) pipeline: String,
    pub(super) store: StateStore,
    pub(super) connection: Link,
}

impl JetStreamSource {
    /// A delivery for the pipeline, or `None` for a redelivery already handled (see `source`).
    async fn admit(
        &self,
        received: jetstream::Message,
        in_pipeline: &InPipeline,
        committed: &mut CommittedRecently,
    ) -> Option<Delivery> {
        let (sequence, redelivered) = match received.info() {
            Ok(info) => (info.stream_sequence, info.delivered > 1),
            Err(e) => {
                // Without its metadata the message cannot be deduplicated; processing it risks a
                // duplicate, dropping it unacknowledged only delays it (it comes back).
                tracing::warn!(stage = "source", pipeline = %self.pipeline, error = %e, "JetStream message without metadata; left for redelivery");
                return None;
            }
        };
        let identity = sequence.to_be_bytes().to_vec();
        if redelivered {
            if in_pipeline.contains(&identity) {
                return None;
            }
            if committed.contains(&self.store, &identity) {
                // Committed before; its ack was lost. Commit the identity again, then ack.
                tracing::debug!(stage = "source", pipeline = %self.pipeline, sequence, "redelivery of a committed message");
                in_pipeline.insert(identity.clone());
                let (_, acker) = received.split();
                return Some(self.delivery(None, acker, identity, in_pipeline, committed));
            }
        }
        in_pipeline.insert(identity.clone());
        let (received, acker) = received.split();
        let message = message(received.subject.as_str(), received.payload);
        Some(self.delivery(Some(message), acker, identity, in_pipeline, committed))
    }

    fn delivery(
        &self,
        message: Option<Message>,
        acker: jetstream::message::Acker,
        identity: Vec<u8>,
        in_pipeline: &InPipeline,
        committed: &CommittedRecently,
    ) -> Delivery {
        let record = DeliveryRecord {
            source: committed.source.clone(),
            identity: identity.clone(),
            dedup_horizon: u32::try_from(MAX_ACK_PENDING).unwrap_or(u32::MAX),
        };
        let ack = JetStreamAck { acker, identity, in_pipeline: in_pipeline.clone() };
        Delivery { message, ack: Ack(AckKind::JetStream(Box::new(ack))), record: Some(record), oversized: None }
    }

    async fn consumer(&self, context: &jetstream::Context) -> Result<jetstream::consumer::PullConsumer, String> {
        let stream = context.get_stream(&self.stream).await.map_err(|e| format!("stream {:?}: {e}", self.stream))?;
        let config = pull::Config {
            durable_name: Some(self.consumer.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            filter_subject: self.subjects.first().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            ..Default::default()
        };
        stream
            .get_or_create_consumer(&self.consumer, config)
            .await
            .map_err(|e| format!("consumer {:?} on stream {:?}: {e}", self.consumer, self.stream))
    }

    pub(super) async fn run(
        self,
        deliveries: mpsc::Sender<Delivery>,
        intake: CancellationToken,
        close: CancellationToken,
    ) {
        let pipeline = self.pipeline.as_str();
        let Some(client) = connect_source(&self.broker, pipeline, &self.connection).await else { return };
        let context = jetstream::new(client.clone());
        let mut retry = Retry::new(self.broker.reconnect);
        let in_pipeline = InPipeline::default();
        let mut committed = CommittedRecently::new(format!("jetstream/{}/{}", self.stream, self.consumer), pipeline);
        'consume: while !intake.is_cancelled() {
            committed.reset();
            let messages = match self.consumer(&context).await {
                Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            let mut messages = match messages {
                Ok(messages) => {
                    tracing::info!(stage = "source", pipeline, stream = %self.stream, consumer = %self.consumer, "JetStream consuming");
                    messages
                }
                Err(e) => {
                    let delay = retry.next_delay(&mut rand::rng());
                    tracing::warn!(stage = "source", pipeline, error = %e, retry_in = ?delay, "JetStream consumer unavailable");
                    tokio::select! {
                        () = intake.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    () = intake.cancelled() => break 'consume,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(received)) => {
                        retry.reset();
                        let Some(delivery) = self.admit(received, &in_pipeline, &mut committed).await else { continue };
                        tokio::select! {
                            () = intake.cancelled() => break 'consume,
                            sent = deliveries.send(delivery) => if sent.is_err() { break 'consume },
                        }
                    }
                    Some(Err(e)) => {
                        // Transient (missed heartbeat, server gone for a while): the stream keeps going.
                        let delay = retry.next_delay(&mut rand::rng());
                        tracing::warn!(stage = "source", pipeline, error = %e, retry_in = ?delay, "JetStream pull failed");
                        tokio::select! {
                            () = intake.cancelled() => break 'consume,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                    None => {
                        let delay = retry.next_delay(&mut rand::rng());
                        tracing::warn!(stage = "source", pipeline, retry_in = ?delay, "JetStream consumer stream ended; re-creating it");
                        tokio::select! {
                            () = intake.cancelled() => break 'consume,
                            () = tokio::time::sleep(delay) => continue 'consume,
                        }
                    }
                }
            }
        }
        drop(deliveries);
        // Keep the connection until the pipeline's last acknowledgements are out.
        close.cancelled().await;
        if let Err(e) = client.flush().await {
            tracing::warn!(stage = "source", pipeline, error = %e, "could not flush the last acknowledgements");
        }
    }
}

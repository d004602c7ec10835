//! JetStream sink: publishes each record with `Nats-Msg-Id = <gateway>.<stream>.<seq>` and
//! awaits the stream's ack. The server drops a repeated id inside the stream's duplicate-detection period (`duplicate_window`)
//! (acking it as a duplicate), so resending after a lost ack does not store the record twice.
//!
//! Beyond that period (an outage longer than it, a crash between a publish and its ack), the
//! sink asks before resending: [`JetStreamPublisher::stored_since`] walks the subject forward
//! from the stream sequence of the last confirmed record and collects every message whose
//! `Nats-Msg-Id` names this gateway and stream. Walking (rather than reading only the last
//! message) matters: after a cut connection the client resends what it had buffered, so a later
//! record can be stored while an earlier one, lost on the dead connection, is not. Messages of
//! other writers on the subject are skipped; the walk stops at the end of the subject or after
//! [`MAX_WALK`] messages (then the rest is sent again: duplicates possible, no loss).

use async_nats::header::{HeaderMap, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, context::PublishErrorKind};

use super::{Confirmation, Confirmed, Found, OutgoingRecord, PublishError};
use crate::config::{BrokerConfig, NatsSubject};
use crate::observe::Link;
use crate::source::{NatsClient, nats_connect};

/// Most messages a reconciliation reads.
const MAX_WALK: usize = 10_000;

pub(super) struct JetStreamPublisher {
    client: async_nats::Client,
    context: jetstream::Context,
    subject: String,
    /// The stream capturing `subject`, found on first use.
    stream: Option<jetstream::stream::Stream>,
}

fn failure(kind: PublishErrorKind, error: &impl std::fmt::Display) -> PublishError {
    let reason = match kind {
        PublishErrorKind::StreamNotFound => {
            format!("{error} (no JetStream stream captures this subject, or JetStream is down)")
        }
        _ => error.to_string(),
    };
    PublishError { reason, permanent: kind == PublishErrorKind::MaxPayloadExceeded }
}

impl JetStreamPublisher {
    pub(super) async fn connect(
        broker: &BrokerConfig,
        subject: &NatsSubject,
        ack_timeout: std::time::Duration,
        pipeline: &str,
        uplink: Link,
    ) -> Result<Self, String> {
        let client = nats_connect(broker, NatsClient::of_pipeline(pipeline, "sink"), Some(uplink)).await?;
        let context = jetstream::ContextBuilder::new().timeout(ack_timeout).build(client.clone());
        Ok(Self { client, context, subject: subject.as_str().to_owned(), stream: None })
    }

    /// The largest message (headers and payload) the server announced it accepts.
    pub(super) fn max_payload(&self) -> u64 {
        self.client.server_info().max_payload as u64
    }

    pub(super) async fn publish(&mut self, record: &OutgoingRecord) -> Result<Confirmation, PublishError> {
        let mut headers = HeaderMap::new();
        let id = record
            .id
            .parse::<HeaderValue>()
            .map_err(|e| PublishError { reason: format!("record id {:?}: {e}", record.id), permanent: true })?;
        headers.insert(NATS_MESSAGE_ID, id);
        let ack = self
            .context
            .publish_with_headers(self.subject.clone(), headers, record.body.clone())
            .await
            .map_err(|e| failure(e.kind(), &e))?;
        Ok(Box::pin(async move {
            let ack = ack.await.map_err(|e| failure(e.kind(), &e))?;
            if ack.duplicate {
                tracing::debug!(stage = "sink", stream = %ack.stream, sequence = ack.sequence, "JetStream already had this record");
            }
            Ok(Confirmed { position: Some(ack.sequence) })
        }))
    }

    /// The stream capturing the subject, found on first use.
    async fn stream(&mut self) -> Result<jetstream::stream::Stream, PublishError> {
        if let Some(handle) = &self.stream {
            return Ok(handle.clone());
        }
        let name = self.context.stream_by_subject(self.subject.clone()).await.map_err(|e| {
            // Without a connection the question times out, which says nothing about streams.
            let connected = self.client.connection_state() == async_nats::connection::State::Connected;
            PublishError::transient(if connected {
                format!("no JetStream stream captures {}: {e}", self.subject)
            } else {
                format!("not connected to the broker: {e}")
            })
        })?;
        let handle = self.context.get_stream(name).await.map_err(|e| PublishError::transient(e.to_string()))?;
        Ok(self.stream.insert(handle).clone())
    }

    /// The records of `<gateway>.<stream>` stored on the subject after stream sequence `position`.
    pub(super) async fn stored_since(
        &mut self,
        gateway: &str,
        stream: &str,
        position: u64,
    ) -> Result<Found, PublishError> {
        let handle = self.stream().await?;
        let mut found = Found::default();
        let mut next = position + 1;
        for _ in 0..MAX_WALK {
            let message =
                handle.raw_message_builder().sequence(next).next_by_subject(self.subject.clone()).send().await;
            let message = match message {
                Ok(message) => message,
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => return Ok(found),
                Err(e) => return Err(PublishError::transient(format!("cannot read {} at {next}: {e}", self.subject))),
            };
            let id = message.headers.get(NATS_MESSAGE_ID).map(|v| v.as_str().to_owned()).unwrap_or_default();
            if let Some(seq) = own_seq(&id, gateway, stream) {
                found.records.push(seq);
                found.position = message.sequence;
            }
            next = message.sequence + 1;
        }
        tracing::warn!(stage = "sink", pipeline = %stream, subject = %self.subject, "walked {MAX_WALK} messages without reaching the end of the subject; the rest is sent again");
        Ok(found)
    }
}

/// The seq in a record id `<gateway>.<stream>.<seq>` of this gateway and stream.
fn own_seq(id: &str, gateway: &str, stream: &str) -> Option<u64> {
    let rest = id.strip_prefix(gateway)?.strip_prefix('.')?.strip_prefix(stream)?.strip_prefix('.')?;
    rest.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::own_seq;

    #[test]
    fn record_ids_of_other_writers_are_not_ours() {
        assert_eq!(own_seq("gw.boiler.42", "gw", "boiler"), Some(42));
        assert_eq!(own_seq("gw.boiler-2.42", "gw", "boiler"), None);
        assert_eq!(own_seq("gw2.boiler.42", "gw", "boiler"), None);
        assert_eq!(own_seq("gw.boiler.x", "gw", "boiler"), None);
        assert_eq!(own_seq("", "gw", "boiler"), None);
    }
}

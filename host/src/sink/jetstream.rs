//! JetStream sink: publishes each record with `Nats-Msg-Id = <gateway>.<stream>.<seq>` and
//! awaits the stream's ack. The server drops a repeated id inside the stream's duplicate window
//! (acking it as a duplicate), so resending after a lost ack does not store the record twice.
//!
//! Beyond that window (an outage longer than it, a crash between a publish and its ack), the
//! sink asks before resending: [`JetStreamPublisher::stored_up_to`] reads the last message on
//! the subject, and if it carries this stream's id, every record up to its seq is already
//! stored. Records are published in seq order on one connection, so the server stores them in
//! that order. This needs the subject to be written by this gateway's pipeline alone; a subject
//! shared with other writers answers nothing and only the duplicate window protects.

use async_nats::header::{HeaderMap, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, context::PublishErrorKind};

use super::{Confirmation, OutgoingRecord, PublishError};
use crate::config::{BrokerConfig, NatsSubject};
use crate::source::nats_connect;

/// How long a publish waits for the stream's ack.
const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) struct JetStreamPublisher {
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
    pub(super) async fn connect(broker: &BrokerConfig, subject: &NatsSubject, pipeline: &str) -> Result<Self, String> {
        let client = nats_connect(broker, &format!("weir {pipeline} sink")).await?;
        let context = jetstream::ContextBuilder::new().timeout(ACK_TIMEOUT).build(client);
        Ok(Self { context, subject: subject.as_str().to_owned(), stream: None })
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
            Ok(())
        }))
    }

    /// The seq of the last record of `<gateway>.<stream>` stored on the subject, if the subject's
    /// last message is one of them.
    pub(super) async fn stored_up_to(&mut self, gateway: &str, stream: &str) -> Result<Option<u64>, PublishError> {
        let handle = match &self.stream {
            Some(handle) => handle.clone(),
            None => {
                let name = self.context.stream_by_subject(self.subject.clone()).await.map_err(|e| {
                    PublishError::transient(format!("no JetStream stream captures {}: {e}", self.subject))
                })?;
                let handle = self.context.get_stream(name).await.map_err(|e| PublishError::transient(e.to_string()))?;
                self.stream.insert(handle).clone()
            }
        };
        let last = match handle.get_last_raw_message_by_subject(&self.subject).await {
            Ok(last) => last,
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => {
                return Err(PublishError::transient(format!("cannot read the last message on {}: {e}", self.subject)));
            }
        };
        let id = last.headers.get(NATS_MESSAGE_ID).map(|v| v.as_str().to_owned()).unwrap_or_default();
        Ok(own_seq(&id, gateway, stream))
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

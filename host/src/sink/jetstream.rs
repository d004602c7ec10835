//! JetStream sink: publishes each record with `Nats-Msg-Id = <gateway>.<stream>.<seq>` and
//! awaits the stream's ack. The server drops a repeated id inside the stream's duplicate window
//! (acking it as a duplicate), so resending after a lost ack does not store the record twice.

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
        Ok(Self { context, subject: subject.as_str().to_owned() })
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
}

//! The batcher: groups a pipeline's deliveries into batches. A batch closes at `max_messages`
//! deliveries (capped by the broker's in-flight limit, which sends nothing more until acks
//! flow), at `max_bytes` of payload, or `linger` after its first delivery.
//!
//! Backpressure: its channel to the processor holds one batch; while the processor is busy the
//! batcher waits, the source's channel fills, and the source stops taking input.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::BatchConfig;
use crate::source::Delivery;

/// When a batch closes.
#[derive(Clone, Copy, Debug)]
pub(super) struct BatchLimits {
    max_messages: usize,
    max_bytes: u64,
    linger: Duration,
}

impl BatchLimits {
    pub(super) fn new(config: BatchConfig, in_flight_limit: Option<usize>) -> Self {
        let max_messages = in_flight_limit.map_or(config.max_messages, |limit| config.max_messages.min(limit));
        Self { max_messages, max_bytes: config.max_bytes, linger: config.linger }
    }
}

/// Groups deliveries into batches: a batch closes at `max_messages`, at `max_bytes` of payload, or
/// `linger` after its first message. Ends (after sending the last partial batch) when the source
/// closes its channel.
pub(super) async fn run_batcher(
    mut deliveries: mpsc::Receiver<Delivery>,
    batches: mpsc::Sender<Vec<Delivery>>,
    limits: BatchLimits,
) {
    while let Some(first) = deliveries.recv().await {
        let deadline = tokio::time::Instant::now() + limits.linger;
        let mut bytes = first.payload_len();
        let mut batch = vec![first];
        while batch.len() < limits.max_messages && bytes < limits.max_bytes {
            match tokio::time::timeout_at(deadline, deliveries.recv()).await {
                Ok(Some(delivery)) => {
                    bytes += delivery.payload_len();
                    batch.push(delivery);
                }
                Ok(None) | Err(_) => break,
            }
        }
        if batches.send(batch).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::batch::Message;

    fn delivery(payload: &'static str) -> Delivery {
        Delivery::unacknowledged(Message { topic: "t".into(), payload: Bytes::from(payload), received_at: 5 })
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_at_the_message_limit_at_linger_and_when_the_source_ends() {
        let (deliveries, incoming) = mpsc::channel(16);
        let (batches_tx, mut batches) = mpsc::channel(16);
        let limits = BatchLimits { max_messages: 3, max_bytes: u64::MAX, linger: Duration::from_millis(100) };
        tokio::spawn(run_batcher(incoming, batches_tx, limits));
        for payload in ["1", "2", "3", "4"] {
            deliveries.send(delivery(payload)).await.expect("batcher runs");
        }
        assert_eq!(batches.recv().await.expect("a full batch").len(), 3);
        // The fourth waits for the linger (paused time advances by itself when idle).
        let started = tokio::time::Instant::now();
        assert_eq!(batches.recv().await.expect("a lingering batch").len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(100));
        deliveries.send(delivery("5")).await.expect("batcher runs");
        drop(deliveries);
        assert_eq!(batches.recv().await.expect("the last partial batch").len(), 1);
        assert!(batches.recv().await.is_none(), "the batcher ends with its source");
    }

    #[test]
    fn ack_window_caps_the_batch_size() {
        let config = BatchConfig { max_messages: 1000, max_bytes: 1, linger: Duration::ZERO, queue: 1 };
        assert_eq!(BatchLimits::new(config, Some(20)).max_messages, 20);
        assert_eq!(BatchLimits::new(config, None).max_messages, 1000);
    }
}

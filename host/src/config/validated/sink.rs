//! `[pipelines.<name>.sink.<kind>]`, validated: where a pipeline's records go.

use std::time::Duration;

use crate::config::{BrokerConfig, MqttClientId, MqttTopic, NatsSubject};

/// `[pipelines.<name>.sink.<kind>]` — a pipeline's sink.
#[derive(Clone, Debug)]
pub enum SinkConfig {
    /// `[pipelines.<name>.sink.jetstream]` — JetStream publish, awaiting the ack.
    JetStream {
        /// `broker = "central"` — the broker, a NATS one.
        broker: BrokerConfig,
        /// `subject = "weir.plant1.boiler"` — subject published to.
        subject: NatsSubject,
        /// `max_in_flight = 64` — publishes awaiting their ack at once.
        max_in_flight: usize,
        /// `ack_timeout = "5s"` — how long a publish waits for its ack.
        ack_timeout: Duration,
    },
    /// `[pipelines.<name>.sink.mqtt]` — MQTT QoS 1 publish, awaiting the PUBACK.
    Mqtt {
        /// `broker = "central-mqtt"` — the broker, an MQTT one.
        broker: BrokerConfig,
        /// `topic = "weir/plant1/boiler"` — topic published to.
        topic: MqttTopic,
        /// `client_id = "gw07-boiler-out"` (default `weir-<gateway>-<pipeline>-out`); no other
        /// MQTT source or sink of the configuration uses it on the same broker.
        client_id: MqttClientId,
        /// `max_in_flight = 64` — publishes awaiting their PUBACK at once.
        max_in_flight: usize,
    },
    /// `[pipelines.<name>.sink.console]` — human-readable lines on standard output.
    Console {
        /// `series_shown = 4` — series listed per record.
        series_shown: usize,
    },
}

impl SinkConfig {
    /// Short name of the sink kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JetStream { .. } => "jetstream",
            Self::Mqtt { .. } => "mqtt",
            Self::Console { .. } => "console",
        }
    }
}

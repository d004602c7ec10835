//! `[pipelines.<name>.source.<kind>]`, validated: where a pipeline's messages come from.

use std::time::Duration;

use crate::config::{BrokerConfig, MqttClientId, NatsSubjectFilter, SimulatedPayload, SimulatedSensor, TopicFilter};

/// The largest MQTT packet (its remaining length is at most 268 435 455 bytes), and so the
/// largest payload an MQTT source can be sent.
pub const MQTT_MAX_PAYLOAD: u64 = 268_435_455;

/// `[pipelines.<name>.source.<kind>]` — a pipeline's source.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// `[pipelines.<name>.source.mqtt]` — MQTT subscription with a persistent session.
    Mqtt {
        /// `broker = "plant"` — the broker, an MQTT one.
        broker: BrokerConfig,
        /// `topics = ["plant1/+/temp"]` — filters subscribed to (at least one).
        topics: Vec<TopicFilter>,
        /// `qos = 1` — QoS of the subscriptions.
        qos: Qos,
        /// `client_id = "gw07-boiler"` (default `weir-<gateway>-<pipeline>`) — the session's key
        /// on the broker; no other MQTT source or sink of the configuration uses it on the same
        /// broker.
        client_id: MqttClientId,
        /// `max_inflight = 20` — the broker's in-flight limit for QoS 1 messages to this
        /// client.
        max_inflight: usize,
        /// `max_message_size = "4MiB"` — larger messages are dead-lettered instead of decoded.
        max_message_size: u64,
    },
    /// `[pipelines.<name>.source.nats]` — NATS core subscription (at most once).
    Nats {
        /// `broker = "plant-nats"` — the broker, a NATS one.
        broker: BrokerConfig,
        /// `subjects = ["sensors.>"]` — subjects subscribed to (at least one).
        subjects: Vec<NatsSubjectFilter>,
        /// `queue_group = "weir"` — queue group, if shared.
        queue_group: Option<String>,
    },
    /// `[pipelines.<name>.source.jetstream]` — JetStream durable pull consumer (at least once).
    JetStream {
        /// `broker = "plant-nats"` — the broker, a NATS one.
        broker: BrokerConfig,
        /// `stream = "SENSORS"` — stream name.
        stream: String,
        /// `consumer = "weir-gw07"` — durable consumer name.
        consumer: String,
        /// `subjects = ["sensors.boiler.>"]` — filter subjects, at most one (empty: the whole
        /// stream).
        subjects: Vec<NatsSubjectFilter>,
    },
    /// `[pipelines.<name>.source.simulated]` — built-in simulated devices.
    Simulated(SimulatedConfig),
    /// `[pipelines.<name>.source.sensors]` — devices on the gateway's own buses (at most once:
    /// a sample not yet committed when the gateway stops is not taken again).
    Sensors(super::SensorsConfig),
}

/// MQTT quality of service for subscriptions (`qos = 0` or `qos = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    /// `qos = 0` — at most once: nothing is acknowledged.
    AtMostOnce,
    /// `qos = 1` — at least once: acknowledged after the derived data is committed.
    AtLeastOnce,
}

/// `[pipelines.<name>.source.simulated]` — simulated devices.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulatedConfig {
    /// `payload = "json"` — payload format.
    pub payload: SimulatedPayload,
    /// `devices = 8` — number of devices.
    pub devices: u32,
    /// `interval = "250ms"` — reporting interval per device.
    pub interval: Duration,
    /// `topic_prefix = "sim/plant1"` — first topic levels.
    pub topic_prefix: String,
    /// `seed = 0` — random seed.
    pub seed: u64,
    /// `sensors = ["temperature", "vibration"]` — sensors of each device, in report order
    /// (default: temperature, humidity, pressure, vibration).
    pub sensors: Vec<SimulatedSensor>,
}

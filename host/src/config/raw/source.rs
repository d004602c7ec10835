//! `[pipelines.<name>.source.<kind>]` as written: MQTT, NATS core, JetStream, the simulator, or
//! sensors on the gateway's own buses (`sensors.rs`).

use serde::Deserialize;
use toml::Spanned;

use crate::config::types::{CountIn, DAY, DurationIn, MqttClientId, Name, NatsSubjectFilter, SizeIn, TopicFilter};

/// Where a pipeline's messages come from; exactly one kind.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawSource {
    /// `[pipelines.<name>.source.mqtt]`
    Mqtt(RawMqttSource),
    /// `[pipelines.<name>.source.nats]`
    Nats(RawNatsSource),
    /// `[pipelines.<name>.source.jetstream]`
    Jetstream(RawJetStreamSource),
    /// `[pipelines.<name>.source.simulated]`
    Simulated(RawSimulatedSource),
    /// `[pipelines.<name>.source.sensors]`
    Sensors(super::RawSensorsSource),
}

/// `[pipelines.<name>.source.mqtt]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttSource {
    /// `broker = "plant"`
    pub broker: Spanned<Name>,
    /// `topics = ["plant1/+/temp"]`
    pub topics: Vec<TopicFilter>,
    /// `qos = 1` — 0 (at most once) or 1 (at least once, acknowledged after commit).
    #[serde(default = "default_qos")]
    pub qos: Spanned<u8>,
    /// `client_id = "gw07-boiler"` — default `weir-<gateway>-<pipeline>`; keep it stable, the broker
    /// keeps the persistent session under it. Refused when another MQTT source or sink of this
    /// configuration uses the same id on the same broker.
    pub client_id: Option<Spanned<MqttClientId>>,
    /// `max_inflight = 20` — the broker's in-flight limit for QoS 1 messages to this client
    /// (mosquitto `max_inflight_messages`, default 20). The broker sends no more until some are
    /// acknowledged, so a batch closes once it holds this many; raise both together for throughput
    /// (1 to 65535, MQTT's packet identifiers).
    pub max_inflight: Option<CountIn<1, 65_535>>,
    /// `max_message_size = "4MiB"` — larger messages are not decoded: each is dead-lettered
    /// (topic, size, the first 64 KiB) and acknowledged, and the pipeline goes on (1B to
    /// 268435455B, MQTT's largest packet).
    pub max_message_size: Option<SizeIn<1, 268_435_455>>,
}

fn default_qos() -> Spanned<u8> {
    Spanned::new(0..0, 1)
}

/// `[pipelines.<name>.source.nats]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNatsSource {
    /// `broker = "plant-nats"`
    pub broker: Spanned<Name>,
    /// `subjects = ["sensors.>"]`
    pub subjects: Vec<NatsSubjectFilter>,
    /// `queue_group = "weir"` — share the subjects among several gateways.
    pub queue_group: Option<String>,
}

/// `[pipelines.<name>.source.jetstream]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJetStreamSource {
    /// `broker = "plant-nats"`
    pub broker: Spanned<Name>,
    /// `stream = "SENSORS"` — an existing stream.
    pub stream: String,
    /// `consumer = "weir-gw07"` — durable pull consumer, created when missing.
    pub consumer: String,
    /// `subjects = ["sensors.boiler.>"]` — filter; default: the whole stream.
    #[serde(default)]
    pub subjects: Vec<NatsSubjectFilter>,
}

/// `[pipelines.<name>.source.simulated]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSimulatedSource {
    /// `payload = "json"` — `json`, `senml_json` or `frames` (see docs/configuration.md).
    pub payload: SimulatedPayload,
    /// `devices = 8` — 1 to 65535 (frames carry the device number in 16 bits).
    pub devices: CountIn<1, 65_535>,
    /// `interval = "250ms"` — each device reports this often (1ms to 24h).
    pub interval: DurationIn<1, DAY>,
    /// `topic_prefix = "sim/plant1"`
    pub topic_prefix: String,
    /// `seed = 7` — same seed, same signals.
    #[serde(default)]
    pub seed: u64,
    /// `sensors = ["temperature", "vibration"]` — which sensors each device has (default: all of
    /// temperature, humidity, pressure, vibration).
    pub sensors: Option<Vec<SimulatedSensor>>,
}

/// A kind of simulated sensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimulatedSensor {
    /// °C, a slow cycle with occasional excursions.
    Temperature,
    /// %RH.
    Humidity,
    /// hPa.
    Pressure,
    /// mm/s, noise with bursts.
    Vibration,
}

/// Payload format a simulated device speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimulatedPayload {
    /// One JSON object per reading: `{"sensor": ..., "ts": <ms>, "value": ..., "unit": ...}`.
    Json,
    /// One SenML pack per device and tick.
    SenmlJson,
    /// One WSF v1 binary frame per device and tick (see functions/frame-decoder).
    Frames,
}

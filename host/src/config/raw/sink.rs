//! `[pipelines.<name>.sink.<kind>]` as written: JetStream, MQTT or the console.

use serde::Deserialize;
use toml::Spanned;

use crate::config::types::{CountIn, DurationIn, HOUR, MqttClientId, MqttTopic, Name, NatsSubject};

/// Where records go; exactly one kind.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawSink {
    /// `[pipelines.<name>.sink.jetstream]`
    Jetstream(RawJetStreamSink),
    /// `[pipelines.<name>.sink.mqtt]`
    Mqtt(RawMqttSink),
    /// `[pipelines.<name>.sink.console]` — print what flows (for trying weir out).
    Console(RawConsoleSink),
}

/// `[pipelines.<name>.sink.jetstream]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJetStreamSink {
    /// `broker = "central"`
    pub broker: Spanned<Name>,
    /// `subject = "weir.plant1.boiler"` — must be captured by a stream on the central server.
    pub subject: NatsSubject,
    /// `max_in_flight = 64` — publishes awaiting their ack at once (1 to 10 000).
    pub max_in_flight: Option<CountIn<1, 10_000>>,
    /// `ack_timeout = "5s"` — how long a publish waits for the stream's ack before it counts as
    /// failed (and is sent again, after asking what the stream stored; 1ms to 1h).
    pub ack_timeout: Option<DurationIn<1, HOUR>>,
}

/// `[pipelines.<name>.sink.mqtt]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttSink {
    /// `broker = "central-mqtt"`
    pub broker: Spanned<Name>,
    /// `topic = "weir/plant1/boiler"`
    pub topic: MqttTopic,
    /// `client_id = "gw07-boiler-out"` — default `weir-<gateway>-<pipeline>-out`. Refused when
    /// another MQTT source or sink of this configuration uses the same id on the same broker.
    pub client_id: Option<Spanned<MqttClientId>>,
    /// `max_in_flight = 64` — publishes awaiting their PUBACK at once (1 to 10 000).
    pub max_in_flight: Option<CountIn<1, 10_000>>,
}

/// `[pipelines.<name>.sink.console]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsoleSink {
    /// `series_shown = 4` — series listed per record (1 to 1000).
    pub series_shown: Option<CountIn<1, 1000>>,
}

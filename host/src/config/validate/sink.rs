//! `[pipelines.<name>.sink.<kind>]`: a broker of the right protocol, and an MQTT sink's client id
//! noted for the check across the configuration (`brokers.rs`).

use std::collections::BTreeMap;

use super::Validator;
use crate::config::defaults;
use crate::config::raw::RawSink;
use crate::config::types::{CountIn, DurationIn};
use crate::config::{BrokerConfig, GatewayId, Name, Protocol, SinkConfig};

impl Validator<'_> {
    /// The sink of `pipeline`, or `None` when its broker is not usable; `field` is
    /// `pipelines.<name>.sink`.
    pub(super) fn sink(
        &mut self,
        gateway: &GatewayId,
        pipeline: &Name,
        raw: RawSink,
        field: &str,
        brokers: &BTreeMap<Name, BrokerConfig>,
    ) -> Option<SinkConfig> {
        match raw {
            RawSink::Jetstream(js) => self
                .broker_ref(&js.broker, &format!("{field}.jetstream.broker"), Protocol::Nats, brokers)
                .map(|broker| SinkConfig::JetStream {
                    broker,
                    subject: js.subject,
                    max_in_flight: js.max_in_flight.map_or(defaults::MAX_IN_FLIGHT, CountIn::as_usize),
                    ack_timeout: js.ack_timeout.map_or(defaults::ACK_TIMEOUT, DurationIn::get),
                }),
            RawSink::Mqtt(mqtt) => {
                let broker = self.broker_ref(&mqtt.broker, &format!("{field}.mqtt.broker"), Protocol::Mqtt, brokers);
                let client_id = self.mqtt_client(
                    broker.as_ref(),
                    mqtt.client_id,
                    mqtt.broker.span(),
                    format!("{field}.mqtt.client_id"),
                    || format!("weir-{gateway}-{pipeline}-out"),
                );
                broker.map(|broker| SinkConfig::Mqtt {
                    broker,
                    topic: mqtt.topic,
                    client_id,
                    max_in_flight: mqtt.max_in_flight.map_or(defaults::MAX_IN_FLIGHT, CountIn::as_usize),
                })
            }
            RawSink::Console(console) => Some(SinkConfig::Console {
                series_shown: console.series_shown.map_or(defaults::SERIES_SHOWN, CountIn::as_usize),
            }),
        }
    }
}

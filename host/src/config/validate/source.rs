//! `[pipelines.<name>.source.<kind>]`: a broker of the right protocol, something to subscribe to,
//! a QoS MQTT can keep, and a client id noted for the check across the configuration
//! (`brokers.rs`).

use std::collections::BTreeMap;

use super::Validator;
use crate::config::defaults;
use crate::config::raw::RawSource;
use crate::config::types::{CountIn, SizeIn};
use crate::config::{BrokerConfig, GatewayId, Name, Protocol, Qos, SimulatedConfig, SimulatedSensor, SourceConfig};

impl Validator<'_> {
    /// The source of `pipeline`, or `None` when its broker is not usable; `field` is
    /// `pipelines.<name>.source`.
    pub(super) fn source(
        &mut self,
        gateway: &GatewayId,
        pipeline: &Name,
        raw: RawSource,
        field: &str,
        brokers: &BTreeMap<Name, BrokerConfig>,
    ) -> Option<SourceConfig> {
        match raw {
            RawSource::Mqtt(mqtt) => {
                let broker = self.broker_ref(&mqtt.broker, &format!("{field}.mqtt.broker"), Protocol::Mqtt, brokers);
                let qos = match *mqtt.qos.get_ref() {
                    0 => Qos::AtMostOnce,
                    1 => Qos::AtLeastOnce,
                    other => {
                        let message = format!("QoS must be 0 or 1, got {other}");
                        self.problem(Some(mqtt.qos.span()), format!("{field}.mqtt.qos"), message);
                        Qos::AtLeastOnce
                    }
                };
                if mqtt.topics.is_empty() {
                    let message = "subscribe to at least one topic";
                    self.problem(Some(mqtt.broker.span()), format!("{field}.mqtt.topics"), message);
                }
                let client_id = self.mqtt_client(
                    broker.as_ref(),
                    mqtt.client_id,
                    mqtt.broker.span(),
                    format!("{field}.mqtt.client_id"),
                    || format!("weir-{gateway}-{pipeline}"),
                );
                let max_inflight = mqtt.max_inflight.map_or(defaults::MQTT_INFLIGHT, CountIn::as_usize);
                let max_message_size = mqtt.max_message_size.map_or(defaults::MAX_MESSAGE_SIZE, SizeIn::get);
                broker.map(|broker| SourceConfig::Mqtt {
                    broker,
                    topics: mqtt.topics,
                    qos,
                    client_id,
                    max_inflight,
                    max_message_size,
                })
            }
            RawSource::Nats(nats) => {
                if nats.subjects.is_empty() {
                    let message = "subscribe to at least one subject";
                    self.problem(Some(nats.broker.span()), format!("{field}.nats.subjects"), message);
                }
                self.broker_ref(&nats.broker, &format!("{field}.nats.broker"), Protocol::Nats, brokers)
                    .map(|broker| SourceConfig::Nats { broker, subjects: nats.subjects, queue_group: nats.queue_group })
            }
            RawSource::Jetstream(js) => {
                if js.subjects.len() > 1 {
                    self.problem(
                        Some(js.broker.span()),
                        format!("{field}.jetstream.subjects"),
                        "a JetStream consumer takes at most one filter subject (several need nats-server 2.10); use a wildcard",
                    );
                }
                self.broker_ref(&js.broker, &format!("{field}.jetstream.broker"), Protocol::Nats, brokers).map(
                    |broker| SourceConfig::JetStream {
                        broker,
                        stream: js.stream,
                        consumer: js.consumer,
                        subjects: js.subjects,
                    },
                )
            }
            RawSource::Sensors(sensors) => {
                self.sensors(sensors, &format!("{field}.sensors")).map(SourceConfig::Sensors)
            }
            RawSource::Simulated(sim) => Some(SourceConfig::Simulated(SimulatedConfig {
                payload: sim.payload,
                devices: sim.devices.as_u32(),
                interval: sim.interval.get(),
                topic_prefix: sim.topic_prefix,
                seed: sim.seed,
                sensors: sim.sensors.filter(|s| !s.is_empty()).unwrap_or_else(|| {
                    vec![
                        SimulatedSensor::Temperature,
                        SimulatedSensor::Humidity,
                        SimulatedSensor::Pressure,
                        SimulatedSensor::Vibration,
                    ]
                }),
            })),
        }
    }
}

//! `[brokers.<name>]`: each broker's settings and password file; a source's or sink's reference
//! to a broker (defined, and speaking the protocol it needs); and the MQTT client ids used on
//! each broker.
//!
//! **Invariant:** no two MQTT connections of a configuration use one client id on one broker
//! (the same host, ignoring case, and port): the broker keeps one session per id and drops the
//! older connection when another connects, so the two would take the session from each other
//! for as long as they run.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use toml::Spanned;

use super::{Validator, list};
use crate::config::defaults;
use crate::config::raw::RawBroker;
use crate::config::types::DurationIn;
use crate::config::{Backoff, BrokerConfig, BrokerUrl, MqttClientId, Name, Protocol};

/// One MQTT connection of a pipeline (its source or its sink).
pub(super) struct MqttClient {
    broker: BrokerUrl,
    client_id: MqttClientId,
    /// `pipelines.<name>.source.mqtt.client_id` or `pipelines.<name>.sink.mqtt.client_id`.
    field: String,
    /// The `client_id` value, or the `broker` value when the id is the default.
    span: Range<usize>,
    /// Whether the id is the default rather than written in the file.
    derived: bool,
}

impl Validator<'_> {
    /// Every broker, by name.
    pub(super) fn brokers(&mut self, raw: BTreeMap<Name, Spanned<RawBroker>>) -> BTreeMap<Name, BrokerConfig> {
        raw.into_iter().map(|(name, broker)| (name.clone(), self.broker(name, &broker))).collect()
    }

    fn broker(&mut self, name: Name, raw: &Spanned<RawBroker>) -> BrokerConfig {
        let broker = raw.get_ref();
        let password = match &broker.password_file {
            None => None,
            Some(file) => match std::fs::read_to_string(self.resolve(file.get_ref())) {
                Ok(password) => Some(password.trim_end_matches(['\r', '\n']).to_owned()),
                Err(e) => {
                    self.problem(
                        Some(file.span()),
                        format!("brokers.{name}.password_file"),
                        format!("cannot read {}: {e}", file.get_ref().display()),
                    );
                    None
                }
            },
        };
        let reconnect = Backoff {
            min: broker.reconnect_min.map_or(defaults::RECONNECT_MIN, DurationIn::get),
            max: broker.reconnect_max.map_or(defaults::RECONNECT_MAX, DurationIn::get),
        };
        if reconnect.min > reconnect.max {
            self.problem(Some(raw.span()), format!("brokers.{name}"), "reconnect_min must not be above reconnect_max");
        }
        if broker.keep_alive.is_some() && broker.url.protocol != Protocol::Mqtt {
            self.problem(
                Some(raw.span()),
                format!("brokers.{name}.keep_alive"),
                "keep_alive applies to MQTT brokers only",
            );
        }
        BrokerConfig {
            name,
            url: broker.url.clone(),
            username: broker.username.clone(),
            password,
            keep_alive: broker.keep_alive.map_or(defaults::KEEP_ALIVE, DurationIn::get),
            reconnect,
        }
    }

    /// The broker called `name`, checked to speak `protocol`.
    pub(super) fn broker_ref(
        &mut self,
        name: &Spanned<Name>,
        field: &str,
        protocol: Protocol,
        brokers: &BTreeMap<Name, BrokerConfig>,
    ) -> Option<BrokerConfig> {
        match brokers.get(name.get_ref()) {
            None => {
                let known: Vec<&str> = brokers.keys().map(Name::as_str).collect();
                self.problem(
                    Some(name.span()),
                    field,
                    format!("no broker is called {:?}; defined: {}", name.get_ref().as_str(), list(&known)),
                );
                None
            }
            Some(broker) if broker.url.protocol != protocol => {
                self.problem(
                    Some(name.span()),
                    field,
                    format!(
                        "broker {:?} speaks {}, but this needs a {protocol} broker",
                        name.get_ref().as_str(),
                        broker.url.protocol
                    ),
                );
                None
            }
            Some(broker) => Some(broker.clone()),
        }
    }

    /// Notes an MQTT connection for [`Self::refuse_shared_client_ids`]; returns its client id:
    /// `explicit`, or else `default()`, which then stands at the `broker` value (`broker_span`).
    pub(super) fn mqtt_client(
        &mut self,
        broker: Option<&BrokerConfig>,
        explicit: Option<Spanned<MqttClientId>>,
        broker_span: Range<usize>,
        field: String,
        default: impl FnOnce() -> String,
    ) -> MqttClientId {
        let (client_id, span, derived) = match explicit {
            Some(id) => (id.get_ref().clone(), id.span(), false),
            None => (
                MqttClientId::try_from(default())
                    .expect("a gateway id and a pipeline name always make a valid client id"),
                broker_span,
                true,
            ),
        };
        if let Some(broker) = broker {
            self.mqtt_clients.push(MqttClient {
                broker: broker.url.clone(),
                client_id: client_id.clone(),
                field,
                span,
                derived,
            });
        }
        client_id
    }

    /// Refuses a second MQTT connection to one broker under a client id already in use (see the
    /// module's invariant), pointing at the first.
    pub(super) fn refuse_shared_client_ids(&mut self) {
        let mut clients = std::mem::take(&mut self.mqtt_clients);
        clients.sort_by_key(|client| client.span.start);
        let mut first_users: HashMap<(String, u16, &str), &MqttClient> = HashMap::new();
        for client in &clients {
            let key = (client.broker.host.to_ascii_lowercase(), client.broker.port, client.client_id.as_str());
            let Some(first) = first_users.get(&key) else {
                first_users.insert(key, client);
                continue;
            };
            let line = self.file.line_of(first.span.start);
            let default = |c: &MqttClient| if c.derived { " (the default)" } else { "" };
            self.problem(
                Some(client.span.clone()),
                client.field.clone(),
                format!(
                    "client id {:?}{} is already used on broker {} by `{}`{} (line {line}); the broker keeps \
                     one session per client id, so the two connections would take it from each other: \
                     give each its own `client_id`",
                    client.client_id.as_str(),
                    default(client),
                    client.broker,
                    first.field,
                    default(first),
                ),
            );
        }
    }
}

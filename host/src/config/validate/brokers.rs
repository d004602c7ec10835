//! `[brokers.<name>]`: each broker's settings and the files they name — password, TLS
//! certificates and key, NATS credentials — read here (whether they are usable is checked by
//! `preflight`, which builds the TLS configuration, at the places noted in `Locations`); a
//! source's or sink's reference to a broker (defined, and speaking the protocol it needs); and
//! the MQTT client ids used on each broker.
//!
//! **Invariant:** no two MQTT connections of a configuration use one client id on one broker
//! (the same host, ignoring case, and port): the broker keeps one session per id and drops the
//! older connection when another connects, so the two would take the session from each other
//! for as long as they run.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::{Validator, list};
use crate::config::defaults;
use crate::config::raw::{RawBroker, RawTls};
use crate::config::types::DurationIn;
use crate::config::{
    Backoff, BrokerConfig, BrokerUrl, ClientIdentity, MqttClientId, Name, NatsCredentials, PemFile, Protocol, Secret,
    TlsConfig,
};

/// Largest password, certificate, key or credentials file read (CA bundles are well under 1 MiB).
const MAX_SECRET_FILE: usize = 16 << 20;

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
        let password = broker.password_file.as_ref().and_then(|file| {
            let password = self.read_text(file, &format!("brokers.{name}.password_file"))?;
            Some(Secret::new(password.trim_end_matches(['\r', '\n']).to_owned()))
        });
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
        self.locations.add_broker_setting(name.clone(), "", raw.span());
        let tls = self.tls(&name, &broker.url, broker.tls.as_ref());
        BrokerConfig {
            nats_credentials: self.nats_credentials(&name, broker),
            name,
            url: broker.url.clone(),
            tls,
            username: broker.username.clone(),
            password,
            keep_alive: broker.keep_alive.map_or(defaults::KEEP_ALIVE, DurationIn::get),
            reconnect,
        }
    }

    /// `[brokers.<name>.tls]`: allowed with a TLS URL only; with one, the table's files read and
    /// where each setting was written noted.
    fn tls(&mut self, name: &Name, url: &BrokerUrl, raw: Option<&Spanned<RawTls>>) -> Option<TlsConfig> {
        let field = format!("brokers.{name}.tls");
        if !url.tls {
            if let Some(table) = raw {
                let scheme = if url.protocol == Protocol::Mqtt { "mqtts" } else { "tls" };
                self.problem(
                    Some(table.span()),
                    field,
                    format!("TLS settings need a TLS url: write `url = \"{scheme}://{}\"`", url.authority()),
                );
            }
            return None;
        }
        let empty = RawTls::default();
        let table = raw.map_or(&empty, Spanned::get_ref);
        for (setting, span) in [
            ("tls.ca_file", table.ca_file.as_ref().map(Spanned::span)),
            ("tls.cert_file", table.cert_file.as_ref().map(Spanned::span)),
            ("tls.key_file", table.key_file.as_ref().map(Spanned::span)),
            ("tls.server_name", table.server_name.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span.or_else(|| raw.map(Spanned::span)) {
                self.locations.add_broker_setting(name.clone(), setting, span);
            }
        }
        let ca = table.ca_file.as_ref().and_then(|file| self.read_pem(file, &format!("{field}.ca_file")));
        let client_identity = match (&table.cert_file, &table.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let certificates = self.read_pem(cert, &format!("{field}.cert_file"));
                let key_pem = self.read_bytes(key, &format!("{field}.key_file"));
                certificates.zip(key_pem).map(|(certificates, key_pem)| ClientIdentity {
                    certificates,
                    key_path: self.resolve(key.get_ref()),
                    key: Secret::new(key_pem),
                })
            }
            (Some(given), None) | (None, Some(given)) => {
                self.problem(
                    Some(given.span()),
                    field.clone(),
                    "a client certificate needs both `cert_file` and `key_file`",
                );
                None
            }
        };
        Some(TlsConfig {
            ca,
            client_identity,
            server_name: table.server_name.as_ref().map(|name| name.get_ref().clone()),
        })
    }

    /// `credentials_file` or `nkey_file`: NATS only, one of them, instead of a username; the
    /// file read (`preflight` checks it as the NATS client reads it).
    fn nats_credentials(&mut self, name: &Name, broker: &RawBroker) -> Option<NatsCredentials> {
        let given: Vec<(&str, &Spanned<PathBuf>)> =
            [("credentials_file", &broker.credentials_file), ("nkey_file", &broker.nkey_file)]
                .into_iter()
                .filter_map(|(setting, file)| file.as_ref().map(|file| (setting, file)))
                .collect();
        let &[(setting, file)] = given.as_slice() else {
            if let [_, (_, second)] = given.as_slice() {
                self.problem(
                    Some(second.span()),
                    format!("brokers.{name}"),
                    "write `credentials_file` or `nkey_file`, not both",
                );
            }
            return None;
        };
        let field = format!("brokers.{name}.{setting}");
        if broker.url.protocol != Protocol::Nats {
            self.problem(Some(file.span()), field, format!("{setting} applies to NATS brokers only"));
            return None;
        }
        if broker.username.is_some() {
            self.problem(
                Some(file.span()),
                field,
                format!("{setting} names the user itself: leave out `username` and `password_file`"),
            );
            return None;
        }
        let text = self.read_text(file, &field)?;
        let (setting, credentials) = if setting == "nkey_file" {
            ("nkey_file", NatsCredentials::Nkey(Secret::new(text.trim().to_owned())))
        } else {
            ("credentials_file", NatsCredentials::File(Secret::new(text)))
        };
        self.locations.add_broker_setting(name.clone(), setting, file.span());
        Some(credentials)
    }

    /// The file's contents, up to [`MAX_SECRET_FILE`] bytes (a path to `/dev/zero` or a log
    /// file by mistake is refused instead of read without end).
    pub(super) fn read_bytes(&mut self, file: &Spanned<PathBuf>, field: &str) -> Option<Vec<u8>> {
        use std::io::Read;
        let mut bytes = Vec::new();
        let read = std::fs::File::open(self.resolve(file.get_ref()))
            .and_then(|f| f.take(u64::try_from(MAX_SECRET_FILE + 1).unwrap_or(u64::MAX)).read_to_end(&mut bytes));
        let shown = file.get_ref().display();
        match read {
            Ok(_) if bytes.len() > MAX_SECRET_FILE => {
                let limit = MAX_SECRET_FILE >> 20;
                self.problem(
                    Some(file.span()),
                    field,
                    format!("{shown} is larger than {limit} MiB: not a key, certificate or credentials file"),
                );
                None
            }
            Ok(_) => Some(bytes),
            Err(e) => {
                self.problem(Some(file.span()), field, format!("cannot read {shown}: {e}"));
                None
            }
        }
    }

    fn read_text(&mut self, file: &Spanned<PathBuf>, field: &str) -> Option<String> {
        let bytes = self.read_bytes(file, field)?;
        String::from_utf8(bytes).map_or_else(
            |_| {
                self.problem(Some(file.span()), field, format!("{} is not UTF-8 text", file.get_ref().display()));
                None
            },
            Some,
        )
    }

    fn read_pem(&mut self, file: &Spanned<PathBuf>, field: &str) -> Option<PemFile> {
        let pem = self.read_bytes(file, field)?;
        Some(PemFile { path: self.resolve(file.get_ref()), pem })
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

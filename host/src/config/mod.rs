//! Configuration: parse ([`raw`]) → validate (here) → the `*Config` types the runtime takes.
//!
//! Runtime code never sees raw TOML: it receives the validated slice it needs (a source gets a
//! [`SourceConfig`], the sandbox a [`FunctionConfig`], …). Cross-references are resolved here —
//! a pipeline's source carries its [`BrokerConfig`], not a broker name — so a misspelt name, a
//! broker of the wrong protocol or a missing component file is refused before anything starts,
//! with file, line, column and field (see [`ConfigError`]).
//!
//! The built-in default (`weir run` without `--config`) is [`DEFAULT_CONFIG`], parsed by the same
//! code.

mod error;
mod locations;
pub mod raw;
pub mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

pub use error::{ConfigError, Problem, redact_credentials};
pub use locations::Locations;
use locations::{FunctionLocation, UseLocation};
pub use raw::{
    Durability, Encoding, NumberEncoding, OnQuarantine, SimulatedPayload, SimulatedSensor, TimeUnit, WhenFull,
};
use raw::{RawBroker, RawConfig, RawDecode, RawFieldMapping, RawPipeline, RawSink, RawSource};
pub use types::{
    BrokerUrl, FunctionId, GatewayId, JsonPointer, MqttClientId, MqttTopic, Name, NatsSubject, NatsSubjectFilter,
    Protocol, TopicFilter,
};

/// The built-in configuration: simulated sensors, the bundled functions, a console sink.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// This gateway.
    pub gateway: GatewayConfig,
    /// The state store.
    pub state: StateConfig,
    /// Every function a pipeline uses, by id.
    pub functions: BTreeMap<FunctionId, FunctionConfig>,
    /// The pipelines, in name order.
    pub pipelines: Vec<PipelineConfig>,
    /// Where its parts were written, for problems found after validation.
    pub locations: Locations,
}

/// `[gateway]`
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Identity in client ids and record ids.
    pub id: GatewayId,
    /// Where state, dead letters, the outbox and compiled functions live.
    pub data_dir: PathBuf,
}

/// `[state]`
#[derive(Clone, Debug)]
pub struct StateConfig {
    /// How commits reach the disk.
    pub durability: Durability,
    /// Longest state key a function may write, in bytes.
    pub max_key: u32,
    /// Longest state value a function may write, in bytes.
    pub max_value: u32,
    /// Dead letters kept before the oldest are evicted.
    pub dead_letter_capacity: u64,
    /// Bytes the kept dead letters may take before the oldest are evicted.
    pub dead_letter_max_bytes: u64,
}

/// A function and the limits every instance of it runs under.
#[derive(Clone, Debug)]
pub struct FunctionConfig {
    /// Its id.
    pub id: FunctionId,
    /// The component file (absolute).
    pub component: PathBuf,
    /// Per-instance limits.
    pub limits: FunctionLimits,
    /// When a faulting function is taken out of service, and for how long.
    pub quarantine: QuarantineConfig,
}

/// Limits of one function instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionLimits {
    /// Linear memory cap in bytes; growing beyond it traps.
    pub memory_bytes: u64,
    /// Wall time per call before the call is interrupted.
    pub timeout: Duration,
    /// Fuel per call (about one unit per WebAssembly instruction), when metered.
    pub fuel: Option<u64>,
    /// Largest size of any table, in elements.
    pub table_elements: u32,
    /// Core module instances the component may create.
    pub instances: u32,
    /// Bytes of state (keys and values) the instance may write between two commits.
    pub state_write_bytes: u64,
    /// Bytes of state (keys and values) one use of the function may keep: a write that would
    /// go beyond it is refused with `quota-exceeded`.
    pub state_quota_bytes: u64,
}

impl FunctionLimits {
    /// The limits of a function that sets none.
    pub const DEFAULT: Self = Self {
        memory_bytes: defaults::MEMORY,
        timeout: defaults::TIMEOUT,
        fuel: None,
        table_elements: defaults::TABLE_ELEMENTS,
        instances: defaults::INSTANCES,
        state_write_bytes: defaults::STATE_WRITES,
        state_quota_bytes: defaults::STATE_QUOTA,
    };
}

/// Quarantine of a function that keeps faulting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuarantineConfig {
    /// Consecutive faults (of one use) that quarantine it.
    pub after: u32,
    /// How long the first quarantine lasts; each further one in a row lasts twice as long, up to
    /// [`QuarantineConfig::LONGEST`].
    pub first: Duration,
}

impl QuarantineConfig {
    /// The longest quarantine.
    pub const LONGEST: Duration = Duration::from_secs(3600);

    /// The quarantine of a function that sets none.
    pub const DEFAULT: Self = Self { after: defaults::QUARANTINE_AFTER, first: defaults::QUARANTINE_FOR };

    /// How long the `n`-th quarantine in a row (from 1) lasts.
    pub fn period(&self, n: u32) -> Duration {
        let doubled = self.first.saturating_mul(1_u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX));
        doubled.min(Self::LONGEST.max(self.first))
    }
}

/// How to reach a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Its name in the config.
    pub name: Name,
    /// Protocol, host and port.
    pub url: BrokerUrl,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, read from `password_file`.
    pub password: Option<String>,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// Reconnect delays.
    pub reconnect: Backoff,
}

/// Capped exponential backoff with jitter: the n-th consecutive failure waits a random time in
/// `[d/2, d]` with `d = min(max, min × 2ⁿ)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

/// One pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Its name.
    pub name: Name,
    /// Where messages come from.
    pub source: SourceConfig,
    /// How payloads become readings.
    pub decode: DecodeConfig,
    /// The operator chain, in order.
    pub operators: Vec<OperatorConfig>,
    /// Batching.
    pub batch: BatchConfig,
    /// Record encoding.
    pub encoding: Encoding,
    /// Where records go.
    pub sink: SinkConfig,
    /// The outbox between the two.
    pub outbox: OutboxConfig,
    /// Event-time windows after the operators, if any.
    pub window: Option<WindowConfig>,
    /// Downsampling of the readings sent, if any.
    pub downsample: Option<DownsampleConfig>,
    /// What the pipeline does while one of its functions is quarantined.
    pub on_quarantine: OnQuarantine,
}

impl PipelineConfig {
    /// Every use of a function in this pipeline: its decoder, its operators, its window's
    /// custom aggregate.
    pub fn function_uses(&self) -> impl Iterator<Item = &FunctionUse> {
        let decoder = match &self.decode {
            DecodeConfig::Function(used) => Some(used),
            _ => None,
        };
        let aggregate = self.window.as_ref().and_then(|w| w.aggregate.as_ref());
        decoder.into_iter().chain(&self.operators).chain(aggregate)
    }
}

/// `[pipelines.<name>.downsample]`
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DownsampleConfig {
    /// The downsampler and its bound.
    pub method: DownsampleMethod,
    /// Processing time after which a quiet series' held reading is sent, ns.
    pub idle_timeout: u64,
}

/// A streaming downsampler and its bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DownsampleMethod {
    /// Deadband with a band in the series' unit.
    DeadbandAbsolute(f64),
    /// Deadband with a band as a fraction of the last kept value.
    DeadbandRelative(f64),
    /// Swinging door with a maximum interpolation error.
    SwingingDoor {
        /// In the series' unit.
        max_error: f64,
    },
    /// Largest-triangle-three-buckets per tumbling event-time window.
    Lttb {
        /// Readings kept per window (3 or more).
        points: usize,
        /// The window's width, ns (positive).
        window: u64,
    },
}

/// `[pipelines.<name>.window]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    /// Kind, sizes, lateness and idle timeout.
    pub spec: weir_window::event_time::WindowSpec,
    /// Whether records carry the readings as well as the windows.
    pub keep_readings: bool,
    /// The custom aggregate's function (an `accumulator`), if any; its use is named
    /// `window-aggregate`.
    pub aggregate: Option<FunctionUse>,
}

/// `[pipelines.<name>.outbox]`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Encoded records kept at most (one group of new records may exceed it while the outbox is
    /// otherwise empty).
    pub max_bytes: u64,
    /// What happens to a new record when the outbox is full.
    pub when_full: WhenFull,
    /// How the sink catches up after an outage.
    pub drain: Drain,
}

/// How a sink catches up after an outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Oldest records first.
    Fifo,
    /// Records committed after the (re)connection first; the backlog at this many bytes per second.
    LiveFirst {
        /// Backlog bytes sent per second at most.
        backlog_bytes_per_second: u64,
    },
}

/// MQTT quality of service for subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    /// At most once: nothing is acknowledged.
    AtMostOnce,
    /// At least once: acknowledged after the derived data is committed.
    AtLeastOnce,
}

/// A pipeline's source.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// MQTT subscription with a persistent session.
    Mqtt {
        /// The broker.
        broker: BrokerConfig,
        /// Filters subscribed to.
        topics: Vec<TopicFilter>,
        /// QoS of the subscriptions.
        qos: Qos,
        /// Client id (the session's key on the broker); no other MQTT source or sink of the
        /// configuration uses it on the same broker.
        client_id: MqttClientId,
        /// The broker's in-flight window for QoS 1 messages to this client.
        max_inflight: usize,
        /// Larger messages are dead-lettered instead of decoded.
        max_message_size: u64,
    },
    /// NATS core subscription (at most once).
    Nats {
        /// The broker.
        broker: BrokerConfig,
        /// Subjects subscribed to.
        subjects: Vec<NatsSubjectFilter>,
        /// Queue group, if shared.
        queue_group: Option<String>,
    },
    /// JetStream durable pull consumer (at least once).
    JetStream {
        /// The broker.
        broker: BrokerConfig,
        /// Stream name.
        stream: String,
        /// Durable consumer name.
        consumer: String,
        /// Filter subjects (empty: whole stream).
        subjects: Vec<NatsSubjectFilter>,
    },
    /// Built-in simulated devices.
    Simulated(SimulatedConfig),
}

/// Simulated devices.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulatedConfig {
    /// Payload format.
    pub payload: SimulatedPayload,
    /// Number of devices.
    pub devices: u32,
    /// Reporting interval per device.
    pub interval: Duration,
    /// First topic levels.
    pub topic_prefix: String,
    /// Random seed.
    pub seed: u64,
    /// Sensors of each device, in report order.
    pub sensors: Vec<SimulatedSensor>,
}

/// A pipeline's decoder.
#[derive(Clone, Debug)]
pub enum DecodeConfig {
    /// JSON with a field mapping.
    Json(FieldMapping),
    /// CBOR with a field mapping.
    Cbor(FieldMapping),
    /// SenML JSON (RFC 8428).
    SenmlJson,
    /// SenML CBOR (RFC 8428).
    SenmlCbor,
    /// One raw number per message.
    RawNumber {
        /// How it is written.
        encoding: NumberEncoding,
        /// Prepended to the topic to name the series.
        series_prefix: String,
        /// Unit of every reading.
        unit: Option<String>,
    },
    /// A WebAssembly decoder function.
    Function(FunctionUse),
}

/// Which fields of an object hold series, time and value(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMapping {
    /// Series name field; `None`: the topic.
    pub series: Option<JsonPointer>,
    /// Prepended to every series name.
    pub series_prefix: String,
    /// Timestamp field; `None`: receive time.
    pub time: Option<JsonPointer>,
    /// Unit of numeric timestamps.
    pub time_unit: TimeUnit,
    /// Where the values are.
    pub values: ValueFields,
    /// Unit of every reading.
    pub unit: Option<String>,
    /// Field holding the unit (wins over `unit`).
    pub unit_field: Option<JsonPointer>,
}

/// One value field, or several named ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueFields {
    /// One reading per object.
    One(JsonPointer),
    /// One reading per entry, series `<series>/<name>`.
    Many(Vec<(String, JsonPointer)>),
}

/// A function used in a pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionUse {
    /// Name of this use: the function's state namespace within the pipeline.
    pub name: Name,
    /// Which function.
    pub function: FunctionId,
    /// Parameters as a JSON object.
    pub params_json: String,
}

/// An operator of the chain (a function use).
pub type OperatorConfig = FunctionUse;

/// Batching of messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Messages per batch.
    pub max_messages: usize,
    /// Payload bytes per batch.
    pub max_bytes: u64,
    /// How long a partial batch waits.
    pub linger: Duration,
    /// Messages buffered between source and batcher.
    pub queue: usize,
}

/// A pipeline's sink.
#[derive(Clone, Debug)]
pub enum SinkConfig {
    /// JetStream publish, awaiting the ack.
    JetStream {
        /// The broker.
        broker: BrokerConfig,
        /// Subject published to.
        subject: NatsSubject,
        /// Publishes awaiting their ack at once.
        max_in_flight: usize,
        /// How long a publish waits for its ack.
        ack_timeout: Duration,
    },
    /// MQTT QoS 1 publish, awaiting the PUBACK.
    Mqtt {
        /// The broker.
        broker: BrokerConfig,
        /// Topic published to.
        topic: MqttTopic,
        /// Client id; no other MQTT source or sink of the configuration uses it on the same
        /// broker.
        client_id: MqttClientId,
        /// Publishes awaiting their PUBACK at once.
        max_in_flight: usize,
    },
    /// Human-readable lines on standard output.
    Console {
        /// Series listed per record.
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

/// The largest MQTT packet (its remaining length is at most 268 435 455 bytes), and so the
/// largest payload an MQTT source can be sent.
pub const MQTT_MAX_PAYLOAD: u64 = 268_435_455;

/// Defaults for everything optional.
mod defaults {
    use std::time::Duration;

    /// A quiet series' held reading waits this long for the next one.
    pub const DOWNSAMPLE_IDLE: Duration = Duration::from_secs(60);
    pub const MEMORY: u64 = 32 * 1024 * 1024;
    pub const TIMEOUT: Duration = Duration::from_millis(100);
    pub const TABLE_ELEMENTS: u32 = 100_000;
    /// A component is a handful of core instances (the module, adapters, shims).
    pub const INSTANCES: u32 = 32;
    pub const STATE_WRITES: u64 = 8 * 1024 * 1024;
    pub const STATE_QUOTA: u64 = 16 * 1024 * 1024;
    pub const QUARANTINE_AFTER: u32 = 5;
    pub const QUARANTINE_FOR: Duration = Duration::from_secs(60);
    pub const MAX_KEY: u32 = 1024;
    pub const MAX_VALUE: u32 = 1024 * 1024;
    pub const DEAD_LETTERS: u64 = 10_000;
    pub const MAX_MESSAGE_SIZE: u64 = 4 * 1024 * 1024;
    /// Bytes the dead letters may take by default.
    pub const DEAD_LETTER_BYTES: u64 = 32 * 1024 * 1024;
    pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
    pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
    pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
    pub const MAX_MESSAGES: usize = 1000;
    pub const MAX_BYTES: u64 = 1024 * 1024;
    pub const LINGER: Duration = Duration::from_millis(100);
    pub const QUEUE: usize = 4096;
    pub const MAX_IN_FLIGHT: usize = 64;
    pub const MQTT_INFLIGHT: usize = 20;
    pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
    pub const SERIES_SHOWN: usize = 4;
    pub const OUTBOX_MAX_BYTES: u64 = 128 * 1024 * 1024;
    pub const BACKLOG_RATE: u64 = 256 * 1024;
}

/// Settings given on the command line that take precedence over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--functions-dir`
    pub functions_dir: Option<PathBuf>,
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let base_dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    parse(&path.display().to_string(), &text, &base_dir, overrides)
}

/// Parses and validates `text`; relative paths resolve against `base_dir`.
pub fn parse(file: &str, text: &str, base_dir: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid { file: file.to_owned(), problems };
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| invalid(vec![Problem::at(text, e.span(), "", e.message())]))?;
    let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        // `Spanned` fields add an internal path segment; users never wrote it.
        let field = e.path().to_string().replace(".$__serde_spanned_private_value", "");
        let field = if field == "." { String::new() } else { field };
        let inner = e.into_inner();
        invalid(vec![Problem::at(text, inner.span(), field, inner.message())])
    })?;
    let data_dir_span = overrides.data_dir.is_none().then(|| raw.gateway.data_dir.span());
    let locations = Locations::new(file, text, data_dir_span);
    Validator { text, base_dir, problems: Vec::new(), mqtt_clients: Vec::new(), locations }
        .validate(raw, overrides)
        .map_err(invalid)
}

/// Collects every cross-reference problem instead of stopping at the first.
struct Validator<'a> {
    text: &'a str,
    base_dir: &'a Path,
    problems: Vec<Problem>,
    /// Every MQTT connection the pipelines open, to refuse two with one client id on one broker.
    mqtt_clients: Vec<MqttClient>,
    /// Where functions and their uses were written.
    locations: Locations,
}

/// One MQTT connection of a pipeline (its source or its sink).
struct MqttClient {
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
    fn problem<T>(&mut self, spanned: &Spanned<T>, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::at(self.text, Some(spanned.span()), field, message));
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_owned() } else { self.base_dir.join(path) }
    }

    fn validate(mut self, raw: RawConfig, overrides: &Overrides) -> Result<Config, Vec<Problem>> {
        let data_dir = overrides.data_dir.clone().unwrap_or_else(|| self.resolve(raw.gateway.data_dir.get_ref()));
        let functions_dir = match (&overrides.functions_dir, &raw.gateway.functions_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) => self.resolve(dir.get_ref()),
            (None, None) => self.base_dir.to_owned(),
        };
        let state = StateConfig {
            durability: raw.state.durability.unwrap_or(Durability::Sync),
            max_key: raw.state.max_key.map_or(defaults::MAX_KEY, |s| u32::try_from(s.get()).expect("bounded to 64KiB")),
            max_value: raw
                .state
                .max_value
                .map_or(defaults::MAX_VALUE, |s| u32::try_from(s.get()).expect("bounded to 64MiB")),
            dead_letter_capacity: raw.state.dead_letter_capacity.map_or(defaults::DEAD_LETTERS, types::CountIn::get),
            dead_letter_max_bytes: raw
                .state
                .dead_letter_max_bytes
                .map_or(defaults::DEAD_LETTER_BYTES, types::SizeIn::get),
        };

        let brokers: BTreeMap<Name, BrokerConfig> = raw
            .brokers
            .into_iter()
            .filter_map(|(name, broker)| self.broker(name, &broker).map(|b| (b.name.clone(), b)))
            .collect();

        let mut functions = BTreeMap::new();
        for (id, function) in raw.functions {
            let component = self.resolve_in(&functions_dir, function.get_ref().component.get_ref());
            if !component.is_file() {
                self.problem(
                    &function.get_ref().component,
                    format!("functions.{id}.component"),
                    format!("component file {} does not exist", component.display()),
                );
            }
            let raw_function = function.get_ref();
            self.locations.add_function(
                id.clone(),
                FunctionLocation {
                    component: raw_function.component.span(),
                    memory: raw_function.memory.as_ref().map(Spanned::span),
                },
            );
            // Each value was checked against its bounds when it was read (see `raw`).
            let limits = FunctionLimits {
                memory_bytes: raw_function.memory.as_ref().map_or(defaults::MEMORY, |m| m.get_ref().get()),
                timeout: raw_function.timeout.map_or(defaults::TIMEOUT, types::DurationIn::get),
                fuel: raw_function.fuel.map(types::CountIn::get),
                table_elements: raw_function.table_elements.map_or(defaults::TABLE_ELEMENTS, types::CountIn::as_u32),
                instances: raw_function.instances.map_or(defaults::INSTANCES, types::CountIn::as_u32),
                state_write_bytes: raw_function.state_writes.map_or(defaults::STATE_WRITES, types::SizeIn::get),
                state_quota_bytes: raw_function.state_quota.map_or(defaults::STATE_QUOTA, types::SizeIn::get),
            };
            let quarantine = QuarantineConfig {
                after: raw_function.quarantine_after.map_or(defaults::QUARANTINE_AFTER, types::CountIn::as_u32),
                first: raw_function.quarantine_for.map_or(defaults::QUARANTINE_FOR, types::DurationIn::get),
            };
            functions.insert(id.clone(), FunctionConfig { id, component, limits, quarantine });
        }

        let pipelines: Vec<PipelineConfig> = raw
            .pipelines
            .into_iter()
            .filter_map(|(name, pipeline)| {
                self.pipeline(&raw.gateway.id, name, pipeline.into_inner(), &brokers, &functions)
            })
            .collect();
        self.refuse_shared_client_ids();
        if pipelines.is_empty() && self.problems.is_empty() {
            self.problems.push(Problem::at(
                self.text,
                None,
                "pipelines",
                "no pipeline is defined: add a [pipelines.<name>] table",
            ));
        }

        // Keep only functions that some pipeline uses; unused ones are not loaded.
        let used: BTreeSet<&FunctionId> =
            pipelines.iter().flat_map(PipelineConfig::function_uses).map(|used| &used.function).collect();
        let functions =
            functions.iter().filter(|(id, _)| used.contains(id)).map(|(id, f)| (id.clone(), f.clone())).collect();

        if !self.problems.is_empty() {
            self.problems.sort_by_key(|p| (p.line, p.column));
            return Err(self.problems);
        }
        Ok(Config {
            gateway: GatewayConfig { id: raw.gateway.id, data_dir },
            state,
            functions,
            pipelines,
            locations: self.locations,
        })
    }

    /// Refuses a second MQTT connection to one broker under a client id already in use: the
    /// broker keeps one session per id and drops the older connection when another one
    /// connects, so the two would take the session from each other for as long as they run.
    /// Brokers are the same when their URLs name the same host (ignoring case) and port.
    fn refuse_shared_client_ids(&mut self) {
        let mut clients = std::mem::take(&mut self.mqtt_clients);
        clients.sort_by_key(|client| client.span.start);
        let mut first_users: HashMap<(String, u16, &str), &MqttClient> = HashMap::new();
        for client in &clients {
            let key = (client.broker.host.to_ascii_lowercase(), client.broker.port, client.client_id.as_str());
            let Some(first) = first_users.get(&key) else {
                first_users.insert(key, client);
                continue;
            };
            let line = self.text[..first.span.start.min(self.text.len())].matches('\n').count() + 1;
            let default = |c: &MqttClient| if c.derived { " (the default)" } else { "" };
            self.problems.push(Problem::at(
                self.text,
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
            ));
        }
    }

    /// Notes an MQTT connection for [`Self::refuse_shared_client_ids`]; returns its client id.
    fn mqtt_client(
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

    fn resolve_in(&self, dir: &Path, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_owned() } else { dir.join(path) }
    }

    fn broker(&mut self, name: Name, raw: &Spanned<RawBroker>) -> Option<BrokerConfig> {
        let broker = raw.get_ref();
        let password = match &broker.password_file {
            None => None,
            Some(file) => match std::fs::read_to_string(self.resolve(file.get_ref())) {
                Ok(password) => Some(password.trim_end_matches(['\r', '\n']).to_owned()),
                Err(e) => {
                    self.problem(
                        file,
                        format!("brokers.{name}.password_file"),
                        format!("cannot read {}: {e}", file.get_ref().display()),
                    );
                    None
                }
            },
        };
        let reconnect = Backoff {
            min: broker.reconnect_min.map_or(defaults::RECONNECT_MIN, types::DurationIn::get),
            max: broker.reconnect_max.map_or(defaults::RECONNECT_MAX, types::DurationIn::get),
        };
        if reconnect.min > reconnect.max {
            self.problem(raw, format!("brokers.{name}"), "reconnect_min must not be above reconnect_max");
        }
        if broker.keep_alive.is_some() && broker.url.protocol != Protocol::Mqtt {
            self.problem(raw, format!("brokers.{name}.keep_alive"), "keep_alive applies to MQTT brokers only");
        }
        Some(BrokerConfig {
            name,
            url: broker.url.clone(),
            username: broker.username.clone(),
            password,
            keep_alive: broker.keep_alive.map_or(defaults::KEEP_ALIVE, types::DurationIn::get),
            reconnect,
        })
    }

    /// The broker called `name`, checked to speak `protocol`.
    fn broker_ref(
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
                    name,
                    field,
                    format!("no broker is called {:?}; defined: {}", name.get_ref().as_str(), list(&known)),
                );
                None
            }
            Some(broker) if broker.url.protocol != protocol => {
                self.problem(
                    name,
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

    fn function_ref(
        &mut self,
        id: &Spanned<FunctionId>,
        field: &str,
        functions: &BTreeMap<FunctionId, FunctionConfig>,
    ) -> bool {
        if functions.contains_key(id.get_ref()) {
            return true;
        }
        let known: Vec<&str> = functions.keys().map(FunctionId::as_str).collect();
        self.problem(
            id,
            field,
            format!("no function is called {:?}; defined: {}", id.get_ref().as_str(), list(&known)),
        );
        false
    }

    fn pipeline(
        &mut self,
        gateway: &GatewayId,
        name: Name,
        raw: RawPipeline,
        brokers: &BTreeMap<Name, BrokerConfig>,
        functions: &BTreeMap<FunctionId, FunctionConfig>,
    ) -> Option<PipelineConfig> {
        let at = |field: &str| format!("pipelines.{name}.{field}");
        let source = match raw.source.into_inner() {
            RawSource::Mqtt(mqtt) => {
                let broker = self.broker_ref(&mqtt.broker, &at("source.mqtt.broker"), Protocol::Mqtt, brokers);
                let qos = match *mqtt.qos.get_ref() {
                    0 => Qos::AtMostOnce,
                    1 => Qos::AtLeastOnce,
                    other => {
                        self.problem(&mqtt.qos, at("source.mqtt.qos"), format!("QoS must be 0 or 1, got {other}"));
                        Qos::AtLeastOnce
                    }
                };
                if mqtt.topics.is_empty() {
                    self.problem(&mqtt.broker, at("source.mqtt.topics"), "subscribe to at least one topic");
                }
                let client_id = self.mqtt_client(
                    broker.as_ref(),
                    mqtt.client_id,
                    mqtt.broker.span(),
                    at("source.mqtt.client_id"),
                    || format!("weir-{gateway}-{name}"),
                );
                let max_inflight = mqtt.max_inflight.map_or(defaults::MQTT_INFLIGHT, types::CountIn::as_usize);
                let max_message_size = mqtt.max_message_size.map_or(defaults::MAX_MESSAGE_SIZE, types::SizeIn::get);
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
                    self.problem(&nats.broker, at("source.nats.subjects"), "subscribe to at least one subject");
                }
                self.broker_ref(&nats.broker, &at("source.nats.broker"), Protocol::Nats, brokers)
                    .map(|broker| SourceConfig::Nats { broker, subjects: nats.subjects, queue_group: nats.queue_group })
            }
            RawSource::Jetstream(js) => {
                if js.subjects.len() > 1 {
                    self.problem(
                        &js.broker,
                        at("source.jetstream.subjects"),
                        "a JetStream consumer takes at most one filter subject (several need nats-server 2.10); use a wildcard",
                    );
                }
                self.broker_ref(&js.broker, &at("source.jetstream.broker"), Protocol::Nats, brokers).map(|broker| {
                    SourceConfig::JetStream { broker, stream: js.stream, consumer: js.consumer, subjects: js.subjects }
                })
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
        };

        let decode_span = raw.decode.span();
        let decode = match raw.decode.into_inner() {
            RawDecode::Json(mapping) => {
                self.field_mapping(mapping, decode_span.clone(), &at("decode.json")).map(DecodeConfig::Json)
            }
            RawDecode::Cbor(mapping) => {
                self.field_mapping(mapping, decode_span.clone(), &at("decode.cbor")).map(DecodeConfig::Cbor)
            }
            RawDecode::SenmlJson => Some(DecodeConfig::SenmlJson),
            RawDecode::SenmlCbor => Some(DecodeConfig::SenmlCbor),
            RawDecode::Raw(number) => Some(DecodeConfig::RawNumber {
                encoding: number.encoding,
                series_prefix: number.series_prefix,
                unit: number.unit,
            }),
            RawDecode::Function(used) => {
                let known = self.function_ref(&used.function, &at("decode.function.function"), functions);
                let function_span = used.function.span();
                let id = used.function.into_inner();
                let params_json = params_to_json(used.params.as_ref());
                let use_name = Name::try_from(format!("decoder-{id}")).ok();
                match (known, use_name) {
                    (true, Some(use_name)) => {
                        self.locations.add_use(
                            name.clone(),
                            use_name.clone(),
                            UseLocation {
                                field: at("decode.function"),
                                function: function_span,
                                params: used.params.as_ref().map(Spanned::span),
                            },
                        );
                        Some(DecodeConfig::Function(FunctionUse { name: use_name, function: id, params_json }))
                    }
                    _ => None,
                }
            }
        };

        let mut operators = Vec::new();
        let mut names = BTreeSet::new();
        for (index, operator) in raw.operators.into_iter().enumerate() {
            let operator = operator.into_inner();
            let field = at(&format!("operators[{index}]"));
            let known = self.function_ref(&operator.function, &format!("{field}.function"), functions);
            let op_name = match &operator.name {
                Some(name) => name.get_ref().clone(),
                None => Name::try_from(operator.function.get_ref().as_str().to_owned())
                    .expect("function ids and names share one syntax"),
            };
            if !names.insert(op_name.clone()) {
                let span = operator.name.as_ref().map_or(operator.function.span(), Spanned::span);
                self.problems.push(Problem::at(
                    self.text,
                    Some(span),
                    field.clone(),
                    format!(
                        "operator name {:?} is used twice in this pipeline; give each use its own `name`",
                        op_name.as_str()
                    ),
                ));
            }
            if known {
                self.locations.add_use(
                    name.clone(),
                    op_name.clone(),
                    UseLocation {
                        field,
                        function: operator.function.span(),
                        params: operator.params.as_ref().map(Spanned::span),
                    },
                );
                operators.push(FunctionUse {
                    name: op_name,
                    function: operator.function.into_inner(),
                    params_json: params_to_json(operator.params.as_ref()),
                });
            }
        }

        let batch = BatchConfig {
            max_messages: raw.batch.max_messages.map_or(defaults::MAX_MESSAGES, types::CountIn::as_usize),
            max_bytes: raw.batch.max_bytes.map_or(defaults::MAX_BYTES, types::SizeIn::get),
            linger: raw.batch.linger.map_or(defaults::LINGER, types::DurationIn::get),
            queue: raw.batch.queue.map_or(defaults::QUEUE, types::CountIn::as_usize),
        };

        let sink = match raw.sink.into_inner() {
            RawSink::Jetstream(js) => self
                .broker_ref(&js.broker, &at("sink.jetstream.broker"), Protocol::Nats, brokers)
                .map(|broker| SinkConfig::JetStream {
                    broker,
                    subject: js.subject,
                    max_in_flight: js.max_in_flight.map_or(defaults::MAX_IN_FLIGHT, types::CountIn::as_usize),
                    ack_timeout: js.ack_timeout.map_or(defaults::ACK_TIMEOUT, types::DurationIn::get),
                }),
            RawSink::Mqtt(mqtt) => {
                let broker = self.broker_ref(&mqtt.broker, &at("sink.mqtt.broker"), Protocol::Mqtt, brokers);
                let client_id = self.mqtt_client(
                    broker.as_ref(),
                    mqtt.client_id,
                    mqtt.broker.span(),
                    at("sink.mqtt.client_id"),
                    || format!("weir-{gateway}-{name}-out"),
                );
                broker.map(|broker| SinkConfig::Mqtt {
                    broker,
                    topic: mqtt.topic,
                    client_id,
                    max_in_flight: mqtt.max_in_flight.map_or(defaults::MAX_IN_FLIGHT, types::CountIn::as_usize),
                })
            }
            RawSink::Console(console) => Some(SinkConfig::Console {
                series_shown: console.series_shown.map_or(defaults::SERIES_SHOWN, types::CountIn::as_usize),
            }),
        };

        let outbox = self.outbox(raw.outbox.map(Spanned::into_inner).unwrap_or_default(), &at("outbox"));
        // `None` when the table is wrong (its problems are recorded), else whether there is one.
        let window = match raw.window {
            Some(window) => self.window(&name, &window, &at("window"), functions).map(Some),
            None => Some(None),
        };
        let downsample = match raw.downsample {
            Some(downsample) => {
                self.downsample(&downsample, &at("downsample"), window.as_ref().and_then(Option::as_ref)).map(Some)
            }
            None => Some(None),
        };

        Some(PipelineConfig {
            name,
            source: source?,
            decode: decode?,
            operators,
            batch,
            encoding: raw.encoding,
            sink: sink?,
            outbox,
            window: window?,
            downsample: downsample?,
            on_quarantine: raw.on_quarantine,
        })
    }

    fn downsample(
        &mut self,
        raw: &Spanned<raw::RawDownsample>,
        field: &str,
        window: Option<&WindowConfig>,
    ) -> Option<DownsampleConfig> {
        let downsample = raw.get_ref();
        if window.is_some_and(|w| !w.keep_readings) {
            self.problem(
                raw,
                field.to_owned(),
                "the pipeline sends windows, not readings: downsampling needs `keep_readings = true` in its window",
            );
            return None;
        }
        let bound = |name: &str, value: Option<f64>| -> Result<Option<f64>, (String, String)> {
            match value {
                Some(v) if !(v.is_finite() && v > 0.0) => {
                    Err((format!("{field}.{name}"), format!("`{name}` must be a positive number")))
                }
                v => Ok(v),
            }
        };
        let checked = (|| {
            let (absolute, relative, max_error) = (
                bound("absolute", downsample.absolute)?,
                bound("relative", downsample.relative)?,
                bound("max_error", downsample.max_error)?,
            );
            let lttb_fields = downsample.points.is_some() || downsample.window.is_some();
            let points = downsample.points.map(types::CountIn::as_usize);
            let lttb_window = downsample.window.map(types::DurationIn::get);
            match (downsample.method, absolute, relative, max_error) {
                (raw::DownsampleMethodName::Deadband, Some(band), None, None) if !lttb_fields => {
                    Ok(DownsampleMethod::DeadbandAbsolute(band))
                }
                (raw::DownsampleMethodName::Deadband, None, Some(fraction), None) if !lttb_fields => {
                    Ok(DownsampleMethod::DeadbandRelative(fraction))
                }
                (raw::DownsampleMethodName::Deadband, _, _, _) => Err((
                    format!("{field}.method"),
                    "a deadband needs exactly one of `absolute` and `relative` (and no `max_error`, `points` or `window`)"
                        .to_owned(),
                )),
                (raw::DownsampleMethodName::SwingingDoor, None, None, Some(max_error)) if !lttb_fields => {
                    Ok(DownsampleMethod::SwingingDoor { max_error })
                }
                (raw::DownsampleMethodName::SwingingDoor, _, _, _) => Err((
                    format!("{field}.method"),
                    "a swinging door needs `max_error` (and no `absolute`, `relative`, `points` or `window`)".to_owned(),
                )),
                (raw::DownsampleMethodName::Lttb, None, None, None) => match (points, lttb_window) {
                    (Some(points), Some(window)) => Ok(DownsampleMethod::Lttb { points, window: nanos(window) }),
                    _ => Err((format!("{field}.method"), "LTTB needs `points` and `window`".to_owned())),
                },
                (raw::DownsampleMethodName::Lttb, _, _, _) => Err((
                    format!("{field}.method"),
                    "LTTB needs `points` and `window` (and no `absolute`, `relative` or `max_error`)".to_owned(),
                )),
            }
        })();
        let method = match checked {
            Ok(method) => method,
            Err((field, message)) => {
                self.problem(raw, field, message);
                return None;
            }
        };
        let idle_timeout = nanos(downsample.idle_timeout.map_or(defaults::DOWNSAMPLE_IDLE, types::DurationIn::get));
        Some(DownsampleConfig { method, idle_timeout })
    }

    fn window(
        &mut self,
        pipeline: &Name,
        raw: &Spanned<raw::RawWindow>,
        field: &str,
        functions: &BTreeMap<FunctionId, FunctionConfig>,
    ) -> Option<WindowConfig> {
        use weir_window::event_time::{WindowKind, WindowSpec};
        let window = raw.get_ref();
        let mut problems = Vec::new();
        let kind_name = match window.kind {
            raw::WindowKindName::Tumbling => "tumbling",
            raw::WindowKindName::Sliding => "sliding",
            raw::WindowKindName::Session => "session",
        };
        let mut size = |name: &str, value: Option<raw::WindowLength>, wanted: bool| -> u64 {
            match (value, wanted) {
                (Some(d), true) => nanos(d.get()),
                (None, true) => {
                    problems.push((format!("{field}.{name}"), format!("{kind_name} windows need `{name}`")));
                    0
                }
                (Some(_), false) => {
                    problems
                        .push((format!("{field}.{name}"), format!("`{name}` does not apply to {kind_name} windows")));
                    0
                }
                (None, false) => 0,
            }
        };
        let kind = match window.kind {
            raw::WindowKindName::Tumbling => {
                let width = size("width", window.width, true);
                size("slide", window.slide, false);
                size("gap", window.gap, false);
                WindowKind::Tumbling { width }
            }
            raw::WindowKindName::Sliding => {
                let width = size("width", window.width, true);
                let slide = size("slide", window.slide, true);
                size("gap", window.gap, false);
                if slide > width {
                    problems.push((format!("{field}.slide"), "`slide` must not be longer than `width`".to_owned()));
                }
                WindowKind::Sliding { width, slide }
            }
            raw::WindowKindName::Session => {
                size("width", window.width, false);
                size("slide", window.slide, false);
                let gap = size("gap", window.gap, true);
                WindowKind::Session { gap }
            }
        };
        let mut failed = !problems.is_empty();
        for (field, message) in problems {
            self.problem(raw, field, message);
        }
        let aggregate = window.aggregate.as_ref().map(|used| FunctionUse {
            name: Name::try_from("window-aggregate".to_owned()).expect("a valid name"),
            function: used.function.get_ref().clone(),
            params_json: params_to_json(used.params.as_ref()),
        });
        if let Some(used) = &window.aggregate {
            failed |= !self.function_ref(&used.function, &format!("{field}.aggregate.function"), functions);
        }
        if let (Some(used), Some(aggregate)) = (&window.aggregate, &aggregate) {
            self.locations.add_use(
                pipeline.clone(),
                aggregate.name.clone(),
                UseLocation {
                    field: format!("{field}.aggregate"),
                    function: used.function.span(),
                    params: used.params.as_ref().map(Spanned::span),
                },
            );
        }
        if failed {
            return None;
        }
        let allowed_lateness = window.allowed_lateness.map_or(0, |d| nanos(d.get()));
        let length = match kind {
            WindowKind::Tumbling { width } | WindowKind::Sliding { width, .. } => width,
            WindowKind::Session { gap } => gap,
        };
        let idle_timeout = window.idle_timeout.map_or(length.saturating_add(allowed_lateness), |d| nanos(d.get()));
        Some(WindowConfig {
            spec: WindowSpec { kind, allowed_lateness, idle_timeout, custom_aggregate: aggregate.is_some() },
            keep_readings: window.keep_readings,
            aggregate,
        })
    }

    fn outbox(&mut self, raw: raw::RawOutbox, field: &str) -> OutboxConfig {
        let max_bytes = raw.max_bytes.map_or(defaults::OUTBOX_MAX_BYTES, types::SizeIn::get);
        let drain = match (raw.drain.unwrap_or_default(), raw.backlog_rate) {
            (raw::DrainOrder::Fifo, None) => Drain::Fifo,
            (raw::DrainOrder::Fifo, Some(rate)) => {
                self.problem(
                    &rate,
                    format!("{field}.backlog_rate"),
                    "`backlog_rate` applies only to `drain = \"live_first\"`",
                );
                Drain::Fifo
            }
            (raw::DrainOrder::LiveFirst, rate) => {
                Drain::LiveFirst { backlog_bytes_per_second: rate.map_or(defaults::BACKLOG_RATE, |r| r.get_ref().0) }
            }
        };
        OutboxConfig { max_bytes, when_full: raw.when_full.unwrap_or_default(), drain }
    }

    fn field_mapping(&mut self, raw: RawFieldMapping, span: Range<usize>, field: &str) -> Option<FieldMapping> {
        let values = match (raw.value, raw.values) {
            (Some(one), None) => ValueFields::One(one),
            (None, Some(many)) if !many.is_empty() => {
                ValueFields::Many(many.into_iter().map(|(name, pointer)| (name.as_str().to_owned(), pointer)).collect())
            }
            (Some(_), Some(_)) => {
                self.problems.push(Problem::at(
                    self.text,
                    Some(span),
                    field,
                    "set either `value` or `values`, not both",
                ));
                return None;
            }
            (None, _) => {
                self.problems.push(Problem::at(
                    self.text,
                    Some(span),
                    field,
                    "say where the reading is: `value = \"/field\"` or `values = { name = \"/field\", ... }`",
                ));
                return None;
            }
        };
        Some(FieldMapping {
            series: raw.series,
            series_prefix: raw.series_prefix,
            time: raw.time,
            time_unit: raw.time_unit,
            values,
            unit: raw.unit,
            unit_field: raw.unit_field,
        })
    }
}

/// A bounded duration in nanoseconds (every bound is far below the 584 years a u64 holds).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).expect("configured durations are bounded far below 584 years")
}

fn params_to_json(params: Option<&Spanned<toml::Table>>) -> String {
    let params = params.map_or_else(toml::Table::new, |p| p.get_ref().clone());
    serde_json::to_string(&params).expect("a TOML table always serializes to JSON")
}

fn list(names: &[&str]) -> String {
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

#[cfg(test)]
pub(crate) mod tests;

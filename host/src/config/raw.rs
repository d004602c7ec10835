//! The configuration file as written: serde types mirroring the TOML, one struct per table.
//!
//! Everything a single field can check on its own is checked here, during deserialization, so the
//! error carries the field's position (identifier syntax, URLs, topic filters, durations, sizes).
//! Checks that relate fields to each other (a pipeline naming an undefined broker) happen in
//! [`super::validate`], which uses the [`Spanned`] positions kept below.
//!
//! Each field's doc comment shows the TOML line it parses.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::types::{
    BrokerUrl, ByteRate, CountIn, DAY, DurationIn, FunctionId, GIB, GatewayId, HOUR, JsonPointer, KIB, MIB, MINUTE,
    MqttClientId, MqttTopic, Name, NatsSubject, NatsSubjectFilter, SECOND, SizeIn, TIB, TopicFilter,
};

// Every duration, size and count has bounds (see docs/configuration.md, "Limits"): the upper ones
// keep each use of the value (`Instant + Duration`, timers, allocation, doubling) far from
// overflow and far above anything a deployment needs; the lower ones refuse zero where it means
// nothing. A value outside is refused with its file, line, field and the range allowed.

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[gateway]`
    pub gateway: RawGateway,
    /// `[state]`
    #[serde(default)]
    pub state: RawState,
    /// `[brokers.<name>]`
    #[serde(default)]
    pub brokers: BTreeMap<Name, Spanned<RawBroker>>,
    /// `[functions.<id>]`
    #[serde(default)]
    pub functions: BTreeMap<FunctionId, Spanned<RawFunction>>,
    /// `[pipelines.<name>]`
    #[serde(default)]
    pub pipelines: BTreeMap<Name, Spanned<RawPipeline>>,
}

/// `[gateway]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// `id = "plant1-gw07"` — names this gateway in client ids and record ids.
    pub id: GatewayId,
    /// `data_dir = "/var/lib/weir"` — state, dead letters, outbox and compiled functions.
    pub data_dir: Spanned<PathBuf>,
    /// `functions_dir = "/usr/lib/weir/functions"` — where relative component paths point
    /// (default: the directory of this file).
    pub functions_dir: Option<Spanned<PathBuf>>,
}

/// `[state]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// `durability = "sync"` — `sync` (fsync every commit) or `relaxed`.
    pub durability: Option<Durability>,
    /// `max_key = "1KiB"` — longest state key a function may write (1B to 64KiB).
    pub max_key: Option<SizeIn<1, { 64 * KIB }>>,
    /// `max_value = "256KiB"` — longest state value a function may write (1B to 64MiB).
    pub max_value: Option<SizeIn<1, { 64 * MIB }>>,
    /// `dead_letter_capacity = 10000` — dead letters kept; the oldest go first (1 to 10 000 000).
    pub dead_letter_capacity: Option<CountIn<1, 10_000_000>>,
    /// `dead_letter_max_bytes = "32MiB"` — bytes the kept dead letters may take; the oldest go
    /// first (1MiB to 64GiB).
    pub dead_letter_max_bytes: Option<SizeIn<{ MIB }, { 64 * GIB }>>,
}

/// How a commit reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every commit is flushed to stable storage before it is acknowledged.
    Sync,
    /// Commits are visible at once but reach the disk later; a power loss may undo the last ones.
    Relaxed,
}

/// `[brokers.<name>]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    /// `url = "mqtt://10.0.0.5:1883"` or `"nats://central:4222"`.
    pub url: BrokerUrl,
    /// `username = "gw07"`
    pub username: Option<String>,
    /// `password_file = "/etc/weir/plant.pass"` — read at start; keeps secrets out of this file.
    pub password_file: Option<Spanned<PathBuf>>,
    /// `keep_alive = "30s"` (MQTT only; 1s to 65535s, the protocol's 16-bit field)
    pub keep_alive: Option<DurationIn<SECOND, { 65_535 * SECOND }>>,
    /// `reconnect_min = "100ms"` — first delay after a lost connection (1ms to 1h).
    pub reconnect_min: Option<DurationIn<1, HOUR>>,
    /// `reconnect_max = "30s"` — the delay doubles per failure up to this (1ms to 1h).
    pub reconnect_max: Option<DurationIn<1, HOUR>>,
}

/// `[functions.<id>]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    /// `component = "threshold_alert.wasm"` — relative to `gateway.functions_dir`.
    pub component: Spanned<PathBuf>,
    /// `memory = "32MiB"` — linear memory cap; growing beyond it traps (1MiB, 16 pages, to
    /// 4GiB, all a 32-bit WebAssembly memory can address).
    pub memory: Option<Spanned<SizeIn<MIB, { 4 * GIB }>>>,
    /// `timeout = "100ms"` — wall time per call before it is interrupted (1ms to 1m).
    pub timeout: Option<DurationIn<1, MINUTE>>,
    /// `fuel = 50_000_000` — units of work (about one per WebAssembly instruction) per call
    /// (1 to 10¹²); unset: no fuel metering (the time limit still applies).
    pub fuel: Option<CountIn<1, 1_000_000_000_000>>,
    /// `table_elements = 100_000` — largest size of any table (function references; 1 to
    /// 10 000 000).
    pub table_elements: Option<CountIn<1, 10_000_000>>,
    /// `instances = 32` — core module instances one instance of the component may create (1 to
    /// 1000).
    pub instances: Option<CountIn<1, 1000>>,
    /// `state_writes = "8MiB"` — bytes of state one instance may write between two commits
    /// (keys and values); the call that goes beyond faults (0B to 1GiB).
    pub state_writes: Option<SizeIn<0, GIB>>,
    /// `state_quota = "16MiB"` — bytes of state (keys and values) each use of the function may
    /// keep; a write beyond it is refused with `quota-exceeded` (the call goes on; 1B to 1GiB).
    pub state_quota: Option<SizeIn<1, GIB>>,
    /// `quarantine_after = 5` — consecutive faults after which the function is quarantined (1 to
    /// 10 000).
    pub quarantine_after: Option<CountIn<1, 10_000>>,
    /// `quarantine_for = "1m"` — how long the first quarantine lasts; each further quarantine in
    /// a row lasts twice as long, up to an hour (or this, if longer; 1ms to 24h).
    pub quarantine_for: Option<DurationIn<1, DAY>>,
}

/// What a pipeline does while one of its functions is quarantined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnQuarantine {
    /// Take no input until the quarantine ends: input stays unacknowledged with the broker.
    #[default]
    Hold,
    /// Go on without the function: an operator passes batches through unchanged (counted as
    /// `readings_skipped`); a decoder's messages and a window aggregate's readings are
    /// dead-lettered.
    Skip,
}

/// `[pipelines.<name>]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// `[pipelines.<name>.source.<kind>]`
    pub source: Spanned<RawSource>,
    /// `decode = "senml_json"` or `[pipelines.<name>.decode.json]` ...
    pub decode: Spanned<RawDecode>,
    /// `[[pipelines.<name>.operators]]`
    #[serde(default)]
    pub operators: Vec<Spanned<RawOperator>>,
    /// `[pipelines.<name>.batch]`
    #[serde(default)]
    pub batch: RawBatch,
    /// `encoding = "cbor"` — `cbor` (compact, see docs/batch-format.md) or `json`.
    #[serde(default)]
    pub encoding: Encoding,
    /// `[pipelines.<name>.sink.<kind>]`
    pub sink: Spanned<RawSink>,
    /// `[pipelines.<name>.outbox]`
    pub outbox: Option<Spanned<RawOutbox>>,
    /// `[pipelines.<name>.window]`
    pub window: Option<Spanned<RawWindow>>,
    /// `[pipelines.<name>.downsample]`
    pub downsample: Option<Spanned<RawDownsample>>,
    /// `on_quarantine = "hold"` — `hold` or `skip`: what the pipeline does while one of its
    /// functions is quarantined.
    #[serde(default)]
    pub on_quarantine: OnQuarantine,
}

/// `[pipelines.<name>.downsample]` — fewer readings per series, within a stated error
/// (docs/downsampling.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDownsample {
    /// `method = "deadband"` — `deadband`, `swinging_door` or `lttb`.
    pub method: DownsampleMethodName,
    /// `absolute = 0.1` — deadband: the band in the series' unit.
    pub absolute: Option<f64>,
    /// `relative = 0.01` — deadband: the band as a fraction of the last kept value.
    pub relative: Option<f64>,
    /// `max_error = 0.1` — swinging door: the largest error of linear interpolation.
    pub max_error: Option<f64>,
    /// `points = 20` — LTTB: readings kept per window (3 to 100 000: LTTB always keeps a
    /// window's first and last reading).
    pub points: Option<CountIn<3, 100_000>>,
    /// `window = "1m"` — LTTB: the tumbling event-time window each `points` are chosen from
    /// (1ms to 31 days).
    pub window: Option<DurationIn<1, { 31 * DAY }>>,
    /// `idle_timeout = "1m"` — a series quiet this long has its held reading sent (1ms to 31
    /// days).
    pub idle_timeout: Option<DurationIn<1, { 31 * DAY }>>,
}

/// The streaming downsamplers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownsampleMethodName {
    /// Keep a reading when it leaves a band around the last kept value.
    Deadband,
    /// Keep the readings that bound straight segments within an error.
    SwingingDoor,
    /// Keep a fixed number of readings per window that preserve the shape.
    Lttb,
}

/// Width, slide, gap and idle timeout of a window: 1ms to 31 days.
pub type WindowLength = DurationIn<1, { 31 * DAY }>;

/// `[pipelines.<name>.window]` — event-time windows per series, after the operators
/// (docs/windows.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// `kind = "tumbling"` — `tumbling`, `sliding` or `session`.
    pub kind: WindowKindName,
    /// `width = "10s"` — length of tumbling and sliding windows (1ms to 31 days).
    pub width: Option<WindowLength>,
    /// `slide = "5s"` — sliding windows: how far apart they start (1ms to 31 days).
    pub slide: Option<WindowLength>,
    /// `gap = "30s"` — session windows: the silence that ends a session (1ms to 31 days).
    pub gap: Option<WindowLength>,
    /// `allowed_lateness = "5s"` — how far behind its series' newest reading a reading may
    /// arrive and still count (as a correction of a window already sent; 0s to 31 days).
    pub allowed_lateness: Option<DurationIn<0, { 31 * DAY }>>,
    /// `idle_timeout = "1m"` — a series quiet this long has its pending windows sent (1ms to 31
    /// days).
    pub idle_timeout: Option<WindowLength>,
    /// `keep_readings = false` — send the readings as well as the windows.
    #[serde(default)]
    pub keep_readings: bool,
    /// `[pipelines.<name>.window.aggregate]` — a custom aggregate: a function of the
    /// `accumulator` world, computed per window beside the built-in one.
    pub aggregate: Option<RawFunctionUse>,
}

/// The kinds of window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKindName {
    /// Back-to-back windows of `width`.
    Tumbling,
    /// Windows of `width` every `slide`.
    Sliding,
    /// Runs of readings closer than `gap`.
    Session,
}

/// `[pipelines.<name>.outbox]` — the records waiting for the central broker.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    /// `max_bytes = "128MiB"` — encoded records kept at most; see `when_full` (64KiB, room for a
    /// window of in-flight records and a coarsened one, to 1TiB).
    pub max_bytes: Option<SizeIn<{ 64 * KIB }, TIB>>,
    /// `when_full = "reaggregate"` — `reaggregate` (merge the oldest records into coarser
    /// windows), `drop_oldest` or `block` (stop acknowledging input).
    pub when_full: Option<WhenFull>,
    /// `drain = "fifo"` — after an outage: `fifo` (oldest first) or `live_first` (new records
    /// first, the backlog at `backlog_rate`).
    pub drain: Option<DrainOrder>,
    /// `backlog_rate = "256KiB/s"` — with `live_first`: how fast the backlog is sent (up to
    /// 1GiB/s).
    pub backlog_rate: Option<Spanned<ByteRate>>,
}

/// What a full outbox does with a new record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Merge the oldest records into coarser aggregate windows (with an exact marker).
    #[default]
    Reaggregate,
    /// Drop the oldest records (counted, with a marker).
    DropOldest,
    /// Refuse the new record: input is no longer acknowledged until there is room.
    Block,
}

/// The order in which a sink sends what accumulated during an outage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainOrder {
    /// Oldest first.
    #[default]
    Fifo,
    /// New records first; the backlog at a capped rate.
    LiveFirst,
}

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
    /// `max_inflight = 20` — the broker's in-flight window for QoS 1 messages to this client
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

/// How payloads become readings; exactly one kind.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawDecode {
    /// `[pipelines.<name>.decode.json]` — JSON with a field mapping.
    Json(RawFieldMapping),
    /// `[pipelines.<name>.decode.cbor]` — CBOR with a field mapping.
    Cbor(RawFieldMapping),
    /// `decode = "senml_json"` — RFC 8428 JSON.
    SenmlJson,
    /// `decode = "senml_cbor"` — RFC 8428 CBOR.
    SenmlCbor,
    /// `[pipelines.<name>.decode.raw]` — the payload is one number.
    Raw(RawNumber),
    /// `[pipelines.<name>.decode.function]` — a WebAssembly decoder function.
    Function(RawFunctionUse),
}

/// Which fields of a JSON/CBOR object hold series, time and value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFieldMapping {
    /// `series = "/sensor"` — JSON pointer (or top-level field name) to the series name; default:
    /// the topic.
    pub series: Option<JsonPointer>,
    /// `series_prefix = "plant1/"` — prepended to every series name.
    #[serde(default)]
    pub series_prefix: String,
    /// `time = "/ts"` — timestamp field; default: receive time.
    pub time: Option<JsonPointer>,
    /// `time_unit = "ms"` — `s`, `ms`, `us`, `ns` for numbers; strings are RFC 3339 (default `ms`).
    #[serde(default)]
    pub time_unit: TimeUnit,
    /// `value = "/value"` — one reading per object.
    pub value: Option<JsonPointer>,
    /// `values = { temperature = "/t", humidity = "/h" }` — several readings per object, series
    /// `<series>/<key>`.
    pub values: Option<BTreeMap<Name, JsonPointer>>,
    /// `unit = "Cel"` — unit of every reading.
    pub unit: Option<String>,
    /// `unit_field = "/unit"` — field holding the unit (takes precedence over `unit`).
    pub unit_field: Option<JsonPointer>,
}

/// Unit of numeric timestamps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Seconds (fractions allowed).
    S,
    /// Milliseconds.
    #[default]
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

/// `[pipelines.<name>.decode.raw]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNumber {
    /// `encoding = "text"` — `text` (ASCII number), `f32_be`, `f32_le`, `f64_be`, `f64_le`.
    #[serde(default)]
    pub encoding: NumberEncoding,
    /// `series_prefix = "plant1/"` — prepended to the topic to name the series.
    #[serde(default)]
    pub series_prefix: String,
    /// `unit = "Cel"`
    pub unit: Option<String>,
}

/// How a raw number is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberEncoding {
    /// ASCII decimal, surrounding whitespace ignored.
    #[default]
    Text,
    /// IEEE 754 binary32, big-endian.
    F32Be,
    /// IEEE 754 binary32, little-endian.
    F32Le,
    /// IEEE 754 binary64, big-endian.
    F64Be,
    /// IEEE 754 binary64, little-endian.
    F64Le,
}

/// A use of a function: which one and with which parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunctionUse {
    /// `function = "threshold-alert"`
    pub function: Spanned<FunctionId>,
    /// `params = { above = 80.0 }` — passed to the function's `init` as a JSON object.
    pub params: Option<Spanned<toml::Table>>,
}

/// `[[pipelines.<name>.operators]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOperator {
    /// `function = "threshold-alert"`
    pub function: Spanned<FunctionId>,
    /// `name = "boiler-high"` — names the operator's state namespace; default: the function id.
    /// Required when a function appears twice in one pipeline.
    pub name: Option<Spanned<Name>>,
    /// `params = { above = 80.0 }`
    pub params: Option<Spanned<toml::Table>>,
}

/// `[pipelines.<name>.batch]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    /// `max_messages = 1000` — messages per batch (1 to 100 000).
    pub max_messages: Option<CountIn<1, 100_000>>,
    /// `max_bytes = "1MiB"` — payload bytes per batch (1B to 256MiB).
    pub max_bytes: Option<SizeIn<1, { 256 * MIB }>>,
    /// `linger = "200ms"` — how long a partial batch waits for more messages (0s to 1h).
    pub linger: Option<DurationIn<0, HOUR>>,
    /// `queue = 4096` — messages buffered between the source and the batcher (1 to 1 000 000).
    pub queue: Option<CountIn<1, 1_000_000>>,
}

/// How records are encoded: the record format's encodings.
pub use weir_record::Encoding;

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

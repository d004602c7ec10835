//! The configuration file as written: serde types mirroring the TOML, one struct per table, one
//! module per pipeline table (`source.rs` with `sensors.rs`, `decode.rs`, `window.rs`, `downsample.rs`, `outbox.rs`,
//! `sink.rs`) and for functions and their uses (`functions.rs`); the top-level tables here.
//!
//! Everything a single field can check on its own is checked here, during deserialization, so the
//! error carries the field's position (identifier syntax, URLs, topic filters, durations, sizes).
//! Checks that relate fields to each other (a pipeline naming an undefined broker) happen in
//! `validate/`, which uses the [`Spanned`] positions kept here.
//!
//! Each field's doc comment shows the TOML line it parses.
//!
//! Every duration, size and count has bounds (see docs/configuration.md, "Limits"): the upper ones
//! keep each use of the value (`Instant + Duration`, timers, allocation, doubling) far from
//! overflow and far above anything a deployment needs; the lower ones refuse zero where it means
//! nothing. A value outside is refused with its file, line, field and the range allowed.

mod decode;
mod downsample;
mod functions;
mod outbox;
mod sensors;
mod sink;
mod source;
mod window;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::types::{
    BrokerUrl, CountIn, DAY, DurationIn, FunctionId, GIB, GatewayId, HOUR, KIB, MIB, Name, SECOND, SizeIn,
};

pub use decode::{NumberEncoding, RawDecode, RawFieldMapping, RawNumber, TimeUnit};
pub use downsample::{DownsampleMethodName, RawDownsample};
pub use functions::{RawFunction, RawFunctionUse, RawOperator};
pub use outbox::{DrainOrder, RawOutbox, WhenFull};
pub use sensors::{
    BusProtocol, FaultScript, RawBus, RawDevice, RawScriptedFault, RawSensorsSource, RawSimulation, SensorDriver,
};
pub use sink::{RawConsoleSink, RawJetStreamSink, RawMqttSink, RawSink};
pub use source::{
    RawJetStreamSource, RawMqttSource, RawNatsSource, RawSimulatedSource, RawSource, SimulatedPayload, SimulatedSensor,
};
pub use window::{RawWindow, WindowKindName, WindowLength};

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
    /// `[fleet]` — function updates from a fleet manager (none when left out).
    pub fleet: Option<Spanned<RawFleet>>,
    /// `[http]` — metrics and health endpoints (none when left out).
    pub http: Option<Spanned<RawHttp>>,
}

/// `[http]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// `listen = "127.0.0.1:9464"` — the IP address and port the gateway serves on
    /// (`"0.0.0.0:9464"`: every interface; port 0: a free one, logged at start).
    pub listen: SocketAddr,
    /// `ready_confirmed_within = "5m"` — `/readyz` fails for a pipeline whose uplink has records
    /// to send but confirmed none for this long (1s to 1 day).
    pub ready_confirmed_within: Option<DurationIn<SECOND, DAY>>,
    /// `ready_oldest_below = "15m"` — `/readyz` fails for a pipeline whose oldest waiting record
    /// is this old (1s to 30 days).
    pub ready_oldest_below: Option<DurationIn<SECOND, { 30 * DAY }>>,
    /// `ready_outbox_percent = 80` — `/readyz` fails for a pipeline whose outbox holds this share
    /// of its `max_bytes` (its high-water mark; 1 to 100).
    pub ready_outbox_percent: Option<CountIn<1, 100>>,
}

/// `[fleet]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// `broker = "central"` — the NATS broker whose JetStream holds the fleet's documents and
    /// artifacts.
    pub broker: Spanned<Name>,
    /// `root = "/etc/weir/fleet-root.weir"` — the trusted root the operator installed (signed by
    /// its own root keys); read at start.
    pub root: Spanned<PathBuf>,
    /// `groups = ["plant1", "canary"]` — the groups whose desired documents this gateway takes
    /// (its own id's document takes precedence, then the groups in this order).
    #[serde(default)]
    pub groups: Vec<Spanned<Name>>,
    /// `heartbeat = "30s"` — how often the gateway writes its status (1s to 1h).
    pub heartbeat: Option<DurationIn<SECOND, HOUR>>,
    /// `clock_synced = "kernel"` — how the gateway knows its wall clock is right: `"kernel"`
    /// (the kernel's NTP status, which chrony, ntpd and systemd-timesyncd set), `"always"` (a
    /// battery-backed real-time clock), or the absolute path of a file that exists once the
    /// clock is synced (`"/run/systemd/timesync/synchronized"`).
    pub clock_synced: Option<Spanned<String>>,
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
    /// `wasm_execution = "interpreted"` — how functions run (default: compiled where this
    /// machine has a WebAssembly compiler).
    pub wasm_execution: Option<Spanned<WasmExecution>>,
}

/// How WebAssembly functions run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WasmExecution {
    /// Compiled to machine code (Cranelift) on this gateway: fast; the process maps memory
    /// executable, so `MemoryDenyWriteExecute` cannot apply.
    Compiled,
    /// Compiled to portable bytecode run by an interpreter (Pulley): several times slower, no
    /// executable memory is ever made, and it runs where there is no compiler (32-bit ARM).
    Interpreted,
}

impl WasmExecution {
    /// Whether this machine has a WebAssembly compiler (Cranelift's backends).
    pub const COMPILER_HERE: bool =
        cfg!(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64", target_arch = "s390x"));

    /// The default: compiled where a compiler exists, interpreted elsewhere.
    pub const fn default_here() -> Self {
        if Self::COMPILER_HERE { Self::Compiled } else { Self::Interpreted }
    }
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
    /// `credentials_file = "/etc/weir/gw07.creds"` (NATS only) — a user JWT and nkey seed.
    pub credentials_file: Option<Spanned<PathBuf>>,
    /// `nkey_file = "/etc/weir/gw07.nk"` (NATS only) — an nkey seed.
    pub nkey_file: Option<Spanned<PathBuf>>,
    /// `[brokers.<name>.tls]` (with a `mqtts://` or `tls://` URL only)
    pub tls: Option<Spanned<RawTls>>,
    /// `keep_alive = "30s"` (MQTT only; 1s to 65535s, the protocol's 16-bit field)
    pub keep_alive: Option<DurationIn<SECOND, { 65_535 * SECOND }>>,
    /// `reconnect_min = "100ms"` — first delay after a lost connection (1ms to 1h).
    pub reconnect_min: Option<DurationIn<1, HOUR>>,
    /// `reconnect_max = "30s"` — the delay doubles per failure up to this (1ms to 1h).
    pub reconnect_max: Option<DurationIn<1, HOUR>>,
}

/// `[brokers.<name>.tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// `ca_file = "/etc/weir/central-ca.pem"` — CA certificates (PEM); default: the system's.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// `cert_file = "/etc/weir/gw07.pem"` — client certificate chain (PEM), with `key_file`.
    pub cert_file: Option<Spanned<PathBuf>>,
    /// `key_file = "/etc/weir/gw07.key"` — the client certificate's private key (PEM).
    pub key_file: Option<Spanned<PathBuf>>,
    /// `server_name = "central.example.com"` — verify the server's certificate for this name.
    pub server_name: Option<Spanned<String>>,
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
    /// `decode = "senml_json"` or `[pipelines.<name>.decode.json]` ... — required, except with a
    /// `sensors` source, whose messages weir writes itself.
    pub decode: Option<Spanned<RawDecode>>,
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

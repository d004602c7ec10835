//! The validated configuration: what the runtime takes. Each stage gets its own slice — a source
//! its [`SourceConfig`], the sandbox a [`FunctionConfig`], a window stage its [`WindowConfig`] —
//! never the file as a whole, and cross-references are resolved: a source carries its
//! [`BrokerConfig`], not a broker name.
//!
//! One module per TOML table it comes from (`brokers.rs`, `functions.rs` with the uses of a
//! function, `source.rs`, `decode.rs`, `window.rs`, `downsample.rs`, `outbox.rs`, `sink.rs`); the
//! whole configuration, `[gateway]`, `[state]`, the pipeline and its batching here. Each field's
//! doc comment shows the TOML line it parses, where it has one, written with its default where
//! there is one (`defaults.rs`).
//!
//! **Invariant:** values built by the validator (`validate/`) hold only what the file allows:
//! every bound checked, every name referring to something defined.

mod brokers;
mod decode;
mod downsample;
mod functions;
mod outbox;
mod sensors;
mod sink;
mod source;
mod window;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use brokers::{Backoff, BrokerConfig, ClientIdentity, NatsCredentials, PemFile, TlsConfig};
pub use decode::{DecodeConfig, FieldMapping, ValueFields};
pub use downsample::{DownsampleConfig, DownsampleMethod};
pub use functions::{FunctionConfig, FunctionLimits, FunctionUse, OperatorConfig, QuarantineConfig};
pub use outbox::{Drain, OutboxConfig};
pub use sensors::{
    BusKind, DeviceSimulation, DriverConfig, FullScale, HealthPolicy, Reporting, ScriptedFault, SensorBus,
    SensorDevice, SensorsConfig,
};
pub use sink::SinkConfig;
pub use source::{MQTT_MAX_PAYLOAD, Qos, SimulatedConfig, SourceConfig};
pub use window::WindowConfig;

use super::{Durability, Encoding, FunctionId, GatewayId, Locations, Name, OnQuarantine, WasmExecution};

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `[gateway]` — this gateway.
    pub gateway: GatewayConfig,
    /// `[state]` — the state store.
    pub state: StateConfig,
    /// `[brokers.<name>]` — every broker, by name (sources and sinks carry the one they use).
    pub brokers: BTreeMap<Name, BrokerConfig>,
    /// `[functions.<id>]` — every function a pipeline uses, by id (the others are not loaded).
    pub functions: BTreeMap<FunctionId, FunctionConfig>,
    /// `[pipelines.<name>]` — the pipelines, in name order.
    pub pipelines: Vec<PipelineConfig>,
    /// `[fleet]` — function updates from a fleet manager, if configured.
    pub fleet: Option<FleetConfig>,
    /// `[http]` — metrics and health endpoints, if configured.
    pub http: Option<HttpConfig>,
    /// Where its parts were written, for problems found after validation.
    pub locations: Locations,
}

/// `[gateway]`
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `id = "plant1-gw07"` — identity in client ids and record ids.
    pub id: GatewayId,
    /// `data_dir = "/var/lib/weir"` — where state, dead letters, the outbox and compiled
    /// functions live; relative to the file's directory; `--data-dir` takes precedence.
    pub data_dir: PathBuf,
    /// `wasm_execution = "interpreted"` — how functions run.
    pub wasm_execution: WasmExecution,
}

/// `[http]` — metrics, health, readiness, the status page and the tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// `listen = "127.0.0.1:9464"` — where the gateway serves them.
    pub listen: std::net::SocketAddr,
    /// When `/readyz` judges a pipeline not ready.
    pub ready: Readiness,
}

/// When `/readyz` judges a pipeline not ready (`[http]`'s `ready_*` settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// `ready_confirmed_within = "5m"` — its uplink has records to send and confirmed none for
    /// this long.
    pub confirmed_within: Duration,
    /// `ready_oldest_below = "15m"` — its oldest waiting record is this old.
    pub oldest_below: Duration,
    /// `ready_outbox_percent = 80` — its outbox holds this share of `max_bytes`.
    pub outbox_percent: u64,
}

/// `[fleet]` — function updates from a fleet manager.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// `broker = "central"` — the NATS broker holding the fleet's buckets.
    pub broker: BrokerConfig,
    /// `root = "/etc/weir/fleet-root.weir"` — where the trusted root was read from.
    pub root_path: PathBuf,
    /// The trusted root the operator installed, as signed (checked to be a root signed by its
    /// own root keys when the file was validated).
    pub root: weir_fleet::Signed,
    /// `groups = ["plant1"]` — the groups whose documents this gateway takes, in precedence
    /// order.
    pub groups: Vec<Name>,
    /// `heartbeat = "30s"` — how often the gateway writes its status.
    pub heartbeat: Duration,
    /// `clock_synced = "kernel"` — how the gateway knows its wall clock is right.
    pub clock_synced: ClockSynced,
}

/// How a gateway knows its wall clock is right (fleet documents expire by it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClockSynced {
    /// `"kernel"`: the kernel says so (its NTP status, set by chrony, ntpd, systemd-timesyncd).
    Kernel,
    /// `"always"`: the clock is right from boot (a battery-backed real-time clock).
    Always,
    /// `"/run/systemd/timesync/synchronized"`: once this file exists.
    WhenFileExists(PathBuf),
}

/// `[state]`
#[derive(Clone, Debug)]
pub struct StateConfig {
    /// `durability = "sync"` — how commits reach the disk.
    pub durability: Durability,
    /// `max_key = "1KiB"` — longest state key a function may write, in bytes.
    pub max_key: u32,
    /// `max_value = "1MiB"` — longest state value a function may write, in bytes.
    pub max_value: u32,
    /// `dead_letter_capacity = 10000` — dead letters kept before the oldest are evicted.
    pub dead_letter_capacity: u64,
    /// `dead_letter_max_bytes = "32MiB"` — bytes the kept dead letters may take before the
    /// oldest are evicted.
    pub dead_letter_max_bytes: u64,
}

/// `[pipelines.<name>]`
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The `<name>` of `[pipelines.<name>]`.
    pub name: Name,
    /// `[pipelines.<name>.source.<kind>]` — where messages come from.
    pub source: SourceConfig,
    /// `decode = "senml_json"` or `[pipelines.<name>.decode.<kind>]` — how payloads become
    /// readings.
    pub decode: DecodeConfig,
    /// `[[pipelines.<name>.operators]]` — the operator chain, in order.
    pub operators: Vec<OperatorConfig>,
    /// `[pipelines.<name>.batch]` — batching.
    pub batch: BatchConfig,
    /// `encoding = "cbor"` — record encoding.
    pub encoding: Encoding,
    /// `[pipelines.<name>.sink.<kind>]` — where records go.
    pub sink: SinkConfig,
    /// `[pipelines.<name>.outbox]` — the outbox between the two.
    pub outbox: OutboxConfig,
    /// `[pipelines.<name>.window]` — event-time windows after the operators, if any.
    pub window: Option<WindowConfig>,
    /// `[pipelines.<name>.downsample]` — downsampling of the readings sent, if any.
    pub downsample: Option<DownsampleConfig>,
    /// `on_quarantine = "hold"` — what the pipeline does while one of its functions is
    /// quarantined.
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

/// `[pipelines.<name>.batch]` — batching of messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// `max_messages = 1000` — messages per batch.
    pub max_messages: usize,
    /// `max_bytes = "1MiB"` — payload bytes per batch.
    pub max_bytes: u64,
    /// `linger = "100ms"` — how long a partial batch waits.
    pub linger: Duration,
    /// `queue = 4096` — messages buffered between source and batcher.
    pub queue: usize,
}

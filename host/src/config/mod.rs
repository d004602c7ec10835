//! Configuration: parse (`raw/`) → validate (`validate/`) → the `*Config` types the runtime
//! takes (`validated/`).
//!
//! Runtime code never sees raw TOML: it receives the validated slice it needs (a source gets a
//! [`SourceConfig`], the sandbox a [`FunctionConfig`], …). Cross-references are resolved during
//! validation — a pipeline's source carries its [`BrokerConfig`], not a broker name — so a
//! misspelt name, a broker of the wrong protocol or a missing component file is refused before
//! anything starts, with file, line, column and field (see [`ConfigError`]).
//!
//! The same table has the same name in each step: `raw/window.rs` reads
//! `[pipelines.<name>.window]`, `validate/window.rs` checks it, `validated/window.rs` holds the
//! result. Identifiers and bounded values are validating newtypes ([`types`]); defaults are in
//! `defaults.rs`; where the parts were written, for problems found after validation, in
//! `locations.rs`.
//!
//! The built-in default (`weir run` without `--config`) is [`DEFAULT_CONFIG`], parsed by the same
//! code.

mod defaults;
mod error;
mod locations;
pub mod raw;
pub mod register_dump;
pub mod types;
mod validate;
mod validated;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, Problem, redact_credentials};
pub use locations::Locations;
pub use raw::{
    BusProtocol, Durability, Encoding, FaultScript, NumberEncoding, OnQuarantine, SensorDriver, SimulatedPayload,
    SimulatedSensor, TimeUnit, WasmExecution, WhenFull,
};
pub use types::{
    BrokerUrl, FunctionId, GatewayId, JsonPointer, MqttClientId, MqttTopic, Name, NatsSubject, NatsSubjectFilter,
    Protocol, Secret, TopicFilter,
};
pub use validated::{
    Backoff, BatchConfig, BrokerConfig, BusKind, ClientIdentity, ClockSynced, Config, DecodeConfig, DeviceSimulation,
    DownsampleConfig, DownsampleMethod, Drain, DriverConfig, FieldMapping, FleetConfig, FullScale, FunctionConfig,
    FunctionLimits, FunctionUse, GatewayConfig, HealthPolicy, HttpConfig, MQTT_MAX_PAYLOAD, NatsCredentials,
    OperatorConfig, OutboxConfig, PemFile, PipelineConfig, Qos, QuarantineConfig, Readiness, Reporting, ScriptedFault,
    SensorBus, SensorDevice, SensorsConfig, SimulatedConfig, SinkConfig, SourceConfig, StateConfig, TlsConfig,
    ValueFields, WindowConfig,
};

/// The built-in configuration: simulated sensors, the bundled functions, a console sink.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

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

/// Parses and validates `text`, read from `file` (the name its problems give); relative paths
/// resolve against `base_dir`. Every problem is reported, not only the first.
pub fn parse(file: &str, text: &str, base_dir: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    validate::parse(file, text, base_dir, overrides)
}

#[cfg(test)]
pub(crate) mod tests;

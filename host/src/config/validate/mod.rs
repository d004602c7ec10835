//! Validation: the file's text → [`RawConfig`] (its syntax, and each field on its own) → every
//! table checked, also against the others → [`Config`].
//!
//! One module per TOML table: `gateway.rs`, `state.rs`, `brokers.rs` (with the MQTT client ids
//! used on each broker), `functions.rs` (with the uses of a function), `fleet.rs`, and for each
//! pipeline `source.rs` (with `sensors.rs`), `decode.rs`, `operators.rs`, `batch.rs`, `sink.rs`, `outbox.rs`, `window.rs`,
//! `downsample.rs`. This module runs them and collects every problem instead of stopping at the
//! first.
//!
//! **Invariant:** a problem is reported one way, [`Validator::problem`] (through
//! [`ConfigFile::problem`], like the parser's and `locations.rs`'): with file, line, column, field
//! and what is allowed. A configuration with any problem is refused with all of them, in file
//! order; one without is returned whole, every reference resolved.

mod batch;
mod brokers;
mod decode;
mod downsample;
mod fleet;
mod functions;
mod gateway;
mod operators;
mod outbox;
mod sensors;
mod sink;
mod source;
mod state;
mod window;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::defaults;
use super::error::ConfigFile;
use super::raw::{RawConfig, RawPipeline};
use super::types::{CountIn, DurationIn};
use super::{
    BrokerConfig, Config, ConfigError, DecodeConfig, FunctionConfig, FunctionId, GatewayId, HttpConfig, Locations,
    Name, Overrides, PipelineConfig, Problem, Readiness, SourceConfig,
};
use brokers::MqttClient;

/// Parses and validates `text`, read from `file`; relative paths resolve against `base_dir`.
pub(super) fn parse(file: &str, text: &str, base_dir: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    let file = ConfigFile::new(file, text);
    let raw = deserialize(&file)?;
    let data_dir_span = overrides.data_dir.is_none().then(|| raw.gateway.data_dir.span());
    let locations = Locations::new(file.clone(), data_dir_span);
    Validator { file, base_dir, problems: Vec::new(), mqtt_clients: Vec::new(), bus_nodes: Vec::new(), locations }
        .validate(raw, overrides)
}

/// The file as written. A syntax error, or a field that cannot be read on its own (unknown, of
/// the wrong type, out of bounds), refuses it at once with that one problem.
fn deserialize(file: &ConfigFile) -> Result<RawConfig, ConfigError> {
    let refuse = |span: Option<Range<usize>>, field: String, message: &str| {
        file.refusal(vec![file.problem(span, field, message)])
    };
    let deserializer =
        toml::Deserializer::parse(file.text()).map_err(|e| refuse(e.span(), String::new(), e.message()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        // `Spanned` fields add an internal path segment; users never wrote it.
        let field = e.path().to_string().replace(".$__serde_spanned_private_value", "");
        let field = if field == "." { String::new() } else { field };
        let inner = e.into_inner();
        refuse(inner.span(), field, inner.message())
    })
}

/// Checks every table, collecting every problem instead of stopping at the first.
struct Validator<'a> {
    /// The file the problems point into.
    file: ConfigFile,
    /// What relative paths in the file are relative to.
    base_dir: &'a Path,
    /// Every problem found so far.
    problems: Vec<Problem>,
    /// Every MQTT connection the pipelines open, to refuse two with one client id on one broker.
    mqtt_clients: Vec<MqttClient>,
    /// Every device node a sensors bus opens, to refuse two buses on one node.
    bus_nodes: Vec<sensors::BusNode>,
    /// Where functions and their uses were written.
    locations: Locations,
}

impl Validator<'_> {
    /// Reports a problem with `field` (its dotted path) at the byte span `span` of the file, or
    /// without a position (`None`); `message` says what is wrong and what is allowed.
    fn problem(&mut self, span: Option<Range<usize>>, field: impl Into<String>, message: impl Into<String>) {
        let problem = self.file.problem(span, field, message);
        self.problems.push(problem);
    }

    /// `path` made absolute against the file's directory.
    fn resolve(&self, path: &Path) -> PathBuf {
        resolve_in(self.base_dir, path)
    }

    fn validate(mut self, raw: RawConfig, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (gateway, functions_dir) = self.gateway(raw.gateway, overrides);
        let state = state::state(&raw.state);
        let brokers = self.brokers(raw.brokers);
        let functions = self.functions(raw.functions, &functions_dir);
        let pipelines: Vec<PipelineConfig> = raw
            .pipelines
            .into_iter()
            .filter_map(|(name, pipeline)| {
                self.pipeline(&gateway.id, name, pipeline.into_inner(), &brokers, &functions)
            })
            .collect();
        let fleet = raw.fleet.and_then(|fleet| self.fleet(fleet.into_inner(), &brokers));
        let http = raw.http.map(|http| {
            let http = http.into_inner();
            let ready = Readiness {
                confirmed_within: http.ready_confirmed_within.map_or(defaults::READY_CONFIRMED_WITHIN, DurationIn::get),
                oldest_below: http.ready_oldest_below.map_or(defaults::READY_OLDEST_BELOW, DurationIn::get),
                outbox_percent: http.ready_outbox_percent.map_or(defaults::READY_OUTBOX_PERCENT, CountIn::get),
            };
            HttpConfig { listen: http.listen, ready }
        });
        self.refuse_shared_client_ids();
        self.refuse_shared_bus_nodes();
        if pipelines.is_empty() && self.problems.is_empty() {
            self.problem(None, "pipelines", "no pipeline is defined: add a [pipelines.<name>] table");
        }

        // Keep only functions that some pipeline uses; unused ones are not loaded.
        let used: BTreeSet<&FunctionId> =
            pipelines.iter().flat_map(PipelineConfig::function_uses).map(|used| &used.function).collect();
        let functions = functions.into_iter().filter(|(id, _)| used.contains(id)).collect();

        if !self.problems.is_empty() {
            return Err(self.file.refusal(self.problems));
        }
        Ok(Config { gateway, state, brokers, functions, pipelines, fleet, http, locations: self.locations })
    }

    /// `[pipelines.<name>]`: each of its tables, and the pipeline when every one passed.
    fn pipeline(
        &mut self,
        gateway: &GatewayId,
        name: Name,
        raw: RawPipeline,
        brokers: &BTreeMap<Name, BrokerConfig>,
        functions: &BTreeMap<FunctionId, FunctionConfig>,
    ) -> Option<PipelineConfig> {
        let at = |table: &str| format!("pipelines.{name}.{table}");
        let source_span = raw.source.span();
        let source = self.source(gateway, &name, raw.source.into_inner(), &at("source"), brokers);
        if let Some(SourceConfig::Sensors(sensors)) = &source {
            self.note_bus_nodes(sensors, &at("source.sensors"), source_span);
        }
        let decode = match (raw.decode, &source) {
            (None, Some(SourceConfig::Sensors(_))) => Some(DecodeConfig::WeirRecord),
            (Some(decode), Some(SourceConfig::Sensors(_))) => {
                let message = "a sensors source writes its readings itself: remove the decode setting";
                self.problem(Some(decode.span()), at("decode"), message);
                None
            }
            (Some(decode), _) => self.decode(&name, decode, &at("decode"), functions),
            // An unusable source says nothing of what its decoder should be.
            (None, None) => None,
            (None, Some(_)) => {
                let message = "say how payloads decode: decode = \"senml_json\", [pipelines.<name>.decode.json], … \
                               (see docs/configuration.md)";
                self.problem(None, at("decode"), message);
                None
            }
        };
        let operators = self.operators(&name, raw.operators, &at("operators"), functions);
        let batch = batch::batch(&raw.batch);
        let sink = self.sink(gateway, &name, raw.sink.into_inner(), &at("sink"), brokers);
        let outbox = self.outbox(raw.outbox.map(Spanned::into_inner).unwrap_or_default(), &at("outbox"));
        // `None` when the table is wrong (its problems are reported), else whether there is one.
        let window = match raw.window {
            Some(window) => self.window(&name, &window, &at("window"), functions).map(Some),
            None => Some(None),
        };
        let downsample = match raw.downsample {
            Some(downsample) => {
                let window = window.as_ref().and_then(Option::as_ref);
                self.downsample(&downsample, &at("downsample"), window).map(Some)
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
}

/// `path` made absolute against `dir`.
fn resolve_in(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_owned() } else { dir.join(path) }
}

/// A bounded duration in nanoseconds (every bound is far below the 584 years a u64 holds).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).expect("configured durations are bounded far below 584 years")
}

/// The names defined, for a message about a name that is not.
fn list(names: &[&str]) -> String {
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

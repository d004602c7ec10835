//! Where the parts of a validated configuration were written: the file, its text and the spans of
//! the fields that checks made after validation report on (loading and starting the functions,
//! probing the data directory, building each broker's TLS configuration and reading its NATS
//! credentials — see `preflight`). Their problems are made the one way the
//! validator's are ([`ConfigFile::problem`]), so they carry file, line, column and field alike.

use std::collections::BTreeMap;
use std::ops::Range;

use super::error::{ConfigError, ConfigFile, Problem};
use super::types::{FunctionId, Name};

/// Where a configuration's functions, their uses and its data directory were written.
#[derive(Clone, Debug)]
pub struct Locations {
    /// The file and its text.
    file: ConfigFile,
    /// The `data_dir` value; `None` when `--data-dir` (or `WEIR_DATA_DIR`) overrides it.
    data_dir: Option<Range<usize>>,
    functions: BTreeMap<FunctionId, FunctionLocation>,
    /// By pipeline and use name.
    uses: BTreeMap<(Name, Name), UseLocation>,
    /// By broker and setting (`tls.key_file`, `nkey_file`; `""` for the broker's table).
    broker_settings: BTreeMap<(Name, &'static str), Range<usize>>,
}

/// Where a `[functions.<id>]` table's fields were written.
#[derive(Clone, Debug)]
pub(super) struct FunctionLocation {
    /// The `component` value.
    pub(super) component: Range<usize>,
    /// The `memory` value, when written.
    pub(super) memory: Option<Range<usize>>,
}

/// Where one use of a function in a pipeline was written.
#[derive(Clone, Debug)]
pub(super) struct UseLocation {
    /// Dotted path of the use's table (`pipelines.boiler.operators[0]`).
    pub(super) field: String,
    /// The `function` value.
    pub(super) function: Range<usize>,
    /// The `params` value, when written.
    pub(super) params: Option<Range<usize>>,
}

impl Locations {
    /// Locations in `file`; filled in by the validator.
    pub(super) fn new(file: ConfigFile, data_dir: Option<Range<usize>>) -> Self {
        Self { file, data_dir, functions: BTreeMap::new(), uses: BTreeMap::new(), broker_settings: BTreeMap::new() }
    }

    /// Notes where `setting` of broker `broker` was written (`""`: the broker's table).
    pub(super) fn add_broker_setting(&mut self, broker: Name, setting: &'static str, span: Range<usize>) {
        self.broker_settings.insert((broker, setting), span);
    }

    pub(super) fn add_function(&mut self, id: FunctionId, location: FunctionLocation) {
        self.functions.insert(id, location);
    }

    pub(super) fn add_use(&mut self, pipeline: Name, use_name: Name, location: UseLocation) {
        self.uses.insert((pipeline, use_name), location);
    }

    /// The sha256 of the configuration's text, in hex: tells which configuration runs.
    pub fn text_sha256(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.file.text().as_bytes()))
    }

    fn at(&self, span: Option<Range<usize>>, field: String, message: String) -> Problem {
        self.file.problem(span, field, message)
    }

    /// A problem with the data directory: at `gateway.data_dir`, or `--data-dir` when the command
    /// line set it.
    pub fn data_dir(&self, message: impl Into<String>) -> Problem {
        match &self.data_dir {
            Some(span) => self.at(Some(span.clone()), "gateway.data_dir".to_owned(), message.into()),
            None => self.at(None, "--data-dir".to_owned(), message.into()),
        }
    }

    /// A problem with a function's component file, at `functions.<id>.component`.
    pub fn component(&self, function: &FunctionId, message: impl Into<String>) -> Problem {
        let span = self.functions.get(function).map(|f| f.component.clone());
        self.at(span, format!("functions.{function}.component"), message.into())
    }

    /// A problem with a function's memory limit, at `functions.<id>.memory` (its value, or the
    /// function's `component` line when the default applies).
    pub fn memory(&self, function: &FunctionId, message: impl Into<String>) -> Problem {
        let span = self.functions.get(function).map(|f| f.memory.clone().unwrap_or_else(|| f.component.clone()));
        self.at(span, format!("functions.{function}.memory"), message.into())
    }

    /// A problem with which function a use names, at its `function` field.
    pub fn use_function(&self, pipeline: &Name, use_name: &Name, message: impl Into<String>) -> Problem {
        match self.uses.get(&(pipeline.clone(), use_name.clone())) {
            Some(used) => self.at(Some(used.function.clone()), format!("{}.function", used.field), message.into()),
            None => self.at(None, format!("pipelines.{pipeline}"), message.into()),
        }
    }

    /// A problem with a use's parameters, at its `params` field (or its `function` line when it
    /// has none).
    pub fn use_params(&self, pipeline: &Name, use_name: &Name, message: impl Into<String>) -> Problem {
        match self.uses.get(&(pipeline.clone(), use_name.clone())) {
            Some(used) => {
                let span = used.params.clone().unwrap_or_else(|| used.function.clone());
                self.at(Some(span), format!("{}.params", used.field), message.into())
            }
            None => self.at(None, format!("pipelines.{pipeline}"), message.into()),
        }
    }

    /// A problem with a broker's `setting` (`tls.ca_file`, `credentials_file`), at its value — or
    /// at the broker's table when the setting was left to its default.
    pub fn broker_setting(&self, broker: &Name, setting: &'static str, message: impl Into<String>) -> Problem {
        let span = self
            .broker_settings
            .get(&(broker.clone(), setting))
            .or_else(|| self.broker_settings.get(&(broker.clone(), "")))
            .cloned();
        self.at(span, format!("brokers.{broker}.{setting}"), message.into())
    }

    /// A problem of the configuration as a whole, at `field` without a position.
    pub fn whole(&self, field: &str, message: impl Into<String>) -> Problem {
        self.at(None, field.to_owned(), message.into())
    }

    /// The refusal of this file for `problems`, in file order.
    pub fn refusal(&self, problems: Vec<Problem>) -> ConfigError {
        self.file.refusal(problems)
    }
}

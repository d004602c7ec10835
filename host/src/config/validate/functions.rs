//! `[functions.<id>]`: each function's component file (it must exist) and limits; a use's
//! reference to a function (defined); and where each use was written, for problems found after
//! validation.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::{Validator, list, resolve_in};
use crate::config::defaults;
use crate::config::locations::{FunctionLocation, UseLocation};
use crate::config::raw::RawFunction;
use crate::config::types::{CountIn, DurationIn, SizeIn};
use crate::config::{FunctionConfig, FunctionId, FunctionLimits, FunctionUse, Name, QuarantineConfig};

impl Validator<'_> {
    /// Every function, by id; component paths resolve against `functions_dir`.
    pub(super) fn functions(
        &mut self,
        raw: BTreeMap<FunctionId, Spanned<RawFunction>>,
        functions_dir: &Path,
    ) -> BTreeMap<FunctionId, FunctionConfig> {
        let mut functions = BTreeMap::new();
        for (id, function) in raw {
            let raw_function = function.get_ref();
            let component = resolve_in(functions_dir, raw_function.component.get_ref());
            if !component.is_file() {
                self.problem(
                    Some(raw_function.component.span()),
                    format!("functions.{id}.component"),
                    format!("component file {} does not exist", component.display()),
                );
            }
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
                timeout: raw_function.timeout.map_or(defaults::TIMEOUT, DurationIn::get),
                fuel: raw_function.fuel.map(CountIn::get),
                table_elements: raw_function.table_elements.map_or(defaults::TABLE_ELEMENTS, CountIn::as_u32),
                instances: raw_function.instances.map_or(defaults::INSTANCES, CountIn::as_u32),
                state_write_bytes: raw_function.state_writes.map_or(defaults::STATE_WRITES, SizeIn::get),
                state_quota_bytes: raw_function.state_quota.map_or(defaults::STATE_QUOTA, SizeIn::get),
            };
            let quarantine = QuarantineConfig {
                after: raw_function.quarantine_after.map_or(defaults::QUARANTINE_AFTER, CountIn::as_u32),
                first: raw_function.quarantine_for.map_or(defaults::QUARANTINE_FOR, DurationIn::get),
            };
            functions.insert(id.clone(), FunctionConfig { id, component, limits, quarantine });
        }
        functions
    }

    /// Whether a function has the id `id`; reports a problem at `field` when none has.
    pub(super) fn function_ref(
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
            Some(id.span()),
            field,
            format!("no function is called {:?}; defined: {}", id.get_ref().as_str(), list(&known)),
        );
        false
    }

    /// A use of `function` in `pipeline` under `name`, written at `field` (its table), noted in
    /// the locations.
    pub(super) fn function_use(
        &mut self,
        pipeline: &Name,
        name: Name,
        field: String,
        function: &Spanned<FunctionId>,
        params: Option<&Spanned<toml::Table>>,
    ) -> FunctionUse {
        self.locations.add_use(
            pipeline.clone(),
            name.clone(),
            UseLocation { field, function: function.span(), params: params.map(Spanned::span) },
        );
        FunctionUse { name, function: function.get_ref().clone(), params_json: params_to_json(params) }
    }
}

/// A use's `params` as a JSON object (`{}` when unset).
fn params_to_json(params: Option<&Spanned<toml::Table>>) -> String {
    let params = params.map_or_else(toml::Table::new, |p| p.get_ref().clone());
    serde_json::to_string(&params).expect("a TOML table always serializes to JSON")
}

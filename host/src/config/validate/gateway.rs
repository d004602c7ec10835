//! `[gateway]`: this gateway's identity, where its data and its functions are, and how functions
//! run (compiled only where this machine has a compiler); the command line's `--data-dir` and
//! `--functions-dir` take precedence over the file.

use std::path::PathBuf;

use super::Validator;
use crate::config::raw::RawGateway;
use crate::config::{GatewayConfig, Overrides, WasmExecution};

impl Validator<'_> {
    /// The gateway, and the directory relative component paths resolve against (the file's
    /// own directory unless `functions_dir` or `--functions-dir` says otherwise).
    pub(super) fn gateway(&mut self, raw: RawGateway, overrides: &Overrides) -> (GatewayConfig, PathBuf) {
        let data_dir = overrides.data_dir.clone().unwrap_or_else(|| self.resolve(raw.data_dir.get_ref()));
        let functions_dir = match (&overrides.functions_dir, &raw.functions_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) => self.resolve(dir.get_ref()),
            (None, None) => self.base_dir.to_owned(),
        };
        let wasm_execution = match raw.wasm_execution {
            None => WasmExecution::default_here(),
            Some(chosen) if *chosen.get_ref() == WasmExecution::Compiled && !WasmExecution::COMPILER_HERE => {
                self.problem(
                    Some(chosen.span()),
                    "gateway.wasm_execution",
                    format!(
                        "there is no WebAssembly compiler for this machine ({}): write \"interpreted\" or leave \
                         the setting out",
                        std::env::consts::ARCH
                    ),
                );
                WasmExecution::Interpreted
            }
            Some(chosen) => *chosen.get_ref(),
        };
        (GatewayConfig { id: raw.id, data_dir, wasm_execution }, functions_dir)
    }
}

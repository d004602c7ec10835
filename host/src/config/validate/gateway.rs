//! `[gateway]`: this gateway's identity and where its data and its functions are; the command
//! line's `--data-dir` and `--functions-dir` take precedence over the file.

use std::path::PathBuf;

use super::Validator;
use crate::config::raw::RawGateway;
use crate::config::{GatewayConfig, Overrides};

impl Validator<'_> {
    /// The gateway, and the directory relative component paths resolve against (the file's
    /// own directory unless `functions_dir` or `--functions-dir` says otherwise).
    pub(super) fn gateway(&self, raw: RawGateway, overrides: &Overrides) -> (GatewayConfig, PathBuf) {
        let data_dir = overrides.data_dir.clone().unwrap_or_else(|| self.resolve(raw.data_dir.get_ref()));
        let functions_dir = match (&overrides.functions_dir, &raw.functions_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) => self.resolve(dir.get_ref()),
            (None, None) => self.base_dir.to_owned(),
        };
        (GatewayConfig { id: raw.id, data_dir }, functions_dir)
    }
}

//! `weir run`: the gateway, until SIGINT or SIGTERM.
//!
//! Order: the signal handlers first (see `shutdown`), then the configuration is loaded and
//! checked as `weir check` does (a refusal ends with status 2 before anything starts), then the
//! gateway runs on the runtime it is given.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio::runtime::Runtime;
use weir_host::config::Overrides;
use weir_host::{gateway, preflight, shutdown};

use super::check::load_checked;

/// `weir run` and its options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides `gateway.data_dir`.
    #[arg(long, env = "WEIR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides `gateway.functions_dir`.
    #[arg(long, env = "WEIR_FUNCTIONS_DIR")]
    functions_dir: Option<PathBuf>,
}

impl Args {
    /// Runs the gateway on `runtime` until it is stopped.
    pub fn execute(self, runtime: &Runtime) -> anyhow::Result<ExitCode> {
        let Self { config: path, data_dir, functions_dir } = self;
        // Signal handlers first: a SIGHUP (`systemctl reload`) or SIGTERM that arrives while the
        // configuration loads or the functions compile must not take the default action.
        let signals = {
            let _inside = runtime.enter();
            shutdown::Signals::install().context("cannot listen for signals")?
        };
        // Nothing starts unless the whole check passes. It runs guest code (`init`): on the
        // blocking pool, like every WebAssembly call.
        let overrides = Overrides { data_dir, functions_dir };
        let checked = runtime
            .block_on(runtime.spawn_blocking(move || load_checked(path.as_ref(), &overrides, preflight::Mode::Run)))
            .context("checking the configuration panicked")??;
        let (config, prepared) = match checked {
            Ok(checked) => checked,
            Err(code) => return Ok(code),
        };
        runtime.block_on(async {
            tracing::info!(stage = "gateway", gateway = %config.gateway.id, pipelines = config.pipelines.len(),
                data_dir = %config.gateway.data_dir.display(), version = env!("CARGO_PKG_VERSION"), "weir starting");
            let token = tokio_util::sync::CancellationToken::new();
            let gateway = gateway::run(config, prepared, token.clone(), signals.hangups);
            shutdown::run_until_signalled(gateway, token, signals.stop).await
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

//! `weir check`: loads a configuration and checks everything that can be known without brokers
//! (`preflight`), then summarises it. Also the loading `run` does before it starts anything:
//! a refusal is printed the way compilers print errors and ends with status
//! [`CONFIG_REFUSED`].

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use weir_host::config::{self, Config, ConfigError, Overrides};
use weir_host::preflight::{self, PreflightError, Prepared};

use super::CONFIG_REFUSED;

/// `weir check` and its options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Overrides `gateway.data_dir`.
    #[arg(long, env = "WEIR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides `gateway.functions_dir`.
    #[arg(long, env = "WEIR_FUNCTIONS_DIR")]
    functions_dir: Option<PathBuf>,
}

impl Args {
    /// Checks the file and prints one line for the gateway and one per pipeline.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let Self { config: path, data_dir, functions_dir } = self;
        let mut out = std::io::stdout().lock();
        let overrides = Overrides { data_dir, functions_dir };
        let config = match load_checked(Some(&path), &overrides, preflight::Mode::Check)? {
            Ok((config, _)) => config,
            Err(code) => return Ok(code),
        };
        writeln!(
            out,
            "{}: ok — gateway {}, {} pipeline(s), {} function(s)",
            path.display(),
            config.gateway.id,
            config.pipelines.len(),
            config.functions.len()
        )?;
        for pipeline in &config.pipelines {
            let operators: Vec<&str> = pipeline.operators.iter().map(|o| o.name.as_str()).collect();
            writeln!(out, "  {}: [{}] → {}", pipeline.name, operators.join(", "), pipeline.sink.kind())?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Loads a configuration (the built-in one when `path` is `None`) and checks everything that can
/// be known without brokers (see `preflight`), printing a refusal the way compilers print errors.
/// `Err` inside is the exit status of a refusal already printed.
pub(super) fn load_checked(
    path: Option<&PathBuf>,
    overrides: &Overrides,
    mode: preflight::Mode,
) -> anyhow::Result<Result<(Config, Prepared), ExitCode>> {
    let config = match load(path, overrides) {
        Ok(config) => config,
        Err(code) => return Ok(Err(code)),
    };
    match preflight::check(&config, mode) {
        Ok(prepared) => Ok(Ok((config, prepared))),
        Err(PreflightError::Refused(error)) => {
            eprint!("{error}");
            Ok(Err(ExitCode::from(CONFIG_REFUSED)))
        }
        Err(other) => Err(other.into()),
    }
}

/// Loads a configuration, printing a refusal the way compilers print errors.
fn load(path: Option<&PathBuf>, overrides: &Overrides) -> Result<Config, ExitCode> {
    let loaded = match path {
        Some(path) => config::load(path, overrides),
        None => config::parse(
            "<built-in default>",
            config::DEFAULT_CONFIG,
            &std::env::current_dir().unwrap_or_default(),
            overrides,
        ),
    };
    loaded.map_err(|error| {
        eprint!("{error}");
        if matches!(error, ConfigError::Read { .. }) {
            eprintln!();
        }
        if path.is_none() {
            eprintln!("hint: the built-in configuration runs the example functions; build them with `cargo xtask build-functions`");
        }
        ExitCode::from(CONFIG_REFUSED)
    })
}

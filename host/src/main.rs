//! `weir` — the command line. Thin: parsing arguments and printing; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_host::config::{self, Config, ConfigError, Overrides};
use weir_host::state::{self, DeadLetterContent, StoreOptions};
use weir_host::{encode, gateway, shutdown, telemetry};

/// Exit status for a configuration that was refused.
const CONFIG_REFUSED: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "Edge stream processor: ingest MQTT and NATS, run WebAssembly functions, forward compact CBOR"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (with the built-in demo configuration when no --config is given).
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `gateway.data_dir`.
        #[arg(long, env = "WEIR_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Overrides `gateway.functions_dir`.
        #[arg(long, env = "WEIR_FUNCTIONS_DIR")]
        functions_dir: Option<PathBuf>,
    },
    /// Validate a configuration file without running anything.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `gateway.functions_dir`.
        #[arg(long, env = "WEIR_FUNCTIONS_DIR")]
        functions_dir: Option<PathBuf>,
    },
    /// Show the dead letters kept in a data directory (the gateway must not be running).
    DeadLetters {
        /// The gateway's data directory.
        #[arg(long, env = "WEIR_DATA_DIR")]
        data_dir: PathBuf,
        /// How many of the newest to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging();
    let result = match cli.command {
        Command::Run { config, data_dir, functions_dir } => {
            run(config.as_ref(), &Overrides { data_dir, functions_dir })
        }
        Command::Check { config, functions_dir } => check(&config, &Overrides { data_dir: None, functions_dir }),
        Command::DeadLetters { data_dir, limit, json } => dead_letters(&data_dir, limit, json),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
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

fn run(path: Option<&PathBuf>, overrides: &Overrides) -> anyhow::Result<ExitCode> {
    let config = match load(path, overrides) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        tracing::info!(stage = "gateway", gateway = %config.gateway.id, pipelines = config.pipelines.len(),
            data_dir = %config.gateway.data_dir.display(), version = env!("CARGO_PKG_VERSION"), "weir starting");
        let token = tokio_util::sync::CancellationToken::new();
        shutdown::run_until_signalled(gateway::run(config, token.clone()), token).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn check(path: &PathBuf, overrides: &Overrides) -> anyhow::Result<ExitCode> {
    let config = match load(Some(path), overrides) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    println!(
        "{}: ok — gateway {}, {} pipeline(s), {} function(s)",
        path.display(),
        config.gateway.id,
        config.pipelines.len(),
        config.functions.len()
    );
    for pipeline in &config.pipelines {
        let operators: Vec<&str> = pipeline.operators.iter().map(|o| o.name.as_str()).collect();
        println!("  {}: [{}] → {}", pipeline.name, operators.join(", "), pipeline.sink.kind());
    }
    Ok(ExitCode::SUCCESS)
}

fn dead_letters(data_dir: &std::path::Path, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    if !data_dir.join(state::DATABASE_FILE).is_file() {
        anyhow::bail!("{} holds no weir state (no {})", data_dir.display(), state::DATABASE_FILE);
    }
    // Opening takes the store's lock, which tells us whether a gateway is using it.
    let options = StoreOptions { dead_letter_capacity: u64::MAX, ..StoreOptions::default() };
    let (store, committer, thread) = state::open(data_dir, options)?;
    let letters = store.dead_letters(limit)?;
    let (kept, evicted) = store.dead_letter_counts()?;
    drop(committer);
    let _ = thread.join();
    if !json {
        println!("{kept} dead letter(s) kept, {evicted} evicted; newest {}:", letters.len());
    }
    for (id, letter) in letters {
        let mut entry = serde_json::json!({
            "id": id, "pipeline": letter.pipeline, "stage": letter.stage, "reason": letter.reason, "at": letter.at,
        });
        match &letter.content {
            DeadLetterContent::Message { topic, payload, received_at } => {
                entry["topic"] = topic.clone().into();
                entry["payload_hex"] = hex::encode(payload).into();
                entry["payload_text"] = String::from_utf8(payload.clone()).ok().into();
                entry["received_at"] = (*received_at).into();
            }
            DeadLetterContent::Batch { record, readings } => {
                entry["readings"] = (*readings).into();
                if let Ok(decoded) = encode::decode(record) {
                    let samples: Vec<_> = decoded
                        .batch
                        .iter()
                        .map(|s| serde_json::json!({"series": s.series.name, "ts": s.ts, "value": s.value}))
                        .collect();
                    entry["samples"] = samples.into();
                }
            }
        }
        if json {
            println!("{entry}");
        } else {
            println!("#{id} {} [{}] {}", letter.pipeline, letter.stage, letter.reason);
            match &letter.content {
                DeadLetterContent::Message { topic, payload, .. } => {
                    let preview = String::from_utf8(payload.clone()).unwrap_or_else(|_| hex::encode(payload));
                    println!("    message on {topic}: {}", preview.chars().take(120).collect::<String>());
                }
                DeadLetterContent::Batch { readings, .. } => println!("    batch of {readings} reading(s)"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `weir fleet rollback | floor raise`: gateways back on an earlier release (signed again above
//! their floors), and anti-rollback floors raised on purpose.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::ensure;
use weir_fleet::Scope;
use weir_host::fleet::rollout::Release;

use super::bucket::{self, Edit};
use super::documents::seconds_from_now;
use super::read_signing_key;
use super::rollout::{Keys, Selection};
use super::server::{Server, runtime};

/// `weir fleet rollback`.
#[derive(Debug, clap::Args)]
pub struct Rollback {
    /// The function.
    #[arg(long)]
    function: String,
    /// The published version to go back to; it is signed again with a counter above every one
    /// published, so no gateway's floor refuses it.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    selection: Selection,
    #[command(flatten)]
    keys: Keys,
    #[command(flatten)]
    server: Server,
}

impl Rollback {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let signers = self.keys.read()?;
        runtime()?.block_on(async {
            let central = self.server.connect().await?;
            let target = bucket::find_target(&central, &self.function, &self.to).await?;
            let entry =
                bucket::republish(&central, &self.function, &Release::of(&target.entry()), &signers.targets).await?;
            let (gateways, _) = self.selection.resolve(&central).await?;
            let mut out = std::io::stdout().lock();
            for gateway in gateways {
                let edit = Edit { set: BTreeMap::from([(self.function.clone(), entry.clone())]), ..Edit::default() };
                let scope = Scope::Gateway(gateway.clone());
                let written = bucket::write_next(&central, &scope, &signers.desired, signers.expires, edit).await?;
                writeln!(
                    out,
                    "{gateway}: revision {} runs {} {} (counter {})",
                    written.revision, self.function, self.to, entry.counter
                )?;
            }
            anyhow::Ok(ExitCode::SUCCESS)
        })
    }
}

/// `weir fleet floor`.
#[derive(Debug, clap::Args)]
pub struct Floor {
    #[command(subcommand)]
    command: FloorCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FloorCommand {
    /// Raise a function's anti-rollback floor: once the gateways commit the document, no version
    /// with a lower security counter is ever accepted again.
    Raise(FloorRaise),
}

#[derive(Debug, clap::Args)]
struct FloorRaise {
    /// The function.
    #[arg(long)]
    function: String,
    /// The lowest security counter accepted from now on.
    #[arg(long)]
    counter: u64,
    #[command(flatten)]
    selection: Selection,
    /// A desired key (repeat up to the desired role's threshold).
    #[arg(long = "key", value_name = "FILE.key", required = true)]
    keys: Vec<PathBuf>,
    /// How long the documents written are valid.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30days")]
    expires_in: Duration,
    #[command(flatten)]
    server: Server,
}

impl Floor {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let FloorCommand::Raise(raise) = self.command;
        let keys = raise.keys.iter().map(|p| read_signing_key(p)).collect::<anyhow::Result<Vec<_>>>()?;
        runtime()?.block_on(async {
            let central = raise.server.connect().await?;
            let (gateways, _) = raise.selection.resolve(&central).await?;
            let mut out = std::io::stdout().lock();
            for gateway in gateways {
                let scope = Scope::Gateway(gateway.clone());
                if let Some((document, _)) = bucket::current(&central, &scope).await?
                    && let Some(entry) = document.functions.get(&raise.function)
                {
                    ensure!(
                        entry.counter >= raise.counter,
                        "{gateway} is to run {} {} (counter {}): roll out a version with counter {} or more first",
                        raise.function,
                        entry.version,
                        entry.counter,
                        raise.counter
                    );
                }
                let edit =
                    Edit { floors: BTreeMap::from([(raise.function.clone(), raise.counter)]), ..Edit::default() };
                let written =
                    bucket::write_next(&central, &scope, &keys, seconds_from_now(raise.expires_in)?, edit).await?;
                writeln!(
                    out,
                    "{gateway}: revision {} raises the floor of {} to {}",
                    written.revision, raise.function, raise.counter
                )?;
            }
            anyhow::Ok(ExitCode::SUCCESS)
        })
    }
}

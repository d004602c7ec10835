//! `weir fleet`: the fleet manager's commands. Keys and signing work offline, on the machine
//! that holds the keys: `keygen` makes a key pair, `root` writes a root of trusted keys, `sign`
//! adds one holder's signature to a document (so a threshold of holders sign one after the
//! other, each on their own machine), `show` prints a document and, given the root, whether its
//! signatures satisfy its role.
//!
//! `publish`, `push`, `assign` and `status` talk to the fleet's NATS server.
//!
//! Documents are the signed envelopes of `weir-fleet`, in files of their canonical bytes.

mod bucket;
mod documents;
mod rollback;
mod rollout;
mod server;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use weir_fleet::{PublicKey, Signed, SigningKey};

/// `weir fleet` and its subcommands.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Make a signing key pair: <NAME>.key (the secret, mode 0600; keep it offline) and
    /// <NAME>.pub. Never overwrites a key.
    Keygen(documents::Keygen),
    /// Write a root: the trusted public keys, and for each role (root, targets, desired) which of
    /// them sign and how many must. Sign it with `weir fleet sign` by the root role's threshold.
    Root(documents::RootArgs),
    /// Add a signature to a signed document, in place. Prints what is being signed first.
    Sign(documents::SignArgs),
    /// Print a signed document; with --root, whether its signatures satisfy its role.
    Show(documents::ShowArgs),
    /// Sign a function's component as a target and store both on the fleet's server.
    Publish(server::Publish),
    /// Store a signed document (and a target's component) on the fleet's server as it is.
    Push(server::Push),
    /// Write the next revision of a gateway's or group's desired document: which version of
    /// each function it runs, floors, health gates.
    Assign(server::Assign),
    /// Each gateway's status: what it runs, its update's stage, outcomes, refusals; a gateway
    /// not heard from within its heartbeat shows as STALE. Then each rollout's waves.
    Status(server::Status),
    /// What bringing a release to gateways would change on each, and what they would refuse.
    Plan(rollout::Plan),
    /// Bring a release to gateways in waves (a canary first), stopping and reverting a wave
    /// whose failures reach the threshold. Its state lives on the server.
    Rollout(rollout::Start),
    /// Pause a rollout (from any terminal); `resume` carries it on.
    Pause(rollout::Pause),
    /// Carry on a paused rollout, or one whose command died.
    Resume(rollout::Resume),
    /// Stop a rollout and put its current wave back on what it ran before.
    Abort(rollout::Abort),
    /// Bring gateways back to an earlier published version (signed again above their floors).
    Rollback(rollback::Rollback),
    /// Anti-rollback floors.
    Floor(rollback::Floor),
}

impl Args {
    /// Runs the subcommand.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Keygen(args) => args.execute(),
            Command::Root(args) => args.execute(),
            Command::Sign(args) => args.execute(),
            Command::Show(args) => args.execute(),
            Command::Publish(args) => args.execute(),
            Command::Push(args) => args.execute(),
            Command::Assign(args) => args.execute(),
            Command::Status(args) => args.execute(),
            Command::Plan(args) => args.execute(),
            Command::Rollout(args) => args.execute(),
            Command::Pause(args) => args.execute(),
            Command::Resume(args) => args.execute(),
            Command::Abort(args) => args.execute(),
            Command::Rollback(args) => args.execute(),
            Command::Floor(args) => args.execute(),
        }
    }
}

/// Reads a secret key file.
fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the key {}", path.display()))?;
    SigningKey::from_text(&text).with_context(|| format!("{}", path.display()))
}

/// Reads a public key file.
fn read_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the key {}", path.display()))?;
    PublicKey::from_text(&text).with_context(|| format!("{}", path.display()))
}

/// Reads a signed document file.
fn read_signed(path: &PathBuf) -> anyhow::Result<Signed> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Signed::from_bytes(&bytes).with_context(|| format!("{}", path.display()))
}

/// Writes a signed document file through a temporary file, so a crash never leaves half of one.
fn write_signed(path: &Path, signed: &Signed) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut file, &signed.to_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

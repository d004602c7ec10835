//! `weir fleet keygen | root | sign | show`: keys and documents, offline.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use weir_fleet::{Desired, Kind, RoleKeys, Root, Signed, SigningKey, Target};

use super::{read_public_key, read_signed, read_signing_key, write_signed};

/// `weir fleet keygen`.
#[derive(Debug, clap::Args)]
pub struct Keygen {
    /// The key pair's name: writes <NAME>.key and <NAME>.pub.
    name: PathBuf,
}

impl Keygen {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let secret_path = self.name.with_extension("key");
        let public_path = self.name.with_extension("pub");
        for path in [&secret_path, &public_path] {
            ensure!(!path.exists(), "{} exists; a key is never overwritten", path.display());
        }
        let key = SigningKey::generate()?;
        let mut secret = std::fs::OpenOptions::new();
        std::os::unix::fs::OpenOptionsExt::mode(secret.write(true).create_new(true), 0o600);
        let mut file = secret.open(&secret_path).with_context(|| format!("cannot create {}", secret_path.display()))?;
        file.write_all(key.to_text().as_bytes())?;
        file.sync_all()?;
        std::fs::write(&public_path, key.public().to_text())
            .with_context(|| format!("cannot write {}", public_path.display()))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "key {}", key.public().id())?;
        writeln!(out, "  secret: {} (keep it offline)", secret_path.display())?;
        writeln!(out, "  public: {}", public_path.display())?;
        Ok(ExitCode::SUCCESS)
    }
}

/// `weir fleet root`.
#[derive(Debug, clap::Args)]
pub struct RootArgs {
    /// A public key that signs new roots (repeat for each).
    #[arg(long = "root-key", value_name = "FILE.pub", required = true)]
    root_keys: Vec<PathBuf>,
    /// How many root keys must sign a new root.
    #[arg(long, default_value_t = 1)]
    root_threshold: u32,
    /// A public key that signs targets, i.e. function versions (repeat for each).
    #[arg(long = "targets-key", value_name = "FILE.pub", required = true)]
    targets_keys: Vec<PathBuf>,
    /// How many targets keys must sign a target.
    #[arg(long, default_value_t = 1)]
    targets_threshold: u32,
    /// A public key that signs desired documents (repeat for each).
    #[arg(long = "desired-key", value_name = "FILE.pub", required = true)]
    desired_keys: Vec<PathBuf>,
    /// How many desired keys must sign a desired document.
    #[arg(long, default_value_t = 1)]
    desired_threshold: u32,
    /// The root's version: 1 for the first, one more than the trusted root's for a new one.
    #[arg(long, default_value_t = 1)]
    version: u64,
    /// How long the root is valid.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "365days")]
    expires_in: Duration,
    /// Where to write it (unsigned until `weir fleet sign`, unless --sign is given).
    #[arg(long, short)]
    out: PathBuf,
    /// Sign it with this secret key as well (repeat for each).
    #[arg(long = "sign", value_name = "FILE.key")]
    sign: Vec<PathBuf>,
}

impl RootArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut keys = BTreeMap::new();
        let mut role = |files: &[PathBuf], threshold: u32, name: &str| -> anyhow::Result<RoleKeys> {
            let mut ids = BTreeSet::new();
            for file in files {
                let key = read_public_key(file)?;
                ids.insert(key.id());
                keys.insert(key.id(), key);
            }
            ensure!(
                threshold >= 1 && threshold as usize <= ids.len(),
                "--{name}-threshold {threshold} cannot be met by {} distinct {name} key(s)",
                ids.len()
            );
            Ok(RoleKeys { keys: ids, threshold })
        };
        let root_role = role(&self.root_keys, self.root_threshold, "root")?;
        let targets = role(&self.targets_keys, self.targets_threshold, "targets")?;
        let desired = role(&self.desired_keys, self.desired_threshold, "desired")?;
        let root = Root {
            version: self.version,
            expires: seconds_from_now(self.expires_in)?,
            keys,
            root: root_role,
            targets,
            desired,
        };
        let signers = self.sign.iter().map(|path| read_signing_key(path)).collect::<anyhow::Result<Vec<_>>>()?;
        let signed = Signed::sign(&root, &signers.iter().collect::<Vec<_>>());
        write_signed(&self.out, &signed)?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{}: root version {}, {} signature(s) of the {} its root role needs",
            self.out.display(),
            root.version,
            signed.signatures.len(),
            root.root.threshold
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

/// `weir fleet sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The signed document to add a signature to (rewritten in place).
    file: PathBuf,
    /// The secret key to sign with.
    #[arg(long, value_name = "FILE.key")]
    key: PathBuf,
}

impl SignArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut signed = read_signed(&self.file)?;
        let key = read_signing_key(&self.key)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "signing {} with key {}:", self.file.display(), key.public().id())?;
        describe(&mut out, &signed)?;
        signed.add_signature(&key);
        write_signed(&self.file, &signed)?;
        writeln!(out, "{} signature(s) now", signed.signatures.len())?;
        Ok(ExitCode::SUCCESS)
    }
}

/// `weir fleet show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The signed document.
    file: PathBuf,
    /// A trusted root: check the document's signatures against it (for a root: the root a new
    /// one must be signed by).
    #[arg(long, value_name = "ROOT")]
    root: Option<PathBuf>,
}

impl ShowArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let signed = read_signed(&self.file)?;
        let mut out = std::io::stdout().lock();
        describe(&mut out, &signed)?;
        let Some(root_path) = self.root else { return Ok(ExitCode::SUCCESS) };
        let root = weir_fleet::TrustedRoot::install(&read_signed(&root_path)?)
            .with_context(|| format!("{} is not a usable root", root_path.display()))?;
        let verdict = match signed.kind {
            // The trusted root itself is judged by its own signatures; another root as a
            // successor of it.
            Kind::Root if signed.body == weir_fleet::envelope::canonical(root.root()) => {
                weir_fleet::TrustedRoot::install(&signed).map(drop)
            }
            Kind::Root => root.update(&signed).map(drop),
            Kind::Target => signed.verify::<Target>(&root).map(drop),
            Kind::Desired => signed.verify::<Desired>(&root).map(drop),
        };
        match verdict {
            Ok(()) => {
                writeln!(out, "signatures: enough under root version {}", root.root().version)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(refusal) => {
                writeln!(out, "refused under root version {}: {refusal}", root.root().version)?;
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Prints what a signed document says (decoded without trusting it: for the signer to read).
fn describe(out: &mut impl Write, signed: &Signed) -> anyhow::Result<()> {
    let signers: Vec<String> = signed.signatures.iter().map(|s| s.key.to_string()[..16].to_owned()).collect();
    match signed.kind {
        Kind::Root => {
            let root: Root = minicbor::decode(&signed.body).context("the root does not decode")?;
            writeln!(out, "root version {}, expires {}", root.version, when(root.expires))?;
            for (name, role) in [("root", &root.root), ("targets", &root.targets), ("desired", &root.desired)] {
                let ids: Vec<String> = role.keys.iter().map(|id| id.to_string()[..16].to_owned()).collect();
                writeln!(out, "  {name}: {} of [{}]", role.threshold, ids.join(", "))?;
            }
        }
        Kind::Target => {
            let target: Target = minicbor::decode(&signed.body).context("the target does not decode")?;
            writeln!(
                out,
                "target {} {} ({} world): {} bytes, sha256 {}, security counter {}, needs weir {}",
                target.function,
                target.version,
                target.world.name(),
                target.length,
                hex::encode(target.sha256),
                target.counter,
                target.min_weir
            )?;
        }
        Kind::Desired => {
            let desired: Desired = minicbor::decode(&signed.body).context("the desired document does not decode")?;
            writeln!(
                out,
                "desired for {}, revision {}, expires {}",
                desired.scope,
                desired.revision,
                when(desired.expires)
            )?;
            for (function, entry) in &desired.functions {
                writeln!(
                    out,
                    "  {function} {} (counter {}, sha256 {})",
                    entry.version,
                    entry.counter,
                    hex::encode(&entry.sha256[..8])
                )?;
            }
            for (function, floor) in &desired.floors {
                writeln!(out, "  floor {function} ≥ {floor}")?;
            }
        }
    }
    if signers.is_empty() {
        writeln!(out, "signatures: none")?;
    } else {
        writeln!(out, "signatures by: {}", signers.join(", "))?;
    }
    Ok(())
}

/// Seconds since the epoch, `after` from now.
pub(super) fn seconds_from_now(after: Duration) -> anyhow::Result<u64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?;
    let Some(at) = now.checked_add(after) else { bail!("{after:?} from now is beyond any clock") };
    Ok(at.as_secs())
}

/// A time in seconds since the epoch, as RFC 3339.
pub(super) fn when(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string()
}

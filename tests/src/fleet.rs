//! A fleet manager's side for the tests: keys and a root made with the real `weir fleet`
//! commands in a temporary directory, releases published with `weir fleet publish`, and direct
//! access to the fleet's buckets for what an attacker (or a test) writes by hand.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use async_nats::jetstream;
use weir_fleet::{Desired, FunctionTarget, HealthGates, Scope, Signed, SigningKey, Target};
use weir_host::fleet::status::GatewayStatus;

use crate::{NatsServer, PATIENCE, functions_dir, weir};

/// Keys (`root`, `targets`, `desired`), a root signed by `root`, and the server.
#[derive(Debug)]
pub struct Fleet {
    dir: tempfile::TempDir,
    server: String,
    client: async_nats::Client,
}

impl Fleet {
    /// Makes the keys and the root (root, targets and desired roles, one key each) against
    /// `nats`.
    pub async fn new(nats: &NatsServer) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name).to_str().expect("UTF-8 temporary path").to_owned();
        for name in ["root", "targets", "desired"] {
            succeed(weir(&["fleet", "keygen", &path(name)])?)?;
        }
        succeed(weir(&[
            "fleet",
            "root",
            "--root-key",
            &path("root.pub"),
            "--targets-key",
            &path("targets.pub"),
            "--desired-key",
            &path("desired.pub"),
            "--out",
            &path("root.weir"),
            "--sign",
            &path("root.key"),
        ])?)?;
        Ok(Fleet { dir, server: nats.url(), client: nats.client().await? })
    }

    /// The server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The root file a gateway is given.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root.weir")
    }

    /// A key file of the fleet (`desired.key`, `targets.pub`, …).
    pub fn key_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A secret key of the fleet, read.
    pub fn key(&self, name: &str) -> Result<SigningKey> {
        Ok(SigningKey::from_text(&std::fs::read_to_string(self.key_file(&format!("{name}.key")))?)?)
    }

    /// `weir fleet <args>` against the server; fails on a non-zero exit.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["fleet"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", &self.server]);
        succeed(weir(&all)?)
    }

    /// `weir fleet <args> --server <url>` run to its end (whatever its exit status).
    pub fn command_line(&self, args: &[String]) -> Result<std::process::Output> {
        let mut all: Vec<&str> = vec!["fleet"];
        all.extend(args.iter().map(String::as_str));
        all.extend_from_slice(&["--server", &self.server]);
        weir(&all)
    }

    /// Publishes the built component `file` (in the functions directory) as `function`
    /// `version` with security `counter`; returns its signed target.
    pub fn publish(&self, file: &str, function: &str, version: &str, counter: u64) -> Result<Target> {
        let component = functions_dir().join(file);
        let key = self.key_file("targets.key");
        self.command(&[
            "publish",
            component.to_str().context("UTF-8 path")?,
            "--function",
            function,
            "--version",
            version,
            "--counter",
            &counter.to_string(),
            "--key",
            key.to_str().context("UTF-8 path")?,
        ])?;
        Ok(target_of(file, function, version, counter)?.0)
    }

    /// Signs `file` as `function` `version` with `counter` and stores target and component
    /// directly, as the targets key's holder could even where `weir fleet publish` refuses (a
    /// counter below one already published).
    pub async fn publish_unchecked(&self, file: &str, function: &str, version: &str, counter: u64) -> Result<Target> {
        let (target, bytes) = target_of(file, function, version, counter)?;
        let signed = Signed::sign(&target, &[&self.key("targets")?]);
        self.replace_artifact(&target.sha256, &bytes).await?;
        let key = format!("target.{function}.{counter}.{}", hex::encode(target.sha256));
        self.put(&key, signed.to_bytes()).await?;
        Ok(target)
    }

    /// `weir fleet assign --gateway <gateway>` with `args` (`--function unit-convert=1.1.0`, …)
    /// signed with the desired key.
    pub fn assign(&self, gateway: &str, args: &[&str]) -> Result<String> {
        let key = self.key_file("desired.key");
        let mut all = vec!["assign", "--gateway", gateway, "--key", key.to_str().context("UTF-8 path")?];
        all.extend_from_slice(args);
        self.command(&all)
    }

    /// The fleet's documents bucket.
    pub async fn documents(&self) -> Result<jetstream::kv::Store> {
        Ok(jetstream::new(self.client.clone()).get_key_value("weir-fleet").await?)
    }

    /// The fleet's artifacts.
    pub async fn artifacts(&self) -> Result<jetstream::object_store::ObjectStore> {
        Ok(jetstream::new(self.client.clone()).get_object_store("weir-artifacts").await?)
    }

    /// Writes `bytes` under `key` of the documents bucket, as anyone with write access could.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.documents().await?.put(key, bytes.into()).await?;
        Ok(())
    }

    /// Replaces the stored artifact with `sha256` by `bytes`, as anyone with write access to the
    /// object store could.
    pub async fn replace_artifact(&self, sha256: &[u8; 32], bytes: &[u8]) -> Result<()> {
        let mut reader = bytes;
        self.artifacts().await?.put(hex::encode(sha256).as_str(), &mut reader).await?;
        Ok(())
    }

    /// Deletes the stored artifact with `sha256`, as if its upload had not finished yet.
    pub async fn remove_artifact(&self, sha256: &[u8; 32]) -> Result<()> {
        self.artifacts().await?.delete(hex::encode(sha256).as_str()).await?;
        Ok(())
    }

    /// `gateway`'s last status, if it wrote one.
    pub async fn status(&self, gateway: &str) -> Result<Option<GatewayStatus>> {
        let bucket = jetstream::new(self.client.clone()).get_key_value("weir-fleet-status").await?;
        match bucket.get(gateway).await? {
            Some(bytes) => Ok(Some(GatewayStatus::from_json(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Waits until `gateway`'s status satisfies `ready` (up to [`PATIENCE`]); `what` names it in
    /// the failure, with the last status seen.
    pub async fn wait_for(
        &self,
        gateway: &str,
        what: &str,
        ready: impl Fn(&GatewayStatus) -> bool,
    ) -> Result<GatewayStatus> {
        self.wait_for_within(gateway, what, PATIENCE, ready).await
    }

    /// [`Self::wait_for`], up to `patience`.
    pub async fn wait_for_within(
        &self,
        gateway: &str,
        what: &str,
        patience: Duration,
        ready: impl Fn(&GatewayStatus) -> bool,
    ) -> Result<GatewayStatus> {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < patience {
            if let Ok(Some(status)) = self.status(gateway).await {
                if ready(&status) {
                    return Ok(status);
                }
                last = Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{gateway}: {what} did not happen within {patience:?}; last status: {last:#?}")
    }
}

/// The target of the built component `file` as `function` `version` with `counter` (an operator),
/// and the component's bytes.
fn target_of(file: &str, function: &str, version: &str, counter: u64) -> Result<(Target, Vec<u8>)> {
    let bytes = std::fs::read(functions_dir().join(file))?;
    let target = Target {
        function: function.to_owned(),
        version: version.to_owned(),
        sha256: <sha2::Sha256 as sha2::Digest>::digest(&bytes).into(),
        length: bytes.len() as u64,
        world: weir_fleet::World::Operator,
        counter,
        min_weir: env!("CARGO_PKG_VERSION").to_owned(),
    };
    Ok((target, bytes))
}

/// A desired document for gateway `id` running `targets`, expiring in an hour.
pub fn desired(id: &str, revision: u64, targets: &[&Target], health: HealthGates) -> Desired {
    Desired {
        scope: Scope::Gateway(id.to_owned()),
        revision,
        expires: now() + 3600,
        functions: targets.iter().map(|t| (t.function.clone(), t.entry())).collect(),
        floors: Default::default(),
        health,
        rollout: None,
    }
}

/// `entry` for `function` in a desired document.
pub fn with_function(mut document: Desired, function: &str, entry: FunctionTarget) -> Desired {
    document.functions.insert(function.to_owned(), entry);
    document
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `document` signed by `keys`, as stored.
pub fn signed(document: &Desired, keys: &[&SigningKey]) -> Vec<u8> {
    Signed::sign(document, keys).to_bytes()
}

/// The compiled-artifact cache of a data directory: whether anything was ever compiled from the
/// component with `sha256`.
pub fn compiled(data_dir: &Path, sha256: &[u8; 32]) -> bool {
    let prefix = hex::encode(sha256);
    std::fs::read_dir(data_dir.join("compiled"))
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&prefix)))
        .unwrap_or(false)
}

fn succeed(output: std::process::Output) -> Result<String> {
    ensure!(
        output.status.success(),
        "weir failed: {}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    Ok(String::from_utf8(output.stdout)?)
}

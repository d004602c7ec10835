//! The gateway's copies of the fleet's artifacts: `<data_dir>/fleet/artifacts/<sha256 hex>.wasm`,
//! each written only after its signed length and digest checked while it streamed in, and
//! checked again whenever it is read back to be compiled — a file changed on disk is refused,
//! not run. Compiling then goes through the sandbox's compiled-artifact cache and its own
//! integrity check, like any component.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use weir_fleet::{ArtifactCheck, FunctionTarget, Refusal};

use super::central::{Central, FetchError};

/// The directory under the data directory.
const DIR: &str = "fleet/artifacts";

/// The artifacts on this gateway.
#[derive(Clone, Debug)]
pub struct LocalArtifacts {
    dir: PathBuf,
}

/// Why a kept artifact cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// It is not there.
    #[error("{} is missing", .0.display())]
    Missing(PathBuf),
    /// It cannot be read.
    #[error("cannot read {}: {error}", .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// Its bytes are not the signed ones (changed or damaged on disk).
    #[error("{}: {refusal}", .path.display())]
    Refused { path: PathBuf, refusal: Refusal },
}

impl LocalArtifacts {
    /// The artifacts kept under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        LocalArtifacts { dir: data_dir.join(DIR) }
    }

    /// Where the artifact with this digest is kept.
    pub fn path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.wasm", hex::encode(sha256)))
    }

    /// The kept artifact `entry` names for `function`, checked against its signed length and
    /// digest.
    pub fn read(&self, function: &str, entry: &FunctionTarget) -> Result<Vec<u8>, LocalError> {
        let path = self.path(&entry.sha256);
        let file = std::fs::File::open(&path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => LocalError::Missing(path.clone()),
            _ => LocalError::Read { path: path.clone(), error },
        })?;
        // One byte more than signed is enough to tell that it is too long.
        let mut bytes = Vec::new();
        file.take(entry.length.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|error| LocalError::Read { path: path.clone(), error })?;
        let mut check = ArtifactCheck::of_entry(function, entry);
        check.update(&bytes).and_then(|()| check.finish()).map_err(|refusal| LocalError::Refused { path, refusal })?;
        Ok(bytes)
    }

    /// Fetches the artifact `entry` names from the object store into this directory; the file
    /// appears under its name only once every byte passed the signed check.
    pub async fn fetch(&self, central: &Central, function: &str, entry: &FunctionTarget) -> Result<(), FetchError> {
        let io = |doing: &str, e: std::io::Error| FetchError::Transport(format!("{doing} {}: {e}", self.dir.display()));
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| io("cannot create", e))?;
        let path = self.path(&entry.sha256);
        let partial = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial).await.map_err(|e| io("cannot write in", e))?;
        let fetched = central.fetch_artifact(&entry.sha256, ArtifactCheck::of_entry(function, entry), &mut file).await;
        let kept = match fetched {
            Ok(()) => file.sync_all().await.map_err(|e| io("cannot write in", e)),
            Err(e) => Err(e),
        };
        drop(file);
        if let Err(e) = kept {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, &path).await.map_err(|e| io("cannot write in", e))?;
        if let Ok(dir) = tokio::fs::File::open(&self.dir).await {
            let _ = dir.sync_all().await;
        }
        Ok(())
    }

    /// Removes every kept artifact (and leftover partial download) whose digest is not in `keep`.
    pub fn keep_only(&self, keep: &BTreeSet<[u8; 32]>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let kept: BTreeSet<String> = keep.iter().map(|d| format!("{}.wasm", hex::encode(d))).collect();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !kept.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

//! The compiled-artifact cache: native code this gateway compiled, kept in `<data_dir>/compiled/`
//! and checked before it is trusted again.
//!
//! Deserialising an artifact runs its native code with no further checks, so a file in the
//! cache directory is used only if it proves it was written by this gateway, for this name.
//! Each artifact file is
//!
//! ```text
//! "weir-compiled-v1"   16 bytes, the format
//! tag                  32 bytes, HMAC-SHA256 under the cache key of
//!                      u64 LE length of the name ‖ the name ‖ the artifact
//! artifact             what wasmtime's `Component::serialize` returned
//! ```
//!
//! and the name (`<SHA-256 of the component>-<engine compatibility hash>`) is the file's stem.
//! The key is 32 bytes from the operating system's random source, kept in
//! `<data_dir>/compiled/cache.key`, created on first use with mode 0600 and published with a
//! hard link, so a concurrent start reads either no key or the whole key.
//!
//! **Invariant:** [`ArtifactCache::load`] returns only bytes whose tag verified (in constant
//! time) under the key for the name asked for; the caller deserialises those bytes, never the
//! file again, so the file cannot be swapped between the check and the use. A file that does not
//! verify — planted, copied from another gateway, written under another name, truncated,
//! damaged, in the format of an older weir — is reported as a warning and removed, and the
//! caller compiles the component again. A key file that is not a regular 32-byte file readable
//! by its owner alone is replaced by a new key (every artifact is then compiled once more).
//! If no key can be read or written, nothing is cached: every start compiles every function.
//!
//! Whoever can read the key can forge artifacts; the key is as private as the user weir runs as.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;

/// The first bytes of every artifact file.
const MAGIC: &[u8; 16] = b"weir-compiled-v1";
/// Length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// Length of the cache key.
const KEY_LEN: usize = 32;
/// The key's file name in the cache directory.
const KEY_FILE: &str = "cache.key";

/// Why the cache key cannot be used or made.
#[derive(Debug, thiserror::Error)]
pub enum CacheKeyError {
    /// Reading, writing or linking the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is not a regular file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// The key file has the wrong length.
    #[error("{path} holds {len} bytes, not {KEY_LEN}")]
    WrongSize {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// Users other than the owner may access the key file.
    #[error("{path} has mode {mode:o}: readable or writable by others than its owner")]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The operating system's random source failed.
    #[error("no random bytes for a new key: {reason}")]
    Random {
        /// Why.
        reason: String,
    },
}

/// Why an artifact could not be cached.
#[derive(Debug, thiserror::Error)]
pub enum CacheWriteError {
    /// Writing or renaming the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why an artifact file was not used.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("it is shorter than the header")]
    Truncated,
    #[error("it does not start with the weir artifact header")]
    NoHeader,
    #[error("its tag does not verify: not written by this gateway for this component, or damaged")]
    BadTag,
}

/// The secret the artifacts' tags are made with.
#[derive(Clone)]
struct CacheKey([u8; KEY_LEN]);

impl CacheKey {
    fn tag(&self, name: &str, artifact: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name.as_bytes());
        mac.update(artifact);
        mac
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

/// `<data_dir>/compiled/`: artifacts tagged under this gateway's key.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    /// `None` when no key could be read or made: nothing is read from or written to the cache.
    key: Option<CacheKey>,
    /// Whether artifacts are added (and rejected ones removed); `weir check` only reads.
    writable: bool,
}

impl ArtifactCache {
    /// Opens (creating, mode 0700) the cache directory and reads or creates its key. Only a
    /// directory that cannot be created is an error; a key that cannot be had leaves the cache
    /// off, with a warning.
    pub fn open(dir: &Path) -> Result<Self, std::io::Error> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let path = dir.join(KEY_FILE);
        let key = match read_key(&path) {
            Ok(key) => Ok(key),
            Err(CacheKeyError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => create_key(&path),
            Err(problem) => {
                tracing::warn!(stage = "sandbox", error = %problem, "compiled-function cache key unusable, replacing it; every function is compiled again");
                replace_key(&path)
            }
        };
        let key = key
            .inspect_err(|e| {
                tracing::warn!(stage = "sandbox", error = %e, "no compiled-function cache key: every function is compiled at every start");
            })
            .ok();
        Ok(Self { dir: dir.to_owned(), key, writable: true })
    }

    /// The cache in `dir` for reading only: its key if there is a usable one (none is made or
    /// replaced), nothing written or removed.
    pub fn open_read_only(dir: &Path) -> Self {
        Self { dir: dir.to_owned(), key: read_key(&dir.join(KEY_FILE)).ok(), writable: false }
    }

    /// No cache: every function is compiled.
    pub fn off() -> Self {
        Self { dir: PathBuf::new(), key: None, writable: false }
    }

    /// The file that holds the artifact named `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.cwasm"))
    }

    /// The artifact cached as `name`, if there is one and its tag verifies. A file that does not
    /// verify is removed, with a warning.
    pub fn load(&self, name: &str) -> Option<Vec<u8>> {
        let key = self.key.as_ref()?;
        let path = self.path(name);
        let mut bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(stage = "sandbox", file = %path.display(), error = %e, "cannot read the compiled function, compiling again");
                return None;
            }
        };
        match verify(key, name, &bytes) {
            Ok(()) => {
                bytes.drain(..MAGIC.len() + TAG_LEN);
                Some(bytes)
            }
            Err(rejection) => {
                tracing::warn!(stage = "sandbox", file = %path.display(), reason = %rejection, "compiled function rejected, compiling again");
                if self.writable {
                    self.remove(&path);
                }
                None
            }
        }
    }

    /// Removes the artifact file `path` (one that failed verification or deserialisation).
    pub fn remove(&self, path: &Path) {
        if !self.writable {
            return;
        }
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(stage = "sandbox", file = %path.display(), error = %e, "cannot remove the rejected compiled function");
        }
    }

    /// Caches `artifact` as `name`, tagged; does nothing when the cache is off (no key). The file
    /// appears whole or not at all (temporary file, then rename).
    pub fn store(&self, name: &str, artifact: &[u8]) -> Result<(), CacheWriteError> {
        let Some(key) = self.key.as_ref().filter(|_| self.writable) else { return Ok(()) };
        let path = self.path(name);
        let tag = key.tag(name, artifact).finalize().into_bytes();
        let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
        let io = |source| CacheWriteError::Io { path: temporary.clone(), source };
        let mut file = create_private(&temporary).map_err(io)?;
        file.write_all(MAGIC)
            .and_then(|()| file.write_all(&tag))
            .and_then(|()| file.write_all(artifact))
            .map_err(io)?;
        drop(file);
        // Rename is atomic: a concurrent reader sees either no file or the whole file.
        std::fs::rename(&temporary, &path).map_err(|source| CacheWriteError::Io { path, source })
    }
}

fn verify(key: &CacheKey, name: &str, bytes: &[u8]) -> Result<(), Rejection> {
    if bytes.len() < MAGIC.len() + TAG_LEN {
        return Err(Rejection::Truncated);
    }
    let (magic, rest) = bytes.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(Rejection::NoHeader);
    }
    let (tag, artifact) = rest.split_at(TAG_LEN);
    key.tag(name, artifact).verify_slice(tag).map_err(|_| Rejection::BadTag)
}

/// Creates `path` anew (removing what was there, never following a link) with mode 0600.
fn create_private(path: &Path) -> Result<File, std::io::Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

fn read_key(path: &Path) -> Result<CacheKey, CacheKeyError> {
    let io = |source| CacheKeyError::Io { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    if !metadata.is_file() {
        return Err(CacheKeyError::NotAFile { path: path.to_owned() });
    }
    let mode = metadata.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CacheKeyError::NotPrivate { path: path.to_owned(), mode });
    }
    if metadata.len() != KEY_LEN as u64 {
        return Err(CacheKeyError::WrongSize { path: path.to_owned(), len: metadata.len() });
    }
    let mut key = [0; KEY_LEN];
    file.read_exact(&mut key).map_err(io)?;
    Ok(CacheKey(key))
}

/// Writes a new key to a private temporary file next to `path`, synced, and returns it.
fn write_new_key(path: &Path) -> Result<(CacheKey, PathBuf), CacheKeyError> {
    let mut key = [0; KEY_LEN];
    rand::rngs::OsRng.try_fill_bytes(&mut key).map_err(|e| CacheKeyError::Random { reason: e.to_string() })?;
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let io = |source| CacheKeyError::Io { path: temporary.clone(), source };
    let mut file = create_private(&temporary).map_err(io)?;
    file.write_all(&key).and_then(|()| file.sync_all()).map_err(io)?;
    Ok((CacheKey(key), temporary))
}

/// Makes the first key. A hard link never replaces an existing file, so of two processes
/// starting at once one key wins and both use it. Where the file system has no hard links, the
/// key is renamed into place instead (the state store's lock already keeps a second gateway out
/// of the data directory).
fn create_key(path: &Path) -> Result<CacheKey, CacheKeyError> {
    let (key, temporary) = write_new_key(path)?;
    match std::fs::hard_link(&temporary, path) {
        Ok(()) => {
            let _ = std::fs::remove_file(&temporary);
            Ok(key)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&temporary);
            read_key(path)
        }
        Err(_) => {
            std::fs::rename(&temporary, path).map_err(|source| CacheKeyError::Io { path: path.to_owned(), source })?;
            Ok(key)
        }
    }
}

/// Replaces an unusable key with a new one.
fn replace_key(path: &Path) -> Result<CacheKey, CacheKeyError> {
    let (key, temporary) = write_new_key(path)?;
    std::fs::rename(&temporary, path).map_err(|source| CacheKeyError::Io { path: path.to_owned(), source })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const NAME: &str = "00aa-0011";
    const ARTIFACT: &[u8] = b"native code, or so it claims";

    fn cache(dir: &Path) -> ArtifactCache {
        let cache = ArtifactCache::open(dir).expect("opens");
        assert!(cache.key.is_some(), "has a key");
        cache
    }

    #[test]
    fn a_stored_artifact_loads_back_as_it_was() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = cache(dir.path());
        assert_eq!(cache.load(NAME), None, "nothing cached yet");
        cache.store(NAME, ARTIFACT).expect("stores");
        assert_eq!(cache.load(NAME).as_deref(), Some(ARTIFACT));
        // The key persists: a second open (the next start) trusts the same file.
        assert_eq!(ArtifactCache::open(dir.path()).expect("opens").load(NAME).as_deref(), Some(ARTIFACT));
    }

    #[test]
    fn key_and_artifacts_are_private_to_their_owner() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = cache(&dir.path().join("compiled"));
        cache.store(NAME, ARTIFACT).expect("stores");
        let mode = |path: &Path| std::fs::metadata(path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("compiled")), 0o700);
        assert_eq!(mode(&dir.path().join("compiled").join(KEY_FILE)), 0o600);
        assert_eq!(mode(&cache.path(NAME)), 0o600);
        assert_eq!(std::fs::metadata(dir.path().join("compiled").join(KEY_FILE)).expect("exists").len(), 32);
    }

    #[test]
    fn damaged_artifacts_are_rejected_and_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = cache(dir.path());
        cache.store(NAME, ARTIFACT).expect("stores");
        let good = std::fs::read(cache.path(NAME)).expect("reads");
        let mut flipped = good.clone();
        flipped[MAGIC.len() + TAG_LEN + 3] ^= 0x01;
        let mut bad_tag = good.clone();
        bad_tag[MAGIC.len()] ^= 0x80;
        let mut bad_magic = good.clone();
        bad_magic[0] = b'W';
        let mut longer = good.clone();
        longer.push(0);
        for damaged in [
            flipped,
            bad_tag,
            bad_magic,
            longer,
            good[..good.len() - 1].to_vec(),
            good[..MAGIC.len() + TAG_LEN - 1].to_vec(),
            Vec::new(),
            // A raw wasmtime artifact, as older weir wrote them.
            ARTIFACT.to_vec(),
        ] {
            std::fs::write(cache.path(NAME), &damaged).expect("writes");
            assert_eq!(cache.load(NAME), None, "{damaged:?}");
            assert!(!cache.path(NAME).exists(), "a rejected file is removed");
        }
    }

    #[test]
    fn an_artifact_moved_to_another_name_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = cache(dir.path());
        cache.store("bb11-0011", b"other function").expect("stores");
        std::fs::copy(cache.path("bb11-0011"), cache.path(NAME)).expect("copies");
        assert_eq!(cache.load(NAME), None);
        assert_eq!(cache.load("bb11-0011").as_deref(), Some(&b"other function"[..]));
    }

    #[test]
    fn an_artifact_from_another_gateway_is_rejected() {
        let (here, there) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
        let (here_cache, there_cache) = (cache(here.path()), cache(there.path()));
        there_cache.store(NAME, ARTIFACT).expect("stores");
        std::fs::copy(there_cache.path(NAME), here_cache.path(NAME)).expect("copies");
        assert_eq!(here_cache.load(NAME), None);
    }

    #[test]
    fn an_unusable_key_is_replaced_and_invalidates_every_artifact() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_path = dir.path().join(KEY_FILE);
        type Spoil = fn(&Path);
        let spoilers: [(&str, Spoil); 4] = [
            ("removed", |p| std::fs::remove_file(p).expect("removes")),
            ("too short", |p| std::fs::write(p, [7; 31]).expect("writes")),
            ("too long", |p| std::fs::write(p, [7; 33]).expect("writes")),
            ("readable by others", |p| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            }),
        ];
        for (what, spoil) in spoilers {
            cache(dir.path()).store(NAME, ARTIFACT).expect("stores");
            spoil(&key_path);
            let reopened = cache(dir.path());
            assert_eq!(reopened.load(NAME), None, "{what}: the old key's artifacts do not verify");
            assert_eq!(std::fs::metadata(&key_path).expect("a new key").len(), 32, "{what}");
            reopened.store(NAME, ARTIFACT).expect("stores");
            assert_eq!(cache(dir.path()).load(NAME).as_deref(), Some(ARTIFACT), "{what}: the new key persists");
        }
    }

    #[test]
    fn without_a_key_nothing_is_cached() {
        let dir = tempfile::tempdir().expect("temp dir");
        cache(dir.path()).store(NAME, ARTIFACT).expect("stores");
        // A directory in the key's place cannot be renamed over: no key, so the cache is off.
        let key_path = dir.path().join(KEY_FILE);
        std::fs::remove_file(&key_path).expect("removes");
        std::fs::create_dir(&key_path).expect("mkdir");
        std::fs::write(key_path.join("x"), b"keeps the directory non-empty").expect("writes");
        let cache = ArtifactCache::open(dir.path()).expect("opens");
        assert!(cache.key.is_none());
        assert_eq!(cache.load(NAME), None);
        let before = std::fs::read(cache.path(NAME)).expect("the old artifact stays");
        cache.store(NAME, b"new").expect("does nothing");
        assert_eq!(std::fs::read(cache.path(NAME)).expect("reads"), before, "nothing written");
    }
}

//! The compiled-artifact cache: native code this gateway compiled, kept in `<data_dir>/compiled/`
//! and checked before it is trusted again.
//!
//! Deserialising an artifact runs its native code with no further checks, so a file in the
//! cache directory is used only if it proves it was written by this gateway, for this name.
//! Each artifact is two files named after it (`<SHA-256 of the component>-<engine compatibility
//! hash>`):
//!
//! ```text
//! <name>.cwasm         what wasmtime's `Component::serialize` returned, as it returned it
//! <name>.tag           "weir-compiled-v2" (16 bytes) ‖ HMAC-SHA256 (32 bytes) under the
//!                      cache key of  u64 LE length of the name ‖ the name ‖ the artifact
//! ```
//!
//! The key is 32 bytes from the operating system's random source, kept in
//! `<data_dir>/compiled/cache.key`, created on first use with mode 0600 and published with a
//! hard link, so a concurrent start reads either no key or the whole key.
//!
//! **Used in place, or copied.** A verified artifact is mapped from its file by wasmtime, so
//! only the pages a function runs take memory, and they are clean pages the kernel may drop —
//! but only when nobody but this user can change the file between the check and the use: the
//! artifact is a regular file opened without following links, with one link, owned by the user
//! weir runs as and writable by nobody else, in a directory with the same two properties; its
//! tag is checked over the bytes read through that open file, and wasmtime maps that very file
//! (`/proc/self/fd/<n>`), not the path again. Whoever could still change it — this user or root
//! — can read the key and forge an artifact anyway. Otherwise (another owner, group- or
//! world-writable, no `/proc`) the verified bytes are read into memory and wasmtime copies them.
//!
//! **Invariant:** [`ArtifactCache::load`] returns only an artifact whose tag verified (in
//! constant time) under the key for the name asked for: as bytes in memory, or as the open file
//! they were read from when only this user can change it. A file that does not verify —
//! planted, copied from another gateway, written under another name, truncated, damaged, in the
//! format of an older weir, a link — is reported as a warning and removed with its tag, and the
//! caller compiles the component again. A key file that is not a regular 32-byte file readable
//! by its owner alone is replaced by a new key (every artifact is then compiled once more). If no
//! key can be read or written, nothing is cached: every start compiles every function.
//!
//! Whoever can read the key can forge artifacts; the key is as private as the user weir runs as.

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;

/// The first bytes of every tag file.
const MAGIC: &[u8; 16] = b"weir-compiled-v2";
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

/// Why an artifact was not used.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("its tag file is not a weir artifact tag")]
    NoTag,
    #[error("it is not a regular file")]
    NotAFile,
    #[error("its tag does not verify: not written by this gateway for this component, or damaged")]
    BadTag,
    #[error("it cannot be read: {0}")]
    Unreadable(std::io::Error),
}

/// A verified artifact, ready to deserialise.
#[derive(Debug)]
pub enum Artifact {
    /// The open file whose bytes verified, which only this user can change: deserialise the
    /// file [`Artifact::path_in_place`] names, never the cache's path again.
    InPlace(File),
    /// The verified bytes, read into memory (others could change the file).
    Copied(Vec<u8>),
}

impl Artifact {
    /// A path that opens the very file `file` (`/proc/self/fd/<n>`), valid while it is open.
    pub fn path_in_place(file: &File) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
    }
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

    /// The file that holds the tag of the artifact named `name`.
    fn tag_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.tag"))
    }

    /// The artifact cached as `name`, if there is one and its tag verifies; in place when only
    /// this user can change its file. A file that does not verify is removed, with a warning.
    pub fn load(&self, name: &str) -> Option<Artifact> {
        let key = self.key.as_ref()?;
        let path = self.path(name);
        let tag = match std::fs::read(self.tag_path(name)) {
            Ok(tag) => tag,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(stage = "sandbox", file = %path.display(), error = %e, "cannot read the compiled function's tag, compiling again");
                return None;
            }
        };
        match self.verified(key, name, &path, &tag) {
            Ok(artifact) => Some(artifact),
            Err(Rejection::Unreadable(e)) if e.kind() == ErrorKind::NotFound => None,
            Err(rejection) => {
                tracing::warn!(stage = "sandbox", file = %path.display(), reason = %rejection, "compiled function rejected, compiling again");
                self.remove(&path);
                None
            }
        }
    }

    /// Opens the artifact without following links, checks its tag over the bytes read through
    /// that open file, and keeps the file when only this user can change it.
    fn verified(&self, key: &CacheKey, name: &str, path: &Path, tag: &[u8]) -> Result<Artifact, Rejection> {
        let tag = tag.strip_prefix(MAGIC.as_slice()).filter(|t| t.len() == TAG_LEN).ok_or(Rejection::NoTag)?;
        let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) { Rejection::NotAFile } else { Rejection::Unreadable(e) }
        })?;
        let metadata = file.metadata().map_err(Rejection::Unreadable)?;
        if !metadata.is_file() {
            return Err(Rejection::NotAFile);
        }
        let in_place = self.only_this_user_can_change(&metadata);
        let mut mac = key.tag(name, &[]);
        let mut copy = Vec::new();
        let mut chunk = vec![0; 64 << 10];
        loop {
            let read = file.read(&mut chunk).map_err(Rejection::Unreadable)?;
            if read == 0 {
                break;
            }
            mac.update(&chunk[..read]);
            if !in_place {
                copy.extend_from_slice(&chunk[..read]);
            }
        }
        mac.verify_slice(tag).map_err(|_| Rejection::BadTag)?;
        Ok(if in_place { Artifact::InPlace(file) } else { Artifact::Copied(copy) })
    }

    /// Whether the artifact file (`metadata`, of the open file) and the cache directory can be
    /// changed by nobody but the user weir runs as (and root), and an open file can be named
    /// through `/proc/self/fd`.
    fn only_this_user_can_change(&self, metadata: &Metadata) -> bool {
        let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else { return false };
        let private = |m: &Metadata| m.uid() == me && m.mode() & 0o022 == 0;
        let directory = std::fs::symlink_metadata(&self.dir).is_ok_and(|d| d.is_dir() && private(&d));
        directory && private(metadata) && metadata.nlink() == 1
    }

    /// Removes the artifact file `path` and its tag (one that failed verification or
    /// deserialisation).
    pub fn remove(&self, path: &Path) {
        if !self.writable {
            return;
        }
        for file in [path.to_owned(), path.with_extension("tag")] {
            if let Err(e) = std::fs::remove_file(&file)
                && e.kind() != ErrorKind::NotFound
            {
                tracing::warn!(stage = "sandbox", file = %file.display(), error = %e, "cannot remove the rejected compiled function");
            }
        }
    }

    /// Caches `artifact` as `name`, tagged; does nothing when the cache is off (no key). Each
    /// file appears whole or not at all (temporary file, then rename); the tag goes first and
    /// comes back last, so a crash in between leaves an artifact without a tag (or with a tag
    /// for other bytes), which is compiled again.
    pub fn store(&self, name: &str, artifact: &[u8]) -> Result<(), CacheWriteError> {
        let Some(key) = self.key.as_ref().filter(|_| self.writable) else { return Ok(()) };
        let tag = key.tag(name, artifact).finalize().into_bytes();
        let tag_path = self.tag_path(name);
        match std::fs::remove_file(&tag_path) {
            Err(source) if source.kind() != ErrorKind::NotFound => {
                return Err(CacheWriteError::Io { path: tag_path, source });
            }
            _ => {}
        }
        write_whole(&self.path(name), &[artifact])?;
        write_whole(&tag_path, &[MAGIC.as_slice(), tag.as_slice()])
    }
}

/// Writes `parts` to `path` through a private temporary file renamed into place.
fn write_whole(path: &Path, parts: &[&[u8]]) -> Result<(), CacheWriteError> {
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let io = |source| CacheWriteError::Io { path: temporary.clone(), source };
    let mut file = create_private(&temporary).map_err(io)?;
    for part in parts {
        file.write_all(part).map_err(io)?;
    }
    drop(file);
    // Rename is atomic: a concurrent reader sees either no file or the whole file.
    std::fs::rename(&temporary, path).map_err(|source| CacheWriteError::Io { path: path.to_owned(), source })
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
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const NAME: &str = "00aa-0011";
    const ARTIFACT: &[u8] = b"native code, or so it claims";

    fn cache(dir: &Path) -> ArtifactCache {
        let cache = ArtifactCache::open(dir).expect("opens");
        assert!(cache.key.is_some(), "has a key");
        cache
    }

    /// The bytes a loaded artifact holds, and whether it is used in place.
    fn loaded(cache: &ArtifactCache, name: &str) -> Option<(Vec<u8>, bool)> {
        Some(match cache.load(name)? {
            Artifact::Copied(bytes) => (bytes, false),
            Artifact::InPlace(mut file) => {
                let mut bytes = Vec::new();
                file.seek(SeekFrom::Start(0)).expect("seeks");
                file.read_to_end(&mut bytes).expect("reads");
                (bytes, true)
            }
        })
    }

    fn load(cache: &ArtifactCache, name: &str) -> Option<Vec<u8>> {
        loaded(cache, name).map(|(bytes, _)| bytes)
    }

    #[test]
    fn a_stored_artifact_loads_back_as_it_was_from_its_own_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = cache(dir.path());
        assert_eq!(load(&cache, NAME), None, "nothing cached yet");
        cache.store(NAME, ARTIFACT).expect("stores");
        assert_eq!(loaded(&cache, NAME), Some((ARTIFACT.to_vec(), true)));
        // The path handed to the deserialiser opens the very file that verified.
        let Some(Artifact::InPlace(file)) = cache.load(NAME) else { panic!("in place") };
        assert_eq!(std::fs::read(Artifact::path_in_place(&file)).expect("reads through /proc"), ARTIFACT);
        // The key persists: a second open (the next start) trusts the same file.
        assert_eq!(load(&ArtifactCache::open(dir.path()).expect("opens"), NAME).as_deref(), Some(ARTIFACT));
    }

    #[test]
    fn an_artifact_others_could_change_is_copied_not_used_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = cache(dir.path());
        cache.store(NAME, ARTIFACT).expect("stores");
        let set_mode = |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        set_mode(&cache.path(NAME), 0o620).expect("chmod");
        assert_eq!(loaded(&cache, NAME), Some((ARTIFACT.to_vec(), false)), "a group-writable file");
        set_mode(&cache.path(NAME), 0o600).expect("chmod");
        set_mode(dir.path(), 0o777).expect("chmod");
        assert_eq!(loaded(&cache, NAME), Some((ARTIFACT.to_vec(), false)), "a world-writable directory");
        set_mode(dir.path(), 0o700).expect("chmod");
        std::fs::hard_link(cache.path(NAME), dir.path().join("second-link")).expect("links");
        assert_eq!(loaded(&cache, NAME), Some((ARTIFACT.to_vec(), false)), "a file with two links");
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
        assert_eq!(mode(&cache.tag_path(NAME)), 0o600);
        assert_eq!(std::fs::metadata(dir.path().join("compiled").join(KEY_FILE)).expect("exists").len(), 32);
    }

    #[test]
    fn damaged_artifacts_and_tags_are_rejected_and_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = cache(dir.path());
        cache.store(NAME, ARTIFACT).expect("stores");
        let (artifact, tag) = (ARTIFACT.to_vec(), std::fs::read(cache.tag_path(NAME)).expect("reads"));
        let changed = |bytes: &[u8], at: usize, bit: u8| {
            let mut bytes = bytes.to_vec();
            bytes[at] ^= bit;
            bytes
        };
        let longer = [ARTIFACT, b"\0"].concat();
        // A file as older weir wrote them: header, tag and artifact in one.
        let version_one = [b"weir-compiled-v1".as_slice(), &tag[MAGIC.len()..], ARTIFACT].concat();
        for (what, damaged_artifact, damaged_tag) in [
            ("a flipped artifact bit", changed(&artifact, 3, 0x01), tag.clone()),
            ("a flipped tag bit", artifact.clone(), changed(&tag, MAGIC.len() + 5, 0x80)),
            ("another tag header", artifact.clone(), changed(&tag, 0, 0x20)),
            ("a longer artifact", longer, tag.clone()),
            ("a shorter artifact", artifact[..artifact.len() - 1].to_vec(), tag.clone()),
            ("a short tag", artifact.clone(), tag[..tag.len() - 1].to_vec()),
            ("an empty artifact", Vec::new(), tag.clone()),
            ("the first format", version_one, tag.clone()),
        ] {
            std::fs::write(cache.path(NAME), &damaged_artifact).expect("writes");
            std::fs::write(cache.tag_path(NAME), &damaged_tag).expect("writes");
            assert_eq!(load(&cache, NAME), None, "{what}");
            assert!(!cache.path(NAME).exists() && !cache.tag_path(NAME).exists(), "{what}: both files are removed");
        }
    }

    #[test]
    fn a_link_in_the_artifacts_place_is_never_followed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = cache(dir.path());
        cache.store(NAME, ARTIFACT).expect("stores");
        // The same verified bytes elsewhere, linked into place.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::rename(cache.path(NAME), &elsewhere).expect("moves");
        std::os::unix::fs::symlink(&elsewhere, cache.path(NAME)).expect("links");
        assert_eq!(load(&cache, NAME), None);
        assert!(std::fs::symlink_metadata(cache.path(NAME)).is_err(), "the link is removed");
        assert!(elsewhere.exists(), "what it pointed at is left alone");
    }

    #[test]
    fn an_artifact_moved_to_another_name_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = cache(dir.path());
        cache.store("bb11-0011", b"other function").expect("stores");
        std::fs::copy(cache.path("bb11-0011"), cache.path(NAME)).expect("copies");
        std::fs::copy(cache.tag_path("bb11-0011"), cache.tag_path(NAME)).expect("copies");
        assert_eq!(load(&cache, NAME), None);
        assert_eq!(load(&cache, "bb11-0011").as_deref(), Some(&b"other function"[..]));
    }

    #[test]
    fn an_artifact_from_another_gateway_is_rejected() {
        let (here, there) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
        let (here_cache, there_cache) = (cache(here.path()), cache(there.path()));
        there_cache.store(NAME, ARTIFACT).expect("stores");
        std::fs::copy(there_cache.path(NAME), here_cache.path(NAME)).expect("copies");
        std::fs::copy(there_cache.tag_path(NAME), here_cache.tag_path(NAME)).expect("copies");
        assert_eq!(load(&here_cache, NAME), None);
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
            assert_eq!(load(&reopened, NAME), None, "{what}: the old key's artifacts do not verify");
            assert_eq!(std::fs::metadata(&key_path).expect("a new key").len(), 32, "{what}");
            reopened.store(NAME, ARTIFACT).expect("stores");
            assert_eq!(load(&cache(dir.path()), NAME).as_deref(), Some(ARTIFACT), "{what}: the new key persists");
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
        assert!(cache.load(NAME).is_none());
        let before = std::fs::read(cache.path(NAME)).expect("the old artifact stays");
        cache.store(NAME, b"new").expect("does nothing");
        assert_eq!(std::fs::read(cache.path(NAME)).expect("reads"), before, "nothing written");
    }
}

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
//! **The directory.** The cache is used only when its directory is owned by the user weir runs
//! as and writable by nobody else (it is made with mode 0700): in a directory others can write,
//! a planted key would let them forge artifacts, so such a cache is off, with a warning, and
//! every start compiles every function. Key, tags and artifacts are opened without following
//! links and without blocking (a FIFO in their place is refused, not waited on), the key only
//! when it is owned by this user, a tag read to its 48 bytes at most, an artifact up to
//! [`MAX_ARTIFACT_BYTES`].
//!
//! **Used in place, or copied.** A verified artifact is mapped from its file by wasmtime, so
//! it takes page-cache pages the kernel can drop instead of private memory (pages wasmtime
//! writes to, such as relocations, become private) — but only when nobody but this user can
//! change the file between the check and the use: the artifact is a regular file with one link,
//! owned by the user weir runs as and writable by nobody else, on a file system that allows
//! executable mappings (not `noexec`); its tag is checked over the bytes read through that open
//! file, and wasmtime maps that very file (`/proc/self/fd/<n>`), not the path again. Whoever
//! could still change it — this user or root — can read the key and forge an artifact anyway.
//! Otherwise (another owner, group- or world-writable, `noexec`, no `/proc`) the verified bytes
//! are read into memory and wasmtime copies them.
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
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
/// The largest artifact read: compiled functions are a few MiB at most; anything larger in the
/// cache is not one of ours.
pub const MAX_ARTIFACT_BYTES: u64 = 256 << 20;
/// Length of a tag file: the format, then the tag.
const TAG_FILE_LEN: usize = MAGIC.len() + TAG_LEN;

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
    /// The key file belongs to another user.
    #[error("{path} belongs to another user")]
    NotOurs {
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
    #[error("it is larger than any compiled function ({0} bytes)")]
    TooLarge(u64),
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
        if let Some(problem) = directory_problem(dir) {
            tracing::warn!(stage = "sandbox", dir = %dir.display(), %problem, "compiled-function cache not used: every function is compiled at every start");
            return Ok(Self { dir: dir.to_owned(), key: None, writable: false });
        }
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
        let key = if directory_problem(dir).is_none() { read_key(&dir.join(KEY_FILE)).ok() } else { None };
        Self { dir: dir.to_owned(), key, writable: false }
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
        let tag = match read_tag(&self.tag_path(name)) {
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
        let mut file = open_no_follow(path).map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                Rejection::NotAFile
            } else {
                Rejection::Unreadable(e)
            }
        })?;
        let metadata = file.metadata().map_err(Rejection::Unreadable)?;
        if !metadata.is_file() {
            return Err(Rejection::NotAFile);
        }
        if metadata.len() > MAX_ARTIFACT_BYTES {
            return Err(Rejection::TooLarge(metadata.len()));
        }
        let in_place = self.only_this_user_can_change(&file, &metadata);
        let mut mac = key.tag(name, &[]);
        let mut copy = Vec::new();
        let mut chunk = vec![0; 64 << 10];
        let mut limited = (&mut file).take(MAX_ARTIFACT_BYTES);
        loop {
            let read = limited.read(&mut chunk).map_err(Rejection::Unreadable)?;
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

    /// Whether the open artifact `file` (with its `metadata`) and the cache directory can be
    /// changed by nobody but the user weir runs as (and root), its file system allows executable
    /// mappings, and an open file can be named through `/proc/self/fd`.
    fn only_this_user_can_change(&self, file: &File, metadata: &Metadata) -> bool {
        let private = metadata.uid() == effective_uid() && metadata.mode() & 0o022 == 0 && metadata.nlink() == 1;
        let executable =
            rustix::fs::fstatvfs(file).is_ok_and(|fs| !fs.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC));
        private && executable && directory_problem(&self.dir).is_none() && Path::new("/proc/self/fd").is_dir()
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

/// Writes `parts` to `path` through a private temporary file renamed into place; the temporary
/// file is removed if anything fails.
fn write_whole(path: &Path, parts: &[&[u8]]) -> Result<(), CacheWriteError> {
    let temporary = temporary_path(path);
    let written = create_private(&temporary)
        .and_then(|mut file| parts.iter().try_for_each(|part| file.write_all(part)))
        .map_err(|source| CacheWriteError::Io { path: temporary.clone(), source })
        // Rename is atomic: a concurrent reader sees either no file or the whole file.
        .and_then(|()| {
            std::fs::rename(&temporary, path).map_err(|source| CacheWriteError::Io { path: path.to_owned(), source })
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// A temporary name next to `path`, unique to this process and call.
fn temporary_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    path.with_extension(format!("tmp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// The user weir runs as.
fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Why the cache directory must not be used, if it must not: it is not a directory owned by
/// the user weir runs as, or others may write in it.
fn directory_problem(dir: &Path) -> Option<String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) => Some(e.to_string()),
        Ok(m) if !m.is_dir() => Some("not a directory".to_owned()),
        Ok(m) if m.uid() != effective_uid() => Some(format!("owned by user {}, not by the user weir runs as", m.uid())),
        Ok(m) if m.mode() & 0o022 != 0 => Some(format!("mode {:o}: others may write in it", m.mode() & 0o777)),
        Ok(_) => None,
    }
}

/// Opens `path` for reading without following a link or blocking (a FIFO is opened, not
/// waited on; its type is checked by the caller).
fn open_no_follow(path: &Path) -> Result<File, std::io::Error> {
    use rustix::fs::{CWD, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd: OwnedFd = rustix::fs::openat(CWD, path, flags, Mode::empty())?;
    Ok(File::from(fd))
}

/// A tag file's bytes: a regular file, read to one byte more than a tag file has (so a longer
/// one is refused without reading it all).
fn read_tag(path: &Path) -> Result<Vec<u8>, std::io::Error> {
    let file = open_no_follow(path)?;
    if !file.metadata()?.is_file() {
        return Ok(Vec::new());
    }
    let mut tag = Vec::with_capacity(TAG_FILE_LEN + 1);
    file.take(TAG_FILE_LEN as u64 + 1).read_to_end(&mut tag)?;
    Ok(tag)
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
    let mut file = open_no_follow(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    if !metadata.is_file() {
        return Err(CacheKeyError::NotAFile { path: path.to_owned() });
    }
    if metadata.uid() != effective_uid() {
        return Err(CacheKeyError::NotOurs { path: path.to_owned() });
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
    let temporary = temporary_path(path);
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
mod tests;

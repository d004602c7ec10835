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
fn a_cache_directory_others_can_write_is_not_used() {
    let dir = tempfile::tempdir().expect("temp dir");
    cache(dir.path()).store(NAME, ARTIFACT).expect("stores");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // Anyone could have planted the key: nothing in the directory is trusted or written.
    let opened = ArtifactCache::open(dir.path()).expect("opens");
    assert!(opened.key.is_none());
    assert!(opened.load(NAME).is_none());
    assert!(ArtifactCache::open_read_only(dir.path()).load(NAME).is_none());
    opened.store(NAME, b"new").expect("does nothing");
    assert_eq!(std::fs::read(cache_path(dir.path())).expect("reads"), ARTIFACT, "nothing written");
}

fn cache_path(dir: &Path) -> PathBuf {
    dir.join(format!("{NAME}.cwasm"))
}

#[test]
fn a_key_that_is_a_link_is_never_followed_but_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache_dir = dir.path().join("compiled");
    cache(&cache_dir).store(NAME, ARTIFACT).expect("stores");
    // The same key bytes elsewhere, linked into the key's place.
    let elsewhere = dir.path().join("planted.key");
    std::fs::rename(cache_dir.join(KEY_FILE), &elsewhere).expect("moves");
    std::os::unix::fs::symlink(&elsewhere, cache_dir.join(KEY_FILE)).expect("links");
    let reopened = cache(&cache_dir);
    assert!(load(&reopened, NAME).is_none(), "the linked key is not used");
    assert!(std::fs::symlink_metadata(cache_dir.join(KEY_FILE)).expect("a key").is_file(), "a new key file");
}

#[test]
fn fifos_and_oversized_tags_are_refused_without_waiting_or_reading_them_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = cache(dir.path());
    let mkfifo = |path: &Path| {
        let made = std::process::Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
        assert!(made.success());
    };
    cache.store(NAME, ARTIFACT).expect("stores");
    std::fs::remove_file(cache.tag_path(NAME)).expect("removes");
    mkfifo(&cache.tag_path(NAME));
    assert!(cache.load(NAME).is_none(), "a FIFO tag");
    assert!(!cache.tag_path(NAME).exists(), "removed");

    cache.store(NAME, ARTIFACT).expect("stores");
    std::fs::remove_file(cache.path(NAME)).expect("removes");
    mkfifo(&cache.path(NAME));
    assert!(cache.load(NAME).is_none(), "a FIFO artifact");
    assert!(!cache.path(NAME).exists(), "removed");

    cache.store(NAME, ARTIFACT).expect("stores");
    let mut huge = std::fs::read(cache.tag_path(NAME)).expect("reads");
    huge.resize(1 << 20, 0);
    std::fs::write(cache.tag_path(NAME), huge).expect("writes");
    assert!(cache.load(NAME).is_none(), "a tag file longer than a tag");
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

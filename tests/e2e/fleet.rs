//! The fleet: signed documents made offline (below), updates carried out by a gateway (`updates`),
//! a gateway killed in the middle of one (`restarts`), what a gateway refuses (`attacks`), and
//! rollouts over several gateways (`rollout`, `commands`).
//!
//! The fleet manager's offline commands with the real binary: key pairs, a root whose root role
//! needs two of two keys, signing one holder after the other, and `show` judging the signatures
//! against the root.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use anyhow::Result;
use weir_e2e::*;

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary path")
}

/// `weir fleet root` with the named root keys and threshold, and the `targets` and `desired`
/// keys, all in `dir`, written to `out`.
fn make_root(dir: &Path, root_keys: &[&str], threshold: u32, out: &Path, extra: &[&str]) -> Result<Output> {
    let public = |name: &str| dir.join(format!("{name}.pub")).to_str().expect("UTF-8 temporary path").to_owned();
    let threshold = threshold.to_string();
    let mut args = vec!["fleet".to_owned(), "root".to_owned()];
    for name in root_keys {
        args.extend(["--root-key".to_owned(), public(name)]);
    }
    args.extend(["--root-threshold".to_owned(), threshold]);
    args.extend(["--targets-key".to_owned(), public("targets"), "--desired-key".to_owned(), public("desired")]);
    args.extend(["--out".to_owned(), arg(out).to_owned()]);
    args.extend(extra.iter().map(|e| (*e).to_owned()));
    weir(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_root_needs_its_threshold_of_signatures_added_one_holder_at_a_time() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = |name: &str| dir.path().join(name);
    for name in ["alice", "bob", "targets", "desired"] {
        let output = weir(&["fleet", "keygen", arg(&key(name))])?;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let mode = std::fs::metadata(key(name).with_extension("key"))?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a secret key is readable by its owner only");
    }
    // A key is never overwritten.
    let again = weir(&["fleet", "keygen", arg(&key("alice"))])?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));

    let root = dir.path().join("root.weir");
    let made = make_root(dir.path(), &["alice", "bob"], 2, &root, &["--sign", arg(&key("alice.key"))])?;
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(String::from_utf8_lossy(&made.stdout).contains("1 signature(s) of the 2 its root role needs"));

    // One of two signatures: a gateway would refuse it.
    let show = weir(&["fleet", "show", arg(&root), "--root", arg(&root)])?;
    assert!(!show.status.success());
    let text = String::from_utf8_lossy(&show.stderr).into_owned() + &String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("1 valid signature(s) of its role's keys, 2 needed"), "{text}");

    // Bob signs on his machine; the file now holds both.
    let signed = weir(&["fleet", "sign", arg(&root), "--key", arg(&key("bob.key"))])?;
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    let stdout = String::from_utf8_lossy(&signed.stdout);
    assert!(stdout.contains("root version 1") && stdout.contains("2 signature(s) now"), "{stdout}");

    let show = weir(&["fleet", "show", arg(&root), "--root", arg(&root)])?;
    let stdout = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{stdout}");
    assert!(stdout.contains("root: 2 of [") && stdout.contains("signatures: enough under root version 1"), "{stdout}");

    // A threshold no set of keys can meet is refused before anything is written.
    let impossible = make_root(dir.path(), &["alice"], 2, &dir.path().join("never.weir"), &[])?;
    assert!(!impossible.status.success());
    assert!(String::from_utf8_lossy(&impossible.stderr).contains("cannot be met by 1 distinct root key(s)"));
    assert!(!dir.path().join("never.weir").exists());
    Ok(())
}

mod attacks;
mod commands;
mod restarts;
mod rollout;
mod updates;

//! weir's build driver. `cargo xtask <command>`:
//!
//! - `build-functions` — makes sure a WebAssembly toolchain is there, builds every crate under
//!   `functions/` and `tests/fixtures/` for `wasm32-wasip2`, and copies the components to
//!   `target/functions/`.
//! - `run [weir args…]` — `build-functions`, then `weir run` with the built-in configuration
//!   (or the arguments given), against `target/functions/`.
//! - `test` — `build-functions`, builds the `weir` and `weir-bench` binaries, then runs the whole
//!   test suite: doc tests, then every other test with cargo-nextest when installed (plain
//!   `cargo test` otherwise). The last line printed is the runner's summary.
//!
//! Toolchain: first `rustup target add wasm32-wasip2`; if that fails, Debian's `rustc-web` with
//! `-Zbuild-std`, installed with apt when missing. It says which path it took.
//! `WEIR_WASM_TOOLCHAIN=debian` forces the fallback.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const WASM_TARGET: &str = "wasm32-wasip2";
const WASM_PROFILE: &str = "wasm";
/// Debian packages of the fallback toolchain.
const DEBIAN_PACKAGES: [&str; 5] = ["rustc-web", "cargo-web", "rust-web-src", "lld-22", "wasi-libc"];

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root()?;
    match command.as_str() {
        "build-functions" => build_functions(&root).map(drop),
        "run" => run(&root, &rest),
        "test" => test(&root, &rest),
        _ => {
            eprintln!("usage: cargo xtask <build-functions | run [weir args...] | test [runner args...]>");
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map(Path::to_path_buf).context("xtask lives one level below the workspace root")
}

/// Every crate whose component is built: `functions/*` and `tests/fixtures/*`.
fn function_packages(root: &Path) -> Result<Vec<String>> {
    let mut packages = Vec::new();
    for dir in ["functions", "tests/fixtures"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let manifest = entry?.path().join("Cargo.toml");
            if !manifest.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&manifest)?;
            let name = text
                .lines()
                .find_map(|line| line.trim().strip_prefix("name = ").map(|n| n.trim_matches('"').to_owned()))
                .with_context(|| format!("{} has no package name", manifest.display()))?;
            packages.push(name);
        }
    }
    packages.sort();
    Ok(packages)
}

/// How the components get compiled.
enum Toolchain {
    /// rustup's target, with the workspace's toolchain.
    Rustup,
    /// Debian's rustc-web, building std from source.
    DebianBuildStd,
}

fn status(command: &mut Command) -> Result<bool> {
    Ok(command.status().with_context(|| format!("cannot start {command:?}"))?.success())
}

fn ensure_toolchain() -> Result<Toolchain> {
    // WEIR_WASM_TOOLCHAIN=debian forces the fallback (to check it, or where rustup misbehaves).
    if std::env::var("WEIR_WASM_TOOLCHAIN").as_deref() == Ok("debian") {
        eprintln!("xtask: WEIR_WASM_TOOLCHAIN=debian: using Debian's rustc-web with -Zbuild-std");
        return debian_toolchain();
    }
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if let Ok(output) = &installed
        && String::from_utf8_lossy(&output.stdout).lines().any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(Toolchain::Rustup);
    }
    eprintln!("xtask: adding the {WASM_TARGET} target with rustup");
    if status(Command::new("rustup").args(["target", "add", WASM_TARGET])).unwrap_or(false) {
        return Ok(Toolchain::Rustup);
    }
    eprintln!("xtask: `rustup target add {WASM_TARGET}` failed; falling back to Debian's rustc-web with -Zbuild-std");
    debian_toolchain()
}

/// Debian's rustc-web toolchain, installed with apt when missing (as root).
fn debian_toolchain() -> Result<Toolchain> {
    if !Path::new("/usr/bin/wasm-ld-22").exists() || !Path::new("/usr/lib/rustlib/src/rust").exists() {
        let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
        if !is_root {
            bail!(
                "no WebAssembly toolchain: run `sudo apt-get install -y {}` and try again",
                DEBIAN_PACKAGES.join(" ")
            );
        }
        if !status(Command::new("apt-get").arg("update"))?
            || !status(Command::new("apt-get").args(["install", "-y"]).args(DEBIAN_PACKAGES))?
        {
            bail!("installing the fallback toolchain ({}) failed", DEBIAN_PACKAGES.join(" "));
        }
    }
    Ok(Toolchain::DebianBuildStd)
}

fn build_functions(root: &Path) -> Result<PathBuf> {
    let toolchain = ensure_toolchain()?;
    let packages = function_packages(root)?;
    let mut cargo = match toolchain {
        Toolchain::Rustup => {
            eprintln!("xtask: building {} components with rustup's {WASM_TARGET} target", packages.len());
            let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cargo.args(["build", "--profile", WASM_PROFILE, "--target", WASM_TARGET]);
            cargo
        }
        Toolchain::DebianBuildStd => {
            eprintln!("xtask: building {} components with Debian's rustc-web and -Zbuild-std", packages.len());
            let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
            let mut cargo = Command::new("/usr/bin/cargo");
            cargo
                .env("PATH", path)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTC", "/usr/bin/rustc")
                .env_remove("RUSTUP_TOOLCHAIN")
                .env(
                    "RUSTFLAGS",
                    "-C link-self-contained=no -L /usr/lib/wasm32-wasi -C link-arg=--wasm-ld-path=/usr/bin/wasm-ld-22",
                )
                // A different compiler: keep its artifacts apart from rustup's.
                .env("CARGO_TARGET_DIR", root.join("target/debian-wasm"))
                .args(["build", "--profile", WASM_PROFILE, "--target", WASM_TARGET, "-Zbuild-std=std,panic_abort"]);
            cargo
        }
    };
    for package in &packages {
        cargo.args(["--package", package]);
    }
    cargo.current_dir(root);
    if !status(&mut cargo)? {
        bail!("building the function components failed");
    }
    let built = match toolchain {
        Toolchain::Rustup => root.join("target").join(WASM_TARGET).join(WASM_PROFILE),
        Toolchain::DebianBuildStd => root.join("target/debian-wasm").join(WASM_TARGET).join(WASM_PROFILE),
    };
    let out = root.join("target/functions");
    std::fs::create_dir_all(&out)?;
    for package in &packages {
        let file = format!("{}.wasm", package.replace('-', "_"));
        std::fs::copy(built.join(&file), out.join(&file)).with_context(|| format!("copying {file}"))?;
    }
    eprintln!("xtask: {} components in {}", packages.len(), out.display());
    Ok(out)
}

fn cargo(root: &Path) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root);
    command
}

fn run(root: &Path, weir_args: &[String]) -> Result<()> {
    let functions = build_functions(root)?;
    let mut command = cargo(root);
    command.args(["run", "--package", "weir-host", "--bin", "weir", "--"]);
    if weir_args.is_empty() {
        command.arg("run");
    } else {
        command.args(weir_args);
    }
    command.env("WEIR_FUNCTIONS_DIR", &functions);
    if !status(&mut command)? {
        bail!("weir exited with an error");
    }
    Ok(())
}

fn test(root: &Path, runner_args: &[String]) -> Result<()> {
    let functions = build_functions(root)?;
    let binaries =
        ["build", "--package", "weir-host", "--bin", "weir", "--package", "weir-bench", "--bin", "weir-bench"];
    if !status(cargo(root).args(binaries))? {
        bail!("building the weir and weir-bench binaries failed");
    }
    let weir_bin = root.join("target/debug/weir");
    let weir_bench_bin = root.join("target/debug/weir-bench");
    let env = [
        ("WEIR_FUNCTIONS_DIR", functions.as_path()),
        ("WEIR_BIN", weir_bin.as_path()),
        ("WEIR_BENCH_BIN", weir_bench_bin.as_path()),
    ];
    if !status(cargo(root).args(["test", "--workspace", "--doc"]).envs(env))? {
        bail!("doc tests failed");
    }
    let nextest = cargo(root).args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    let mut runner = cargo(root);
    if nextest {
        runner.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        runner.args(["test", "--workspace", "--no-fail-fast"]);
    }
    runner.args(runner_args).envs(env);
    if !status(&mut runner)? {
        bail!("tests failed");
    }
    Ok(())
}

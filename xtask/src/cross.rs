//! ARM gateway targets: cross-building with Debian's cross compilers and running under
//! qemu-user — the host's sandbox tests, then end-to-end flows with the ARM `weir` the packages
//! ship against brokers on this machine.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{CHECKED, apt_install, cargo, gateway_weir, status};

/// The host's tests of the sandbox under qemu, but for the stress test of ten thousand hostile
/// calls (five minutes emulated on aarch64; it runs natively, compiled and interpreted).
const EMULATED_SANDBOX_TESTS: &str = "test(/^sandbox::/) - test(/^sandbox::tests::ten_thousand_hostile_calls/)";

/// End-to-end flows an ARM build runs: MQTT in → WebAssembly operators → JetStream out, and
/// MQTT in → a window with a WebAssembly aggregate → JetStream out.
const CROSS_FLOWS: &str = "test(=flows::mqtt_json_and_senml_through_threshold_and_unit_convert_arrive_in_jetstream_value_by_value) \
     | test(=windows::windowed_aggregates_arrive_with_the_values_computed_from_the_readings)";

/// An ARM gateway target: its Rust target, Debian's cross compiler for it, and its qemu-user.
pub struct CrossTarget {
    pub triple: &'static str,
    packages: [&'static str; 2],
    compiler: &'static str,
    pub qemu: &'static str,
    pub sysroot: &'static str,
}

/// The gateway targets; linkers and qemu runners are set in `.cargo/config.toml`.
pub const CROSS_TARGETS: [CrossTarget; 2] = [
    CrossTarget {
        triple: "aarch64-unknown-linux-gnu",
        packages: ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
        compiler: "/usr/bin/aarch64-linux-gnu-gcc",
        qemu: "/usr/bin/qemu-aarch64-static",
        sysroot: "/usr/aarch64-linux-gnu",
    },
    CrossTarget {
        triple: "armv7-unknown-linux-gnueabihf",
        packages: ["gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross"],
        compiler: "/usr/bin/arm-linux-gnueabihf-gcc",
        qemu: "/usr/bin/qemu-arm-static",
        sysroot: "/usr/arm-linux-gnueabihf",
    },
];

/// Installs what cross-building and running `target` needs, when missing.
pub fn ensure_cross_toolchain(target: &CrossTarget) -> Result<()> {
    if !Path::new(target.compiler).exists() || !Path::new(target.qemu).exists() {
        let mut packages = target.packages.to_vec();
        packages.push("qemu-user-static");
        apt_install(&packages).with_context(|| format!("installing the cross toolchain for {}", target.triple))?;
    }
    if !status(Command::new("rustup").args(["target", "add", target.triple]))? {
        bail!("rustup could not add the {} target", target.triple);
    }
    Ok(())
}

/// Cross-builds the host's tests for `target` and runs the sandbox tests under qemu, then
/// [`CROSS_FLOWS`] with the ARM `weir` of the packages' checks (the `gateway-ci` profile, already
/// built when the packages were) under qemu against brokers on this machine.
pub fn cross_test(root: &Path, target: &CrossTarget, functions: &Path, python: &Path) -> Result<()> {
    ensure_cross_toolchain(target)?;
    eprintln!("xtask: {}: the sandbox tests under qemu", target.triple);
    let sandbox = ["nextest", "run", "--package", "weir-host", "--target", target.triple, "-E", EMULATED_SANDBOX_TESTS];
    if !status(cargo(root).args(sandbox).env("WEIR_FUNCTIONS_DIR", functions))? {
        bail!("the sandbox tests failed under qemu");
    }
    // The harness starts `WEIR_BIN` like any program: a script that runs the ARM build under qemu.
    eprintln!("xtask: {}: weir with the {CHECKED} profile", target.triple);
    let weir = gateway_weir(root, target.triple, CHECKED)?;
    let wrapper = weir.with_file_name("weir-under-qemu");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {} -L {} {} \"$@\"\n", target.qemu, target.sysroot, weir.display()),
    )?;
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    eprintln!("xtask: {}: end-to-end flows with weir under qemu", target.triple);
    // One at a time: two emulated gateways on two cores starve each other's first calls.
    let flows = ["nextest", "run", "--package", "weir-e2e", "--test-threads", "1", "-E", CROSS_FLOWS];
    let env = [("WEIR_FUNCTIONS_DIR", functions), ("WEIR_BIN", wrapper.as_path()), ("WEIR_PYTHON", python)];
    if !status(cargo(root).args(flows).envs(env))? {
        bail!("the end-to-end flows failed with weir under qemu");
    }
    Ok(())
}

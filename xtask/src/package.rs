//! `cargo xtask package [amd64 | arm64 | armhf …]`: weir's Debian package for each gateway
//! architecture, from `edge-images/`, and the checks every package passes before it counts as
//! built:
//!
//! - its contents: exactly the files an installation needs, with the modes they need;
//! - the packaged binary's `weir check` accepts the packaged `/etc/weir/weir.toml` with the
//!   packaged functions (under qemu for the ARM packages);
//! - `systemd-analyze security --offline=true` rates the packaged unit at most
//!   [`EXPOSURE_THRESHOLD`], and with the sensors drop-in applied at most
//!   [`SENSORS_EXPOSURE_THRESHOLD`].
//!
//! The binary is built with the `gateway` profile (`gateway-ci` when the test suite checks the
//! packages). `Depends: libc6 (>= …)` is the newest glibc symbol version the binary uses, read
//! from its dynamic symbols.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::cross::{CROSS_TARGETS, CrossTarget, ensure_cross_toolchain};
use crate::{gateway_weir, status};

/// The highest exposure `systemd-analyze security` may give the unit, in tenths (its
/// `--threshold` unit): 1.1, what every package's unit scores now, so any loosening fails. What
/// still counts against it is what weir exists for or cannot know: network access (AF_INET and
/// AF_INET6, AF_UNIX, no private network), an IP allow list (the brokers' addresses depend on the
/// site), the host's root directory, reading the real-time clock, and on amd64 and arm64
/// writable-executable memory for compiled functions (denied on armhf).
pub const EXPOSURE_THRESHOLD: u32 = 11;

/// The same with the sensors drop-in (`edge-images/sensors.conf`) applied: 1.5, the device nodes
/// (limited to those listed) and the users outside a private namespace counting against it.
pub const SENSORS_EXPOSURE_THRESHOLD: u32 = 15;

/// A Debian architecture weir is packaged for.
pub struct DebianArch {
    /// Debian's name for it.
    pub name: &'static str,
    /// The Rust target that builds for it.
    triple: &'static str,
    /// Where functions can only be interpreted, so no memory need ever be executable.
    interpreted: bool,
}

/// amd64, arm64 (aarch64 boards) and armhf (32-bit ARMv7 boards).
pub const DEBIAN_ARCHES: [DebianArch; 3] = [
    DebianArch { name: "amd64", triple: "x86_64-unknown-linux-gnu", interpreted: false },
    DebianArch { name: "arm64", triple: "aarch64-unknown-linux-gnu", interpreted: false },
    DebianArch { name: "armhf", triple: "armv7-unknown-linux-gnueabihf", interpreted: true },
];

impl DebianArch {
    fn cross(&self) -> Option<&'static CrossTarget> {
        CROSS_TARGETS.iter().find(|t| t.triple == self.triple)
    }
}

/// Builds, then checks, the package for `arch` with `weir` built with `profile`; returns its path.
pub fn package(root: &Path, arch: &DebianArch, functions: &Path, profile: &str) -> Result<PathBuf> {
    if let Some(cross) = arch.cross() {
        ensure_cross_toolchain(cross)?;
    }
    eprintln!("xtask: package {}: building weir with the {profile} profile", arch.name);
    let binary = gateway_weir(root, arch.triple, profile)?;
    let out = root.join("target/package").join(arch.name);
    let tree = out.join("root");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    stage(root, arch, &binary, functions, &tree)?;
    let version = workspace_version(root)?;
    let deb = out.join(format!("weir_{version}_{}.deb", arch.name));
    let built = status(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&tree).arg(&deb))?;
    ensure!(built, "dpkg-deb could not build {}", deb.display());
    check(root, arch, &deb)?;
    let size = std::fs::metadata(&binary)?.len();
    eprintln!("xtask: package {}: {} (weir {:.1} MiB)", arch.name, deb.display(), size as f64 / f64::from(1 << 20));
    Ok(deb)
}

/// Lays out the package's tree in `tree`.
fn stage(root: &Path, arch: &DebianArch, binary: &Path, functions: &Path, tree: &Path) -> Result<()> {
    let images = root.join("edge-images");
    let install = |from: &Path, to: &str, mode: u32| -> Result<()> {
        let to = tree.join(to);
        std::fs::create_dir_all(to.parent().context("a path in a directory")?)?;
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(())
    };
    install(binary, "usr/bin/weir", 0o755)?;
    install(&images.join("weir.toml"), "etc/weir/weir.toml", 0o644)?;
    let unit = std::fs::read_to_string(images.join("weir.service"))?
        .replace("@MEMORY_DENY_WRITE_EXECUTE@", if arch.interpreted { "yes" } else { "no" });
    let unit_path = tree.join("lib/systemd/system/weir.service");
    std::fs::create_dir_all(unit_path.parent().context("a path in a directory")?)?;
    std::fs::write(&unit_path, unit)?;
    for function in crate::example_functions(root)? {
        let file = format!("{}.wasm", function.replace('-', "_"));
        install(&functions.join(&file), &format!("usr/lib/weir/functions/{file}"), 0o644)?;
    }
    let docs = [
        "README.md",
        "docs/configuration.md",
        "docs/deploy.md",
        "docs/durability.md",
        "docs/function-guide.md",
        "docs/operations.md",
        "docs/sensors.md",
        "docs/status-page.png",
    ];
    for doc in docs {
        let name = Path::new(doc).file_name().context("a file name")?.to_string_lossy().into_owned();
        install(&root.join(doc), &format!("usr/share/doc/weir/{name}"), 0o644)?;
    }
    install(&images.join("sensors.conf"), "usr/share/doc/weir/sensors.conf", 0o644)?;
    install(&images.join("debian/copyright"), "usr/share/doc/weir/copyright", 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        install(&images.join("debian").join(script), &format!("DEBIAN/{script}"), 0o755)?;
    }
    std::fs::write(tree.join("DEBIAN/conffiles"), "/etc/weir/weir.toml\n")?;
    let control = format!(
        "Package: weir\nVersion: {version}\nArchitecture: {arch}\nMaintainer: weir developers <weir@weir-edge.dev>\n\
         Section: net\nPriority: optional\nDepends: libc6 (>= {glibc}), adduser\nRecommends: ca-certificates\n\
         Homepage: https://github.com/weir-edge/weir\n\
         Description: edge stream processor running sandboxed WebAssembly functions\n \
         weir ingests MQTT and NATS sensor streams on a gateway, runs sandboxed WebAssembly\n \
         functions over batches of readings, windows and downsamples them, and forwards\n \
         compact CBOR aggregates to a central broker through a durable outbox.\n",
        version = workspace_version(root)?,
        arch = arch.name,
        glibc = glibc_floor(binary)?,
    );
    std::fs::write(tree.join("DEBIAN/control"), control)?;
    Ok(())
}

/// The newest `GLIBC_x.y` symbol version `binary` needs (readelf reads any architecture).
fn glibc_floor(binary: &Path) -> Result<String> {
    let output = Command::new("readelf").args(["--wide", "--dyn-syms"]).arg(binary).output()?;
    ensure!(output.status.success(), "readelf could not read {}", binary.display());
    let text = String::from_utf8_lossy(&output.stdout);
    let version = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    text.split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let v: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            (!v.is_empty()).then_some(v)
        })
        .max_by_key(|v| version(v))
        .context("the binary uses no versioned glibc symbol")
}

fn workspace_version(root: &Path) -> Result<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = ").map(|v| v.trim_matches('"').to_owned()))
        .context("the workspace has a version")
}

/// The files every package holds besides the function components (see the module docs).
const EXPECTED: [&str; 17] = [
    "./usr/bin/weir",
    "./etc/weir/weir.toml",
    "./lib/systemd/system/weir.service",
    "./usr/share/doc/weir/README.md",
    "./usr/share/doc/weir/configuration.md",
    "./usr/share/doc/weir/deploy.md",
    "./usr/share/doc/weir/durability.md",
    "./usr/share/doc/weir/function-guide.md",
    "./usr/share/doc/weir/operations.md",
    "./usr/share/doc/weir/sensors.md",
    "./usr/share/doc/weir/sensors.conf",
    "./usr/share/doc/weir/status-page.png",
    "./usr/share/doc/weir/copyright",
    "./usr/lib/weir/functions/weir_fn_unit_convert.wasm",
    "./usr/lib/weir/functions/weir_fn_threshold_alert.wasm",
    "./usr/lib/weir/functions/weir_fn_moving_average.wasm",
    "./usr/lib/weir/functions/weir_fn_frame_decoder.wasm",
];

fn check(root: &Path, arch: &DebianArch, deb: &Path) -> Result<()> {
    let listing = Command::new("dpkg-deb").arg("--contents").arg(deb).output()?;
    ensure!(listing.status.success(), "dpkg-deb cannot list {}", deb.display());
    let listing = String::from_utf8_lossy(&listing.stdout);
    let entry = |path: &str| listing.lines().find(|l| l.split_whitespace().last() == Some(path));
    for path in EXPECTED {
        let line = entry(path).with_context(|| format!("{} lacks {path}:\n{listing}", deb.display()))?;
        ensure!(line.contains("root/root"), "{path} is not owned by root: {line}");
    }
    ensure!(entry("./usr/bin/weir").is_some_and(|l| l.starts_with("-rwxr-xr-x")), "weir is not executable");
    ensure!(!listing.contains("faulty") && !listing.contains("identity"), "test fixtures were packaged:\n{listing}");

    let unpacked = root.join("target/package").join(arch.name).join("unpacked");
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)?;
    }
    ensure!(status(Command::new("dpkg-deb").arg("--extract").arg(deb).arg(&unpacked))?, "cannot extract the package");
    let data_dir = root.join("target/package").join(arch.name).join("check-data");
    let weir = unpacked.join("usr/bin/weir");
    let mut check = match arch.cross() {
        None => Command::new(&weir),
        Some(cross) => {
            let mut qemu = Command::new(cross.qemu);
            qemu.args(["-L", cross.sysroot]).arg(&weir);
            qemu
        }
    };
    check
        .arg("check")
        .arg("--config")
        .arg(unpacked.join("etc/weir/weir.toml"))
        .arg("--functions-dir")
        .arg(unpacked.join("usr/lib/weir/functions"))
        .arg("--data-dir")
        .arg(&data_dir);
    ensure!(status(&mut check)?, "the packaged weir refuses the packaged configuration");

    let unit = unpacked.join("lib/systemd/system/weir.service");
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        crate::apt_install(&["systemd"]).context("installing systemd-analyze")?;
    }
    let expected_mdwe = if arch.interpreted { "MemoryDenyWriteExecute=yes" } else { "MemoryDenyWriteExecute=no" };
    ensure!(std::fs::read_to_string(&unit)?.contains(expected_mdwe), "the unit lacks {expected_mdwe}");
    let mut security = Command::new("systemd-analyze");
    security.args(["security", "--offline=true", &format!("--threshold={EXPOSURE_THRESHOLD}")]).arg(&unit);
    ensure!(status(&mut security)?, "systemd-analyze rates the unit above {EXPOSURE_THRESHOLD} tenths");

    // The unit with the sensors drop-in applied (its settings come after the unit's, so they win).
    let drop_in = std::fs::read_to_string(unpacked.join("usr/share/doc/weir/sensors.conf"))?;
    let settings: String =
        drop_in.lines().filter(|l| !l.starts_with('#') && *l != "[Service]").map(|l| format!("{l}\n")).collect();
    let with_sensors = std::fs::read_to_string(&unit)?.replace("[Install]", &format!("{settings}\n[Install]"));
    let dir = root.join("target/package").join(arch.name).join("with-sensors");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("weir.service"), with_sensors)?;
    let mut security = Command::new("systemd-analyze");
    security.args(["security", "--offline=true", &format!("--threshold={SENSORS_EXPOSURE_THRESHOLD}")]);
    ensure!(
        status(security.arg(dir.join("weir.service")))?,
        "systemd-analyze rates the unit with the sensors drop-in above {SENSORS_EXPOSURE_THRESHOLD} tenths"
    );
    Ok(())
}

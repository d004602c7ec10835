//! `cargo xtask footprint-vm <arm64 | armhf>`: the gateway binary's memory on a real ARM kernel.
//!
//! qemu-user cannot tell what a process costs (it keeps a descriptor for every guest page the
//! pooling allocator reserves), so this boots Debian's own kernel for the architecture in
//! qemu-system (`virt` board, 1 GiB, two cores) with an initramfs holding nothing but busybox,
//! the C library, the gateway-profile `weir` and `weir-bench`, and a function component. Its init
//! runs `weir-bench footprint` there and powers off; the serial console's report is printed.
//! The armhf kernel is a 32-bit one with the usual 3 GiB/1 GiB split, so the run also shows
//! that ten and twenty functions fit a real 32-bit address space.
//!
//! Needs root: it adds the Debian architecture (`dpkg --add-architecture`) to fetch the kernel
//! and busybox packages with `apt-get download`, and installs qemu-system-arm when missing.
//! Everything it makes stays under `target/vm/<arch>/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use crate::cross::{CROSS_TARGETS, CrossTarget, ensure_cross_toolchain};
use crate::{apt_install, cargo, status};

/// Where the report starts and ends on the serial console.
const REPORT_BEGIN: &str = "=== weir footprint report ===";
const REPORT_END: &str = "=== end of weir footprint report ===";

/// A Debian ARM architecture and how qemu-system boots its kernel.
struct VmArch {
    /// Debian's name for it.
    name: &'static str,
    /// Its Rust target.
    triple: &'static str,
    /// Debian's kernel flavour (`linux-image-<flavour>`, a package that names the current kernel).
    kernel_flavour: &'static str,
    /// The dynamic loader the binaries name, under `/lib`.
    loader: &'static str,
    /// qemu-system for the architecture, and the CPU it emulates (a Raspberry Pi class core).
    qemu: &'static str,
    cpu: &'static str,
}

const VM_ARCHES: [VmArch; 2] = [
    VmArch {
        name: "arm64",
        triple: "aarch64-unknown-linux-gnu",
        kernel_flavour: "arm64",
        loader: "ld-linux-aarch64.so.1",
        qemu: "qemu-system-aarch64",
        cpu: "cortex-a72",
    },
    VmArch {
        name: "armhf",
        triple: "armv7-unknown-linux-gnueabihf",
        kernel_flavour: "armmp",
        loader: "ld-linux-armhf.so.3",
        qemu: "qemu-system-arm",
        cpu: "cortex-a15",
    },
];

/// The init the kernel runs: mounts what `/proc/<pid>/status` and temporary files need, runs the
/// measurement, powers off.
const INIT: &str = "#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin LD_LIBRARY_PATH=/lib
mount -t proc proc /proc
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=512m tmp /tmp
echo '@BEGIN@'
uname -srm
grep -m1 -E 'model name|Processor|CPU part' /proc/cpuinfo
grep MemTotal /proc/meminfo
/weir-bench footprint --weir /weir --functions-dir /functions 2>&1
echo \"weir-bench exited with $?\"
echo '@END@'
poweroff -f
";

/// Builds the gateway binaries for `arch`, boots them on the architecture's kernel and prints the
/// footprint report.
pub fn footprint_vm(root: &Path, arch_name: &str, functions: &Path) -> Result<()> {
    let arch = VM_ARCHES.iter().find(|a| a.name == arch_name).with_context(|| {
        let known: Vec<&str> = VM_ARCHES.iter().map(|a| a.name).collect();
        format!("footprint-vm needs one of {}", known.join(", "))
    })?;
    let cross = CROSS_TARGETS.iter().find(|t| t.triple == arch.triple).context("a cross target for every VM arch")?;
    ensure_cross_toolchain(cross)?;
    if Command::new(arch.qemu).arg("--version").stdout(Stdio::null()).status().is_err() {
        apt_install(&["qemu-system-arm"])?;
    }
    let dir = root.join("target/vm").join(arch.name);
    let (kernel, busybox) = debian_parts(arch, &dir)?;

    eprintln!("xtask: footprint-vm {}: building weir and weir-bench with the gateway profile", arch.name);
    // One at a time: built together, weir would get the features the benchmark's dependencies
    // add, and would no longer be the binary the package ships.
    for (package, binary) in [("weir-host", "weir"), ("weir-bench", "weir-bench")] {
        let build = ["build", "--profile", "gateway", "--target", arch.triple, "--package", package, "--bin", binary];
        if !status(cargo(root).args(build))? {
            bail!("building {binary} for {} failed", arch.triple);
        }
    }
    let binaries = root.join("target").join(arch.triple).join("gateway");
    let initramfs = make_initramfs(arch, cross, &dir, &busybox, &binaries, functions)?;

    eprintln!("xtask: footprint-vm {}: booting {} (emulated: minutes)", arch.name, kernel.display());
    let output = Command::new(arch.qemu)
        .args(["-M", "virt", "-cpu", arch.cpu, "-smp", "2", "-m", "1024", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyAMA0 rdinit=/init panic=-1 quiet"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", arch.qemu))?;
    let console = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    let report = console
        .split_once(REPORT_BEGIN)
        .and_then(|(_, rest)| rest.split_once(REPORT_END))
        .map(|(report, _)| report.trim().to_owned());
    match report {
        Some(report) => {
            println!("{report}");
            ensure!(report.contains("weir-bench exited with 0"), "the measurement failed inside the VM");
            Ok(())
        }
        None => bail!("the VM gave no report; its console:\n{console}"),
    }
}

/// Fetches Debian's kernel and busybox for `arch` into `dir`; returns the kernel image and the
/// static busybox.
fn debian_parts(arch: &VmArch, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let foreign = Command::new("dpkg").arg("--print-foreign-architectures").output()?;
    if !String::from_utf8_lossy(&foreign.stdout).lines().any(|line| line.trim() == arch.name) {
        eprintln!("xtask: footprint-vm: adding the {} architecture to dpkg to fetch its kernel", arch.name);
        ensure!(
            status(Command::new("dpkg").args(["--add-architecture", arch.name]))?,
            "dpkg --add-architecture failed"
        );
        ensure!(status(Command::new("apt-get").arg("update"))?, "apt-get update failed");
    }
    // The meta package names the current kernel's package.
    let meta = format!("linux-image-{}:{}", arch.kernel_flavour, arch.name);
    let depends = Command::new("apt-cache").args(["depends", &meta]).output()?;
    let kernel_package = String::from_utf8_lossy(&depends.stdout)
        .lines()
        .find_map(|line| line.trim().strip_prefix("Depends: ").map(str::to_owned))
        .filter(|package| package.starts_with("linux-image-"))
        .with_context(|| format!("apt-cache names no kernel for {meta}"))?;
    let kernel_package = kernel_package.split(':').next().unwrap_or(&kernel_package).to_owned();
    for package in [format!("{kernel_package}:{}", arch.name), format!("busybox-static:{}", arch.name)] {
        let fetched = Command::new("apt-get").args(["download", &package]).current_dir(&debs).status()?;
        ensure!(fetched.success(), "apt-get download {package} failed");
    }
    let unpacked = dir.join("unpacked");
    for deb in std::fs::read_dir(&debs)? {
        let deb = deb?.path();
        ensure!(
            status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?,
            "cannot unpack {}",
            deb.display()
        );
    }
    let version = kernel_package.trim_start_matches("linux-image-");
    let kernel = unpacked.join(format!("boot/vmlinuz-{version}"));
    let busybox = unpacked.join("bin/busybox");
    ensure!(kernel.is_file(), "no kernel at {}", kernel.display());
    ensure!(busybox.is_file(), "no busybox at {}", busybox.display());
    Ok((kernel, busybox))
}

/// The initramfs (newc cpio, gzip): init, busybox, the C library, weir, weir-bench and the
/// unit-convert component.
fn make_initramfs(
    arch: &VmArch,
    cross: &CrossTarget,
    dir: &Path,
    busybox: &Path,
    binaries: &Path,
    functions: &Path,
) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    for sub in ["bin", "lib", "proc", "dev", "tmp", "functions"] {
        std::fs::create_dir_all(tree.join(sub))?;
    }
    let copy = |from: &Path, to: &str| -> Result<()> {
        std::fs::copy(from, tree.join(to)).with_context(|| format!("copying {}", from.display()))?;
        Ok(())
    };
    copy(busybox, "bin/busybox")?;
    let libc = Path::new(cross.sysroot).join("lib");
    for library in [arch.loader, "libc.so.6", "libm.so.6", "libgcc_s.so.1"] {
        copy(&libc.join(library), &format!("lib/{library}"))?;
    }
    copy(&binaries.join("weir"), "weir")?;
    copy(&binaries.join("weir-bench"), "weir-bench")?;
    copy(&functions.join("weir_fn_unit_convert.wasm"), "functions/weir_fn_unit_convert.wasm")?;
    let init = INIT.replace("@BEGIN@", REPORT_BEGIN).replace("@END@", REPORT_END);
    std::fs::write(tree.join("init"), init)?;
    for executable in ["init", "bin/busybox", "weir", "weir-bench"] {
        std::fs::set_permissions(tree.join(executable), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let image = dir.join("initramfs.cpio.gz");
    let pack = format!("find . | cpio --quiet -o -H newc --owner 0:0 | gzip -1 > {}", image.display());
    ensure!(status(Command::new("sh").args(["-c", &pack]).current_dir(&tree))?, "cannot pack the initramfs");
    Ok(image)
}

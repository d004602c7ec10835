//! `weir-bench footprint`: what the gateway process costs to start and to keep.
//!
//! - **Start to ready:** the `weir` binary (`--weir`, by default the one beside this executable)
//!   run as `weir run` on a configuration with N distinct
//!   functions (copies of `unit-convert`, each with its own custom section, so N versions and N
//!   compiled artifacts) in one pipeline, whose compiled artifacts are already cached (a first run
//!   warms the cache); from spawning the process until it logs that the pipeline runs.
//! - **Memory:** its resident set size once idle, with N and with 2N functions; the difference
//!   over N is what one more function costs.
//! - **Binary size:** that `weir` binary, and a stripped copy of it (`strip`, when installed).
//!
//! Owns a temporary directory (components, configuration, data), removed at the end, and the
//! processes it spawns, which it stops.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::report::{print_machine, verdict};

/// Start-to-ready and idle memory of `weir run` with N and 2N precompiled functions; the
/// binary's size.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the built components are.
    #[arg(long, default_value = "target/functions")]
    functions_dir: PathBuf,
    /// N.
    #[arg(long, default_value_t = 10)]
    functions: usize,
    /// The `weir` binary to measure [default: `weir` beside this executable].
    #[arg(long, env = "WEIR_BIN")]
    weir: Option<PathBuf>,
}

impl Args {
    /// Measures and prints the table of both runs, the cost per function and the binary's size.
    pub fn execute(self) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        print_machine(&mut out)?;
        let weir = crate::weir_binary(self.weir)?;
        let result = run(&weir, &self.functions_dir, self.functions)?;
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        writeln!(
            out,
            "| functions | start to ready (target ≤ 200 ms) | idle RSS (target ≤ 15 MiB at 10) | of which anonymous | of which file-backed or shared |"
        )?;
        writeln!(
            out,
            "|----------:|--------------------------------:|---------------------------------:|-------------------:|-------------------------------:|"
        )?;
        for run in result.runs {
            let ms = run.start_to_ready.as_secs_f64() * 1e3;
            writeln!(
                out,
                "| {} | {ms:.1} ms ({}) | {:.1} MiB{} | {:.1} MiB | {:.1} MiB |",
                run.functions,
                verdict(ms <= 200.0),
                mib(run.idle_rss),
                if run.functions == 10 { format!(" ({})", verdict(mib(run.idle_rss) <= 15.0)) } else { String::new() },
                mib(run.idle_rss_anon),
                mib(run.idle_rss_file)
            )?;
        }
        let [all, anon, file] = result.rss_per_function();
        writeln!(out)?;
        writeln!(
            out,
            "RSS per extra function: {:.0} KiB (target ≤ 200 KiB: {}); anonymous {:.0} KiB, file-backed or shared {:.0} KiB",
            all / 1024.0,
            verdict(all <= 200.0 * 1024.0),
            anon / 1024.0,
            file / 1024.0
        )?;
        writeln!(
            out,
            "binary: {:.1} MiB; stripped: {} (target ≤ 12 MiB)",
            mib(result.binary),
            result.stripped.map_or_else(
                || "strip not installed".to_owned(),
                |s| format!("{:.1} MiB ({})", mib(s), verdict(mib(s) <= 12.0))
            )
        )?;
        Ok(())
    }
}

/// One gateway run.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Functions loaded.
    pub functions: usize,
    /// From spawning the process to the pipeline running.
    pub start_to_ready: Duration,
    /// Resident set size once idle, bytes.
    pub idle_rss: u64,
    /// Of which anonymous memory (heap, stacks, instances, compiled functions copied from the
    /// cache where they cannot be used in place): what only this process holds.
    pub idle_rss_anon: u64,
    /// Of which file-backed or shared pages (this binary's code, compiled functions mapped from
    /// the cache; on a memory file system these count as shared): clean pages the kernel can
    /// drop and read again from a disk.
    pub idle_rss_file: u64,
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct Footprint {
    /// With N functions, then 2N.
    pub runs: [Run; 2],
    /// Size of the `weir` binary, bytes.
    pub binary: u64,
    /// Size of a stripped copy, when `strip` is installed.
    pub stripped: Option<u64>,
}

impl Footprint {
    /// Resident bytes one more function costs: in all, anonymous, file-backed.
    pub fn rss_per_function(&self) -> [f64; 3] {
        let [small, large] = self.runs;
        let per =
            |f: fn(&Run) -> u64| (f(&large) as f64 - f(&small) as f64) / (large.functions - small.functions) as f64;
        [per(|r| r.idle_rss), per(|r| r.idle_rss_anon), per(|r| r.idle_rss_file)]
    }
}

/// Measures the `weir` binary at `exe` with `functions` and `2 × functions` functions,
/// components from `functions_dir`.
pub fn run(exe: &Path, functions_dir: &Path, functions: usize) -> anyhow::Result<Footprint> {
    anyhow::ensure!(exe.is_file(), "no weir binary at {} (give it with --weir)", exe.display());
    let dir = tempfile::tempdir()?;
    let component = std::fs::read(functions_dir.join("weir_fn_unit_convert.wasm"))
        .with_context(|| format!("no unit-convert component in {}", functions_dir.display()))?;
    let small = measure(exe, dir.path(), &component, functions)?;
    let large = measure(exe, dir.path(), &component, functions * 2)?;
    let binary = std::fs::metadata(exe)?.len();
    let stripped_path = dir.path().join("weir-stripped");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&stripped_path)
        .arg(exe)
        .status()
        .ok()
        .filter(std::process::ExitStatus::success)
        .and_then(|_| std::fs::metadata(&stripped_path).ok())
        .map(|m| m.len());
    Ok(Footprint { runs: [small, large], binary, stripped })
}

fn measure(exe: &Path, dir: &Path, component: &[u8], functions: usize) -> anyhow::Result<Run> {
    let run_dir = dir.join(format!("{functions}-functions"));
    std::fs::create_dir_all(&run_dir)?;
    let mut config = format!(
        "[gateway]\nid = \"footprint\"\ndata_dir = \"{}\"\nfunctions_dir = \"{}\"\n\n",
        run_dir.join("data").display(),
        run_dir.display()
    );
    for n in 0..functions {
        // A custom section makes each copy another version, compiled and cached on its own.
        let mut bytes = component.to_vec();
        let name = format!("footprint-{n}");
        bytes.push(0);
        bytes.push(u8::try_from(1 + name.len()).context("short section")?);
        bytes.push(u8::try_from(name.len()).context("short name")?);
        bytes.extend_from_slice(name.as_bytes());
        std::fs::write(run_dir.join(format!("f{n}.wasm")), bytes)?;
        config.push_str(&format!("[functions.f{n}]\ncomponent = \"f{n}.wasm\"\n\n"));
    }
    config.push_str(
        "[pipelines.idle]\ndecode = \"senml_json\"\n\n[pipelines.idle.source.simulated]\npayload = \"senml_json\"\n\
         devices = 1\ninterval = \"1h\"\ntopic_prefix = \"idle\"\n\n[pipelines.idle.sink.console]\n\n",
    );
    for n in 0..functions {
        config.push_str(&format!(
            "[[pipelines.idle.operators]]\nfunction = \"f{n}\"\n\
             params = {{ conversion = \"celsius_to_fahrenheit\", series = \"none/#\" }}\n\n"
        ));
    }
    let config_path = run_dir.join("weir.toml");
    std::fs::write(&config_path, config)?;

    // The first run compiles and caches; the second is the one measured.
    let (mut warm, _) = start(exe, &config_path, &run_dir)?;
    stop(&mut warm)?;
    let (mut child, start_to_ready) = start(exe, &config_path, &run_dir)?;
    std::thread::sleep(Duration::from_secs(1));
    let resident = resident_bytes(child.id());
    stop(&mut child)?;
    let [idle_rss, idle_rss_anon, idle_rss_file] = resident?;
    Ok(Run { functions, start_to_ready, idle_rss, idle_rss_anon, idle_rss_file })
}

/// Spawns `weir run` and waits for "pipeline running" on its log. The directories are given on
/// the command line, so a `WEIR_FUNCTIONS_DIR` or `WEIR_DATA_DIR` in the environment cannot
/// point the run elsewhere.
fn start(exe: &Path, config: &Path, run_dir: &Path) -> anyhow::Result<(Child, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .arg("--functions-dir")
        .arg(run_dir)
        .arg("--data-dir")
        .arg(run_dir.join("data"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start weir run")?;
    let stderr = child.stderr.take().context("stderr is piped")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(line) => {
                let line = line?;
                if line.contains("pipeline running") {
                    let ready = started.elapsed();
                    // Keep draining the log so the process never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines {});
                    return Ok((child, ready));
                }
                seen.push(line);
            }
            None => {
                let _ = child.wait();
                bail!("weir run ended before its pipeline ran:\n{}", seen.join("\n"));
            }
        }
    }
}

fn stop(child: &mut Child) -> anyhow::Result<()> {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    child.wait()?;
    Ok(())
}

/// `VmRSS`, `RssAnon`, and `RssFile` plus `RssShmem` of process `pid`, bytes (Linux). Files on
/// a memory file system (an initramfs, tmpfs) are counted as shared memory, not as files.
fn resident_bytes(pid: u32) -> anyhow::Result<[u64; 3]> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status")))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/<pid>/status"))?;
        Ok(kib * 1024)
    };
    Ok([field("VmRSS:")?, field("RssAnon:")?, field("RssFile:")? + field("RssShmem:")?])
}

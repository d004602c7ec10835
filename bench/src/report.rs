//! What every benchmark's report shares: the line saying where and when it ran (the machine,
//! the date, the build), and the verdict on a target. docs/BENCHMARKS.md quotes both.

use std::io::Write;

/// Writes where and when a benchmark ran, and a blank line.
pub fn print_machine(out: &mut impl Write) -> std::io::Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let build = if cfg!(debug_assertions) { "debug build: figures are not representative" } else { "release build" };
    writeln!(
        out,
        "{} — {cpu}, {cores} core(s), {} {}, weir {} ({build})",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        std::env::consts::OS,
        std::env::consts::ARCH,
        env!("CARGO_PKG_VERSION")
    )?;
    writeln!(out)
}

/// `met` or `missed`, as the tables print a target's verdict.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

//! A real browser for the tests: Debian's headless Chromium, run once per request, loading a
//! page from a running gateway and either dumping its DOM (as the browser built it) or saving a
//! screenshot. `.ci/run` installs it; the tests that need it fail when it is missing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::PATIENCE;

/// The browser's command (Debian's package installs `chromium`).
const CHROMIUM: &str = "chromium";

fn chromium(profile: &Path, args: &[&str], url: &str) -> Result<Vec<u8>> {
    let mut child = Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {CHROMIUM} (apt install chromium)"))?;
    let mut stdout = child.stdout.take().context("the browser's stdout")?;
    let reading = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).map(|_| out)
    });
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let out = reading.join().map_err(|_| anyhow::anyhow!("reading the browser's output panicked"))??;
            if !status.success() {
                bail!("{CHROMIUM} exited with {status} loading {url}");
            }
            return Ok(out);
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            bail!("{CHROMIUM} did not finish loading {url}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The DOM of `url` after the browser loaded it, serialised as HTML.
pub fn dump_dom(url: &str) -> Result<String> {
    let profile = tempfile::tempdir()?;
    let out = chromium(profile.path(), &["--dump-dom"], url)?;
    String::from_utf8(out).context("the DOM is UTF-8")
}

/// Saves a screenshot of `url`, `width` × `height` pixels, as a PNG at `path`.
pub fn screenshot(url: &str, path: &Path, width: u32, height: u32) -> Result<()> {
    let profile = tempfile::tempdir()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let args = [format!("--screenshot={}", path.display()), format!("--window-size={width},{height}")];
    chromium(profile.path(), &[args[0].as_str(), args[1].as_str()], url)?;
    let png = std::fs::read(path).with_context(|| format!("the browser wrote no {}", path.display()))?;
    if !png.starts_with(b"\x89PNG") {
        bail!("{} is not a PNG", path.display());
    }
    Ok(())
}

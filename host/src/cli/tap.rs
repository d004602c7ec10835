//! `weir tap <pipeline>`: watches what a running gateway's pipeline processes — input messages,
//! decoded readings, readings and windows sent, records for the outbox, dead letters — live in the
//! terminal, from the gateway's HTTP listener (`[http] listen`, `/tap/<pipeline>`).
//!
//! Watching never touches the gateway's data: the gateway copies what it shows into a bounded
//! channel and drops what a slow watcher cannot take (a `missed` line says how much). The tap
//! ends when the gateway stops or on Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// `weir tap`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline to watch.
    pipeline: String,
    /// The gateway's HTTP listener (`[http] listen`).
    #[arg(long, env = "WEIR_HTTP", default_value = "127.0.0.1:9464")]
    address: SocketAddr,
    /// Show only these kinds (repeatable): message, reading, window, record, dead_letter.
    #[arg(long = "kind", value_name = "KIND")]
    kinds: Vec<String>,
    /// Show only readings and windows of series whose name contains this.
    #[arg(long)]
    series: Option<String>,
    /// Print each event as the JSON line the gateway sends.
    #[arg(long)]
    json: bool,
    /// Stop after this many events.
    #[arg(long)]
    limit: Option<u64>,
}

impl Args {
    /// Watches until the gateway stops, the limit is reached or Ctrl-C.
    pub fn execute(self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
        runtime.block_on(async {
            tokio::select! {
                watched = self.watch() => watched,
                interrupted = tokio::signal::ctrl_c() => interrupted.map(|()| ExitCode::SUCCESS).context("cannot wait for Ctrl-C"),
            }
        })
    }

    async fn watch(&self) -> anyhow::Result<ExitCode> {
        let stream = tokio::net::TcpStream::connect(self.address)
            .await
            .with_context(|| format!("cannot reach the gateway at {} (is [http] listen set?)", self.address))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the gateway failed")?;
        tokio::spawn(connection);
        let request = hyper::Request::get(format!("/tap/{}", self.pipeline))
            .header(hyper::header::HOST, self.address.to_string())
            .body(Empty::<Bytes>::new())
            .context("cannot build the request")?;
        let response = sender.send_request(request).await.context("the gateway did not answer")?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let text = body.collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
            bail!("the gateway answered {status}: {}", String::from_utf8_lossy(&text).trim());
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "# tapping {} at {} (Ctrl-C to stop)", self.pipeline, self.address)?;
        out.flush()?;
        let mut pending = Vec::new();
        let mut shown = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the tap was cut off")?;
            let Some(data) = frame.data_ref() else { continue };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                if !self.wanted(&event) {
                    continue;
                }
                if self.json {
                    out.write_all(&line)?;
                } else {
                    writeln!(out, "{}", describe(&event))?;
                }
                out.flush()?;
                shown += 1;
                if self.limit.is_some_and(|limit| shown >= limit) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        writeln!(out, "# the gateway ended the tap")?;
        Ok(ExitCode::SUCCESS)
    }

    fn wanted(&self, event: &Value) -> bool {
        let kind = event["kind"].as_str().unwrap_or_default();
        if kind == "missed" {
            return true;
        }
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == kind) {
            return false;
        }
        match (&self.series, event["series"].as_str()) {
            (Some(wanted), Some(series)) => series.contains(wanted.as_str()),
            (Some(_), None) => false,
            (None, _) => true,
        }
    }
}

/// One event as a line of text.
fn describe(event: &Value) -> String {
    let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
    let number = |key: &str| event[key].as_u64().unwrap_or_default();
    let value = |key: &str| event[key].as_f64().map_or_else(|| "NaN".to_owned(), |v| v.to_string());
    let time = |key: &str| event[key].as_i64().map_or_else(String::new, weir_host::telemetry::format_nanos);
    match event["kind"].as_str().unwrap_or_default() {
        "message" => format!("message  {}  {} B  {}", text("topic"), number("bytes"), text("payload").escape_debug()),
        "reading" => format!("{:<8} {}  {}  {}", text("stage"), text("series"), time("ts"), value("value")),
        "window" => format!(
            "window   {}  {} .. {}  n={} mean={} revision {}",
            text("series"),
            time("start"),
            time("end"),
            number("count"),
            value("mean"),
            number("revision")
        ),
        "record" => format!("record   seq {}  {} B", number("seq"), number("bytes")),
        "dead_letter" => format!("dead     {}: {}", text("stage"), text("reason")),
        "missed" => format!("# missed {} batches: this terminal fell behind the gateway", number("batches")),
        other => format!("{other}  {event}"),
    }
}

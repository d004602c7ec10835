//! Telemetry: log setup and the processing-time clock.
//!
//! Logs are structured `tracing` events on stderr; every event carries a `stage` field naming the
//! part of the data flow that emitted it (`source`, `decode`, `function`, `sandbox`, `pipeline`,
//! `state`, `sink`). They are written as text lines for people or as JSON objects for a log
//! collector ([`LogFormat`]); text is coloured only when stderr is a terminal (and `NO_COLOR` is
//! not set), so a log file or the journal never gets escape codes.
//!
//! Processing time comes from [`now_nanos`] only; the pure stages receive it as a parameter.

use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;

/// Log filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,async_nats=warn,rumqttc=warn";

/// Processing time: nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// How log events are written to stderr (`--log-format`). JSON events carry `timestamp`,
/// `level`, `fields` (`message`, `stage` and the event's other fields), `target` (the module that
/// logged) and the spans the event happened in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

/// Installs the global log subscriber writing `format` to stderr, filtered by `RUST_LOG`
/// (default: `info`, with the broker client libraries' own chatter at `warn`). Calling it twice
/// keeps the first subscriber.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colour_on_stderr()).with_target(false).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Whether text logs may be coloured: stderr is a terminal and `NO_COLOR` is unset or empty.
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

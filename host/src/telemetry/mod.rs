//! Telemetry: log setup, the processing-time clock, and whether the wall clock is synced
//! (`clock.rs`).
//!
//! Logs are structured `tracing` events on stderr; every event carries a `stage` field naming the
//! part of the data flow that emitted it (`source`, `decode`, `function`, `sandbox`, `pipeline`,
//! `state`, `sink`). They are written as text lines for people or as JSON objects for a log
//! collector ([`LogFormat`]); text is coloured only when stderr is a terminal (and `NO_COLOR` is
//! not set), so a log file or the journal never gets escape codes.
//!
//! Processing time comes from [`now_nanos`] only; the pure stages receive it as a parameter.

pub mod clock;

use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,async_nats=warn,rumqttc=warn";

/// Processing time: nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// An event or processing time (ns since the Unix epoch) as RFC 3339 UTC with milliseconds;
/// times before 1970 show as the epoch.
pub fn format_nanos(at: i64) -> String {
    let since = std::time::Duration::from_nanos(u64::try_from(at).unwrap_or(0));
    humantime::format_rfc3339_millis(UNIX_EPOCH + since).to_string()
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
/// (default: `info`, with the broker client libraries' own chatter at `warn`). The filter is a
/// list of `target=level` directives (`weir_host::sink=debug,info`); a `RUST_LOG` that does not
/// parse is reported on stderr and the default is used. Calling it twice keeps the first
/// subscriber.
///
/// Text written to the systemd journal (stderr is the stream `JOURNAL_STREAM` names, as under
/// the shipped unit) is journal-friendly: each line starts with its priority (`<3>` error,
/// `<4>` warning, `<6>` info, `<7>` debug), so `journalctl -p warning` filters by level, and
/// carries no timestamp, as the journal keeps its own.
pub fn init_logging(format: LogFormat) {
    let (filter, refused) = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text if stderr_is_journal() => {
            let lines = tracing_subscriber::fmt::format().with_ansi(false).with_target(false).without_time();
            tracing_subscriber::registry()
                .with(layer.with_ansi(false).event_format(JournalPriority(lines)).with_filter(filter))
                .try_init()
        }
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_ansi(colour_on_stderr()).with_target(false).with_filter(filter))
            .try_init(),
        LogFormat::Json => {
            tracing_subscriber::registry().with(layer.json().with_ansi(false).with_filter(filter)).try_init()
        }
    };
    if let (Ok(()), Some(problem)) = (installed, refused) {
        tracing::warn!(stage = "pipeline", "RUST_LOG is not a log filter ({problem}); logging at the default levels");
    }
}

/// The log filter `RUST_LOG` asks for, or the default one and why `RUST_LOG` was refused.
fn log_filter(rust_log: Option<&str>) -> (Targets, Option<String>) {
    let default = || DEFAULT_FILTER.parse::<Targets>().unwrap_or_default();
    match rust_log.map(str::trim).filter(|value| !value.is_empty()) {
        None => (default(), None),
        Some(value) => match value.parse::<Targets>() {
            Ok(filter) => (filter, None),
            Err(error) => (default(), Some(error.to_string())),
        },
    }
}

/// Whether stderr is the systemd journal's stream: `JOURNAL_STREAM` (`<device>:<inode>`, set by
/// systemd for a service whose output goes to the journal) names the file stderr is.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else { return false };
    // The field types differ between targets.
    #[allow(clippy::unnecessary_cast)]
    let (device, inode) = (stat.st_dev as u64, stat.st_ino as u64);
    journal_stream_is(&stream.to_string_lossy(), device, inode)
}

/// Whether `JOURNAL_STREAM`'s value names the file with `device` and `inode`.
fn journal_stream_is(value: &str, device: u64, inode: u64) -> bool {
    value.split_once(':').is_some_and(|(d, i)| d.parse() == Ok(device) && i.parse() == Ok(inode))
}

/// A log line for the journal: the `sd-daemon` priority prefix, then the line `F` writes.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", journal_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The syslog priority of a level, as the journal reads it from a line's `<N>` prefix.
fn journal_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        tracing::Level::DEBUG | tracing::Level::TRACE => 7,
    }
}

/// Whether text logs may be coloured: stderr is a terminal and `NO_COLOR` is unset or empty.
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn the_journal_is_recognised_by_its_stream_and_gets_priorities() {
        assert!(journal_stream_is("8:12345", 8, 12345));
        assert!(!journal_stream_is("8:12345", 8, 999), "another file: stderr was redirected");
        assert!(!journal_stream_is("garbage", 8, 12345));
        assert_eq!(journal_priority(Level::ERROR), 3);
        assert_eq!(journal_priority(Level::WARN), 4);
        assert_eq!(journal_priority(Level::INFO), 6);
        assert_eq!(journal_priority(Level::TRACE), 7);
    }

    #[test]
    fn the_default_filter_quiets_the_broker_clients() {
        let (filter, refused) = log_filter(None);
        assert!(refused.is_none());
        assert!(filter.would_enable("weir_host::sink", &Level::INFO));
        assert!(!filter.would_enable("weir_host::sink", &Level::DEBUG));
        assert!(!filter.would_enable("rumqttc::state", &Level::INFO));
        assert!(filter.would_enable("async_nats", &Level::WARN));
    }

    #[test]
    fn rust_log_directives_choose_levels_per_module() {
        let (filter, refused) = log_filter(Some("weir_host::sink=debug,warn"));
        assert!(refused.is_none());
        assert!(filter.would_enable("weir_host::sink::nats", &Level::DEBUG));
        assert!(!filter.would_enable("weir_host::source", &Level::INFO));
        assert!(filter.would_enable("weir_host::source", &Level::WARN));
    }

    #[test]
    fn a_rust_log_that_does_not_parse_is_refused_with_its_reason() {
        let (filter, refused) = log_filter(Some("weir_host=loud"));
        assert!(refused.is_some_and(|reason| !reason.is_empty()));
        assert!(filter.would_enable("weir_host", &Level::INFO));
    }
}

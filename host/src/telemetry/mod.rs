//! Telemetry: log setup and the processing-time clock.
//!
//! Logs are structured `tracing` events; every event carries a `stage` field naming the part of the
//! data flow that emitted it (`source`, `decode`, `function`, `sandbox`, `pipeline`, `state`, `sink`).
//! Processing time comes from [`now_nanos`] only; the pure stages receive it as a parameter.

use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;

/// Log filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,async_nats=warn,rumqttc=warn";

/// Processing time: nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Installs the global log subscriber: human-readable lines on stderr, filtered by `RUST_LOG`
/// (default: `info`, with the broker client libraries' own chatter at `warn`). Calling it twice
/// keeps the first subscriber.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

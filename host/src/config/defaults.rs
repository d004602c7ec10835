//! The value of every optional setting left out of the file: one place, read by the validators
//! and by the validated types' own defaults ([`super::FunctionLimits::DEFAULT`],
//! [`super::QuarantineConfig::DEFAULT`]). docs/configuration.md states each of them.

use std::time::Duration;

/// A quiet series' held reading waits this long for the next one.
pub(super) const DOWNSAMPLE_IDLE: Duration = Duration::from_secs(60);
pub(super) const MEMORY: u64 = 32 * 1024 * 1024;
pub(super) const TIMEOUT: Duration = Duration::from_millis(100);
pub(super) const TABLE_ELEMENTS: u32 = 100_000;
/// A component is a handful of core instances (the module, adapters, shims).
pub(super) const INSTANCES: u32 = 32;
pub(super) const STATE_WRITES: u64 = 8 * 1024 * 1024;
pub(super) const STATE_QUOTA: u64 = 16 * 1024 * 1024;
pub(super) const QUARANTINE_AFTER: u32 = 5;
pub(super) const QUARANTINE_FOR: Duration = Duration::from_secs(60);
pub(super) const MAX_KEY: u32 = 1024;
pub(super) const MAX_VALUE: u32 = 1024 * 1024;
pub(super) const DEAD_LETTERS: u64 = 10_000;
pub(super) const MAX_MESSAGE_SIZE: u64 = 4 * 1024 * 1024;
/// Bytes the dead letters may take by default.
pub(super) const DEAD_LETTER_BYTES: u64 = 32 * 1024 * 1024;
/// How often a fleet gateway writes its status.
/// `[http] ready_confirmed_within`: an uplink silent this long with records waiting is not ready.
pub(super) const READY_CONFIRMED_WITHIN: Duration = Duration::from_secs(5 * 60);
/// `[http] ready_oldest_below`: a record waiting this long makes its pipeline not ready.
pub(super) const READY_OLDEST_BELOW: Duration = Duration::from_secs(15 * 60);
/// `[http] ready_outbox_percent`: the outbox's high-water mark, in percent of `max_bytes`.
pub(super) const READY_OUTBOX_PERCENT: u64 = 80;
pub(super) const FLEET_HEARTBEAT: Duration = Duration::from_secs(30);
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(30);
pub(super) const RECONNECT_MIN: Duration = Duration::from_millis(100);
pub(super) const RECONNECT_MAX: Duration = Duration::from_secs(30);
pub(super) const MAX_MESSAGES: usize = 1000;
pub(super) const MAX_BYTES: u64 = 1024 * 1024;
pub(super) const LINGER: Duration = Duration::from_millis(100);
pub(super) const QUEUE: usize = 4096;
pub(super) const MAX_IN_FLIGHT: usize = 64;
pub(super) const MQTT_INFLIGHT: usize = 20;
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const SERIES_SHOWN: usize = 4;
pub(super) const OUTBOX_MAX_BYTES: u64 = 128 * 1024 * 1024;
pub(super) const BACKLOG_RATE: u64 = 256 * 1024;
/// A sensor's `heartbeat`: with `on_change`, an unchanged quantity is reported this often.
pub(super) const SENSOR_HEARTBEAT: Duration = Duration::from_secs(5 * 60);
/// A sensor's `retries`: immediate retries of a failed sample.
pub(super) const SENSOR_RETRIES: u32 = 2;
/// A sensor's `reinit_after`: consecutive failed samples before it is initialised again.
pub(super) const SENSOR_REINIT_AFTER: u32 = 3;
/// A sensor's `max_backoff`: the longest wait between initialisation attempts.
pub(super) const SENSOR_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// `[…buses.<bus>] max_speed_hz`: an SPI clock every supported part takes.
pub(super) const SPI_MAX_SPEED_HZ: u32 = 1_000_000;
/// `[…devices.simulation] toggle_every`: how often a simulated line changes level.
pub(super) const SIMULATED_TOGGLE_EVERY: Duration = Duration::from_secs(5);

//! The `sensors` source: devices on the gateway's own buses — I²C, SPI and GPIO lines — sampled on
//! a schedule and fed into the pipeline like any broker's messages.
//!
//! **Threads.** Linux bus calls block, so each bus is owned by one OS thread (`bus.rs`) that
//! opens its device node, drives every device on it in turn and never touches the async runtime
//! except to hand over a message (`blocking_send`: a full pipeline holds the thread, and the
//! ticks that pass meanwhile are skipped and counted — see `schedule.rs`). A panicking driver is
//! caught and counted as a fault of its device; other devices, buses and pipelines go on.
//!
//! **Messages.** Each sample of a device becomes one message on topic `sensors/<bus>/<device>`
//! whose payload is a weir record (docs/batch-format.md) of that sample's readings: series
//! `<series>/<quantity>` with their units, event time the wall clock when the sample was taken,
//! and the tag `clock = "unsynced"` when the wall clock was not yet synced (the gateway's
//! `[fleet] clock_synced`, by default the kernel's NTP status). The pipeline decodes it with the
//! built-in `weir_record` decoder, then batches, runs operators, windows and commits it as it
//! would any message.
//!
//! **Durability (at most once).** A sample exists only in memory until its batch commits; then
//! it is as durable as any reading. A crash or power loss loses the samples taken and not yet
//! committed: at most `batch.queue` messages waiting for the batcher, plus the batch being
//! filled (at most `batch.max_messages` messages, or `batch.linger` of sampling), plus the batch
//! being processed — each message one device's sample. Nothing is sampled twice to make up.
//!
//! **Health.** Each device has its own retries, re-initialisation and backoff (`health.rs`); its
//! status is published on the gateway's [`SensorBoard`] for `weir outbox stats`, the status page,
//! `/readyz` and the metrics. The pipeline's source link is up while any of its devices is not
//! down.

mod bus;
mod drivers;
mod health;
mod nodes;
mod reporting;
mod schedule;
mod simulated;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Delivery;
use crate::config::{ClockSynced, SensorsConfig};
use crate::observe::{Link, SensorBoard};
use crate::shutdown::Tasks;

/// What a sensors source needs from the gateway beyond its configuration.
#[derive(Clone, Debug)]
pub struct SensorContext {
    /// The gateway's id (in the records it writes).
    pub gateway: String,
    /// Where devices publish their status.
    pub board: SensorBoard,
    /// How to tell whether the wall clock is synced.
    pub clock: ClockSynced,
}

/// Which of a pipeline's devices are down, to keep its source link honest.
#[derive(Debug)]
struct DownCount {
    devices: usize,
    down: AtomicUsize,
    link: Link,
}

impl DownCount {
    fn changed(&self, was_down: bool, is_down: bool) {
        let down = match (was_down, is_down) {
            (false, true) => self.down.fetch_add(1, Ordering::AcqRel) + 1,
            (true, false) => self.down.fetch_sub(1, Ordering::AcqRel) - 1,
            _ => return,
        };
        if down == self.devices { self.link.down() } else { self.link.up() }
    }
}

/// Starts one thread per bus of `config`, for `pipeline`; they stop when `intake` is cancelled
/// (the pipeline then drains what they sent). A task on `tasks` waits for them.
pub fn spawn(
    pipeline: &str,
    config: SensorsConfig,
    context: &SensorContext,
    deliveries: mpsc::Sender<Delivery>,
    intake: CancellationToken,
    connection: Link,
    tasks: &Tasks,
) {
    let devices = config.buses.iter().map(|bus| bus.devices.len()).sum();
    connection.up();
    let down = Arc::new(DownCount { devices, down: AtomicUsize::new(0), link: connection });
    let mut threads = Vec::new();
    for bus in config.buses {
        let thread = bus::BusThread {
            pipeline: pipeline.to_owned(),
            bus,
            context: context.clone(),
            deliveries: deliveries.clone(),
            intake: intake.clone(),
            down: Arc::clone(&down),
        };
        let name = format!("weir-bus-{}", thread.bus.name);
        let (pipeline_name, bus_name) = (pipeline.to_owned(), thread.bus.name.to_string());
        let run = move || {
            // Drivers' panics are caught per call (`bus.rs`); this is for the thread's own.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| thread.run())).is_err() {
                tracing::error!(stage = "source", pipeline = %pipeline_name, bus = %bus_name,
                    "the bus thread panicked; its devices are no longer sampled");
            }
        };
        match std::thread::Builder::new().name(name).spawn(run) {
            Ok(handle) => threads.push(handle),
            Err(e) => tracing::error!(stage = "source", pipeline = %pipeline, error = %e, "cannot start a bus thread"),
        }
    }
    drop(deliveries);
    tasks.spawn(format!("{pipeline} source"), async move {
        intake.cancelled().await;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    });
}

//! One bus's thread: opens the bus (`nodes.rs`; trying again with backoff while its node cannot
//! be opened), and until the pipeline stops taking input, samples each of its devices when due,
//! keeps their health, and sends their samples as messages.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_record::{Encoding, RecordHeader};

use super::drivers::{Quantity, Sensor};
use super::health::{AfterFailure, Fault, FaultKind, Health};
use super::nodes;
use super::reporting::Reported;
use super::schedule::Schedule;
use super::{DownCount, SensorContext};
use crate::backoff::Retry;
use crate::batch::{BatchBuilder, Message, Series};
use crate::config::{Backoff, SensorBus, SensorDevice};
use crate::source::Delivery;
use crate::state::stats::SensorStatus;
use crate::telemetry::{clock, now_nanos};

/// The longest the thread sleeps before it looks at its stop token again.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// How long the clock's synced state is trusted before it is asked again.
const CLOCK_CHECK: Duration = Duration::from_secs(10);
/// Pause before an immediate retry of a failed attempt, doubled per retry.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Waits between attempts to open a bus's device node.
const BUS_RETRY_MIN: Duration = Duration::from_secs(1);
const BUS_RETRY_MAX: Duration = Duration::from_secs(60);

/// A bus and what its thread needs.
#[derive(Debug)]
pub(super) struct BusThread {
    pub(super) pipeline: String,
    pub(super) bus: SensorBus,
    pub(super) context: SensorContext,
    pub(super) deliveries: mpsc::Sender<Delivery>,
    pub(super) intake: CancellationToken,
    pub(super) down: Arc<DownCount>,
}

/// One device on the thread.
struct Running {
    config: SensorDevice,
    sensor: Box<dyn Sensor>,
    health: Health,
    schedule: Schedule,
    board_slot: usize,
    sequence: u64,
    /// Which quantities a sample reports.
    reported: Reported,
}

impl BusThread {
    /// Runs until the pipeline stops taking input.
    pub(super) fn run(self) {
        let slots: Vec<usize> = self.bus.devices.iter().map(|d| self.context.board.add(self.status_of(d))).collect();
        // A node that is not there yet (a module loaded late, a USB adapter plugged in later) is
        // tried again, with backoff, until the pipeline stops.
        let mut retry = Retry::new(Backoff { min: BUS_RETRY_MIN, max: BUS_RETRY_MAX });
        let mut rng = StdRng::from_os_rng();
        let mut reported = false;
        loop {
            match nodes::open(&self.bus) {
                Ok(sensors) => {
                    if reported {
                        tracing::info!(stage = "source", pipeline = %self.pipeline, bus = %self.bus.name, "bus opened");
                        (0..slots.len()).for_each(|_| self.down.changed(true, false));
                    }
                    return self.drive(sensors, &slots);
                }
                Err(reason) => {
                    if !reported {
                        tracing::error!(stage = "source", pipeline = %self.pipeline, bus = %self.bus.name,
                            error = %reason, "bus not opened; its devices are down until it opens");
                    }
                    self.report_unopened(&slots, &reason, !reported);
                    reported = true;
                    if !self.wait_until(Instant::now() + retry.next_delay(&mut rng)) {
                        return;
                    }
                }
            }
        }
    }

    /// The devices of a bus that could not be opened: down, with the reason (each attempt counts
    /// as an `io` fault); `first` when they were not down before.
    fn report_unopened(&self, slots: &[usize], reason: &str, first: bool) {
        for (device, &slot) in self.bus.devices.iter().zip(slots) {
            let mut status = self.context.board.get(slot).unwrap_or_else(|| self.status_of(device));
            if first {
                status.state = "down".to_owned();
                status.since = now_nanos();
                self.down.changed(false, true);
            }
            *status.faults.entry(FaultKind::Io.name().to_owned()).or_insert(0) += 1;
            status.last_fault = Some(format!("io: {reason}"));
            self.context.board.set(slot, &status);
        }
    }

    fn status_of(&self, device: &SensorDevice) -> SensorStatus {
        SensorStatus {
            pipeline: self.pipeline.clone(),
            device: device.name.to_string(),
            part: device.driver.part().to_owned(),
            bus: match device.driver.place(self.bus.kind.protocol()) {
                Some(place) => format!("{} {place}", self.bus.kind.describe()),
                None => self.bus.kind.describe(),
            },
            state: "starting".to_owned(),
            since: now_nanos(),
            ..SensorStatus::default()
        }
    }

    /// Samples `sensors`, the drivers of the bus's devices in order, until the pipeline stops.
    fn drive(self, sensors: Vec<Box<dyn Sensor>>, slots: &[usize]) {
        let start = Instant::now();
        let mut devices: Vec<Running> = self
            .bus
            .devices
            .iter()
            .zip(slots)
            .zip(sensors)
            .map(|((config, &board_slot), sensor)| {
                let status = self.status_of(config);
                self.context.board.set(board_slot, &status);
                Running {
                    sensor,
                    health: Health::new(config.health, config.interval, status),
                    schedule: Schedule::new(start, config.interval),
                    config: config.clone(),
                    board_slot,
                    sequence: 0,
                    reported: Reported::new(config.reporting),
                }
            })
            .collect();
        let mut rng = StdRng::from_os_rng();
        let mut synced = (clock::is_synced(&self.context.clock), Instant::now());
        loop {
            let Some(index) = (0..devices.len()).min_by_key(|&i| devices[i].schedule.due()) else { return };
            if !self.wait_until(devices[index].schedule.due()) {
                return;
            }
            if synced.1.elapsed() >= CLOCK_CHECK {
                synced = (clock::is_synced(&self.context.clock), Instant::now());
            }
            let device = &mut devices[index];
            let was_down = device.health.status().state == "down";
            let message = self.serve(device, synced.0, &mut rng);
            let is_down = device.health.status().state == "down";
            self.down.changed(was_down, is_down);
            self.context.board.set(device.board_slot, device.health.status());
            if let Some(message) = message
                && self.deliveries.blocking_send(Delivery::unacknowledged(message)).is_err()
            {
                return;
            }
        }
    }

    /// Sleeps until `due`, waking to look at the stop token; false when the pipeline stopped.
    fn wait_until(&self, due: Instant) -> bool {
        loop {
            if self.intake.is_cancelled() {
                return false;
            }
            let now = Instant::now();
            if now >= due {
                return true;
            }
            std::thread::sleep((due - now).min(STOP_CHECK));
        }
    }

    /// Serves a device's due tick: initialises it if it needs it, samples it with retries, and
    /// returns the message of its readings, if any are to be reported.
    fn serve(&self, device: &mut Running, clock_synced: bool, rng: &mut StdRng) -> Option<Message> {
        if device.health.needs_init() {
            match guarded(|| device.sensor.init()) {
                Ok(()) => {
                    device.health.initialised(now_nanos());
                    tracing::info!(stage = "source", pipeline = %self.pipeline, device = %device.config.name,
                        part = device.config.driver.part(), "sensor initialised");
                }
                Err(fault) => {
                    let first = device.health.status().state != "down";
                    let wait = device.health.init_failed(&fault, now_nanos(), rng);
                    if first {
                        tracing::warn!(stage = "source", pipeline = %self.pipeline, device = %device.config.name,
                            fault = %fault, "sensor down; initialising it again with backoff");
                    }
                    device.schedule.postpone(Instant::now(), wait);
                    return None;
                }
            }
        }
        let started = Instant::now();
        let mut sampled = None;
        for attempt in 0..=device.health.retries() {
            match guarded(|| device.sensor.measure()).and_then(finite) {
                Ok(quantities) => {
                    sampled = Some(quantities);
                    break;
                }
                Err(fault) => {
                    device.health.attempt_failed(&fault);
                    if attempt < device.health.retries() {
                        std::thread::sleep(RETRY_PAUSE * 2u32.pow(attempt));
                    }
                }
            }
        }
        let took = started.elapsed();
        let now = now_nanos();
        let message = match sampled {
            Some(quantities) => {
                if took > device.config.interval {
                    device.health.slow(took);
                }
                let values: Vec<f64> = quantities.iter().map(|q| q.value).collect();
                let before = device.health.status().state.clone();
                if device.health.sampled(&values, now) == AfterFailure::Reinitialise {
                    self.reinitialising(device);
                } else if before != "ok" && before != "starting" && device.health.status().state == "ok" {
                    tracing::info!(stage = "source", pipeline = %self.pipeline, device = %device.config.name,
                        "sensor recovered");
                }
                self.message(device, &quantities, now, clock_synced)
            }
            None => {
                let was_ok = device.health.status().state == "ok";
                if device.health.sample_failed(now) == AfterFailure::Reinitialise {
                    self.reinitialising(device);
                } else if was_ok {
                    tracing::warn!(stage = "source", pipeline = %self.pipeline, device = %device.config.name,
                        fault = device.health.status().last_fault.as_deref().unwrap_or(""), "sensor degraded");
                }
                None
            }
        };
        let skipped = device.schedule.advance(Instant::now());
        device.health.skipped(skipped);
        message
    }

    fn reinitialising(&self, device: &Running) {
        tracing::warn!(stage = "source", pipeline = %self.pipeline, device = %device.config.name,
            fault = device.health.status().last_fault.as_deref().unwrap_or(""),
            "sensor failed {} samples in a row; initialising it again", device.config.health.reinit_after);
    }

    /// The message of a sample: the quantities to report, as a weir record.
    fn message(&self, device: &mut Running, quantities: &[Quantity], at: i64, clock_synced: bool) -> Option<Message> {
        let now = Instant::now();
        let mut builder = BatchBuilder::new();
        for quantity in quantities {
            if !device.reported.report(quantity.name, quantity.value, now) {
                continue;
            }
            let mut series =
                Series::named(format!("{}/{}", device.config.series, quantity.name)).with_unit(quantity.unit);
            if !clock_synced {
                series.tags.push(("clock".to_owned(), "unsynced".to_owned()));
            }
            let index = builder.intern(&series);
            builder.push(index, at, quantity.value);
        }
        if builder.is_empty() {
            return None;
        }
        device.sequence += 1;
        let header = RecordHeader {
            gateway: self.context.gateway.clone(),
            stream: device.config.name.to_string(),
            seq: device.sequence,
            encoded_at: at,
        };
        match weir_record::write_readings(Encoding::Cbor, &header, &builder.finish()) {
            Ok(payload) => Some(Message {
                topic: format!("sensors/{}/{}", self.bus.name, device.config.name),
                payload: payload.into(),
                received_at: at,
            }),
            Err(e) => {
                // Only finite values get here, which the record format takes; this is a backstop.
                device.health.attempt_failed(&Fault::new(FaultKind::Data, format!("a reading cannot be encoded: {e}")));
                None
            }
        }
    }
}

/// The quantities of a sample, or a `data` fault when one is NaN or infinite (a part's nonsense,
/// such as a compensation dividing by a zeroed calibration): such a value is not a reading.
fn finite(quantities: Vec<Quantity>) -> Result<Vec<Quantity>, Fault> {
    match quantities.iter().find(|q| !q.value.is_finite()) {
        Some(q) => Err(Fault::new(FaultKind::Data, format!("the driver gave {} = {}", q.name, q.value))),
        None => Ok(quantities),
    }
}

/// Runs a driver call, turning a panic into a `data` fault of its device.
fn guarded<T>(call: impl FnOnce() -> Result<T, Fault>) -> Result<T, Fault> {
    catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Err(Fault::new(FaultKind::Data, format!("the driver panicked: {what}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_driver_and_a_value_that_is_no_reading_are_data_faults() {
        let fault = guarded::<()>(|| panic!("attempt to divide by zero")).expect_err("a panic is a fault");
        assert_eq!(fault.kind, FaultKind::Data);
        assert!(fault.detail.contains("the driver panicked: attempt to divide by zero"), "{fault}");

        let reading = |value| Quantity { name: "temperature", unit: "Cel", value };
        assert!(finite(vec![reading(21.5)]).is_ok());
        for value in [f64::NAN, f64::INFINITY] {
            let fault = finite(vec![reading(21.5), reading(value)]).expect_err("not a reading");
            assert_eq!(fault.kind, FaultKind::Data);
            assert!(fault.detail.contains("temperature"), "{fault}");
        }
    }
}

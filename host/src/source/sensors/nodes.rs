//! Opening a bus for its thread: a Linux device node — an I²C adapter (`/dev/i2c-N`), an SPI
//! chip select (`/dev/spidevB.C`), a GPIO chip (`/dev/gpiochipN`) — or a simulated bus, and the
//! driver of each of its devices on it, in the devices' order.
//!
//! An I²C adapter is shared by its devices (`RcDevice`); an SPI node is one device; a GPIO chip
//! stays open and each digital input requests its own line (again at each initialisation).

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use embedded_hal::i2c::I2c;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
use linux_embedded_hal::{CdevPin, Delay, I2cdev, SpidevDevice};

use super::drivers::{self, DigitalInput, Sensor};
use super::health::{Fault, FaultKind};
use super::simulated::{SimulatedBus, SimulatedLine, SimulatedSpi};
use crate::config::{BusKind, BusProtocol, DriverConfig, SensorBus, SensorDevice};

/// The name a GPIO line is requested under, as `gpioinfo` shows its consumer.
const CONSUMER: &str = "weir";

/// Opens a bus with a device node; `Err` says why it could not be opened. A simulated bus always
/// opens.
pub(super) fn open(bus: &SensorBus) -> Result<Vec<Box<dyn Sensor>>, String> {
    let devices = &bus.devices;
    if let Some(path) = bus.kind.node() {
        refuse_fifo(path)?;
    }
    match &bus.kind {
        BusKind::I2c(path) => {
            let adapter = I2cdev::new(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            Ok(on_i2c(devices, adapter))
        }
        BusKind::Spi { path, max_speed_hz } => {
            let mut spi = SpidevDevice::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            // Mode 0, which every supported part takes, eight bits a word, most significant first.
            let options = SpidevOptions::new()
                .bits_per_word(8)
                .max_speed_hz(*max_speed_hz)
                .mode(SpiModeFlags::SPI_MODE_0)
                .build();
            spi.configure(&options).map_err(|e| format!("cannot configure {}: {e}", path.display()))?;
            // One chip select, so one device (the configuration has it so).
            let mut node = Some(spi);
            Ok(devices
                .iter()
                .filter_map(|device| Some(drivers::open_spi(&device.driver, node.take()?, Delay)))
                .collect())
        }
        BusKind::Gpio(path) => {
            let chip = Chip::new(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let chip = Rc::new(RefCell::new(chip));
            Ok(devices
                .iter()
                .map(|device| {
                    let chip = Rc::clone(&chip);
                    digital_input(&device.driver, move |line| request_line(&chip, line))
                })
                .collect())
        }
        BusKind::Simulated(protocol) => Ok(simulated(*protocol, devices)),
    }
}

/// Refuses a FIFO named as a node: opening one waits for a writer, which would hold the bus
/// thread (and the pipeline's stop) for good. Anything else is left to the open and its ioctls.
fn refuse_fifo(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.file_type().is_fifo() => {
            Err(format!("cannot open {}: it is a FIFO, not a device node", path.display()))
        }
        _ => Ok(()),
    }
}

/// The drivers of `devices` sharing `adapter`.
fn on_i2c<B>(devices: &[SensorDevice], adapter: B) -> Vec<Box<dyn Sensor>>
where
    B: I2c + 'static,
    B::Error: std::fmt::Display,
{
    let adapter = Rc::new(RefCell::new(adapter));
    devices.iter().map(|device| drivers::open_i2c(&device.driver, &adapter, Delay)).collect()
}

/// The simulated bus of `devices`.
fn simulated(protocol: BusProtocol, devices: &[SensorDevice]) -> Vec<Box<dyn Sensor>> {
    let simulation = |device: &SensorDevice| device.simulation.clone().unwrap_or_default();
    match protocol {
        BusProtocol::I2c => {
            let mut bus = SimulatedBus::new();
            for device in devices {
                bus.attach(&device.driver, &simulation(device));
            }
            on_i2c(devices, bus)
        }
        BusProtocol::Spi => devices
            .iter()
            .take(1)
            .map(|device| {
                drivers::open_spi(&device.driver, SimulatedSpi::new(&device.driver, &simulation(device)), Delay)
            })
            .collect(),
        BusProtocol::Gpio => devices
            .iter()
            .map(|device| {
                let line = SimulatedLine::new(&simulation(device));
                digital_input(&device.driver, move |_| line.request())
            })
            .collect(),
    }
}

/// The digital input `driver` describes, its line requested through `request`.
fn digital_input<R, P>(driver: &DriverConfig, mut request: R) -> Box<dyn Sensor>
where
    R: FnMut(u32) -> Result<P, Fault> + 'static,
    P: embedded_hal::digital::InputPin + 'static,
    P::Error: std::fmt::Display,
{
    let (line, active_low) = match *driver {
        DriverConfig::DigitalInput { line, active_low } => (line, active_low),
        // The configuration puts only digital inputs on GPIO; this one is never read.
        _ => (u32::MAX, false),
    };
    Box::new(DigitalInput::new(move || request(line), active_low))
}

/// Requests `line` of `chip` as an input.
fn request_line(chip: &RefCell<Chip>, line: u32) -> Result<CdevPin, Fault> {
    let requested = chip
        .borrow_mut()
        .get_line(line)
        .and_then(|l| l.request(LineRequestFlags::INPUT, 0, CONSUMER))
        .and_then(CdevPin::new);
    requested.map_err(|e| Fault::new(FaultKind::Io, format!("cannot request line {line}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_named_as_a_node_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("gpiochip9");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs").success());
        for kind in [
            BusKind::Gpio(fifo.clone()),
            BusKind::I2c(fifo.clone()),
            BusKind::Spi { path: fifo.clone(), max_speed_hz: 1_000_000 },
        ] {
            let bus = SensorBus { name: "pins".parse().expect("a name"), kind, devices: Vec::new() };
            let refused = open(&bus).err().expect("refused");
            assert!(refused.contains("it is a FIFO, not a device node"), "{refused}");
        }
    }
}

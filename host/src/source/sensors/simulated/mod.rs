//! Simulated buses: I²C and SPI devices that answer from register maps (`i2cdump` files, or a map
//! of the part built into weir), with each part's few behaviours its driver relies on, slowly
//! moving measurements, and scripted faults; and GPIO lines whose level changes on a schedule.
//!
//! They implement embedded-hal's `I2c` ([`SimulatedBus`]), `SpiDevice` ([`SimulatedSpi`],
//! `spi.rs`) and `InputPin` ([`SimulatedLine`], `gpio.rs`), so the real drivers run against them
//! unchanged, on the same bus thread a Linux bus would have. What is simulated (`chips.rs`):
//! - registers: a write sets the pointer and writes the bytes after it (8-bit registers
//!   auto-increment; a 16-bit register takes two bytes, most significant first); a read returns
//!   bytes from the pointer on. A register the map marks `XX` is not acknowledged;
//! - per part: a BME280's soft reset and forced mode (the conversion is done at once and the part
//!   goes back to sleep); an ADS1115's one-shot conversion of the selected input at the selected
//!   gain; an INA219's reset and its current and power registers, computed from its calibration;
//! - movement: each new measurement adds a triangle wave of `wobble` LSB to the raw readings, so
//!   consecutive samples differ as a live sensor's do;
//! - on SPI, a register part's frame: the first byte is a register's address, its top bit set to
//!   read (the bytes after it answer from that register on) or cleared to write (then a value,
//!   and more address and value pairs);
//! - faults, by time since the bus opened: `nack` (I²C: the address is not acknowledged),
//!   `remote_io` (every transfer, or line read, fails with the kernel's EREMOTEIO), `stuck`
//!   (measurements, or a line's level, stop moving), `slow` (every transfer takes `delay` longer).

mod chips;
mod gpio;
mod spi;

use std::fmt;
use std::time::{Duration, Instant};

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

use crate::config::{DeviceSimulation, DriverConfig, FaultScript, ScriptedFault};
use chips::Chip;
pub use gpio::SimulatedLine;
pub use spi::SimulatedSpi;

/// An error of the simulated bus, shaped like Linux's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatedError {
    kind: ErrorKind,
    message: String,
}

impl fmt::Display for SimulatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl SimulatedError {
    /// The kernel's EREMOTEIO, as a scripted `remote_io` fault gives it.
    fn remote_io() -> Self {
        Self { kind: ErrorKind::Other, message: "Remote I/O error (os error 121)".to_owned() }
    }
}

impl embedded_hal::i2c::Error for SimulatedError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl embedded_hal::spi::Error for SimulatedError {
    fn kind(&self) -> embedded_hal::spi::ErrorKind {
        embedded_hal::spi::ErrorKind::Other
    }
}

impl embedded_hal::digital::Error for SimulatedError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

/// The fault of kind `fault` scripted for `since_open` after the bus opened, if one is.
fn active(faults: &[ScriptedFault], since_open: Duration, fault: FaultScript) -> Option<&ScriptedFault> {
    faults.iter().find(|f| f.fault == fault && f.from <= since_open && since_open < f.until)
}

/// One simulated device.
#[derive(Debug)]
struct Device {
    address: u8,
    chip: Chip,
    faults: Vec<ScriptedFault>,
}

/// A simulated I²C bus and its devices.
#[derive(Debug)]
pub struct SimulatedBus {
    devices: Vec<Device>,
    opened: Instant,
}

impl SimulatedBus {
    /// A bus opened now, with no devices.
    pub fn new() -> Self {
        Self { devices: Vec::new(), opened: Instant::now() }
    }

    /// Adds the device `driver` describes, simulated as `simulation` says (a part without
    /// registers is not on I²C, and never answers).
    pub fn attach(&mut self, driver: &DriverConfig, simulation: &DeviceSimulation) {
        if let (Some(address), Some(chip)) = (driver.address(), Chip::new(driver, simulation)) {
            self.devices.push(Device { address, chip, faults: simulation.faults.clone() });
        }
    }
}

impl Default for SimulatedBus {
    fn default() -> Self {
        Self::new()
    }
}

impl ErrorType for SimulatedBus {
    type Error = SimulatedError;
}

fn nack(address: u8, source: NoAcknowledgeSource, what: &str) -> SimulatedError {
    SimulatedError {
        kind: ErrorKind::NoAcknowledge(source),
        message: format!("0x{address:02x} did not acknowledge {what}"),
    }
}

impl I2c for SimulatedBus {
    fn transaction(&mut self, address: u8, operations: &mut [Operation<'_>]) -> Result<(), Self::Error> {
        let since_open = self.opened.elapsed();
        let Some(device) = self.devices.iter_mut().find(|d| d.address == address) else {
            return Err(nack(address, NoAcknowledgeSource::Address, "its address (no device there)"));
        };
        if let Some(slow) = active(&device.faults, since_open, FaultScript::Slow) {
            std::thread::sleep(slow.delay);
        }
        if active(&device.faults, since_open, FaultScript::Nack).is_some() {
            return Err(nack(address, NoAcknowledgeSource::Address, "its address"));
        }
        if active(&device.faults, since_open, FaultScript::RemoteIo).is_some() {
            return Err(SimulatedError::remote_io());
        }
        let stuck = active(&device.faults, since_open, FaultScript::Stuck).is_some();
        for operation in operations {
            match operation {
                Operation::Write(bytes) => device.chip.write(bytes, stuck),
                Operation::Read(buffer) => {
                    device.chip.read(buffer, stuck).map_err(|register| {
                        nack(address, NoAcknowledgeSource::Data, &format!("a read of register 0x{register:02x}"))
                    })?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

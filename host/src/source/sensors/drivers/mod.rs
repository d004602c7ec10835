//! Drivers: one per supported part, each turning the part's bus protocol into named quantities
//! with units. Parts come from maintained embedded-hal 1.0 crates (`bme280`, `ads1x1x`, `ina219`,
//! `tmp1x2`); this module adapts each to [`Sensor`] and sorts its errors into [`FaultKind`]s. A
//! BME280 on SPI is the I²C driver over [`RegistersOverSpi`]; a GPIO line is a [`DigitalInput`].
//!
//! A driver owns a handle on its bus (shared with the bus's other devices on the bus thread) and
//! a delay. It never retries or sleeps beyond what its part's protocol needs: retries, backoff
//! and re-initialisation are the health policy's (`health.rs`).

mod ads1115;
mod bme280;
mod digital_input;
mod ina219;
mod spi;
mod tmp102;

use std::cell::RefCell;
use std::fmt::Display;
use std::rc::Rc;

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{ErrorKind, I2c};
use embedded_hal::spi::SpiDevice;
use embedded_hal_bus::i2c::RcDevice;

pub use ads1115::Ads1115;
pub use bme280::Bme280;
pub use digital_input::DigitalInput;
pub use ina219::Ina219;
pub use spi::RegistersOverSpi;
pub use tmp102::Tmp102;

use super::health::{Fault, FaultKind};
use crate::config::DriverConfig;

/// One measured quantity of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantity {
    /// Its name, the last part of its series' name (`temperature`).
    pub name: &'static str,
    /// Its unit (UCUM-style: `Cel`, `%`, `hPa`, `V`, `A`, `W`).
    pub unit: &'static str,
    /// The value.
    pub value: f64,
}

/// A part on a bus.
pub trait Sensor {
    /// Brings the part into its measuring configuration (again, after faults).
    fn init(&mut self) -> Result<(), Fault>;
    /// Takes one sample.
    fn measure(&mut self) -> Result<Vec<Quantity>, Fault>;
}

/// The driver of `config` on an I²C bus shared by the bus thread's devices.
pub fn open_i2c<B, D>(config: &DriverConfig, bus: &Rc<RefCell<B>>, delay: D) -> Box<dyn Sensor>
where
    B: I2c + 'static,
    B::Error: Display,
    D: DelayNs + 'static,
{
    let device = RcDevice::new(Rc::clone(bus));
    match config {
        DriverConfig::Bme280 { address } => Box::new(Bme280::new(device, *address, delay)),
        DriverConfig::Ads1115 { address, channels, full_scale } => {
            Box::new(Ads1115::new(device, *address, channels.clone(), *full_scale, delay))
        }
        DriverConfig::Ina219 { address, shunt_micro_ohms, current_lsb_micro_amps } => {
            Box::new(Ina219::new(device, *address, *shunt_micro_ohms, *current_lsb_micro_amps))
        }
        DriverConfig::Tmp102 { address } => Box::new(Tmp102::new(device, *address)),
        DriverConfig::DigitalInput { .. } => Box::new(NotOnThisBus("a digital input is a GPIO line, not on I²C")),
    }
}

/// The driver of `config` on `spi`, the part's own chip select.
pub fn open_spi<S, D>(config: &DriverConfig, spi: S, delay: D) -> Box<dyn Sensor>
where
    S: SpiDevice + 'static,
    S::Error: Display,
    D: DelayNs + 'static,
{
    match config {
        DriverConfig::Bme280 { address } => Box::new(Bme280::new(RegistersOverSpi::new(spi), *address, delay)),
        _ => Box::new(NotOnThisBus("only the BME280 is read on SPI")),
    }
}

/// A part on a bus it does not speak; the configuration refuses this, so it is never built.
#[derive(Debug)]
struct NotOnThisBus(&'static str);

impl Sensor for NotOnThisBus {
    fn init(&mut self) -> Result<(), Fault> {
        Err(Fault::new(FaultKind::Data, self.0))
    }

    fn measure(&mut self) -> Result<Vec<Quantity>, Fault> {
        Err(Fault::new(FaultKind::Data, self.0))
    }
}

/// An I²C error as a fault: a missing acknowledgement, a bus-level failure, or another I/O error
/// (the kernel's `EREMOTEIO`, "Remote I/O error", among them).
pub fn i2c_fault<E: embedded_hal::i2c::Error + Display>(error: &E) -> Fault {
    let kind = match error.kind() {
        ErrorKind::NoAcknowledge(_) => FaultKind::Nack,
        ErrorKind::Bus | ErrorKind::ArbitrationLoss | ErrorKind::Overrun => FaultKind::Bus,
        _ => FaultKind::Io,
    };
    Fault::new(kind, error.to_string())
}

#[cfg(test)]
mod tests;

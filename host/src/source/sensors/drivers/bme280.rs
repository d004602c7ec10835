//! Bosch BME280 through the `bme280` crate: temperature (°C), relative humidity (%) and pressure
//! (hPa), in forced mode (one conversion per sample, the part sleeps in between).
//!
//! `init` checks the chip id, resets the part, reads its calibration and sets oversampling; a
//! sample writes the mode register and reads the eight data registers after 40 ms.

use std::fmt::{self, Display};

use bme280::Error;
use bme280::i2c::BME280 as OnI2c;
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::{Quantity, Sensor, i2c_fault};
use crate::source::sensors::health::{Fault, FaultKind};

fn quantities(m: &bme280::Measurements<impl fmt::Debug>) -> Vec<Quantity> {
    vec![
        Quantity { name: "temperature", unit: "Cel", value: f64::from(m.temperature) },
        Quantity { name: "humidity", unit: "%", value: f64::from(m.humidity) },
        Quantity { name: "pressure", unit: "hPa", value: f64::from(m.pressure) / 100.0 },
    ]
}

fn fault<E: embedded_hal::i2c::Error + Display>(error: Error<E>) -> Fault {
    match error {
        Error::Bus(e) => i2c_fault(&e),
        Error::UnsupportedChip => {
            Fault::new(FaultKind::Data, "the chip id is not a BME280's (0x60) or BMP280's (0x58)")
        }
        Error::CompensationFailed => Fault::new(FaultKind::Data, "the raw reading could not be compensated"),
        Error::InvalidData => Fault::new(FaultKind::Data, "the part returned invalid data"),
        Error::NoCalibrationData => Fault::new(FaultKind::Data, "no calibration data (the part was not initialised)"),
        Error::Delay => Fault::new(FaultKind::Io, "the delay failed"),
    }
}

/// A BME280.
pub struct Bme280<I, D> {
    part: OnI2c<I>,
    delay: D,
}

impl<I: I2c, D: DelayNs> Bme280<I, D> {
    /// The part at `address` (0x76 or 0x77).
    pub fn new(i2c: I, address: u8, delay: D) -> Self {
        Self { part: OnI2c::new(i2c, address), delay }
    }
}

impl<I, D> fmt::Debug for Bme280<I, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bme280")
    }
}

impl<I, D> Sensor for Bme280<I, D>
where
    I: I2c,
    I::Error: Display,
    D: DelayNs,
{
    fn init(&mut self) -> Result<(), Fault> {
        self.part.init(&mut self.delay).map_err(fault)
    }

    fn measure(&mut self) -> Result<Vec<Quantity>, Fault> {
        let measured = self.part.measure(&mut self.delay).map_err(fault)?;
        Ok(quantities(&measured))
    }
}

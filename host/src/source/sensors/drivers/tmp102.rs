//! TI TMP102 through the `tmp1x2` crate: temperature (°C) in the part's default continuous mode
//! (4 conversions per second). `init` reads the temperature once, to know the part answers.

use std::fmt::{self, Display};

use embedded_hal::i2c::I2c;
use tmp1x2::marker::mode::Continuous;
use tmp1x2::{Error, SlaveAddr, Tmp1x2};

use super::{Quantity, Sensor, i2c_fault};
use crate::source::sensors::health::Fault;

/// A TMP102.
pub struct Tmp102<I: I2c> {
    part: Tmp1x2<I, Continuous>,
}

impl<I: I2c> Tmp102<I> {
    /// The part at `address` (0x48 to 0x4b, validated).
    pub fn new(i2c: I, address: u8) -> Self {
        let pins = address.wrapping_sub(0x48) & 0b11;
        Self { part: Tmp1x2::new(i2c, SlaveAddr::Alternative(pins & 0b10 != 0, pins & 0b01 != 0)) }
    }
}

impl<I: I2c> fmt::Debug for Tmp102<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tmp102")
    }
}

fn fault<E: embedded_hal::i2c::Error + Display>(error: Error<E>) -> Fault {
    match error {
        Error::I2C(e) => i2c_fault(&e),
    }
}

impl<I> Sensor for Tmp102<I>
where
    I: I2c,
    I::Error: Display,
{
    fn init(&mut self) -> Result<(), Fault> {
        self.part.read_temperature().map(drop).map_err(fault)
    }

    fn measure(&mut self) -> Result<Vec<Quantity>, Fault> {
        let celsius = self.part.read_temperature().map_err(fault)?;
        Ok(vec![Quantity { name: "temperature", unit: "Cel", value: f64::from(celsius) }])
    }
}

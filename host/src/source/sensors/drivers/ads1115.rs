//! TI ADS1115 through the `ads1x1x` crate: the configured single-ended inputs, one one-shot
//! conversion each per sample, as volts (`a0` … `a3`).
//!
//! `init` sets the full-scale range; a conversion at the part's default 128 samples/s takes
//! about 8 ms, polled every millisecond for at most 100 ms.

use std::fmt::{self, Display};

use ads1x1x::ic::{Ads1115 as Part, Resolution16Bit};
use ads1x1x::mode::OneShot;
use ads1x1x::{Ads1x1x, Error, FullScaleRange, TargetAddr, channel};
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::{Quantity, Sensor, i2c_fault};
use crate::config::FullScale;
use crate::source::sensors::health::{Fault, FaultKind};

const NAMES: [&str; 4] = ["a0", "a1", "a2", "a3"];
/// Polls of the conversion-ready bit before a conversion counts as lost.
const POLLS: u32 = 100;

/// An ADS1115.
pub struct Ads1115<I, D> {
    part: Ads1x1x<I, Part, Resolution16Bit, OneShot>,
    channels: Vec<u8>,
    full_scale: FullScale,
    delay: D,
}

impl<I: I2c, D: DelayNs> Ads1115<I, D> {
    /// The part at `address` (0x48 to 0x4b, validated), reading `channels` (0 to 3).
    pub fn new(i2c: I, address: u8, channels: Vec<u8>, full_scale: FullScale, delay: D) -> Self {
        let target = match address {
            0x49 => TargetAddr::Vdd,
            0x4a => TargetAddr::Sda,
            0x4b => TargetAddr::Scl,
            _ => TargetAddr::Gnd,
        };
        Self { part: Ads1x1x::new_ads1115(i2c, target), channels, full_scale, delay }
    }

    fn convert(&mut self, input: u8) -> nb::Result<i16, Error<I::Error>> {
        match input {
            0 => self.part.read(channel::SingleA0),
            1 => self.part.read(channel::SingleA1),
            2 => self.part.read(channel::SingleA2),
            _ => self.part.read(channel::SingleA3),
        }
    }
}

impl<I, D> fmt::Debug for Ads1115<I, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ads1115").field("channels", &self.channels).finish_non_exhaustive()
    }
}

fn fault<E: embedded_hal::i2c::Error + Display>(error: Error<E>) -> Fault {
    match error {
        Error::I2C(e) => i2c_fault(&e),
        Error::InvalidInputData => Fault::new(FaultKind::Data, "the driver refused its input"),
    }
}

impl<I, D> Sensor for Ads1115<I, D>
where
    I: I2c,
    I::Error: Display,
    D: DelayNs,
{
    fn init(&mut self) -> Result<(), Fault> {
        let range = match self.full_scale {
            FullScale::V6_144 => FullScaleRange::Within6_144V,
            FullScale::V4_096 => FullScaleRange::Within4_096V,
            FullScale::V2_048 => FullScaleRange::Within2_048V,
            FullScale::V1_024 => FullScaleRange::Within1_024V,
            FullScale::V0_512 => FullScaleRange::Within0_512V,
            FullScale::V0_256 => FullScaleRange::Within0_256V,
        };
        self.part.set_full_scale_range(range).map_err(fault)
    }

    fn measure(&mut self) -> Result<Vec<Quantity>, Fault> {
        let volts_per_count = self.full_scale.volts() / 32_768.0;
        let mut quantities = Vec::with_capacity(self.channels.len());
        for input in self.channels.clone() {
            let mut polls = 0;
            let raw = loop {
                match self.convert(input) {
                    Ok(raw) => break raw,
                    Err(nb::Error::Other(e)) => return Err(fault(e)),
                    Err(nb::Error::WouldBlock) if polls < POLLS => {
                        polls += 1;
                        self.delay.delay_ms(1);
                    }
                    Err(nb::Error::WouldBlock) => {
                        return Err(Fault::new(FaultKind::Io, format!("input {input}'s conversion did not finish")));
                    }
                }
            };
            let name = NAMES[usize::from(input.min(3))];
            quantities.push(Quantity { name, unit: "V", value: f64::from(raw) * volts_per_count });
        }
        Ok(quantities)
    }
}

//! TI INA219 through the `ina219` crate: bus voltage (V), shunt voltage (V), current (A) and
//! power (W), in the part's default continuous mode.
//!
//! `init` resets the part, checks that its configuration reads back as the reset default, and
//! writes the calibration derived from the shunt and the largest expected current. A sample
//! reads the four result registers; a sample taken before the first conversion finished, or one
//! whose product overflowed, is a `data` fault.

use std::fmt::{self, Debug, Display};

use embedded_hal::i2c::I2c;
use ina219::SyncIna219;
use ina219::address::Address;
use ina219::calibration::{IntCalibration, MicroAmpere};
use ina219::errors::{BusVoltageReadError, InitializationErrorReason, MeasurementError, ShuntVoltageReadError};

use super::{Quantity, Sensor, i2c_fault};
use crate::source::sensors::health::{Fault, FaultKind};

/// An INA219. The crate's driver takes the bus handle and gives it back when it fails to start,
/// so the handle is held here between attempts.
pub struct Ina219<I> {
    state: State<I>,
    address: u8,
    shunt_micro_ohms: u32,
    current_lsb_micro_amps: i64,
}

enum State<I> {
    Idle(I),
    Running(SyncIna219<I, IntCalibration>),
    /// Only while moving between the two.
    Moving,
}

impl<I: I2c> Ina219<I> {
    /// The part at `address` (0x40 to 0x4f, validated) with its calibration.
    pub fn new(i2c: I, address: u8, shunt_micro_ohms: u32, current_lsb_micro_amps: i64) -> Self {
        Self { state: State::Idle(i2c), address, shunt_micro_ohms, current_lsb_micro_amps }
    }
}

impl<I> Debug for Ina219<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ina219").field("address", &self.address).finish_non_exhaustive()
    }
}

fn data(what: impl Into<String>) -> Fault {
    Fault::new(FaultKind::Data, what)
}

fn measurement_fault<E: embedded_hal::i2c::Error + Display + Debug>(error: MeasurementError<E>) -> Fault {
    match error {
        MeasurementError::I2cError(e)
        | MeasurementError::ShuntVoltageReadError(ShuntVoltageReadError::I2cError(e))
        | MeasurementError::BusVoltageReadError(BusVoltageReadError::I2cError(e)) => i2c_fault(&e),
        MeasurementError::MathOverflow(_) => data("the part reported a math overflow (current beyond its range)"),
        other => data(format!("{other}")),
    }
}

impl<I> Sensor for Ina219<I>
where
    I: I2c,
    I::Error: Display + Debug,
{
    fn init(&mut self) -> Result<(), Fault> {
        let i2c = match std::mem::replace(&mut self.state, State::Moving) {
            State::Idle(i2c) => i2c,
            State::Running(part) => part.destroy(),
            State::Moving => unreachable!("the state is restored before init returns"),
        };
        let Ok(address) = Address::from_byte(self.address) else {
            self.state = State::Idle(i2c);
            return Err(data(format!("0x{:02x} is not an INA219 address", self.address)));
        };
        let Some(calibration) = IntCalibration::new(MicroAmpere(self.current_lsb_micro_amps), self.shunt_micro_ohms)
        else {
            self.state = State::Idle(i2c);
            return Err(data("the shunt and max_current give a calibration the part cannot hold"));
        };
        match SyncIna219::new_calibrated(i2c, address, calibration) {
            Ok(part) => {
                self.state = State::Running(part);
                Ok(())
            }
            Err(e) => {
                let fault = match &e.reason {
                    InitializationErrorReason::I2cError(bus) => i2c_fault(bus),
                    other => data(format!("{other:?}")),
                };
                self.state = State::Idle(e.device);
                Err(fault)
            }
        }
    }

    fn measure(&mut self) -> Result<Vec<Quantity>, Fault> {
        let State::Running(part) = &mut self.state else {
            return Err(data("the part was not initialised"));
        };
        let Some(measured) = part.next_measurement().map_err(measurement_fault)? else {
            return Err(data("no conversion has finished since the last sample"));
        };
        Ok(vec![
            Quantity { name: "bus_voltage", unit: "V", value: f64::from(measured.bus_voltage.voltage_mv()) / 1e3 },
            Quantity {
                name: "shunt_voltage",
                unit: "V",
                value: f64::from(measured.shunt_voltage.shunt_voltage_uv()) / 1e6,
            },
            Quantity { name: "current", unit: "A", value: measured.current.0 as f64 / 1e6 },
            Quantity { name: "power", unit: "W", value: measured.power.0 as f64 / 1e6 },
        ])
    }
}

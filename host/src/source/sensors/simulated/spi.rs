//! A simulated SPI device: one register part on its own chip select, answering frames as Bosch's
//! parts do (see the module docs of `simulated`).

use std::time::Instant;

use embedded_hal::spi::{ErrorType, Operation, SpiDevice};

use super::chips::Chip;
use super::{SimulatedError, active};
use crate::config::{DeviceSimulation, DriverConfig, FaultScript, ScriptedFault};

/// What MISO carries when the part drives nothing (pulled up).
const IDLE: u8 = 0xff;
/// The bit of a register address that asks for a read.
const READ: u8 = 0x80;

/// Where a frame is: the part reads each byte clocked in as this says.
#[derive(Clone, Copy, Debug)]
enum Frame {
    /// The next byte is a register's address.
    Address,
    /// The part answers from its register pointer on.
    Reading,
    /// The next byte is the value for this register.
    Value(u8),
}

/// A simulated SPI device.
#[derive(Debug)]
pub struct SimulatedSpi {
    chip: Option<Chip>,
    faults: Vec<ScriptedFault>,
    opened: Instant,
}

impl SimulatedSpi {
    /// The part `driver` names, simulated as `simulation` says, opened now. A part without
    /// registers never drives MISO.
    pub fn new(driver: &DriverConfig, simulation: &DeviceSimulation) -> Self {
        Self { chip: Chip::new(driver, simulation), faults: simulation.faults.clone(), opened: Instant::now() }
    }

    /// The part takes `byte` from MOSI.
    fn clocked_in(&mut self, frame: &mut Frame, byte: u8, stuck: bool) {
        let Some(chip) = self.chip.as_mut() else { return };
        *frame = match *frame {
            Frame::Address if byte & READ != 0 => {
                chip.write(&[byte], stuck);
                Frame::Reading
            }
            // Only seven bits of the address go on the wire: the registers are 0x80 and up.
            Frame::Address => Frame::Value(byte | READ),
            Frame::Value(register) => {
                chip.write(&[register, byte], stuck);
                Frame::Address
            }
            Frame::Reading => Frame::Reading,
        };
    }

    /// The byte the part puts on MISO.
    fn clocked_out(&mut self, frame: Frame, stuck: bool) -> u8 {
        let (Frame::Reading, Some(chip)) = (frame, self.chip.as_mut()) else { return IDLE };
        let mut byte = [IDLE];
        // A register the map does not hold drives nothing.
        chip.read(&mut byte, stuck).map_or(IDLE, |()| byte[0])
    }
}

impl ErrorType for SimulatedSpi {
    type Error = SimulatedError;
}

impl SpiDevice for SimulatedSpi {
    fn transaction(&mut self, operations: &mut [Operation<'_, u8>]) -> Result<(), Self::Error> {
        let since_open = self.opened.elapsed();
        if let Some(slow) = active(&self.faults, since_open, FaultScript::Slow) {
            std::thread::sleep(slow.delay);
        }
        if active(&self.faults, since_open, FaultScript::RemoteIo).is_some() {
            return Err(SimulatedError::remote_io());
        }
        let stuck = active(&self.faults, since_open, FaultScript::Stuck).is_some();
        // Full duplex: each byte out is what the part drives while the byte in is clocked.
        let mut frame = Frame::Address;
        for operation in operations {
            match operation {
                Operation::Write(bytes) => {
                    for &byte in &**bytes {
                        self.clocked_in(&mut frame, byte, stuck);
                    }
                }
                Operation::Read(buffer) => {
                    for byte in buffer.iter_mut() {
                        *byte = self.clocked_out(frame, stuck);
                        self.clocked_in(&mut frame, 0, stuck);
                    }
                }
                Operation::Transfer(read, write) => {
                    for index in 0..read.len().max(write.len()) {
                        let out = self.clocked_out(frame, stuck);
                        if let Some(slot) = read.get_mut(index) {
                            *slot = out;
                        }
                        self.clocked_in(&mut frame, write.get(index).copied().unwrap_or(0), stuck);
                    }
                }
                Operation::TransferInPlace(buffer) => {
                    for byte in buffer.iter_mut() {
                        let out = self.clocked_out(frame, stuck);
                        self.clocked_in(&mut frame, *byte, stuck);
                        *byte = out;
                    }
                }
                Operation::DelayNs(ns) => std::thread::sleep(std::time::Duration::from_nanos(u64::from(*ns))),
            }
        }
        Ok(())
    }
}

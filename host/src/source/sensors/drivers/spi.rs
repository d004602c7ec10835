//! Register parts on SPI: [`RegistersOverSpi`] carries the I²C register protocol a driver speaks
//! (write a register's address, then read from it on; write register and value pairs) over an
//! [`SpiDevice`] the way Bosch's parts take it on SPI — the address's top bit set to read and
//! cleared to write, one chip-select frame per transfer.
//!
//! This lets the BME280 driver weir uses on I²C run unchanged on SPI. (The `bme280` crate's own
//! SPI interface reads with one full-duplex `transfer` of the address and the answer together,
//! which by embedded-hal's contract puts the answer one byte late; weir does not use it.)

use std::fmt;

use embedded_hal::i2c::{self, I2c};
use embedded_hal::spi::{self, SpiDevice};

/// The bit of a register address that asks for a read.
const READ: u8 = 0x80;

/// An I²C register protocol over an SPI device.
#[derive(Debug)]
pub struct RegistersOverSpi<S> {
    spi: S,
}

impl<S> RegistersOverSpi<S> {
    /// Over `spi`, the part's own chip select.
    pub fn new(spi: S) -> Self {
        Self { spi }
    }
}

/// An error of [`RegistersOverSpi`]: the SPI device's, or a transfer the protocol has no form for.
#[derive(Debug)]
pub enum OverSpiError<E> {
    /// The SPI device failed.
    Spi(E),
    /// The driver asked for a sequence of transfers other than a register read or writes.
    Unsupported,
}

impl<E: fmt::Display> fmt::Display for OverSpiError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spi(e) => e.fmt(f),
            Self::Unsupported => f.write_str("the driver asked for a transfer the part's SPI protocol has no form for"),
        }
    }
}

impl<E: spi::Error> i2c::Error for OverSpiError<E> {
    fn kind(&self) -> i2c::ErrorKind {
        match self {
            Self::Spi(e) => match e.kind() {
                spi::ErrorKind::Overrun => i2c::ErrorKind::Overrun,
                spi::ErrorKind::ModeFault | spi::ErrorKind::FrameFormat | spi::ErrorKind::ChipSelectFault => {
                    i2c::ErrorKind::Bus
                }
                _ => i2c::ErrorKind::Other,
            },
            Self::Unsupported => i2c::ErrorKind::Other,
        }
    }
}

impl<S: SpiDevice> i2c::ErrorType for RegistersOverSpi<S> {
    type Error = OverSpiError<S::Error>;
}

impl<S: SpiDevice> I2c for RegistersOverSpi<S> {
    /// The address is the chip select's: there is only one part on the device.
    fn transaction(&mut self, _address: u8, operations: &mut [i2c::Operation<'_>]) -> Result<(), Self::Error> {
        match operations {
            // A read: the register's address with the read bit, then its bytes, in one frame.
            [i2c::Operation::Write([register]), i2c::Operation::Read(buffer)] => self
                .spi
                .transaction(&mut [spi::Operation::Write(&[*register | READ]), spi::Operation::Read(buffer)])
                .map_err(OverSpiError::Spi),
            // Writes: register and value pairs, each address with the read bit cleared.
            [i2c::Operation::Write(pairs)] if !pairs.is_empty() && pairs.len() % 2 == 0 => {
                let frame: Vec<u8> = pairs.chunks_exact(2).flat_map(|pair| [pair[0] & !READ, pair[1]]).collect();
                self.spi.write(&frame).map_err(OverSpiError::Spi)
            }
            _ => Err(OverSpiError::Unsupported),
        }
    }
}

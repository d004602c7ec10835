//! `[pipelines.<name>.source.sensors]` as written: the buses a pipeline reads (I²C, SPI, GPIO, or
//! simulated) and the devices on them, with how each is sampled, kept healthy and (on a
//! simulated bus) simulated.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::config::types::{CountIn, DAY, DurationIn, Name};

/// `[pipelines.<name>.source.sensors]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSensorsSource {
    /// `[pipelines.<name>.source.sensors.buses.<bus>]` — at least one.
    pub buses: BTreeMap<Name, Spanned<RawBus>>,
    /// `[[pipelines.<name>.source.sensors.devices]]` — at least one.
    pub devices: Vec<Spanned<RawDevice>>,
}

/// `[pipelines.<name>.source.sensors.buses.<bus>]`: exactly one of `i2c`, `spi`, `gpio` and
/// `simulated`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    /// `i2c = "/dev/i2c-1"` — a Linux I²C adapter.
    pub i2c: Option<Spanned<PathBuf>>,
    /// `spi = "/dev/spidev0.0"` — a Linux SPI device node (bus 0, chip select 0): one device.
    pub spi: Option<Spanned<PathBuf>>,
    /// `gpio = "/dev/gpiochip0"` — a Linux GPIO character device; its devices are lines.
    pub gpio: Option<Spanned<PathBuf>>,
    /// `simulated = "i2c"` — a bus inside weir whose devices answer from register maps (`i2c`,
    /// `spi`) or scripted levels (`gpio`).
    pub simulated: Option<Spanned<BusProtocol>>,
    /// `max_speed_hz = 1000000` — SPI clock (10 kHz to 10 MHz; default 1 MHz); SPI buses only.
    pub max_speed_hz: Option<Spanned<u32>>,
}

/// The protocol a bus speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusProtocol {
    /// I²C: devices by 7-bit address.
    I2c,
    /// SPI: one device per chip select.
    Spi,
    /// GPIO lines of one chip, read as digital inputs.
    Gpio,
}

impl BusProtocol {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::I2c => "i2c",
            Self::Spi => "spi",
            Self::Gpio => "gpio",
        }
    }
}

/// A supported part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorDriver {
    /// Bosch BME280: temperature, humidity, pressure; I²C or SPI.
    Bme280,
    /// TI ADS1115 16-bit ADC: up to four single-ended voltages; I²C.
    Ads1115,
    /// TI INA219 current/power monitor: bus and shunt voltage, current, power; I²C.
    Ina219,
    /// TI TMP102 temperature sensor; I²C.
    Tmp102,
    /// A GPIO line read as a digital input (a contact, a level switch); GPIO.
    DigitalInput,
}

/// `[[pipelines.<name>.source.sensors.devices]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    /// `name = "room"` — unique in the pipeline; its series are `<series>/<quantity>`.
    pub name: Spanned<Name>,
    /// `series = "plant1/room"` — first part of its series' names (default: the name).
    pub series: Option<Spanned<String>>,
    /// `bus = "i2c1"` — one of the source's buses.
    pub bus: Spanned<Name>,
    /// `driver = "bme280"`
    pub driver: Spanned<SensorDriver>,
    /// `address = 0x76` — I²C address (default: the part's usual one).
    pub address: Option<Spanned<u8>>,
    /// `interval = "5s"` — how often it is sampled (10ms to 24h).
    pub interval: DurationIn<10, DAY>,
    /// `on_change = 0.1` — report a quantity only when it moved by at least this much since it
    /// was last reported (or `heartbeat` passed); default: every sample.
    pub on_change: Option<Spanned<f64>>,
    /// `heartbeat = "5m"` — with `on_change`, report an unchanged quantity this often anyway
    /// (1s to 24h; default 5m).
    pub heartbeat: Option<DurationIn<1_000, DAY>>,
    /// `retries = 2` — immediate retries of a failed sample (0 to 10).
    pub retries: Option<CountIn<0, 10>>,
    /// `reinit_after = 3` — consecutive failed samples after which the device is initialised
    /// again (1 to 1000).
    pub reinit_after: Option<CountIn<1, 1_000>>,
    /// `stuck_after = 30` — this many identical samples in a row count as a `stuck` fault
    /// (2 to 1000000; default: not checked).
    pub stuck_after: Option<CountIn<2, 1_000_000>>,
    /// `max_backoff = "1m"` — longest wait between attempts to initialise a device that does
    /// not answer (100ms to 24h).
    pub max_backoff: Option<DurationIn<100, DAY>>,
    /// `channels = [0, 1]` — ADS1115 inputs read, single-ended (default: all four).
    pub channels: Option<Spanned<Vec<u8>>>,
    /// `full_scale = 4.096` — ADS1115 range in volts: 6.144, 4.096, 2.048, 1.024, 0.512 or
    /// 0.256 (default 2.048).
    pub full_scale: Option<Spanned<f64>>,
    /// `shunt_ohms = 0.1` — INA219 shunt resistor (default 0.1 Ω).
    pub shunt_ohms: Option<Spanned<f64>>,
    /// `max_current = 3.2` — INA219 largest expected current in amperes (default 3.2 A).
    pub max_current: Option<Spanned<f64>>,
    /// `line = 17` — a digital input's line on its GPIO chip (its offset, as `gpioinfo` lists it).
    pub line: Option<Spanned<u32>>,
    /// `active_low = true` — a digital input reads 1 when its line is low (default false).
    pub active_low: Option<Spanned<bool>>,
    /// `[pipelines.<name>.source.sensors.devices.simulation]` — only on a simulated bus.
    pub simulation: Option<Spanned<RawSimulation>>,
}

/// `[pipelines.<name>.source.sensors.devices.simulation]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSimulation {
    /// `registers = "bme280-0x76.txt"` — the device's registers as `i2cdump` prints them
    /// (default: a map of the part built into weir).
    pub registers: Option<Spanned<PathBuf>>,
    /// `wobble = 40` — measurement registers move by up to this many LSB from sample to sample
    /// (0 to 4096; default: the part's own).
    pub wobble: Option<CountIn<0, 4_096>>,
    /// `inputs = [0.5, 3.3]` — an ADS1115's input voltages, from input 0 (default 0.5, 1.0, 1.5,
    /// 2.0 V).
    pub inputs: Option<Spanned<Vec<f64>>>,
    /// `toggle_every = "10s"` — a digital input's line changes level this often (10ms to 24h;
    /// default 5s).
    pub toggle_every: Option<Spanned<DurationIn<10, DAY>>>,
    /// `[[...simulation.faults]]` — scripted faults.
    #[serde(default)]
    pub faults: Vec<Spanned<RawScriptedFault>>,
}

/// `{ fault = "nack", at = "10s", for = "5s" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScriptedFault {
    /// `fault = "nack"` — `nack` (I²C only), `remote_io`, `stuck` or `slow`.
    pub fault: FaultScript,
    /// `at = "10s"` — when it starts, after the bus opened (0 to 24h).
    pub at: DurationIn<0, DAY>,
    /// `for = "5s"` — how long it lasts (1ms to 24h).
    #[serde(rename = "for")]
    pub lasting: DurationIn<1, DAY>,
    /// `delay = "2s"` — with `slow`: how much longer each transfer takes (1ms to 60s).
    pub delay: Option<DurationIn<1, 60_000>>,
}

/// A fault a simulated device can be scripted to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultScript {
    /// The device does not acknowledge its address (unplugged, dead, wrong address).
    Nack,
    /// Transfers (line reads on GPIO) fail with the kernel's "Remote I/O error" (EREMOTEIO).
    RemoteIo,
    /// Measurement registers (a line's level) stop changing.
    Stuck,
    /// Every transfer takes `delay` longer.
    Slow,
}

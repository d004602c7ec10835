//! `[pipelines.<name>.source.sensors]`, validated: each bus (I²C, SPI, GPIO or simulated) with the
//! devices on it, every device with its driver's settings resolved (address or line, channels,
//! calibration), its sampling and health policy, and — on a simulated bus — its register map or
//! line levels and scripted faults.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::register_dump::RegisterDump;
use crate::config::{BusProtocol, FaultScript, Name};

/// A `sensors` source: its buses, each with its devices.
#[derive(Clone, Debug, PartialEq)]
pub struct SensorsConfig {
    /// The buses in name order; each has at least one device.
    pub buses: Vec<SensorBus>,
}

/// One bus, owned by one thread.
#[derive(Clone, Debug, PartialEq)]
pub struct SensorBus {
    /// Its name in the configuration.
    pub name: Name,
    /// What it is.
    pub kind: BusKind,
    /// Its devices, in the order written.
    pub devices: Vec<SensorDevice>,
}

/// What a bus is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusKind {
    /// `i2c = "/dev/i2c-1"`
    I2c(PathBuf),
    /// `spi = "/dev/spidev0.0"`: one device, clocked at `max_speed_hz`.
    Spi {
        /// The spidev node.
        path: PathBuf,
        /// SPI clock, hertz.
        max_speed_hz: u32,
    },
    /// `gpio = "/dev/gpiochip0"`
    Gpio(PathBuf),
    /// `simulated = "i2c"` — inside weir.
    Simulated(BusProtocol),
}

impl BusKind {
    /// How it is shown: its device node, or `simulated i2c`.
    pub fn describe(&self) -> String {
        match self {
            Self::I2c(path) | Self::Spi { path, .. } | Self::Gpio(path) => path.display().to_string(),
            Self::Simulated(protocol) => format!("simulated {}", protocol.name()),
        }
    }

    /// The protocol it speaks.
    pub fn protocol(&self) -> BusProtocol {
        match self {
            Self::I2c(_) => BusProtocol::I2c,
            Self::Spi { .. } => BusProtocol::Spi,
            Self::Gpio(_) => BusProtocol::Gpio,
            Self::Simulated(protocol) => *protocol,
        }
    }

    /// The device node a thread opens, if it is a real bus.
    pub fn node(&self) -> Option<&PathBuf> {
        match self {
            Self::I2c(path) | Self::Spi { path, .. } | Self::Gpio(path) => Some(path),
            Self::Simulated(_) => None,
        }
    }
}

/// One device on a bus.
#[derive(Clone, Debug, PartialEq)]
pub struct SensorDevice {
    /// `name = "room"` — unique in the pipeline.
    pub name: Name,
    /// `series = "plant1/room"` — its series are `<series>/<quantity>`.
    pub series: String,
    /// The part and its settings.
    pub driver: DriverConfig,
    /// `interval = "5s"`
    pub interval: Duration,
    /// `on_change` and `heartbeat`.
    pub reporting: Reporting,
    /// Retries, re-initialisation, stuck detection, backoff.
    pub health: HealthPolicy,
    /// Set on a simulated bus only.
    pub simulation: Option<DeviceSimulation>,
}

/// Which samples are reported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reporting {
    /// `on_change = 0.1` — smallest change reported; `None`: every sample.
    pub on_change: Option<f64>,
    /// `heartbeat = "5m"` — with `on_change`, the longest a quantity goes unreported.
    pub heartbeat: Duration,
}

/// How a device's faults are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// `retries = 2` — immediate retries of a failed sample.
    pub retries: u32,
    /// `reinit_after = 3` — consecutive failed samples before the device is initialised again.
    pub reinit_after: u32,
    /// `stuck_after = 30` — identical samples in a row that count as stuck; `None`: unchecked.
    pub stuck_after: Option<u32>,
    /// `max_backoff = "1m"` — longest wait between initialisation attempts.
    pub max_backoff: Duration,
}

/// A part and its settings.
#[derive(Clone, Debug, PartialEq)]
pub enum DriverConfig {
    /// BME280.
    Bme280 {
        /// I²C address (unused on SPI).
        address: u8,
    },
    /// ADS1115.
    Ads1115 {
        /// I²C address.
        address: u8,
        /// Single-ended inputs read, 0 to 3, ascending.
        channels: Vec<u8>,
        /// Full-scale range, volts.
        full_scale: FullScale,
    },
    /// INA219.
    Ina219 {
        /// I²C address.
        address: u8,
        /// Shunt resistance, micro-ohms.
        shunt_micro_ohms: u32,
        /// Current per LSB, microamperes (the largest expected current / 32768).
        current_lsb_micro_amps: i64,
    },
    /// TMP102.
    Tmp102 {
        /// I²C address.
        address: u8,
    },
    /// A GPIO line read as a digital input.
    DigitalInput {
        /// The line's offset on its chip.
        line: u32,
        /// Reads 1 when the line is low.
        active_low: bool,
    },
}

impl DriverConfig {
    /// The part's name as configured.
    pub fn part(&self) -> &'static str {
        match self {
            Self::Bme280 { .. } => "bme280",
            Self::Ads1115 { .. } => "ads1115",
            Self::Ina219 { .. } => "ina219",
            Self::Tmp102 { .. } => "tmp102",
            Self::DigitalInput { .. } => "digital_input",
        }
    }

    /// Its I²C address; `None` for a GPIO line.
    pub fn address(&self) -> Option<u8> {
        match self {
            Self::Bme280 { address }
            | Self::Ads1115 { address, .. }
            | Self::Ina219 { address, .. }
            | Self::Tmp102 { address } => Some(*address),
            Self::DigitalInput { .. } => None,
        }
    }

    /// Where on `bus` the device is, as shown: `0x76` on I²C, `line 17` on GPIO, nothing on SPI
    /// (its node is the device).
    pub fn place(&self, bus: BusProtocol) -> Option<String> {
        match (self, bus) {
            (Self::DigitalInput { line, .. }, _) => Some(format!("line {line}")),
            (_, BusProtocol::Spi) => None,
            (driver, _) => driver.address().map(|address| format!("0x{address:02x}")),
        }
    }
}

/// The ADS1115's programmable gain, as the full-scale voltage it gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullScale {
    /// ±6.144 V
    V6_144,
    /// ±4.096 V
    V4_096,
    /// ±2.048 V
    V2_048,
    /// ±1.024 V
    V1_024,
    /// ±0.512 V
    V0_512,
    /// ±0.256 V
    V0_256,
}

impl FullScale {
    /// Every range with its volts, for parsing and messages.
    pub const ALL: [(Self, f64); 6] = [
        (Self::V6_144, 6.144),
        (Self::V4_096, 4.096),
        (Self::V2_048, 2.048),
        (Self::V1_024, 1.024),
        (Self::V0_512, 0.512),
        (Self::V0_256, 0.256),
    ];

    /// Its full-scale voltage.
    pub fn volts(self) -> f64 {
        Self::ALL.iter().find(|(scale, _)| *scale == self).map_or(2.048, |(_, volts)| *volts)
    }
}

/// How a device on a simulated bus behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSimulation {
    /// `registers = "…"` — the dump read; `None`: the part's built-in map.
    pub registers: Option<RegisterDump>,
    /// `wobble = 40` — LSB of movement on measurement registers; `None`: the part's own.
    pub wobble: Option<u16>,
    /// `inputs = [0.5, 3.3]` — an ADS1115's input voltages, from input 0.
    pub inputs: Vec<f64>,
    /// `toggle_every = "5s"` — how often a digital input's line changes level.
    pub toggle_every: Duration,
    /// Scripted faults, in the order written.
    pub faults: Vec<ScriptedFault>,
}

impl Default for DeviceSimulation {
    /// The part's built-in map and movement, no faults.
    fn default() -> Self {
        Self {
            registers: None,
            wobble: None,
            inputs: vec![0.5, 1.0, 1.5, 2.0],
            toggle_every: super::super::defaults::SIMULATED_TOGGLE_EVERY,
            faults: Vec::new(),
        }
    }
}

/// One scripted fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScriptedFault {
    /// What happens.
    pub fault: FaultScript,
    /// From this long after the bus opened…
    pub from: Duration,
    /// …until this long after.
    pub until: Duration,
    /// With `slow`: added to each transfer.
    pub delay: Duration,
}

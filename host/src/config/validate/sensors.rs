//! `[pipelines.<name>.source.sensors]`: every bus is exactly one kind and used; every device names
//! a bus of its source whose protocol its part speaks, has a name and an address (I²C) or a line
//! (GPIO) its part can have, unique on the bus (an SPI node is one device), and only settings its
//! part takes (an INA219 calibration the part can hold); a simulation only on a simulated bus,
//! with a register dump that reads and only faults its protocol can show; and no device node is
//! read by two pipelines (the check across the configuration, [`Validator::refuse_shared_bus_nodes`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;

use ina219::calibration::{IntCalibration, MicroAmpere};
use toml::Spanned;

use super::Validator;
use crate::config::raw::{RawBus, RawDevice, RawSensorsSource, RawSimulation};
use crate::config::register_dump::RegisterDump;
use crate::config::types::{CountIn, DurationIn};
use crate::config::{
    BusKind, BusProtocol, DeviceSimulation, DriverConfig, FaultScript, FullScale, HealthPolicy, Name, Reporting,
    ScriptedFault, SensorBus, SensorDevice, SensorDriver, SensorsConfig, defaults,
};

/// A device node a pipeline's bus opens, for the check across pipelines.
#[derive(Debug)]
pub(super) struct BusNode {
    path: PathBuf,
    field: String,
    span: Range<usize>,
}

impl Validator<'_> {
    /// The sensors source of a pipeline, or `None` when something is wrong; `field` is
    /// `pipelines.<name>.source.sensors`.
    pub(super) fn sensors(&mut self, raw: RawSensorsSource, field: &str) -> Option<SensorsConfig> {
        let problems_before = self.problems.len();
        let mut buses: BTreeMap<Name, SensorBus> = BTreeMap::new();
        // Buses already refused: their devices are not refused again for naming them.
        let mut refused: BTreeSet<Name> = BTreeSet::new();
        for (name, raw_bus) in raw.buses {
            let span = raw_bus.span();
            let bus_field = format!("{field}.buses.{name}");
            if let Some(kind) = self.bus_kind(raw_bus.into_inner(), span, &bus_field) {
                buses.insert(name.clone(), SensorBus { name, kind, devices: Vec::new() });
            } else {
                refused.insert(name);
            }
        }
        if raw.devices.is_empty() {
            self.problem(None, format!("{field}.devices"), "add at least one [[…source.sensors.devices]]");
        }
        let mut names = BTreeSet::new();
        let mut used: BTreeSet<Name> = BTreeSet::new();
        let mut places: BTreeSet<(Name, String)> = BTreeSet::new();
        for (index, raw_device) in raw.devices.into_iter().enumerate() {
            let span = raw_device.span();
            let device_field = format!("{field}.devices[{index}]");
            let raw_device = raw_device.into_inner();
            if !names.insert(raw_device.name.get_ref().clone()) {
                let message =
                    format!("device name {:?} is used twice in this source", raw_device.name.get_ref().as_str());
                self.problem(Some(raw_device.name.span()), format!("{device_field}.name"), message);
            }
            used.insert(raw_device.bus.get_ref().clone());
            if refused.contains(raw_device.bus.get_ref()) {
                continue;
            }
            let Some(bus) = buses.get_mut(raw_device.bus.get_ref()) else {
                let defined: Vec<&str> = buses.keys().map(Name::as_str).collect();
                let message = format!(
                    "bus {:?} is not one of this source's buses (defined: {})",
                    raw_device.bus.get_ref().as_str(),
                    super::list(&defined)
                );
                self.problem(Some(raw_device.bus.span()), format!("{device_field}.bus"), message);
                continue;
            };
            let simulated = matches!(bus.kind, BusKind::Simulated(_));
            let protocol = bus.kind.protocol();
            let Some(device) = self.device(raw_device, &device_field, protocol, simulated) else { continue };
            if protocol == BusProtocol::Spi && !bus.devices.is_empty() {
                let message = format!(
                    "bus {} already has a device: an SPI node (/dev/spidevB.C) is one chip select, so one device; \
                     give this one a bus of its own",
                    bus.name
                );
                self.problem(Some(span), format!("{device_field}.bus"), message);
            } else if let Some(place) = device.driver.place(protocol)
                && !places.insert((bus.name.clone(), place.clone()))
            {
                let setting = if protocol == BusProtocol::Gpio { "line" } else { "address" };
                let message = format!("{place} is taken by another device on bus {}", bus.name);
                self.problem(Some(span), format!("{device_field}.{setting}"), message);
            }
            bus.devices.push(device);
        }
        for bus in buses.values() {
            if !used.contains(&bus.name) {
                self.problem(
                    None,
                    format!("{field}.buses.{}", bus.name),
                    "no device uses this bus: remove it or add one",
                );
            }
        }
        (self.problems.len() == problems_before).then(|| SensorsConfig { buses: buses.into_values().collect() })
    }

    /// Notes the device nodes of `sensors` (in `field`) for [`Self::refuse_shared_bus_nodes`].
    pub(super) fn note_bus_nodes(&mut self, sensors: &SensorsConfig, field: &str, span: Range<usize>) {
        for bus in &sensors.buses {
            if let Some(path) = bus.kind.node() {
                let field = format!("{field}.buses.{}", bus.name);
                self.bus_nodes.push(BusNode { path: path.clone(), field, span: span.clone() });
            }
        }
    }

    /// Refuses a device node opened by two buses: each bus has one thread that owns its node.
    pub(super) fn refuse_shared_bus_nodes(&mut self) {
        let nodes = std::mem::take(&mut self.bus_nodes);
        for (index, node) in nodes.iter().enumerate() {
            if let Some(first) = nodes[..index].iter().find(|earlier| earlier.path == node.path) {
                let message = format!(
                    "{} is already opened by `{}`; one thread owns each bus: put both devices on that bus, in one \
                     pipeline",
                    node.path.display(),
                    first.field
                );
                self.problem(Some(node.span.clone()), node.field.clone(), message);
            }
        }
    }

    fn bus_kind(&mut self, raw: RawBus, span: Range<usize>, field: &str) -> Option<BusKind> {
        let RawBus { i2c, spi, gpio, simulated, max_speed_hz } = raw;
        let speed = |validator: &mut Self| -> Option<u32> {
            let Some(raw) = &max_speed_hz else { return Some(defaults::SPI_MAX_SPEED_HZ) };
            let hz = *raw.get_ref();
            if (10_000..=10_000_000).contains(&hz) {
                Some(hz)
            } else {
                let message = format!("max_speed_hz {hz} is out of range: use 10000 to 10000000 (10 kHz to 10 MHz)");
                validator.problem(Some(raw.span()), format!("{field}.max_speed_hz"), message);
                None
            }
        };
        let kind = match (i2c, spi, gpio, simulated) {
            (Some(path), None, None, None) => BusKind::I2c(path.into_inner()),
            (None, Some(path), None, None) => BusKind::Spi { path: path.into_inner(), max_speed_hz: speed(self)? },
            (None, None, Some(path), None) => BusKind::Gpio(path.into_inner()),
            (None, None, None, Some(protocol)) => BusKind::Simulated(protocol.into_inner()),
            _ => {
                let message = "a bus is exactly one of i2c = \"/dev/i2c-N\", spi = \"/dev/spidevB.C\", \
                               gpio = \"/dev/gpiochipN\" and simulated = \"i2c\" | \"spi\" | \"gpio\"";
                self.problem(Some(span), field, message);
                return None;
            }
        };
        match (&max_speed_hz, kind.protocol()) {
            (Some(raw), protocol) if protocol != BusProtocol::Spi => {
                let message =
                    format!("max_speed_hz is a setting of SPI buses only, not of {}", protocol_name(protocol));
                self.problem(Some(raw.span()), format!("{field}.max_speed_hz"), message);
                None
            }
            (Some(_), _) if matches!(kind, BusKind::Simulated(_)) => speed(self).map(|_| kind),
            _ => Some(kind),
        }
    }

    fn device(&mut self, raw: RawDevice, field: &str, protocol: BusProtocol, simulated: bool) -> Option<SensorDevice> {
        let part = *raw.driver.get_ref();
        let problems_before = self.problems.len();
        let spoken = protocols_of(part);
        if !spoken.contains(&protocol) {
            let on_it: Vec<&str> =
                ALL_PARTS.iter().filter(|p| protocols_of(**p).contains(&protocol)).map(|p| part_name(*p)).collect();
            let message = format!(
                "the {} is not read on {} (it speaks {}); on {} weir reads: {}",
                part_name(part),
                protocol_name(protocol),
                spoken.iter().map(|p| protocol_name(*p)).collect::<Vec<_>>().join(" and "),
                protocol_name(protocol),
                on_it.join(", ")
            );
            self.problem(Some(raw.driver.span()), format!("{field}.driver"), message);
            return None;
        }
        let address = match (raw.address, protocol) {
            (Some(address), BusProtocol::Spi) => {
                let message = "an SPI device is chosen by its node (/dev/spidevB.C: bus B, chip select C), not by an \
                               address";
                self.problem(Some(address.span()), format!("{field}.address"), message);
                0
            }
            (Some(address), BusProtocol::Gpio) => {
                let message = "a digital input is chosen by its `line`, not by an address";
                self.problem(Some(address.span()), format!("{field}.address"), message);
                0
            }
            (Some(address), BusProtocol::I2c) => {
                let value = *address.get_ref();
                let allowed = addresses_of(part);
                if !allowed.contains(&value) {
                    let message = format!(
                        "the {} answers at 0x{:02x} to 0x{:02x}, not at 0x{value:02x}",
                        part_name(part),
                        allowed.start(),
                        allowed.end()
                    );
                    self.problem(Some(address.span()), format!("{field}.address"), message);
                }
                value
            }
            (None, _) => *addresses_of(part).start(),
        };
        self.refuse_unused(part, SensorDriver::Ads1115, &raw.channels, field, "channels");
        self.refuse_unused(part, SensorDriver::Ads1115, &raw.full_scale, field, "full_scale");
        self.refuse_unused(part, SensorDriver::Ina219, &raw.shunt_ohms, field, "shunt_ohms");
        self.refuse_unused(part, SensorDriver::Ina219, &raw.max_current, field, "max_current");
        self.refuse_unused(part, SensorDriver::DigitalInput, &raw.line, field, "line");
        self.refuse_unused(part, SensorDriver::DigitalInput, &raw.active_low, field, "active_low");
        let driver = match part {
            SensorDriver::Bme280 => DriverConfig::Bme280 { address },
            SensorDriver::Tmp102 => DriverConfig::Tmp102 { address },
            SensorDriver::DigitalInput => {
                let line = raw.line.map(Spanned::into_inner).unwrap_or_else(|| {
                    let message = "a digital input needs `line = N`, the line's offset on its chip (as gpioinfo \
                                   lists it)";
                    self.problem(None, format!("{field}.line"), message);
                    0
                });
                DriverConfig::DigitalInput { line, active_low: raw.active_low.is_some_and(|a| *a.get_ref()) }
            }
            SensorDriver::Ads1115 => DriverConfig::Ads1115 {
                address,
                channels: self.channels(raw.channels, field),
                full_scale: self.full_scale(raw.full_scale, field),
            },
            SensorDriver::Ina219 => {
                let shunt_ohms = self.positive(raw.shunt_ohms, 0.1, 0.000_1..=1_000.0, field, "shunt_ohms");
                let max_current = self.positive(raw.max_current, 3.2, 0.001..=1_000.0, field, "max_current");
                // Both bounded above, so the products stay far inside the integers.
                let shunt_micro_ohms = (shunt_ohms * 1e6).round() as u32;
                let current_lsb_micro_amps = ((max_current * 1e6 / 32_768.0).ceil() as i64).max(1);
                let calibration = IntCalibration::new(MicroAmpere(current_lsb_micro_amps), shunt_micro_ohms);
                if calibration.is_none() && self.problems.len() == problems_before {
                    let message = format!(
                        "shunt_ohms × max_current = {:.4} V, the shunt voltage at the largest current, must be \
                         between 0.021 and 671 V for the INA219's calibration register to hold it",
                        shunt_ohms * max_current
                    );
                    self.problem(None, format!("{field}.shunt_ohms"), message);
                }
                DriverConfig::Ina219 { address, shunt_micro_ohms, current_lsb_micro_amps }
            }
        };
        let on_change = raw.on_change.and_then(|on_change| {
            let value = *on_change.get_ref();
            if value.is_finite() && value > 0.0 {
                Some(value)
            } else {
                let message = format!("on_change must be a positive number, got {value}");
                self.problem(Some(on_change.span()), format!("{field}.on_change"), message);
                None
            }
        });
        let simulation = match (raw.simulation, simulated) {
            (Some(simulation), true) => self.simulation(simulation, part, protocol, &format!("{field}.simulation")),
            (None, true) => self.simulation(Spanned::new(0..0, RawSimulation::default()), part, protocol, field),
            (Some(simulation), false) => {
                let message = "only a device on a simulated bus has a simulation";
                self.problem(Some(simulation.span()), format!("{field}.simulation"), message);
                None
            }
            (None, false) => None,
        };
        (self.problems.len() == problems_before).then(|| SensorDevice {
            series: raw.series.map_or_else(|| raw.name.get_ref().to_string(), Spanned::into_inner),
            name: raw.name.into_inner(),
            driver,
            interval: raw.interval.get(),
            reporting: Reporting {
                on_change,
                heartbeat: raw.heartbeat.map_or(defaults::SENSOR_HEARTBEAT, DurationIn::get),
            },
            health: HealthPolicy {
                retries: raw.retries.map_or(defaults::SENSOR_RETRIES, CountIn::as_u32),
                reinit_after: raw.reinit_after.map_or(defaults::SENSOR_REINIT_AFTER, CountIn::as_u32),
                stuck_after: raw.stuck_after.map(CountIn::as_u32),
                max_backoff: raw.max_backoff.map_or(defaults::SENSOR_MAX_BACKOFF, DurationIn::get),
            },
            simulation,
        })
    }

    fn refuse_unused<T>(
        &mut self,
        part: SensorDriver,
        takes_it: SensorDriver,
        value: &Option<Spanned<T>>,
        field: &str,
        name: &str,
    ) {
        if let Some(value) = value
            && part != takes_it
        {
            let message =
                format!("`{name}` is a setting of the {}, not of the {}", part_name(takes_it), part_name(part));
            self.problem(Some(value.span()), format!("{field}.{name}"), message);
        }
    }

    fn channels(&mut self, raw: Option<Spanned<Vec<u8>>>, field: &str) -> Vec<u8> {
        let Some(raw) = raw else { return vec![0, 1, 2, 3] };
        let span = raw.span();
        let channels: BTreeSet<u8> = raw.into_inner().into_iter().collect();
        if channels.is_empty() || channels.iter().any(|&c| c > 3) {
            self.problem(Some(span), format!("{field}.channels"), "list 1 to 4 of the inputs 0, 1, 2, 3");
        }
        channels.into_iter().collect()
    }

    fn full_scale(&mut self, raw: Option<Spanned<f64>>, field: &str) -> FullScale {
        let Some(raw) = raw else { return FullScale::V2_048 };
        let volts = *raw.get_ref();
        FullScale::ALL.iter().find(|(_, v)| (v - volts).abs() < 1e-9).map(|(scale, _)| *scale).unwrap_or_else(|| {
            let allowed: Vec<String> = FullScale::ALL.iter().map(|(_, v)| v.to_string()).collect();
            let message = format!("full_scale {volts} is not one of the ADS1115's ranges: {}", allowed.join(", "));
            self.problem(Some(raw.span()), format!("{field}.full_scale"), message);
            FullScale::V2_048
        })
    }

    fn positive(
        &mut self,
        raw: Option<Spanned<f64>>,
        default: f64,
        allowed: std::ops::RangeInclusive<f64>,
        field: &str,
        name: &str,
    ) -> f64 {
        let Some(raw) = raw else { return default };
        let value = *raw.get_ref();
        if allowed.contains(&value) {
            value
        } else {
            let message = format!("{name} {value} is out of range: use {} to {}", allowed.start(), allowed.end());
            self.problem(Some(raw.span()), format!("{field}.{name}"), message);
            default
        }
    }

    fn simulation(
        &mut self,
        raw: Spanned<RawSimulation>,
        part: SensorDriver,
        protocol: BusProtocol,
        field: &str,
    ) -> Option<DeviceSimulation> {
        let raw = raw.into_inner();
        let toggle_every = match raw.toggle_every {
            None => DeviceSimulation::default().toggle_every,
            Some(toggle) if part == SensorDriver::DigitalInput => toggle.into_inner().get(),
            Some(toggle) => {
                let message = "only a simulated digital input has toggle_every";
                self.problem(Some(toggle.span()), format!("{field}.toggle_every"), message);
                return None;
            }
        };
        let inputs = match raw.inputs {
            None => DeviceSimulation::default().inputs,
            Some(inputs) if part != SensorDriver::Ads1115 => {
                let message = "only a simulated ADS1115 has inputs";
                self.problem(Some(inputs.span()), format!("{field}.inputs"), message);
                return None;
            }
            Some(inputs) => {
                let span = inputs.span();
                let inputs = inputs.into_inner();
                if inputs.is_empty() || inputs.len() > 4 || inputs.iter().any(|v| !(-6.144..=6.144).contains(v)) {
                    let message = "list 1 to 4 input voltages, each from -6.144 to 6.144";
                    self.problem(Some(span), format!("{field}.inputs"), message);
                    return None;
                }
                inputs
            }
        };
        let registers = match raw.registers {
            None => None,
            Some(path) if part == SensorDriver::DigitalInput => {
                let message = "a GPIO line has no registers: its level follows toggle_every";
                self.problem(Some(path.span()), format!("{field}.registers"), message);
                return None;
            }
            Some(path) => {
                let resolved = self.resolve(path.get_ref());
                let read = match read_bounded(&resolved, MAX_DUMP_BYTES) {
                    Err(e) => Err(format!("cannot read the register dump {}: {e}", resolved.display())),
                    Ok(text) => RegisterDump::parse(&text).map_err(|e| {
                        format!(
                            "the register dump {}:{} is not i2cdump output: {}",
                            resolved.display(),
                            e.line,
                            e.message
                        )
                    }),
                };
                match read {
                    Ok(dump) => Some(dump),
                    Err(e) => {
                        self.problem(Some(path.span()), format!("{field}.registers"), e);
                        return None;
                    }
                }
            }
        };
        let mut faults = Vec::new();
        for (index, fault) in raw.faults.into_iter().enumerate() {
            let span = fault.span();
            let fault = fault.into_inner();
            if fault.fault == FaultScript::Nack && protocol != BusProtocol::I2c {
                let message = format!(
                    "{} has no acknowledgement to withhold: script remote_io, stuck or slow",
                    protocol_name(protocol)
                );
                self.problem(Some(span), format!("{field}.faults[{index}].fault"), message);
                continue;
            }
            let delay = match (fault.fault, fault.delay) {
                (FaultScript::Slow, Some(delay)) => delay.get(),
                (FaultScript::Slow, None) => {
                    self.problem(Some(span), format!("{field}.faults[{index}].delay"), "a slow fault needs a delay");
                    continue;
                }
                (_, Some(_)) => {
                    let message = "only a slow fault takes a delay";
                    self.problem(Some(span), format!("{field}.faults[{index}].delay"), message);
                    continue;
                }
                (_, None) => std::time::Duration::ZERO,
            };
            let from = fault.at.get();
            faults.push(ScriptedFault { fault: fault.fault, from, until: from + fault.lasting.get(), delay });
        }
        Some(DeviceSimulation {
            registers,
            wobble: raw.wobble.map(|w| w.as_u32() as u16),
            inputs,
            toggle_every,
            faults,
        })
    }
}

/// The largest register dump read: i2cdump prints about 4 KiB for a whole device.
const MAX_DUMP_BYTES: u64 = 64 * 1024;

/// `path` as text, refused when it holds more than `limit` bytes (a device node or a wrong file
/// named by mistake is not read without end) or is a FIFO (opening one waits for a writer).
fn read_bounded(path: &std::path::Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(path).map_err(|e| e.to_string())?.file_type().is_fifo() {
        return Err("it is a FIFO, which would hold the start waiting for a writer; a register dump is a file".into());
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > limit {
        return Err(format!("it holds more than {} KiB, which no i2cdump output does", limit / 1024));
    }
    Ok(text)
}

/// The I²C addresses `part` can be strapped to; the first is its usual one (the default). A part
/// that is not on I²C has none (the range holds only 0, never used).
fn addresses_of(part: SensorDriver) -> std::ops::RangeInclusive<u8> {
    match part {
        SensorDriver::Bme280 => 0x76..=0x77,
        SensorDriver::Ads1115 | SensorDriver::Tmp102 => 0x48..=0x4b,
        SensorDriver::Ina219 => 0x40..=0x4f,
        SensorDriver::DigitalInput => 0..=0,
    }
}

const ALL_PARTS: [SensorDriver; 5] = [
    SensorDriver::Bme280,
    SensorDriver::Ads1115,
    SensorDriver::Ina219,
    SensorDriver::Tmp102,
    SensorDriver::DigitalInput,
];

/// The buses `part` is read on.
fn protocols_of(part: SensorDriver) -> &'static [BusProtocol] {
    match part {
        SensorDriver::Bme280 => &[BusProtocol::I2c, BusProtocol::Spi],
        SensorDriver::Ads1115 | SensorDriver::Ina219 | SensorDriver::Tmp102 => &[BusProtocol::I2c],
        SensorDriver::DigitalInput => &[BusProtocol::Gpio],
    }
}

fn protocol_name(protocol: BusProtocol) -> &'static str {
    match protocol {
        BusProtocol::I2c => "I²C",
        BusProtocol::Spi => "SPI",
        BusProtocol::Gpio => "GPIO",
    }
}

fn part_name(part: SensorDriver) -> &'static str {
    match part {
        SensorDriver::Bme280 => "BME280",
        SensorDriver::Ads1115 => "ADS1115",
        SensorDriver::Ina219 => "INA219",
        SensorDriver::Tmp102 => "TMP102",
        SensorDriver::DigitalInput => "digital input",
    }
}

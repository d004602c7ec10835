//! The parts a simulated bus knows: their registers and the few behaviours their drivers rely
//! on (see the module docs of `simulated`).

use crate::config::register_dump::{RegisterDump, RegisterWidth};
use crate::config::{DeviceSimulation, DriverConfig};

const BME280_MAP: &str = include_str!("maps/bme280.txt");
const ADS1115_MAP: &str = include_str!("maps/ads1115.txt");
const INA219_MAP: &str = include_str!("maps/ina219.txt");
const TMP102_MAP: &str = include_str!("maps/tmp102.txt");

/// Which part, with what its simulation needs beyond registers.
#[derive(Clone, Debug)]
enum Part {
    /// Raw ADC values of the map (temperature, pressure, humidity), before movement.
    Bme280 { adc_t: i32, adc_p: i32, adc_h: i32 },
    /// Input voltages.
    Ads1115 { inputs: Vec<f64> },
    /// The shunt voltage register of the map, before movement.
    Ina219 { shunt: i16 },
    /// The temperature register of the map, before movement.
    Tmp102 { temperature: i16 },
}

/// One simulated part.
#[derive(Clone, Debug)]
pub(super) struct Chip {
    part: Part,
    width: RegisterWidth,
    /// By pointer: the value as the part means it (16-bit ones most significant byte first on the
    /// wire); `None`: not acknowledged.
    registers: Vec<Option<u16>>,
    initial: Vec<Option<u16>>,
    pointer: u8,
    wobble: i32,
    /// Measurements taken so far: the phase of the movement.
    step: u32,
}

/// The built-in map of a part, as written in `maps/`; `None` for a part without registers.
pub(super) fn builtin_map(driver: &DriverConfig) -> Option<RegisterDump> {
    let text = match driver {
        DriverConfig::Bme280 { .. } => BME280_MAP,
        DriverConfig::Ads1115 { .. } => ADS1115_MAP,
        DriverConfig::Ina219 { .. } => INA219_MAP,
        DriverConfig::Tmp102 { .. } => TMP102_MAP,
        DriverConfig::DigitalInput { .. } => return None,
    };
    Some(RegisterDump::parse(text).expect("the built-in register maps parse (tested)"))
}

impl Chip {
    /// The part `driver` names, simulated as `simulation` says; `None` for a part without
    /// registers.
    pub(super) fn new(driver: &DriverConfig, simulation: &DeviceSimulation) -> Option<Self> {
        let dump = match &simulation.registers {
            Some(dump) => dump.clone(),
            None => builtin_map(driver)?,
        };
        let registers: Vec<Option<u16>> = match dump.width {
            RegisterWidth::Byte => dump.registers.clone(),
            // i2cdump shows the SMBus word, low byte first on the wire.
            RegisterWidth::Word => dump.registers.iter().map(|r| r.map(u16::swap_bytes)).collect(),
        };
        let byte = |pointer: usize| i32::from(registers[pointer].unwrap_or(0) as u8);
        let word = |pointer: usize| registers[pointer].unwrap_or(0) as i16;
        let (part, default_wobble) = match driver {
            DriverConfig::Bme280 { .. } => (
                Part::Bme280 {
                    adc_p: (byte(0xf7) << 12) | (byte(0xf8) << 4) | (byte(0xf9) >> 4),
                    adc_t: (byte(0xfa) << 12) | (byte(0xfb) << 4) | (byte(0xfc) >> 4),
                    adc_h: (byte(0xfd) << 8) | byte(0xfe),
                },
                40,
            ),
            DriverConfig::Ads1115 { .. } => (Part::Ads1115 { inputs: simulation.inputs.clone() }, 8),
            DriverConfig::Ina219 { .. } => (Part::Ina219 { shunt: word(1) }, 20),
            DriverConfig::Tmp102 { .. } => (Part::Tmp102 { temperature: word(0) }, 2),
            DriverConfig::DigitalInput { .. } => return None,
        };
        let wobble = i32::from(simulation.wobble.unwrap_or(default_wobble));
        Some(Self { part, width: dump.width, initial: registers.clone(), registers, pointer: 0, wobble, step: 0 })
    }

    /// This measurement's movement: a triangle wave of `wobble` LSB over 8 measurements.
    fn offset(&self) -> i32 {
        const TRIANGLE: [i32; 8] = [0, 1, 2, 3, 4, 3, 2, 1];
        self.wobble * TRIANGLE[(self.step % 8) as usize] / 4
    }

    /// The register at `pointer`, as the part means it.
    fn get(&self, pointer: u8) -> Option<u16> {
        self.registers[usize::from(pointer)]
    }

    fn set(&mut self, pointer: u8, value: u16) {
        self.registers[usize::from(pointer)] = Some(value);
    }

    /// A write: the pointer, then data for the registers from it on.
    pub(super) fn write(&mut self, bytes: &[u8], stuck: bool) {
        let Some((&pointer, data)) = bytes.split_first() else { return };
        self.pointer = pointer;
        match self.width {
            RegisterWidth::Byte => {
                for (offset, &value) in data.iter().enumerate() {
                    let register = pointer.wrapping_add(offset as u8);
                    self.written(register, u16::from(value), stuck);
                }
            }
            RegisterWidth::Word => {
                if let [msb, lsb, ..] = *data {
                    self.written(pointer, u16::from_be_bytes([msb, lsb]), stuck);
                }
            }
        }
    }

    /// A read from the pointer on; `Err(register)` for one that does not answer.
    pub(super) fn read(&mut self, buffer: &mut [u8], stuck: bool) -> Result<(), u8> {
        if self.width == RegisterWidth::Word {
            self.reading(self.pointer, stuck);
        }
        for (index, byte) in buffer.iter_mut().enumerate() {
            match self.width {
                RegisterWidth::Byte => {
                    let register = self.pointer;
                    *byte = self.get(register).ok_or(register)? as u8;
                    self.pointer = self.pointer.wrapping_add(1);
                }
                RegisterWidth::Word => {
                    let value = self.get(self.pointer).ok_or(self.pointer)?;
                    *byte = value.to_be_bytes()[index % 2];
                }
            }
        }
        Ok(())
    }

    /// The part's reaction to `value` written to `register`.
    fn written(&mut self, register: u8, value: u16, stuck: bool) {
        match (&self.part, register) {
            // Soft reset: every register back to its power-on value.
            (Part::Bme280 { .. }, 0xe0) if value == 0xb6 => self.registers = self.initial.clone(),
            // Forced mode: one conversion, done at once; the part goes back to sleep.
            (Part::Bme280 { .. }, 0xf4) if matches!(value & 0b11, 0b01 | 0b10) => {
                self.set(0xf4, value & !0b11);
                self.measure(stuck);
            }
            // A one-shot conversion of the selected input (a conversion starts on OS = 1).
            (Part::Ads1115 { .. }, 0x01) => {
                self.set(0x01, value);
                if value & 0x8000 != 0 {
                    self.measure(stuck);
                }
            }
            // Reset: every register back to its power-on value.
            (Part::Ina219 { .. }, 0x00) if value & 0x8000 != 0 => self.registers = self.initial.clone(),
            (Part::Ina219 { .. }, 0x05) => {
                self.set(0x05, value);
                self.ina219_results();
            }
            _ => {
                if self.get(register).is_some() {
                    self.set(register, value);
                }
            }
        }
    }

    /// The part's reaction to a read of a 16-bit register.
    fn reading(&mut self, register: u8, stuck: bool) {
        match (&self.part, register) {
            // The results are read bus voltage first: a new conversion.
            (Part::Ina219 { .. }, 0x02) | (Part::Tmp102 { .. }, 0x00) => self.measure(stuck),
            _ => {}
        }
    }

    /// A new measurement: the raw values of the map, moved by this step's offset (unless stuck).
    fn measure(&mut self, stuck: bool) {
        if !stuck {
            self.step = self.step.wrapping_add(1);
        }
        let offset = self.offset();
        match self.part.clone() {
            Part::Bme280 { adc_t, adc_p, adc_h } => {
                let (t, p, h) = ((adc_t + offset) as u32, (adc_p + offset) as u32, (adc_h + offset) as u32);
                let bytes = [p >> 12, p >> 4, p << 4, t >> 12, t >> 4, t << 4, h >> 8, h];
                for (index, byte) in bytes.into_iter().enumerate() {
                    self.set(0xf7 + index as u8, u16::from(byte as u8));
                }
            }
            Part::Ads1115 { inputs } => {
                let config = self.get(0x01).unwrap_or(0x8583);
                let mux = (config >> 12) & 0b111;
                let input = if mux >= 4 { usize::from(mux - 4) } else { 0 };
                let full_scale =
                    [6.144, 4.096, 2.048, 1.024, 0.512, 0.256, 0.256, 0.256][usize::from((config >> 9) & 0b111)];
                let volts = inputs.get(input).copied().unwrap_or(0.0);
                let counts = (volts / full_scale * 32_768.0).round() as i32 + offset;
                self.set(0x00, counts.clamp(-32_768, 32_767) as i16 as u16);
            }
            Part::Ina219 { shunt } => {
                self.set(0x01, (i32::from(shunt) + offset).clamp(-32_000, 32_000) as i16 as u16);
                self.ina219_results();
            }
            Part::Tmp102 { temperature } => {
                let moved = i32::from(temperature >> 4) + offset;
                self.set(0x00, ((moved << 4) as i16) as u16);
            }
        }
    }

    /// An INA219's current and power registers from its shunt, bus and calibration registers
    /// (datasheet, "Programming the Calibration Register").
    fn ina219_results(&mut self) {
        let shunt = i64::from(self.get(0x01).unwrap_or(0) as i16);
        let bus = i64::from(self.get(0x02).unwrap_or(0) >> 3);
        let calibration = i64::from(self.get(0x05).unwrap_or(0));
        let current = shunt * calibration / 4096;
        let power = current.abs() * bus / 5000;
        self.set(0x04, current.clamp(-32_768, 32_767) as i16 as u16);
        self.set(0x03, power.clamp(0, 65_535) as u16);
    }
}

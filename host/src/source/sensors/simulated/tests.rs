//! The real drivers against the simulated buses: each part's built-in map gives the values its
//! datasheet says, movement and faults show as they should, a user's dump is read, SPI frames
//! follow the part's protocol, and GPIO lines toggle, hold and fail.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use embedded_hal::i2c::I2c;
use embedded_hal_mock::eh1::delay::NoopDelay;

use super::{SimulatedBus, SimulatedLine, SimulatedSpi};
use crate::config::register_dump::RegisterDump;
use crate::config::{DeviceSimulation, DriverConfig, FaultScript, FullScale, ScriptedFault};
use crate::source::sensors::drivers::{self, Quantity, Sensor};
use crate::source::sensors::health::FaultKind;

fn simulation(wobble: u16, faults: Vec<ScriptedFault>) -> DeviceSimulation {
    DeviceSimulation { wobble: Some(wobble), inputs: vec![0.5, 1.0, 1.5, 3.3], faults, ..DeviceSimulation::default() }
}

fn open(driver: &DriverConfig, simulation: &DeviceSimulation) -> Box<dyn Sensor> {
    let mut bus = SimulatedBus::new();
    bus.attach(driver, simulation);
    drivers::open_i2c(driver, &Rc::new(RefCell::new(bus)), NoopDelay)
}

fn value(quantities: &[Quantity], name: &str) -> f64 {
    quantities.iter().find(|q| q.name == name).unwrap_or_else(|| panic!("{name} in {quantities:?}")).value
}

fn ina219() -> DriverConfig {
    // 0.1 Ω, 3.2 A: 98 µA per LSB.
    DriverConfig::Ina219 { address: 0x40, shunt_micro_ohms: 100_000, current_lsb_micro_amps: 98 }
}

#[test]
fn each_part_reads_what_its_built_in_map_holds() {
    let mut bme = open(&DriverConfig::Bme280 { address: 0x76 }, &simulation(0, Vec::new()));
    bme.init().expect("it works");
    let sample = bme.measure().expect("it works");
    // The datasheet's worked example: 25.08 °C and 100 653 Pa.
    assert!((value(&sample, "temperature") - 25.08).abs() < 0.01, "{sample:?}");
    assert!((value(&sample, "pressure") - 1006.53).abs() < 0.05, "{sample:?}");
    assert!((0.0..=100.0).contains(&value(&sample, "humidity")), "{sample:?}");
    assert_eq!(sample.iter().map(|q| q.unit).collect::<Vec<_>>(), ["Cel", "%", "hPa"]);

    let adc = DriverConfig::Ads1115 { address: 0x48, channels: vec![0, 1, 3], full_scale: FullScale::V4_096 };
    let mut ads = open(&adc, &simulation(0, Vec::new()));
    ads.init().expect("it works");
    let sample = ads.measure().expect("it works");
    let volts: Vec<f64> = sample.iter().map(|q| q.value).collect();
    for (got, want) in volts.iter().zip([0.5, 1.0, 3.3]) {
        assert!((got - want).abs() < 0.001, "{sample:?}");
    }
    assert_eq!(sample.iter().map(|q| q.name).collect::<Vec<_>>(), ["a0", "a1", "a3"]);

    let mut ina = open(&ina219(), &simulation(0, Vec::new()));
    ina.init().expect("it works");
    let sample = ina.measure().expect("it works");
    assert!((value(&sample, "bus_voltage") - 12.0).abs() < 1e-9, "{sample:?}");
    assert!((value(&sample, "shunt_voltage") - 0.04).abs() < 1e-9, "{sample:?}");
    assert!((value(&sample, "current") - 0.4).abs() < 0.001, "{sample:?}");
    assert!((value(&sample, "power") - 4.8).abs() < 0.01, "{sample:?}");

    let mut tmp = open(&DriverConfig::Tmp102 { address: 0x48 }, &simulation(0, Vec::new()));
    tmp.init().expect("it works");
    assert_eq!(tmp.measure().expect("it works"), [Quantity { name: "temperature", unit: "Cel", value: 21.5 }]);
}

#[test]
fn samples_move_unless_the_part_is_stuck() {
    let stuck = ScriptedFault {
        fault: FaultScript::Stuck,
        from: Duration::ZERO,
        until: Duration::from_secs(3_600),
        delay: Duration::ZERO,
    };
    for (faults, moving) in [(Vec::new(), true), (vec![stuck], false)] {
        let mut tmp = open(&DriverConfig::Tmp102 { address: 0x48 }, &simulation(4, faults));
        tmp.init().expect("it works");
        let values: Vec<f64> = (0..4).map(|_| tmp.measure().expect("it works")[0].value).collect();
        let changes = values.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(changes == 3, moving, "{values:?}");
        assert_eq!(changes == 0, !moving, "{values:?}");
    }
}

#[test]
fn scripted_faults_fail_transfers_the_way_linux_does() {
    let during =
        |fault| ScriptedFault { fault, from: Duration::ZERO, until: Duration::from_secs(3_600), delay: Duration::ZERO };
    let mut tmp = open(&DriverConfig::Tmp102 { address: 0x48 }, &simulation(0, vec![during(FaultScript::Nack)]));
    assert_eq!(tmp.init().expect_err("it fails").kind, FaultKind::Nack);
    let mut tmp = open(&DriverConfig::Tmp102 { address: 0x48 }, &simulation(0, vec![during(FaultScript::RemoteIo)]));
    let fault = tmp.measure().expect_err("it fails");
    assert_eq!((fault.kind, fault.detail.as_str()), (FaultKind::Io, "Remote I/O error (os error 121)"));

    // A fault that has not started yet, and one that is over, do nothing.
    let later = ScriptedFault { from: Duration::from_secs(3_600), ..during(FaultScript::Nack) };
    let over = ScriptedFault { until: Duration::ZERO, ..during(FaultScript::RemoteIo) };
    let mut tmp = open(&DriverConfig::Tmp102 { address: 0x48 }, &simulation(0, vec![later, over]));
    assert!(tmp.measure().is_ok());

    let slow = ScriptedFault { delay: Duration::from_millis(30), ..during(FaultScript::Slow) };
    let mut tmp = open(&DriverConfig::Tmp102 { address: 0x48 }, &simulation(0, vec![slow]));
    let started = std::time::Instant::now();
    tmp.measure().expect("it works");
    assert!(started.elapsed() >= Duration::from_millis(30));
}

#[test]
fn a_device_that_is_not_there_and_a_register_marked_xx_are_not_acknowledged() {
    let mut bus = SimulatedBus::new();
    bus.attach(&DriverConfig::Tmp102 { address: 0x48 }, &simulation(0, Vec::new()));
    let error = bus.write_read(0x49, &[0], &mut [0; 2]).expect_err("it fails");
    assert!(error.to_string().contains("0x49 did not acknowledge its address"), "{error}");
    let error = bus.write_read(0x48, &[0x04], &mut [0; 2]).expect_err("it fails");
    assert!(error.to_string().contains("register 0x04"), "{error}");
}

#[test]
fn a_users_word_dump_is_read_with_i2cdumps_byte_order() {
    // `i2cdump -y 1 0x48 w` of a TMP102 at 25 °C: 0x1900 on the wire shows as 0019.
    let text = "     0,8  1,9  2,a  3,b  4,c  5,d  6,e  7,f\n00: 0019 a060 004b 0050 XXXX XXXX XXXX XXXX\n";
    let registers = Some(RegisterDump::parse(text).expect("it works"));
    let simulation = DeviceSimulation { registers, ..simulation(0, Vec::new()) };
    let mut tmp = open(&DriverConfig::Tmp102 { address: 0x48 }, &simulation);
    assert_eq!(tmp.measure().expect("it works")[0].value, 25.0);
}

#[test]
fn the_built_in_maps_parse() {
    for driver in [
        DriverConfig::Bme280 { address: 0x76 },
        DriverConfig::Ads1115 { address: 0x48, channels: vec![0], full_scale: FullScale::V2_048 },
        ina219(),
        DriverConfig::Tmp102 { address: 0x48 },
    ] {
        let map = super::chips::builtin_map(&driver).expect("a register part");
        assert!(map.registers.iter().any(Option::is_some), "{driver:?}");
    }
}

#[test]
fn a_bme280_on_the_simulated_spi_bus_reads_as_on_i2c_and_frames_follow_the_part() {
    use embedded_hal::spi::{Operation, SpiDevice};

    let bme = DriverConfig::Bme280 { address: 0x76 };
    let mut part = drivers::open_spi(&bme, SimulatedSpi::new(&bme, &simulation(0, Vec::new())), NoopDelay);
    part.init().expect("it works");
    let sample = part.measure().expect("it works");
    assert!((value(&sample, "temperature") - 25.08).abs() < 0.01, "{sample:?}");
    assert!((value(&sample, "pressure") - 1006.53).abs() < 0.05, "{sample:?}");

    let mut spi = SimulatedSpi::new(&bme, &simulation(0, Vec::new()));
    // A read frame: the chip id answers after its address, not during it.
    let mut reply = [0; 2];
    spi.transfer(&mut reply, &[0xd0]).expect("it works");
    assert_eq!(reply, [0xff, 0x60], "full duplex: the answer comes one byte after the address");
    let mut id = [0];
    spi.transaction(&mut [Operation::Write(&[0xd0]), Operation::Read(&mut id)]).expect("it works");
    assert_eq!(id, [0x60]);
    // A write frame: 0x74 is register 0xf4 with the read bit cleared; pairs may follow.
    spi.write(&[0x72, 0x01, 0x74, 0x54]).expect("it works");
    let mut control = [0; 2];
    spi.transaction(&mut [Operation::Write(&[0xf4]), Operation::Read(&mut control)]).expect("it works");
    assert_eq!(control[0], 0x54);
    // A register the map does not hold: MISO undriven.
    let mut nothing = [0];
    spi.transaction(&mut [Operation::Write(&[0x80]), Operation::Read(&mut nothing)]).expect("it works");
    assert_eq!(nothing, [0xff]);

    let during =
        |fault| ScriptedFault { fault, from: Duration::ZERO, until: Duration::from_secs(3_600), delay: Duration::ZERO };
    let failing = SimulatedSpi::new(&bme, &simulation(0, vec![during(FaultScript::RemoteIo)]));
    let fault = drivers::open_spi(&bme, failing, NoopDelay).init().expect_err("it fails");
    assert_eq!((fault.kind, fault.detail.as_str()), (FaultKind::Io, "Remote I/O error (os error 121)"));
}

#[test]
fn a_simulated_line_toggles_holds_its_level_when_stuck_and_fails_like_a_gone_chip() {
    use embedded_hal::digital::InputPin;

    let toggling = DeviceSimulation { toggle_every: Duration::from_millis(40), ..DeviceSimulation::default() };
    let mut line = SimulatedLine::new(&toggling).request().expect("requested");
    assert!(!line.is_high().expect("it works"), "low first");
    let mut levels = vec![false];
    let started = std::time::Instant::now();
    while levels.windows(2).filter(|w| w[0] != w[1]).count() < 2 && started.elapsed() < Duration::from_secs(10) {
        levels.push(line.is_high().expect("it works"));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(levels.windows(2).filter(|w| w[0] != w[1]).count() >= 2, "it toggles: {levels:?}");

    let during =
        |fault| ScriptedFault { fault, from: Duration::ZERO, until: Duration::from_secs(3_600), delay: Duration::ZERO };
    let stuck = DeviceSimulation { faults: vec![during(FaultScript::Stuck)], ..toggling.clone() };
    let mut line = SimulatedLine::new(&stuck).request().expect("requested");
    let first = line.is_high().expect("it works");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(line.is_high().expect("it works"), first, "held while stuck");

    let gone = SimulatedLine::new(&DeviceSimulation { faults: vec![during(FaultScript::RemoteIo)], ..toggling });
    assert_eq!(gone.request().expect_err("refused").kind, FaultKind::Io);
}

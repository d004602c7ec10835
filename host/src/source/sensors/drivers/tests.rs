//! Each driver's bus protocol, transaction by transaction, against `embedded-hal-mock`: what it
//! writes and reads to initialise its part and take a sample (on I²C, on SPI through the register
//! protocol, on a GPIO line), the values it makes of the answers, and how a bus error becomes a
//! fault of the right kind.

use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
use embedded_hal_mock::eh1::MockError;
use embedded_hal_mock::eh1::delay::NoopDelay;
use embedded_hal_mock::eh1::digital::{Mock as PinMock, State as PinState, Transaction as P};
use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
use embedded_hal_mock::eh1::spi::{Mock as SpiMock, Transaction};

use super::spi::OverSpiError;
use super::{Ads1115, Bme280, DigitalInput, Ina219, Quantity, RegistersOverSpi, Sensor, Tmp102};
use crate::config::FullScale;
use crate::source::sensors::health::{Fault, FaultKind};

type S = Transaction<u8>;

/// Calibration of the datasheet's worked example (0x88…0xa1) and typical humidity trimming
/// (0xe1…0xe7).
const BME280_PT: [u8; 26] = [
    0x70, 0x6b, 0x43, 0x67, 0x18, 0xfc, 0x7d, 0x8e, 0x43, 0xd6, 0xd0, 0x0b, 0x27, 0x0b, 0x8c, 0x00, 0xf9, 0xff, 0x8c,
    0x3c, 0xf8, 0xc6, 0x70, 0x17, 0x00, 0x4b,
];
const BME280_H: [u8; 7] = [0x6a, 0x01, 0x00, 0x13, 0x29, 0x03, 0x1e];

fn value(quantities: &[Quantity], name: &str) -> f64 {
    quantities.iter().find(|q| q.name == name).expect("quantity").value
}

#[test]
fn bme280_checks_its_chip_resets_calibrates_and_samples_in_forced_mode() {
    let a = 0x77;
    let expectations = [
        // init: chip id, soft reset, calibration, then humidity ×1, pressure ×16, temperature ×2, IIR 16.
        T::write_read(a, vec![0xd0], vec![0x60]),
        T::write(a, vec![0xe0, 0xb6]),
        T::write_read(a, vec![0x88], BME280_PT.to_vec()),
        T::write_read(a, vec![0xe1], BME280_H.to_vec()),
        T::write_read(a, vec![0xf4], vec![0x00]),
        T::write(a, vec![0xf2, 0x01]),
        T::write_read(a, vec![0xf4], vec![0x00]),
        T::write(a, vec![0xf4, 0x54]),
        T::write_read(a, vec![0xf5], vec![0x00]),
        T::write(a, vec![0xf5, 0x10]),
        // sample: forced mode, then the eight data registers in one burst.
        T::write_read(a, vec![0xf4], vec![0x54]),
        T::write_read(a, vec![0xf4], vec![0x54]),
        T::write(a, vec![0xf4, 0x55]),
        T::write_read(a, vec![0xf7], vec![0x65, 0x5a, 0xc0, 0x7e, 0xed, 0x00, 0x69, 0x78]),
        // a sample whose first transfer is not acknowledged
        T::write_read(a, vec![0xf4], vec![0x54]).with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)),
    ];
    let mut i2c = Mock::new(&expectations);
    let mut part = Bme280::new(i2c.clone(), a, NoopDelay);
    part.init().expect("it works");
    let sample = part.measure().expect("it works");
    assert!((value(&sample, "temperature") - 25.08).abs() < 0.01, "{sample:?}");
    assert!((value(&sample, "pressure") - 1006.53).abs() < 0.05, "{sample:?}");
    assert_eq!(part.measure().expect_err("it fails").kind, FaultKind::Nack);
    i2c.done();
}

#[test]
fn bme280_refuses_another_chip() {
    let mut i2c = Mock::new(&[T::write_read(0x76, vec![0xd0], vec![0x55])]);
    let mut part = Bme280::new(i2c.clone(), 0x76, NoopDelay);
    let fault = part.init().expect_err("it fails");
    assert_eq!(fault.kind, FaultKind::Data);
    assert!(fault.detail.contains("chip id"), "{fault}");
    i2c.done();
}

#[test]
fn ads1115_sets_its_range_and_polls_a_one_shot_conversion_per_input() {
    let a = 0x49;
    let expectations = [
        // init: ±4.096 V (PGA 001) in the power-on configuration 0x8583.
        T::write(a, vec![0x01, 0x83, 0x83]),
        // input 1: idle, start a conversion (MUX 101), busy once, done, read it.
        T::write_read(a, vec![0x01], vec![0x83, 0x83]),
        T::write(a, vec![0x01, 0xd3, 0x83]),
        T::write_read(a, vec![0x01], vec![0x53, 0x83]),
        T::write_read(a, vec![0x01], vec![0xd3, 0x83]),
        T::write_read(a, vec![0x00], vec![0x30, 0x00]),
        // a failed sample: the configuration read meets a bus error
        T::write_read(a, vec![0x01], vec![0xd3, 0x83]).with_error(ErrorKind::Bus),
    ];
    let mut i2c = Mock::new(&expectations);
    let mut part = Ads1115::new(i2c.clone(), a, vec![1], FullScale::V4_096, NoopDelay);
    part.init().expect("it works");
    // 0x3000 = 12288 counts of 4.096 V / 32768.
    assert_eq!(part.measure().expect("it works"), [Quantity { name: "a1", unit: "V", value: 1.536 }]);
    assert_eq!(part.measure().expect_err("it fails").kind, FaultKind::Bus);
    i2c.done();
}

#[test]
fn ina219_resets_calibrates_and_reads_its_four_results() {
    let a = 0x41;
    let expectations = [
        // init: reset bit in the default configuration, reads back as the default, calibration
        // 0.04096 / (98 µA × 0.1 Ω), which the crate rounds to 4178.
        T::write(a, vec![0x00, 0xb9, 0x9f]),
        T::write_read(a, vec![0x00], vec![0x39, 0x9f]),
        T::write(a, vec![0x05, 0x10, 0x52]),
        // sample: bus voltage (12 V, conversion ready), power, shunt (40 mV), current, in one go.
        T::transaction_start(a),
        T::write(a, vec![0x02]),
        T::read(a, vec![0x5d, 0xc2]),
        T::write(a, vec![0x03]),
        T::read(a, vec![0x09, 0x90]),
        T::write(a, vec![0x01]),
        T::read(a, vec![0x0f, 0xa0]),
        T::write(a, vec![0x04]),
        T::read(a, vec![0x0f, 0xf1]),
        T::transaction_end(a),
    ];
    let mut i2c = Mock::new(&expectations);
    let mut part = Ina219::new(i2c.clone(), a, 100_000, 98);
    part.init().expect("it works");
    let sample = part.measure().expect("it works");
    assert_eq!(value(&sample, "bus_voltage"), 12.0);
    assert_eq!(value(&sample, "shunt_voltage"), 0.04);
    assert!((value(&sample, "current") - 4081.0 * 98e-6).abs() < 1e-9, "{sample:?}");
    assert!((value(&sample, "power") - 2448.0 * 20.0 * 98e-6).abs() < 1e-9, "{sample:?}");
    i2c.done();
}

#[test]
fn ina219_that_does_not_answer_or_reset_faults_and_keeps_its_bus_for_the_next_attempt() {
    let a = 0x40;
    let mut expectations = vec![
        T::write(a, vec![0x00, 0xb9, 0x9f]).with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)),
        T::write(a, vec![0x00, 0xb9, 0x9f]),
    ];
    // The crate reads the configuration up to 12 times waiting for the reset to finish.
    expectations.extend((0..12).map(|_| T::write_read(a, vec![0x00], vec![0xb9, 0x9f])));
    expectations.extend([
        T::write(a, vec![0x00, 0xb9, 0x9f]),
        T::write_read(a, vec![0x00], vec![0x39, 0x9f]),
        T::write(a, vec![0x05, 0x10, 0x52]),
    ]);
    let mut i2c = Mock::new(&expectations);
    let mut part = Ina219::new(i2c.clone(), a, 100_000, 98);
    assert_eq!(part.init().expect_err("it fails").kind, FaultKind::Nack);
    assert_eq!(part.init().expect_err("it fails").kind, FaultKind::Data, "the configuration never read back as reset");
    part.init().expect("it works");
    i2c.done();
}

#[test]
fn tmp102_reads_its_temperature_register() {
    let a = 0x4b;
    let expectations = [
        T::write_read(a, vec![0x00], vec![0x19, 0x00]),
        T::write_read(a, vec![0x00], vec![0xe7, 0x00]),
        T::write_read(a, vec![0x00], vec![0x00, 0x00]).with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data)),
    ];
    let mut i2c = Mock::new(&expectations);
    let mut part = Tmp102::new(i2c.clone(), a);
    part.init().expect("it works");
    // 0xe70 × 0.0625 °C in two's complement: -25 °C.
    assert_eq!(part.measure().expect("it works"), [Quantity { name: "temperature", unit: "Cel", value: -25.0 }]);
    assert_eq!(part.measure().expect_err("it fails").kind, FaultKind::Nack);
    i2c.done();
}

/// One register read over SPI: the address with the read bit, then the answer, in one frame.
fn spi_read(register: u8, answer: Vec<u8>) -> [S; 4] {
    [S::transaction_start(), S::write_vec(vec![register | 0x80]), S::read_vec(answer), S::transaction_end()]
}

/// Register writes over SPI: address (read bit cleared) and value pairs, in one frame.
fn spi_write(pairs: Vec<u8>) -> [S; 3] {
    [S::transaction_start(), S::write_vec(pairs), S::transaction_end()]
}

#[test]
fn bme280_on_spi_reads_with_the_read_bit_set_and_writes_with_it_cleared() {
    let mut expectations: Vec<S> = Vec::new();
    // init, as on I²C: chip id, soft reset (0xe0 → 0x60), calibration, oversampling, IIR.
    expectations.extend(spi_read(0xd0, vec![0x60]));
    expectations.extend(spi_write(vec![0x60, 0xb6]));
    expectations.extend(spi_read(0x88, BME280_PT.to_vec()));
    expectations.extend(spi_read(0xe1, BME280_H.to_vec()));
    expectations.extend(spi_read(0xf4, vec![0x00]));
    expectations.extend(spi_write(vec![0x72, 0x01]));
    expectations.extend(spi_read(0xf4, vec![0x00]));
    expectations.extend(spi_write(vec![0x74, 0x54]));
    expectations.extend(spi_read(0xf5, vec![0x00]));
    expectations.extend(spi_write(vec![0x75, 0x10]));
    // sample: forced mode, then the eight data registers in one frame.
    expectations.extend(spi_read(0xf4, vec![0x54]));
    expectations.extend(spi_read(0xf4, vec![0x54]));
    expectations.extend(spi_write(vec![0x74, 0x55]));
    expectations.extend(spi_read(0xf7, vec![0x65, 0x5a, 0xc0, 0x7e, 0xed, 0x00, 0x69, 0x78]));
    let mut spi = SpiMock::new(&expectations);
    let mut part = Bme280::new(RegistersOverSpi::new(spi.clone()), 0x76, NoopDelay);
    part.init().expect("it works");
    let sample = part.measure().expect("it works");
    assert!((value(&sample, "temperature") - 25.08).abs() < 0.01, "{sample:?}");
    assert!((value(&sample, "pressure") - 1006.53).abs() < 0.05, "{sample:?}");
    spi.done();
}

#[test]
fn registers_over_spi_refuse_what_has_no_spi_form_and_sort_spi_errors() {
    use embedded_hal::i2c::{Error as _, I2c as _};
    use embedded_hal::spi::ErrorKind as SpiKind;

    let mut spi = SpiMock::new(&[]);
    let mut registers = RegistersOverSpi::new(spi.clone());
    let odd = registers.write(0x76, &[0xf4, 0x55, 0xf5]).expect_err("half a pair");
    assert_eq!(odd.kind(), ErrorKind::Other);
    assert!(odd.to_string().contains("no form for"), "{odd}");
    let mut buffer = [0; 2];
    registers.read(0x76, &mut buffer).expect_err("a read with no register address");
    spi.done();
    for (spi_kind, i2c_kind) in [
        (SpiKind::Overrun, ErrorKind::Overrun),
        (SpiKind::ModeFault, ErrorKind::Bus),
        (SpiKind::ChipSelectFault, ErrorKind::Bus),
        (SpiKind::Other, ErrorKind::Other),
    ] {
        assert_eq!(OverSpiError::Spi(spi_kind).kind(), i2c_kind);
    }
    assert_eq!(super::i2c_fault(&OverSpiError::Spi(SpiKind::Other)).kind, FaultKind::Io);
}

#[test]
fn a_digital_input_reads_its_level_with_its_polarity_and_requests_its_line_at_each_init() {
    use std::cell::Cell;
    use std::rc::Rc;

    let expectations = [
        P::get(PinState::High),
        P::get(PinState::Low),
        P::get(PinState::High).with_error(MockError::Io(std::io::ErrorKind::NotConnected)),
    ];
    let pin = PinMock::new(&expectations);
    let requests = Rc::new(Cell::new(0));
    let (counted, line) = (Rc::clone(&requests), pin.clone());
    let mut input = DigitalInput::new(
        move || {
            counted.set(counted.get() + 1);
            Ok(line.clone())
        },
        false,
    );
    assert_eq!(input.measure().expect_err("not requested yet").kind, FaultKind::Io);
    input.init().expect("it works");
    assert_eq!(input.measure().expect("it works"), [Quantity { name: "state", unit: "1", value: 1.0 }]);
    assert_eq!(input.measure().expect("it works")[0].value, 0.0);
    let fault = input.measure().expect_err("the read fails");
    assert_eq!(fault.kind, FaultKind::Io);
    assert!(fault.detail.contains("NotConnected"), "{fault}");
    input.init().expect("requested again");
    assert_eq!(requests.get(), 2);
    let mut pin = pin;
    pin.done();

    // Active low: a low line is the active state.
    let pin = PinMock::new(&[P::get(PinState::Low), P::get(PinState::High)]);
    let line = pin.clone();
    let mut input = DigitalInput::new(move || Ok(line.clone()), true);
    input.init().expect("it works");
    assert_eq!(input.measure().expect("it works")[0].value, 1.0);
    assert_eq!(input.measure().expect("it works")[0].value, 0.0);
    let mut pin = pin;
    pin.done();

    // A line the kernel will not give (held by another program) fails the initialisation.
    let mut busy = DigitalInput::new(|| Err::<PinMock, _>(Fault::new(FaultKind::Io, "Device or resource busy")), false);
    assert_eq!(busy.init().expect_err("busy").kind, FaultKind::Io);
}

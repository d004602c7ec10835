//! `[pipelines.<name>.source.sensors]`: buses, devices and their parts' settings, simulations,
//! and the decoder a sensors source implies.

use super::*;

const SENSORS: &str = r#"
[gateway]
id = "gw"
data_dir = "/var/lib/weir"

[pipelines.climate.source.sensors.buses.main]
i2c = "/dev/i2c-1"

[pipelines.climate.source.sensors.buses.bench]
simulated = "i2c"

[[pipelines.climate.source.sensors.devices]]
name = "room"
bus = "main"
driver = "bme280"
address = 0x77
interval = "5s"
on_change = 0.05

[[pipelines.climate.source.sensors.devices]]
name = "feed"
series = "plant1/feed"
bus = "bench"
driver = "ina219"
interval = "1s"
shunt_ohms = 0.01
max_current = 10.0
retries = 0
reinit_after = 5
stuck_after = 30
max_backoff = "10s"

[pipelines.climate.source.sensors.devices.simulation]
wobble = 0
faults = [{ fault = "nack", at = "10s", for = "5s" }, { fault = "slow", at = "1m", for = "1s", delay = "2s" }]

[[pipelines.climate.source.sensors.devices]]
name = "adc"
bus = "bench"
driver = "ads1115"
interval = "250ms"
channels = [3, 0]
full_scale = 4.096

[pipelines.climate.sink.console]
"#;

fn sensors_but(from: &str, to: &str) -> String {
    assert!(SENSORS.contains(from), "{from:?} is not in the sensors config");
    SENSORS.replacen(from, to, 1)
}

#[test]
fn a_sensors_source_is_resolved_with_defaults_and_decodes_weir_records() {
    let functions = functions_dir();
    let config = parse_with(SENSORS, functions.path()).expect("valid");
    let pipeline = &config.pipelines[0];
    assert!(matches!(pipeline.decode, DecodeConfig::WeirRecord));
    let SourceConfig::Sensors(sensors) = &pipeline.source else { panic!("a sensors source") };
    let names: Vec<&str> = sensors.buses.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["bench", "main"]);
    let room = &sensors.buses[1].devices[0];
    assert_eq!(room.driver, DriverConfig::Bme280 { address: 0x77 });
    assert_eq!(room.series, "room");
    assert_eq!(room.reporting, Reporting { on_change: Some(0.05), heartbeat: Duration::from_secs(300) });
    assert_eq!(
        room.health,
        HealthPolicy { retries: 2, reinit_after: 3, stuck_after: None, max_backoff: Duration::from_secs(60) }
    );
    assert!(room.simulation.is_none());
    let feed = &sensors.buses[0].devices[0];
    assert_eq!(feed.series, "plant1/feed");
    // 10 A / 32768 → 306 µA per LSB, on 10 000 µΩ.
    assert_eq!(
        feed.driver,
        DriverConfig::Ina219 { address: 0x40, shunt_micro_ohms: 10_000, current_lsb_micro_amps: 306 }
    );
    assert_eq!(
        feed.health,
        HealthPolicy { retries: 0, reinit_after: 5, stuck_after: Some(30), max_backoff: Duration::from_secs(10) }
    );
    let simulation = feed.simulation.as_ref().expect("simulated");
    assert_eq!(simulation.wobble, Some(0));
    assert_eq!(simulation.faults[0].from, Duration::from_secs(10));
    assert_eq!(simulation.faults[0].until, Duration::from_secs(15));
    assert_eq!(simulation.faults[1].delay, Duration::from_secs(2));
    let adc = &sensors.buses[0].devices[1];
    assert_eq!(
        adc.driver,
        DriverConfig::Ads1115 { address: 0x48, channels: vec![0, 3], full_scale: FullScale::V4_096 }
    );
    assert_eq!(adc.simulation.as_ref().expect("simulated by default").inputs, [0.5, 1.0, 1.5, 2.0]);
}

#[test]
fn refuses_devices_their_bus_or_part_cannot_have() {
    insta::assert_snapshot!(invalid(&sensors_but("address = 0x77", "address = 0x40")));
    insta::assert_snapshot!(invalid(&sensors_but("bus = \"main\"", "bus = \"mian\"")));
    insta::assert_snapshot!(invalid(&sensors_but(
        "name = \"adc\"\nbus = \"bench\"\ndriver = \"ads1115\"",
        "name = \"adc\"\nbus = \"bench\"\ndriver = \"ina219\""
    )));
    insta::assert_snapshot!(invalid(&sensors_but("full_scale = 4.096", "full_scale = 5.0")));
    insta::assert_snapshot!(invalid(&sensors_but("max_current = 10.0", "max_current = 0.1")));
    insta::assert_snapshot!(invalid(&sensors_but("on_change = 0.05", "on_change = -1.0")));
    insta::assert_snapshot!(invalid(&sensors_but("driver = \"bme280\"", "driver = \"bme680\"")));
}

#[test]
fn refuses_buses_that_are_not_exactly_one_thing_or_shared_with_another_pipeline() {
    insta::assert_snapshot!(invalid(&sensors_but("i2c = \"/dev/i2c-1\"", "i2c = \"/dev/i2c-1\"\nsimulated = \"i2c\"")));
    let second = "[pipelines.other.source.sensors.buses.same]\ni2c = \"/dev/i2c-1\"\n\n\
                  [[pipelines.other.source.sensors.devices]]\nname = \"t\"\nbus = \"same\"\ndriver = \"tmp102\"\n\
                  interval = \"1s\"\n\n[pipelines.other.sink.console]\n";
    insta::assert_snapshot!(invalid(&format!("{SENSORS}\n{second}")));
    let unused = "[pipelines.climate.source.sensors.buses.spare]\ni2c = \"/dev/i2c-2\"\n\n[[pipelines.climate.source.sensors.devices]]";
    insta::assert_snapshot!(invalid(&sensors_but("[[pipelines.climate.source.sensors.devices]]", unused)));
}

#[test]
fn refuses_simulations_off_a_simulated_bus_and_dumps_that_do_not_read() {
    let on_real_bus = "on_change = 0.05\n\n[pipelines.climate.source.sensors.devices.simulation]\nwobble = 3";
    insta::assert_snapshot!(invalid(&sensors_but("on_change = 0.05", on_real_bus)));
    let dir = tempfile::tempdir().expect("temp dir");
    let dump = dir.path().join("ina219.txt");
    std::fs::write(&dump, "     0,8  1,9  2,a  3,b  4,c  5,d  6,e  7,f\n00: 9f39 a00f c25d zzzz\n").expect("write");
    let text = sensors_but("wobble = 0", &format!("wobble = 0\nregisters = {:?}", dump.display().to_string()));
    let refused = invalid(&text).replace(&dump.display().to_string(), "[DUMP]");
    insta::assert_snapshot!(refused);
    // A device node named by mistake is not read without end.
    let endless = invalid(&sensors_but("wobble = 0", "wobble = 0\nregisters = \"/dev/zero\""));
    assert!(endless.contains("/dev/zero: it holds more than 64 KiB"), "{endless}");
    // Nor does a FIFO hold the start waiting for a writer.
    let fifo = dir.path().join("dump.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs").success());
    let waiting =
        invalid(&sensors_but("wobble = 0", &format!("wobble = 0\nregisters = {:?}", fifo.display().to_string())));
    assert!(waiting.contains("it is a FIFO"), "{waiting}");
    insta::assert_snapshot!(invalid(&sensors_but("for = \"1s\", delay = \"2s\"", "for = \"1s\"")));
    insta::assert_snapshot!(invalid(&sensors_but("wobble = 0", "wobble = 0\ninputs = [1.0]")));
}

#[test]
fn a_sensors_source_takes_no_decoder_and_others_need_one() {
    insta::assert_snapshot!(invalid(&sensors_but(
        "[pipelines.climate.sink.console]",
        "[pipelines.climate.decode.json]\nvalue = \"/v\"\n\n[pipelines.climate.sink.console]"
    )));
    let no_decoder =
        "[pipelines.press.decode.function]\nfunction = \"frame-decoder\"\nparams = { series_prefix = \"press\" }\n";
    insta::assert_snapshot!(invalid(&valid_but(no_decoder, "")));
}

const SPI_AND_GPIO: &str = r#"
[gateway]
id = "gw"
data_dir = "/var/lib/weir"

[pipelines.yard.source.sensors.buses.spi0]
spi = "/dev/spidev0.0"
max_speed_hz = 2000000

[pipelines.yard.source.sensors.buses.pins]
gpio = "/dev/gpiochip0"

[pipelines.yard.source.sensors.buses.bench_spi]
simulated = "spi"

[pipelines.yard.source.sensors.buses.bench_pins]
simulated = "gpio"

[[pipelines.yard.source.sensors.devices]]
name = "hut"
bus = "spi0"
driver = "bme280"
interval = "10s"

[[pipelines.yard.source.sensors.devices]]
name = "door"
bus = "pins"
driver = "digital_input"
line = 17
active_low = true
interval = "100ms"
on_change = 0.5

[[pipelines.yard.source.sensors.devices]]
name = "shed"
bus = "bench_spi"
driver = "bme280"
interval = "1s"

[pipelines.yard.source.sensors.devices.simulation]
faults = [{ fault = "remote_io", at = "5s", for = "2s" }]

[[pipelines.yard.source.sensors.devices]]
name = "gate"
bus = "bench_pins"
driver = "digital_input"
line = 4
interval = "50ms"

[pipelines.yard.source.sensors.devices.simulation]
toggle_every = "2s"

[pipelines.yard.sink.console]
"#;

fn spi_and_gpio_but(from: &str, to: &str) -> String {
    assert!(SPI_AND_GPIO.contains(from), "{from:?} is not in the SPI and GPIO config");
    SPI_AND_GPIO.replacen(from, to, 1)
}

#[test]
fn spi_and_gpio_buses_are_resolved_with_their_devices() {
    let functions = functions_dir();
    let config = parse_with(SPI_AND_GPIO, functions.path()).expect("valid");
    let SourceConfig::Sensors(sensors) = &config.pipelines[0].source else { panic!("a sensors source") };
    let bus = |name: &str| sensors.buses.iter().find(|b| b.name.as_str() == name).expect("the bus");
    assert_eq!(bus("spi0").kind, BusKind::Spi { path: "/dev/spidev0.0".into(), max_speed_hz: 2_000_000 });
    assert_eq!(bus("spi0").devices[0].driver.place(BusProtocol::Spi), None, "the node is the device");
    assert_eq!(bus("pins").kind, BusKind::Gpio("/dev/gpiochip0".into()));
    let door = &bus("pins").devices[0];
    assert_eq!(door.driver, DriverConfig::DigitalInput { line: 17, active_low: true });
    assert_eq!(door.driver.place(BusProtocol::Gpio).as_deref(), Some("line 17"));
    assert_eq!(bus("bench_spi").kind, BusKind::Simulated(BusProtocol::Spi));
    assert_eq!(bus("bench_spi").kind.describe(), "simulated spi");
    let gate = bus("bench_pins").devices[0].simulation.as_ref().expect("simulated");
    assert_eq!(gate.toggle_every, Duration::from_secs(2));
    let shed = bus("bench_spi").devices[0].simulation.as_ref().expect("simulated");
    assert_eq!(shed.toggle_every, Duration::from_secs(5), "the default, unused by a BME280");
}

#[test]
fn refuses_parts_on_buses_they_do_not_speak_and_settings_of_another_bus() {
    let hut = "name = \"hut\"\nbus = \"spi0\"\ndriver = \"bme280\"";
    insta::assert_snapshot!(invalid(&spi_and_gpio_but(hut, "name = \"hut\"\nbus = \"spi0\"\ndriver = \"ads1115\"")));
    insta::assert_snapshot!(invalid(&spi_and_gpio_but(hut, &format!("{hut}\naddress = 0x77"))));
    let door = "[[pipelines.yard.source.sensors.devices]]\nname = \"door\"";
    let also_on = |bus: &str, driver: &str, more: &str| {
        let device = format!("name = \"extra\"\nbus = \"{bus}\"\ndriver = \"{driver}\"\ninterval = \"1s\"\n{more}");
        spi_and_gpio_but(door, &format!("[[pipelines.yard.source.sensors.devices]]\n{device}\n\n{door}"))
    };
    insta::assert_snapshot!(invalid(&also_on("spi0", "bme280", "")));
    insta::assert_snapshot!(invalid(&spi_and_gpio_but("line = 17\n", "")));
    insta::assert_snapshot!(invalid(&spi_and_gpio_but(hut, &format!("{hut}\nline = 3"))));
    insta::assert_snapshot!(invalid(&also_on("pins", "digital_input", "line = 17")));
    insta::assert_snapshot!(invalid(&spi_and_gpio_but(
        "gpio = \"/dev/gpiochip0\"",
        "gpio = \"/dev/gpiochip0\"\nmax_speed_hz = 1000000"
    )));
    insta::assert_snapshot!(invalid(&spi_and_gpio_but("max_speed_hz = 2000000", "max_speed_hz = 20000000")));
}

#[test]
fn refuses_simulations_a_protocol_cannot_show() {
    insta::assert_snapshot!(invalid(&spi_and_gpio_but("fault = \"remote_io\"", "fault = \"nack\"")));
    insta::assert_snapshot!(invalid(&spi_and_gpio_but("faults = [", "toggle_every = \"1s\"\nfaults = [")));
    insta::assert_snapshot!(invalid(&spi_and_gpio_but("toggle_every = \"2s\"", "registers = \"gate.txt\"")));
}

//! Simulated devices: a plant's sensors without the plant, for trying weir out and for benchmarks.
//!
//! Each device reports temperature, humidity, pressure and vibration every `interval`, with
//! realistic shapes: slow daily-like cycles, noise, and now and then an excursion (a temperature
//! spike, a vibration burst). Device `i` runs `3·i` °C warmer than device 0, so with several
//! devices some cross typical alarm limits regularly. Same seed, same signals.
//!
//! Payload formats (docs/configuration.md, `source.simulated`):
//! - `json`: one message per reading on `<prefix>/<device>/<sensor>`:
//!   `{"sensor": "<prefix>/<device>/<sensor>", "ts": <ms since epoch>, "value": 21.53, "unit": "Cel"}`;
//! - `senml_json`: one SenML pack per device and tick on `<prefix>/<device>`;
//! - `frames`: one WSF v1 binary frame per device and tick on `<prefix>/<device>/frame`
//!   (the format of `functions/frame-decoder`).
//!
//! The core ([`Simulator::tick`]) is pure: time comes in as a parameter. [`run`] drives it.

use std::f64::consts::TAU;

use bytes::Bytes;
use crc::{CRC_16_IBM_3740, Crc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Delivery;
use crate::batch::{Message, Nanos};
use crate::config::{SimulatedConfig, SimulatedPayload};

const FRAME_CRC: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

use crate::config::SimulatedSensor as Sensor;

trait SensorInfo {
    fn name(self) -> &'static str;
    fn unit(self) -> &'static str;
    fn frame_channel(self) -> (u8, f64);
}

impl SensorInfo for Sensor {
    fn name(self) -> &'static str {
        match self {
            Self::Temperature => "temperature",
            Self::Humidity => "humidity",
            Self::Pressure => "pressure",
            Self::Vibration => "vibration",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Temperature => "Cel",
            Self::Humidity => "%",
            Self::Pressure => "hPa",
            Self::Vibration => "mm/s",
        }
    }

    /// Channel number and scale in a WSF frame (matches the frame decoder's default table).
    fn frame_channel(self) -> (u8, f64) {
        match self {
            Self::Temperature => (0, 0.01),
            Self::Humidity => (1, 0.01),
            Self::Pressure => (2, 0.1),
            Self::Vibration => (3, 0.001),
        }
    }
}

/// Per-device signal state.
#[derive(Debug)]
struct Device {
    phase: f64,
    warmer_by: f64,
    /// Remaining size of a temperature excursion (decays).
    excursion: f64,
    /// Remaining size of a vibration burst (decays).
    burst: f64,
}

/// The simulated plant.
#[derive(Debug)]
pub struct Simulator {
    config: SimulatedConfig,
    rng: StdRng,
    devices: Vec<Device>,
}

impl Simulator {
    /// A plant as `config` describes it.
    pub fn new(config: SimulatedConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let devices = (0..config.devices)
            .map(|i| Device {
                phase: rng.random_range(0.0..TAU),
                warmer_by: 3.0 * f64::from(i),
                excursion: 0.0,
                burst: 0.0,
            })
            .collect();
        Self { config, rng, devices }
    }

    fn gaussian(&mut self) -> f64 {
        // Box-Muller; 1 - u keeps the logarithm's argument above zero.
        let u: f64 = 1.0 - self.rng.random::<f64>();
        let v: f64 = self.rng.random();
        (-2.0 * u.ln()).sqrt() * (TAU * v).cos()
    }

    fn reading(&mut self, device: usize, sensor: Sensor, now: Nanos) -> f64 {
        let seconds = now as f64 / 1e9;
        let decay = 0.97_f64.powf(self.config.interval.as_secs_f64());
        let noise = self.gaussian();
        let spike: f64 = self.rng.random();
        let d = &mut self.devices[device];
        let value = match sensor {
            Sensor::Temperature => {
                if spike < 0.002 {
                    d.excursion = 15.0;
                }
                d.excursion *= decay;
                66.0 + d.warmer_by + 12.0 * (TAU * seconds / 600.0 + d.phase).sin() + d.excursion + 0.3 * noise
            }
            Sensor::Humidity => (45.0 + 10.0 * (TAU * seconds / 1800.0 + d.phase).sin() + noise).clamp(0.0, 100.0),
            Sensor::Pressure => 1013.0 + 4.0 * (TAU * seconds / 3600.0 + d.phase).sin() + 0.2 * noise,
            Sensor::Vibration => {
                if spike < 0.01 {
                    d.burst = 8.0;
                }
                d.burst *= decay;
                2.0 + 0.3 * noise.abs() + d.burst
            }
        };
        (value * 100.0).round() / 100.0
    }

    /// The messages all devices send at `now`.
    pub fn tick(&mut self, now: Nanos) -> Vec<Message> {
        let prefix = self.config.topic_prefix.clone();
        let mut messages = Vec::new();
        for device in 0..self.devices.len() {
            let sensors = self.config.sensors.clone();
            let readings: Vec<(Sensor, f64)> = sensors.iter().map(|&s| (s, self.reading(device, s, now))).collect();
            match self.config.payload {
                SimulatedPayload::Json => {
                    for (sensor, value) in readings {
                        let topic = format!("{prefix}/{device}/{}", sensor.name());
                        let payload =
                            json!({"sensor": topic, "ts": now / 1_000_000, "value": value, "unit": sensor.unit()});
                        messages.push(message(topic, payload.to_string().into_bytes(), now));
                    }
                }
                SimulatedPayload::SenmlJson => {
                    let base_name = format!("{prefix}/{device}/");
                    let records: Vec<_> = readings
                        .iter()
                        .enumerate()
                        .map(|(i, (sensor, value))| {
                            if i == 0 {
                                json!({"bn": base_name, "bt": now as f64 / 1e9, "n": sensor.name(), "u": sensor.unit(), "v": value})
                            } else {
                                json!({"n": sensor.name(), "u": sensor.unit(), "v": value})
                            }
                        })
                        .collect();
                    messages.push(message(
                        format!("{prefix}/{device}"),
                        serde_json::to_vec(&records).expect("JSON values serialize"),
                        now,
                    ));
                }
                SimulatedPayload::Frames => {
                    let frame = encode_frame(device_id(device), now, &readings);
                    messages.push(message(format!("{prefix}/{device}/frame"), frame, now));
                }
            }
        }
        messages
    }
}

fn device_id(device: usize) -> u16 {
    u16::try_from(device).unwrap_or(u16::MAX)
}

fn message(topic: String, payload: Vec<u8>, now: Nanos) -> Message {
    Message { topic, payload: Bytes::from(payload), received_at: now }
}

/// A WSF v1 frame (see functions/frame-decoder): all readings at the frame's base time.
fn encode_frame(device: u16, now: Nanos, readings: &[(Sensor, f64)]) -> Vec<u8> {
    let base_seconds = u32::try_from(now.div_euclid(1_000_000_000)).unwrap_or(u32::MAX);
    let offset_ms = u16::try_from(now.rem_euclid(1_000_000_000) / 1_000_000).expect("below 1000 ms");
    let count = u8::try_from(readings.len()).expect("a device has at most four sensors");
    let mut frame = vec![1];
    frame.extend(device.to_be_bytes());
    frame.extend(base_seconds.to_be_bytes());
    frame.push(count);
    for (sensor, value) in readings {
        let (channel, scale) = sensor.frame_channel();
        let raw = (value / scale).round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16;
        frame.push(channel);
        frame.extend(offset_ms.to_be_bytes());
        frame.extend(raw.to_be_bytes());
    }
    let crc = FRAME_CRC.checksum(&frame);
    frame.extend(crc.to_be_bytes());
    frame
}

/// Sends the simulator's messages every `interval` until `stop` is cancelled.
pub async fn run(config: SimulatedConfig, deliveries: mpsc::Sender<Delivery>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut simulator = Simulator::new(config);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for message in simulator.tick(crate::telemetry::now_nanos()) {
            tokio::select! {
                () = stop.cancelled() => return,
                sent = deliveries.send(Delivery::unacknowledged(message)) => if sent.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::batch::CallContext;
    use crate::config::FieldMapping;
    use crate::decode::{Decode, FieldMappingDecoder, SenmlJsonDecoder};

    fn config(payload: SimulatedPayload) -> SimulatedConfig {
        SimulatedConfig {
            payload,
            devices: 3,
            interval: Duration::from_millis(500),
            topic_prefix: "sim".into(),
            seed: 9,
            sensors: vec![Sensor::Temperature, Sensor::Humidity, Sensor::Pressure, Sensor::Vibration],
        }
    }

    const NOW: Nanos = 1_700_000_000_250_000_000;
    const CTX: CallContext = CallContext { processing_time: NOW, watermark: 0 };

    #[test]
    fn same_seed_same_signals() {
        let mut a = Simulator::new(config(SimulatedPayload::Json));
        let mut b = Simulator::new(config(SimulatedPayload::Json));
        assert_eq!(a.tick(NOW), b.tick(NOW));
    }

    #[test]
    fn json_messages_decode_with_the_documented_mapping() {
        let messages = Simulator::new(config(SimulatedPayload::Json)).tick(NOW);
        assert_eq!(messages.len(), 12, "3 devices × 4 sensors");
        let mapping = FieldMapping {
            series: Some("sensor".to_owned().try_into().expect("valid")),
            series_prefix: String::new(),
            time: Some("ts".to_owned().try_into().expect("valid")),
            time_unit: crate::config::TimeUnit::Ms,
            values: crate::config::ValueFields::One("value".to_owned().try_into().expect("valid")),
            unit: None,
            unit_field: Some("unit".to_owned().try_into().expect("valid")),
        };
        let batch = FieldMappingDecoder::json(mapping).decode(&messages[0], &CTX).expect("decodes");
        assert_eq!(batch.series()[0].name, "sim/0/temperature");
        assert_eq!(batch.series()[0].unit.as_deref(), Some("Cel"));
        assert_eq!(batch.timestamps(), [NOW / 1_000_000 * 1_000_000]);
        assert!((40.0..110.0).contains(&batch.values()[0]), "{}", batch.values()[0]);
    }

    #[test]
    fn senml_packs_decode_to_four_readings_per_device() {
        let messages = Simulator::new(config(SimulatedPayload::SenmlJson)).tick(NOW);
        assert_eq!(messages.len(), 3);
        let batch = SenmlJsonDecoder.decode(&messages[1], &CTX).expect("decodes");
        let names: Vec<_> = batch.series().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["sim/1/temperature", "sim/1/humidity", "sim/1/pressure", "sim/1/vibration"]);
    }

    #[test]
    fn frames_carry_a_valid_crc_and_the_documented_layout() {
        let messages = Simulator::new(config(SimulatedPayload::Frames)).tick(NOW);
        let frame = &messages[2].payload;
        assert_eq!(frame.len(), 10 + 5 * 4);
        assert_eq!(frame[0], 1);
        assert_eq!(u16::from_be_bytes([frame[1], frame[2]]), 2, "device id");
        assert_eq!(u32::from_be_bytes([frame[3], frame[4], frame[5], frame[6]]), 1_700_000_000);
        assert_eq!(u16::from_be_bytes([frame[9], frame[10]]), 250, "offset in ms");
        let crc = u16::from_be_bytes([frame[frame.len() - 2], frame[frame.len() - 1]]);
        assert_eq!(crc, FRAME_CRC.checksum(&frame[..frame.len() - 2]));
    }
}

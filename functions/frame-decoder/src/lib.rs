//! `frame-decoder`: decodes the compact weir binary sensor frame (WSF v1) into readings.
//!
//! The format, all integers big-endian:
//!
//! | offset  | size  | field                                                              |
//! |---------|-------|--------------------------------------------------------------------|
//! | 0       | 1     | version, must be 1                                                 |
//! | 1       | 2     | device id (u16)                                                    |
//! | 3       | 4     | base time, seconds since the Unix epoch (u32)                      |
//! | 7       | 1     | N, number of readings (0–255)                                      |
//! | 8       | 5 × N | per reading: channel (u8), offset in ms after base time (u16), raw value (i16) |
//! | 8 + 5N  | 2     | CRC-16/IBM-3740 (CCITT-FALSE) of bytes 0 .. 8 + 5N                 |
//!
//! A frame is therefore exactly `10 + 5N` bytes. Each reading becomes a sample of series
//! `<series_prefix>/<device id>/<channel name>` at `base time + offset`, with value
//! `raw × scale + offset` from the channel table. A frame that is short, long, of another
//! version, fails its CRC or names an unknown channel is refused as invalid input (the host
//! dead-letters it with the reason).

use crc::{CRC_16_IBM_3740, Crc};
use serde::Deserialize;
use weir_sdk::{Batch, Context, Decoder, Error, Message, Series, Timestamp};

/// The only frame version this decoder reads.
pub const FRAME_VERSION: u8 = 1;
/// Bytes before the first reading.
const HEADER_LEN: usize = 8;
/// Bytes per reading.
const READING_LEN: usize = 5;
/// Bytes of the trailing checksum.
const CRC_LEN: usize = 2;
const FRAME_CRC: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// How one channel's raw values become readings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// Channel number in the frame.
    pub id: u8,
    /// Last level of the series name.
    pub name: String,
    /// Multiplier applied to the raw value; default 1.
    #[serde(default = "one")]
    pub scale: f64,
    /// Added after scaling; default 0.
    #[serde(default)]
    pub offset: f64,
    /// Unit of the resulting value.
    pub unit: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// The channel table used when the params give none.
pub fn default_channels() -> Vec<Channel> {
    let channel = |id, name: &str, scale, unit: &str| Channel {
        id,
        name: name.to_owned(),
        scale,
        offset: 0.0,
        unit: Some(unit.to_owned()),
    };
    vec![
        channel(0, "temperature", 0.01, "Cel"),
        channel(1, "humidity", 0.01, "%"),
        channel(2, "pressure", 0.1, "hPa"),
        channel(3, "vibration", 0.001, "mm/s"),
        channel(4, "battery", 0.001, "V"),
    ]
}

fn default_prefix() -> String {
    "frames".to_owned()
}

/// Parameters, from the pipeline configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// First level(s) of every series name; default `frames`.
    #[serde(default = "default_prefix")]
    pub series_prefix: String,
    /// Channel table; default: [`default_channels`].
    #[serde(default = "default_channels")]
    pub channels: Vec<Channel>,
}

/// The decoder.
#[derive(Debug)]
pub struct FrameDecoder {
    series_prefix: String,
    /// Indexed by channel id.
    channels: Vec<Option<Channel>>,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

impl FrameDecoder {
    /// Decodes one frame.
    pub fn decode_frame(&self, frame: &[u8]) -> Result<Batch, Error> {
        if frame.len() < HEADER_LEN + CRC_LEN {
            return Err(Error::invalid_input(format!(
                "frame of {} bytes is shorter than the minimum of {}",
                frame.len(),
                HEADER_LEN + CRC_LEN
            )));
        }
        if frame[0] != FRAME_VERSION {
            return Err(Error::invalid_input(format!(
                "frame version {} is not supported (expected {FRAME_VERSION})",
                frame[0]
            )));
        }
        let count = usize::from(frame[7]);
        let expected_len = HEADER_LEN + READING_LEN * count + CRC_LEN;
        if frame.len() != expected_len {
            return Err(Error::invalid_input(format!(
                "frame declares {count} readings ({expected_len} bytes) but has {} bytes",
                frame.len()
            )));
        }
        let body = &frame[..expected_len - CRC_LEN];
        let declared_crc = u16_at(frame, expected_len - CRC_LEN);
        let computed_crc = FRAME_CRC.checksum(body);
        if declared_crc != computed_crc {
            return Err(Error::invalid_input(format!(
                "CRC mismatch: frame says {declared_crc:#06x}, content gives {computed_crc:#06x}"
            )));
        }
        let device = u16_at(frame, 1);
        let base_secs = u32::from_be_bytes([frame[3], frame[4], frame[5], frame[6]]);
        let base = Timestamp::from_secs(i64::from(base_secs));

        let mut batch = Batch::with_capacity(count);
        for reading in body[HEADER_LEN..].chunks_exact(READING_LEN) {
            let channel_id = reading[0];
            let offset_ms = u16_at(reading, 1);
            let raw = i16::from_be_bytes([reading[3], reading[4]]);
            let Some(channel) = self.channels.get(usize::from(channel_id)).and_then(Option::as_ref) else {
                return Err(Error::invalid_input(format!("unknown channel {channel_id} (device {device})")));
            };
            let mut series = Series::new(format!("{}/{device}/{}", self.series_prefix, channel.name))
                .with_tag("device", device.to_string());
            series.unit.clone_from(&channel.unit);
            let id = batch.intern_series(series);
            let ts = Timestamp::from_nanos(base.as_nanos() + i64::from(offset_ms) * 1_000_000);
            batch.push(id, ts, f64::from(raw) * channel.scale + channel.offset);
        }
        Ok(batch)
    }
}

impl Decoder for FrameDecoder {
    type Params = Params;

    fn init(params: Params, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        if params.series_prefix.is_empty() {
            return Err(Error::invalid_params("`series_prefix` must not be empty"));
        }
        let mut channels: Vec<Option<Channel>> = vec![None; 256];
        for channel in params.channels {
            if channel.name.is_empty() || channel.name.contains(['/', '+', '#']) {
                return Err(Error::invalid_params(format!(
                    "channel {}: name {:?} must be one non-empty level without `/`, `+` or `#`",
                    channel.id, channel.name
                )));
            }
            if !(channel.scale.is_finite() && channel.offset.is_finite()) {
                return Err(Error::invalid_params(format!("channel {}: scale and offset must be finite", channel.id)));
            }
            let slot = &mut channels[usize::from(channel.id)];
            if slot.is_some() {
                return Err(Error::invalid_params(format!("channel {} is defined twice", channel.id)));
            }
            *slot = Some(channel);
        }
        Ok(Self { series_prefix: params.series_prefix, channels })
    }

    fn decode(&mut self, message: Message, _ctx: &mut Context<'_>) -> Result<Batch, Error> {
        self.decode_frame(&message.payload)
    }
}

weir_sdk::export_decoder!(FrameDecoder);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::TestHost;

    use super::*;

    /// The example frame from the README: device 7, base time 1 700 000 000 s, channel 0 raw 2150
    /// at +0 ms, channel 2 raw 10132 at +500 ms. CRC computed independently of this crate.
    const EXAMPLE: [u8; 20] = [
        0x01, 0x00, 0x07, 0x65, 0x53, 0xf1, 0x00, 0x02, 0x00, 0x00, 0x00, 0x08, 0x66, 0x02, 0x01, 0xf4, 0x27, 0x94,
        0x1e, 0x7c,
    ];

    fn decoder(params: &str) -> (TestHost, FrameDecoder) {
        let mut host = TestHost::new();
        let decoder = host.init_decoder(params).expect("valid params");
        (host, decoder)
    }

    fn message(payload: &[u8]) -> Message {
        Message { topic: "frames/in".into(), payload: payload.to_vec(), received_at: Timestamp::EPOCH }
    }

    #[test]
    fn decodes_the_documented_example_frame() {
        let (mut host, mut decoder) = decoder("{}");
        let batch = host.decode(&mut decoder, message(&EXAMPLE)).expect("example frame is valid");
        let got: Vec<_> =
            batch.iter().map(|s| (s.series.name.clone(), s.series.unit.clone(), s.ts.as_nanos(), s.value)).collect();
        assert_eq!(
            got,
            [
                ("frames/7/temperature".to_owned(), Some("Cel".to_owned()), 1_700_000_000_000_000_000, 21.5),
                ("frames/7/pressure".to_owned(), Some("hPa".to_owned()), 1_700_000_000_500_000_000, 1013.2),
            ]
        );
        assert_eq!(batch.series()[0].tag("device"), Some("7"));
    }

    #[test]
    fn crc_matches_the_published_check_value() {
        // The catalogue check value of CRC-16/IBM-3740 over "123456789".
        assert_eq!(FRAME_CRC.checksum(b"123456789"), 0x29b1);
    }

    #[test]
    fn refuses_corrupted_truncated_and_foreign_frames() {
        let (mut host, mut decoder) = decoder("{}");
        let mut flipped = EXAMPLE;
        flipped[12] ^= 0x01;
        let mut version_2 = EXAMPLE;
        version_2[0] = 2;
        let cases: [(&[u8], &str); 4] = [
            (&flipped, "CRC mismatch"),
            (&EXAMPLE[..15], "declares 2 readings"),
            (&EXAMPLE[..3], "shorter than the minimum"),
            (&version_2, "version 2 is not supported"),
        ];
        for (payload, expected) in cases {
            let err = host.decode(&mut decoder, message(payload)).expect_err(expected);
            assert!(matches!(&err, Error::InvalidInput(reason) if reason.contains(expected)), "{err}");
        }
    }

    #[test]
    fn custom_channel_table_and_unknown_channels() {
        let (mut host, mut decoder) =
            decoder(r#"{"series_prefix": "site", "channels": [{"id": 0, "name": "t", "scale": 0.1, "offset": -10}]}"#);
        let err = host.decode(&mut decoder, message(&EXAMPLE)).expect_err("channel 2 is not in the table");
        assert!(err.to_string().contains("unknown channel 2"), "{err}");

        let mut only_channel_0 = EXAMPLE[..13].to_vec();
        only_channel_0[7] = 1;
        let crc = FRAME_CRC.checksum(&only_channel_0);
        only_channel_0.extend(crc.to_be_bytes());
        let batch = host.decode(&mut decoder, message(&only_channel_0)).expect("channel 0 is known");
        let sample = batch.get(0).expect("one reading");
        assert_eq!(sample.series.name, "site/7/t");
        assert!((sample.value - 205.0).abs() < 1e-9);
    }

    #[test]
    fn refuses_bad_channel_tables() {
        let mut host = TestHost::new();
        for bad in [
            r#"{"channels": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}"#,
            r#"{"channels": [{"id": 1, "name": "a/b"}]}"#,
            r#"{"series_prefix": ""}"#,
        ] {
            assert!(host.init_decoder::<FrameDecoder>(bad).is_err(), "{bad}");
        }
    }
}

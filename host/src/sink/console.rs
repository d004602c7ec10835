//! Console sink: prints each record in a readable form on standard output and confirms it at
//! once. For trying weir out and for watching a pipeline; it forwards nothing.
//!
//! Per record: the stream, seq, number of readings and series, the encoded size and bytes per
//! reading, then the last value of the first few series; for records a full outbox coarsened or
//! dropped, which original records they stand for. Every 10 s: the stream's throughput.

use std::io::Write;
use std::time::{Duration, Instant};

use weir_record::RecordKind;

use super::{Confirmation, Confirmed, OutgoingRecord, PublishError};

/// How often the throughput line is printed.
const RATE_EVERY: Duration = Duration::from_secs(10);

pub(super) struct ConsolePublisher {
    stream: String,
    series_shown: usize,
    interval_started: Instant,
    readings_in_interval: u64,
    records_in_interval: u64,
}

impl ConsolePublisher {
    pub(super) fn new(stream: &str, series_shown: usize) -> Self {
        Self {
            stream: stream.to_owned(),
            series_shown,
            interval_started: Instant::now(),
            readings_in_interval: 0,
            records_in_interval: 0,
        }
    }

    pub(super) fn publish(&mut self, record: &OutgoingRecord) -> Result<Confirmation, PublishError> {
        let text = match weir_record::read(&record.body) {
            Ok(decoded) => self.describe(record, &decoded),
            Err(e) => format!("{} #{}: unreadable record ({e})\n", self.stream, record.seq),
        };
        // Standard output closed (a pipe ended): nothing to show, nothing lost.
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        Ok(Box::pin(async { Ok(Confirmed::default()) }))
    }

    fn describe(&mut self, record: &OutgoingRecord, decoded: &weir_record::Record) -> String {
        use std::fmt::Write as _;
        let span = decoded.span();
        let mut text = String::new();
        match decoded.kind() {
            RecordKind::Readings => {}
            RecordKind::Coarsened { width } => {
                let windows: usize = decoded.aggregates.iter().map(|series| series.windows.len()).sum();
                let _ = writeln!(
                    text,
                    "{} #{}: records {}..={} coarsened (outbox full): {} records, {} readings in {windows} windows of {}, {} bytes",
                    self.stream,
                    record.seq,
                    span.first_seq,
                    span.last_seq,
                    span.records,
                    span.readings,
                    humantime::format_duration(Duration::from_nanos(width)),
                    record.body.len()
                );
                for series in decoded.aggregates.iter().take(self.series_shown) {
                    let Some(last) = series.windows.last() else { continue };
                    let unit = series.series.unit.as_deref().unwrap_or("");
                    let _ = writeln!(
                        text,
                        "    {:<36} {:>10.2} {unit:<7} (mean of the last window, {} .. {})",
                        series.series.name,
                        last.mean(),
                        last.min,
                        last.max
                    );
                }
                self.count(0, &mut text);
                return text;
            }
            RecordKind::Dropped => {
                let _ = writeln!(
                    text,
                    "{} #{}: records {}..={} DROPPED (outbox full): {} records, {} readings",
                    self.stream, record.seq, span.first_seq, span.last_seq, span.records, span.readings
                );
                self.count(0, &mut text);
                return text;
            }
        }
        let batch = &decoded.batch;
        let readings = batch.len();
        let per_reading = if readings == 0 { 0.0 } else { record.body.len() as f64 / readings as f64 };
        let _ = writeln!(
            text,
            "{} #{}: {readings} readings, {} series, {} bytes ({per_reading:.1} B/reading)",
            self.stream,
            record.seq,
            batch.series().len(),
            record.body.len()
        );
        for (index, series) in batch.series().iter().enumerate().take(self.series_shown) {
            let samples: Vec<_> = batch.iter().filter(|s| s.series.name == series.name).collect();
            let Some(last) = samples.last() else { continue };
            let unit = series.unit.as_deref().unwrap_or("");
            let _ =
                writeln!(text, "    {:<36} {:>10.2} {unit:<7} ({} readings)", series.name, last.value, samples.len());
            if index + 1 == self.series_shown && batch.series().len() > self.series_shown {
                let _ = writeln!(text, "    … and {} more series", batch.series().len() - self.series_shown);
            }
        }
        self.count(readings, &mut text);
        text
    }

    /// Counts a record and adds the throughput line when one is due.
    fn count(&mut self, readings: usize, text: &mut String) {
        use std::fmt::Write as _;
        self.readings_in_interval += readings as u64;
        self.records_in_interval += 1;
        let elapsed = self.interval_started.elapsed();
        if elapsed >= RATE_EVERY {
            let seconds = elapsed.as_secs_f64();
            let _ = writeln!(
                text,
                "{}: {:.1} readings/s, {:.2} records/s over the last {seconds:.0} s",
                self.stream,
                self.readings_in_interval as f64 / seconds,
                self.records_in_interval as f64 / seconds
            );
            self.interval_started = Instant::now();
            self.readings_in_interval = 0;
            self.records_in_interval = 0;
        }
    }
}

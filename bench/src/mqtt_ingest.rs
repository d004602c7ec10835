//! `weir-bench mqtt-ingest`: the real `weir` binary ingesting JSON readings from a real mosquitto
//! into its outbox, as a new user's first pipeline would: one reading per message
//! (`{"sensor", "ts", "value"}`), the JSON decoder, default batching, MQTT QoS 0 and QoS 1 (each
//! message acknowledged after the commit that holds it).
//!
//! What it measures, per QoS: readings per second from the first publish until every reading is
//! committed, and the CPU time of the `weir` process (user + system, all threads, from
//! `/proc/<pid>/stat`) per reading over the same span. The publisher runs in this process and
//! mosquitto in its own: neither is counted. The sink points at a port nobody listens on, so
//! records stay in the outbox and no sink work is counted either.
//!
//! Progress is seen by reading a copy of the gateway's data file every 100 ms (the in-memory
//! read `weir outbox stats` uses), so the span is at most that much too long. At QoS 1 the run
//! ends when every reading is committed; at QoS 0, where a gateway that cannot keep up sheds
//! messages (lost, as QoS 0 allows), when the publisher is done and nothing more arrives for 3 s
//! — the figures then run to the last progress, and the table shows what was lost. After the run
//! the gateway is stopped and its counters read again exactly: no reading may be dead-lettered,
//! and at QoS 1 every one must be committed. A reading committed twice (the table's
//! `committed` above `published`) is reported, not hidden: it breaks effectively-once delivery.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weir_e2e::Mosquitto;
use weir_host::state::inspect;

use crate::report::{print_machine, verdict};

/// The real `weir` binary ingesting JSON readings from a mosquitto of its own into the outbox,
/// QoS 0 and QoS 1 (acknowledged after commit): readings/s and CPU time per reading.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Readings (one per message) per QoS level.
    #[arg(long, default_value_t = 200_000)]
    readings: usize,
    /// Sensors the readings are spread over (one topic each).
    #[arg(long, default_value_t = 100)]
    sensors: usize,
    /// The broker's in-flight limit for QoS 1 messages to weir (mosquitto's
    /// `max_inflight_messages`, and weir's `max_inflight` to match) [default: mosquitto's, 20].
    #[arg(long)]
    broker_inflight: Option<usize>,
    /// The `weir` binary to measure [default: `weir` beside this executable].
    #[arg(long, env = "WEIR_BIN")]
    weir: Option<PathBuf>,
}

/// Target: CPU time of the gateway per reading ingested through MQTT.
const TARGET_CPU_MICROS_PER_READING: f64 = 10.0;

impl Args {
    /// Runs QoS 0 then QoS 1 and prints their figures against the target.
    pub fn execute(self) -> Result<()> {
        let mut out = std::io::stdout().lock();
        print_machine(&mut out)?;
        let options = Options {
            weir: crate::weir_binary(self.weir)?,
            readings: self.readings,
            sensors: self.sensors,
            broker_inflight: self.broker_inflight,
            qos: vec![0, 1],
        };
        let figures = run(&options)?;
        writeln!(out, "weir: {}", options.weir.display())?;
        match options.broker_inflight {
            Some(limit) => writeln!(out, "broker in-flight limit: {limit}")?,
            None => writeln!(out, "broker in-flight limit: mosquitto's default (20)")?,
        }
        writeln!(out)?;
        writeln!(
            out,
            "| QoS | published | committed | sheds | seconds | readings/s | weir CPU s | CPU µs/reading (target ≤ {TARGET_CPU_MICROS_PER_READING}) |"
        )?;
        writeln!(
            out,
            "|----:|----------:|----------:|------:|--------:|-----------:|-----------:|------------------------------:|"
        )?;
        for figure in &figures {
            let micros = figure.cpu_micros_per_reading();
            writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {micros:.2} ({}) |",
                figure.qos,
                figure.published,
                figure.readings,
                figure.sheds,
                figure.elapsed.as_secs_f64(),
                figure.readings_per_second(),
                figure.cpu_seconds,
                verdict(micros <= TARGET_CPU_MICROS_PER_READING)
            )?;
        }
        Ok(())
    }
}

/// What weir logs when it sheds a broker's surplus by reconnecting.
const SHED_LOG: &str = "reconnecting so it holds the backlog";
/// How long a run may go without progress before it is given up.
const STALL: Duration = Duration::from_secs(30);
/// At QoS 0: how long after the last progress, once everything is published, a run is over.
const QUIET: Duration = Duration::from_secs(3);
/// How often the data file is read to see progress.
const POLL: Duration = Duration::from_millis(100);
/// `/proc/<pid>/stat` counts CPU time in these ticks per second (USER_HZ, fixed on Linux).
const USER_HZ: f64 = 100.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `weir` binary measured.
    pub weir: PathBuf,
    /// Readings (= messages) per QoS.
    pub readings: usize,
    /// Sensors the readings are spread over (one topic each).
    pub sensors: usize,
    /// The broker's in-flight limit (and weir's `max_inflight`); `None`: mosquitto's default.
    pub broker_inflight: Option<usize>,
    /// The QoS levels to measure.
    pub qos: Vec<u8>,
}

/// One QoS level's figures.
#[derive(Debug, Clone)]
pub struct IngestFigure {
    /// The QoS level.
    pub qos: u8,
    /// Readings published.
    pub published: u64,
    /// Readings committed (at QoS 0, those a gateway that cannot keep up sheds are lost).
    pub readings: u64,
    /// From the first publish until the last reading was committed.
    pub elapsed: Duration,
    /// CPU time of the weir process over that span, seconds.
    pub cpu_seconds: f64,
    /// Times weir shed the broker's surplus by reconnecting (a broker sending past its in-flight
    /// limit).
    pub sheds: usize,
}

impl IngestFigure {
    /// Readings per second.
    pub fn readings_per_second(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU microseconds per reading.
    pub fn cpu_micros_per_reading(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.readings as f64
    }
}

/// Runs every QoS level of `options`, one after the other, each with a broker and a data
/// directory of its own.
pub fn run(options: &Options) -> Result<Vec<IngestFigure>> {
    ensure!(options.weir.is_file(), "no weir binary at {} (--weir)", options.weir.display());
    options.qos.iter().map(|&qos| run_one(options, qos)).collect()
}

fn run_one(options: &Options, qos: u8) -> Result<IngestFigure> {
    ensure!(qos <= 1, "QoS {qos}: weir ingests QoS 0 and 1");
    let broker = match options.broker_inflight {
        Some(limit) => Mosquitto::start_with(&format!("max_inflight_messages {limit}")),
        None => Mosquitto::start(),
    }
    .context("starting mosquitto (apt-get install mosquitto)")?;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, gateway_config(&broker.url(), &data_dir, qos, options.broker_inflight))?;
    let log = dir.path().join("weir.log");
    let mut weir = Gateway::start(&options.weir, &config, &log)?;
    weir.wait_for_log("subscribed", &log)?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    let cpu_before = weir.cpu_seconds()?;
    let publisher = std::thread::spawn({
        let (port, readings, sensors) = (broker.port, options.readings, options.sensors);
        move || runtime.block_on(publish(port, readings, sensors, qos))
    });
    let progress = wait_for_readings(&data_dir, options.readings as u64, qos, || publisher.is_finished(), &mut weir)?;
    publisher.join().map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
    weir.stop()?;

    let stats = inspect::stats(&data_dir)?.value;
    let counter =
        |name: &str| stats.streams.iter().flat_map(|s| &s.counters).find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
    let committed = counter("readings_committed");
    ensure!(
        (qos == 0 || committed >= options.readings as u64) && counter("dead_lettered") == 0,
        "QoS {qos}: {committed} of {} readings committed, {} dead-lettered (log: {})",
        options.readings,
        counter("dead_lettered"),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let sheds = std::fs::read_to_string(&log)?.matches(SHED_LOG).count();
    Ok(IngestFigure {
        qos,
        sheds,
        published: options.readings as u64,
        readings: progress.committed,
        elapsed: progress.at - started,
        cpu_seconds: progress.cpu_seconds - cpu_before,
    })
}

/// One pipeline, as the configuration guide's first example: MQTT in, JSON fields decoded,
/// default batching; the sink's broker is a port nobody listens on.
fn gateway_config(plant: &str, data_dir: &Path, qos: u8, broker_inflight: Option<usize>) -> String {
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(1, |a| a.port());
    format!(
        r#"[gateway]
id = "bench"
data_dir = "{data_dir}"

[brokers.plant]
url = "{plant}"

[brokers.central]
url = "nats://127.0.0.1:{nowhere}"

[pipelines.readings.source.mqtt]
broker = "plant"
topics = ["plant/+/temperature"]
qos = {qos}
{max_inflight}
[pipelines.readings.decode.json]
series = "/sensor"
time = "/ts"
time_unit = "ms"
value = "/value"

[pipelines.readings.sink.jetstream]
broker = "central"
subject = "central.readings"
"#,
        data_dir = data_dir.display(),
        max_inflight = broker_inflight.map(|limit| format!("max_inflight = {limit}\n")).unwrap_or_default(),
    )
}

/// Publishes `readings` messages as fast as the broker takes them (QoS 1: up to 100 awaiting
/// their PUBACK), then waits until the last one is out.
async fn publish(port: u16, readings: usize, sensors: usize, qos: u8) -> Result<()> {
    let mut options = rumqttc::MqttOptions::new("weir-bench-publisher", "127.0.0.1", port);
    options.set_inflight(100).set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1000);
    let level = if qos == 0 { rumqttc::QoS::AtMostOnce } else { rumqttc::QoS::AtLeastOnce };
    let sender = tokio::spawn(async move {
        let t0: i64 = 1_700_000_000_000;
        for i in 0..readings {
            let sensor = i % sensors;
            let payload = format!(
                r#"{{"sensor":"plant/{sensor}/temperature","ts":{},"value":{:.2}}}"#,
                t0 + (i / sensors) as i64 * 1000,
                20.0 + (i % 97) as f64 * 0.25
            );
            client.publish(format!("plant/{sensor}/temperature"), level, false, payload).await?;
        }
        client.disconnect().await?;
        anyhow::Ok(())
    });
    loop {
        match eventloop.poll().await {
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => break,
            Err(e) if sender.is_finished() => {
                // The disconnect closes the connection.
                let _ = e;
                break;
            }
            Err(e) => return Err(e).context("the publisher's connection"),
        }
    }
    sender.await.context("the publisher task")?
}

/// The last progress seen: readings committed, when, and the gateway's CPU time then.
struct Progress {
    committed: u64,
    at: Instant,
    cpu_seconds: f64,
}

/// Reads the data file until `want` readings are committed — or, at QoS 0 (where a gateway that
/// cannot keep up sheds messages, which are lost), until the publisher is done and nothing more
/// arrives for [`QUIET`]. Returns the last progress.
fn wait_for_readings(
    data_dir: &Path,
    want: u64,
    qos: u8,
    publisher_done: impl Fn() -> bool,
    weir: &mut Gateway,
) -> Result<Progress> {
    let scratch = tempfile::tempdir()?;
    let mut last = Progress { committed: 0, at: Instant::now(), cpu_seconds: weir.cpu_seconds()? };
    loop {
        let committed = committed_so_far(data_dir, scratch.path()).unwrap_or(last.committed);
        if committed > last.committed {
            last = Progress { committed, at: Instant::now(), cpu_seconds: weir.cpu_seconds()? };
        }
        if committed >= want || (qos == 0 && publisher_done() && last.at.elapsed() > QUIET) {
            return Ok(last);
        }
        if last.at.elapsed() > STALL {
            bail!("no progress for {STALL:?}: {committed} of {want} readings committed");
        }
        if let Some(status) = weir.child.try_wait()? {
            bail!("weir exited with {status}");
        }
        std::thread::sleep(POLL);
    }
}

/// Readings committed so far, read from a copy of the running gateway's data file (which it
/// keeps locked); none when the copy caught a commit half-written.
fn committed_so_far(data_dir: &Path, scratch: &Path) -> Option<u64> {
    std::fs::copy(data_dir.join("weir.redb"), scratch.join("weir.redb")).ok()?;
    let stats = inspect::stats(scratch).ok()?.value;
    Some(
        stats
            .streams
            .iter()
            .flat_map(|s| &s.counters)
            .filter(|(name, _)| name == "readings_committed")
            .map(|(_, v)| *v)
            .sum(),
    )
}

/// The `weir run` process measured.
struct Gateway {
    child: Child,
}

impl Gateway {
    fn start(weir: &Path, config: &Path, log: &Path) -> Result<Self> {
        let child = Command::new(weir)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", weir.display()))?;
        Ok(Self { child })
    }

    fn wait_for_log(&mut self, text: &str, log: &Path) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < STALL {
            if std::fs::read_to_string(log)?.contains(text) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("weir exited with {status}: {}", std::fs::read_to_string(log)?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("weir did not log {text:?} within {STALL:?}")
    }

    /// User + system CPU time of the process and all its threads so far.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may hold spaces) start at state, field 3.
        let after_name = stat.rsplit_once(')').context("/proc/<pid>/stat has a command name")?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).context("utime and stime")?.parse::<f64>()?) };
        // utime is field 14 and stime 15 of the file: 11 and 12 after the state (field 3).
        Ok((ticks(11)? + ticks(12)?) / USER_HZ)
    }

    fn stop(&mut self) -> Result<()> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        ensure!(status.success(), "cannot signal weir");
        let code = self.child.wait()?;
        ensure!(code.success(), "weir stopped with {code}");
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

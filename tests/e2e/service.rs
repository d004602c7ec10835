//! weir as a systemd `Type=notify` service, against a notification socket of the test's own:
//! `READY=1` once its pipelines run, `WATCHDOG=1` at half the `WATCHDOG_USEC` interval while it
//! works, `RELOADING=1` then `READY=1` around a SIGHUP reload, `STOPPING=1` on SIGTERM. (Every
//! other test runs weir without `NOTIFY_SOCKET`, where nothing is sent.)

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use weir_e2e::*;

/// One simulated pipeline with a WebAssembly function and a console sink: no broker needed.
const CONFIG: &str = r#"
[gateway]
id = "gw-e2e"
data_dir = "{data_dir}"
functions_dir = "{functions_dir}"

[functions.unit-convert]
component = "weir_fn_unit_convert.wasm"

[pipelines.sim.source.simulated]
payload = "json"
devices = 2
interval = "100ms"
topic_prefix = "plant"
sensors = ["temperature"]

[pipelines.sim.decode.json]
series = "/sensor"
time = "/ts"
time_unit = "ms"
value = "/value"

[[pipelines.sim.operators]]
function = "unit-convert"
params = { conversion = "celsius_to_kelvin" }

[pipelines.sim.sink.console]
"#;

/// The messages the service manager would have received, in order.
struct NotifySocket {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: String,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Self { socket, path: path.display().to_string(), _dir: dir, received: Vec::new() })
    }

    /// Reads messages until one holds `line` (as a whole line) `count` times in all.
    fn wait_for(&mut self, line: &str, count: usize) -> Result<()> {
        let started = Instant::now();
        let mut buffer = [0u8; 4096];
        while self.count(line) < count {
            if started.elapsed() > PATIENCE {
                bail!("{line:?} {count} times: not after {PATIENCE:?}; received {:?}", self.received);
            }
            if let Ok(n) = self.socket.recv(&mut buffer) {
                self.received.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
            }
        }
        Ok(())
    }

    fn count(&self, line: &str) -> usize {
        self.received.iter().filter(|m| m.lines().any(|l| l == line)).count()
    }

    /// The index of the first message holding `line` after message `after`.
    fn position_after(&self, line: &str, after: usize) -> Option<usize> {
        self.received.iter().enumerate().skip(after + 1).find(|(_, m)| m.lines().any(|l| l == line)).map(|(i, _)| i)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_tells_the_service_manager_it_is_ready_alive_reloading_and_stopping() -> Result<()> {
    let mut socket = NotifySocket::bind()?;
    let env =
        vec![("NOTIFY_SOCKET".to_owned(), socket.path.clone()), ("WATCHDOG_USEC".to_owned(), "400000".to_owned())];
    let mut weir = Weir::start_launched(CONFIG, Launch { env, ..Launch::default() })?;
    socket.wait_for("READY=1", 1)?;
    assert!(socket.received[0].contains("STATUS=1 of 1 pipelines running"), "{:?}", socket.received);
    // 200 ms apart while the committer answers.
    socket.wait_for("WATCHDOG=1", 3)?;

    weir.signal("HUP")?;
    socket.wait_for("RELOADING=1", 1)?;
    socket.wait_for("READY=1", 2)?;
    let reloading = socket.position_after("RELOADING=1", 0).expect("seen");
    assert!(socket.received[reloading].lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{:?}", socket.received);
    assert!(socket.position_after("READY=1", reloading).is_some(), "READY follows RELOADING: {:?}", socket.received);
    socket.wait_for("WATCHDOG=1", socket.count("WATCHDOG=1") + 2)?;

    assert_eq!(weir.terminate()?, 0);
    socket.wait_for("STOPPING=1", 1)?;
    Ok(())
}

/// Runs the rest of its command line with the kernel's memory-deny-write-execute in force
/// (`PR_SET_MDWE`, Linux 6.3+; what systemd's `MemoryDenyWriteExecute=yes` asks for): no mapping
/// may become both writable and executable, nor executable after it was writable.
const UNDER_MDWE: &str = "import ctypes, os, sys\n\
    if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0: sys.exit('PR_SET_MDWE is not supported')\n\
    os.execv(sys.argv[1], sys.argv[1:])";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interpreted_functions_run_where_memory_may_not_become_executable_and_compiled_ones_do_not() -> Result<()> {
    let python = std::env::var("WEIR_PYTHON").unwrap_or_else(|_| "python3".into());
    let under_mdwe = || Launch { wrapper: vec![python.clone(), "-c".into(), UNDER_MDWE.into()], ..Launch::default() };
    let interpreted = CONFIG.replace(
        "functions_dir = \"{functions_dir}\"",
        "functions_dir = \"{functions_dir}\"\nwasm_execution = \"interpreted\"",
    );
    let mut weir = Weir::start_launched(&interpreted, under_mdwe())?;
    // The console sink prints readings in kelvin: the function ran.
    weir.wait_for_stdout(&format!("{:<7} (", "K"), 3).await?;
    assert_eq!(weir.terminate()?, 0);

    let compiled = CONFIG.replace(
        "functions_dir = \"{functions_dir}\"",
        "functions_dir = \"{functions_dir}\"\nwasm_execution = \"compiled\"",
    );
    let mut refused = Weir::start_launched(&compiled, under_mdwe())?;
    let started = Instant::now();
    while refused.exit_code()?.is_none() {
        assert!(started.elapsed() < PATIENCE, "compiled functions ran under MDWE:\n{}", refused.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused.log().contains("unable to make memory executable"), "{}", refused.log());
    Ok(())
}

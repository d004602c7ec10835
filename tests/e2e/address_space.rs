//! A gateway in the address space of small boards, imitated with `ulimit -v`: a 32-bit ARM
//! process (3 GiB) and an aarch64 kernel with 39-bit virtual addresses (512 GiB for a process).
//! Ten functions, each used once: wasmtime's default memory pool alone would reserve 194 GiB.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weir_e2e::{Weir, functions_dir};

/// `ulimit -v` of a 32-bit ARM process, KiB.
const ARMV7_KIB: u64 = 3 << 20;
/// `ulimit -v` of a process on an aarch64 kernel with 39-bit virtual addresses, KiB. (Limits
/// too small for the functions' memory are refused at start: `cli::check_and_run_refuse_memory…`.)
const AARCH64_39_BIT_KIB: u64 = 512 << 20;

/// Simulated readings through ten functions (the same component under ten ids), each with
/// `memory` as its limit, to the console.
fn ten_functions(memory: &str) -> String {
    let mut config = format!(
        "[gateway]\nid = \"small-board\"\ndata_dir = \"{{data_dir}}\"\nfunctions_dir = \"{}\"\n\n",
        functions_dir().display()
    );
    for n in 0..10 {
        config.push_str(&format!(
            "[functions.f{n}]\ncomponent = \"weir_fn_unit_convert.wasm\"\nmemory = \"{memory}\"\n\n"
        ));
    }
    config.push_str(
        "[pipelines.sim]\ndecode = \"senml_json\"\n\n[pipelines.sim.source.simulated]\npayload = \"senml_json\"\n\
         devices = 2\ninterval = \"50ms\"\ntopic_prefix = \"sim\"\n\n[pipelines.sim.batch]\nlinger = \"100ms\"\n\n",
    );
    for n in 0..10 {
        config.push_str(&format!(
            "[[pipelines.sim.operators]]\nfunction = \"f{n}\"\n\
             params = {{ conversion = \"celsius_to_fahrenheit\", series = \"none/#\" }}\n\n"
        ));
    }
    config.push_str("[pipelines.sim.sink.console]\n");
    config
}

/// Runs the ten functions under `kib` of address space until records come out; the memory pool's
/// layout must be `layout`.
async fn runs_in(kib: u64, layout: &str) -> Result<()> {
    let weir = Weir::start_limited(&ten_functions("32MiB"), kib)?;
    weir.wait_for_log("pipeline running", 1).await?;
    let started = Instant::now();
    while !weir.stdout().contains("sim #") {
        ensure!(started.elapsed() < Duration::from_secs(30), "no record came out:\n{}", weir.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = weir.log();
    let pool = log.lines().find(|l| l.contains("WebAssembly memory pool reserved")).context("the pool is logged")?;
    ensure!(pool.contains(&format!("layout={layout}")), "expected the {layout} layout: {pool}");
    ensure!(!log.contains(" ERROR "), "{log}");
    let (status, _, _) = weir.stop()?;
    assert_eq!(status, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_functions_run_in_the_address_space_of_a_32_bit_board() -> Result<()> {
    runs_in(ARMV7_KIB, "Compact").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_functions_run_in_the_address_space_of_a_39_bit_aarch64_kernel() -> Result<()> {
    // 194 GiB of guarded memories fit in half of 512 GiB: no bounds checks needed.
    runs_in(AARCH64_39_BIT_KIB, "Guarded").await
}

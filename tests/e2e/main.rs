//! The end-to-end tests, one module per area, linked into one test binary (linking the host,
//! wasmtime included, once instead of once per area). Run one area with a name filter:
//! `cargo nextest run --workspace -E 'test(/^durability::/)'`.
//!
//! Every module runs real brokers and the real `weir` binary through the harness (`weir_e2e`,
//! `tests/src/lib.rs`).

mod bench;
mod cli;
mod durability;
mod failures;
mod flows;
mod governance;
mod outbox;
mod windows;

//! The end-to-end tests, one module per area, linked into one test binary (linking the host,
//! wasmtime included, once instead of once per area). Run one area with a name filter:
//! `cargo nextest run --workspace -E 'test(/^durability::/)'`.
//!
//! Every module but `boundaries` runs real brokers and the real `weir` binary through the
//! harness (`weir_e2e`, `tests/src/lib.rs`); `boundaries` reads the workspace's sources.

mod address_space;
mod bench;
mod boundaries;
mod cli;
mod durability;
mod failures;
mod fleet;
mod flows;
mod governance;
mod observe;
mod outbox;
mod sensors;
mod service;
mod status_page;
mod tls;
mod windows;

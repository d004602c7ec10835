//! Host bindings for the `weir:stream@0.1.0` worlds, generated from `wit/` (the only copy).
//!
//! The decoder and accumulator worlds reuse the operator world's interfaces (`with`), so every
//! world shares one set of host traits and one linker.

#[allow(unsafe_code, missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod operator {
    wasmtime::component::bindgen!({
        world: "operator",
        path: "../wit",
        imports: { default: trappable },
    });
}

#[allow(unsafe_code, missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod decoder {
    wasmtime::component::bindgen!({
        world: "decoder",
        path: "../wit",
        with: { "weir:stream": super::operator::weir::stream },
    });
}

#[allow(unsafe_code, missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod accumulator {
    wasmtime::component::bindgen!({
        world: "accumulator",
        path: "../wit",
        with: { "weir:stream": super::operator::weir::stream },
    });
}

pub use operator::weir::stream::{clock, log, state, types};

//! The pure core of atomsync: the S-expression codec, the sync protocol and
//! the sans-IO sync engine. It compiles for `wasm32-unknown-unknown` and
//! native targets and does no IO of its own.
//!
//! ## Design
//!
//! - [`sexpr`] is a serde data format for S-expressions that keeps every Rust
//!   value exact (floats to the bit, `i128`, all enum representations).
//! - [`protocol`] holds the messages clients and server exchange.

pub mod engine;
pub mod protocol;
pub mod sexpr;

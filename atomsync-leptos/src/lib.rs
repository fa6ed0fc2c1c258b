//! Leptos integration of atomsync.
//!
//! For now this crate holds the server-function encoding [`SExpr`], which
//! makes Leptos server functions speak the same S-expressions as the
//! atomsync HTTP protocol.
//!
//! ## Design
//!
//! The encoding lives here, not in `atomsync-core`, so the core stays free
//! of Leptos and `server_fn`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod codec;

pub use codec::{SExpr, SExprEncoding};

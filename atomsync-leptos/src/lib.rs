//! Leptos integration of atomsync: [`use_synced_atom`], a signal over a
//! group's documents that lives in IndexedDB, works offline and syncs with
//! the server through Leptos server functions.
//!
//! ## Usage
//!
//! ```ignore
//! use atomsync_leptos::{provide_atomsync, use_synced_atom};
//!
//! #[component]
//! fn App() -> impl IntoView {
//!     provide_atomsync("my-app");
//!     let todos = use_synced_atom::<Todo>("todo");
//!     todos.insert("milk", Todo { title: "Buy milk".into(), done: false });
//!     view! { <p>{move || todos.with(|t| t.len())} " todos"</p> }
//! }
//! ```
//!
//! On the server (feature `ssr`), give the server functions their store:
//!
//! ```ignore
//! let service = atomsync_server::SyncService::new(store);
//! let app = Router::new().leptos_routes_with_context(
//!     &options, routes,
//!     { let service = service.clone(); move || atomsync_leptos::provide_sync_service(service.clone()) },
//!     move || shell(options.clone()),
//! );
//! ```
//!
//! ## Features
//!
//! - `ssr`: the server build. The hook reads the group's documents through
//!   the `SyncService` in context during server rendering, and the server
//!   functions run against it. Turn it on from the app's `ssr` feature,
//!   with `atomsync-server` as an optional dependency of the app enabled by
//!   the same feature.
//! - `hydrate`: the browser build of a server-rendered app. Turn it on from
//!   the app's `hydrate` feature.
//!
//! Both on in one build is a compile error, and so is leptos's `ssr` without
//! this crate's; a page hydrating while `hydrate` is off says so in the
//! console. The README's "Add atomsync to your Leptos app" shows the whole
//! `Cargo.toml` (`examples/starter/`).
//!
//! ## Design
//!
//! Each atom drives one `atomsync_core::engine::Engine` (the sans-IO sync
//! engine): writes go to the engine, whose storage batches are written to
//! IndexedDB in one transaction per step, and a small loop hands the
//! engine's push and pull requests to the server functions (or a standalone
//! server's HTTP routes). The signal holds decoded values; only the keys an
//! engine step reports as changed are decoded again.
//!
//! Every request has a time limit (`request_timeout_ms`, 30 s): one without
//! an answer is aborted and retried with backoff like any temporary failure.
//! A refusal that retrying cannot fix halts the group's sync until a new
//! token, the browser's `online` event, [`SyncedAtom::resume`] or a new page
//! load, depending on its [`HaltReason`]; [`AtomStatus::halted`] says which
//! (see [`SyncHalt`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(target_arch = "wasm32")]
pub mod browser;
pub mod codec;
mod docs;
mod features;
mod fn_client;
#[cfg(feature = "ssr")]
mod guard;
mod halt;
#[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
pub mod idb_store;
mod options;
#[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
mod persist;
pub mod server_fns;
#[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
mod sync_loop;
#[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
mod tabs;
#[cfg(all(target_arch = "wasm32", feature = "fault-injection"))]
pub mod testing;
#[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
mod transport;
mod use_synced_atom;

pub use codec::{SExpr, SExprEncoding};
pub use docs::Docs;
pub use halt::{HaltReason, SyncHalt};
pub use options::{
    ConflictCallback, DEFAULT_REQUEST_TIMEOUT_MS, Endpoint, ErrorCallback, UseSyncedAtomOptions,
};
#[cfg(feature = "ssr")]
pub use server_fns::{provide_sync_service, provide_sync_service_with_options};
pub use use_synced_atom::{
    AtomStatus, AtomWriteGuard, AtomsyncContext, Document, InitialDocs, SyncedAtom,
    provide_atomsync, provide_atomsync_with_endpoint, use_synced_atom,
    use_synced_atom_with_options,
};

pub use atomsync_core::engine::{Conflict, ConflictPolicy};

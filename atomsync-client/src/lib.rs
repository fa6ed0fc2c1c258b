//! The native atomsync client: the sans-IO sync engine of
//! [`atomsync_core::engine`] with its state in SQLite and an HTTP transport,
//! behind an async [`Client`].
//!
//! Desktop apps, command-line tools and tests use it to read and write a
//! group's documents offline and sync them with an `atomsync-server`.
//!
//! ## Usage
//!
//! ```no_run
//! use atomsync_client::Client;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> atomsync_client::Result<()> {
//! let client = Client::open("notes.db", "http://127.0.0.1:8090", "laptop").await?;
//! client.set("todo", "milk", "Buy milk").await?; // durable at once, offline too
//! let report = client.sync("todo").await?;       // push, then pull to the end
//! println!("changed: {:?}", report.changed);
//! for (key, title) in client.documents::<String>("todo").await? {
//!     println!("{key}: {title}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Design
//!
//! - [`Client`] owns one [`Engine`](atomsync_core::engine::Engine) per group
//!   (loaded on first use), one [`SqliteDatabase`] and one [`Transport`]. It
//!   drives each engine as the engine's docs describe: every step's batch is
//!   persisted before the next request goes out or a write is reported done.
//! - [`SqliteStorage`] is the engine's [`Storage`](atomsync_core::engine::Storage)
//!   for one group in a shared SQLite file (WAL; one transaction per batch;
//!   values as S-expression text). Rows that do not read back are
//!   [`Error::Corrupt`], never a panic.
//! - SQLite only runs on blocking threads (`spawn_blocking`); no lock is held
//!   across an `.await`. Each sync runs in a task of its own, so a request in
//!   flight is always folded back in, even if the caller stops waiting.
//! - [`HttpTransport`] speaks `docs/protocol.md` with reqwest: no answer is
//!   [`Failure::Unreachable`](atomsync_core::engine::Failure::Unreachable),
//!   an error answer with an S-expression body is
//!   [`Failure::Error`](atomsync_core::engine::Failure::Error), anything else
//!   unusable is [`Failure::Status`](atomsync_core::engine::Failure::Status).
//! - Every request has a time limit ([`ClientOptions::timeout`], 30 s); a
//!   request without an answer is `Unreachable`, retried with backoff. A
//!   refusal that retrying cannot fix halts the group ([`Client::halted`]):
//!   refused credentials until [`Client::set_token`] (a 401 sent without a
//!   token waits for one), anything else until [`Client::resume`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod error;
mod storage;
mod transport;

pub use client::{Client, ClientOptions, ConflictCallback, Halted, Location, SyncReport};
pub use error::{Error, Result};
pub use storage::{SqliteDatabase, SqliteOptions, SqliteStorage, Synchronous};
pub use transport::{DEFAULT_TIMEOUT, HttpTransport, Transport};

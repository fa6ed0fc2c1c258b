//! The one error type of the client.

use atomsync_core::engine::{EngineError, Failure, Halt};

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite failed (the database file cannot be opened, the disk is full, ...).
    #[error("local database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The local database holds something this client cannot read: a row
    /// that is not what it wrote, or a schema from a newer client.
    #[error("corrupt local database: {0}")]
    Corrupt(String),
    /// The engine refused the operation (invalid group, key or client id, a
    /// value that cannot be encoded, an inconsistent stored state).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A value could not be encoded or decoded as the requested type.
    #[error("value codec: {0}")]
    Codec(#[from] atomsync_core::sexpr::Error),
    /// A request of [`Client::sync`](crate::Client::sync) failed. What the
    /// changes it carried became is in the engine: temporary failures are
    /// retried by the next sync, auth and permanent ones halt the group.
    #[error("sync failed: {0}")]
    Sync(Failure),
    /// Syncing the group is halted after an auth or permanent failure, until
    /// [`Client::resume`](crate::Client::resume), or (refused credentials)
    /// until [`Client::set_token`](crate::Client::set_token) sets new ones;
    /// see [`Halted`](crate::Halted). Local reads and writes go on working.
    #[error("sync halted: {}", .0.message)]
    Halted(Halt),
    /// The server URL is not a usable `http` or `https` URL.
    #[error("invalid server URL `{url}`: {message}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A background task of the client failed (panicked or was cancelled by
    /// the runtime shutting down).
    #[error("client task failed: {0}")]
    Task(String),
}

/// The result type of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The sync failure behind this error, if it is one.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Error::Sync(failure) => Some(failure),
            _ => None,
        }
    }
}
